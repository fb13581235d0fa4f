"""Hypothesis over random streams of taps, transfer journeys, late records, refunds, decisions,
reassignments and closes.

After any stream, with every window closed: payouts + fees + carried == accepted purchases − refunds,
exactly; every purchase transfer lies in exactly one window (its batch, payee and day map to one
posting), and so does every transfer leg; transfer-discount sharing sums to zero in every window and
never overdraws a payable; every close reconciles; a rerun of a close changes nothing
(docs/settlement.md).
"""

from __future__ import annotations

import datetime as dt
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from settleworld import DAY0, World, day_at, make_world, money_check
from sqlalchemy import Engine, func, select, text

from clearing import db
from clearing.exceptions_queue import write_off
from clearing.ledger import trial_balance
from clearing.models import Base, ExceptionItem, Tap, Transfer, TransferCode
from settlement.models import CarryRow, PostingRow, StatementRow, TotalRow, TransferLegRow, WindowRow
from settlement.parties import assign_route
from settlement.reconcile import differences

DAYS = 4
op_taps = st.tuples(st.just("taps"), st.sampled_from(["a1", "b1", "shop"]), st.integers(0, DAYS - 1),
                    st.lists(st.integers(1, 3000), min_size=1, max_size=4))  # fmt: skip
op_close = st.tuples(st.just("close"))
op_rerun = st.tuples(st.just("rerun"))
op_refund = st.tuples(st.just("refund"), st.integers(1, 500))
op_assign = st.tuples(st.just("assign"), st.sampled_from(["bus-a", "bus-b", "shop-1"]))
# A bus leg by one of three riders: charged, what it costs alone above that, whether it is a transfer
# from the rider's previous leg (then on that leg's day or later: journeys cross windows), and its day.
op_leg = st.tuples(st.just("leg"), st.sampled_from(["a1", "b1"]), st.integers(0, 2), st.integers(0, 300),
                   st.integers(0, 200), st.booleans(), st.integers(0, DAYS - 1))  # fmt: skip
# A whole journey of 2–4 legs by one rider, each leg on the day of the one before or a later one
# (so in a later window: the closes at the end seal the days in order).
leg_st = st.tuples(st.sampled_from(["a1", "b1"]), st.integers(0, 300), st.integers(0, 200), st.integers(0, 1))
op_journey = st.tuples(st.just("journey"), st.integers(0, 2), st.integers(0, DAYS - 1),
                       st.lists(leg_st, min_size=2, max_size=4))  # fmt: skip
streams = st.lists(
    st.one_of(op_taps, op_taps, op_leg, op_journey, op_journey, op_close, op_rerun, op_refund, op_assign),
    min_size=1,
    max_size=14,
)


def _next_open(world: World) -> dt.date:
    with world.session() as s:
        latest = s.scalar(select(func.max(WindowRow.business_day)))
    return DAY0 if latest is None else latest + dt.timedelta(days=1)


def _run(world: World, stream: list[tuple[object, ...]], tmp: Path) -> None:
    refunds = 0
    last_leg: dict[int, tuple[int, int]] = {}  # rider -> (terminal_seq, day offset) of its latest leg
    for n, op in enumerate(stream):
        args: Any = op[1:]
        if op[0] == "leg":
            name, rider, charged, extra, transfer, offset = args
            previous = last_leg.get(rider) if transfer else None
            day = max(offset, previous[1]) if previous else offset
            when = day_at(DAY0 + dt.timedelta(days=day), 6) + dt.timedelta(minutes=n)
            record = world.ride(name, rider, when, charged, standalone_fen=charged + extra,
                                transfer_of=previous[0] if previous else None)  # fmt: skip
            world.send(name)
            last_leg[rider] = (record.terminal_seq, day)
        elif op[0] == "journey":
            rider, day, legs = args
            previous_seq = None
            for i, (name, charged, extra, later) in enumerate(legs):
                day = min(DAYS - 1, day + later)
                when = day_at(DAY0 + dt.timedelta(days=day), 7) + dt.timedelta(minutes=n * 5 + i)
                record = world.ride(name, rider, when, charged, standalone_fen=charged + extra,
                                    transfer_of=previous_seq)  # fmt: skip
                world.send(name)
                previous_seq = record.terminal_seq
            last_leg[rider] = (record.terminal_seq, day)
        elif op[0] == "taps":
            _, name, offset, amounts = op
            world.ingest(str(name), day_at(DAY0 + dt.timedelta(days=int(offset)), 8), list(amounts))  # type: ignore[arg-type]
        elif op[0] == "close":
            day = _next_open(world)
            if day < DAY0 + dt.timedelta(days=DAYS):
                world.close(day)
        elif op[0] == "rerun":
            day = _next_open(world) - dt.timedelta(days=1)
            if day >= DAY0:
                with world.session() as s:
                    before = s.scalar(select(func.count()).select_from(Transfer))
                files = {p: p.read_bytes() for p in (world.out_dir / day.isoformat()).iterdir()}
                assert not world.close(day).newly_closed
                with world.session() as s:
                    assert s.scalar(select(func.count()).select_from(Transfer)) == before
                assert {p: p.read_bytes() for p in (world.out_dir / day.isoformat()).iterdir()} == files
        elif op[0] == "refund":
            with world.session() as s, s.begin():
                queued = select(ExceptionItem.tap_id).where(ExceptionItem.tap_id.is_not(None))
                tap = s.scalars(
                    select(Tap).where(Tap.transfer_id.is_not(None), Tap.id.not_in(queued)).order_by(Tap.id.desc())
                ).first()
                if tap is None:
                    continue
                posted = s.get(Transfer, tap.transfer_id)
                assert posted is not None
                balance_sql = text("SELECT credits_posted - debits_posted - debits_pending FROM accounts WHERE id = :a")
                payee_balance = s.execute(balance_sql, {"a": posted.credit_account_id}).scalar_one()
                amount = min(int(op[1]), tap.amount_fen, int(payee_balance))
                if amount <= 0:
                    continue
                refunds += 1
                item = ExceptionItem(kind="tap", code="S_BALANCE_DISCONTINUITY", message="p", state="open",
                                     created_at=world.now, tap_id=tap.id)  # fmt: skip
                s.add(item)
                s.flush()
                decided = day_at(_next_open(world), 12) if _next_open(world) < world.now.date() else world.now
                write_off(s, item.id, now=decided, note="property", amount_fen=amount)
        elif op[0] == "assign":
            day = _next_open(world)
            with world.session() as s, s.begin():
                assign_route(s, "R1", str(op[1]), valid_from=day, today=day, actor="property")
    # close every window that has running totals left
    while True:
        with world.session() as s:
            latest = s.scalar(select(func.max(WindowRow.business_day)))
            q = select(func.min(TotalRow.window_day))
            pending = s.scalar(q.where(TotalRow.window_day > latest) if latest else q)
        if pending is None:
            break
        world.close(pending)


