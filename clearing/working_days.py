"""China's official working-day calendar, for statutory deadlines (docs/permits.md, "Working days").

A statutory deadline ("within 20 working days") counts the days the State Council's yearly
notice on public holidays (国务院办公厅关于部分节假日安排的通知) makes working days: Monday to
Friday, minus the public holidays and the days off moved onto weekdays, plus the make-up
working days (调休) that fall on a Saturday or a Sunday. The ``holidays`` package ships those
notices; this module is the one place that reads them, so the permits module and interop
disputes count the same days.

Three kinds of year (``calendar_version`` names which one a deadline was counted on):

* **official**: the installed package carries the year's notice (``COVERED_YEARS``);
* **notice**: the operator has entered a notice the package does not carry yet, in the file
  ``YIKATONG_HOLIDAY_NOTICES`` (CSV ``date,kind,notice``; kind ``holiday`` or ``workday``; every
  year in the file is taken as wholly announced). The notice for year N+1 is published in
  November or December of year N, often before a release of the package has it;
* **provisional**: up to ``PROVISIONAL_YEARS_MAX`` years past the last official one, the package's
  rule-based statutory holidays (the days of 全国年节及纪念日放假办法, fixed by law) with no
  make-up working days, which only the yearly notice announces. Without this, every 20-day
  deadline set in December would be refused until the package is upgraded; a provisional
  deadline is marked so (its version ends ``+provisional``), and pages say so. It can be off by
  the notice's moved days, which is why the operator enters the notice as soon as it is out.

Years before ``FIRST_COVERED_YEAR`` or beyond the provisional reach are refused with
``CalendarNotCovered``.

Counting rule: the start day never counts. ``add_working_days(start, n)`` is the n-th working
day strictly after ``start`` (the day of a submission is day 0, whether or not it is a working
day; the deadline is the end of the returned day), and ``working_days_between(a, b)`` counts
the working days in ``(a, b]``, so ``working_days_between(a, add_working_days(a, n)) == n``.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import os
from functools import lru_cache
from pathlib import Path
from typing import Final

from holidays.countries.china import China, ChinaStaticHolidays
from holidays.version import __version__ as holidays_version

COUNTRY: Final = "CN"
CALENDAR_VERSION: Final = f"holidays-{holidays_version}/{COUNTRY}"
"""The data a deadline was computed from; stored next to every deadline."""

FIRST_COVERED_YEAR: Final = 2001
"""The first year the package checks against a State Council notice (its own "Limitations")."""

LAST_COVERED_YEAR: Final = max(ChinaStaticHolidays.special_public_holidays)
"""The last year whose notice (with its make-up days) is in the installed package."""

COVERED_YEARS: Final = range(FIRST_COVERED_YEAR, LAST_COVERED_YEAR + 1)

PROVISIONAL_YEARS_MAX: Final = 2
"""How many years past the last official or entered notice are counted provisionally."""

NOTICES_ENV: Final = "YIKATONG_HOLIDAY_NOTICES"

WORKING_DAYS_MAX: Final = 366 * 2
"""A bound on one count: no statutory period here is longer than two years of working days."""


class CalendarNotCovered(ValueError):
    """A day in a year the calendar cannot count: before the first notice, or too far ahead."""

    def __init__(self, year: int) -> None:
        super().__init__(
            f"the holiday calendar ({CALENDAR_VERSION}) counts working days in {FIRST_COVERED_YEAR}-"
            f"{_last_known_year() + PROVISIONAL_YEARS_MAX}, not in {year}"
        )
        self.year = year


class _Notices:
    """The operator's entered notices (``YIKATONG_HOLIDAY_NOTICES``), per year."""

    def __init__(self, path: Path | None) -> None:
        self.days_off: set[dt.date] = set()
        self.make_up: set[dt.date] = set()
        self.years: set[int] = set()
        self.digest = ""
        if path is None:
            return
        data = path.read_bytes()
        self.digest = hashlib.sha256(data).hexdigest()[:12]
        for line, row in enumerate(csv.DictReader(data.decode("utf-8").splitlines()), start=2):
            try:
                day = dt.date.fromisoformat((row.get("date") or "").strip())
            except ValueError:
                raise ValueError(f"{path}:{line}: date {row.get('date')!r} is not YYYY-MM-DD") from None
            kind = (row.get("kind") or "").strip()
            if kind not in ("holiday", "workday"):
                raise ValueError(f"{path}:{line}: kind {kind!r} is not holiday or workday")
            (self.days_off if kind == "holiday" else self.make_up).add(day)
            self.years.add(day.year)
        if self.days_off & self.make_up:
            raise ValueError(f"{path}: a day is both a holiday and a make-up working day")


