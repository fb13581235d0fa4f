"""Price one tap from the tariff and what the card remembers (its last transit records).

The engine is offline and pure: a validator has the card's records and its own tariff, and
nothing else, when it must decide within the 400 ms of a tap (``epurse-public-sources.md``
section 10). It replays the remembered legs in time order with the same rules it applies to the
new tap, so the journey state (leg groups, transfers so far, what was paid today) is rebuilt
from the card every time and no terminal has to share state with another.

GTFS-Fares v2 semantics (``fare_leg_rules``, ``fare_transfer_rules``) and the choices Yikatong
makes where GTFS is silent are written down in ``docs/fares.md``; the ones that matter most:

* a single tap is a leg that departs and arrives at the tap (place and time); a tap-on leg
  departs at the tap-on and arrives at the tap-off;
* at a tap-on the purse is debited the most the leg can cost for any exit within
  ``trip_duration_max_s``; at the tap-off nothing is debited and the engine reports the refund;
* several matching rules or transfer rules: the cheapest for the rider, then file order;
* the daily cap (a Yikatong extension) limits what is paid per Asia/Shanghai calendar day.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cardos.profile import CardType
from cardos.records import SHANGHAI_TZ
from fares.errors import (
    E_FARE_NAIVE_TIME,
    E_FARE_NO_ENTRY,
    E_FARE_NO_RULE,
    E_FARE_UNKNOWN_CATEGORY,
    E_FARE_UNKNOWN_ROUTE,
    E_FARE_UNKNOWN_STOP,
    FareError,
)
from fares.model import FareDecision, LegKind, LegRef, PastLeg, Tap, TapKind
from fares.tariff import (
    TRANSFER_COUNT_UNLIMITED,
    FareLegRule,
    FareTransferRule,
    FareTransferType,
    Tariff,
)

_ONE_SECOND = dt.timedelta(seconds=1)
_COUNT_NO_LIMIT = 1 << 30  # sorts an unlimited transfer_count after every finite one


def rider_category_for_card(tariff: Tariff, card_type: CardType) -> str | None:
    """The rider category for a card type (``yikatong_card_types``), else the default category."""
    return tariff.card_type_categories.get(card_type, tariff.default_rider_category_id)


def local_time(moment: dt.datetime) -> dt.datetime:
    """Asia/Shanghai wall-clock time at whole seconds, as the card's BCD date-time holds it."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise FareError(E_FARE_NAIVE_TIME, f"time {moment!r} has no timezone")
    return moment.astimezone(SHANGHAI_TZ).replace(microsecond=0)


# --- the leg and the journey as the engine sees them ------------------------------------------


@dataclass(frozen=True, slots=True)
class _Leg:
    route_id: str
    network_id: str | None
    board_areas: frozenset[str]
    alight_areas: frozenset[str]
    departure: dt.datetime  # local
    arrival: dt.datetime  # local


@dataclass(frozen=True, slots=True)
class _JourneyLeg:
    departure: dt.datetime
    arrival: dt.datetime
    leg_group_id: str | None
    ref: LegRef | None


@dataclass(frozen=True, slots=True)
class _Journey:
    """The transfer sub-journey the next leg may continue."""

    legs: tuple[_JourneyLeg, ...]
    first_price_fen: int  # the first leg's product ("A" of an AB transfer)
    run_pair: tuple[str | None, str | None] | None  # the transfer rule applied last, by its groups
    run_start: int  # index of the first leg of the run of that rule
    run_length: int  # consecutive transfers under that rule


@dataclass(frozen=True, slots=True)
class _Option:
    leg: _Leg
    rule: FareLegRule
    price_fen: int  # the leg's product for this rider
    increment_fen: int  # what the leg adds to the journey, before the cap
    transfer: FareTransferRule | None
    journey: _Journey  # the sub-journey after this leg


def _field_matches(value: str | None, leg_values: frozenset[str], listed: frozenset[str], prioritised: bool) -> bool:
    """GTFS empty-field semantics: with ``rule_priority`` an empty field means "any"; without it,
    "every value not listed in this column"."""
    if value is not None:
        return value in leg_values
    return prioritised or not (leg_values & listed)


