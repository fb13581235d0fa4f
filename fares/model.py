"""What goes into the fare engine and what comes out: taps, past legs from the card, decisions.

Plain frozen dataclasses that check their own invariants, so a wrong value is refused where it
is made, not noticed later in clearing (STYLE.md, "assert the positive and the negative space").
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from enum import StrEnum

from cardos.records import TRANSIT_ENTRY, TRANSIT_EXIT, TRANSIT_SINGLE


class TapKind(StrEnum):
    """How the rider validated: one tap per ride, or a tap on boarding and another on alighting."""

    SINGLE = "single"
    TAP_ON = "tap_on"
    TAP_OFF = "tap_off"

    @property
    def record_type(self) -> int:
        """The transaction type the validator writes in the 0x1E transit record."""
        return {TapKind.SINGLE: TRANSIT_SINGLE, TapKind.TAP_ON: TRANSIT_ENTRY, TapKind.TAP_OFF: TRANSIT_EXIT}[self]


def _require_aware(name: str, moment: dt.datetime) -> None:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{name} must be an aware datetime (Asia/Shanghai), got {moment!r}")


@dataclass(frozen=True, slots=True)
class Tap:
    """The tap being priced. ``time`` is the validator's clock, an aware datetime; the engine
    works in Asia/Shanghai local time at whole seconds, as the card records it."""

    kind: TapKind
    route_id: str
    stop_id: str
    time: dt.datetime

    def __post_init__(self) -> None:
        _require_aware("Tap.time", self.time)
        if not self.route_id or not self.stop_id:
            raise ValueError("a tap needs a route_id and a stop_id")


class LegKind(StrEnum):
    SINGLE = "single"  # one tap (record type 06)
    OPEN = "open"  # a tap-on (03) with no tap-off after it
    CLOSED = "closed"  # a tap-on (03) and its tap-off (04)


@dataclass(frozen=True, slots=True)
class LegRef:
    """Which earlier leg a transfer comes from, as the card knows it: the PSAM terminal number
    (12 hex digits) and terminal sequence (TTC) the validator wrote into the leg's transit
    record (``docs/decisions.md``: TTC in the record's RFU bytes), and the record's time.
    ``terminal_seq`` is what the wire contract's ``fare.transfer_of`` carries."""

    terminal_id: str
    terminal_seq: int
    time: dt.datetime

    def __str__(self) -> str:
        return f"{self.terminal_id}#{self.terminal_seq}@{self.time.isoformat()}"


@dataclass(frozen=True, slots=True)
class PastLeg:
    """A leg the card remembers, decoded from its transit records.

    ``route_id`` is None when the record's line code is not in this tariff (an old or foreign
    line): such a leg cannot take part in a transfer but its amount still counts for the cap.
    ``charged_fen`` is what the purse was debited for the leg (at the single tap or at the
    tap-on, plus anything debited at the tap-off).
    """

    kind: LegKind
    route_id: str | None
    board_stop_id: str | None
    board_time: dt.datetime
    charged_fen: int
    alight_stop_id: str | None = None
    alight_time: dt.datetime | None = None
    ref: LegRef | None = None

    def __post_init__(self) -> None:
        _require_aware("PastLeg.board_time", self.board_time)
        if self.charged_fen < 0:
            raise ValueError(f"charged_fen must be >= 0, got {self.charged_fen}")
        if (self.kind is LegKind.CLOSED) != (self.alight_time is not None):
            raise ValueError("a closed leg, and only a closed leg, has an alight_time")
        if self.alight_time is not None:
            _require_aware("PastLeg.alight_time", self.alight_time)
            if self.alight_time < self.board_time:
                raise ValueError("alight_time is before board_time")


@dataclass(frozen=True, slots=True)
class FareDecision:
    """What the validator does for this tap, and why.

    * ``amount_fen``: debit now (0 at a tap-off: see ``docs/fares.md``, "Refund at exit").
    * ``fare_fen``: what this leg costs the rider in the end (at a tap-on: the maximum charged;
      at a tap-off: the final fare, ``charged at entry - refund_due_fen``).
    * ``full_fare_fen``: the leg's own product at the default (adult) category's price, no
      transfer, no cap: the reference for concession and transfer discounts.
    * ``discount_fen``: ``max(0, full_fare_fen - fare_fen)``.
    * ``refund_due_fen``: at a tap-off, how much of the entry charge is owed back; the clearing
      centre pays it as a pending credit. Always 0 at other taps.
    * ``transfer_of``: the earlier leg this one is a transfer from, or None.
    * ``transfer_count``: transfers so far in this sub-journey, this leg included (0: no transfer).
    * ``day_total_fen``: what the rider has paid on this Asia/Shanghai day, this leg included.
    """

    kind: TapKind
    amount_fen: int
    fare_fen: int
    full_fare_fen: int
    discount_fen: int
    refund_due_fen: int
    product_id: str
    rider_category_id: str | None
    leg_group_id: str | None
    network_id: str | None
    transfer_of: LegRef | None
    transfer_count: int
    transfer_product_id: str | None
    capped: bool
    day_total_fen: int

    def __post_init__(self) -> None:
        for name in ("amount_fen", "fare_fen", "full_fare_fen", "discount_fen", "refund_due_fen", "day_total_fen"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an int >= 0, got {value!r}")
        if self.discount_fen != max(0, self.full_fare_fen - self.fare_fen):
            raise ValueError("discount_fen must be max(0, full_fare_fen - fare_fen)")
        if self.kind is TapKind.TAP_OFF and self.amount_fen != 0:
            raise ValueError("a tap-off debits nothing; what is owed back is refund_due_fen")
        if self.kind is not TapKind.TAP_OFF and (self.refund_due_fen != 0 or self.amount_fen != self.fare_fen):
            raise ValueError("only a tap-off has a refund; elsewhere the debit is the fare")
        if self.transfer_count < 0 or (self.transfer_of is not None and self.transfer_count < 1):
            raise ValueError("transfer_count is >= 0, and >= 1 for a transfer")
