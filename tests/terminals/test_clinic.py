"""The clinic terminal in process: card, PIN, host (the real clearing app with the clinic API), PSAM.

Every test checks the books after each step: the fund's share is posted only together with the
patient's share (a purse record whose TAC verifies), a torn purse debit leaves the fund's share
reserved, never paid, and a cancelled or reversed visit leaves fund, purse and accumulator as
they were.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from clearing.models import LoadKind, PendingLoad
from portal.audit import AuditLog
from portal.modules.medical.errors import MedicalCode, MedicalError
from terminals.clinic import ClinicBill, ClinicOutcome
from terminals.loading import HttpLoadHost, LoadOutcome, load_card
from tests.terminals.clinic_kit import (
    CLINIC_TERMINAL,
    PIN,
    ClinicRig,
    TearAt,
    make_rig,
    migrated_template,
    new_keystore,
    sqlite_copy,
)

BILL = ClinicBill(total_fen=12_000, covered_fen=10_000)  # 120.00 CNY, of which 100.00 in the catalogue


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return migrated_template(tmp_path_factory.mktemp("medical-template"))


@pytest.fixture(scope="module")
def keystore(tmp_path_factory: pytest.TempPathFactory) -> object:
    return new_keystore(tmp_path_factory.mktemp("ks"))


@pytest.fixture
def engine(template: Path, tmp_path: Path) -> Iterator[Engine]:
    eng = sqlite_copy(template, tmp_path)
    yield eng
    eng.dispose()


@pytest.fixture
def rig(engine: Engine, keystore: object, tmp_path: Path) -> ClinicRig:
    return make_rig(engine, keystore, tmp_path)  # type: ignore[arg-type]


def _split(rig: ClinicRig) -> tuple[int, int]:
    """The example township outpatient rule (no deductible, 55 % or 65 %, daily cap 50.00)."""
    [(_, fund, patient)] = rig.visits()
    return fund, patient


def test_a_visit_takes_the_fund_share_from_the_fund_and_the_patient_share_from_the_purse(rig: ClinicRig) -> None:
    clinic, reader = rig.in_process_clinic()
    reader.insert(rig.card)
    before = rig.balances()
    result = clinic.settle(BILL, PIN)
    assert result.outcome is ClinicOutcome.SETTLED, result.message
    fund, patient = _split(rig)
    assert fund + patient == BILL.total_fen and 0 < fund <= 5_000  # the daily cap of outpatient pooling
    assert rig.card.registers.balance_fen == 20_000 - patient
    assert rig.visits() == [("settled", fund, patient)]
    assert rig.transfers() == [("med:1", "posted", fund), ("med:1:reserve", "pending", fund)]
    after = rig.balances()
    assert after["fund"] == before["fund"] - fund and after["clinic"] == fund and after["fund_pending_debit"] == 0
    # the purse record clears like any tap: the clinic then holds the whole bill
    answer = rig.upload(clinic.terminal.journal)
    assert [v["verdict"] for v in answer["verdicts"]] == ["accepted"]
    cleared = rig.balances()
    assert cleared["clinic"] == BILL.total_fen and cleared["card"] == 20_000 - patient
    assert result.receipt is not None and "fund pays" in result.receipt and rig.card_asn not in result.receipt
    [(_, kind, deductible_used, fund_paid)] = rig.accumulator()
    assert (kind, deductible_used, fund_paid) == ("outpatient", 0, fund)


def test_a_wrong_pin_refuses_the_visit_before_anything_is_reserved(rig: ClinicRig) -> None:
    clinic, reader = rig.in_process_clinic()
    reader.insert(rig.card)
    result = clinic.settle(BILL, "000000")
    assert result.outcome is ClinicOutcome.REFUSED and "wrong PIN, 2 tries left" in result.message
    assert rig.visits() == [] and rig.transfers() == [] and rig.accumulator() == []
    assert rig.card.registers.balance_fen == 20_000


def test_a_torn_purse_debit_pays_no_fund_share_until_the_card_proves_the_debit(rig: ClinicRig) -> None:
    clinic, reader = rig.in_process_clinic()
    reader.insert(TearAt(rig.card, phase="after_commit"))
    torn = clinic.settle(BILL, PIN)
    fund, patient = _split(rig)
    assert torn.outcome is ClinicOutcome.PRESENT_AGAIN, torn.message
    assert rig.card.registers.balance_fen == 20_000 - patient  # the card committed the debit
    assert rig.visits() == [("reserved", fund, patient)]
    assert rig.transfers() == [("med:1:reserve", "pending", fund)]  # reserved, not paid
    assert rig.balances()["clinic"] == 0
    again = clinic.settle(BILL, PIN)  # the patient presents the card again: proved, not charged twice
    assert again.outcome is ClinicOutcome.SETTLED, again.message
    assert again.tap is not None and again.tap.outcome.value == "T_RECOVERED"
    assert rig.card.registers.balance_fen == 20_000 - patient
    assert rig.visits() == [("settled", fund, patient)] and rig.balances()["clinic"] == fund


def test_a_purse_debit_torn_before_the_card_committed_is_charged_once_on_the_next_presentation(rig: ClinicRig) -> None:
    clinic, reader = rig.in_process_clinic()
    reader.insert(TearAt(rig.card, phase="before_commit"))
    torn = clinic.settle(BILL, PIN)
    assert torn.outcome is ClinicOutcome.PRESENT_AGAIN and rig.card.registers.balance_fen == 20_000
    assert rig.balances()["clinic"] == 0
    again = clinic.settle(BILL, PIN)
    fund, patient = _split(rig)
    assert again.outcome is ClinicOutcome.SETTLED, again.message
    assert rig.card.registers.balance_fen == 20_000 - patient and rig.balances()["clinic"] == fund


def test_a_purse_that_cannot_pay_cancels_the_visit_and_restores_the_accumulator(
    engine: Engine, keystore: object, tmp_path: Path
) -> None:
    rig = make_rig(engine, keystore, tmp_path, balance_fen=100)  # type: ignore[arg-type]
    clinic, reader = rig.in_process_clinic()
    reader.insert(rig.card)
    result = clinic.settle(BILL, PIN)
    assert result.outcome is ClinicOutcome.CANCELLED, result.message
    [(state, _, _)] = rig.visits()
    assert state == "cancelled"
    assert sorted(t[1] for t in rig.transfers()) == ["pending", "voided"]  # reserved, then released
    assert [a[2:] for a in rig.accumulator()] == [(0, 0)]
    balances = rig.balances()
    assert balances["clinic"] == 0 and balances["fund_pending_debit"] == 0 and balances["fund"] == 0
    assert rig.card.registers.balance_fen == 100


def test_the_clerk_cannot_cancel_a_visit_whose_purse_debit_is_in_doubt(rig: ClinicRig) -> None:
    clinic, reader = rig.in_process_clinic()
    reader.insert(TearAt(rig.card))
    assert clinic.settle(BILL, PIN).outcome is ClinicOutcome.PRESENT_AGAIN
    refused = clinic.cancel_open("01007120ffffffff", rig.card_asn)
    assert refused.outcome is ClinicOutcome.REFUSED and "present the card again" in refused.message
    assert rig.visits()[0][0] == "reserved"


def test_a_reversed_visit_restores_the_fund_the_purse_and_the_accumulator_exactly(rig: ClinicRig) -> None:
    clinic, reader = rig.in_process_clinic()
    reader.insert(rig.card)
    accumulator_before = rig.accumulator()
    assert clinic.settle(BILL, PIN).outcome is ClinicOutcome.SETTLED
    rig.upload(clinic.terminal.journal)
    _, patient = _split(rig)
    quote = rig.service.reverse(1, reason="billed to the wrong patient", actor="staff:7")
    assert quote.state == "reversed" and quote.refund_load_id == "med-refund:1"
    assert [a[2:] for a in rig.accumulator()] == [(0, 0)] and accumulator_before == []
    balances = rig.balances()
    assert balances["fund"] == 0 and balances["clinic"] == patient  # the fund's share is back
    # the purse: the refund load, paid by the clinic, at the next load-capable reader
    load_host = HttpLoadHost(rig.client, CLINIC_TERMINAL, rig.token)
    report = load_card(reader, load_host, CLINIC_TERMINAL)
    assert [r.outcome for r in report.results] == [LoadOutcome.LOADED]
    assert rig.card.registers.balance_fen == 20_000
    final = rig.balances()
    assert final["clinic"] == 0 and final["card"] == 20_000 and final["fund"] == 0
    with Session(rig.engine) as session:
        load = session.get(PendingLoad, "med-refund:1")
        assert load is not None and load.kind == LoadKind.REFUND.value
    [line] = AuditLog(rig.service.sessions).lines(action="medical_reversal")
    assert line.actor == "staff:7" and rig.card_asn not in line.target
    assert rig.service.reverse(1, reason="again", actor="staff:7").state == "reversed"  # a replay moves nothing
    assert rig.balances() == final


def test_a_visit_cannot_be_reversed_before_it_is_settled_nor_cancelled_after(rig: ClinicRig) -> None:
    clinic, reader = rig.in_process_clinic()
    reader.insert(TearAt(rig.card))
    clinic.settle(BILL, PIN)
    with pytest.raises(MedicalError) as err:
        rig.service.reverse(1, reason="x", actor="staff:1")
    assert err.value.code is MedicalCode.E_MED_VISIT_STATE
    assert clinic.settle(BILL, PIN).outcome is ClinicOutcome.SETTLED
    visit_ref = rig.service.get(CLINIC_TERMINAL, _ref(rig)).visit_ref
    with pytest.raises(MedicalError) as err:
        rig.service.cancel(CLINIC_TERMINAL, visit_ref)
    assert err.value.code is MedicalCode.E_MED_VISIT_STATE


def _ref(rig: ClinicRig) -> str:
    from sqlalchemy import select

    from portal.modules.medical.models import MedicalVisit

    with Session(rig.engine) as session:
        return str(session.execute(select(MedicalVisit.visit_ref)).scalar_one())


def test_a_second_visit_the_same_day_is_held_to_the_daily_cap(rig: ClinicRig) -> None:
    clinic, reader = rig.in_process_clinic()
    reader.insert(rig.card)
    assert clinic.settle(BILL, PIN).outcome is ClinicOutcome.SETTLED
    second = clinic.settle(BILL, PIN)
    assert second.outcome is ClinicOutcome.SETTLED and second.visit is not None
    [(_, f1, _), (_, f2, _)] = rig.visits()
    assert f1 + f2 == 5_000 and second.visit.limited_by == "daily_cap"
    assert "daily cap reached" in (second.receipt or "")


def test_a_terminal_restarted_with_a_torn_visit_finishes_it_from_the_host_and_its_journal(rig: ClinicRig) -> None:
    clinic, reader = rig.in_process_clinic()
    reader.insert(TearAt(rig.card, phase="after_commit"))
    assert clinic.settle(BILL, PIN).outcome is ClinicOutcome.PRESENT_AGAIN
    clinic.terminal.journal.close()
    clinic.terminal.denylist.close()
    restarted, reader2 = rig.in_process_clinic()  # the same journal file, nothing in memory
    reader2.insert(rig.card)
    done = restarted.settle(BILL, PIN)
    assert done.outcome is ClinicOutcome.SETTLED and done.message.startswith("resumed visit"), done.message
    _, patient = _split(rig)
    assert rig.card.registers.balance_fen == 20_000 - patient  # charged once: the debit was proved
    assert rig.visits()[0][0] == "settled"


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        ([], "E_USAGE: a clinic needs its host"),
        (["--clearing-url", "http://127.0.0.1:9", "--token", "t", "--visit-kind", "dental"], "--visit-kind"),
        (["--clearing-url", "http://127.0.0.1:9", "--token", "t", "--covered-fen", "5"], "--covered-fen"),
        (["--clearing-url", "http://127.0.0.1:9", "--token", "t", "--bill-fen", "0"], "--bill-fen"),
        (["--clearing-url", "http://127.0.0.1:9", "--token", "t"], "E_READER_NOT_FOUND"),
    ],
)
def test_terminal_run_clinic_refuses_bad_options_before_touching_a_reader(
    tmp_path: Path, extra: list[str], says: str
) -> None:
    from typer.testing import CliRunner

    from yikatong.cli import app

    args = ["terminal", "run", "--card-reader", "No Such Reader", "--sam-reader", "Nor This", "--clinic"]
    result = CliRunner().invoke(app, [*args, "--journal", str(tmp_path / "clinic.db"), *extra])
    assert result.exit_code == 1 and says in result.output, result.output
    assert not (tmp_path / "clinic.db").exists()


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.integers(1, 1_000), min_size=1, max_size=3), st.integers(0, 2))
def test_reversing_any_settled_visit_takes_out_exactly_its_share_of_fund_and_accumulator(
    rig: ClinicRig, bills: list[int], which: int
) -> None:
    """Through the real terminal, PSAM and host: after visits and one reversal, the accumulator and the
    fund are what the pure rules give for the visits kept, and the purse is owed back exactly its share."""
    import datetime as dt

    from cardos.records import SHANGHAI_TZ
    from portal.modules.medical.rules import Accumulator, Bill, VisitKind, apply, load_example_rules, reimburse

    clinic, reader = rig.in_process_clinic()
    reader.insert(rig.card)
    day = dt.datetime.now(SHANGHAI_TZ).date()
    rule = load_example_rules().rule_for(day, "qindu", "township", VisitKind.OUTPATIENT)
    rows = rig.accumulator()
    acc = (
        Accumulator(rows[0][2], rows[0][3], {day: rows[0][3]} if rows and rows[0][3] else {}) if rows else Accumulator()
    )
    fund_before, first_id = rig.balances()["fund"], len(rig.visits()) + 1
    splits = []
    for total in bills:
        split = reimburse(rule, Bill(total, total), acc, day)
        result = clinic.settle(ClinicBill(total, total), PIN)
        assert result.outcome is ClinicOutcome.SETTLED and result.visit is not None, result.message
        assert (result.visit.fund_fen, result.visit.patient_fen) == (split.fund_fen, split.patient_fen)
        acc = apply(acc, split.delta)
        splits.append(split)
    chosen = which % len(splits)
    rig.upload(clinic.terminal.journal)  # the purse shares clear to the clinic first
    quote = rig.service.reverse(first_id + chosen, reason="property", actor="staff:prop")
    kept = [s for i, s in enumerate(splits) if i != chosen]
    [(_, _, deductible_used, fund_paid)] = rig.accumulator()
    expected = Accumulator(
        acc.deductible_used_fen - splits[chosen].deductible_fen, acc.fund_paid_fen - splits[chosen].fund_fen
    )
    assert (deductible_used, fund_paid) == (expected.deductible_used_fen, expected.fund_paid_fen)
    assert rig.balances()["fund"] == fund_before - sum(s.fund_fen for s in kept)
    if splits[chosen].patient_fen:
        with Session(rig.engine) as session:
            load = session.get(PendingLoad, quote.refund_load_id)
            assert load is not None and load.amount_fen == splits[chosen].patient_fen
    clinic.terminal.journal.close()
    clinic.terminal.denylist.close()
