"""The nightly close inside ``serve`` (settlement/schedule.py): what is due, and the run."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from settleworld import DAY0, PAYER, day_at, make_world
from sqlalchemy import Engine, select

from clearing.business_day import DEFAULT_CLOCK, BusinessDayClock
from settlement.models import WindowRow
from settlement.schedule import ScheduledClose, due_days

GRACE = dt.timedelta(minutes=30)
DAY1 = DAY0 + dt.timedelta(days=1)
DAY2 = DAY0 + dt.timedelta(days=2)


def _end(day: dt.date) -> dt.datetime:
    return DEFAULT_CLOCK.end_of(day)


def test_a_day_is_due_only_once_its_end_and_the_grace_have_passed() -> None:
    kw = {"clock": DEFAULT_CLOCK, "grace": GRACE, "unfinished": [], "open_with_totals": [DAY0, DAY1]}
    assert due_days(now=_end(DAY0) + GRACE - dt.timedelta(seconds=1), **kw) == []  # type: ignore[arg-type]
    assert due_days(now=_end(DAY0) + GRACE, **kw) == [DAY0]  # type: ignore[arg-type]
    assert due_days(now=_end(DAY1) + GRACE, **kw) == [DAY0, DAY1]  # type: ignore[arg-type]


def test_an_interrupted_close_is_due_again_and_a_negative_grace_is_refused() -> None:
    now = _end(DAY1) + GRACE
    assert due_days(now=now, clock=DEFAULT_CLOCK, grace=GRACE, unfinished=[DAY0], open_with_totals=[DAY1]) == [
        DAY0,
        DAY1,
    ]
    with pytest.raises(ValueError, match="grace"):
        due_days(now=now, clock=DEFAULT_CLOCK, grace=-GRACE, unfinished=[], open_with_totals=[])


@given(
    st.lists(st.integers(0, 60), max_size=40),
    st.integers(0, 70 * 24 * 3600),
    st.sampled_from([dt.time(0, 0), dt.time(3, 0), dt.time(23, 30)]),
)
def test_due_days_are_ordered_ended_distinct_and_bounded(offsets: list[int], seconds: int, cutoff: dt.time) -> None:
    clock = BusinessDayClock(cutoff)
    days = [DAY0 + dt.timedelta(days=o) for o in offsets]
    now = clock.start_of(DAY0) + dt.timedelta(seconds=seconds)
    due = due_days(now=now, clock=clock, grace=GRACE, unfinished=days[:3], open_with_totals=days[3:], limit=31)
    assert due == sorted(set(due)) and len(due) <= 31
    assert all(clock.end_of(d) + GRACE <= now for d in due)
    assert set(due) <= set(days)


def test_the_schedule_closes_ended_days_in_order_and_a_second_run_changes_nothing(
    db_engine: Engine, tmp_path: Path
) -> None:
    world = make_world(db_engine, tmp_path / "out")
    world.ingest("a1", day_at(DAY0, 8), [200, 150])
    world.ingest("shop", day_at(DAY1, 9), [5_000])
    world.ingest("a1", day_at(DAY2, 9), [300])
    job = ScheduledClose(engine=db_engine, payer=PAYER, out_dir=tmp_path / "out", clock=DEFAULT_CLOCK, grace=GRACE)
    assert job.run(_end(DAY0)) == []  # within the grace: nothing yet
    results = job.run(_end(DAY1) + GRACE)
    assert [r.payees for r in results] == [1, 1] and all(r.newly_closed for r in results)
    with world.session() as s:
        states = {day: state for day, state in s.execute(select(WindowRow.business_day, WindowRow.state))}
    assert states == {DAY0: "closed", DAY1: "closed"}  # DAY2 has not ended
    assert job.run(_end(DAY1) + GRACE) == []
    assert (tmp_path / "out" / DAY1.isoformat() / f"payouts-{DAY1}.csv").exists()
