"""Review of the dispute pages (issue 12): no input gives anything but a clear 4xx with its code."""

from __future__ import annotations

import datetime as dt

from issuerworld import *  # noqa: F403 - the fixtures
from sqlalchemy.orm import Session
from test_disputes_console import keystore, rig  # noqa: F401 - the fixtures

from interop_xian import disputes
from interop_xian.disputes import Side, State
from tests.portal.test_lost_cards import Rig
from tests.portal.test_staff_pages import staff_login, token


def test_a_dispute_id_past_the_databases_integers_is_an_unknown_dispute_not_a_fault(rig: Rig) -> None:  # noqa: F811
    finance, _ = staff_login(rig, "fin1", "finance")
    for dispute_id in (2**63, 10**30, 0, -1):
        page = finance.get(f"/staff/disputes/{dispute_id}")
        assert page.status_code == 404 and "E_UNKNOWN_DISPUTE" in page.text, dispute_id
    listed = finance.get("/staff/disputes")
    for dispute_id in (2**63, 12345678901):
        moved = finance.post(f"/staff/disputes/{dispute_id}/move",
                             data={"csrf_token": token(listed.text), "to": "accepted"})  # fmt: skip
        assert moved.status_code == 404 and "E_UNKNOWN_DISPUTE" in moved.text, dispute_id
    lines = [(line.target, line.outcome) for line in rig.staff.audit.lines(action="dispute_move")]
    assert ("dispute:(no such id)", "E_UNKNOWN_DISPUTE") in lines


def test_evidence_typed_on_several_lines_of_the_form_is_taken(rig: Rig) -> None:  # noqa: F811
    """A browser sends a textarea's line breaks as CR LF (HTML's form encoding): text, not control characters."""
    with Session(rig.engine) as s, s.begin():
        dispute_id = disputes.open_dispute(
            s, peer_city="xian", role=Side.ACQUIRER, item_id="xianyang:00000b000001:7:0011223344556677",
            amount_fen=1250, reason_code="E_TAC_MISMATCH", actor="interop", now=dt.datetime.now(dt.UTC),
        ).dispute_id  # fmt: skip
        dispute = disputes.get(s, dispute_id)
        dispute.state = State.EVIDENCE_REQUESTED.value
    finance, _ = staff_login(rig, "fin1", "finance")
    page = finance.get(f"/staff/disputes/{dispute_id}")
    moved = finance.post(
        f"/staff/disputes/{dispute_id}/move",
        data={"csrf_token": token(page.text), "to": "evidence_given", "note": "journal\r\nattached",
              "evidence": "bus 7, 2026-11-24\r\nvalidator log line 42\r\n"},
        follow_redirects=False,
    )  # fmt: skip
    assert moved.status_code == 303, moved.text[-500:]
    with Session(rig.engine) as s:
        d = disputes.get(s, dispute_id)
        assert d.state == "evidence_given" and d.evidence == "bus 7, 2026-11-24\nvalidator log line 42"