def _leg_rules(tariff: Tariff, category: str | None, leg: _Leg) -> list[tuple[FareLegRule, int]]:
    """Rules matching the leg whose product is sold to the rider, highest ``rule_priority`` only."""
    networks = frozenset((leg.network_id,)) if leg.network_id is not None else frozenset()
    prioritised = tariff.leg_rules_prioritised
    found: list[tuple[FareLegRule, int]] = []
    for rule in tariff.leg_rules:
        price = tariff.price_fen(rule.fare_product_id, category)
        if price is None:
            continue
        if not (
            _field_matches(rule.network_id, networks, tariff.listed_networks, prioritised)
            and _field_matches(rule.from_area_id, leg.board_areas, tariff.listed_from_areas, prioritised)
            and _field_matches(rule.to_area_id, leg.alight_areas, tariff.listed_to_areas, prioritised)
        ):
            continue
        if rule.from_timeframe_group_id is not None and not tariff.in_timeframe(
            rule.from_timeframe_group_id, leg.departure
        ):
            continue
        if rule.to_timeframe_group_id is not None and not tariff.in_timeframe(rule.to_timeframe_group_id, leg.arrival):
            continue
        found.append((rule, price))
    if prioritised and found:
        top = max(rule.rule_priority for rule, _ in found)
        found = [(rule, price) for rule, price in found if rule.rule_priority == top]
    return found


def _group_matches(rule_group: str | None, group: str, listed: frozenset[str]) -> bool:
    if rule_group is not None:
        return rule_group == group
    return group not in listed


def _transfer_options(
    tariff: Tariff, category: str | None, journey: _Journey, leg: _Leg, rule: FareLegRule, price_fen: int
) -> list[tuple[int, int, int, _Option]]:
    """Every transfer rule that applies from the journey's last leg into this one, with its sort
    key: (transfer_count rank, increment, file line). GTFS picks the smallest ``transfer_count``
    that still covers the transfer; among equals Yikatong takes the cheapest."""
    previous = journey.legs[-1]
    group = rule.leg_group_id
    if previous.leg_group_id is None or group is None:
        return []
    found: list[tuple[int, int, int, _Option]] = []
    for transfer in tariff.transfer_rules:
        if not _group_matches(transfer.from_leg_group_id, previous.leg_group_id, tariff.listed_transfer_from):
            continue
        if not _group_matches(transfer.to_leg_group_id, group, tariff.listed_transfer_to):
            continue
        continuing = journey.run_pair == transfer.pair
        count_in_run = journey.run_length + 1 if continuing else 1
        limit_count = transfer.transfer_count
        if limit_count is not None and limit_count != TRANSFER_COUNT_UNLIMITED and count_in_run > limit_count:
            continue
        if transfer.duration_limit_s is not None and transfer.duration_limit_type is not None:
            # Measured from the first leg of the run when the same rule applies again
            # (GTFS: "measured starting from the first matched leg").
            reference = journey.legs[journey.run_start] if continuing else previous
            limit_type = transfer.duration_limit_type
            start = reference.departure if limit_type.starts_at_departure else reference.arrival
            end = leg.arrival if limit_type.ends_at_arrival else leg.departure
            if (end - start).total_seconds() > transfer.duration_limit_s:
                continue
        transfer_price = 0
        if transfer.fare_product_id is not None:
            sold = tariff.price_fen(transfer.fare_product_id, category)
            if sold is None:
                continue  # the transfer product is not for this rider category
            transfer_price = sold
        if transfer.fare_transfer_type is FareTransferType.A_PLUS_AB:
            increment = transfer_price
        elif transfer.fare_transfer_type is FareTransferType.A_PLUS_AB_PLUS_B:
            increment = transfer_price + price_fen
        elif len(journey.legs) == 1:  # AB replaces A on the first transfer only
            increment = transfer_price - journey.first_price_fen
        else:
            increment = transfer_price
        after = _Journey(
            legs=(*journey.legs, _JourneyLeg(leg.departure, leg.arrival, group, None)),
            first_price_fen=journey.first_price_fen,
            run_pair=transfer.pair,
            run_start=journey.run_start if continuing else len(journey.legs) - 1,
            run_length=count_in_run,
        )
        rank = _COUNT_NO_LIMIT if limit_count in (None, TRANSFER_COUNT_UNLIMITED) else limit_count
        # A negative transfer product can only lower what this leg adds, never pay money back.
        option = _Option(leg, rule, price_fen, max(0, increment), transfer, after)
        found.append((rank, option.increment_fen, transfer.line, option))
    return found


