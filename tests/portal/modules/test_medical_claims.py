"""Claims for treatment elsewhere: every transition and its refusals, documents, pricing, payment, audit.

The state machine is pinned pair by pair (every state × every action); the service on SQLite and
PostgreSQL: card login required, another citizen's claim not found, a valuated claim rejected
gives its accumulator delta back exactly, payment is a load of the fund's share paid by the fund.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from cardos.records import SHANGHAI_TZ
from clearing import db
from clearing.models import LoadKind, PendingLoad
from portal.accounts import CurrentSession
from portal.audit import AuditLog
from portal.modules.medical.claims import (
    DOC_BYTES_MAX,
    REJECTION_REASONS,
    TRANSITIONS,
    ClaimAction,
    ClaimState,
    Document,
    check_document,
    check_reason,
    next_state,
)
from portal.modules.medical.claims_service import ClaimForm, ClaimService
from portal.modules.medical.errors import MedicalCode, MedicalError
from portal.modules.medical.models import MedicalClaimEvent
from portal.modules.medical.rules import Accumulator, Bill, VisitKind, load_example_rules, reimburse
from tests.portal.conftest import ALICE, BOB, account_service, bind_directly
from tests.terminals.clinic_kit import ClinicRig, make_rig, new_keystore

PDF = b"%PDF-1.4\n% a receipt\n"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16
ISSUER = "01007120ffffffff"


# --- the state machine, pair by pair ----------------------------------------------------------


@pytest.mark.parametrize("state", list(ClaimState))
@pytest.mark.parametrize("action", list(ClaimAction))
def test_every_state_and_action_goes_where_the_table_says_or_is_refused(state: ClaimState, action: ClaimAction) -> None:
    to = TRANSITIONS.get((state, action))
    if to is None:
        with pytest.raises(MedicalError) as err:
            next_state(state, action)
        assert err.value.code is MedicalCode.E_MED_CLAIM_STATE and err.value.status == 409
    else:
        assert next_state(state, action) is to


def test_paid_and_rejected_are_final() -> None:
    for final in (ClaimState.PAID, ClaimState.REJECTED):
        assert not [a for a in ClaimAction if (final, a) in TRANSITIONS]


def test_a_rejection_needs_a_known_reason_code() -> None:
    assert check_reason("6") == "6" and "duplicated" in REJECTION_REASONS["6"]
    for bad in ("", "99", "x" * 50):
        with pytest.raises(MedicalError) as err:
            check_reason(bad)
        assert err.value.code is MedicalCode.E_MED_CLAIM_REASON


@pytest.mark.parametrize(
    "doc",
    [
        Document("selfie", "application/pdf", PDF),
        Document("invoice", "text/html", b"<html>"),
        Document("invoice", "application/pdf", PNG),  # a PNG called a PDF
        Document("invoice", "application/pdf", b""),
        Document("invoice", "application/pdf", b"%PDF-" + b"0" * DOC_BYTES_MAX),
    ],
)
def test_a_document_of_the_wrong_type_size_or_content_is_refused(doc: Document) -> None:
    with pytest.raises(MedicalError) as err:
        check_document(doc)
    assert err.value.code is MedicalCode.E_MED_CLAIM_DOCUMENT


# --- the service ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keystore(tmp_path_factory: pytest.TempPathFactory) -> object:
    return new_keystore(tmp_path_factory.mktemp("ks"))


class Claims:
    def __init__(self, engine: Engine, keystore: object, tmp_path: Path) -> None:
        self.rig: ClinicRig = make_rig(engine, keystore, tmp_path)  # type: ignore[arg-type]
        self.engine = engine
        accounts = account_service(engine)
        alice = accounts.register(**ALICE, client_ip="127.0.0.1")
        bob = accounts.register(**BOB, client_ip="127.0.0.1")
        bind_directly(engine, ALICE["mobile"], ISSUER, self.rig.card_asn)
        self.alice = self.session(alice.citizen_id)
        self.bob = self.session(bob.citizen_id)
        sessions = db.session_factory(engine)
        self.audit = AuditLog(sessions)
        self.service = ClaimService(sessions, load_example_rules(), self.audit)
        self.sent = 0

    @staticmethod
    def session(citizen_id: int, assurance: str = "card") -> CurrentSession:
        return CurrentSession("s", citizen_id, "csrf", assurance, dt.datetime.now(dt.UTC) + dt.timedelta(hours=1))

    def form(self, total_fen: int = 300_000, kind: VisitKind = VisitKind.INPATIENT) -> ClaimForm:
        day = dt.datetime.now(SHANGHAI_TZ).date() - dt.timedelta(days=3)
        return ClaimForm("Xijing Hospital, Xi'an", "city", kind, day, total_fen)

    def file(self, total_fen: int = 300_000) -> int:
        self.sent += 1
        doc = [Document("invoice", "application/pdf", PDF)]
        return self.service.submit(self.alice, self.form(total_fen), doc, submit_ref=f"form-nonce-{self.sent:08d}").id


@pytest.fixture
def claims(engine: Engine, keystore: object, tmp_path: Path) -> Claims:
    return Claims(engine, keystore, tmp_path)


def test_a_claim_is_submitted_checked_valuated_and_paid_to_the_purse_by_the_fund(claims: Claims) -> None:
    claim_id = claims.file()
    service = claims.service
    assert service.one(claims.alice, claim_id).state == "submitted"
    service.review(claim_id, ClaimAction.CHECK, actor="staff:1", covered_fen=250_000)
    valuated = service.review(claim_id, ClaimAction.VALUATE, actor="staff:2")
    form = claims.form()
    rule = load_example_rules().rule_for(form.day, "qindu", "elsewhere", VisitKind.INPATIENT)
    expected = reimburse(rule, Bill(300_000, 250_000), Accumulator(), form.day)
    assert (valuated.fund_fen, valuated.deductible_fen, valuated.rule_version) == (
        expected.fund_fen, expected.deductible_fen, rule.version,
    )  # fmt: skip
    paid = service.review(claim_id, ClaimAction.PAY, actor="staff:2")
    assert paid.state == "paid" and paid.payout_load_id == f"med-claim:{claim_id}"
    with Session(claims.engine) as session:
        load = session.get(PendingLoad, paid.payout_load_id)
        assert load is not None and load.amount_fen == expected.fund_fen and load.kind == LoadKind.REFUND.value
    assert [(e[0], e[1]) for e in paid.events] == [
        (None, "submitted"), ("submitted", "checked"), ("checked", "valuated"), ("valuated", "paid"),
    ]  # fmt: skip
    lines = claims.audit.lines(action="medical_claim_review")
    assert len(lines) == 3 and {line.actor for line in lines} == {"staff:1", "staff:2"}
    assert all(claims.rig.card_asn not in line.target for line in lines)
    assert service.year_totals(claims.alice, form.day.year)["inpatient"] == (expected.deductible_fen, expected.fund_fen)


def test_a_valuated_claim_rejected_gives_its_accumulator_back_exactly(claims: Claims) -> None:
    claim_id = claims.file()
    year = claims.form().day.year
    before = claims.service.year_totals(claims.alice, year)
    claims.service.review(claim_id, ClaimAction.CHECK, actor="staff:1", covered_fen=300_000)
    claims.service.review(claim_id, ClaimAction.VALUATE, actor="staff:1")
    assert claims.service.year_totals(claims.alice, year) != before
    rejected = claims.service.review(
        claim_id, ClaimAction.REJECT, actor="staff:1", reason_code="6", note="paid at a clinic"
    )
    assert rejected.state == "rejected" and rejected.reason_code == "6"
    assert claims.service.year_totals(claims.alice, year) == before
    with Session(claims.engine) as session:
        last = session.scalars(select(MedicalClaimEvent).order_by(MedicalClaimEvent.id.desc())).first()
        assert last is not None and (last.reason_code, last.note) == ("6", "paid at a clinic")


@pytest.mark.parametrize("state_after", ["submitted", "checked"])
def test_a_claim_can_be_rejected_before_valuation_with_its_reason(claims: Claims, state_after: str) -> None:
    claim_id = claims.file()
    if state_after == "checked":
        claims.service.review(claim_id, ClaimAction.CHECK, actor="staff:1", covered_fen=1_000)
    done = claims.service.review(claim_id, ClaimAction.REJECT, actor="staff:1", reason_code="D1")
    assert done.state == "rejected" and done.reason_code == "D1"


def test_the_review_steps_refuse_out_of_order_and_bad_values(claims: Claims) -> None:
    claim_id = claims.file()
    s = claims.service

    def refused(code: MedicalCode, action: ClaimAction, **kw: object) -> None:
        with pytest.raises(MedicalError) as err:
            s.review(claim_id, action, actor="staff:1", **kw)  # type: ignore[arg-type]
        assert err.value.code is code

    refused(MedicalCode.E_MED_CLAIM_STATE, ClaimAction.VALUATE)
    refused(MedicalCode.E_MED_CLAIM_STATE, ClaimAction.PAY)
    refused(MedicalCode.E_MED_BAD_BILL, ClaimAction.CHECK, covered_fen=300_001)
    refused(MedicalCode.E_MED_BAD_BILL, ClaimAction.CHECK)
    refused(MedicalCode.E_MED_CLAIM_REASON, ClaimAction.REJECT, reason_code="42")
    s.review(claim_id, ClaimAction.CHECK, actor="staff:1", covered_fen=0)
    refused(MedicalCode.E_MED_CLAIM_STATE, ClaimAction.CHECK, covered_fen=0)
    s.review(claim_id, ClaimAction.VALUATE, actor="staff:1")
    paid = s.review(claim_id, ClaimAction.PAY, actor="staff:1")
    assert paid.fund_fen == 0 and paid.payout_load_id is None  # nothing covered: paid with nothing
    refused(MedicalCode.E_MED_CLAIM_STATE, ClaimAction.REJECT, reason_code="-1")
    with pytest.raises(MedicalError) as err:
        s.review(999_999, ClaimAction.CHECK, actor="staff:1", covered_fen=0)
    assert err.value.code is MedicalCode.E_MED_CLAIM_NOT_FOUND


def test_claims_need_card_login_and_another_citizens_claim_is_not_found(claims: Claims) -> None:
    claim_id = claims.file()
    account_only = Claims.session(claims.alice.citizen_id, assurance="account")
    with pytest.raises(MedicalError) as err:
        claims.service.mine(account_only)
    assert err.value.code is MedicalCode.E_MED_HOLDER_NOT_AUTHENTICATED
    with pytest.raises(MedicalError) as err:
        claims.service.one(claims.bob, claim_id)  # Bob has no enrolled card
    assert err.value.code is MedicalCode.E_MED_NOT_ENROLLED
    bind_directly(claims.engine, BOB["mobile"], "01007120ffffffff", "0" * 20)  # a card, but not enrolled
    with pytest.raises(MedicalError):
        claims.service.one(claims.bob, claim_id)


def test_a_claim_form_out_of_bounds_is_refused_with_its_code(claims: Claims) -> None:
    form = claims.form()
    doc = [Document("invoice", "application/pdf", PDF)]
    cases = [
        (dict(hospital_name=" "), MedicalCode.E_MED_CLAIM_MALFORMED),
        (dict(hospital_level="moon"), MedicalCode.E_MED_CLAIM_MALFORMED),
        (dict(day=form.day + dt.timedelta(days=10)), MedicalCode.E_MED_CLAIM_MALFORMED),
        (dict(day=form.day - dt.timedelta(days=400)), MedicalCode.E_MED_CLAIM_MALFORMED),
        (dict(total_fen=0), MedicalCode.E_MED_BAD_BILL),
        (dict(total_fen=-5), MedicalCode.E_MED_BAD_BILL),
    ]
    import dataclasses

    for change, code in cases:
        with pytest.raises(MedicalError) as err:
            claims.service.submit(claims.alice, dataclasses.replace(form, **change), doc, submit_ref="r" * 16)  # type: ignore[arg-type]
        assert err.value.code is code, change
    with pytest.raises(MedicalError) as err:
        claims.service.submit(claims.alice, form, [], submit_ref="r" * 16)
    assert err.value.code is MedicalCode.E_MED_CLAIM_DOCUMENT
    assert claims.service.mine(claims.alice) == []


def test_a_form_sent_twice_is_one_claim(claims: Claims) -> None:
    doc = [Document("invoice", "application/pdf", PDF)]
    first = claims.service.submit(claims.alice, claims.form(), doc, submit_ref="n" * 20)
    again = claims.service.submit(claims.alice, claims.form(), doc, submit_ref="n" * 20)
    assert first == again and len(claims.service.mine(claims.alice)) == 1


def test_documents_are_added_while_submitted_only(claims: Claims) -> None:
    claim_id = claims.file()
    view = claims.service.add_document(claims.alice, claim_id, Document("discharge_summary", "image/png", PNG))
    assert [d[1] for d in view.documents] == ["invoice", "discharge_summary"]
    claims.service.review(claim_id, ClaimAction.CHECK, actor="staff:1", covered_fen=1)
    with pytest.raises(MedicalError) as err:
        claims.service.add_document(claims.alice, claim_id, Document("other", "application/pdf", PDF))
    assert err.value.code is MedicalCode.E_MED_CLAIM_STATE


def test_the_demo_seed_enrols_the_card_and_files_one_claim_however_often_it_runs(claims: Claims) -> None:
    from portal.modules.medical.demo import seed_demo_medical

    for _ in range(2):
        seed_demo_medical(db.session_factory(claims.engine), ISSUER, claims.rig.card_asn, ALICE["mobile"])
    [claim] = claims.service.mine(claims.alice)
    assert claim.state == "submitted" and claim.documents[0][1] == "invoice"
