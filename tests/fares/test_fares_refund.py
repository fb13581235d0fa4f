"""Tap-off refunds as the clearing centre computes them (``fares.refund``, ``fares.cleared``).

* Terminal and clearing agree: a day of taps priced by validators from the card's transit
  records; for every tap-off, ``tap_off_refund`` over the legs rebuilt from the cleared taps
  gives the terminal's decision, refund and all (hypothesis, three tariffs).
* ``tap_off_refund`` is ``price_tap`` at that tap-off, for any entry charge and exit; the
  refund is in ``0 .. max(0, charged - minimum_fare_fen)``, the cap aside.
* ``minimum_fare_fen`` is a lower bound of every uncapped fare the engine charges on the route.
* ``legs_from_cleared_taps`` gives the legs ``legs_from_transit_records`` gives.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cardos.profile import TRANSIT_RECORDS
from fares import (
    ClearedTap,
    EntryLeg,
    ExitTap,
    FareDecision,
    FareError,
    LegKind,
    PastLeg,
    RefundReason,
    Tap,
    TapKind,
    Tariff,
    legs_from_cleared_taps,
    legs_from_transit_records,
    load_example_tariff,
    minimum_fare_fen,
    price_tap,
    tap_off_refund,
)
from fares.errors import (
    E_FARE_NO_ENTRY,
    E_FARE_NO_RULE,
    E_FARE_UNKNOWN_CATEGORY,
    E_FARE_UNKNOWN_ROUTE,
    E_FARE_UNKNOWN_STOP,
)
from tests.fares.test_fares_support import ARRIVAL_SENSITIVE, MONDAY, TERMINAL_ID, Rider, at, synthetic

EXAMPLE = load_example_tariff()

# A and B legs with an AB transfer (the transfer product replaces A) and an A + AB + B one back.
TRANSFERS = synthetic(
    fare_leg_rules="leg_group_id,network_id,fare_product_id\nga,A,A\ngb,B,B\n",
    fare_transfer_rules="from_leg_group_id,to_leg_group_id,transfer_count,duration_limit,duration_limit_type,"
    "fare_transfer_type,fare_product_id\nga,gb,,3600,1,2,T1\ngb,ga,,3600,1,1,T1\n",
    rider_categories="rider_category_id,rider_category_name,is_default_fare_category\nadult,Adult,1\n",
    yikatong_caps="rider_category_id,amount,currency\nadult,3.00,CNY\n",
)


@dataclass(frozen=True)
class World:
    """A tariff, its riders, and where they ride: each route with the stops it serves."""

    tariff: Tariff
    categories: tuple[str | None, ...]
    lines: tuple[tuple[str, tuple[str, ...]], ...]

    @property
    def routes(self) -> tuple[str, ...]:
        return tuple(route for route, _ in self.lines)

    @property
    def stops(self) -> tuple[str, ...]:
        return tuple(sorted({stop for _, stops in self.lines for stop in stops}))


IC_STOPS = ("ic_xianyang_station", "ic_weicheng", "ic_airport", "ic_xian_north", "ic_xian_center")
URBAN_STOPS = ("u_city_hall", "u_hospital", "u_university")
WORLDS = {
    "example": World(
        EXAMPLE, ("adult", "student", "senior"), (("ic1", IC_STOPS), ("1", URBAN_STOPS), ("K26", URBAN_STOPS))
    ),
    "arrival_sensitive": World(
        ARRIVAL_SENSITIVE, (None,), tuple((route, ("s1", "s2", "inner", "outer")) for route in ("rA", "rB", "rN"))
    ),
    "transfers": World(TRANSFERS, (None,), tuple((route, ("s1", "s2")) for route in ("rA", "rB", "rA2", "rB2"))),
}
worlds = st.sampled_from(("example", "example", "arrival_sensitive", "transfers"))  # the example has zones
SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LEGS_MAX = TRANSIT_RECORDS // 2 - 1  # every leg writes at most 2 records: the card forgets nothing


@dataclass
class Card:
    """A rider through validators (``Rider``: priced from the card's records) and the clearing
    centre's copy of every tap it made."""

    rider: Rider
    cleared: list[ClearedTap] = field(default_factory=list)
    tap_offs: list[tuple[int, ClearedTap, FareDecision]] = field(default_factory=list)  # entry index, exit

    def tap(self, kind: TapKind, route: str, stop: str, when: dt.datetime) -> FareDecision | None:
        try:
            decision = self.rider.tap(kind, route, stop, when)
        except FareError:
            return None  # the validator refuses the tap: no record, nothing cleared
        cleared = ClearedTap(route, stop, when, decision.amount_fen, kind, TERMINAL_ID.hex(), self.rider.terminal_seq)
        if kind is TapKind.TAP_OFF:
            entry_index = max(i for i, tap in enumerate(self.cleared) if tap.tap_kind is TapKind.TAP_ON)
            self.tap_offs.append((entry_index, cleared, decision))
        self.cleared.append(cleared)
        return decision


leg_plan = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=90),  # minutes before boarding
        st.integers(min_value=0, max_value=10**6),  # route, stop, stop: indexes into the world's
        st.integers(min_value=0, max_value=10**6),
        st.integers(min_value=0, max_value=10**6),
        st.one_of(  # minutes on board; None: a single tap
            st.none(), st.integers(min_value=0, max_value=60), st.integers(min_value=0, max_value=300)
        ),
        st.integers(min_value=0, max_value=3).map(bool),  # taps off (else the tap-on stays open)
    ),
    max_size=LEGS_MAX,
)


