"""Both sides of every limit and every neighbour check, so a limit off by one or a check turned around fails here.

Hand-made bugs in the money code survived the suite before issue 8: the TAC check skipped for
plain purchases (type 06, the merchant POS), an amount limit off by one, and a late record's
balance check against its cleared neighbour below turned around. Each has its pair of tests.
"""

from __future__ import annotations

import datetime as dt

import msgspec
import pytest
from tapfactory import OWN_ISSUER, T0, Card, Terminal, sign
from test_validation import NOW, codes, context, run, state

from clearing.validation import (
    FUTURE_SKEW_S_DEFAULT,
    TAP_YEAR_MAX,
    TAP_YEAR_MIN,
    DenyInterval,
    Limits,
    Neighbour,
    parse_tap_time,
)


@pytest.fixture
def term() -> Terminal:
    return Terminal("0000aa000001")


def _purchase(record: object) -> object:
    """The record as a plain purchase (type 06, a merchant POS), signed as the card would."""
    return sign(msgspec.structs.replace(record, tx_type=6))  # type: ignore[type-var]


def test_a_genuine_plain_purchase_is_accepted(term: Terminal) -> None:
    card = Card(1)
    ctx = context(term, {card: state(card)})
    assert codes(run([_purchase(term.tap(card, 300))], ctx)) == [("accepted", "OK")]  # type: ignore[list-item]


def test_a_forged_plain_purchase_is_rejected_like_a_transit_one(term: Terminal) -> None:
    card = Card(1)
    ctx = context(term, {card: state(card)})
    forged = msgspec.structs.replace(_purchase(term.tap(card, 300)), amount_fen=30)  # type: ignore[type-var]
    j = run([forged], ctx)
    assert codes(j) == [("rejected", "E_TAC_MISMATCH")]
    assert not j.outcomes[0].posts and not j.outcomes[0].claims_keys


@pytest.mark.parametrize(("amount", "expected"), [(499, "OK"), (500, "OK"), (501, "E_AMOUNT_LIMIT")])
def test_the_amount_limit_admits_exactly_the_limit(term: Terminal, amount: int, expected: str) -> None:
    card = Card(1, balance_fen=2000)
    ctx = context(term, {card: state(card)}, limits=Limits(amount_fen_max=500))
    assert codes(run([term.tap(card, amount)], ctx))[0][1] == expected


@pytest.mark.parametrize(
    ("skew_s", "expected"), [(FUTURE_SKEW_S_DEFAULT, "OK"), (FUTURE_SKEW_S_DEFAULT + 1, "E_BAD_TIME")]
)
def test_a_tap_at_the_edge_of_the_future_skew(term: Terminal, skew_s: int, expected: str) -> None:
    card = Card(1)
    ctx = context(term, {card: state(card)})
    record = term.tap(card, 100, when=NOW + dt.timedelta(seconds=skew_s))
    assert codes(run([record], ctx))[0][1] == expected


@pytest.mark.parametrize(("day", "expected"), [(dt.date(2026, 1, 1), "OK"), (dt.date(2025, 12, 31), "E_BAD_TIME")])
def test_a_tap_on_the_cards_start_date_passes_and_the_day_before_does_not(
    term: Terminal, day: dt.date, expected: str
) -> None:
    card = Card(1)
    ctx = context(term, {card: state(card)})  # start date 2026-01-01
    when = dt.datetime.combine(day, dt.time(23, 59, 59), tzinfo=T0.tzinfo)
    assert codes(run([term.tap(card, 100, when=when)], ctx))[0][1] == expected


def test_the_tap_year_bounds_are_inclusive() -> None:
    assert parse_tap_time(f"{TAP_YEAR_MIN}-01-01T00:00:00+08:00") is not None
    assert parse_tap_time(f"{TAP_YEAR_MAX}-12-31T23:59:59+08:00") is not None
    assert parse_tap_time(f"{TAP_YEAR_MIN - 1}-12-31T23:59:59+08:00") is None
    assert parse_tap_time(f"{TAP_YEAR_MAX + 1}-01-01T00:00:00+08:00") is None
    # the bound holds for the card-local (Shanghai) year, whatever offset the terminal sent
    assert parse_tap_time(f"{TAP_YEAR_MAX}-12-31T16:00:00Z") is None  # 00:00 on 1 Jan 2100 in Shanghai


def test_the_denylist_covers_from_its_effective_time_up_to_its_removal(term: Terminal) -> None:
    card = Card(1, balance_fen=5000)
    listed_at = T0 + dt.timedelta(minutes=10)
    removed_at = T0 + dt.timedelta(minutes=20)
    deny = {(OWN_ISSUER, card.asn): [DenyInterval(listed_at, removed_at)]}
    for minutes, expected in [(9, "OK"), (10, "E_DENYLISTED"), (19, "E_DENYLISTED"), (20, "OK")]:
        fresh = Card(1, balance_fen=5000)
        ctx = context(term, {fresh: state(fresh)}, denylist=deny)
        record = term.tap(fresh, 100, when=T0 + dt.timedelta(minutes=minutes))
        assert codes(run([record], ctx))[0][1] == expected, minutes


def _late_record(term: Terminal, before: int) -> object:
    """Counter 5 of a card whose counters 4 and 6 cleared already (the last cleared is 9)."""
    card = Card(1, balance_fen=before, counter=5)
    return term.tap(card, 100)


@pytest.mark.parametrize(("below_after", "expected"), [(1000, "OK"), (999, "OK"), (1001, "S_BALANCE_DISCONTINUITY")])
def test_a_late_records_balance_before_may_not_be_below_what_its_lower_neighbour_left(
    term: Terminal, below_after: int, expected: str
) -> None:
    """``before >= after(counter - 1)``: loads can only raise a balance between two purchases."""
    record = _late_record(term, 1000)
    card = Card(1)
    below = Neighbour(4, below_after + 50, 50)
    ctx = context(term, {card: state(card, last=9, shadow=0)}, neighbours={(OWN_ISSUER, card.asn, 5): (below, None)})
    assert codes(run([record], ctx))[0][1] == expected  # type: ignore[list-item]


@pytest.mark.parametrize(("above_before", "expected"), [(900, "OK"), (901, "OK"), (899, "S_BALANCE_DISCONTINUITY")])
def test_a_late_records_balance_after_may_not_be_above_what_its_upper_neighbour_started_with(
    term: Terminal, above_before: int, expected: str
) -> None:
    """``before(counter + 1) >= after``: the record above cannot start below what this one left (900)."""
    record = _late_record(term, 1000)
    card = Card(1)
    above = Neighbour(6, above_before, 50)
    ctx = context(term, {card: state(card, last=9, shadow=0)}, neighbours={(OWN_ISSUER, card.asn, 5): (None, above)})
    assert codes(run([record], ctx))[0][1] == expected  # type: ignore[list-item]


def test_neighbours_further_away_than_one_counter_are_not_compared(term: Terminal) -> None:
    """A gap between the late record and its neighbour may hide loads: no balance check across it."""
    record = _late_record(term, 1000)
    card = Card(1)
    far = (Neighbour(3, 5000, 0), Neighbour(7, 10, 0))
    ctx = context(term, {card: state(card, last=9, shadow=0)}, neighbours={(OWN_ISSUER, card.asn, 5): far})
    assert codes(run([record], ctx)) == [("accepted", "OK")]  # type: ignore[list-item]
