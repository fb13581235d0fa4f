"""Transfer-discount sharing in the close: legs written at ingest, journeys walked back, payable → payable.

On SQLite and PostgreSQL, through real ingest and real closes (docs/settlement.md, "Transfer
discounts"); the pure parts (telescoping, moves, pairing, the standalone fallback) without a database.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from settleworld import DAY0, World, day_at, make_world, money_check, payable
from sqlalchemy import Engine, func, select
from tapfactory import make_keystore

from clearing.exceptions_queue import accept, list_items
from clearing.ledger import trial_balance
from clearing.models import Operator, Transfer, TransferCode
from settlement import transfer_ids
from settlement.journeys import Leg, StaticFares, journeys, standalone_fen
from settlement.models import CarryRow, StatementRow, TransferLegRow
from settlement.reconcile import differences
from settlement.sharing import (
    JourneyLeg,
    added_leg_adjustments,
    journey_adjustments,
    pair_moves,
    sharing_moves,
)

DAY1 = DAY0 + dt.timedelta(days=1)
DAY2 = DAY0 + dt.timedelta(days=2)
# The docs' worked example: Xianyang bus 2.00, a Xingping bus 1.50 alone, a Xianyang bus 1.00 alone.
FARES = StaticFares({(None, "x2", "adult"): 200, (None, "g15", "adult"): 150, (None, "x1", "adult"): 100})


def _statements(world: World, day: dt.date) -> dict[str, StatementRow]:
    with world.session() as s:
        return {r.payee_id: r for r in s.scalars(select(StatementRow).where(StatementRow.window_day == day))}


def _sharing_transfers(world: World, day: dt.date) -> list[tuple[str, int, int, int]]:
    with world.session() as s:
        return [
            (t.id, t.debit_account_id, t.credit_account_id, t.amount_fen)
            for t in s.scalars(
                select(Transfer).where(
                    Transfer.code == int(TransferCode.SHARING), Transfer.source_ref == f"close:{day}"
                )
            )
        ]


def _account(world: World, operator_id: str) -> int:
    with world.session() as s:
        account = s.scalar(select(Operator.payable_account_id).where(Operator.operator_id == operator_id))
        assert account is not None
        return int(account)


def _exact(world: World) -> None:
    with world.session() as s:
        trial_balance(s)
        due, paid = money_check(s)
        carried = s.scalar(select(func.coalesce(func.sum(CarryRow.carry_fen), 0)))
        assert paid + int(carried or 0) == due, "payouts + fees + carried == accepted purchases − refunds"


def test_worked_example_of_docs_through_ingest_and_a_close(db_engine: Engine, tmp_path: Path) -> None:
    world = make_world(db_engine, tmp_path / "out")
    start = day_at(DAY0, 8)
    leg1 = world.ride("a1", 0, start, 200, standalone_fen=200, product="x2")
    world.send("a1")
    leg2 = world.ride("b1", 0, start + dt.timedelta(minutes=30), 50, standalone_fen=150, product="g15",
                      transfer_of=leg1.terminal_seq)  # fmt: skip
    world.send("b1")
    world.ride("a1", 0, start + dt.timedelta(minutes=70), 50, standalone_fen=100, product="x1",
               transfer_of=leg2.terminal_seq)  # fmt: skip
    world.ingest("a1", start + dt.timedelta(hours=2), [300])  # an ordinary tap, in the same batch: no leg row
    with world.session() as s:
        legs = s.scalars(select(TransferLegRow).order_by(TransferLegRow.id)).all()
        assert [(r.terminal_seq, r.transfer_of, r.charged_fen, r.window_day) for r in legs] == [
            (leg2.terminal_seq, leg1.terminal_seq, 50, DAY0), (leg1.terminal_seq + 1, leg2.terminal_seq, 50, DAY0)
        ]  # fmt: skip
        assert all(r.tap_id for r in legs)
        assert [len(chain) for chain in journeys(s, DAY0)] == [2, 3]
    result = world.close(DAY0, fares=FARES)
    assert result.newly_closed
    lines = _statements(world, DAY0)
    # per operator: xianyang-bus −0.50, xingping-bus +0.50 (the docs' table)
    assert (lines["bus-a"].sharing_fen, lines["bus-b"].sharing_fen) == (-50, 50)
    assert (lines["bus-a"].gross_fen, lines["bus-a"].net_fen, lines["bus-a"].payout_fen) == (550, 500, 500)
    assert (lines["bus-b"].net_fen, lines["bus-b"].carry_out_fen) == (100, 100)  # no account: carried
    a, b = _account(world, "bus-a"), _account(world, "bus-b")
    assert _sharing_transfers(world, DAY0) == [(transfer_ids.sharing(DAY0, "bus-a", "bus-b"), a, b, 50)]
    with world.session() as s:
        assert payable(s, "bus-a") == 0 and payable(s, "bus-b") == 100
        assert differences(s, DAY0, world.out_dir) == []
    statement = (world.out_dir / DAY0.isoformat() / f"statement-{DAY0}.csv").read_text("utf-8").splitlines()
    header = statement[0].split(",")
    rows = {r.split(",")[1]: dict(zip(header, r.split(","), strict=True)) for r in statement[1:]}
    assert rows["bus-a"]["sharing_fen"] == "-50" and rows["bus-b"]["sharing_fen"] == "50"
    _exact(world)
    # a rerun of the close changes nothing: no transfer, the same bytes
    files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (world.out_dir / DAY0.isoformat()).iterdir()}
    with world.session() as s:
        before = s.scalar(select(func.count()).select_from(Transfer))
    again = world.close(DAY0, fares=FARES)
    assert not again.newly_closed and again.files_written == []
    with world.session() as s:
        assert s.scalar(select(func.count()).select_from(Transfer)) == before
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in (world.out_dir / DAY0.isoformat()).iterdir()} == files  # fmt: skip


def test_a_journey_split_across_windows_adds_up_to_the_full_journey(db_engine: Engine, tmp_path: Path) -> None:
    world = make_world(db_engine, tmp_path / "out")
    late_evening = day_at(DAY0, 23)  # the business day ends at the cut-off: the next legs are days later
    leg1 = world.ride("a1", 0, late_evening, 200, standalone_fen=200, product="x2")
    world.send("a1")
    world.close(DAY0, fares=FARES)
    assert _statements(world, DAY0)["bus-a"].sharing_fen == 0  # a first leg brings nothing
    leg2 = world.ride("b1", 0, day_at(DAY1, 9), 50, standalone_fen=150, product="g15", transfer_of=leg1.terminal_seq)
    world.send("b1")
    world.ingest("a1", day_at(DAY1, 10), [300])  # bus-a earns on DAY1 too: its payable can give
    world.close(DAY1, fares=FARES)
    one = _statements(world, DAY1)
    # legs 1..2: D = 3.50 − 2.50 = 1.00 over 200:150 → 57 + 43; leg 1 −57, leg 2 +57
    assert (one["bus-a"].sharing_fen, one["bus-b"].sharing_fen) == (-57, 57)
    world.ride("a1", 0, day_at(DAY2, 9), 50, standalone_fen=100, product="x1", transfer_of=leg2.terminal_seq)
    world.send("a1")
    world.close(DAY2, fares=FARES)
    two = _statements(world, DAY2)
    # legs 1..3 (−67, +50, +17) minus legs 1..2 (−57, +57, 0): (−10, −7, +17)
    assert (two["bus-a"].sharing_fen, two["bus-b"].sharing_fen) == (7, -7)
    # over the three windows: exactly the full journey's −0.50 and +0.50
    assert one["bus-a"].sharing_fen + two["bus-a"].sharing_fen == -50
    assert one["bus-b"].sharing_fen + two["bus-b"].sharing_fen == 50
    with world.session() as s:
        for day in (DAY0, DAY1, DAY2):
            assert differences(s, day, world.out_dir) == [], day
    _exact(world)


def test_sharing_an_empty_payable_cannot_give_is_owed_until_it_can(db_engine: Engine, tmp_path: Path) -> None:
    world = make_world(db_engine, tmp_path / "out")
    leg1 = world.ride("a1", 0, day_at(DAY0, 9), 200, standalone_fen=200, product="x2")
    world.send("a1")
    world.close(DAY0, fares=FARES)  # bus-a is paid its 2.00: its payable is empty
    world.ride("b1", 0, day_at(DAY1, 9), 50, standalone_fen=150, product="g15", transfer_of=leg1.terminal_seq)
    world.send("b1")
    world.close(DAY1, fares=FARES)
    one = _statements(world, DAY1)
    assert (one["bus-a"].sharing_fen, one["bus-a"].sharing_owed_fen) == (0, -57)
    assert (one["bus-b"].sharing_fen, one["bus-b"].sharing_owed_fen) == (0, 57)
    assert _sharing_transfers(world, DAY1) == []
    world.ingest("a1", day_at(DAY2, 9), [300])
    world.close(DAY2, fares=FARES)
    two = _statements(world, DAY2)
    assert (two["bus-a"].sharing_fen, two["bus-a"].sharing_owed_fen, two["bus-a"].payout_fen) == (-57, 0, 243)
    assert (two["bus-b"].sharing_fen, two["bus-b"].sharing_owed_fen) == (57, 0)
    with world.session() as s:
        assert payable(s, "bus-a") == 0 and payable(s, "bus-b") == 107
        for day in (DAY0, DAY1, DAY2):
            assert differences(s, day, world.out_dir) == [], day
    _exact(world)


def test_an_exception_accepted_later_is_a_transfer_leg_too(db_engine: Engine, tmp_path: Path) -> None:
    world = make_world(db_engine, tmp_path / "out")
    keystore = make_keystore(tmp_path)
    world.amount_fen_max = 120
    leg1 = world.ride("a1", 0, day_at(DAY0, 9), 100, standalone_fen=100, product="x1")
    world.send("a1")
    world.ride("b1", 0, day_at(DAY0, 10), 150, standalone_fen=300, product="g3", transfer_of=leg1.terminal_seq)
    world.send("b1")  # held: E_AMOUNT_LIMIT, not posted, no leg row
    with world.session() as s:
        assert s.scalar(select(func.count()).select_from(TransferLegRow)) == 0
        item = list_items(s, code="E_AMOUNT_LIMIT")[0]
    with world.session() as s, s.begin():
        accept(s, keystore, item.id, now=day_at(DAY0, 20), note="limit raised")
    with world.session() as s:
        row = s.scalars(select(TransferLegRow)).one()
        assert (row.window_day, row.charged_fen, row.transfer_of) == (DAY0, 150, leg1.terminal_seq)
    world.close(DAY0)  # no lookup: the adult legs' full_fare_fen
    lines = _statements(world, DAY0)
    # D = 400 − 250 = 150 over 100:300 → 37.5 + 112.5; equal remainders: the earlier leg's fen → 38 + 112
    assert (lines["bus-a"].sharing_fen, lines["bus-b"].sharing_fen) == (-38, 38)
    with world.session() as s:
        assert differences(s, DAY0, world.out_dir) == []
    _exact(world)


# --- pure -----------------------------------------------------------------------------------


def _leg(category: str | None, full: int | None, charged: int, product: str | None = "x2") -> Leg:
    return Leg(1, "i", "c", 1, 7, product, category, None, charged, full, 1)


def test_a_legs_standalone_fare_is_the_lookups_price_else_the_adult_full_fare_else_what_was_charged() -> None:
    assert standalone_fen(_leg("adult", 180, 50), FARES) == 200  # the lookup's price wins
    assert standalone_fen(_leg("adult", 180, 50, product="unknown"), FARES) == 180
    assert standalone_fen(_leg("adult", 180, 50), None) == 180
    assert standalone_fen(_leg("", 180, 50), None) == 180  # no category: the default's
    assert standalone_fen(_leg("student", 180, 50), None) == 50  # a concession proves no transfer discount
    assert standalone_fen(_leg("student", 180, 50), StaticFares({}, default="student")) == 180


def test_a_journey_that_charged_more_than_its_standalone_fares_shares_nothing() -> None:
    assert journey_adjustments([JourneyLeg("a", 100, 300), JourneyLeg("b", 100, 0)]) == (0, 0)


journeys_st = st.lists(
    st.tuples(st.sampled_from("abc"), st.integers(0, 900), st.integers(0, 900)), min_size=1, max_size=16
).map(lambda legs: [JourneyLeg(p, s, min(s, c)) for p, s, c in legs])


@settings(max_examples=300, deadline=None)
@given(legs=journeys_st)
def test_leg_by_leg_adjustments_telescope_to_the_full_journeys(legs: list[JourneyLeg]) -> None:
    total = [0] * len(legs)
    for k in range(1, len(legs) + 1):
        for i, fen in enumerate(added_leg_adjustments(legs[:k])):
            total[i] += fen
    assert tuple(total) == journey_adjustments(legs)
    assert sum(total) == 0


@settings(max_examples=300, deadline=None)
@given(
    wanted=st.lists(st.integers(-500, 500), min_size=1, max_size=6),
    room=st.lists(st.integers(-50, 600), min_size=6, max_size=6),
)
def test_sharing_moves_never_overdraw_a_payable_and_pair_into_fewer_transfers_than_payees(
    wanted: list[int], room: list[int]
) -> None:
    wanted = [*wanted, -sum(wanted)]
    names = [f"p{i}" for i in range(len(wanted))]
    want = dict(zip(names, wanted, strict=True))
    rooms = dict(zip(names, [*room, 0][: len(names)], strict=True))
    moved, owed = sharing_moves(want, rooms)
    assert sum(moved.values()) == 0 and sum(owed.values()) == 0
    for p in names:
        assert moved.get(p, 0) + owed.get(p, 0) == want[p]
        assert moved.get(p, 0) >= -max(0, rooms[p])  # never below zero
        assert abs(moved.get(p, 0)) <= abs(want[p]) and moved.get(p, 0) * want[p] >= 0
    pairs = pair_moves(moved)
    assert len(pairs) < max(2, len(moved))
    net: dict[str, int] = {}
    for giver, taker, fen in pairs:
        assert fen > 0
        net[giver] = net.get(giver, 0) - fen
        net[taker] = net.get(taker, 0) + fen
    assert net == moved
    assert pairs == pair_moves(dict(reversed(list(moved.items()))))  # the same moves, the same transfers