def ride(
    world: World, category: str | None, start: dt.datetime, plan: list[tuple[int, int, int, int, int | None, bool]]
) -> Card:
    card = Card(Rider(world.tariff, category))
    now = start
    for gap, route_i, board_i, alight_i, minutes, taps_off in plan:
        now += dt.timedelta(minutes=gap)
        route, stops = world.lines[route_i % len(world.lines)]
        board, alight = stops[board_i % len(stops)], stops[alight_i % len(stops)]
        if minutes is None:
            card.tap(TapKind.SINGLE, route, board, now)
            continue
        if card.tap(TapKind.TAP_ON, route, board, now) is not None and taps_off:
            now += dt.timedelta(minutes=minutes)
            card.tap(TapKind.TAP_OFF, route, alight, now)
    return card


@SETTINGS
@given(
    world_name=worlds,
    category_i=st.integers(min_value=0, max_value=2),
    start_minute=st.integers(min_value=5 * 60, max_value=22 * 60),
    day_offset=st.integers(min_value=0, max_value=6),
    plan=leg_plan,
)
def test_clearing_recomputes_every_terminal_refund_from_the_cleared_taps(
    world_name: str,
    category_i: int,
    start_minute: int,
    day_offset: int,
    plan: list[tuple[int, int, int, int, int | None, bool]],
) -> None:
    world = WORLDS[world_name]
    category = world.categories[category_i % len(world.categories)]
    start = at("00:00", MONDAY + dt.timedelta(days=day_offset)) + dt.timedelta(minutes=start_minute)
    card = ride(world, category, start, plan)
    tariff = world.tariff
    # The clearing centre's legs are the card's legs.
    assert legs_from_cleared_taps(tariff, card.cleared) == legs_from_transit_records(tariff, card.rider.records)
    for entry_index, exit_tap, decision in card.tap_offs:
        entry_tap = card.cleared[entry_index]
        assert entry_tap.route_id is not None and entry_tap.stop_id is not None
        assert exit_tap.route_id is not None and exit_tap.stop_id is not None
        refund = tap_off_refund(
            tariff,
            rider_category_id=category,
            entry=EntryLeg(entry_tap.route_id, entry_tap.stop_id, entry_tap.time, entry_tap.amount_fen),
            exit_tap=ExitTap(exit_tap.route_id, exit_tap.stop_id, exit_tap.time),
            history=legs_from_cleared_taps(tariff, card.cleared[:entry_index]),
        )
        assert refund.reason is RefundReason.CLOSED
        assert refund.refund_fen == decision.refund_due_fen and refund.fare_fen == decision.fare_fen
        # The whole decision, transfer_of included: the cleared legs name earlier legs as the card does.
        assert refund.decision == decision
        # Charged at entry with the same history, the refund never passes the minimum's bound.
        assert 0 <= refund.refund_fen <= max(0, refund.charged_fen - refund.minimum_fare_fen)


