"""The issuer's PostgreSQL writes (issue 12, benchmark): set-based, and the very rows of the generic paths.

On PostgreSQL the judge writes its money, bookings, verdict rows and card states as clearing's
ingest does (COPY, one ``… FROM unnest`` statement each: ``ledger.post_transfers_bulk``,
``issuer._write_verdicts_pg``, ``foreign._write_card_updates_pg``). These pin that the rows are
exactly those of the generic paths (``post_transfers``, Core/ORM executemany), for every kind
of verdict, and that the ledger's rules hold on the bulk path: replays, conflicts, flags, two-phase.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import msgspec
import psycopg
import pytest
from issuerworld import *  # noqa: F403 - the fixtures
from issuerworld import RECEIVED, IssuerWorld, item_of, make_world
from pg_rows import table_rows
from sqlalchemy import Engine, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from tapfactory import OWN_ISSUER, T0, Terminal, truncate

from clearing import accounts, denylist, foreign
from clearing.errors import ClearingError
from clearing.ledger import LedgerBatchError, TransferSpec, post_transfers, post_transfers_bulk, trial_balance
from clearing.models import AccountCode, AccountFlag, Base
from interop_xian import issuer, netting

pytestmark = pytest.mark.postgres

# Columns a run fills with the wall clock (everything else must match to the byte).
_CLOCK_COLUMNS = {"created_at", "issued_at", "updated_at"}
_TABLES = ("accounts", "transfers", "cards", "interop_issuer_items", "interop_bookings", "interop_alarms")


def _rows(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    return table_rows(engine, _TABLES, skip=lambda _table, c: c in _CLOCK_COLUMNS)


def _scenario(world: IssuerWorld) -> list[Any]:
    """Every kind of verdict: accepted, suspect, duplicate, forged, denylisted, uncovered, not kept, cap."""
    a, b, c, d = world.cards
    with Session(world.engine) as s, s.begin():
        denylist.add(s, OWN_ISSUER, d.asn, "lost", effective_at=T0 - dt.timedelta(hours=1))
    first = world.peer_terminal.tap(a, 200, T0)
    second = world.peer_terminal.tap(a, 150, T0 + dt.timedelta(minutes=1))
    odd = msgspec.structs.replace(second, route_id='R\\1\t"线路"\n', stop_id="\u00e9\\N")  # not under the TAC
    world.peer_terminal.tap(b, 100, T0)  # never forwarded: b's next record is a suspect
    suspect = world.peer_terminal.tap(b, 100, T0 + dt.timedelta(minutes=2))
    forged = msgspec.structs.replace(world.peer_terminal.tap(c, 100, T0), amount_fen=1)
    c.balance_fen = 5_000  # the purse claims more than the card holds here
    uncovered = world.peer_terminal.tap(c, 4_500, T0 + dt.timedelta(minutes=3))
    listed = world.peer_terminal.tap(d, 100, T0)
    a.counter -= 1
    clone = Terminal("00000a000009").tap(a, 150, T0 + dt.timedelta(minutes=4))  # a's counter 1 again
    no_key = msgspec.structs.replace(world.peer_terminal.tap(b, 50, T0 + dt.timedelta(minutes=5)), key_version=3)
    verdicts = world.judge([first, odd, suspect, forged, uncovered, listed, clone, no_key, first])
    verdicts += world.judge([odd, first, no_key], at=RECEIVED + dt.timedelta(minutes=30))  # resent items
    with Session(world.engine) as s, s.begin():
        netting.set_cap(s, "xian", 200 + 150 + 100 + 60)
    later = [world.peer_terminal.tap(b, 50, T0 + dt.timedelta(minutes=6 + n)) for n in range(3)]
    verdicts += world.judge(later, at=RECEIVED + dt.timedelta(hours=1))  # the second and third pass the cap
    return verdicts


def test_the_pg_writes_leave_exactly_the_rows_of_the_generic_paths(
    issuer_pg: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    verdicts_bulk = _scenario(make_world(issuer_pg, cards=4, balance_fen=1_000))
    bulk = _rows(issuer_pg)
    with issuer_pg.begin() as conn:
        truncate(conn, [t.name for t in Base.metadata.sorted_tables])
    with monkeypatch.context() as m:
        m.setattr(issuer, "_write_verdicts_pg", issuer._write_verdicts)
        m.setattr(foreign, "_write_card_updates_pg", foreign._write_card_updates_orm)
        verdicts_generic = _scenario(make_world(issuer_pg, cards=4, balance_fen=1_000))
    generic = _rows(issuer_pg)
    assert verdicts_bulk == verdicts_generic
    codes = {(v.outcome.value, v.code) for v in verdicts_bulk}
    assert {("accepted", "OK"), ("rejected", "E_TAC_MISMATCH"), ("rejected", "S_BALANCE_DISCONTINUITY"),
            ("rejected", "E_DENYLISTED"), ("rejected", "E_DUPLICATE_CARD_COUNTER"), ("rejected", "E_KEY_UNAVAILABLE"),
            ("rejected", "E_NET_DEBIT_CAP")} <= codes  # fmt: skip
    assert any(v.message.startswith("S_") for v in verdicts_bulk if v.code == "OK")  # a suspect
    for table in _TABLES:
        assert bulk[table] == generic[table], table
    assert bulk["interop_bookings"] and bulk["interop_alarms"]
    with Session(issuer_pg) as s:
        trial_balance(s)
        stored = [json.loads(r) for (r,) in s.execute(text("SELECT record::text FROM interop_issuer_items"))]
    assert {'R\\1\t"线路"\n'} <= {r["route_id"] for r in stored}  # free text through COPY and JSON intact


def _accounts(engine: Engine) -> tuple[int, int, int]:
    with Session(engine) as s, s.begin():
        guarded = accounts.get_or_create_account(s, AccountCode.CARD_LIABILITY, "card:test:1")
        source = accounts.get_or_create_account(s, AccountCode.ISSUER_FLOAT, "issuer:test")
        other = accounts.get_or_create_account(s, AccountCode.CARD_LIABILITY, "card:test:2")
        post_transfers(s, [TransferSpec.single("open:1", source, guarded, 500, 1),
                           TransferSpec.single("open:2", source, other, 500, 1)])  # fmt: skip
    return guarded, source, other


def _mixed(guarded: int, source: int, other: int) -> list[TransferSpec]:
    return [
        TransferSpec.single("t:1", guarded, other, 300, 7, source_ref="ref\twith tab"),
        TransferSpec.single("t:1", guarded, other, 300, 7, source_ref="ref\twith tab"),  # replay in the batch
        TransferSpec.single("t:2", guarded, other, 300, 7),  # 600 of 500: past the flag
        TransferSpec.pending("p:1", other, source, 200, 8),
        TransferSpec.post("p:1:post", "p:1", 150),
        TransferSpec.pending("p:2", other, source, 100, 8),
        TransferSpec.void("p:2:void", "p:2"),
        TransferSpec.void("p:9:void", "p:9"),  # no such pending transfer
        TransferSpec.single("open:1", source, guarded, 500, 1),  # stored: exists
        TransferSpec.single("open:2", source, other, 499, 1),  # stored with another amount: conflict
        TransferSpec.single("t:3", other, other, 5, 7),  # one account
        TransferSpec.single("t:4", guarded, 999_999, 5, 7),  # no such account
    ]


def test_post_transfers_bulk_decides_and_writes_as_post_transfers(
    issuer_pg: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    def run(post: Any) -> tuple[list[Any], dict[str, list[tuple[Any, ...]]]]:
        with issuer_pg.begin() as conn:
            truncate(conn, [t.name for t in Base.metadata.sorted_tables])
        guarded, source, other = _accounts(issuer_pg)
        with Session(issuer_pg) as s, s.begin():
            results = post(s, _mixed(guarded, source, other), strict=False)
            again = post(s, _mixed(guarded, source, other), strict=False)  # everything created now exists
        return results + again, _rows(issuer_pg)

    bulk_results, bulk_rows = run(post_transfers_bulk)
    generic_results, generic_rows = run(post_transfers)
    assert bulk_results == generic_results
    assert [r.status for r in bulk_results[:12]] == [
        "created", "exists", "failed", "created", "created", "created", "created", "failed", "exists", "failed",
        "failed", "failed",
    ]  # fmt: skip
    assert bulk_rows["transfers"] == generic_rows["transfers"] and bulk_rows["accounts"] == generic_rows["accounts"]


def test_post_transfers_bulk_refuses_a_strict_batch_and_the_flags_hold_in_the_database(issuer_pg: Engine) -> None:
    guarded, _source, other = _accounts(issuer_pg)
    with Session(issuer_pg) as s:
        with pytest.raises(LedgerBatchError) as refused:
            post_transfers_bulk(s, [TransferSpec.single("t:1", guarded, other, 300, 7),
                                    TransferSpec.single("t:2", guarded, other, 300, 7)])  # fmt: skip
        assert refused.value.code.value == "E_DEBITS_EXCEED_CREDITS"
        assert s.execute(text("SELECT count(*) FROM transfers WHERE id LIKE 't:%'")).scalar_one() == 0
        # a debit another transaction made after the read: the CHECK constraint refuses the total
        s.execute(text("UPDATE accounts SET debits_posted = 400 WHERE id = :a"), {"a": guarded})
        with pytest.raises(ClearingError, match="past its flag"):
            from clearing import ledger

            ledger._write_pg(s, [ledger._Row("t:3", guarded, other, 300, 156, 7, "posted", None, None)],
                             {guarded: _debited(guarded, 300)})  # fmt: skip
        s.rollback()
    with Session(issuer_pg) as s:
        assert s.execute(text("SELECT debits_posted FROM accounts WHERE id = :a"), {"a": guarded}).scalar_one() == 0


def _debited(account_id: int, fen: int) -> Any:
    from clearing.ledger import _Acc

    acc = _Acc(account_id, 156, int(AccountFlag.DEBITS_MUST_NOT_EXCEED_CREDITS), 0, 0, 0, 500)
    acc.add(dpo=fen)
    return acc


def test_post_transfers_bulk_loses_a_race_on_a_new_id_with_integrity_error(issuer_pg: Engine) -> None:
    _guarded, source, other = _accounts(issuer_pg)
    from clearing import ledger

    with Session(issuer_pg) as s:
        post_transfers_bulk(s, [TransferSpec.single("t:1", source, other, 10, 7)])
        with pytest.raises(IntegrityError):  # as if another transaction had inserted it after the read
            ledger._write_pg(s, [ledger._Row("t:1", source, other, 10, 156, 7, "posted", None, None)], {})
        s.rollback()


def test_the_items_copy_keeps_a_judged_item_once(issuer_pg: Engine) -> None:
    world = make_world(issuer_pg)
    tap = world.peer_terminal.tap(world.cards[0], 250, T0)
    world.judge([tap])
    row = {c: None for c in issuer._ITEM_COLUMNS} | {
        "peer_city": "xian", "item_id": item_of(tap).item_id, "batch_id": "b", "terminal_id": tap.terminal_id,
        "terminal_seq": 99, "record_digest": "d", "issuer_id": OWN_ISSUER, "card_asn": tap.card_asn,
        "offline_counter": 99, "tx_type": 9, "amount_fen": 0, "outcome": "rejected", "code": "E_X", "message": "",
        "claims_keys": False, "record": {}, "received_at": RECEIVED,
    }  # fmt: skip
    with Session(issuer_pg) as s:
        with pytest.raises(psycopg.errors.UniqueViolation, match="uq_interop_issuer_items_peer_city"):
            issuer._copy_items(s, [row])
        s.rollback()


def test_the_array_literals_carry_any_text_and_null(issuer_pg: Engine) -> None:
    from clearing.ledger import pg_int_array, pg_text_array

    values = ["a,b", "{x}", ' "q" ', "back\\slash", "NULL", "", "线路 é", "\t\n", None]
    with issuer_pg.connect() as conn:
        texts = conn.execute(text("SELECT CAST(:a AS text[])"), {"a": pg_text_array(values)}).scalar_one()
        ints = conn.execute(text("SELECT CAST(:a AS bigint[])"), {"a": pg_int_array([0, -5, None, 2**62])}).scalar_one()
    assert texts == values and ints == [0, -5, None, 2**62]
