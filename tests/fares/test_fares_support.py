"""Helpers shared by the fare tests (this module holds no tests).

* ``synthetic(...)``: a small tariff from CSV snippets over a fixed base of routes and stops;
  ``ARRIVAL_SENSITIVE`` is one.
* ``Rider``: a card that goes through validators: every tap is priced from the legs decoded
  from the card's transit records, and the record the validator writes goes back on the card
  through its 48-byte encoding, in the 30-record cyclic window (``remember``).
"""

from __future__ import annotations

import datetime as dt
import textwrap
from dataclasses import dataclass, field

from cardos.records import SHANGHAI_TZ, TransitRecord
from fares import (
    FareDecision,
    Tap,
    TapKind,
    Tariff,
    legs_from_transit_records,
    parse_tariff,
    price_tap,
    remember,
    transit_record_for,
)

MONDAY = dt.date(2026, 3, 2)
SATURDAY = dt.date(2026, 3, 7)
TERMINAL_ID = bytes.fromhex("360486600001")

SYNTHETIC_BASE = {
    "yikatong_codes.csv": """kind,gtfs_id,code
route,rA,1
route,rA2,2
route,rB,3
route,rB2,4
route,rN,5
route,rX,6
route,rL,7
stop,s1,1
stop,s2,2
stop,inner,3
stop,outer,4
""",
    "networks.csv": "network_id\nA\nB\nexpress\nlocal\n",
    "route_networks.csv": "network_id,route_id\nA,rA\nA,rA2\nB,rB\nB,rB2\nexpress,rX\nlocal,rL\n",
    "fare_products.csv": "fare_product_id,amount,currency\nA,1.00,CNY\nB,2.00,CNY\nT1,0.50,CNY\n",
}


def at(clock: str, day: dt.date = MONDAY) -> dt.datetime:
    """``"HH:MM"`` or ``"HH:MM:SS"`` on ``day`` in Asia/Shanghai."""
    parts = [int(part) for part in clock.split(":")] + [0]
    return dt.datetime.combine(day, dt.time(parts[0], parts[1], parts[2]), tzinfo=SHANGHAI_TZ)


def synthetic(**tables: str) -> Tariff:
    """The base files plus ``name=csv_text`` tables (``fare_leg_rules=...``); text is dedented."""
    files = dict(SYNTHETIC_BASE)
    for name, text in tables.items():
        files[f"{name}.csv"] = textwrap.dedent(text).lstrip()
    return parse_tariff(files, source="synthetic")


# Where the exit changes the fare in every way: zones, a peak timeframe on arrival, a transfer
# limited arrival to arrival, a daily cap (the tap-on maximum and refund property tests).
ARRIVAL_SENSITIVE = synthetic(
    areas="area_id\nz1\nz2\n",
    stop_areas="area_id,stop_id\nz1,s1\nz2,s2\nz1,inner\nz2,inner\n",
    calendar="service_id,monday,tuesday,wednesday,thursday,friday,saturday,sunday,start_date,end_date\n"
    "weekdays,1,1,1,1,1,0,0,20250101,20301231\n",
    timeframes="timeframe_group_id,start_time,end_time,service_id\npeak,07:00:00,09:00:00,weekdays\n",
    fare_products="fare_product_id,amount,currency\nA,1.00,CNY\nB,2.00,CNY\nP,3.00,CNY\nT1,0.50,CNY\n",
    fare_leg_rules="leg_group_id,network_id,from_area_id,to_area_id,to_timeframe_group_id,fare_product_id,rule_priority\n"
    "g,,z1,z1,,A,0\ng,,z2,z2,,A,0\ng,,z1,z2,,B,0\ng,,z2,z1,,B,0\ng,,,,peak,P,1\ng,,,,,A,0\n",
    fare_transfer_rules="from_leg_group_id,to_leg_group_id,transfer_count,duration_limit,duration_limit_type,"
    "fare_transfer_type,fare_product_id\ng,g,2,1200,3,0,T1\n",
    rider_categories="rider_category_id,rider_category_name,is_default_fare_category\nadult,Adult,1\n",
    yikatong_caps="rider_category_id,amount,currency\nadult,6.00,CNY\n",
)


@dataclass(frozen=True)
class Leg:
    """One ride: a single tap at ``board``, or tap-on at ``board`` and tap-off at ``alight``."""

    route: str
    board: str
    alight: str | None = None
    from_stop: str = "s1"
    to_stop: str = "s2"
    day: dt.date = MONDAY


@dataclass
class Rider:
    tariff: Tariff
    category: str | None = None
    records: tuple[TransitRecord, ...] = ()
    balance_fen: int = 1_000_000
    terminal_seq: int = 0
    decisions: list[FareDecision] = field(default_factory=list)

    def tap(self, kind: TapKind, route: str, stop: str, when: dt.datetime) -> FareDecision:
        tap = Tap(kind, route, stop, when)
        history = legs_from_transit_records(self.tariff, self.records)
        decision = price_tap(self.tariff, rider_category_id=self.category, tap=tap, history=history)
        self.terminal_seq += 1
        self.balance_fen -= decision.amount_fen
        record = transit_record_for(
            self.tariff,
            tap,
            decision,
            terminal_id=TERMINAL_ID,
            terminal_seq=self.terminal_seq,
            balance_after_fen=self.balance_fen,
        )
        self.records = remember(self.records, TransitRecord.decode(record.encode()))
        self.decisions.append(decision)
        return decision

    def ride(self, leg: Leg) -> int:
        """The leg's net fare: the single-tap debit, or the tap-on debit less the refund due."""
        if leg.alight is None:
            return self.tap(TapKind.SINGLE, leg.route, leg.from_stop, at(leg.board, leg.day)).fare_fen
        on = self.tap(TapKind.TAP_ON, leg.route, leg.from_stop, at(leg.board, leg.day))
        off = self.tap(TapKind.TAP_OFF, leg.route, leg.to_stop, at(leg.alight, leg.day))
        assert 0 <= off.refund_due_fen <= on.amount_fen
        assert off.fare_fen == on.amount_fen - off.refund_due_fen
        return off.fare_fen


def fares(tariff: Tariff, legs: tuple[Leg, ...] | list[Leg], category: str | None = None) -> list[int]:
    rider = Rider(tariff, category)
    return [rider.ride(leg) for leg in legs]