def _check(world: World) -> None:
    with world.session() as s:
        trial_balance(s)
        due, paid = money_check(s)
        carried = s.scalar(select(func.coalesce(func.sum(CarryRow.carry_fen), 0)))
        assert paid + int(carried or 0) == due, "payouts + fees + carried == accepted purchases − refunds"
        # every purchase transfer in exactly one window: (batch, payee, tap day) -> one posting
        transfers = Counter()
        for source, payee, day, amount in s.execute(
            select(Transfer.source_ref, Transfer.credit_account_id, Tap.business_day, Transfer.amount_fen)
            .join(Tap, Tap.transfer_id == Transfer.id)
            .where(Transfer.code == int(TransferCode.PURCHASE), Transfer.source_ref.like("batch:%"))
        ):
            transfers[(source, payee, day)] += amount
        postings = Counter()
        for source, payee, day, amount in s.execute(
            select(
                PostingRow.source_ref, PostingRow.payee_account_id, PostingRow.event_day, PostingRow.amount_fen
            ).where(PostingRow.kind == "sale", PostingRow.source_ref.like("batch:%"))
        ):
            postings[(source, payee, day)] += amount
        assert transfers == postings
        # every transfer leg in one window; sharing only moves money between payables, never overdrawing one
        legs = s.scalars(select(TransferLegRow)).all()
        assert len({(r.terminal_id, r.terminal_seq) for r in legs}) == len(legs)
        for day in s.scalars(select(WindowRow.business_day).where(WindowRow.state == "closed")):
            lines = s.scalars(select(StatementRow).where(StatementRow.window_day == day)).all()
            assert sum(r.sharing_fen for r in lines) == 0 and sum(r.sharing_owed_fen for r in lines) == 0
        sharing = s.scalar(
            select(func.coalesce(func.sum(Transfer.amount_fen), 0)).where(Transfer.code == int(TransferCode.SHARING))
        )
        moved = s.scalar(
            select(func.coalesce(func.sum(StatementRow.sharing_fen), 0)).where(StatementRow.sharing_fen > 0)
        )
        assert sharing == moved, "the ledger's sharing transfers are what the statements moved"
        for day in s.scalars(select(WindowRow.business_day).where(WindowRow.state == "closed")):
            assert differences(s, day, world.out_dir) == [], day


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stream=streams)
def test_sqlite_random_streams_keep_the_money_exact(settle_sqlite_template: Path, tmp_path: Path, stream: list) -> None:
    run = tmp_path / f"run-{abs(hash(str(stream))) % 10**9}"
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir()
    shutil.copyfile(settle_sqlite_template, run / "s.db")
    engine = db.make_engine(f"sqlite:///{run / 's.db'}")
    try:
        world = make_world(engine, run / "out")
        _run(world, stream, run)
        _check(world)
    finally:
        engine.dispose()


@pytest.mark.postgres
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stream=streams)
def test_postgres_random_streams_keep_the_money_exact(pg_engine: Engine, tmp_path: Path, stream: list) -> None:
    from tapfactory import truncate

    with pg_engine.begin() as conn:
        truncate(conn, [t.name for t in Base.metadata.sorted_tables])
    run = tmp_path / f"run-{abs(hash(str(stream))) % 10**9}"
    shutil.rmtree(run, ignore_errors=True)
    world = make_world(pg_engine, run / "out")
    _run(world, stream, run)
    _check(world)
