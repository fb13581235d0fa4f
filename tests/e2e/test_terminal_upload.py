"""Validator -> journal -> uploader -> the real clearing app: issued cards, a registered terminal.

The card is issued by ``clearing.issuance`` from the key store, the PSAM personalised from the
key store's sanctioned export, the terminal registered with a token; taps are made in process
and uploaded with ``terminals.uploader`` to ``clearing.api.create_app`` (through Starlette's
TestClient, an ``httpx.Client``). The clearing centre verifies every TAC with its own keys.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from cardos import crypto
from cardos.card import Card
from cardos.os import TearPlan
from cardos.personalise import personalise
from cardos.profile import ISSUER_XIAN, ISSUER_XIANYANG
from cardos.psam import Psam, psam_image_for_terminal
from cardos.records import SHANGHAI_TZ
from clearing import db, registry
from clearing import denylist as clearing_denylist
from clearing.api import ApiDeps, create_app
from clearing.issuance import issue_card
from clearing.keystore import KeyStore
from terminals.config import TerminalConfig, UploadConfig
from terminals.denylist import Denylist
from terminals.journal import Journal
from terminals.readers import InProcessReader
from terminals.session import Outcome
from terminals.uploader import Uploader
from terminals.validator import FlatFare, Terminal
from tests.cardos.cardkit import management_info, public_info
from tests.pcsc_support import MASTER_KEYS, derived_keys

TERMINAL = "360486600042"
OWN = ISSUER_XIANYANG.hex()


@dataclasses.dataclass
class World:
    engine: object
    keystore: KeyStore
    token: str
    client: TestClient
    terminal: Terminal
    reader: InProcessReader
    uploader: Uploader


@pytest.fixture
def world(tmp_path: Path) -> World:
    engine = db.ensure_migrated(f"sqlite:///{tmp_path / 'clearing.db'}")
    keystore = KeyStore.open(tmp_path / "keystore.json", os.urandom(32))
    keystore.init([OWN])
    with Session(engine) as session, session.begin():
        registry.ensure_issuers(session, own_city="xianyang")
        token = registry.register_terminal(session, TERMINAL, "bus-1", route="K26")
    held = keystore.psam_keys([OWN])
    # The Xi'an issuer's purchase keys, as Xi'an would load them into our PSAMs (test master keys).
    held[ISSUER_XIAN] = (MASTER_KEYS["mpk"], MASTER_KEYS["mamk"], 1, crypto.ALG_3DES)
    psam = Psam(psam_image_for_terminal(bytes.fromhex(TERMINAL), bytes(9) + b"\x42", held))
    journal_path = tmp_path / "journal.db"
    reader = InProcessReader("card")
    terminal = Terminal(
        card_reader=reader,
        sam_reader=InProcessReader("sam", psam),
        journal=Journal(journal_path),
        denylist=Denylist(journal_path),
        config=TerminalConfig(route_id="K26", stop_id="u_city_hall", line_code=1026, station_code=103),
        pricer=FlatFare(200),
    )
    client = TestClient(create_app(ApiDeps(engine, keystore)))
    uploader = Uploader(
        terminal.journal,
        UploadConfig(clearing_url="http://testserver", token=token),
        denylist=terminal.denylist,
        client=client,
    )
    return World(engine, keystore, token, client, terminal, reader, uploader)


def issued(world: World, balance_fen: int = 5_000) -> Card:
    with Session(world.engine) as session, session.begin():  # type: ignore[call-overload]
        image, _ = issue_card(
            session, world.keystore, issuer_id=OWN, card_type="ordinary", balance_fen=balance_fen, now=now()
        )
    return Card.from_image(image)


def xian_card() -> Card:
    asn = bytes.fromhex("03104000000000007777")
    public = dataclasses.replace(public_info(asn=asn), issuer_id=ISSUER_XIAN)
    return Card.from_image(
        personalise(keys=derived_keys(ISSUER_XIAN, asn), public=public, management=management_info(), balance_fen=900)
    )


def now(minutes: int = 0) -> dt.datetime:
    base = dt.datetime.now(SHANGHAI_TZ).replace(microsecond=0) - dt.timedelta(hours=2)
    return base + dt.timedelta(minutes=minutes)


def tap(world: World, card: Card, minutes: int) -> Outcome:
    world.reader.insert(card)
    return world.terminal.tap(now(minutes)).outcome


def test_taps_upload_to_the_real_clearing_app_exactly_once_with_verdicts(world: World) -> None:
    alice, bob = issued(world), issued(world)
    assert tap(world, alice, 0) is Outcome.PAID
    assert tap(world, bob, 1) is Outcome.PAID
    # SELECT, 17, 1E/1 (her 08:00 leg), 1E/2 (empty), INIT, CACHE, DEBIT: torn after DEBIT's commit
    alice.tear = TearPlan(at_apdu=7, phase="after_commit")
    assert tap(world, alice, 5) is Outcome.TAP_AGAIN
    assert tap(world, alice, 6) is Outcome.RECOVERED
    assert tap(world, xian_card(), 7) is Outcome.PAID
    report = world.uploader.upload_pending()
    assert report.records == 4
    verdicts = world.terminal.journal.verdicts()
    by_status = {seq: verdict for (_, seq), verdict in verdicts.items()}
    assert sorted(v for v, _ in by_status.values()) == ["accepted", "accepted", "accepted", "forwarded"], verdicts
    # A lost answer: the same batch again gets the original answer, byte for byte, and posts nothing.
    batch_body = world.terminal.journal._db.execute("SELECT body, answer FROM batches").fetchone()
    replay = world.client.post(
        f"/v1/terminals/{TERMINAL}/batches",
        content=batch_body[0],
        headers={"Authorization": f"Bearer {world.token}"},
    )
    assert replay.status_code == 200 and replay.content == batch_body[1]
    assert world.uploader.upload_pending().records == 0


def test_a_card_denylisted_at_the_centre_is_blocked_at_the_validator(world: World) -> None:
    card = issued(world)
    asn = card.image.public[10:20].hex()
    with Session(world.engine) as session, session.begin():  # type: ignore[call-overload]
        clearing_denylist.add(session, OWN, asn, "lost", effective_at=now(-60).astimezone(dt.UTC))
    version = world.uploader.pull_denylist(TERMINAL)
    assert version >= 1 and world.terminal.denylist.hit(OWN, asn, now(0)) is not None
    assert tap(world, card, 0) is Outcome.BLOCKED
    assert card.blocked and card.balance_fen == 5_000
    report = world.uploader.upload_pending()
    assert report.records == 1
    [(verdict, code)] = world.terminal.journal.verdicts().values()
    assert verdict in ("accepted", "rejected") and code in ("OK", "E_DENYLISTED")


def test_a_wrong_token_is_refused_by_the_real_app(world: World) -> None:
    from terminals.errors import UploadError

    assert tap(world, issued(world), 0) is Outcome.PAID
    bad = Uploader(
        world.terminal.journal, UploadConfig(clearing_url="http://testserver", token="nope"), client=world.client
    )
    with pytest.raises(UploadError) as caught:
        bad.upload_pending()
    assert caught.value.status_code == 401
