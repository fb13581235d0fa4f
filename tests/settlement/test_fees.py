"""Fees: exact integer fen, minimum and cap, rounding rules, monotonicity (settlement/fees.py)."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from settlement.errors import SettlementCode, SettlementError
from settlement.fees import AMOUNT_FEN_MAX, FeeBook, FeeSchedule, Rounding, assess, fee, round_ratio

amounts = st.integers(min_value=0, max_value=AMOUNT_FEN_MAX)
small_amounts = st.integers(min_value=0, max_value=10**9)


@st.composite
def schedules(draw: st.DrawFn) -> FeeSchedule:
    bps = draw(st.integers(min_value=0, max_value=10_000))
    min_fen = draw(st.integers(min_value=0, max_value=10_000))
    cap_fen = draw(st.none() | st.integers(min_value=min_fen, max_value=min_fen + 10**7))
    return FeeSchedule(bps, min_fen, cap_fen, draw(st.sampled_from(Rounding)))


def reference_round(exact: Fraction, rounding: Rounding) -> int:
    """The rounding rules written the slow, obvious way on a Fraction."""
    floor = math.floor(exact)
    rest = exact - floor
    if rounding is Rounding.DOWN or rest == 0:
        return floor
    if rest > Fraction(1, 2):
        return floor + 1
    if rest < Fraction(1, 2):
        return floor
    return floor + 1 if rounding is Rounding.HALF_UP else floor + (floor % 2)


def reference_fee(gross: int, refunds: int, schedule: FeeSchedule) -> int:
    base = gross - refunds
    if base <= 0:
        return 0
    charged = max(schedule.min_fen, reference_round(Fraction(base * schedule.bps, 10_000), schedule.rounding))
    if schedule.cap_fen is not None:
        charged = min(schedule.cap_fen, charged)
    return min(base, charged)


@given(gross=amounts, refunds=amounts, schedule=schedules())
def test_fee_equals_the_exact_rational_rounded_once(gross: int, refunds: int, schedule: FeeSchedule) -> None:
    assert fee(gross, refunds, schedule) == reference_fee(gross, refunds, schedule)


@given(gross=small_amounts, schedule=schedules())
def test_fee_lies_between_minimum_and_cap_once_gross_covers_the_minimum(gross: int, schedule: FeeSchedule) -> None:
    charged = fee(gross, 0, schedule)
    assert 0 <= charged <= gross
    if gross >= schedule.min_fen and gross > 0:
        assert charged >= schedule.min_fen
    if schedule.cap_fen is not None:
        assert charged <= schedule.cap_fen


@given(a=small_amounts, b=small_amounts, refunds=small_amounts, schedule=schedules())
def test_fee_never_falls_as_gross_grows(a: int, b: int, refunds: int, schedule: FeeSchedule) -> None:
    low, high = sorted((a, b))
    assert fee(low, refunds, schedule) <= fee(high, refunds, schedule)


@given(gross=amounts, refunds=amounts, schedule=schedules())
def test_fee_and_net_add_up_to_gross_less_refunds(gross: int, refunds: int, schedule: FeeSchedule) -> None:
    figures = assess(gross, refunds, schedule)
    assert figures.fee_fen + figures.net_fen == gross - refunds
    assert isinstance(figures.fee_fen, int) and isinstance(figures.net_fen, int)


@pytest.mark.parametrize(
    ("numerator", "half_up", "half_even", "down"),
    [(25, 3, 2, 2), (35, 4, 4, 3), (26, 3, 3, 2), (24, 2, 2, 2), (20, 2, 2, 2)],
)
def test_rounding_rules_on_ties_and_near_ties(numerator: int, half_up: int, half_even: int, down: int) -> None:
    assert round_ratio(numerator, 10, Rounding.HALF_UP) == half_up
    assert round_ratio(numerator, 10, Rounding.HALF_EVEN) == half_even
    assert round_ratio(numerator, 10, Rounding.DOWN) == down


def test_worked_example_of_docs_settlement() -> None:
    """docs/settlement.md, "Worked example": 0.38 % with a 1.00 minimum and a 50.00 cap."""
    schedule = FeeSchedule(bps=38, min_fen=100, cap_fen=5_000)
    assert fee(1_234_550, 12_000, schedule) == 4_646  # 1 222 550 × 38 / 10 000 = 4645.69 → 4646
    assert assess(1_234_550, 12_000, schedule).net_fen == 1_217_904
    assert fee(10_000, 0, schedule) == 100  # 38 fen raw, raised to the minimum
    assert fee(60, 0, schedule) == 60  # the minimum never exceeds the day's sales
    assert fee(2_000_000, 0, schedule) == 5_000  # 7 600 raw, capped
    assert fee(500, 900, schedule) == 0  # a day of refunds owes no minimum
    assert fee(1_250, 0, FeeSchedule(bps=20)) == 3  # exactly 2.5 fen: half up gives 3
    assert fee(1_250, 0, FeeSchedule(bps=20, rounding=Rounding.HALF_EVEN)) == 2  # banker's gives 2


def test_override_replaces_the_category_schedule_whole() -> None:
    book = FeeBook({"retail": FeeSchedule(60, 100, 10_000), "transit": FeeSchedule(0)})
    override = FeeSchedule(30)
    assert book.schedule_for("retail") == FeeSchedule(60, 100, 10_000)
    assert book.schedule_for("retail", override) is override
    with pytest.raises(SettlementError) as caught:
        book.schedule_for("utility")
    assert caught.value.code is SettlementCode.E_UNKNOWN_FEE_CATEGORY


@pytest.mark.parametrize(
    "kwargs",
    [
        {"bps": -1},
        {"bps": 10_001},
        {"bps": 1.5},
        {"bps": True},
        {"bps": 10, "min_fen": -1},
        {"bps": 10, "min_fen": 500, "cap_fen": 499},
        {"bps": 10, "rounding": "half_up"},
    ],
)
def test_schedules_outside_the_rules_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(SettlementError) as caught:
        FeeSchedule(**kwargs)  # type: ignore[arg-type]
    assert caught.value.code is SettlementCode.E_BAD_FEE_SCHEDULE


@pytest.mark.parametrize(("gross", "refunds"), [(-1, 0), (0, -1), (AMOUNT_FEN_MAX + 1, 0), (10.0, 0)])
def test_amounts_that_are_not_whole_fen_in_range_are_refused(gross: object, refunds: object) -> None:
    with pytest.raises(SettlementError) as caught:
        fee(gross, refunds, FeeSchedule(10))  # type: ignore[arg-type]
    assert caught.value.code is SettlementCode.E_BAD_SETTLEMENT_AMOUNT
