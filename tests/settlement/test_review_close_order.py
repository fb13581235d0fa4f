"""Review (issue 11): a later day's settle may not run before, or beside, an earlier sealed day's settle.

A sealed window is only a marker: its settle reads the carries the previous close wrote. If the
close of D+1 settles while D is sealed but not settled (D's settle still running, or killed after
its seal), both read the same carry in, so a carry is paid twice (money out of nothing) and the
last commit's carry overwrites the other's.
"""

from __future__ import annotations

import datetime as dt
import threading
from pathlib import Path

import pytest
from settleworld import ACCOUNT_A, DAY0, PAYER, World, day_at, make_world
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from clearing.business_day import DEFAULT_CLOCK
from settlement.close import close_window
from settlement.errors import SettlementError
from settlement.models import StatementRow, WindowRow
from settlement.parties import set_account
from settlement.reconcile import differences
from settlement.windows import seal

D1, D2, D3 = (DAY0 + dt.timedelta(days=n) for n in (1, 2, 3))


def _carrying_world(engine: Engine, tmp_path: Path) -> World:
    """bus-b carries 100 fen out of DAY0 (no account then), gets an account, sells on D1, D2 and D3."""
    world = make_world(engine, tmp_path / "out")
    world.ingest("b1", day_at(DAY0), [100])
    assert world.close(DAY0).carry_fen == 100
    with Session(engine) as session, session.begin():
        set_account(session, "bus-b", ACCOUNT_A, actor="test")
    world.ingest("b1", day_at(D1), [50])
    world.ingest("b1", day_at(D2), [70])
    world.ingest("b1", day_at(D3), [1_000])  # an open window: the payable holds enough to pay twice
    return world


def _paid(engine: Engine) -> int:
    with Session(engine) as session:
        return int(session.scalar(select(func.coalesce(func.sum(StatementRow.payout_fen), 0))) or 0)


def test_a_later_day_is_not_settled_while_an_earlier_day_is_sealed_but_unsettled(
    db_engine: Engine, tmp_path: Path
) -> None:
    world = _carrying_world(db_engine, tmp_path)
    seal(db_engine, D1, now=world.now, clock=DEFAULT_CLOCK)
    with pytest.raises(SettlementError, match="E_WINDOW_ORDER"):
        world.close(D2)  # D1's settle was killed after its seal: D2 must wait for it
    world.close(D1)
    world.close(D2)
    assert _paid(db_engine) == 220  # DAY0's 100 carried, D1's 50, D2's 70: each paid once
    with world.session() as s:
        assert differences(s, D1, world.out_dir) == []
        assert differences(s, D2, world.out_dir) == []


@pytest.mark.postgres
def test_a_close_racing_the_settle_of_the_day_before_pays_each_carry_once(pg_engine: Engine, tmp_path: Path) -> None:
    world = _carrying_world(pg_engine, tmp_path)
    inside, go = threading.Event(), threading.Event()
    calls: list[str] = []
    errors: list[BaseException] = []

    def hold_inside_the_settle(step: str, done: int, total: int) -> None:
        calls.append(step)
        if calls.count("settle") == 2:  # the second report is inside the settle's transaction
            inside.set()
            go.wait(10)

    def run(day: dt.date, progress: object = None) -> None:
        try:
            close_window(pg_engine, day, now=world.now, payer=PAYER, out_dir=world.out_dir,
                         progress=progress)  # type: ignore[arg-type]  # fmt: skip
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    first = threading.Thread(target=run, args=(D1, hold_inside_the_settle))
    first.start()
    assert inside.wait(10)
    second = threading.Thread(target=run, args=(D2,))
    second.start()
    second.join(1.5)  # fixed: it waits on D1's window row; unfixed: it settles D2 meanwhile
    go.set()
    first.join(20)
    second.join(20)
    assert errors == []
    with Session(pg_engine) as s:
        states = dict(s.execute(select(WindowRow.business_day, WindowRow.state)).all())
    assert states[D1] == states[D2] == "closed"
    assert _paid(pg_engine) == 220, "DAY0's carry of 100 was paid by both D1 and D2"


def test_before_cutoff_never_seals_a_day_that_has_not_begun(db_engine: Engine, tmp_path: Path) -> None:
    """A typo'd date (2027 for 2026) would seal every day up to it, empty: a year of sales late, unpaid."""
    world = make_world(db_engine, tmp_path / "out")
    world.now = day_at(D1, 0) + dt.timedelta(minutes=5)  # just after midnight, nothing uploaded yet
    with pytest.raises(SettlementError, match="E_WINDOW_NOT_OVER"):
        world.close(D1 + dt.timedelta(days=365), early=True)
    with world.session() as s:
        assert s.get(WindowRow, D1 + dt.timedelta(days=365)) is None
    world.now = day_at(D1, 12)
    world.ingest("a1", day_at(D1, 9), [200])
    assert world.close(D1, early=True).gross_fen == 200  # today, before its cut-off: still allowed


def test_the_last_representable_day_is_a_clear_refusal_not_an_overflow(db_engine: Engine, tmp_path: Path) -> None:
    """``yikatong settle --date 9999-12-31`` computed the day's end, one day past ``date.max``."""
    world = make_world(db_engine, tmp_path / "out")
    for early in (False, True):
        with pytest.raises(SettlementError, match="E_WINDOW_NOT_OVER"):
            world.close(dt.date.max, early=early)
