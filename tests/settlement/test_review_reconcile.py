"""Review (issue 11): reconciliation cries about no difference while a close or ingest runs.

The payable check compares each payee payable with its carry plus the running totals of the
windows whose money is still in it. Two ways it reported differences that were not there:

* a window sealed but not yet settled (a close in progress, or one killed after its seal) was
  counted as settled, so its totals were in neither the carries nor the "open" windows;
* read in three statements on PostgreSQL (READ COMMITTED), an ingest batch committing between
  the totals read and the balances read made every payee it paid differ.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from settleworld import DAY0, day_at, make_world
from sqlalchemy import Engine, event
from sqlalchemy.orm import Session

from clearing.business_day import DEFAULT_CLOCK
from settlement.reconcile import differences, payable_differences
from settlement.windows import seal

DAY1 = DAY0 + dt.timedelta(days=1)


def test_a_window_sealed_but_not_yet_settled_is_no_payable_difference(db_engine: Engine, tmp_path: Path) -> None:
    world = make_world(db_engine, tmp_path / "out")
    world.ingest("a1", day_at(DAY0), [200, 300])
    world.close(DAY0)
    world.ingest("a1", day_at(DAY1), [150])
    world.ingest("shop", day_at(DAY1), [12_000])
    seal(db_engine, DAY1, now=world.now, clock=DEFAULT_CLOCK)  # DAY1's close is between its seal and settle
    with Session(db_engine) as session:
        assert differences(session, DAY0, world.out_dir) == []
    world.close(DAY1)
    with Session(db_engine) as session:
        assert differences(session, DAY1, world.out_dir) == []


@pytest.mark.postgres
def test_an_ingest_committing_while_reconcile_reads_is_no_payable_difference(pg_engine: Engine, tmp_path: Path) -> None:
    world = make_world(pg_engine, tmp_path / "out")
    world.ingest("a1", day_at(DAY0), [200])
    world.close(DAY0)
    fired: list[str] = []

    def ingest_meanwhile(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if not fired and "settlement_totals" in statement:
            fired.append(statement)
            world.ingest("a1", day_at(DAY1), [150])  # another connection, committed

    event.listen(pg_engine, "after_cursor_execute", ingest_meanwhile)
    try:
        with Session(pg_engine) as session:
            found = payable_differences(session)
    finally:
        event.remove(pg_engine, "after_cursor_execute", ingest_meanwhile)
    assert fired, "the hook ran"
    assert found == []
    with Session(pg_engine) as session:
        assert payable_differences(session) == []