def _best_option(tariff: Tariff, category: str | None, journey: _Journey | None, leg: _Leg) -> _Option | None:
    best: tuple[int, int, _Option] | None = None
    for rule, price in _leg_rules(tariff, category, leg):
        transfers = _transfer_options(tariff, category, journey, leg, rule, price) if journey is not None else []
        if transfers:
            option = min(transfers, key=lambda item: item[:3])[3]
        else:
            fresh = _Journey((_JourneyLeg(leg.departure, leg.arrival, rule.leg_group_id, None),), price, None, 0, 0)
            option = _Option(leg, rule, price, price, None, fresh)
        if best is None or (option.increment_fen, rule.line) < best[:2]:
            best = (option.increment_fen, rule.line, option)
    return None if best is None else best[2]


def _with_ref(option: _Option, ref: LegRef | None) -> _Journey:
    journey = option.journey
    last = journey.legs[-1]
    legs = (*journey.legs[:-1], _JourneyLeg(last.departure, last.arrival, last.leg_group_id, ref))
    return _Journey(legs, journey.first_price_fen, journey.run_pair, journey.run_start, journey.run_length)


# --- replaying the card -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Replay:
    journey: _Journey | None
    paid_by_day: dict[dt.date, int]

    def paid_on(self, day: dt.date) -> int:
        return self.paid_by_day.get(day, 0)


def _past_leg(tariff: Tariff, past: PastLeg) -> _Leg | None:
    if past.route_id is None or past.route_id not in tariff.route_codes:
        return None
    departure = local_time(past.board_time)
    if past.kind is LegKind.CLOSED and past.alight_time is not None:
        arrival, alight_stop = local_time(past.alight_time), past.alight_stop_id
    else:  # a single tap, or a tap-on never closed: the tap is departure and arrival
        arrival, alight_stop = departure, past.board_stop_id
    return _Leg(
        past.route_id,
        tariff.network_of(past.route_id),
        tariff.areas_of(past.board_stop_id),
        tariff.areas_of(alight_stop),
        departure,
        arrival,
    )


def _cap_room(tariff: Tariff, category: str | None, paid_fen: int) -> int | None:
    cap = tariff.daily_caps.get(category) if category is not None else None
    return None if cap is None else max(0, cap - paid_fen)


def _capped(increment_fen: int, room_fen: int | None) -> int:
    return increment_fen if room_fen is None else min(increment_fen, room_fen)


def _replay(tariff: Tariff, category: str | None, history: Iterable[PastLeg]) -> _Replay:
    """Rebuild the journey and today's spending from the legs on the card, oldest first."""
    journey: _Journey | None = None
    paid: dict[dt.date, int] = {}
    for past in sorted(history, key=lambda leg: local_time(leg.board_time)):
        day = local_time(past.board_time).date()
        leg = _past_leg(tariff, past)
        option = _best_option(tariff, category, journey, leg) if leg is not None else None
        fare = past.charged_fen
        if option is None:
            journey = None  # a leg the tariff cannot price ends the sub-journey
        else:
            if past.kind is LegKind.CLOSED:
                room = _cap_room(tariff, category, paid.get(day, 0))
                fare = min(past.charged_fen, _capped(option.increment_fen, room))
            journey = _with_ref(option, past.ref)
        paid[day] = paid.get(day, 0) + fare
    return _Replay(journey, paid)


