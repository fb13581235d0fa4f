"""The business-day clock: which clearing day an instant belongs to (ARCHITECTURE.md, flow 6).

A business day runs from the cut-off in Asia/Shanghai to the next day's cut-off (default
00:00, so the day is the city's calendar day). Taps, exception ages and — in ``settlement`` —
the settlement windows are all counted with this one clock, so a late tap, an exception's
age and a window never disagree about "which day". The cut-off is a setting
(``YIKATONG_BUSINESS_DAY_CUTOFF``, ``HH:MM``): with a cut-off of 03:00 a tap at 01:30 on the
4th belongs to the business day of the 3rd, as night buses run past midnight.

Every day is a business day for a transit clearing house: buses run and merchants sell on
holidays too, and settlement closes every day's window.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Final
from zoneinfo import ZoneInfo

from cardos.records import SHANGHAI_TZ

MIDNIGHT: Final = dt.time(0, 0)
_SHANGHAI_OFFSET: Final = dt.timedelta(hours=8)


def parse_cutoff(text: str) -> dt.time:
    """``HH:MM`` (24 h) as a cut-off time; ``ValueError`` with a clear sentence otherwise."""
    try:
        hours, minutes = text.strip().split(":")
        cutoff = dt.time(int(hours), int(minutes))
    except ValueError:
        raise ValueError(f"business-day cut-off {text!r} is not HH:MM (for example 00:00 or 03:00)") from None
    return cutoff


@dataclass(frozen=True, slots=True)
class BusinessDayClock:
    """Days in ``zone`` that start at ``cutoff``; pure (the instant is always passed in)."""

    cutoff: dt.time = MIDNIGHT
    zone: dt.tzinfo = field(default=SHANGHAI_TZ)

    def __post_init__(self) -> None:
        if self.cutoff.tzinfo is not None or self.cutoff.second or self.cutoff.microsecond:
            raise ValueError("the cut-off is a local wall-clock time in whole minutes")

    def day_of(self, instant: dt.datetime) -> dt.date:
        """The business day of an aware instant."""
        if instant.tzinfo is None or instant.utcoffset() is None:
            raise ValueError(f"naive datetime {instant!r}: business days need an aware instant")
        if self.cutoff == MIDNIGHT and self.zone is SHANGHAI_TZ and instant.utcoffset() == _SHANGHAI_OFFSET:
            return instant.date()  # the usual case: a tap time at +08:00 already shows the day
        local = instant.astimezone(self.zone)
        day = local.date()
        return day - dt.timedelta(days=1) if local.time() < self.cutoff else day

    def start_of(self, day: dt.date) -> dt.datetime:
        """The first instant of a business day (aware, in the clock's zone)."""
        return dt.datetime.combine(day, self.cutoff, tzinfo=self.zone)

    def end_of(self, day: dt.date) -> dt.datetime:
        """The first instant after a business day: the next day's start."""
        return self.start_of(day + dt.timedelta(days=1))

    def age_days(self, then: dt.datetime, now: dt.datetime) -> int:
        """Whole business days from ``then``'s day to ``now``'s (0 on the same day)."""
        return (self.day_of(now) - self.day_of(then)).days


DEFAULT_CLOCK: Final = BusinessDayClock()


def clock_from_settings(settings: object) -> BusinessDayClock:
    """The clock of ``Settings.business_day_cutoff`` (``HH:MM``) and ``Settings.business_day_zone``."""
    cutoff = getattr(settings, "business_day_cutoff", "00:00")
    zone_name = getattr(settings, "business_day_zone", "Asia/Shanghai")
    zone: dt.tzinfo = SHANGHAI_TZ if zone_name == "Asia/Shanghai" else ZoneInfo(zone_name)
    return BusinessDayClock(parse_cutoff(cutoff), zone)


__all__ = ["DEFAULT_CLOCK", "MIDNIGHT", "BusinessDayClock", "clock_from_settings", "parse_cutoff"]
