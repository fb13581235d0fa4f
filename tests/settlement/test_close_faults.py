"""A close killed with SIGKILL at any point, and two closes racing for one day (SQLite and PostgreSQL)."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from settleworld import DAY0, World, day_at, make_world, money_check
from sqlalchemy import Engine, func, select

from clearing.models import Transfer
from settlement.models import WindowRow
from settlement.reconcile import differences

CHILD = Path(__file__).with_name("close_child.py")


def _child(engine: Engine, world: World, slow_ms: int = 0) -> subprocess.Popen[str]:
    url, schema = _url_schema(engine)
    args = [sys.executable, str(CHILD), url, schema, DAY0.isoformat(), str(world.out_dir), world.now.isoformat()]
    if slow_ms:
        args.append(str(slow_ms))
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=Path.cwd())


def _url_schema(engine: Engine) -> tuple[str, str]:
    url = engine.url.render_as_string(hide_password=False)
    with engine.connect() as conn:
        schema = (
            conn.exec_driver_sql("SELECT current_schema()").scalar_one() if engine.dialect.name == "postgresql" else ""
        )
    return url, str(schema or "")


def _busy_world(engine: Engine, tmp_path: Path) -> World:
    world = make_world(engine, tmp_path / "out")
    world.ingest("a1", day_at(DAY0, 7), [200, 300, 150])
    world.ingest("shop", day_at(DAY0, 9), [12_000, 8_000])
    world.ingest("b1", day_at(DAY0, 10), [100])
    return world


def _digests(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.glob("*")) if p.is_file()}


def _settled_once(world: World) -> None:
    with world.session() as s:
        row = s.get(WindowRow, DAY0)
        assert row is not None and row.state == "closed"
        closes = s.scalar(select(func.count()).select_from(Transfer).where(Transfer.source_ref == f"close:{DAY0}"))
        assert closes == 3  # bus-a payout, shop-1 fee and payout; bus-b has no account
        due, paid = money_check(s)
        assert due - paid == 100  # bus-b's carry
        assert differences(s, DAY0, world.out_dir) == []


@pytest.mark.parametrize("attempt", range(4))
def test_a_close_killed_at_any_point_is_finished_by_the_rerun(db_engine: Engine, tmp_path: Path, attempt: int) -> None:
    world = _busy_world(db_engine, tmp_path)
    child = _child(db_engine, world, slow_ms=60)
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "ready", child.stderr.read() if child.stderr else ""
    time.sleep(random.Random(attempt).uniform(0.0, 0.35))  # seal, settle, after the commit, files
    os.kill(child.pid, signal.SIGKILL)
    child.wait(10)
    with world.session() as s:
        state = s.scalar(select(WindowRow.state).where(WindowRow.business_day == DAY0))
        moved = s.scalar(select(func.count()).select_from(Transfer).where(Transfer.source_ref == f"close:{DAY0}"))
    assert (state, moved) in ((None, 0), ("sealed", 0), ("closed", 3)), "the old state or the new one"
    result = world.close(DAY0)
    assert result.newly_closed == (state != "closed")
    _settled_once(world)
    files = _digests(world.out_dir / DAY0.isoformat())
    assert world.close(DAY0).files_written == [] and _digests(world.out_dir / DAY0.isoformat()) == files


def test_two_closes_racing_for_one_day_one_wins_and_the_other_changes_nothing(
    db_engine: Engine, tmp_path: Path
) -> None:
    world = _busy_world(db_engine, tmp_path)
    children = [_child(db_engine, world) for _ in range(2)]
    outcomes = []
    for child in children:
        out, errors = child.communicate(timeout=60)
        assert child.returncode == 0, errors
        outcomes.append(json.loads(out.splitlines()[-1])["newly"])
    assert sorted(outcomes) == [False, True]
    _settled_once(world)
