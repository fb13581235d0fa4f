"""The business-day clock: the one answer to "which clearing day" for taps, exceptions and settlement."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cardos.records import SHANGHAI_TZ
from clearing.business_day import DEFAULT_CLOCK, BusinessDayClock, clock_from_settings, parse_cutoff

UTC = dt.UTC


def test_the_default_day_is_the_shanghai_calendar_day() -> None:
    assert DEFAULT_CLOCK.day_of(dt.datetime(2026, 11, 24, 23, 59, 59, tzinfo=SHANGHAI_TZ)) == dt.date(2026, 11, 24)
    assert DEFAULT_CLOCK.day_of(dt.datetime(2026, 11, 24, 0, 0, 0, tzinfo=SHANGHAI_TZ)) == dt.date(2026, 11, 24)
    # 16:00 UTC is midnight in Shanghai: the next day
    assert DEFAULT_CLOCK.day_of(dt.datetime(2026, 11, 24, 15, 59, 59, tzinfo=UTC)) == dt.date(2026, 11, 24)
    assert DEFAULT_CLOCK.day_of(dt.datetime(2026, 11, 24, 16, 0, 0, tzinfo=UTC)) == dt.date(2026, 11, 25)


def test_a_cutoff_moves_the_small_hours_to_the_day_before() -> None:
    clock = BusinessDayClock(dt.time(3, 0))
    assert clock.day_of(dt.datetime(2026, 11, 25, 2, 59, 59, tzinfo=SHANGHAI_TZ)) == dt.date(2026, 11, 24)
    assert clock.day_of(dt.datetime(2026, 11, 25, 3, 0, 0, tzinfo=SHANGHAI_TZ)) == dt.date(2026, 11, 25)
    assert clock.start_of(dt.date(2026, 11, 25)) == dt.datetime(2026, 11, 25, 3, 0, tzinfo=SHANGHAI_TZ)
    assert clock.end_of(dt.date(2026, 11, 24)) == clock.start_of(dt.date(2026, 11, 25))


def test_ages_are_whole_business_days() -> None:
    clock = BusinessDayClock(dt.time(3, 0))
    then = dt.datetime(2026, 11, 24, 23, 0, tzinfo=SHANGHAI_TZ)
    assert clock.age_days(then, then + dt.timedelta(hours=3, minutes=59)) == 0  # 02:59 is still the 24th
    assert clock.age_days(then, then + dt.timedelta(hours=4)) == 1


@given(st.datetimes(min_value=dt.datetime(2000, 1, 2), max_value=dt.datetime(2099, 12, 30), timezones=st.just(UTC)),
       st.integers(0, 23), st.integers(0, 59))  # fmt: skip
def test_every_instant_lies_inside_its_business_day(instant: dt.datetime, hour: int, minute: int) -> None:
    clock = BusinessDayClock(dt.time(hour, minute))
    day = clock.day_of(instant)
    assert clock.start_of(day) <= instant < clock.end_of(day)


def test_naive_times_and_bad_cutoffs_are_refused() -> None:
    with pytest.raises(ValueError, match="naive"):
        DEFAULT_CLOCK.day_of(dt.datetime(2026, 11, 24, 8, 0))
    with pytest.raises(ValueError, match="HH:MM"):
        parse_cutoff("25:00")
    with pytest.raises(ValueError, match="HH:MM"):
        parse_cutoff("3am")
    assert parse_cutoff("03:30") == dt.time(3, 30)


def test_the_clock_comes_from_the_settings() -> None:
    class Settings:
        business_day_cutoff = "04:00"

    assert clock_from_settings(Settings()).cutoff == dt.time(4, 0)
