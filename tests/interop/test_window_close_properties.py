"""Whatever the order of taps over several days, rounds on either side, lost answers and a peer down,
both cities close every window with the same instruction, and settle it once (SQLite).

Xi'an's judge here is the wire's test stand-in (``wire_support.RecordingTestJudge``) with Xi'an's
side of the position written as its real judge writes it (``BookingTestJudge``: each accepted
item booked ``due_to`` in the first window not closed yet, the verdict naming it). Both nodes
run rounds, so either side may propose a window first, and answers get lost either way.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import tempfile
from collections.abc import Sequence
from pathlib import Path

import httpx
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session
from wire_support import (  # noqa: F401 - the fixture
    PEER_ISSUER,
    Pair,
    PeerTransport,
    make_pair,
    sqlite_engines,
    windows_close_at_once,
    wire_sqlite_template_fixture,
)

from clearing import accounts
from clearing.business_day import DEFAULT_CLOCK
from clearing.ledger import account_balance, trial_balance
from clearing.models import Transfer
from interop_xian import api, netting
from interop_xian.items import InteropItem, ItemOutcome, ItemVerdict
from interop_xian.models import Booking, InteropWindow

OPS = st.sampled_from(
    ["tap", "tap", "round_xianyang", "round_xian", "lose_answer", "down", "up", "hours", "next_day", "next_day"]
)


class BookingTestJudge:
    """The test judge, with Xi'an's position written as ``interop_xian.issuer`` writes it."""

    def __init__(self, inner: object, engine: Engine) -> None:
        self.inner = inner
        self.engine = engine

    def judge(
        self, *, peer_city: str, batch_id: str, items: Sequence[InteropItem], received_at: dt.datetime
    ) -> list[ItemVerdict]:
        verdicts = self.inner.judge(peer_city=peer_city, batch_id=batch_id, items=items, received_at=received_at)  # type: ignore[attr-defined]
        out = []
        with Session(self.engine) as s, s.begin():
            netting.lock_peer(s, peer_city)
            closed = netting.latest_closed(s, peer_city)
            booked = dict(
                s.execute(select(Booking.item_id, Booking.window_day).where(Booking.peer_city == peer_city)).all()
            )
            rows = []
            for item, verdict in zip(items, verdicts, strict=True):
                if verdict.outcome is ItemOutcome.ACCEPTED and verdict.amount_fen > 0:
                    window = booked.get(item.item_id)
                    if window is None:
                        tapped = dt.datetime.fromisoformat(str(item.record["tx_time"]))
                        window = netting.window_for(DEFAULT_CLOCK.day_of(tapped), closed)
                        booked[item.item_id] = window
                        rows.append((item.item_id, verdict.amount_fen, window, f"iss:t:{item.item_id}"))
                    verdict = dataclasses.replace(verdict, window_day=window)
                out.append(verdict)
            netting.book_many(s, peer_city=peer_city, direction=netting.DUE_TO, rows=rows, now=received_at)
        return out


def _both_ways(p: Pair) -> PeerTransport:
    """Xi'an's node reaches Xianyang's ``/interop/v1`` in process; windows close as soon as their day ends."""
    windows_close_at_once(p)
    xianyang_app = FastAPI()
    api.mount(xianyang_app, p.xianyang.node)
    back = PeerTransport(xianyang_app)
    p.xian.node._client = httpx.Client(base_url="https://xianyang.test", transport=back)
    p.xian.node.judge = BookingTestJudge(p.judge, p.xian.engine)
    return back


def _windows(engine: Engine) -> dict[dt.date, tuple[str, str]]:
    with Session(engine) as s:
        return {w.window_day: (w.state, w.our_digest) for w in s.scalars(select(InteropWindow))}


def _positions(engine: Engine, direction: str) -> dict[dt.date, int]:
    with Session(engine) as s:
        rows = s.execute(
            select(Booking.window_day, func.sum(Booking.amount_fen))
            .where(Booking.direction == direction)
            .group_by(Booking.window_day)
        ).all()
    return {day: int(fen) for day, fen in rows}


def _legs(engine: Engine, leg: str) -> int:
    with Session(engine) as s:
        return int(s.scalar(select(func.coalesce(func.sum(Transfer.amount_fen), 0))
                            .where(Transfer.id.like(f"inet:%:{leg}"))) or 0)  # fmt: skip


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(OPS, min_size=4, max_size=20), amounts=st.lists(st.integers(1, 900), min_size=20, max_size=20))
def test_both_sides_close_every_window_with_one_instruction_whatever_the_faults(
    ops: list[str], amounts: list[int], wire_sqlite_template: Path
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        engines = list(sqlite_engines(wire_sqlite_template, home))
        try:
            p = make_pair(engines[0], engines[1], home / "keys", batch_items_max=3)
            back = _both_ways(p)
            for n, op in enumerate(ops):
                if op == "tap":
                    p.tap([amounts[n]], at=p.now - dt.timedelta(minutes=30))
                elif op == "round_xianyang":
                    p.exchange()
                elif op == "round_xian":
                    p.xian.node.exchange(now=p.now)
                elif op == "lose_answer":
                    (p.transport if n % 2 else back).lose_acks += 1
                elif op == "down":
                    p.transport.down = back.down = True
                elif op == "up":
                    p.transport.down = back.down = False
                elif op == "hours":
                    p.later(6 * 3600)
                elif op == "next_day":
                    p.later(86400)
            p.transport.down = back.down = False
            p.transport.lose_acks = back.lose_acks = 0
            p.later(2 * 86400)
            for _ in range(3):  # drain: both sides' rounds, past every window's day
                p.exchange()
                p.xian.node.exchange(now=p.now)
                p.later(600)
            ours, theirs = _windows(p.xianyang.engine), _windows(p.xian.engine)
            owed_to_us, we_owe = _positions(p.xianyang.engine, "due_from"), _positions(p.xian.engine, "due_to")
            assert owed_to_us == we_owe  # equal and opposite, window by window
            assert set(ours) == set(theirs) >= set(owed_to_us)
            assert all(state == "final" for state, _ in ours.values())
            assert ours == theirs  # one instruction, the same digest, on both sides
            total = sum(owed_to_us.values())
            assert _legs(p.xianyang.engine, "receive") == total == _legs(p.xian.engine, "pay")
            assert total == sum(v.amount_fen for v in p.judge.verdicts.values())  # each item once
            with p.xianyang.session() as s:
                assert account_balance(s, accounts.due_from_peer(s, PEER_ISSUER)).debit_balance_fen == 0
                trial_balance(s)
            with p.xian.session() as s:
                trial_balance(s)
        finally:
            for engine in engines:
                engine.dispose()