# --- the tap ----------------------------------------------------------------------------------


def _arrival_candidates(tariff: Tariff, journey: _Journey | None, departure: dt.datetime) -> list[dt.datetime]:
    """Every arrival time at which the fare of a leg departing at ``departure`` can change, within
    ``trip_duration_max_s``: the fare is constant between these, so the maximum over them is the
    maximum over all arrivals."""
    horizon = departure + dt.timedelta(seconds=tariff.trip_duration_max_s)
    times = {departure}
    if any(rule.to_timeframe_group_id is not None for rule in tariff.leg_rules):
        day = departure.date()
        while day <= horizon.date():
            midnight = dt.datetime.combine(day, dt.time(), tzinfo=SHANGHAI_TZ)
            times.add(midnight)
            for frames in tariff.timeframes.values():
                for frame in frames:
                    times.add(midnight + dt.timedelta(seconds=frame.start_s))
                    times.add(midnight + dt.timedelta(seconds=frame.end_s))
            day += dt.timedelta(days=1)
    if journey is not None:
        for transfer in tariff.transfer_rules:
            limit_type = transfer.duration_limit_type
            if transfer.duration_limit_s is None or limit_type is None or not limit_type.ends_at_arrival:
                continue
            for earlier in journey.legs:
                for start in (earlier.departure, earlier.arrival):
                    times.add(start + dt.timedelta(seconds=transfer.duration_limit_s) + _ONE_SECOND)
    return sorted(moment for moment in times if departure <= moment <= horizon)


def _resolve_category(tariff: Tariff, rider_category_id: str | None) -> str | None:
    if rider_category_id is None:
        return tariff.default_rider_category_id
    if rider_category_id not in tariff.rider_categories:
        raise FareError(E_FARE_UNKNOWN_CATEGORY, f"rider category {rider_category_id!r} is not in the tariff")
    return rider_category_id


def _check_place(tariff: Tariff, tap: Tap) -> None:
    if tap.route_id not in tariff.route_codes:
        raise FareError(E_FARE_UNKNOWN_ROUTE, f"route {tap.route_id!r} has no card code in the tariff")
    if tap.stop_id not in tariff.stop_codes:
        raise FareError(E_FARE_UNKNOWN_STOP, f"stop {tap.stop_id!r} has no card code in the tariff")


def _no_rule(tap: Tap, category: str | None) -> FareError:
    return FareError(
        E_FARE_NO_RULE,
        f"no fare_leg_rules row prices route {tap.route_id!r} from stop {tap.stop_id!r} at "
        f"{local_time(tap.time).isoformat()} for rider category {category!r}",
    )


def _full_fare(tariff: Tariff, option: _Option) -> int:
    """The leg's product at the default category's price; when that product is not sold to the
    default category (a senior-only free ride), the default category's own fare for the leg."""
    default = tariff.default_rider_category_id
    price = tariff.price_fen(option.rule.fare_product_id, default)
    if price is None:
        prices = [default_price for _, default_price in _leg_rules(tariff, default, option.leg)]
        price = min(prices) if prices else option.price_fen
    return max(0, price)


def _decision(
    tariff: Tariff,
    tap: Tap,
    category: str | None,
    option: _Option,
    journey_before: _Journey | None,
    *,
    amount_fen: int,
    fare_fen: int,
    refund_due_fen: int,
    capped: bool,
    day_total_fen: int,
) -> FareDecision:
    full_fare = _full_fare(tariff, option)
    transfer_of = journey_before.legs[-1].ref if option.transfer is not None and journey_before else None
    return FareDecision(
        kind=tap.kind,
        amount_fen=amount_fen,
        fare_fen=fare_fen,
        full_fare_fen=full_fare,
        discount_fen=max(0, full_fare - fare_fen),
        refund_due_fen=refund_due_fen,
        product_id=option.rule.fare_product_id,
        rider_category_id=category,
        leg_group_id=option.rule.leg_group_id,
        network_id=tariff.network_of(tap.route_id),
        transfer_of=transfer_of,
        transfer_count=len(option.journey.legs) - 1,
        transfer_product_id=option.transfer.fare_product_id if option.transfer is not None else None,
        capped=capped,
        day_total_fen=day_total_fen,
    )


