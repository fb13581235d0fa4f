"""Adversarial review of the portal's security paths (issue 10): each test is a finding, fixed."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from clearing import db
from clearing.keystore import KeyStore
from portal.audit import card_target, check_clean
from portal.errors import Code, PortalError
from portal.models import PortalAuditEntry
from portal.staff import parse_username
from tests.portal.conftest import ALICE
from tests.portal.test_lost_cards import Rig, citizen, make_rig


@pytest.fixture(scope="module")
def keystore(tmp_path_factory: pytest.TempPathFactory) -> KeyStore:
    ks = KeyStore.open(tmp_path_factory.mktemp("ks") / "keystore.json", os.urandom(32))
    ks.init(["xianyang"])
    return ks


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    eng = db.ensure_migrated(f"sqlite:///{tmp_path / 'review.db'}")
    yield eng
    eng.dispose()


@pytest.fixture
def rig(engine: Engine, keystore: KeyStore, tmp_path: Path) -> Iterator[Rig]:
    made = make_rig(engine, keystore, tmp_path)
    yield made
    made.terminal.journal.close()
    made.terminal.denylist.close()


DIGIT_ISSUER = "3104000000000001"  # 16 hex digits, all decimal: a valid issuer id (clearing.registry)


def test_an_issuer_id_of_decimal_digits_is_masked_in_the_audit_target() -> None:
    """``card_target`` put the issuer id in clear; an id with 11+ decimal digits in a row made
    ``check_clean`` raise, so every audited action on such a card answered 503."""
    target = card_target(DIGIT_ISSUER, "7120" + "0" * 15 + "1")
    assert check_clean(target, "target") == target
    assert card_target("01007120ffffffff", "7120" + "0" * 15 + "1") == "card:01007120ffffffff:7120************0001"


def test_a_lost_report_naming_a_digit_issuer_is_refused_cleanly_not_a_503(rig: Rig) -> None:
    alice = citizen(rig, ALICE)
    answer = alice.post("/api/lost-cards", json={"issuer_id": DIGIT_ISSUER, "card_asn": "1" * 20})
    assert answer.status_code == 403 and answer.json()["code"] == "E_CARD_NOT_BOUND", answer.text
    with Session(rig.engine) as session:
        line = session.scalars(select(PortalAuditEntry).order_by(PortalAuditEntry.id.desc())).first()
        assert line is not None and line.action == "lost_report" and DIGIT_ISSUER not in line.target


def test_a_clerk_viewing_a_card_of_a_digit_issuer_gets_a_404_not_a_503(rig: Rig) -> None:
    clerk = rig.clerk()
    answer = clerk.get(f"/staff/api/cards/{DIGIT_ISSUER}/{'1' * 20}")
    assert answer.status_code == 404 and answer.json()["code"] == "E_CARD_NOT_FOUND", answer.text


def test_a_staff_username_the_audit_log_cannot_hold_is_refused_with_its_code() -> None:
    """A username of 20 hex letters (``deadbeef…``) passed the username rule, then the audit line of
    its creation failed ``check_clean`` (it reads as a card number): a 503 and no account."""
    with pytest.raises(PortalError) as refused:
        parse_username("deadbeefdeadbeefdead")
    assert refused.value.code is Code.E_STAFF_USERNAME
    assert parse_username("clerk.weicheng") == "clerk.weicheng"


def test_an_audit_cursor_past_any_row_id_is_a_422_or_the_first_page_not_a_503(
    engine: Engine, keystore: KeyStore, tmp_path: Path
) -> None:
    """``before_id`` had no upper bound: 10**30 reached the database as a parameter it cannot hold
    (SQLite's OverflowError, PostgreSQL's out-of-range bigint) and the console answered 503."""
    lrig = make_rig(engine, keystore, tmp_path, pages=True)
    try:
        admin = lrig.clerk("administrator", "root1")
        api = admin.get("/staff/api/audit", params={"before_id": str(10**30)})
        assert api.status_code == 422 and api.json()["code"] == "E_PORTAL_MALFORMED", api.text
        page = admin.get("/staff/audit", params={"before_id": str(10**30)})
        assert page.status_code == 200, page.text[:300]
    finally:
        lrig.terminal.journal.close()
        lrig.terminal.denylist.close()


def test_the_sweeps_error_lines_do_not_carry_card_numbers(caplog: pytest.LogCaptureFixture) -> None:
    """Clearing's sentences name the card ("card 7120… of issuer … is not registered"); the sweep logged
    them, and printed them in its report, whole."""
    from clearing.contract.codes import Code as ClearingCode
    from clearing.errors import ClearingError
    from portal.sweep import SweepReport

    asn = "71200000000000000001"
    report = SweepReport()
    with caplog.at_level("DEBUG"):
        report.error("tu_" + "c" * 32, ClearingError(ClearingCode.E_UNKNOWN_CARD, f"card {asn} is not registered"))
    assert asn not in caplog.text and asn not in " ".join(report.errors)
    assert "7120************0001" in report.errors[0]


def test_the_counters_unblock_lifts_only_a_lost_card_listing(rig: Rig) -> None:
    """A card denylisted for another reason (fraud, by the operator) was un-denylisted by the lost/found
    path: the citizen reports it lost (the entry stays, ``denylist.add`` answers the live one), then a
    clerk's unblock removed whatever entry was live. A counter clerk could also unblock any listed card."""
    from clearing import denylist
    from clearing.models import DenylistEntryRow
    from tests.portal.test_lost_cards import OWN, report

    _, asn = rig.issue()
    _, other = rig.issue()
    with Session(rig.engine) as session, session.begin():
        denylist.add(session, OWN, asn, "fraud")
        denylist.add(session, OWN, other, "fraud")
    alice = citizen(rig, ALICE, asn)
    assert report(alice, asn).status_code == 201
    clerk = rig.clerk()
    for card in (asn, other):
        refused = clerk.post("/staff/api/unblocks", json={"issuer_id": OWN, "card_asn": card})
        assert refused.status_code == 409 and refused.json()["code"] == "E_LOST_NOT_REPORTED", refused.text
    with Session(rig.engine) as session:
        live = session.scalars(select(DenylistEntryRow).where(DenylistEntryRow.removed_version.is_(None))).all()
        assert sorted(e.card_asn for e in live) == sorted([asn, other])
