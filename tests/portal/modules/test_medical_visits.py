"""Visit settlement at the host (portal/modules/medical/visits.py, api_clinic.py), SQLite and PostgreSQL.

The refusals of each step with their codes, the idempotency of every step, the clinic API's
401/403/422 shapes, and a property: after any interleaving of opened and cancelled visits the
accumulator in the database is what the pure rules give for the visits left, and the fund's
reservations are exactly the open visits' fund shares.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, text

from cardos.records import SHANGHAI_TZ
from clearing.contract import TapRecord
from portal.modules.medical.errors import MedicalCode, MedicalError
from portal.modules.medical.rules import Accumulator, Bill, VisitKind, apply, load_example_rules, reimburse
from portal.modules.medical.visits import VisitRequest
from terminals.clinic import ClinicBill, ClinicOutcome
from tests.terminals.clinic_kit import CLINIC_TERMINAL, ClinicRig, make_rig, new_keystore, sign_visit

OTHER_TERMINAL = "360486600099"


@pytest.fixture(scope="module")
def keystore(tmp_path_factory: pytest.TempPathFactory) -> object:
    return new_keystore(tmp_path_factory.mktemp("ks"))


@pytest.fixture
def rig(engine: Engine, keystore: object, tmp_path: Path) -> ClinicRig:
    return make_rig(engine, keystore, tmp_path)  # type: ignore[arg-type]


def request(rig: ClinicRig, visit_ref: str, *, total: int = 12_000, covered: int = 10_000,
            signed_for: str = CLINIC_TERMINAL, signed_ref: str | None = None) -> VisitRequest:  # fmt: skip
    cert, sig = sign_visit(rig.card, signed_for, signed_ref or visit_ref)
    return VisitRequest(visit_ref, "01007120ffffffff", rig.card_asn, VisitKind.OUTPATIENT, total, covered, cert, sig)


def refused(code: MedicalCode, call: object, *args: object) -> MedicalError:
    with pytest.raises(MedicalError) as err:
        call(*args)  # type: ignore[operator]
    assert err.value.code is code, err.value
    return err.value


def test_a_signature_made_at_another_clinic_or_for_another_visit_opens_nothing(rig: ClinicRig) -> None:
    refused(MedicalCode.E_MED_HOLDER_NOT_AUTHENTICATED, rig.service.open, CLINIC_TERMINAL,
            request(rig, "visit-0001", signed_for=OTHER_TERMINAL))  # fmt: skip
    refused(MedicalCode.E_MED_HOLDER_NOT_AUTHENTICATED, rig.service.open, CLINIC_TERMINAL,
            request(rig, "visit-0001", signed_ref="visit-9999"))  # fmt: skip
    forged = dataclasses.replace(request(rig, "visit-0001"), card_asn="0" * 20)
    refused(MedicalCode.E_MED_HOLDER_NOT_AUTHENTICATED, rig.service.open, CLINIC_TERMINAL, forged)
    assert rig.visits() == [] and rig.transfers() == []


def test_an_unenrolled_card_and_a_terminal_that_is_no_clinic_are_refused(rig: ClinicRig, engine: Engine) -> None:
    req = request(rig, "visit-0002")
    refused(MedicalCode.E_MED_NOT_A_CLINIC, rig.service.open, OTHER_TERMINAL, req)
    with engine.begin() as conn:
        conn.execute(text("UPDATE medical_members SET year_from = 2099"))
    err = refused(MedicalCode.E_MED_NOT_ENROLLED, rig.service.open, CLINIC_TERMINAL, req)
    assert err.status == 404 and rig.card_asn not in err.message  # masked


def test_opening_a_visit_twice_is_one_visit_and_other_contents_are_a_conflict(rig: ClinicRig) -> None:
    req = request(rig, "visit-0003")
    first = rig.service.open(CLINIC_TERMINAL, req)
    assert rig.service.open(CLINIC_TERMINAL, req) == first
    refused(
        MedicalCode.E_MED_VISIT_CONFLICT, rig.service.open, CLINIC_TERMINAL, dataclasses.replace(req, total_fen=13_000)
    )
    refused(MedicalCode.E_MED_VISIT_OPEN, rig.service.open, CLINIC_TERMINAL, request(rig, "visit-0004"))
    assert len(rig.visits()) == 1 and len(rig.transfers()) == 1


def test_the_visit_is_priced_by_the_rule_in_force_and_the_split_sums_to_the_bill(rig: ClinicRig) -> None:
    quote = rig.service.open(CLINIC_TERMINAL, request(rig, "visit-0005", total=3_001, covered=3_001))
    day = dt.datetime.now(SHANGHAI_TZ).date()
    rule = load_example_rules().rule_for(day, "qindu", "township", VisitKind.OUTPATIENT)
    expected = reimburse(rule, Bill(3_001, 3_001), Accumulator(), day)
    assert (quote.fund_fen, quote.patient_fen, quote.rule_version) == (
        expected.fund_fen,
        expected.patient_fen,
        rule.version,
    )
    assert quote.fund_fen + quote.patient_fen == 3_001


def _record(rig: ClinicRig, visit_patient_fen: int, **changes: object) -> TapRecord:
    base = TapRecord(
        terminal_id=CLINIC_TERMINAL, terminal_seq=1, psam_serial="00" * 10, issuer_id="01007120ffffffff",
        card_asn=rig.card_asn, card_type="social_security", tx_type=6, amount_fen=visit_patient_fen,
        balance_before_fen=20_000, offline_counter=1, key_version=1, alg_id=0, tac="00000000",
        tx_time=dt.datetime.now(SHANGHAI_TZ).isoformat(timespec="seconds"),
    )  # fmt: skip
    return msgspec.structs.replace(base, **changes)


def test_a_purse_record_that_is_not_the_visits_or_whose_tac_fails_posts_no_fund_share(rig: ClinicRig) -> None:
    quote = rig.service.open(CLINIC_TERMINAL, request(rig, "visit-0006"))
    refused(MedicalCode.E_MED_PURSE_RECORD, rig.service.confirm, CLINIC_TERMINAL, "visit-0006",
            _record(rig, quote.patient_fen + 1))  # fmt: skip
    refused(MedicalCode.E_MED_PURSE_RECORD, rig.service.confirm, CLINIC_TERMINAL, "visit-0006",
            _record(rig, quote.patient_fen, terminal_id=OTHER_TERMINAL))  # fmt: skip
    refused(
        MedicalCode.E_MED_PURSE_TAC, rig.service.confirm, CLINIC_TERMINAL, "visit-0006", _record(rig, quote.patient_fen)
    )
    assert rig.visits()[0][0] == "reserved"
    assert rig.transfers() == [("med:1:reserve", "pending", quote.fund_fen)] and rig.balances()["clinic"] == 0
    refused(MedicalCode.E_MED_VISIT_NOT_FOUND, rig.service.confirm, CLINIC_TERMINAL, "nope-nope", _record(rig, 1))


def test_a_cancelled_visit_cannot_be_confirmed_and_a_cancel_replays(rig: ClinicRig) -> None:
    quote = rig.service.open(CLINIC_TERMINAL, request(rig, "visit-0007"))
    assert rig.service.cancel(CLINIC_TERMINAL, "visit-0007").state == "cancelled"
    assert rig.service.cancel(CLINIC_TERMINAL, "visit-0007").state == "cancelled"
    refused(MedicalCode.E_MED_VISIT_STATE, rig.service.confirm, CLINIC_TERMINAL, "visit-0007",
            _record(rig, quote.patient_fen))  # fmt: skip
    assert [a[2:] for a in rig.accumulator()] == [(0, 0)] and rig.balances()["fund_pending_debit"] == 0


def test_the_clinic_api_refuses_a_missing_or_foreign_token_and_malformed_bodies(rig: ClinicRig, engine: Engine) -> None:
    from sqlalchemy.orm import Session

    from clearing import registry

    with Session(engine) as session, session.begin():
        other_token = registry.register_terminal(session, OTHER_TERMINAL, "clinic-other")
    path = f"/medical/v1/clinics/{CLINIC_TERMINAL}/visits"
    assert rig.client.post(path, json={}).json()["code"] == "E_UNAUTHORIZED"
    answer = rig.client.post(path, json={}, headers={"Authorization": f"Bearer {other_token}"})
    assert (answer.status_code, answer.json()["code"]) == (403, "E_FORBIDDEN")
    good = {"Authorization": f"Bearer {rig.token}"}
    for body in ({}, {"visit_ref": "x"}, [], {"total_fen": 1.5}):
        answer = rig.client.post(path, json=body, headers=good)
        assert (answer.status_code, answer.json()["code"]) == (422, "E_MED_MALFORMED"), answer.text
    answer = rig.client.post(path, content=b"\xff\xfe", headers={**good, "Content-Type": "application/json"})
    assert answer.status_code == 422
    answer = rig.client.post(f"{path}/visit-0008/confirm", json={"record": {"x": 1}}, headers=good)
    assert (answer.status_code, answer.json()["code"]) == (422, "E_MED_MALFORMED")
    answer = rig.client.get(f"{path}/visit-0008", headers=good)
    assert (answer.status_code, answer.json()["code"]) == (404, "E_MED_VISIT_NOT_FOUND")


def test_a_bill_the_purse_owes_nothing_on_is_settled_at_once(engine: Engine, keystore: object, tmp_path: Path) -> None:
    rig = make_rig(engine, keystore, tmp_path)  # type: ignore[arg-type]
    clinic, reader = rig.in_process_clinic()
    reader.insert(rig.card)
    result = clinic.settle(ClinicBill(0, 0), "123456")
    assert result.outcome is ClinicOutcome.SETTLED and rig.visits() == [("settled", 0, 0)] and rig.transfers() == []


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, 8_000), st.booleans()), min_size=1, max_size=4))
def test_after_opened_and_cancelled_visits_the_accumulator_is_the_rules_sum_of_the_visits_left(
    rig: ClinicRig, visits: list[tuple[int, bool]]
) -> None:
    from sqlalchemy import delete, update
    from sqlalchemy.orm import Session

    from portal.modules.medical.models import MedicalAccumulator, MedicalDayTotal, MedicalVisit

    with Session(rig.engine) as session, session.begin():  # hypothesis reuses the rig: start each example empty
        session.execute(update(MedicalVisit).where(MedicalVisit.state == "reserved").values(state="cancelled"))
        session.execute(delete(MedicalAccumulator))
        session.execute(delete(MedicalDayTotal))
    pending_before = rig.balances()["fund_pending_debit"]
    day = dt.datetime.now(SHANGHAI_TZ).date()
    rule = load_example_rules().rule_for(day, "qindu", "township", VisitKind.OUTPATIENT)
    acc = Accumulator()
    reserved = 0
    for n, (total, cancel) in enumerate(visits):
        ref = f"prop-{rig.visits().__len__():04d}-{n}"
        quote = rig.service.open(CLINIC_TERMINAL, request(rig, ref, total=total, covered=total))
        expected = reimburse(rule, Bill(total, total), acc, day)
        assert (quote.fund_fen, quote.patient_fen) == (expected.fund_fen, expected.patient_fen)
        if cancel or quote.state == "settled":
            if quote.state == "reserved":
                rig.service.cancel(CLINIC_TERMINAL, ref)
            if quote.state == "settled":
                acc = apply(acc, expected.delta)
        else:
            acc = apply(acc, expected.delta)
            reserved += quote.fund_fen
            # one open visit per card at a clinic: release it for the next, keeping its totals
            with Session(rig.engine) as session, session.begin():
                session.execute(update(MedicalVisit).where(MedicalVisit.visit_ref == ref).values(state="settled"))
    [(_, _, deductible_used, fund_paid)] = rig.accumulator()
    assert (deductible_used, fund_paid) == (acc.deductible_used_fen, acc.fund_paid_fen)
    assert rig.balances()["fund_pending_debit"] - pending_before == reserved
