"""The medical pages and staff review API in the assembled app (``yikatong.app.assemble``), SQLite and PostgreSQL.

A claim for treatment elsewhere goes from the citizen's form (card login, a PDF uploaded) through
the clerk's review (check, valuate, pay; JSON API with the staff session's CSRF token, audited) to
a load of the fund's share waiting for the card; an account login alone sees no page, a clerk
without the role is refused and the refusal audited.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from clearing.keystore import KeyStore
from clearing.models import PendingLoad
from portal.models import PortalAuditEntry
from portal.modules.medical.visits import enrol
from tests.portal.conftest import ALICE, BOB, bind_directly
from tests.portal.modules.test_permit_pages import card_citizen, hidden, token
from tests.portal.test_lost_cards import OWN, Rig, citizen, make_rig
from tests.portal.test_staff_pages import staff_login

PDF = b"%PDF-1.4\n1 0 obj <<>> endobj\ntrailer <<>>\n%%EOF\n"


@pytest.fixture(scope="module")
def keystore(tmp_path_factory: pytest.TempPathFactory) -> KeyStore:
    ks = KeyStore.open(tmp_path_factory.mktemp("ks") / "keystore.json", os.urandom(32))
    ks.init(["xianyang"])
    return ks


@pytest.fixture
def rig(engine: Engine, keystore: KeyStore, tmp_path: Path) -> Iterator[Rig]:
    made = make_rig(engine, keystore, tmp_path, pages=True)
    yield made
    made.terminal.journal.close()
    made.terminal.denylist.close()


def enrolled_card(rig: Rig) -> str:
    _, asn = rig.issue(1_000)
    with Session(rig.engine) as session, session.begin():
        enrol(session, OWN, asn, region="qindu", year_from=2025)
    return asn


def test_an_account_login_alone_opens_no_medical_page(rig: Rig) -> None:
    asn = enrolled_card(rig)
    alice = citizen(rig, ALICE, asn)
    for path in ("/medical", "/medical/claims/new", "/medical/claims/1"):
        page = alice.get(path)
        assert page.status_code == 403 and 'id="med-card-required"' in page.text, path
    assert rig.client().get("/medical", follow_redirects=False).status_code in (303, 307)  # no session: log in


def test_a_claim_is_filed_on_the_pages_reviewed_by_staff_and_paid_to_the_card(rig: Rig) -> None:
    asn = enrolled_card(rig)
    alice = card_citizen(rig, ALICE)
    bind_directly(rig.engine, ALICE["mobile"], OWN, asn)
    home = alice.get("/")
    assert 'id="home-medical"' in home.text
    form = alice.get("/medical/claims/new")
    assert form.status_code == 200, form.text
    data = {"csrf_token": token(form.text), "nonce": hidden(form.text, "nonce"), "hospital_name": "Xijing Hospital",
            "hospital_level": "city", "kind": "inpatient", "day": rig.clock.now.date().isoformat(),
            "total_yuan": "3000.00", "doc_type": "invoice"}  # fmt: skip
    sent = alice.post("/medical/claims", data=data, files=[("documents", ("invoice.pdf", PDF, "application/pdf"))],
                      follow_redirects=False)  # fmt: skip
    assert sent.status_code == 303, sent.text
    location = sent.headers["location"]
    claim_id = int(location.rsplit("/", 1)[1])
    again = alice.post("/medical/claims", data=data, files=[("documents", ("invoice.pdf", PDF, "application/pdf"))],
                       follow_redirects=False)  # fmt: skip
    assert again.headers["location"] == location  # the same form twice is one claim
    page = alice.get(location)
    assert 'id="med-claim-state">submitted' in page.text and "invoice" in page.text
    assert asn not in alice.get("/medical").text  # the card number is not shown

    clerk, csrf = staff_login(rig, "clerk1", "counter_clerk")
    headers = {"X-CSRF-Token": csrf}
    queue = clerk.get("/staff/api/medical/claims?state=submitted", headers=headers)
    assert [c["id"] for c in queue.json()["claims"]] == [claim_id]
    url = f"/staff/api/medical/claims/{claim_id}/review"
    assert (
        clerk.post(url, json={"action": "check", "covered_fen": 250_000}, headers=headers).json()["state"] == "checked"
    )
    valuated = clerk.post(url, json={"action": "valuate"}, headers=headers).json()
    assert valuated["state"] == "valuated" and valuated["fund_fen"] > 0
    paid = clerk.post(url, json={"action": "pay"}, headers=headers).json()
    assert paid["state"] == "paid" and paid["payout_load_id"] == f"med-claim:{claim_id}"
    with Session(rig.engine) as session:
        load = session.get(PendingLoad, paid["payout_load_id"])
        assert load is not None and load.amount_fen == valuated["fund_fen"] and load.card_asn == asn
        actions = session.scalars(
            select(PortalAuditEntry.action).where(PortalAuditEntry.action == "medical_claim_review")
        )
        assert len(list(actions)) == 3
    overview = alice.get("/medical").text
    assert "paid" in overview and re.search(r'id="med-in-fund">[^<]*[1-9]', overview)


def test_staff_input_out_of_bounds_is_a_4xx_and_a_clerk_without_the_role_is_refused(rig: Rig) -> None:
    asn = enrolled_card(rig)
    card_citizen(rig, BOB)
    bind_directly(rig.engine, BOB["mobile"], OWN, asn)
    clerk, csrf = staff_login(rig, "clerk2", "counter_clerk")
    headers = {"X-CSRF-Token": csrf}
    for body in ({"action": "dance"}, {"action": "check", "covered_fen": -1}, {"action": "reject", "x": 1}):
        answer = clerk.post("/staff/api/medical/claims/1/review", json=body, headers=headers)
        assert 400 <= answer.status_code < 500 and "code" in answer.json(), answer.text
    missing = clerk.post("/staff/api/medical/claims/999/review", json={"action": "valuate"}, headers=headers)
    assert (missing.status_code, missing.json()["code"]) == (404, "E_MED_CLAIM_NOT_FOUND")
    assert clerk.get("/staff/api/medical/claims?state=nope", headers=headers).status_code == 422
    no_csrf = clerk.post("/staff/api/medical/claims/1/review", json={"action": "valuate"})
    assert no_csrf.status_code == 403
    refused = clerk.post("/staff/api/medical/visits/1/reversal", json={"reason": "x"}, headers=headers)
    assert (refused.status_code, refused.json()["code"]) == (403, "E_STAFF_FORBIDDEN")
    with Session(rig.engine) as session:
        outcome = session.scalar(select(PortalAuditEntry.outcome).where(PortalAuditEntry.action == "medical_reversal"))
        assert outcome == "E_STAFF_FORBIDDEN"
