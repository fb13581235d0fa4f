"""Legs from cleared taps: the card's history as the clearing centre knows it.

A terminal rebuilds a card's legs from the card's transit records (``legs_from_transit_records``);
the clearing centre has every tap the card made, TAC-verified, and rebuilds the same legs from
them with the same pairing rule, so that it can price a tap-off (``fares.refund``) as the
terminal did. Only the card's window of 30 records differs: clearing may see older legs.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from fares.card_history import _pair_legs, _Validation
from fares.engine import local_time
from fares.model import LegRef, PastLeg, TapKind
from fares.tariff import Tariff


@dataclass(frozen=True, slots=True)
class ClearedTap:
    """One transit tap of a card as cleared (the wire contract's ``TapRecord``):
    ``route_id``/``stop_id``, ``tx_time`` (aware), ``amount_fen`` (what the purse was debited,
    under the TAC), ``fare.tap_kind`` (None: a single tap; a string such as ``"tap_on"`` is
    accepted and becomes a ``TapKind``), and the tap's ``terminal_id`` (12 hex digits) and
    ``terminal_seq``, which name the leg as the card does (``LegRef``).

    Only transit taps of the tariff's own network belong here: not POS sales, not blocked
    (denylist) records, not taps another city acquired.
    """

    route_id: str | None
    stop_id: str | None
    time: dt.datetime
    amount_fen: int
    tap_kind: TapKind | None
    terminal_id: str
    terminal_seq: int

    def __post_init__(self) -> None:
        if self.time.tzinfo is None or self.time.utcoffset() is None:
            raise ValueError(f"ClearedTap.time must be an aware datetime, got {self.time!r}")
        if self.amount_fen < 0:
            raise ValueError(f"amount_fen must be >= 0, got {self.amount_fen}")
        if self.terminal_seq < 0:
            raise ValueError(f"terminal_seq must be >= 0, got {self.terminal_seq}")
        if self.tap_kind is not None and not isinstance(self.tap_kind, TapKind):
            object.__setattr__(self, "tap_kind", TapKind(self.tap_kind))  # ValueError for anything else


def legs_from_cleared_taps(tariff: Tariff, taps: Sequence[ClearedTap]) -> list[PastLeg]:
    """The card's legs, oldest first, from its cleared taps (sorted here by time; taps at the
    same second keep their order, so pass them in the card's order, e.g. by offline counter).

    The rule is ``legs_from_transit_records``'s: a single tap is a leg; a tap-on and the next
    tap, when it is a tap-off on the same route within ``trip_duration_max_s``, are a closed
    leg charged both amounts; a tap-on without is an open leg; a lone tap-off is dropped unless
    it debited something. A route or stop the tariff does not know becomes None, as an unknown
    card code does.
    """
    validations = [
        _Validation(
            kind=tap.tap_kind if tap.tap_kind is not None else TapKind.SINGLE,
            line=tap.route_id,
            route_id=tap.route_id if tap.route_id in tariff.route_codes else None,
            stop_id=tap.stop_id if tap.stop_id in tariff.stop_codes else None,
            time=when,
            amount_fen=tap.amount_fen,
            ref=LegRef(tap.terminal_id.upper(), tap.terminal_seq, when),
        )
        for tap, when in sorted(((tap, local_time(tap.time)) for tap in taps), key=lambda item: item[1])
    ]
    return _pair_legs(tariff, validations)