@SETTINGS
@given(
    world_name=worlds,
    category_i=st.integers(min_value=0, max_value=2),
    plan=leg_plan,
)
def test_the_minimum_fare_is_below_every_uncapped_fare_on_the_route(
    world_name: str, category_i: int, plan: list[tuple[int, int, int, int, int | None, bool]]
) -> None:
    world = WORLDS[world_name]
    category = world.categories[category_i % len(world.categories)]
    card = ride(world, category, at("06:00"), plan)
    for tap, decision in zip(card.cleared, card.rider.decisions, strict=True):
        assert tap.route_id is not None
        if decision.capped:
            continue
        assert decision.fare_fen >= minimum_fare_fen(world.tariff, category, tap.route_id)


@SETTINGS
@given(
    world_name=worlds,
    category_i=st.integers(min_value=0, max_value=2),
    plan=leg_plan,
    gap_s=st.integers(min_value=0, max_value=3 * 3600),
    route_i=st.integers(min_value=0, max_value=10**6),
    exit_route_i=st.one_of(st.none(), st.integers(min_value=0, max_value=10**6)),  # None: the entry's route
    board_i=st.integers(min_value=0, max_value=10**6),
    alight_i=st.integers(min_value=0, max_value=10**6),
    charged_fen=st.integers(min_value=0, max_value=2_000),
    ride_s=st.integers(min_value=0, max_value=5 * 3600),
)
def test_the_refund_is_what_price_tap_reports_at_that_tap_off(
    world_name: str,
    category_i: int,
    plan: list[tuple[int, int, int, int, int | None, bool]],
    gap_s: int,
    route_i: int,
    exit_route_i: int | None,
    board_i: int,
    alight_i: int,
    charged_fen: int,
    ride_s: int,
) -> None:
    world = WORLDS[world_name]
    tariff = world.tariff
    category = world.categories[category_i % len(world.categories)]
    card = ride(world, category, at("07:00"), plan)
    history = legs_from_transit_records(tariff, card.rider.records)
    last = max((leg.alight_time or leg.board_time for leg in history), default=at("07:00"))
    route, stops = world.lines[route_i % len(world.lines)]
    exit_route = route if exit_route_i is None else world.routes[exit_route_i % len(world.routes)]
    entry = EntryLeg(route, stops[board_i % len(stops)], last + dt.timedelta(seconds=gap_s), charged_fen)
    exit_tap = ExitTap(exit_route, stops[alight_i % len(stops)], entry.time + dt.timedelta(seconds=ride_s))
    open_leg = PastLeg(LegKind.OPEN, entry.route_id, entry.stop_id, entry.time, entry.charged_fen)
    try:
        expected: FareDecision | FareError = price_tap(
            tariff,
            rider_category_id=category,
            tap=Tap(TapKind.TAP_OFF, exit_tap.route_id, exit_tap.stop_id, exit_tap.time),
            history=[*history, open_leg],
        )
    except FareError as exc:
        expected = exc
    try:
        refund = tap_off_refund(tariff, rider_category_id=category, entry=entry, exit_tap=exit_tap, history=history)
    except FareError as exc:
        assert isinstance(expected, FareError) and exc.code == expected.code == E_FARE_NO_RULE
        return
    if isinstance(expected, FareError):
        assert expected.code == E_FARE_NO_ENTRY
        assert refund.reason in (RefundReason.OTHER_ROUTE, RefundReason.TOO_LATE)
        assert (refund.refund_fen, refund.fare_fen, refund.decision) == (0, charged_fen, None)
        return
    assert refund.reason is RefundReason.CLOSED and refund.decision == expected
    assert refund.refund_fen == expected.refund_due_fen and refund.fare_fen == expected.fare_fen
    assert 0 <= refund.refund_fen <= refund.charged_fen
    if not refund.capped:
        assert refund.refund_fen <= max(0, charged_fen - refund.minimum_fare_fen)


# --- examples on the example tariff ------------------------------------------------------------

ON = EntryLeg("ic1", "ic_xianyang_station", at("08:00"), 800)


