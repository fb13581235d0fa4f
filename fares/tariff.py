"""A loaded tariff: the GTFS-Fares v2 tables plus Yikatong's extension files, checked and indexed.

Built only by ``fares.loader``; everything here is read-only data and pure lookups.
Semantics follow the GTFS Schedule reference (``fare_leg_rules.txt``, ``fare_transfer_rules.txt``,
``timeframes.txt``, ``rider_categories.txt``, ``fare_products.txt``); ``docs/fares.md`` says
where Yikatong adds to it (codes on the card, daily caps, card types, settings).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum

from cardos.profile import CardType


class FareMediaType(IntEnum):
    NONE = 0
    PAPER_TICKET = 1
    TRANSIT_CARD = 2  # the Yikatong card is this kind
    CEMV = 3
    MOBILE_APP = 4


class DurationLimitType(IntEnum):
    """``fare_transfer_rules.duration_limit_type``: which fare validations bound the limit."""

    DEPARTURE_TO_ARRIVAL = 0
    DEPARTURE_TO_DEPARTURE = 1
    ARRIVAL_TO_DEPARTURE = 2
    ARRIVAL_TO_ARRIVAL = 3

    @property
    def starts_at_departure(self) -> bool:
        return self in (DurationLimitType.DEPARTURE_TO_ARRIVAL, DurationLimitType.DEPARTURE_TO_DEPARTURE)

    @property
    def ends_at_arrival(self) -> bool:
        return self in (DurationLimitType.DEPARTURE_TO_ARRIVAL, DurationLimitType.ARRIVAL_TO_ARRIVAL)


class FareTransferType(IntEnum):
    """``fare_transfer_rules.fare_transfer_type``: how the transfer is costed."""

    A_PLUS_AB = 0  # from-leg product + transfer product
    A_PLUS_AB_PLUS_B = 1  # from-leg product + transfer product + to-leg product
    AB = 2  # the transfer product replaces the from-leg product


TRANSFER_COUNT_UNLIMITED = -1


@dataclass(frozen=True, slots=True)
class FareMedia:
    fare_media_id: str
    name: str
    media_type: FareMediaType


@dataclass(frozen=True, slots=True)
class RiderCategory:
    rider_category_id: str
    name: str
    is_default: bool


@dataclass(frozen=True, slots=True)
class FareProduct:
    """One row of ``fare_products``; ``amount_fen`` is exact integer fen (may be negative only
    for a product used solely as a transfer product, as GTFS allows for transfer discounts)."""

    fare_product_id: str
    name: str
    rider_category_id: str | None
    fare_media_id: str | None
    amount_fen: int


@dataclass(frozen=True, slots=True)
class ServiceCalendar:
    """``calendar`` row: weekdays are ``date.weekday()`` numbers (Monday 0)."""

    service_id: str
    weekdays: frozenset[int]
    start_date: dt.date
    end_date: dt.date


@dataclass(frozen=True, slots=True)
class Timeframe:
    """``timeframes`` row; seconds since local midnight, ``start_s <= t < end_s``."""

    timeframe_group_id: str
    start_s: int
    end_s: int
    service_id: str


@dataclass(frozen=True, slots=True)
class FareLegRule:
    line: int  # where it came from, for messages and as the tie-break of last resort
    leg_group_id: str | None
    network_id: str | None
    from_area_id: str | None
    to_area_id: str | None
    from_timeframe_group_id: str | None
    to_timeframe_group_id: str | None
    fare_product_id: str
    rule_priority: int


@dataclass(frozen=True, slots=True)
class FareTransferRule:
    line: int
    from_leg_group_id: str | None
    to_leg_group_id: str | None
    transfer_count: int | None  # -1 unlimited; None where GTFS forbids it (from != to)
    duration_limit_s: int | None
    duration_limit_type: DurationLimitType | None
    fare_transfer_type: FareTransferType
    fare_product_id: str | None  # None: the transfer itself costs nothing

    @property
    def pair(self) -> tuple[str | None, str | None]:
        return (self.from_leg_group_id, self.to_leg_group_id)


@dataclass(frozen=True, eq=False)
class Tariff:
    """Everything the engine needs, validated by the loader; never build one by hand.

    Compared and hashed by identity: a tariff is a loaded object, not a value.

    ``version`` names the tariff on the wire (``FareInfo.tariff_version``) and in a
    ``TariffBook``: the ``tariff_version`` setting, else ``sha256:`` and the first 12 hex digits
    of the hash of the tariff's files (``fares.loader.content_version``)."""

    source: str
    version: str
    fare_media: Mapping[str, FareMedia]
    card_fare_media_id: str | None
    rider_categories: Mapping[str, RiderCategory]
    default_rider_category_id: str | None
    products: tuple[FareProduct, ...]
    # (fare_product_id, rider_category_id or None) -> fen, for a tap with the transit card:
    # the card's own media row wins over a media-less row; other media are not ours.
    card_prices: Mapping[tuple[str, str | None], int]
    networks: Mapping[str, str]
    route_networks: Mapping[str, str]
    areas: Mapping[str, str]
    stop_areas: Mapping[str, frozenset[str]]
    services: Mapping[str, ServiceCalendar]
    service_exceptions: Mapping[str, Mapping[dt.date, bool]]  # True added, False removed
    timeframes: Mapping[str, tuple[Timeframe, ...]]
    leg_rules: tuple[FareLegRule, ...]
    leg_rules_prioritised: bool  # the rule_priority column exists: empty fields mean "any"
    transfer_rules: tuple[FareTransferRule, ...]
    route_codes: Mapping[str, int]
    routes_by_code: Mapping[int, str]
    stop_codes: Mapping[str, int]
    stops_by_code: Mapping[int, str]
    daily_caps: Mapping[str, int]
    card_type_categories: Mapping[CardType, str]
    trip_duration_max_s: int
    acquirer_city: bytes | None

    # --- indexes derived by the loader ----------------------------------------------------
    listed_networks: frozenset[str]
    listed_from_areas: frozenset[str]
    listed_to_areas: frozenset[str]
    listed_transfer_from: frozenset[str]
    listed_transfer_to: frozenset[str]
    alight_area_sets: tuple[frozenset[str], ...]  # every distinct area set a known stop has

    def price_fen(self, fare_product_id: str, rider_category_id: str | None) -> int | None:
        """What the product costs this rider on the card, or None when it is not sold to them.

        A row for the rider's own category wins over a row with no category (which GTFS makes
        eligible for every category).
        """
        if rider_category_id is not None:
            own = self.card_prices.get((fare_product_id, rider_category_id))
            if own is not None:
                return own
        return self.card_prices.get((fare_product_id, None))

    def network_of(self, route_id: str) -> str | None:
        return self.route_networks.get(route_id)

    def areas_of(self, stop_id: str | None) -> frozenset[str]:
        if stop_id is None:
            return frozenset()
        return self.stop_areas.get(stop_id, frozenset())

    def service_runs(self, service_id: str, day: dt.date) -> bool:
        exception = self.service_exceptions.get(service_id, {}).get(day)
        if exception is not None:
            return exception
        calendar = self.services.get(service_id)
        if calendar is None:
            return False
        return calendar.start_date <= day <= calendar.end_date and day.weekday() in calendar.weekdays

    def in_timeframe(self, timeframe_group_id: str, moment: dt.datetime) -> bool:
        """GTFS timeframe semantics on the local (Asia/Shanghai) date and time of day."""
        day = moment.date()
        second = moment.hour * 3600 + moment.minute * 60 + moment.second
        return any(
            frame.start_s <= second < frame.end_s and self.service_runs(frame.service_id, day)
            for frame in self.timeframes.get(timeframe_group_id, ())
        )
