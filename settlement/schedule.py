"""The nightly close inside ``serve``: close every business day that has ended, in day order.

A day is due once its end (the next day's cut-off) plus a grace period has passed: the grace
lets terminals that were online at midnight finish their last uploads into the day's own window
instead of the next one (they would be late, not lost, either way). What is due is decided by
``due_days`` (pure); ``close_due`` runs ``close_window`` for each, which is idempotent, so two
servers running the schedule at once, or a schedule racing a ``yikatong settle`` by hand, close
each day once (``docs/settlement.md``, "Close"). Days without running totals are sealed by the
close of a later day and need no run of their own; a sealed day whose settle was interrupted is
due again and finished.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from clearing.business_day import BusinessDayClock
from settlement.close import CloseResult, close_window
from settlement.journeys import FareLookup
from settlement.models import TotalRow, WindowRow
from settlement.payouts import Payer

log = logging.getLogger("yikatong.settlement.schedule")

DAYS_PER_RUN_MAX: Final = 31  # a server down for a month catches up a month per run, oldest first
GRACE_S_DEFAULT: Final = 1800


def due_days(
    *,
    now: dt.datetime,
    clock: BusinessDayClock,
    grace: dt.timedelta,
    unfinished: Sequence[dt.date],
    open_with_totals: Sequence[dt.date],
    limit: int = DAYS_PER_RUN_MAX,
) -> list[dt.date]:
    """The days to close now, oldest first: sealed-but-unsettled ones and open ones with totals
    whose end plus ``grace`` has passed. Pure."""
    if grace < dt.timedelta(0):
        raise ValueError("the grace period is not negative")
    days = sorted({d for d in (*unfinished, *open_with_totals) if clock.end_of(d) + grace <= now})
    return days[:limit]


@dataclass(frozen=True, slots=True)
class ScheduledClose:
    engine: Engine
    payer: Payer
    out_dir: Path
    clock: BusinessDayClock
    grace: dt.timedelta = dt.timedelta(seconds=GRACE_S_DEFAULT)
    fares: FareLookup | None = None  # standalone fares for transfer-discount sharing (settlement.journeys)

    def candidates(self) -> tuple[list[dt.date], list[dt.date]]:
        with Session(self.engine) as session:
            unfinished = list(
                session.execute(select(WindowRow.business_day).where(WindowRow.state != "closed")).scalars()
            )
            latest = session.execute(select(func.max(WindowRow.business_day))).scalar_one_or_none()
            open_days = select(TotalRow.window_day).distinct().order_by(TotalRow.window_day).limit(DAYS_PER_RUN_MAX)
            if latest is not None:
                open_days = open_days.where(TotalRow.window_day > latest)
            return unfinished, list(session.execute(open_days).scalars())

    def run(self, now: dt.datetime | None = None) -> list[CloseResult]:
        """Close what is due (``now`` defaults to the wall clock); one day's failure stops the run,
        because the later days must wait for it (windows close in day order)."""
        moment = now or dt.datetime.now(dt.UTC)
        unfinished, open_days = self.candidates()
        results: list[CloseResult] = []
        for day in due_days(
            now=moment, clock=self.clock, grace=self.grace, unfinished=unfinished, open_with_totals=open_days
        ):
            result = close_window(
                self.engine, day, now=moment, payer=self.payer, out_dir=self.out_dir, clock=self.clock,
                fares=self.fares,
            )  # fmt: skip
            verb = "closed" if result.newly_closed else "already closed"
            log.info("scheduled close of %s: %s, %d payee(s)", day, verb, result.payees)
            results.append(result)
        return results


__all__ = ["DAYS_PER_RUN_MAX", "GRACE_S_DEFAULT", "ScheduledClose", "due_days"]
