"""A record judged without its key waits for the key: ``E_KEY_UNAVAILABLE``, never a forgery (SQLite and PostgreSQL).

The terminal gets a final ``200`` answer (a ``503`` would stall its uploader on retries), no
money moves, the item is kept unverified; once the key is in the store, accepting the item
verifies and posts it, and replaying the batch changes nothing. Before: a running server
remembered a missing key for good (per card) and never looked at an issuer whose keys
arrived after it started, so records went on waiting in the queue until a restart.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Any

import msgspec
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session
from tapfactory import MASTER_TAC, OWN_ISSUER, T0, Card, Terminal, body, make_keystore, register_world, sign

from clearing import accounts, registry
from clearing.api import ApiDeps, create_app
from clearing.exceptions_queue import Kind, accept, kind_of
from clearing.ingest import MISSING_KEY_RECHECK_S, TacKeys, keystore_dtk, make_ingestor, prepare
from clearing.keystore import KeyStore
from clearing.ledger import account_balance, trial_balance
from clearing.models import Card as CardRow
from clearing.models import ExceptionItem, Tap, Transfer

NOW = T0 + dt.timedelta(hours=12)
TERMINAL = "0000aa000001"
BAOJI = "01007210ffffffff"


def _ceremony(issuer_id: str, key_version: int) -> dict[str, Any]:
    """Keys whose MTK is the one ``tapfactory.sign`` diversifies from (``MASTER_TAC ^ version``)."""
    return {
        "issuers": [
            {
                "issuer_id": issuer_id, "alg_id": 0, "key_version": key_version,
                "mpk": os.urandom(16).hex(), "mlk": os.urandom(16).hex(),
                "mtk": bytes(b ^ key_version for b in MASTER_TAC).hex(), "mamk": os.urandom(16).hex(),
            }
        ]
    }  # fmt: skip


def _count(engine: Engine, model: Any) -> int:
    with Session(engine) as session:
        return int(session.execute(select(func.count()).select_from(model)).scalar_one())


def _ledger(engine: Engine, card: Card) -> tuple[int, int]:
    with Session(engine) as session:
        row = session.execute(select(CardRow).where(CardRow.card_asn == card.asn)).scalar_one()
        return account_balance(session, row.account_id).credit_balance_fen, row.shadow_balance_fen


def _verdicts(answer: bytes) -> list[tuple[str, str]]:
    return [(v["verdict"], v["code"]) for v in msgspec.json.decode(answer)["verdicts"]]


def test_a_tap_without_its_key_waits_moves_nothing_and_posts_once_accepted(db_engine: Engine, tmp_path: Path) -> None:
    keystore = make_keystore(tmp_path)
    assert isinstance(keystore, KeyStore)
    card = Card(0, balance_fen=3000)
    with Session(db_engine) as session:
        tokens = register_world(session, [card], [TERMINAL], tokens=True)
    client = TestClient(create_app(ApiDeps(db_engine, keystore, clock=lambda: NOW.astimezone(dt.UTC))))
    headers = {"Authorization": f"Bearer {tokens[TERMINAL]}"}
    bus = Terminal(TERMINAL)
    record = sign(msgspec.structs.replace(bus.tap(card, 150), key_version=2))  # the store holds version 1 only
    bus.pending[-1] = record
    batch = body(bus.batch())

    first = client.post(f"/v1/terminals/{TERMINAL}/batches", content=batch, headers=headers)
    assert first.status_code == 200  # a final answer: the uploader moves on (E_KEY_UNAVAILABLE's 503 is not used)
    assert _verdicts(first.content) == [("rejected", "E_KEY_UNAVAILABLE")]
    assert "kept for re-judging" in first.json()["verdicts"][0]["message"]
    transfers = _count(db_engine, Transfer)
    assert _count(db_engine, Tap) == 0 and _ledger(db_engine, card) == (3000, 3000)  # no money moved
    with Session(db_engine) as session:
        item = session.execute(select(ExceptionItem)).scalars().one()
        assert item.code == "E_KEY_UNAVAILABLE" and item.state == "open"
        assert kind_of(item, None) is Kind.UNVERIFIED  # waiting for a check, not judged a forgery
        item_id = item.id

    replay = client.post(f"/v1/terminals/{TERMINAL}/batches", content=batch, headers=headers)
    assert replay.status_code == 200 and replay.content == first.content
    assert (_count(db_engine, Transfer), _count(db_engine, ExceptionItem)) == (transfers, 1)

    keystore.import_ceremony(_ceremony(OWN_ISSUER, 2))
    with Session(db_engine) as session, session.begin():
        decided = accept(session, keystore, item_id, now=NOW, decided_by="clerk", note="key version 2 imported")
        assert decided.decision_transfer_id == f"tap:{TERMINAL}:{record.terminal_seq}"
    card_after = 3000 - 150
    assert _ledger(db_engine, card) == (card_after, card_after)

    again = client.post(f"/v1/terminals/{TERMINAL}/batches", content=batch, headers=headers)
    assert again.status_code == 200 and again.content == first.content
    assert _count(db_engine, Transfer) == transfers + 1 and _count(db_engine, Tap) == 1
    assert _count(db_engine, ExceptionItem) == 1
    assert _ledger(db_engine, card) == (card_after, card_after)
    with Session(db_engine) as session:
        trial_balance(session)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_running_server_uses_a_key_version_imported_after_it_met_the_card(db_engine: Engine, tmp_path: Path) -> None:
    kek = os.urandom(32)
    served = make_keystore(tmp_path, kek)  # the server's store, opened at start
    assert isinstance(served, KeyStore)
    card = Card(0, balance_fen=3000)
    with Session(db_engine) as session:
        register_world(session, [card], [TERMINAL])
    ingestor = make_ingestor(db_engine, clock=lambda: NOW.astimezone(dt.UTC))
    clock = FakeClock()
    keys = TacKeys(keystore_dtk(served), served.issuers(), clock=clock)
    bus = Terminal(TERMINAL)

    def upload() -> list[tuple[str, str]]:
        return _verdicts(ingestor.ingest(prepare(TERMINAL, bus.batch(), keys)).answer)

    bus.pending[-1] = sign(msgspec.structs.replace(bus.tap(card, 100), key_version=2))
    assert upload() == [("rejected", "E_KEY_UNAVAILABLE")]
    KeyStore.open(served.path, kek).import_ceremony(_ceremony(OWN_ISSUER, 2))  # `keys import` in another process
    clock.now += MISSING_KEY_RECHECK_S + 1
    bus.pending[-1] = sign(msgspec.structs.replace(bus.tap(card, 100), key_version=2))
    transfers = _count(db_engine, Transfer)
    # verified and posted: suspect only because the first tap, still queued, is missing before it
    assert upload() == [("suspect", "S_BALANCE_DISCONTINUITY")]
    assert _count(db_engine, Tap) == 1 and _count(db_engine, Transfer) == transfers + 1


def test_a_running_server_clears_an_own_issuer_whose_keys_arrive_after_it_started(
    db_engine: Engine, tmp_path: Path
) -> None:
    kek = os.urandom(32)
    served = make_keystore(tmp_path, kek)
    assert isinstance(served, KeyStore)
    baoji = Card(0, balance_fen=0, issuer_id=BAOJI, asn_hex="72100000000000000001")
    with Session(db_engine) as session:
        register_world(session, [], [TERMINAL])
        registry.register_issuer(session, BAOJI, city="baoji", name="Baoji", own=True)
        account = accounts.card_liability(session, BAOJI, baoji.asn)
        session.add(
            CardRow(
                issuer_id=BAOJI, card_asn=baoji.asn, card_type="ordinary", issued_at=T0 - dt.timedelta(days=3),
                start_date=dt.date(2026, 1, 1), expiry_date=dt.date(2036, 1, 1), key_version=1, alg_id=0,
                account_id=account, shadow_balance_fen=0,
            )
        )  # fmt: skip
        session.commit()
    ingestor = make_ingestor(db_engine, clock=lambda: NOW.astimezone(dt.UTC))
    clock = FakeClock()
    keys = TacKeys(keystore_dtk(served), served.issuers(), clock=clock)  # Baoji's keys are not held yet
    bus = Terminal(TERMINAL)

    def upload() -> list[tuple[str, str]]:
        return _verdicts(ingestor.ingest(prepare(TERMINAL, bus.batch(), keys)).answer)

    bus.pending[-1] = sign(bus.tap(baoji, 0))
    assert upload() == [("rejected", "E_KEY_UNAVAILABLE")]  # not a forgery
    KeyStore.open(served.path, kek).import_ceremony(_ceremony(BAOJI, 1))
    clock.now += MISSING_KEY_RECHECK_S + 1
    bus.pending[-1] = sign(bus.tap(baoji, 0))
    assert upload() == [("accepted", "OK")]  # its TAC verifies now