def price_tap(tariff: Tariff, *, rider_category_id: str | None, tap: Tap, history: Sequence[PastLeg]) -> FareDecision:
    """Price ``tap`` for a rider of ``rider_category_id`` (None: the tariff's default category)
    whose card remembers ``history`` (``legs_from_transit_records``).

    Legs in ``history`` that board after the tap (a validator with a clock behind) are left out.
    Raises ``FareError`` for an unknown route, stop or category, a leg no rule prices, or a
    tap-off that has no open tap-on on the same route to close.
    """
    category = _resolve_category(tariff, rider_category_id)
    _check_place(tariff, tap)
    now = local_time(tap.time)
    earlier = [past for past in history if local_time(past.board_time) <= now]
    if tap.kind is TapKind.TAP_OFF:
        return _price_tap_off(tariff, category, tap, now, earlier)

    replay = _replay(tariff, category, earlier)
    paid_today = replay.paid_on(now.date())
    room = _cap_room(tariff, category, paid_today)
    network_id = tariff.network_of(tap.route_id)
    areas = tariff.areas_of(tap.stop_id)
    if tap.kind is TapKind.SINGLE:
        option = _best_option(tariff, category, replay.journey, _Leg(tap.route_id, network_id, areas, areas, now, now))
    else:  # tap-on: the most this leg can cost, whatever the exit
        option = None
        for arrival in _arrival_candidates(tariff, replay.journey, now):
            for alight_areas in tariff.alight_area_sets:
                leg = _Leg(tap.route_id, network_id, areas, alight_areas, now, arrival)
                candidate = _best_option(tariff, category, replay.journey, leg)
                if candidate is not None and (option is None or candidate.increment_fen > option.increment_fen):
                    option = candidate
    if option is None:
        raise _no_rule(tap, category)
    fare = _capped(option.increment_fen, room)
    return _decision(
        tariff,
        tap,
        category,
        option,
        replay.journey,
        amount_fen=fare,
        fare_fen=fare,
        refund_due_fen=0,
        capped=fare < option.increment_fen,
        day_total_fen=paid_today + fare,
    )


def _price_tap_off(
    tariff: Tariff, category: str | None, tap: Tap, now: dt.datetime, history: list[PastLeg]
) -> FareDecision:
    """Close the open tap-on: final fare, and the part of the entry charge owed back."""
    ordered = sorted(history, key=lambda leg: local_time(leg.board_time))
    entry = ordered[-1] if ordered else None
    if (
        entry is None
        or entry.kind is not LegKind.OPEN
        or entry.route_id != tap.route_id
        or (now - local_time(entry.board_time)).total_seconds() > tariff.trip_duration_max_s
    ):
        raise FareError(
            E_FARE_NO_ENTRY,
            f"no open tap-on on route {tap.route_id!r} within {tariff.trip_duration_max_s} s before "
            f"{now.isoformat()}; the entry charge stands",
        )
    replay = _replay(tariff, category, ordered[:-1])
    departure = local_time(entry.board_time)
    paid_that_day = replay.paid_on(departure.date())
    leg = _Leg(
        tap.route_id,
        tariff.network_of(tap.route_id),
        tariff.areas_of(entry.board_stop_id),
        tariff.areas_of(tap.stop_id),
        departure,
        now,
    )
    option = _best_option(tariff, category, replay.journey, leg)
    if option is None:
        raise _no_rule(tap, category)
    due = _capped(option.increment_fen, _cap_room(tariff, category, paid_that_day))
    fare = min(due, entry.charged_fen)  # the entry charge was the maximum; never ask for more
    return _decision(
        tariff,
        tap,
        category,
        option,
        replay.journey,
        amount_fen=0,
        fare_fen=fare,
        refund_due_fen=entry.charged_fen - fare,
        capped=due < option.increment_fen,
        day_total_fen=paid_that_day + fare,
    )
