"""Lost-card reports and replacements through the real routes, clearing and a validator in process.

The card is issued by ``clearing.issuance`` from a real key store and taps on an in-process
validator (``terminals.validator.Terminal`` with a PSAM personalised from the same store),
whose uploader talks to the assembled app's ``/v1`` routes. The citizen reports the card on
``/api/lost-cards``; the validator refuses it after its next denylist poll; a clerk logs in
to ``/staff/api`` with password and TOTP and issues the replacement, whose purse holds what
the lost purse held after its last tap, to the fen. SQLite and PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyotp
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from cardos.card import Card
from cardos.image import CardImage
from cardos.psam import Psam, psam_image_for_terminal
from cardos.records import SHANGHAI_TZ
from clearing import db, registry
from clearing.api import ApiDeps
from clearing.issuance import issue_card
from clearing.keystore import KeyStore
from clearing.ledger import account_balance, trial_balance
from clearing.models import Card as CardRow
from clearing.models import DenylistEntryRow, Transfer, TransferCode
from clearing.redis_bus import RedisBus
from portal.api_staff import StaffConsole
from portal.audit import AuditLog
from portal.lost_cards import (
    DirectoryCardWriter,
    LostCardService,
    LostLimits,
    ReportDecision,
    UnblockDecision,
    replacement_due_at,
    report_decision,
    unblock_decision,
)
from portal.models import PortalAuditEntry, PortalCardBinding, PortalLostReport
from portal.payments import PaymentsClient, PaymentsConfig
from portal.ratelimit import MemoryLimiter, Rule
from portal.staff import StaffService
from portal.topup_service import TopupService
from terminals.config import TerminalConfig, UploadConfig
from terminals.denylist import Denylist
from terminals.journal import Journal
from terminals.readers import InProcessReader
from terminals.session import Outcome
from terminals.uploader import Uploader
from terminals.validator import FlatFare, Terminal
from tests.portal.conftest import ALICE, BOB, LOCALSTRIPE_KEY, account_service, bind_directly, fast_passwords

TERMINAL = "360486600042"
OWN = "01007120ffffffff"
WAIT_S = 7 * 24 * 3600
CLERK_PASSWORD = "counter clerk at Weicheng"  # a test password


# --- the pure rules --------------------------------------------------------------------------------


def test_the_report_rule_names_every_state() -> None:
    assert report_decision(card_status="active", replaced=False, open_report=False) is ReportDecision.NEW
    assert report_decision(card_status="blocked", replaced=False, open_report=False) is ReportDecision.NEW
    assert report_decision(card_status="lost", replaced=False, open_report=True) is ReportDecision.ALREADY
    assert report_decision(card_status="blocked", replaced=True, open_report=False) is ReportDecision.REPLACED
    assert report_decision(card_status="replaced", replaced=False, open_report=True) is ReportDecision.REPLACED
    assert unblock_decision(replaced=True, listed=True) is UnblockDecision.REPLACED
    assert unblock_decision(replaced=False, listed=False) is UnblockDecision.NOT_LISTED
    assert unblock_decision(replaced=False, listed=True) is UnblockDecision.REMOVE
    at = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    assert replacement_due_at(at, WAIT_S) == dt.datetime(2026, 12, 8, tzinfo=dt.UTC)


# --- the rig ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keystore(tmp_path_factory: pytest.TempPathFactory) -> KeyStore:
    ks = KeyStore.open(tmp_path_factory.mktemp("ks") / "keystore.json", os.urandom(32))
    ks.init(["xianyang"])
    return ks


@dataclass
class Clock:
    # three hours back, so the validator's taps (two hours back) come after a report made "now"
    now: dt.datetime = field(
        default_factory=lambda: dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(hours=3)
    )

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


def tap_time(minutes: int) -> dt.datetime:
    return (dt.datetime.now(SHANGHAI_TZ).replace(microsecond=0) - dt.timedelta(hours=2)) + dt.timedelta(minutes=minutes)


@dataclass
class Rig:
    engine: Engine
    keystore: KeyStore
    clock: Clock
    app: Any
    lost: LostCardService
    staff: StaffService
    terminal: Terminal
    reader: InProcessReader
    uploader: Uploader
    images: Path

    def client(self) -> TestClient:
        return TestClient(self.app)

    def issue(self, balance_fen: int = 5_000) -> tuple[Card, str]:
        with Session(self.engine) as session, session.begin():
            image, row = issue_card(
                session, self.keystore, issuer_id=OWN, card_type="ordinary", balance_fen=balance_fen,
                now=self.clock.now,
            )  # fmt: skip
            return Card.from_image(image), row.card_asn

    def tap(self, card: Card, minutes: int) -> Outcome:
        self.reader.insert(card)
        return self.terminal.tap(tap_time(minutes)).outcome

    def clerk(self, role: str = "counter_clerk", username: str = "clerk1") -> TestClient:
        """A staff client logged in with password and the current TOTP code."""
        new = self.staff.add(username, role, CLERK_PASSWORD, actor="cli")
        secret = pyotp.parse_uri(new.provisioning_uri).secret
        client = self.client()
        code = pyotp.TOTP(secret).at(self.clock.now)
        answer = client.post(
            "/staff/api/sessions", json={"username": username, "password": CLERK_PASSWORD, "totp": code}
        )
        assert answer.status_code == 201, answer.text
        client.headers["X-CSRF-Token"] = answer.json()["csrf_token"]
        return client

    def card_row(self, asn: str) -> tuple[str, int, int, int | None]:
        """(status, shadow, ledger balance, replaced_by_id)."""
        with Session(self.engine) as session:
            row = session.execute(select(CardRow).where(CardRow.card_asn == asn)).scalar_one()
            ledger = account_balance(session, row.account_id).credit_balance_fen
            return row.status, row.shadow_balance_fen, ledger, row.replaced_by_id

    def count(self, model: Any, *where: Any) -> int:
        with Session(self.engine) as session:
            return int(session.execute(select(func.count()).select_from(model).where(*where)).scalar_one())


def make_rig(engine: Engine, keystore: KeyStore, tmp_path: Path, *, bus: RedisBus | None = None,
             lost_limits: LostLimits | None = None, pages: bool = False) -> Rig:  # fmt: skip
    clock = Clock()
    limiter = MemoryLimiter(clock=lambda: clock.now.timestamp())
    accounts = account_service(engine, limiter=limiter, clock=clock)
    sessions = db.session_factory(engine)
    audit = AuditLog(sessions, clock=clock)
    images = tmp_path / "cards"
    lost = LostCardService(
        sessions=sessions, accounts=accounts, audit=audit, keystore=keystore, writer=DirectoryCardWriter(images),
        bus=bus, limiter=limiter, limits=lost_limits or LostLimits(), wait_s=WAIT_S, clock=clock,
    )  # fmt: skip
    staff = StaffService(sessions=sessions, lookup_key=bytes(range(32)), audit=audit, passwords=fast_passwords(),
                         limiter=limiter, clock=clock)  # fmt: skip
    payments = PaymentsClient.connect(PaymentsConfig("http://127.0.0.1:9", LOCALSTRIPE_KEY, timeout_s=0.5))
    topups = TopupService(sessions=sessions, payments=payments, webhook_secrets=["whsec_t"])
    from portal.web import PageConfig, form_key_of
    from yikatong.app import assemble

    config = PageConfig(form_key=form_key_of(bytes(range(32))), secure_cookies=False) if pages else None
    app = assemble(
        ApiDeps(engine, keystore, bus=bus), topups, portal_enabled=True, accounts=accounts, portal_dev=True,
        lost_cards=lost, staff_console=StaffConsole(staff=staff, lost=lost, audit=audit, topups=topups,
                                                    secure_cookies=False), pages=config,
    )  # fmt: skip
    with Session(engine) as session, session.begin():
        registry.ensure_issuers(session, own_city="xianyang")
        token = registry.register_terminal(session, TERMINAL, "bus-1", route="K26")
    psam = Psam(psam_image_for_terminal(bytes.fromhex(TERMINAL), bytes(9) + b"\x42", keystore.psam_keys([OWN])))
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
    uploader = Uploader(
        terminal.journal, UploadConfig(clearing_url="http://testserver", token=token), denylist=terminal.denylist,
        client=TestClient(app),
    )  # fmt: skip
    return Rig(engine, keystore, clock, app, lost, staff, terminal, reader, uploader, images)


@pytest.fixture
def rig(engine: Engine, keystore: KeyStore, tmp_path: Path) -> Iterator[Rig]:
    made = make_rig(engine, keystore, tmp_path)
    yield made
    made.terminal.journal.close()
    made.terminal.denylist.close()


def citizen(rig: Rig, who: dict[str, str], *asns: str) -> TestClient:
    assert rig.client().post("/api/citizens", json=who).status_code == 201
    client = login(rig, who)
    for asn in asns:
        bind_directly(rig.engine, who["mobile"], OWN, asn)
    return client


def login(rig: Rig, who: dict[str, str]) -> TestClient:
    client = rig.client()
    answer = client.post("/api/sessions", json={"mobile": who["mobile"], "password": who["password"]})
    assert answer.status_code == 201, answer.text
    client.headers["X-CSRF-Token"] = answer.json()["csrf_token"]
    return client


def report(client: TestClient, asn: str) -> Any:
    return client.post("/api/lost-cards", json={"issuer_id": OWN, "card_asn": asn})


# --- the flows ------------------------------------------------------------------------------------------


def test_a_report_blocks_the_card_at_the_next_poll_and_the_replacement_carries_its_balance(rig: Rig) -> None:
    card, asn = rig.issue(5_000)
    rig.uploader.pull_denylist(TERMINAL)
    assert rig.tap(card, 0) is Outcome.PAID  # 200 fen, before the report
    assert rig.uploader.upload_pending().records == 1
    alice = citizen(rig, ALICE, asn)

    first = report(alice, asn)
    assert first.status_code == 201, first.text
    body = first.json()
    assert body["state"] == "lost" and body["card_asn"] == asn
    with Session(rig.engine) as session:
        version = session.scalar(select(func.max(DenylistEntryRow.added_version)))
    # reported twice: the same report, the denylist unchanged
    again = report(alice, asn)
    assert again.status_code == 200 and again.json()["report_id"] == body["report_id"]
    assert rig.count(DenylistEntryRow) == 1 and rig.count(PortalLostReport) == 1
    with Session(rig.engine) as session:
        assert session.scalar(select(func.max(DenylistEntryRow.added_version))) == version

    # the validator has not polled yet: the card still pays (spent before the denylist reached it)
    assert rig.tap(card, 5) is Outcome.PAID
    # the next poll brings the entry; the card is refused and its application blocked
    assert rig.uploader.pull_denylist(TERMINAL) == version
    assert rig.tap(card, 6) is Outcome.BLOCKED
    assert card.blocked and card.balance_fen == 4_600
    rig.uploader.upload_pending()
    verdicts = sorted(code for _, code in rig.terminal.journal.verdicts().values())
    assert "E_DENYLISTED" in verdicts, verdicts

    # the counter: too early first, then after the waiting period
    clerk = rig.clerk()
    early = clerk.post("/staff/api/replacements", json={"issuer_id": OWN, "card_asn": asn})
    assert early.status_code == 409 and early.json()["code"] == "E_LOST_TOO_EARLY", early.text
    rig.clock.advance(WAIT_S)
    clerk = rig.clerk(username="clerk2")  # the first session has ended meanwhile (30 min)
    done = clerk.post("/staff/api/replacements", json={"issuer_id": OWN, "card_asn": asn})
    assert done.status_code == 201, done.text
    moved = done.json()
    assert (moved["liability_fen"], moved["held_fen"], moved["moved_fen"], moved["retained_fen"]) == (
        4_800, 200, 4_600, 200,
    )  # fmt: skip
    new_asn = moved["new_card_asn"]
    # the purse oracle: the new card's purse holds what the lost purse held after its last tap
    image = CardImage.load(moved["image_ref"])
    assert image.purse.balance_fen == card.balance_fen == 4_600
    assert rig.card_row(new_asn)[:3] == ("active", 4_600, 4_600)
    status, _, ledger, replaced_by = rig.card_row(asn)
    assert status == "replaced" and ledger == 200 and replaced_by is not None
    with Session(rig.engine) as session:
        trial_balance(session)
        move = session.get(Transfer, moved["transfer_id"])
        assert move is not None and move.code == TransferCode.BALANCE_MOVE and move.amount_fen == 4_600
        binding = session.scalar(select(PortalCardBinding).where(PortalCardBinding.card_asn == new_asn))
        assert binding is not None and binding.how == "replacement"
    # a replay moves nothing more
    replay = clerk.post("/staff/api/replacements", json={"issuer_id": OWN, "card_asn": asn})
    assert replay.status_code == 200 and replay.json()["replayed"] and replay.json()["new_card_asn"] == new_asn
    assert rig.count(Transfer, Transfer.code == int(TransferCode.BALANCE_MOVE)) == 1
    # the citizen (logged in again: a week has passed) sees the report closed and the new card bound
    alice = login(rig, ALICE)
    assert alice.get("/api/lost-cards").json()["reports"][0]["state"] == "replaced"
    assert {c["card_asn"] for c in alice.get("/api/me/cards").json()["cards"]} == {asn, new_asn}
    # reporting the replaced card again is refused; unblocking it too
    assert report(alice, asn).json()["code"] == "E_LOST_CARD_REPLACED"
    refused = clerk.post("/staff/api/unblocks", json={"issuer_id": OWN, "card_asn": asn})
    assert refused.status_code == 409 and refused.json()["code"] == "E_LOST_CARD_REPLACED"
    # the new card pays on the validator
    assert rig.tap(Card.from_image(image), WAIT_S // 60 + 200) is Outcome.PAID  # once it is valid (issued a week on)


def test_only_a_card_bound_to_the_session_citizen_can_be_reported(rig: Rig) -> None:
    _, asn = rig.issue()
    _, other = rig.issue()
    citizen(rig, BOB, other)
    alice = citizen(rig, ALICE)
    answer = report(alice, asn)
    assert answer.status_code == 403 and answer.json()["code"] == "E_CARD_NOT_BOUND"
    assert report(alice, other).json()["code"] == "E_CARD_NOT_BOUND"
    assert rig.count(DenylistEntryRow) == 0
    # no session, no CSRF token, a malformed card: clear errors, nothing listed
    anonymous = rig.client()
    assert report(anonymous, asn).json()["code"] == "E_SESSION_REQUIRED"
    del alice.headers["X-CSRF-Token"]
    assert report(alice, asn).json()["code"] == "E_CSRF"
    alice.headers["X-CSRF-Token"] = "x"
    for bad in ({"issuer_id": OWN, "card_asn": "zz"}, {"card_asn": asn}, {"issuer_id": OWN, "card_asn": 5}):
        answer = alice.post("/api/lost-cards", json=bad)
        assert answer.status_code in (403, 422), answer.text
    assert rig.count(DenylistEntryRow) == 0


def test_reports_are_rate_limited(engine: Engine, keystore: KeyStore, tmp_path: Path) -> None:
    rig = make_rig(engine, keystore, tmp_path, lost_limits=LostLimits(Rule(2, 3600), Rule(100, 3600)))
    try:
        _, asn = rig.issue()
        alice = citizen(rig, ALICE, asn)
        assert report(alice, asn).status_code == 201
        assert report(alice, asn).status_code == 200
        limited = report(alice, asn)
        assert limited.status_code == 429 and limited.json()["code"] == "E_RATE_LIMITED"
    finally:
        rig.terminal.journal.close()
        rig.terminal.denylist.close()


def test_a_found_card_is_unblocked_by_a_clerk_and_pays_again(rig: Rig) -> None:
    card, asn = rig.issue()
    alice = citizen(rig, ALICE, asn)
    assert report(alice, asn).status_code == 201
    assert rig.card_row(asn)[0] == "lost"
    clerk = rig.clerk()
    answer = clerk.post("/staff/api/unblocks", json={"issuer_id": OWN, "card_asn": asn})
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "active" and answer.json()["lost_report"]["state"] == "found"
    rig.uploader.pull_denylist(TERMINAL)
    assert rig.tap(card, 0) is Outcome.PAID
    again = clerk.post("/staff/api/unblocks", json={"issuer_id": OWN, "card_asn": asn})
    assert again.status_code == 409 and again.json()["code"] == "E_LOST_NOT_REPORTED"
    # a report after the card was found is a new report
    assert report(alice, asn).status_code == 201
    assert rig.count(PortalLostReport) == 2


def test_a_card_never_reported_is_not_replaced(rig: Rig) -> None:
    _, asn = rig.issue()
    clerk = rig.clerk()
    answer = clerk.post("/staff/api/replacements", json={"issuer_id": OWN, "card_asn": asn})
    assert answer.status_code == 409 and answer.json()["code"] == "E_LOST_NOT_REPORTED"
    unknown = clerk.post("/staff/api/replacements", json={"issuer_id": OWN, "card_asn": "7120" + "0" * 15 + "9"})
    assert unknown.status_code == 404 and unknown.json()["code"] == "E_CARD_NOT_FOUND"
    assert rig.count(CardRow) == 1


def test_the_audit_log_holds_no_card_number_or_personal_data(rig: Rig) -> None:
    _, asn = rig.issue()
    alice = citizen(rig, ALICE, asn)
    report(alice, asn)
    clerk = rig.clerk()
    clerk.get("/staff/api/cards", params={"q": ALICE["mobile"]})
    clerk.get("/staff/api/cards", params={"q": ALICE["id_number"]})
    clerk.get(f"/staff/api/cards/{OWN}/{asn}")
    with Session(rig.engine) as session:
        lines = session.execute(select(PortalAuditEntry)).scalars().all()
        text = " ".join(f"{x.actor} {x.action} {x.target} {x.outcome} {x.detail}" for x in lines)
    assert {x.action for x in lines} >= {"lost_report", "staff_add", "staff_login", "card_search", "card_view"}
    for secret in (asn, ALICE["mobile"], ALICE["id_number"], ALICE["real_name"], ALICE["id_number"][6:14]):
        assert secret not in text


@pytest.mark.redis
def test_a_report_bumps_the_redis_denylist_version(engine: Engine, keystore: KeyStore, tmp_path: Path,
                                                   redis_url: str) -> None:  # fmt: skip
    prefix = f"ykt-test-{secrets.token_hex(6)}"
    bus = RedisBus.from_url(redis_url, prefix=prefix)
    rig = make_rig(engine, keystore, tmp_path, bus=bus)
    try:
        _, asn = rig.issue()
        alice = citizen(rig, ALICE, asn)
        before = bus.denylist_version()
        assert report(alice, asn).status_code == 201
        with Session(rig.engine) as session:
            version = session.scalar(select(func.max(DenylistEntryRow.added_version)))
        assert bus.denylist_version() == version and version != before
        assert bus.denylisted(OWN, asn)
    finally:
        rig.terminal.journal.close()
        rig.terminal.denylist.close()
        keys = list(bus.client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            bus.client.delete(*keys)
        bus.close()
