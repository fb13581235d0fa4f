"""The example Xianyang tariff end to end, and the card's transit records as the engine's memory."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest

from cardos.profile import TRANSIT_RECORDS, CardType
from cardos.records import SHANGHAI_TZ, TRANSIT_BLOCK, TRANSIT_ENTRY, TRANSIT_EXIT, TRANSIT_SINGLE, TransitRecord
from fares import (
    FareError,
    LegKind,
    PastLeg,
    Tap,
    TapKind,
    legs_from_transit_records,
    load_example_tariff,
    price_tap,
    rider_category_for_card,
)
from tests.fares.test_fares_support import MONDAY, SATURDAY, Leg, Rider, at, fares

TARIFF = load_example_tariff()


def urban(route: str, board: str, day: dt.date = MONDAY, stop: str = "u_railway_station") -> Leg:
    return Leg(route, board, from_stop=stop, day=day)


def intercity(board_stop: str, board: str, alight_stop: str, alight: str, day: dt.date = MONDAY) -> Leg:
    return Leg("ic1", board, alight, board_stop, alight_stop, day)


@pytest.mark.parametrize(
    ("category", "leg", "fare_fen"),
    [
        ("adult", urban("1", "07:30"), 100),
        ("adult", urban("K26", "07:30"), 200),
        ("student", urban("6", "07:30"), 50),
        ("student", urban("K26", "07:30"), 100),
        ("senior", urban("19", "07:30"), 50),  # peak: half price
        ("senior", urban("19", "09:00"), 0),  # weekday off-peak: free
        ("senior", urban("K26", "16:59"), 0),
        ("senior", urban("K26", "17:00"), 100),  # the timeframe ends at 17:00, excluded
        ("senior", urban("1", "10:00", SATURDAY), 50),  # off-peak freedom is for weekdays
        ("adult", urban("1", "10:00"), 100),  # the senior rule is not the adult's
        (None, urban("1", "10:00"), 100),  # no category: the default (adult)
    ],
)
def test_flat_urban_fares_by_category_and_time(category: str | None, leg: Leg, fare_fen: int) -> None:
    assert fares(TARIFF, [leg], category) == [fare_fen]


def test_senior_free_ride_reports_the_adult_fare_as_full_fare() -> None:
    decision = Rider(TARIFF, "senior").tap(TapKind.SINGLE, "K26", "u_city_hall", at("10:00"))
    assert (decision.product_id, decision.fare_fen, decision.full_fare_fen, decision.discount_fen) == (
        "senior_off_peak_free",
        0,
        200,
        200,
    )


def test_one_free_urban_transfer_within_sixty_minutes_of_the_first_boarding() -> None:
    legs = [urban("1", "08:00"), urban("K26", "08:40"), urban("6", "08:50")]
    assert fares(TARIFF, legs) == [100, 0, 100]  # the second transfer is over the count
    assert fares(TARIFF, [urban("1", "08:00"), urban("K26", "09:00")]) == [100, 0]  # 60 min is within
    assert fares(TARIFF, [urban("1", "08:00"), urban("K26", "09:00:01")]) == [100, 200]


def test_no_transfer_between_urban_and_intercity() -> None:
    legs = [urban("1", "08:00"), intercity("ic_xianyang_station", "08:20", "ic_airport", "08:50")]
    assert fares(TARIFF, legs) == [100, 500]


@pytest.mark.parametrize(
    ("category", "board_stop", "alight_stop", "entry_fen", "fare_fen"),
    [
        ("adult", "ic_xianyang_station", "ic_weicheng", 800, 200),
        ("adult", "ic_xianyang_station", "ic_airport", 800, 500),
        ("adult", "ic_weicheng", "ic_xian_center", 800, 800),
        ("adult", "ic_airport", "ic_xian_north", 500, 500),  # from zone 2 the most is two zones
        ("adult", "ic_airport", "ic_airport", 500, 200),
        ("student", "ic_xian_north", "ic_airport", 400, 250),
        ("senior", "ic_xian_north", "ic_xianyang_station", 400, 400),
    ],
)
def test_zone_fare_charges_the_maximum_at_entry_and_owes_the_rest_back_at_exit(
    category: str, board_stop: str, alight_stop: str, entry_fen: int, fare_fen: int
) -> None:
    rider = Rider(TARIFF, category)
    on = rider.tap(TapKind.TAP_ON, "ic1", board_stop, at("10:00"))
    off = rider.tap(TapKind.TAP_OFF, "ic1", alight_stop, at("10:40"))
    assert (on.amount_fen, on.refund_due_fen) == (entry_fen, 0)
    assert (off.amount_fen, off.fare_fen, off.refund_due_fen) == (0, fare_fen, entry_fen - fare_fen)
    assert rider.balance_fen == 1_000_000 - entry_fen  # nothing is credited offline


def test_forgotten_tap_off_keeps_the_maximum() -> None:
    rider = Rider(TARIFF)
    on = rider.tap(TapKind.TAP_ON, "ic1", "ic_xianyang_station", at("07:00"))
    rider.ride(urban("1", "12:00"))
    assert on.amount_fen == 800
    assert rider.decisions[-1].day_total_fen == 900  # the open leg counts at what it was charged


def test_a_single_tap_on_a_zone_route_departs_and_arrives_at_its_stop() -> None:
    assert fares(TARIFF, [Leg("ic1", "07:00", None, "ic_xianyang_station")]) == [200]


def test_daily_cap_adult_ten_yuan() -> None:
    legs = [
        intercity("ic_xianyang_station", "07:00", "ic_xian_center", "08:00"),
        urban("K26", "12:00"),
        urban("1", "14:00"),
        urban("1", "16:00"),
        urban("6", "18:00"),
        urban("6", "08:00", SATURDAY),
    ]
    assert fares(TARIFF, legs) == [800, 200, 0, 0, 0, 100]


def test_cap_with_a_tap_on_charges_no_more_than_the_room_left() -> None:
    rider = Rider(TARIFF, "student")
    rider.ride(urban("K26", "07:00"))  # 1.00
    rider.ride(urban("K26", "09:00"))  # 1.00
    on = rider.tap(TapKind.TAP_ON, "ic1", "ic_xianyang_station", at("10:00"))
    assert (on.amount_fen, on.capped, on.day_total_fen) == (300, True, 500)
    off = rider.tap(TapKind.TAP_OFF, "ic1", "ic_weicheng", at("10:20"))
    assert (off.fare_fen, off.refund_due_fen, off.day_total_fen) == (100, 200, 300)


def test_rider_category_from_card_type() -> None:
    assert rider_category_for_card(TARIFF, CardType.ORDINARY) == "adult"
    assert rider_category_for_card(TARIFF, CardType.STUDENT) == "student"
    assert rider_category_for_card(TARIFF, CardType.SENIOR) == "senior"
    assert rider_category_for_card(TARIFF, CardType.SOCIAL_SECURITY) == "adult"


# --- transit records -----------------------------------------------------------------------


def record(tx_type: int, line: int, station: int, when: dt.datetime, amount_fen: int, **kw: object) -> TransitRecord:
    fields: dict[str, object] = {
        "tx_type": tx_type,
        "terminal_id": bytes.fromhex("360486600009"),
        "industry": 0x02,
        "line": line,
        "station": station,
        "operator": 1,
        "amount_fen": amount_fen,
        "balance_after_fen": 5000,
        "moment": when,
        "acquirer_city": bytes.fromhex("7120"),
        "acquirer_id": bytes(8),
        "terminal_seq": 7,
    }
    fields.update(kw)
    return TransitRecord(**fields)  # type: ignore[arg-type]


def newest_first(*records: TransitRecord) -> list[TransitRecord]:
    return list(reversed(records))


def test_records_become_legs_oldest_first() -> None:
    records = newest_first(
        record(TRANSIT_SINGLE, 1, 101, at("07:00"), 100),
        record(TRANSIT_ENTRY, 9001, 901, at("08:00"), 800),
        record(TRANSIT_EXIT, 9001, 903, at("08:30"), 0),
        record(TRANSIT_ENTRY, 9001, 903, at("12:00"), 500),
    )
    legs = legs_from_transit_records(TARIFF, records)
    assert [(leg.kind, leg.route_id, leg.board_stop_id, leg.alight_stop_id, leg.charged_fen) for leg in legs] == [
        (LegKind.SINGLE, "1", "u_railway_station", None, 100),
        (LegKind.CLOSED, "ic1", "ic_xianyang_station", "ic_airport", 800),
        (LegKind.OPEN, "ic1", "ic_airport", None, 500),
    ]
    assert legs[1].alight_time == at("08:30")
    assert legs[0].ref is not None and (legs[0].ref.terminal_id, legs[0].ref.terminal_seq) == ("360486600009", 7)


def test_records_that_are_not_legs_of_this_tariff_are_left_out() -> None:
    records = newest_first(
        record(TRANSIT_SINGLE, 1, 101, at("07:00"), 100, acquirer_city=bytes.fromhex("7100")),  # Xi'an's terminal
        record(TRANSIT_BLOCK, 1, 101, at("07:10"), 0),
        record(TRANSIT_EXIT, 9001, 903, at("07:20"), 0),  # its entry rolled out of the window
        record(TRANSIT_SINGLE, 4242, 4242, at("07:30"), 150),  # a line this tariff has no code for
    )
    legs = legs_from_transit_records(TARIFF, records)
    assert [(leg.route_id, leg.board_stop_id, leg.charged_fen) for leg in legs] == [(None, None, 150)]
    # It cannot transfer, but it counts toward the day's spending.
    decision = price_tap(
        TARIFF, rider_category_id="adult", tap=Tap(TapKind.SINGLE, "1", "u_city_hall", at("07:40")), history=legs
    )
    assert (decision.fare_fen, decision.transfer_count, decision.day_total_fen) == (100, 0, 250)


def test_an_exit_on_another_line_does_not_close_the_entry() -> None:
    records = newest_first(
        record(TRANSIT_ENTRY, 9001, 901, at("08:00"), 800),
        record(TRANSIT_EXIT, 1, 101, at("08:30"), 0),
    )
    assert [leg.kind for leg in legs_from_transit_records(TARIFF, records)] == [LegKind.OPEN]


def test_naive_record_times_are_card_local() -> None:
    naive = record(TRANSIT_SINGLE, 1, 101, dt.datetime(2026, 3, 2, 7, 0), 100)
    (leg,) = legs_from_transit_records(TARIFF, [naive])
    assert leg.board_time == dt.datetime(2026, 3, 2, 7, 0, tzinfo=SHANGHAI_TZ)


def test_history_after_the_tap_is_ignored() -> None:
    later = PastLeg(LegKind.SINGLE, "1", "u_city_hall", at("09:00"), 100)
    decision = price_tap(
        TARIFF, rider_category_id=None, tap=Tap(TapKind.SINGLE, "K26", "u_city_hall", at("08:30")), history=[later]
    )
    assert (decision.fare_fen, decision.transfer_count) == (200, 0)


def test_the_thirty_record_window_is_the_limit_of_the_cap() -> None:
    """Documented limit (docs/fares.md, "Daily cap"): the engine sees only the last 30 records,
    so a day with more taps than that can forget paid legs and charge again. Clearing, which
    sees every tap, owes the excess back."""
    rider = Rider(TARIFF)
    paid = [rider.ride(urban("1", f"{6 + minute // 60:02d}:{minute % 60:02d}")) for minute in range(0, 41 * 2, 2)]
    # Transfers: 1.00, 0, 1.00, 0 ... until the cap, then free.
    assert sum(paid[:20]) == 1000 and all(fare == 0 for fare in paid[20:30])
    assert len(rider.records) == TRANSIT_RECORDS
    assert sum(paid) > 1000  # the paid legs rolled out of the window


@pytest.mark.parametrize(
    ("category", "route", "stop", "code"),
    [
        ("child", "1", "u_city_hall", "E_FARE_UNKNOWN_CATEGORY"),
        ("adult", "99", "u_city_hall", "E_FARE_UNKNOWN_ROUTE"),
        ("adult", "1", "nowhere", "E_FARE_UNKNOWN_STOP"),
        ("adult", "ic1", "u_city_hall", "E_FARE_NO_RULE"),  # the intercity has no zone for an urban stop
    ],
)
def test_taps_the_engine_cannot_price_are_refused_with_a_code(category: str, route: str, stop: str, code: str) -> None:
    with pytest.raises(FareError) as caught:
        price_tap(TARIFF, rider_category_id=category, tap=Tap(TapKind.SINGLE, route, stop, at("10:00")), history=[])
    assert caught.value.code == code
    assert str(caught.value).startswith(code + ": ")


def test_a_tap_needs_an_aware_time() -> None:
    with pytest.raises(ValueError, match="aware"):
        Tap(TapKind.SINGLE, "1", "u_city_hall", dt.datetime(2026, 3, 2, 10, 0))


def test_a_decision_refuses_a_negative_amount_or_an_inconsistent_discount() -> None:
    good = Rider(TARIFF).tap(TapKind.SINGLE, "1", "u_city_hall", at("10:00"))
    with pytest.raises(ValueError, match="amount_fen"):
        dataclasses.replace(good, amount_fen=-1, fare_fen=-1)
    with pytest.raises(ValueError, match="discount_fen"):
        dataclasses.replace(good, discount_fen=5)
    with pytest.raises(ValueError, match="tap-off debits nothing"):
        dataclasses.replace(good, kind=TapKind.TAP_OFF)