def test_a_zone_one_ride_owes_back_all_but_the_one_zone_fare() -> None:
    refund = tap_off_refund(
        EXAMPLE, rider_category_id=None, entry=ON, exit_tap=ExitTap("ic1", "ic_weicheng", at("08:30"))
    )
    assert (refund.refund_fen, refund.fare_fen, refund.minimum_fare_fen) == (600, 200, 200)
    assert refund.reason is RefundReason.CLOSED and refund.decision is not None
    assert refund.decision.product_id == "ic_1zone" and not refund.capped


def test_the_daily_cap_seen_by_clearing_can_owe_back_more_than_the_minimum_bound() -> None:
    """The card forgot the morning; clearing knows 9.00 was paid today, so the cap (10.00) leaves
    1.00 for this leg: the refund passes ``charged - minimum`` and says ``capped``."""
    morning = [
        PastLeg(LegKind.SINGLE, "K26", "u_city_hall", at("06:00") + dt.timedelta(hours=2 * i, minutes=1), 200)
        for i in range(4)
    ] + [PastLeg(LegKind.SINGLE, "1", "u_city_hall", at("06:00") + dt.timedelta(hours=1), 100)]
    refund = tap_off_refund(
        EXAMPLE,
        rider_category_id="adult",
        entry=EntryLeg("ic1", "ic_xianyang_station", at("15:00"), 800),
        exit_tap=ExitTap("ic1", "ic_xian_center", at("16:00")),
        history=morning,
    )
    assert refund.capped and (refund.fare_fen, refund.refund_fen) == (100, 700)
    assert refund.refund_fen > refund.charged_fen - refund.minimum_fare_fen


@pytest.mark.parametrize(
    ("exit_tap", "history", "reason"),
    [
        (ExitTap("K26", "u_city_hall", at("08:30")), [], RefundReason.OTHER_ROUTE),
        (ExitTap("ic1", "ic_airport", at("07:59")), [], RefundReason.BEFORE_ENTRY),
        (ExitTap("ic1", "ic_airport", at("12:00:01")), [], RefundReason.TOO_LATE),
        (
            ExitTap("ic1", "ic_airport", at("09:00")),
            [PastLeg(LegKind.SINGLE, "1", "u_city_hall", at("08:20"), 100)],
            RefundReason.LATER_LEG,
        ),
    ],
    ids=["other route", "before entry", "too late", "later leg"],
)
def test_an_exit_that_does_not_close_the_entry_leaves_the_entry_charge(
    exit_tap: ExitTap, history: list[PastLeg], reason: RefundReason
) -> None:
    refund = tap_off_refund(EXAMPLE, rider_category_id=None, entry=ON, exit_tap=exit_tap, history=history)
    assert refund.reason is reason and str(reason) == reason.value
    assert (refund.refund_fen, refund.fare_fen, refund.decision) == (0, 800, None)


def test_the_last_second_of_the_trip_window_still_closes() -> None:
    refund = tap_off_refund(
        EXAMPLE, rider_category_id=None, entry=ON, exit_tap=ExitTap("ic1", "ic_airport", at("12:00"))
    )
    assert refund.reason is RefundReason.CLOSED and refund.refund_fen == 300


@pytest.mark.parametrize(
    ("entry", "exit_tap", "category", "code"),
    [
        (ON, ExitTap("ic9", "ic_airport", at("09:00")), None, E_FARE_UNKNOWN_ROUTE),
        (ON, ExitTap("ic1", "nowhere", at("09:00")), None, E_FARE_UNKNOWN_STOP),
        (
            EntryLeg("ic1", "nowhere", at("08:00"), 800),
            ExitTap("ic1", "ic_airport", at("09:00")),
            None,
            E_FARE_UNKNOWN_STOP,
        ),
        (
            EntryLeg("ic9", "ic_airport", at("08:00"), 800),
            ExitTap("ic1", "ic_airport", at("09:00")),
            None,
            E_FARE_UNKNOWN_ROUTE,
        ),
        (ON, ExitTap("ic1", "ic_airport", at("09:00")), "pensioner", E_FARE_UNKNOWN_CATEGORY),
    ],
    ids=["exit route", "exit stop", "entry stop", "entry route", "category"],
)
def test_what_the_tariff_does_not_know_is_a_fare_error(
    entry: EntryLeg, exit_tap: ExitTap, category: str | None, code: str
) -> None:
    with pytest.raises(FareError) as caught:
        tap_off_refund(EXAMPLE, rider_category_id=category, entry=entry, exit_tap=exit_tap)
    assert caught.value.code == code


