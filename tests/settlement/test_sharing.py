"""Transfer discount sharing: exact sums, proportionality within 1 fen, ties (settlement/sharing.py)."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from settlement.errors import SettlementCode, SettlementError
from settlement.sharing import LEGS_MAX, JourneyLeg, settle_journey, share_discount

fares = st.lists(st.integers(min_value=0, max_value=10_000), min_size=1, max_size=LEGS_MAX)


@st.composite
def discounts_and_fares(draw: st.DrawFn) -> tuple[int, list[int]]:
    legs = draw(fares)
    return draw(st.integers(min_value=0, max_value=sum(legs))), legs


@given(discounts_and_fares())
def test_shares_sum_to_the_discount_and_stay_within_each_leg(case: tuple[int, list[int]]) -> None:
    discount, legs = case
    shares = share_discount(discount, legs)
    assert sum(shares) == discount
    assert all(0 <= share <= fare for share, fare in zip(shares, legs, strict=True))


@given(discounts_and_fares())
def test_each_share_is_within_one_fen_of_its_exact_proportion(case: tuple[int, list[int]]) -> None:
    discount, legs = case
    total = sum(legs)
    for share, fare in zip(share_discount(discount, legs), legs, strict=True):
        exact = Fraction(discount * fare, total) if total else Fraction(0)
        assert abs(share - exact) < 1


@given(discounts_and_fares())
def test_the_leftover_fen_go_to_the_largest_remainders(case: tuple[int, list[int]]) -> None:
    discount, legs = case
    total = sum(legs)
    shares = share_discount(discount, legs)
    if not total:
        return
    remainders = [discount * fare % total for fare in legs]
    got_extra = [share > discount * fare // total for share, fare in zip(shares, legs, strict=True)]
    for i, extra_i in enumerate(got_extra):
        for j, extra_j in enumerate(got_extra):
            if extra_i and not extra_j:  # i was preferred over j: larger remainder, or equal and earlier
                assert remainders[i] > remainders[j] or (remainders[i] == remainders[j] and i < j)


def test_ties_go_to_the_earlier_leg() -> None:
    assert share_discount(1, [200, 200]) == (1, 0)
    assert share_discount(2, [100, 100, 100]) == (1, 1, 0)
    assert share_discount(200, [200, 200]) == (100, 100)


def test_worked_example_of_docs_settlement() -> None:
    """docs/settlement.md: a 2.00 + 1.50 + 1.00 journey whose transfers cost 1.00 and 0.50 less."""
    legs = [
        JourneyLeg("xianyang-bus", standalone_fen=200, charged_fen=200),
        JourneyLeg("xingping-bus", standalone_fen=150, charged_fen=50),
        JourneyLeg("xianyang-bus", standalone_fen=100, charged_fen=50),
    ]
    result = settle_journey(legs)
    # D = 150; quotas 66.67, 50, 33.33 → floors 66, 50, 33, one fen left → leg 1 (remainder 300 of 450).
    assert [r.share_fen for r in result] == [67, 50, 33]
    assert [r.entitled_fen for r in result] == [133, 100, 67]
    assert [r.adjustment_fen for r in result] == [-67, 50, 17]
    assert sum(r.adjustment_fen for r in result) == 0


@given(st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 100)), min_size=1, max_size=LEGS_MAX))
def test_journey_adjustments_sum_to_zero(legs: list[tuple[int, int]]) -> None:
    journey = [JourneyLeg(f"op{i % 3}", fare, fare * pct // 100) for i, (fare, pct) in enumerate(legs)]
    result = settle_journey(journey)
    assert sum(r.adjustment_fen for r in result) == 0
    assert sum(r.entitled_fen for r in result) == sum(leg.charged_fen for leg in journey)


@pytest.mark.parametrize(
    ("discount", "legs"),
    [(1, []), (1, [0, 0]), (301, [100, 200]), (-1, [100]), (1, [-5, 10]), (1, [1] * (LEGS_MAX + 1)), (1, [1.0])],
)
def test_discounts_that_cannot_be_shared_are_refused(discount: int, legs: list[int]) -> None:
    with pytest.raises(SettlementError) as caught:
        share_discount(discount, legs)
    assert caught.value.code is SettlementCode.E_BAD_JOURNEY


def test_a_journey_charged_above_its_standalone_fares_is_refused() -> None:
    with pytest.raises(SettlementError) as caught:
        settle_journey([JourneyLeg("a", 100, 120)])
    assert caught.value.code is SettlementCode.E_BAD_JOURNEY
