"""The reimbursement rules and the accumulator, as pure functions (portal/modules/medical/rules.py)."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from portal.modules.medical.errors import MedicalCode, MedicalError
from portal.modules.medical.rules import (
    Accumulator,
    Bill,
    Limit,
    Rule,
    VisitKind,
    apply,
    load_example_rules,
    parse_rules,
    reimburse,
    unapply,
)

DAY = dt.date(2026, 3, 2)
HEADER = "version,year,region,hospital_level,kind,effective_from,deductible_fen,ratio_bp,annual_cap_fen,daily_cap_fen\n"


def rule(
    *,
    deductible: int = 0,
    ratio_bp: int = 5000,
    annual: int = 40_000,
    daily: int | None = 5_000,
    kind: VisitKind = VisitKind.OUTPATIENT,
) -> Rule:
    return Rule(
        "t.1", DAY.year, "qindu", "township", kind, dt.date(DAY.year, 1, 1), deductible, ratio_bp, annual, daily
    )


# --- examples ------------------------------------------------------------------------------


def test_the_deductible_is_paid_first_then_the_ratio_rounded_down_to_the_fen() -> None:
    r = reimburse(rule(deductible=20_000, ratio_bp=8500, annual=15_000_000, daily=None, kind=VisitKind.INPATIENT),
                  Bill(100_001, 100_001), Accumulator(), DAY)  # fmt: skip
    assert r.deductible_fen == 20_000
    assert r.ratio_fen == 80_001 * 8500 // 10_000 == 68_000  # 68000.85 rounded down
    assert (r.fund_fen, r.patient_fen, r.limit) == (68_000, 32_001, Limit.NONE)


def test_the_deductible_already_used_this_year_is_not_paid_again() -> None:
    acc = Accumulator(deductible_used_fen=15_000)
    r = reimburse(rule(deductible=20_000, ratio_bp=5000, daily=None, kind=VisitKind.INPATIENT, annual=10**7),
                  Bill(10_000, 10_000), acc, DAY)  # fmt: skip
    assert r.deductible_fen == 5_000 and r.fund_fen == 2_500 and r.patient_fen == 7_500


def test_self_paid_items_are_never_reimbursed() -> None:
    r = reimburse(rule(ratio_bp=10_000, daily=10**6, annual=10**6), Bill(5_000, 2_000), Accumulator(), DAY)
    assert (r.fund_fen, r.patient_fen) == (2_000, 3_000)


def test_the_daily_cap_limits_outpatient_pooling_on_that_day_only() -> None:
    acc = Accumulator(fund_paid_fen=4_000, days={DAY: 4_000})
    capped = reimburse(rule(ratio_bp=6000, daily=5_000), Bill(10_000, 10_000), acc, DAY)
    assert (capped.fund_fen, capped.limit) == (1_000, Limit.DAILY_CAP)
    next_day = reimburse(rule(ratio_bp=6000, daily=5_000), Bill(5_000, 5_000), acc, DAY + dt.timedelta(days=1))
    assert (next_day.fund_fen, next_day.limit) == (3_000, Limit.NONE)


def test_the_annual_cap_limits_the_fund_and_a_full_cap_pays_nothing() -> None:
    near = reimburse(rule(annual=40_000, daily=10**6), Bill(10_000, 10_000), Accumulator(fund_paid_fen=38_000), DAY)
    assert (near.fund_fen, near.patient_fen, near.limit) == (2_000, 8_000, Limit.ANNUAL_CAP)
    full = reimburse(rule(annual=40_000, daily=10**6), Bill(10_000, 10_000), Accumulator(fund_paid_fen=40_000), DAY)
    assert (full.fund_fen, full.patient_fen) == (0, 10_000)


@pytest.mark.parametrize(("total", "covered"), [(-1, 0), (100, 101), (10**9, 0), (0, -1)])
def test_a_bill_outside_its_form_is_refused_with_a_code(total: int, covered: int) -> None:
    with pytest.raises(MedicalError) as err:
        Bill(total, covered)
    assert err.value.code is MedicalCode.E_MED_BAD_BILL and err.value.status == 422


# --- the tables ----------------------------------------------------------------------------


def test_the_shipped_tables_are_labelled_examples_and_cover_every_year_region_and_level() -> None:
    book = load_example_rules()
    assert book.example is True
    for year in (2025, 2026, 2027):
        for region in ("qindu", "xingping"):
            for level in ("village", "township", "county", "city", "elsewhere"):
                found = book.rule_for(dt.date(year, 6, 1), region, level, VisitKind.OUTPATIENT)
                assert found.daily_cap_fen is not None
                if level != "village":
                    assert book.rule_for(dt.date(year, 6, 1), region, level, VisitKind.INPATIENT).daily_cap_fen is None


def test_the_version_in_force_on_the_visit_day_prices_it() -> None:
    book = load_example_rules()
    before = book.rule_for(dt.date(2026, 6, 30), "qindu", "township", VisitKind.OUTPATIENT)
    after = book.rule_for(dt.date(2026, 7, 1), "qindu", "township", VisitKind.OUTPATIENT)
    assert (before.version, after.version) == ("2026.1", "2026.2") and after.ratio_bp > before.ratio_bp


def test_no_rule_for_a_year_or_region_is_a_clear_refusal() -> None:
    book = load_example_rules()
    with pytest.raises(MedicalError) as err:
        book.rule_for(dt.date(2030, 1, 5), "qindu", "township", VisitKind.OUTPATIENT)
    assert err.value.code is MedicalCode.E_MED_NO_RULE
    with pytest.raises(MedicalError):
        book.rule_for(dt.date(2026, 1, 5), "nowhere", "township", VisitKind.OUTPATIENT)
    with pytest.raises(MedicalError):  # village clinics have no inpatient beds in the example
        book.rule_for(dt.date(2026, 1, 5), "qindu", "village", VisitKind.INPATIENT)


@pytest.mark.parametrize(
    ("row", "says"),
    [
        ("v,2026,qindu,township,outpatient,2026-01-01,0,10001,1,1", "ratio_bp"),
        ("v,2026,qindu,township,outpatient,2026-01-01,0,5000,1,", "daily_cap_fen"),
        ("v,2026,qindu,township,inpatient,2026-01-01,0,5000,1,7", "no daily cap"),
        ("v,2026,qindu,township,outpatient,2025-12-31,0,5000,1,1", "not in year"),
        ("v,2026,qindu,moon,outpatient,2026-01-01,0,5000,1,1", "hospital_level"),
        ("v,2026,qindu,township,outpatient,2026-01-01,x,5000,1,1", "not an integer"),
        ("v,2026,qindu,township,dental,2026-01-01,0,5000,1,1", "bad kind"),
    ],
)
def test_a_bad_rule_row_is_refused_naming_its_line(row: str, says: str) -> None:
    with pytest.raises(MedicalError) as err:
        parse_rules("# EXAMPLE\n" + HEADER + row + "\n", source="t.csv")
    assert (
        err.value.code is MedicalCode.E_MED_RULES_FILE and "line 3" in err.value.message and says in err.value.message
    )


def test_two_rows_for_one_key_are_refused() -> None:
    row = "v,2026,qindu,township,outpatient,2026-01-01,0,5000,1,1\n"
    with pytest.raises(MedicalError, match="a second row"):
        parse_rules(HEADER + row + row, source="t.csv")


# --- properties ----------------------------------------------------------------------------

rules_st = st.builds(
    lambda kind, deductible, ratio, annual, daily: rule(
        deductible=deductible,
        ratio_bp=ratio,
        annual=annual,
        kind=kind,
        daily=daily if kind is VisitKind.OUTPATIENT else None,
    ),
    st.sampled_from(list(VisitKind)),
    st.integers(0, 200_000),
    st.integers(0, 10_000),
    st.integers(0, 20_000_000),
    st.integers(0, 50_000),
)
bills_st = st.integers(0, 5_000_000).flatmap(lambda total: st.tuples(st.just(total), st.integers(0, total)))
days_st = st.integers(0, 5).map(lambda n: DAY + dt.timedelta(days=n))


@settings(max_examples=400, deadline=None)
@given(rules_st, st.lists(st.tuples(days_st, bills_st), min_size=1, max_size=12))
def test_the_fund_never_pays_a_negative_amount_nor_above_its_caps_and_the_split_sums_to_the_bill(
    r: Rule, visits: list[tuple[dt.date, tuple[int, int]]]
) -> None:
    acc = Accumulator()
    for day, (total, covered) in visits:
        split = reimburse(r, Bill(total, covered), acc, day)
        assert split.fund_fen >= 0 and split.patient_fen >= 0
        assert split.fund_fen + split.patient_fen == total
        assert split.fund_fen <= split.ratio_fen <= covered
        acc = apply(acc, split.delta)
        assert acc.fund_paid_fen <= r.annual_cap_fen
        assert acc.deductible_used_fen <= r.deductible_fen
        if r.daily_cap_fen is not None:
            assert all(paid <= r.daily_cap_fen for paid in acc.days.values())


@settings(max_examples=300, deadline=None)
@given(rules_st, st.lists(st.tuples(days_st, bills_st), max_size=8), days_st, bills_st)
def test_applying_then_reversing_a_visit_restores_the_accumulator_exactly(
    r: Rule, before: list[tuple[dt.date, tuple[int, int]]], day: dt.date, bill: tuple[int, int]
) -> None:
    acc = Accumulator()
    for d, (total, covered) in before:
        acc = apply(acc, reimburse(r, Bill(total, covered), acc, d).delta)
    split = reimburse(r, Bill(*bill), acc, day)
    assert unapply(apply(acc, split.delta), split.delta) == acc


@settings(max_examples=200, deadline=None)
@given(rules_st, bills_st, bills_st, days_st)
def test_a_reversed_visit_leaves_the_next_visit_priced_as_if_it_never_happened(
    r: Rule, first: tuple[int, int], second: tuple[int, int], day: dt.date
) -> None:
    acc = Accumulator()
    d1 = reimburse(r, Bill(*first), acc, day).delta
    restored = unapply(apply(acc, d1), d1)
    assert reimburse(r, Bill(*second), restored, day) == reimburse(r, Bill(*second), acc, day)
