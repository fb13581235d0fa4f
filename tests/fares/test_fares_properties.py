"""Invariants of the fare engine for any sequence of taps (hypothesis).

* No debit, fare or refund is ever negative (``FareDecision`` refuses it) and a refund never
  exceeds what was charged at the tap-on.
* What a rider pays on a day never exceeds the daily cap, and each leg only adds to it.
* The tap-on charge is a true maximum: whatever exit follows within ``trip_duration_max_s``,
  the fare computed at the exit is no more than it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections import defaultdict

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cardos.profile import PURSE_MAX_FEN, TRANSIT_RECORDS
from fares import LegKind, Tap, TapKind, legs_from_transit_records, load_example_tariff, price_tap
from tests.fares.test_fares_support import ARRIVAL_SENSITIVE, MONDAY, Rider, at

TARIFF = load_example_tariff()
URBAN_ROUTES = ("1", "6", "19", "K26")
URBAN_STOPS = ("u_railway_station", "u_bus_station", "u_city_hall", "u_university", "u_hospital")
IC_STOPS = ("ic_xianyang_station", "ic_weicheng", "ic_airport", "ic_xian_north", "ic_xian_center")
ACTIONS_MAX = TRANSIT_RECORDS // 2 - 1  # every action writes at most 2 records: the day stays in the window

PROPERTY_SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

urban_ride = st.tuples(st.just("urban"), st.sampled_from(URBAN_ROUTES), st.sampled_from(URBAN_STOPS))
intercity_ride = st.tuples(
    st.sampled_from(["intercity", "intercity_no_tap_off"]),
    st.sampled_from(IC_STOPS),
    st.sampled_from(IC_STOPS),
    st.integers(min_value=0, max_value=180),  # minutes on board
)
actions = st.lists(
    st.tuples(st.integers(min_value=0, max_value=75), st.one_of(urban_ride, intercity_ride)),
    max_size=ACTIONS_MAX,
)


def _ride_day(category: str, start_minute: int, plan: list[tuple[int, tuple[object, ...]]]) -> Rider:
    rider = Rider(TARIFF, category)
    now = at("00:00") + dt.timedelta(minutes=start_minute)
    for gap, action in plan:
        now += dt.timedelta(minutes=gap)
        if action[0] == "urban":
            rider.tap(TapKind.SINGLE, str(action[1]), str(action[2]), now)
            continue
        on = rider.tap(TapKind.TAP_ON, "ic1", str(action[1]), now)
        assert on.refund_due_fen == 0
        if action[0] == "intercity":
            assert isinstance(action[3], int)
            now += dt.timedelta(minutes=action[3])
            off = rider.tap(TapKind.TAP_OFF, "ic1", str(action[2]), now)
            assert off.amount_fen == 0 and 0 <= off.refund_due_fen <= on.amount_fen
    return rider


@PROPERTY_SETTINGS
@given(
    category=st.sampled_from(["adult", "student", "senior"]),
    start_minute=st.integers(min_value=5 * 60, max_value=20 * 60),
    plan=actions,
)
def test_the_daily_cap_holds_and_every_leg_only_adds(
    category: str, start_minute: int, plan: list[tuple[int, tuple[object, ...]]]
) -> None:
    rider = _ride_day(category, start_minute, plan)
    cap_fen = TARIFF.daily_caps[category]
    paid_by_day: dict[dt.date, int] = defaultdict(int)
    entry_day: dt.date | None = None
    previous_total: dict[dt.date, int] = defaultdict(int)
    for decision, (tap_time, kind) in zip(rider.decisions, _tap_times(rider), strict=True):
        day = tap_time.date() if kind is not TapKind.TAP_OFF else entry_day
        assert day is not None
        if kind is TapKind.TAP_ON:
            entry_day = day
        paid_by_day[day] += decision.amount_fen - decision.refund_due_fen
        assert decision.day_total_fen == paid_by_day[day]
        assert paid_by_day[day] <= cap_fen
        if kind is not TapKind.TAP_ON:  # a completed leg never lowers the day's total
            assert paid_by_day[day] >= previous_total[day]
            previous_total[day] = paid_by_day[day]


def _tap_times(rider: Rider) -> list[tuple[dt.datetime, TapKind]]:
    kinds = {0x06: TapKind.SINGLE, 0x03: TapKind.TAP_ON, 0x04: TapKind.TAP_OFF}
    return [(record.moment, kinds[record.tx_type]) for record in reversed(rider.records)]


@PROPERTY_SETTINGS
@given(
    category=st.sampled_from(["adult", "student", "senior"]),
    plan=actions,
)
def test_a_day_of_taps_is_never_charged_more_than_its_uncapped_fares(
    category: str, plan: list[tuple[int, tuple[object, ...]]]
) -> None:
    rider = _ride_day(category, 6 * 60, plan)
    for decision in rider.decisions:
        assert decision.fare_fen >= 0
        assert decision.discount_fen == max(0, decision.full_fare_fen - decision.fare_fen)
        assert decision.transfer_count in (0, 1)  # the example allows one transfer


# --- the tap-on maximum, on a tariff where the exit changes the fare in every way -----------

STOPS = ("s1", "s2", "inner", "outer")
ROUTES = ("rA", "rB", "rN")
leg_plan = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=40),  # minutes before boarding
        st.sampled_from(ROUTES),
        st.sampled_from(STOPS),
        st.sampled_from(STOPS),
        st.one_of(st.none(), st.integers(min_value=0, max_value=50)),  # minutes on board, None: single tap
    ),
    max_size=6,
)


@PROPERTY_SETTINGS
@given(
    plan=leg_plan,
    start_minute=st.integers(min_value=6 * 60, max_value=9 * 60),
    day_offset=st.integers(min_value=0, max_value=6),
    route=st.sampled_from(ROUTES),
    board=st.sampled_from(STOPS),
    alight=st.sampled_from(STOPS),
    ride_s=st.integers(min_value=0, max_value=4 * 3600),
)
def test_the_tap_on_charge_covers_every_exit(
    plan: list[tuple[int, str, str, str, int | None]],
    start_minute: int,
    day_offset: int,
    route: str,
    board: str,
    alight: str,
    ride_s: int,
) -> None:
    rider = Rider(ARRIVAL_SENSITIVE)
    now = at("00:00", MONDAY + dt.timedelta(days=day_offset)) + dt.timedelta(minutes=start_minute)
    for gap, leg_route, leg_from, leg_to, minutes in plan:
        now += dt.timedelta(minutes=gap)
        if minutes is None:
            rider.tap(TapKind.SINGLE, leg_route, leg_from, now)
        else:
            rider.tap(TapKind.TAP_ON, leg_route, leg_from, now)
            now += dt.timedelta(minutes=minutes)
            rider.tap(TapKind.TAP_OFF, leg_route, leg_to, now)
    on = rider.tap(TapKind.TAP_ON, route, board, now)
    history = legs_from_transit_records(ARRIVAL_SENSITIVE, rider.records)
    assert history[-1].kind is LegKind.OPEN
    # With the entry charge out of the way, the exit reports the fare it computes, unclamped.
    history[-1] = dataclasses.replace(history[-1], charged_fen=PURSE_MAX_FEN)
    exit_tap = Tap(TapKind.TAP_OFF, route, alight, now + dt.timedelta(seconds=ride_s))
    off = price_tap(ARRIVAL_SENSITIVE, rider_category_id=None, tap=exit_tap, history=history)
    assert off.fare_fen <= on.amount_fen