@pytest.mark.parametrize(
    ("tariff", "category", "route", "fen"),
    [
        (EXAMPLE, None, "ic1", 200),
        (EXAMPLE, "adult", "ic1", 200),
        (EXAMPLE, "student", "ic1", 100),
        (EXAMPLE, "senior", "ic1", 100),
        (EXAMPLE, "adult", "K26", 0),  # the free urban transfer
        (ARRIVAL_SENSITIVE, None, "rA", 50),  # the 0.50 transfer product
        (TRANSFERS, None, "rB", 0),  # AB: the transfer product replaces the earlier leg's
        (TRANSFERS, None, "rA", 100),  # A + AB + B costs more than A alone
    ],
)
def test_minimum_fare(tariff: Tariff, category: str | None, route: str, fen: int) -> None:
    assert minimum_fare_fen(tariff, category, route) == fen


def test_minimum_fare_errors() -> None:
    with pytest.raises(FareError) as caught:
        minimum_fare_fen(TRANSFERS, None, "rN")  # in no network any rule names
    assert caught.value.code == E_FARE_NO_RULE
    with pytest.raises(FareError) as caught:
        minimum_fare_fen(EXAMPLE, None, "ic9")
    assert caught.value.code == E_FARE_UNKNOWN_ROUTE
    with pytest.raises(FareError) as caught:
        minimum_fare_fen(EXAMPLE, "pensioner", "ic1")
    assert caught.value.code == E_FARE_UNKNOWN_CATEGORY


# --- legs from cleared taps ------------------------------------------------------------------


def cleared(kind: str | None, route: str | None, stop: str | None, clock: str, fen: int, seq: int) -> ClearedTap:
    return ClearedTap(route, stop, at(clock), fen, kind, "360486600011", seq)  # type: ignore[arg-type]


def test_a_tap_on_and_its_tap_off_are_one_closed_leg_and_the_wire_tap_kind_is_accepted() -> None:
    taps = [
        cleared(None, "1", "u_city_hall", "07:00", 100, 1),  # no tap_kind: a single tap
        cleared("tap_on", "ic1", "ic_xianyang_station", "08:00", 800, 2),
        cleared("tap_off", "ic1", "ic_airport", "08:40", 0, 3),
        cleared("tap_on", "ic1", "ic_airport", "10:00", 800, 4),  # never closed
        cleared("tap_off", "ic1", "ic_airport", "17:00", 0, 5),  # too late to close it, debited nothing
    ]
    legs = legs_from_cleared_taps(EXAMPLE, list(reversed(taps)))  # sorted by time
    assert [leg.kind for leg in legs] == [LegKind.SINGLE, LegKind.CLOSED, LegKind.OPEN]
    closed = legs[1]
    assert (closed.board_stop_id, closed.alight_stop_id, closed.charged_fen) == (
        "ic_xianyang_station",
        "ic_airport",
        800,
    )
    assert closed.ref is not None and (closed.ref.terminal_id, closed.ref.terminal_seq) == ("360486600011", 2)
    assert taps[1].tap_kind is TapKind.TAP_ON


def test_routes_and_stops_the_tariff_does_not_know_become_none() -> None:
    [leg] = legs_from_cleared_taps(EXAMPLE, [cleared("single", "old-line", "old-stop", "07:00", 100, 1)])
    assert (leg.route_id, leg.board_stop_id, leg.charged_fen) == (None, None, 100)


def test_a_cleared_tap_checks_itself() -> None:
    with pytest.raises(ValueError, match="aware"):
        ClearedTap("1", "u_city_hall", dt.datetime(2026, 3, 2, 8), 100, None, "360486600011", 1)
    with pytest.raises(ValueError):
        cleared("tap_sideways", "1", "u_city_hall", "08:00", 100, 1)
    with pytest.raises(ValueError):
        cleared(None, "1", "u_city_hall", "08:00", -1, 1)
