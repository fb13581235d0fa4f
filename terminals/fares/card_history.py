"""Legs from the card's transit records (SFI 0x1E), the only memory the fare engine has.

A card keeps ``TRANSIT_RECORDS`` (30) records, cyclic, newest first
(``epurse-public-sources.md`` section 2, ``card-profile.md``). Each validator writes one per tap:
03 at a tap-on, 04 at a tap-off, 06 for a single tap, with the 2-byte line and station codes of
``yikatong_codes``. Older legs are gone for good; ``docs/fares.md`` says what that means for
transfers and for the daily cap.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from cardos.profile import TRANSIT_RECORDS
from cardos.records import INDUSTRY_BUS, SHANGHAI_TZ, TRANSIT_ENTRY, TRANSIT_EXIT, TRANSIT_SINGLE, TransitRecord
from terminals.fares.engine import local_time
from terminals.fares.model import FareDecision, LegKind, LegRef, PastLeg, Tap
from terminals.fares.tariff import Tariff


def _moment(record: TransitRecord) -> dt.datetime:
    moment = record.moment
    if moment.tzinfo is None:  # cardos.records: naive card times are already local
        return moment.replace(tzinfo=SHANGHAI_TZ)
    return moment.astimezone(SHANGHAI_TZ)


def _ref(record: TransitRecord) -> LegRef:
    return LegRef(record.terminal_id.hex().upper(), record.terminal_seq, _moment(record))


def _open(tariff: Tariff, entry: TransitRecord) -> PastLeg:
    return PastLeg(
        kind=LegKind.OPEN,
        route_id=tariff.routes_by_code.get(entry.line),
        board_stop_id=tariff.stops_by_code.get(entry.station),
        board_time=_moment(entry),
        charged_fen=entry.amount_fen,
        ref=_ref(entry),
    )


def legs_from_transit_records(tariff: Tariff, records: Sequence[TransitRecord]) -> list[PastLeg]:
    """The card's legs, oldest first, from its transit records as read (record 1, the newest,
    first; never-written slots already left out with ``cardos.records.is_empty_record``).

    * 06 is a single-tap leg; 03 followed by a 04 on the same line within
      ``trip_duration_max_s`` is a closed leg; a 03 with no such 04 is an open leg.
    * A 04 with no 03 before it (rolled out of the window) is dropped, unless something was
      debited at it: then it is kept, on no route, so that its amount counts for the cap.
    * Records of other types (08 update, 12 block) and records written by another city's
      acquirer (when the tariff names ``acquirer_city``) are not legs of this tariff.
    * A line or station code the tariff does not know gives ``route_id``/stop None.
    """
    chronological = sorted(reversed(records), key=_moment)  # stable: equal times keep card order
    legs: list[PastLeg] = []
    entry: TransitRecord | None = None
    for record in chronological:
        if tariff.acquirer_city is not None and record.acquirer_city != tariff.acquirer_city:
            continue
        if record.tx_type not in (TRANSIT_ENTRY, TRANSIT_EXIT, TRANSIT_SINGLE):
            continue
        if record.tx_type == TRANSIT_EXIT and entry is not None and entry.line == record.line:
            elapsed_s = (_moment(record) - _moment(entry)).total_seconds()
            if 0 <= elapsed_s <= tariff.trip_duration_max_s:
                legs.append(
                    PastLeg(
                        kind=LegKind.CLOSED,
                        route_id=tariff.routes_by_code.get(entry.line),
                        board_stop_id=tariff.stops_by_code.get(entry.station),
                        board_time=_moment(entry),
                        charged_fen=entry.amount_fen + record.amount_fen,
                        alight_stop_id=tariff.stops_by_code.get(record.station),
                        alight_time=_moment(record),
                        ref=_ref(entry),
                    )
                )
                entry = None
                continue
        if entry is not None:
            legs.append(_open(tariff, entry))
            entry = None
        if record.tx_type == TRANSIT_ENTRY:
            entry = record
        elif record.tx_type == TRANSIT_SINGLE:
            legs.append(
                PastLeg(
                    kind=LegKind.SINGLE,
                    route_id=tariff.routes_by_code.get(record.line),
                    board_stop_id=tariff.stops_by_code.get(record.station),
                    board_time=_moment(record),
                    charged_fen=record.amount_fen,
                    ref=_ref(record),
                )
            )
        elif record.amount_fen > 0:  # an exit whose entry is gone, but which debited something
            legs.append(
                PastLeg(
                    kind=LegKind.SINGLE,
                    route_id=None,
                    board_stop_id=tariff.stops_by_code.get(record.station),
                    board_time=_moment(record),
                    charged_fen=record.amount_fen,
                    ref=_ref(record),
                )
            )
    if entry is not None:
        legs.append(_open(tariff, entry))
    return legs


def transit_record_for(
    tariff: Tariff,
    tap: Tap,
    decision: FareDecision,
    *,
    terminal_id: bytes,
    terminal_seq: int,
    balance_after_fen: int,
    operator: int = 0,
    industry: int = INDUSTRY_BUS,
    acquirer_id: bytes = bytes(8),
) -> TransitRecord:
    """The 0x1E record a validator writes for a priced tap, so that the next validator's
    ``legs_from_transit_records`` reads back the same leg: the tap kind's transaction type,
    the card codes of route and stop, what was debited, and the tap's local time."""
    if decision.kind is not tap.kind:
        raise ValueError(f"decision is for a {decision.kind} tap, not {tap.kind}")
    return TransitRecord(
        tx_type=tap.kind.record_type,
        terminal_id=terminal_id,
        industry=industry,
        line=tariff.route_codes[tap.route_id],
        station=tariff.stop_codes[tap.stop_id],
        operator=operator,
        amount_fen=decision.amount_fen,
        balance_after_fen=balance_after_fen,
        moment=local_time(tap.time),
        acquirer_city=tariff.acquirer_city if tariff.acquirer_city is not None else bytes(2),
        acquirer_id=acquirer_id,
        terminal_seq=terminal_seq,
    )


def remember(records: Sequence[TransitRecord], record: TransitRecord) -> tuple[TransitRecord, ...]:
    """The card's cyclic 0x1E file after appending ``record``: newest first, the oldest beyond
    ``TRANSIT_RECORDS`` overwritten (what a simulator needs to reproduce the window)."""
    return (record, *records)[:TRANSIT_RECORDS]