@lru_cache(maxsize=1)
def _notices() -> _Notices:
    path = os.environ.get(NOTICES_ENV)
    return _Notices(Path(path) if path else None)


def _last_known_year() -> int:
    return max([LAST_COVERED_YEAR, *_notices().years])


@lru_cache(maxsize=1)
def _calendar() -> tuple[frozenset[dt.date], frozenset[dt.date]]:
    """(days off on weekdays or weekends, make-up working days) of every year the calendar counts."""
    entered = _notices()
    reach = range(FIRST_COVERED_YEAR, _last_known_year() + PROVISIONAL_YEARS_MAX + 1)
    package = China(years=reach)  # type: ignore[no-untyped-call]
    days_off = {d for d in package if d.year in reach and d.year not in entered.years}
    make_up = {d for d in package.weekend_workdays if d.year in COVERED_YEARS and d.year not in entered.years}
    days_off |= entered.days_off
    make_up |= entered.make_up
    assert not days_off & make_up, "a day cannot be both a holiday and a make-up working day"
    return frozenset(days_off), frozenset(make_up)


def reload_notices() -> None:
    """Read ``YIKATONG_HOLIDAY_NOTICES`` again (tests; an operator restarts the server)."""
    _notices.cache_clear()
    _calendar.cache_clear()


def _check_covered(day: dt.date) -> None:
    if not FIRST_COVERED_YEAR <= day.year <= _last_known_year() + PROVISIONAL_YEARS_MAX:
        raise CalendarNotCovered(day.year)


def is_covered(day: dt.date) -> bool:
    """Whether ``day``'s year has its notice: in the installed package, or entered by the operator."""
    return day.year in COVERED_YEARS or day.year in _notices().years


def is_provisional(day: dt.date) -> bool:
    """Whether ``day``'s year is counted without its notice (no make-up working days known)."""
    _check_covered(day)
    return not is_covered(day)


def calendar_version(day: dt.date) -> str:
    """The data a count ending on ``day`` was made from: stored with the deadline."""
    _check_covered(day)
    if day.year in COVERED_YEARS:
        return CALENDAR_VERSION
    if day.year in _notices().years:
        return f"{CALENDAR_VERSION}+notices-{_notices().digest}"
    return f"{CALENDAR_VERSION}+provisional"


def is_make_up_working_day(day: dt.date) -> bool:
    """A Saturday or Sunday that the notice makes a working day (调休上班)."""
    _check_covered(day)
    return day in _calendar()[1]


def is_holiday(day: dt.date) -> bool:
    """A public holiday or a day off moved onto it (including those on weekends)."""
    _check_covered(day)
    return day in _calendar()[0]


def is_working_day(day: dt.date) -> bool:
    """A make-up working day, or a Monday-to-Friday that is not a holiday or moved day off."""
    _check_covered(day)
    days_off, make_up = _calendar()
    if day in make_up:
        return True
    return day.weekday() < 5 and day not in days_off


def next_working_day(day: dt.date) -> dt.date:
    """The first working day strictly after ``day``."""
    return add_working_days(day, 1)


def add_working_days(start: dt.date, n: int) -> dt.date:
    """The n-th working day strictly after ``start`` (``start`` itself never counts; ``n == 0`` is ``start``)."""
    if not 0 <= n <= WORKING_DAYS_MAX:
        raise ValueError(f"a number of working days from 0 to {WORKING_DAYS_MAX}, not {n}")
    _check_covered(start)
    day = start
    left = n
    while left:
        day += dt.timedelta(days=1)
        if is_working_day(day):
            left -= 1
    return day


def working_days_between(a: dt.date, b: dt.date) -> int:
    """The working days in ``(a, b]``; negative when ``b`` is before ``a`` (``-working_days_between(b, a)``)."""
    if b < a:
        return -working_days_between(b, a)
    _check_covered(a)
    _check_covered(b)
    count = 0
    day = a
    while day < b:
        day += dt.timedelta(days=1)
        count += is_working_day(day)
    return count


__all__ = [
    "CALENDAR_VERSION",
    "COVERED_YEARS",
    "FIRST_COVERED_YEAR",
    "LAST_COVERED_YEAR",
    "NOTICES_ENV",
    "PROVISIONAL_YEARS_MAX",
    "CalendarNotCovered",
    "add_working_days",
    "calendar_version",
    "is_covered",
    "is_holiday",
    "is_make_up_working_day",
    "is_provisional",
    "is_working_day",
    "next_working_day",
    "reload_notices",
    "working_days_between",
]
