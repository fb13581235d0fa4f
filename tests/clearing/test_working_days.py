"""China's official working-day calendar: holidays, make-up days (调休) and the counting rule."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from holidays.version import __version__ as holidays_version
from hypothesis import given, settings
from hypothesis import strategies as st

from clearing.working_days import (
    CALENDAR_VERSION,
    LAST_COVERED_YEAR,
    NOTICES_ENV,
    CalendarNotCovered,
    add_working_days,
    calendar_version,
    is_covered,
    is_holiday,
    is_make_up_working_day,
    is_provisional,
    is_working_day,
    next_working_day,
    reload_notices,
    working_days_between,
)

D = dt.date
# the stretch the issue names (2025-2027) that the installed package covers
days_2025_2026 = st.dates(min_value=D(2025, 1, 1), max_value=D(2026, 10, 31))
counts = st.integers(min_value=0, max_value=40)


@pytest.mark.parametrize(
    "day",
    [
        D(2025, 1, 26),  # Sunday before the Spring Festival 2025
        D(2025, 2, 8),  # Saturday after it
        D(2025, 4, 27),  # Sunday before Labour Day 2025
        D(2025, 9, 28),  # Sunday before National Day 2025
        D(2025, 10, 11),  # Saturday after it
        D(2026, 1, 4),  # Sunday after New Year 2026
        D(2026, 2, 14),  # Saturday before the Spring Festival 2026
        D(2026, 2, 28),  # Saturday after it
        D(2026, 5, 9),  # Saturday after Labour Day 2026
        D(2026, 9, 20),  # Sunday before National Day 2026
        D(2026, 10, 10),  # Saturday after it
    ],
)
def test_a_make_up_weekend_day_is_a_working_day(day: dt.date) -> None:
    assert day.weekday() >= 5
    assert is_make_up_working_day(day)
    assert is_working_day(day)


@pytest.mark.parametrize(
    "day",
    [
        D(2025, 1, 1),
        D(2025, 1, 28),  # New Year's Eve of the Spring Festival
        D(2025, 2, 4),  # day off moved from Feb 8
        D(2025, 5, 5),
        D(2025, 10, 8),  # National Day week, a Wednesday
        D(2026, 1, 2),  # Friday, moved from Jan 4
        D(2026, 2, 23),  # Monday, moved from Feb 28
        D(2026, 6, 19),  # Dragon Boat Festival
        D(2026, 10, 7),  # moved from Oct 10
    ],
)
def test_a_holiday_on_a_weekday_is_not_a_working_day(day: dt.date) -> None:
    assert day.weekday() < 5
    assert is_holiday(day)
    assert not is_working_day(day)


def test_an_ordinary_weekend_is_not_a_working_day_and_an_ordinary_weekday_is() -> None:
    assert not is_working_day(D(2026, 11, 28))  # Saturday
    assert not is_working_day(D(2026, 11, 29))  # Sunday
    assert is_working_day(D(2026, 11, 30))  # Monday


def test_the_start_day_never_counts() -> None:
    # Friday 2026-11-27 + 1 is the next Monday; the Friday itself is day 0
    assert add_working_days(D(2026, 11, 27), 1) == D(2026, 11, 30)
    assert add_working_days(D(2026, 11, 27), 0) == D(2026, 11, 27)
    # a submission on a Saturday counts from Monday too
    assert add_working_days(D(2026, 11, 28), 1) == D(2026, 11, 30)
    assert next_working_day(D(2026, 11, 28)) == D(2026, 11, 30)


def test_a_deadline_across_national_day_2026_counts_the_make_up_saturday() -> None:
    # Oct 1-7 off; Oct 8 (Thu) 1, Oct 9 2, Oct 10 (make-up Saturday) 3, Oct 12 4, Oct 13 5
    assert add_working_days(D(2026, 9, 30), 5) == D(2026, 10, 13)
    # Sept 20 is a make-up Sunday: the day after a Saturday the 19th is working day 1
    assert add_working_days(D(2026, 9, 19), 1) == D(2026, 9, 20)


def test_a_twenty_day_decision_deadline_across_the_spring_festival_2025() -> None:
    # submitted Fri 2025-01-24: Jan 26 (Sun, make-up) 1, Jan 27 2, Jan 28 - Feb 4 off, Feb 5-7 3-5,
    # Feb 8 (Sat, make-up) 6, Feb 10-14 7-11, Feb 17-21 12-16, Feb 24-27 17-20
    day = add_working_days(D(2025, 1, 24), 20)
    assert day == D(2025, 2, 27)
    assert working_days_between(D(2025, 1, 24), day) == 20


def test_a_year_without_its_notice_is_counted_provisionally_and_marked() -> None:
    assert LAST_COVERED_YEAR == 2026  # holidays 0.109: the 2027 notice is not in the package yet
    assert is_provisional(D(2027, 1, 4)) and not is_provisional(D(2026, 12, 31))
    assert calendar_version(D(2026, 12, 31)) == CALENDAR_VERSION
    assert calendar_version(D(2027, 1, 4)) == CALENDAR_VERSION + "+provisional"
    assert not is_working_day(D(2027, 1, 1))  # New Year's Day is a statutory holiday whatever the notice says
    assert is_working_day(D(2027, 1, 4))  # a Monday
    # a count into 2027 is made, and its deadline carries the provisional version
    due = add_working_days(D(2026, 12, 28), 10)
    assert due.year == 2027 and calendar_version(due).endswith("+provisional")
    with pytest.raises(CalendarNotCovered, match="2029"):
        is_working_day(D(2029, 6, 1))  # two years past the last notice at most
    with pytest.raises(CalendarNotCovered):
        is_working_day(D(2000, 6, 1))


# An EXAMPLE notice for 2027, written for this test: not the State Council's.
EXAMPLE_2027_NOTICE = """date,kind,notice
2027-01-01,holiday,example notice (test data)
2027-02-06,holiday,example
2027-02-07,holiday,example
2027-02-08,holiday,example
2027-02-09,holiday,example
2027-02-10,holiday,example
2027-02-11,holiday,example
2027-02-12,holiday,example
2027-02-13,holiday,example
2027-02-14,workday,example
2027-02-20,workday,example
"""


def test_an_entered_notice_makes_the_year_official_with_its_make_up_days(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    notice = tmp_path / "notices.csv"
    notice.write_text(EXAMPLE_2027_NOTICE, encoding="utf-8")
    monkeypatch.setenv(NOTICES_ENV, str(notice))
    reload_notices()
    try:
        assert is_covered(D(2027, 2, 14)) and not is_provisional(D(2027, 2, 14))
        assert is_make_up_working_day(D(2027, 2, 14)) and is_working_day(D(2027, 2, 14))  # a Sunday
        assert not is_working_day(D(2027, 2, 12))  # a Friday in the entered holiday
        assert calendar_version(D(2027, 3, 1)).startswith(CALENDAR_VERSION + "+notices-")
        # Fri 2027-02-05: Feb 14 (Sun) 1, Feb 15-19 2-6, Feb 20 (Sat) 7
        assert add_working_days(D(2027, 2, 5), 7) == D(2027, 2, 20)
        assert is_provisional(D(2028, 3, 1))  # the next year is provisional again
    finally:
        monkeypatch.delenv(NOTICES_ENV)
        reload_notices()
    assert is_provisional(D(2027, 2, 14)) and not is_working_day(D(2027, 2, 14))


def test_a_malformed_notice_file_is_refused_with_its_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    notice = tmp_path / "notices.csv"
    notice.write_text("date,kind,notice\n2027-02-30,holiday,x\n", encoding="utf-8")
    monkeypatch.setenv(NOTICES_ENV, str(notice))
    reload_notices()
    try:
        with pytest.raises(ValueError, match=":2: date"):
            is_working_day(D(2027, 1, 4))
    finally:
        monkeypatch.delenv(NOTICES_ENV)
        reload_notices()


def test_a_negative_or_huge_count_is_refused() -> None:
    with pytest.raises(ValueError, match="number of working days"):
        add_working_days(D(2026, 1, 5), -1)
    with pytest.raises(ValueError, match="number of working days"):
        add_working_days(D(2026, 1, 5), 10_000)


def test_the_calendar_version_names_the_package_and_country() -> None:
    assert f"holidays-{holidays_version}/CN" == CALENDAR_VERSION


@settings(max_examples=200, deadline=None)
@given(start=days_2025_2026, n=counts)
def test_adding_then_counting_gives_back_n(start: dt.date, n: int) -> None:
    end = add_working_days(start, n)
    assert working_days_between(start, end) == n
    assert end >= start
    if n:
        assert is_working_day(end)  # a deadline always falls on a working day
        assert working_days_between(start, end - dt.timedelta(days=1)) == n - 1


@settings(max_examples=200, deadline=None)
@given(start=days_2025_2026, n=st.integers(min_value=0, max_value=20), m=st.integers(min_value=0, max_value=20))
def test_adding_in_two_steps_is_adding_once(start: dt.date, n: int, m: int) -> None:
    assert add_working_days(add_working_days(start, n), m) == add_working_days(start, n + m)


@settings(max_examples=200, deadline=None)
@given(a=days_2025_2026, b=days_2025_2026)
def test_counting_is_antisymmetric_and_bounded_by_calendar_days(a: dt.date, b: dt.date) -> None:
    forward = working_days_between(a, b)
    assert forward == -working_days_between(b, a)
    assert abs(forward) <= abs((b - a).days)


@settings(max_examples=200, deadline=None)
@given(day=days_2025_2026)
def test_a_working_day_is_a_make_up_day_or_a_weekday_that_is_no_holiday(day: dt.date) -> None:
    expected = is_make_up_working_day(day) or (day.weekday() < 5 and not is_holiday(day))
    assert is_working_day(day) == expected
    assert not (is_make_up_working_day(day) and is_holiday(day))
