"""Legs from the card's transit records (SFI 0x1E), the only memory the fare engine has.

A card keeps ``TRANSIT_RECORDS`` (30) records, cyclic, newest first
(``epurse-public-sources.md`` section 2, ``card-profile.md``). Each validator writes one per tap:
03 at a tap-on, 04 at a tap-off, 06 for a single tap, with the 2-byte line and station codes of
``yikatong_codes``. Older legs are gone for good; ``docs/fares.md`` says what that means for
transfers and for the daily cap.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from cardos.profile import TRANSIT_RECORDS
from cardos.records import INDUSTRY_BUS, SHANGHAI_TZ, TRANSIT_ENTRY, TRANSIT_EXIT, TRANSIT_SINGLE, TransitRecord
from fares.engine import local_time
from fares.model import FareDecision, LegKind, LegRef, PastLeg, Tap, TapKind
from fares.tariff import Tariff


def _moment(record: TransitRecord) -> dt.datetime:
    moment = record.moment
    if moment.tzinfo is None:  # cardos.records: naive card times are already local
        return moment.replace(tzinfo=SHANGHAI_TZ)
    return moment.astimezone(SHANGHAI_TZ)


def _ref(record: TransitRecord) -> LegRef:
    return LegRef(record.terminal_id.hex().upper(), record.terminal_seq, _moment(record))


@dataclass(frozen=True, slots=True)
class _Validation:
    """One tap as a leg source sees it, card record or cleared tap: what pairs a tap-on with its
    tap-off (``line``: the card's line code, or the route id), the tariff's ids (None when the
    tariff does not know them), the local time, what was debited, and the leg reference."""

    kind: TapKind
    line: object
    route_id: str | None
    stop_id: str | None
    time: dt.datetime
    amount_fen: int
    ref: LegRef


def _open(entry: _Validation) -> PastLeg:
    return PastLeg(
        kind=LegKind.OPEN,
        route_id=entry.route_id,
        board_stop_id=entry.stop_id,
        board_time=entry.time,
        charged_fen=entry.amount_fen,
        ref=entry.ref,
    )


def _pair_legs(tariff: Tariff, validations: Iterable[_Validation]) -> list[PastLeg]:
    """Legs from taps in time order: a tap-on and the next tap, if it is a tap-off on the same
    line within ``trip_duration_max_s``, are a closed leg; a tap-on without is an open leg; a
    lone tap-off counts only if it debited something (on no route). The one pairing rule of
    both ``legs_from_transit_records`` and ``legs_from_cleared_taps``."""
    legs: list[PastLeg] = []
    entry: _Validation | None = None
    for tap in validations:
        if tap.kind is TapKind.TAP_OFF and entry is not None and entry.line == tap.line:
            elapsed_s = (tap.time - entry.time).total_seconds()
            if 0 <= elapsed_s <= tariff.trip_duration_max_s:
                legs.append(
                    PastLeg(
                        kind=LegKind.CLOSED,
                        route_id=entry.route_id,
                        board_stop_id=entry.stop_id,
                        board_time=entry.time,
                        charged_fen=entry.amount_fen + tap.amount_fen,
                        alight_stop_id=tap.stop_id,
                        alight_time=tap.time,
                        ref=entry.ref,
                    )
                )
                entry = None
                continue
        if entry is not None:
            legs.append(_open(entry))
            entry = None
        if tap.kind is TapKind.TAP_ON:
            entry = tap
        elif tap.kind is TapKind.SINGLE:
            legs.append(
                PastLeg(
                    kind=LegKind.SINGLE,
                    route_id=tap.route_id,
                    board_stop_id=tap.stop_id,
                    board_time=tap.time,
                    charged_fen=tap.amount_fen,
                    ref=tap.ref,
                )
            )
        elif tap.amount_fen > 0:  # an exit whose entry is gone, but which debited something
            legs.append(
                PastLeg(
                    kind=LegKind.SINGLE,
                    route_id=None,
                    board_stop_id=tap.stop_id,
                    board_time=tap.time,
                    charged_fen=tap.amount_fen,
                    ref=tap.ref,
                )
            )
    if entry is not None:
        legs.append(_open(entry))
    return legs


_KINDS: Final = {TRANSIT_ENTRY: TapKind.TAP_ON, TRANSIT_EXIT: TapKind.TAP_OFF, TRANSIT_SINGLE: TapKind.SINGLE}


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
    validations = [
        _Validation(
            kind=kind,
            line=record.line,
            route_id=tariff.routes_by_code.get(record.line),
            stop_id=tariff.stops_by_code.get(record.station),
            time=_moment(record),
            amount_fen=record.amount_fen,
            ref=_ref(record),
        )
        for record in chronological
        if (kind := _KINDS.get(record.tx_type)) is not None
        and (tariff.acquirer_city is None or record.acquirer_city == tariff.acquirer_city)
    ]
    return _pair_legs(tariff, validations)


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
