"""The dispute state machine as pure rules: every move, every refusal, every deadline."""

from __future__ import annotations

import datetime as dt
import itertools

import pytest

from clearing.working_days import add_working_days
from interop_xian.disputes import (
    DEADLINE_WORKING_DAYS,
    EXPIRY,
    FINAL,
    MOVES,
    Side,
    State,
    check_move,
    deadline_of,
    expiry_move,
)
from interop_xian.errors import InteropError

TODAY = dt.date(2026, 11, 24)  # a Tuesday


def weekdays(start: dt.date, n: int) -> dt.date:
    """A stand-in calendar: Monday to Friday."""
    day = start
    while n:
        day += dt.timedelta(days=1)
        if day.weekday() < 5:
            n -= 1
    return day


ALLOWED = sorted((a.value, b.value, side.value) for (a, b), side in MOVES.items())


@pytest.mark.parametrize(("src", "dst", "side"), ALLOWED)
def test_every_move_of_the_table_is_allowed_to_its_side_and_refused_to_the_other(src: str, dst: str, side: str) -> None:
    check_move(State(src), State(dst), Side(side), today=TODAY, deadline=TODAY)
    other = Side.ACQUIRER if Side(side) is Side.ISSUER else Side.ISSUER
    with pytest.raises(InteropError) as raised:
        check_move(State(src), State(dst), other, today=TODAY, deadline=TODAY)
    assert raised.value.code.value == "E_DISPUTE_TRANSITION" and f"the {side}'s move" in raised.value.message


@pytest.mark.parametrize(
    ("src", "dst"),
    [(a.value, b.value) for a, b in itertools.product(State, State) if (a, b) not in MOVES],
)
def test_every_move_outside_the_table_is_refused_for_both_sides(src: str, dst: str) -> None:
    for side in Side:
        with pytest.raises(InteropError) as raised:
            check_move(State(src), State(dst), side, today=TODAY, deadline=None)
        assert raised.value.code.value == "E_DISPUTE_TRANSITION" and raised.value.status == 409


def test_final_states_have_no_way_out_and_no_deadline() -> None:
    for state in FINAL:
        assert not [m for m in MOVES if m[0] is state]
        assert deadline_of(state, TODAY, weekdays) is None and expiry_move(state) is None


def test_deadlines_are_counted_in_working_days_from_the_day_of_the_move() -> None:
    assert DEADLINE_WORKING_DAYS[State.OPENED] == 5
    assert deadline_of(State.OPENED, TODAY, weekdays) == dt.date(2026, 12, 1)  # Tue + 5 working days
    assert deadline_of(State.EVIDENCE_REQUESTED, TODAY, weekdays) == dt.date(2026, 12, 8)
    # China's calendar: opened on 2026-09-30, the National Day week does not count
    assert deadline_of(State.OPENED, dt.date(2026, 9, 30), add_working_days) == add_working_days(
        dt.date(2026, 9, 30), 5
    )
    assert add_working_days(dt.date(2026, 9, 30), 5) > dt.date(2026, 10, 7)


@pytest.mark.parametrize(("src", "late_end"), [(s.value, e.value) for s, e in EXPIRY.items()])
def test_past_its_deadline_a_state_ends_against_the_late_side_and_nothing_else_is_allowed(
    src: str, late_end: str
) -> None:
    state, end = State(src), State(late_end)
    deadline = TODAY - dt.timedelta(days=1)
    check_move(state, end, MOVES[(state, end)], today=TODAY, deadline=deadline)  # the expiry move still is
    for (a, b), side in MOVES.items():
        if a is state and b is not end:
            with pytest.raises(InteropError) as raised:
                check_move(a, b, side, today=TODAY, deadline=deadline)
            assert raised.value.code.value == "E_DISPUTE_DEADLINE"
    check_move(state, end, MOVES[(state, end)], today=deadline, deadline=deadline)  # the deadline day itself is in time
