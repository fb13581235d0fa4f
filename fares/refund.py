"""Tap-off refunds, computed where the money is: what a terminal claims, clearing recomputes.

At a tap-off the validator debits nothing and reports ``refund_due_fen``, the part of the entry
charge owed back (``docs/fares.md``, "Tap-on / tap-off"). That claim is not under the TAC, so the
clearing centre computes the refund itself from the TAC-verified entry leg, the card's legs
before it (``legs_from_cleared_taps``) and the tariff version the terminal priced with
(``TariffBook``), with the same engine: ``tap_off_refund`` is ``price_tap`` at that tap-off.
``minimum_fare_fen`` bounds any claim: no leg on a route costs a rider less than it, so a refund
is at most ``entry charge - minimum`` (see ``tap_off_refund`` for the one exception, the cap).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from fares.engine import _field_matches, _group_matches, _resolve_category, local_time, price_tap
from fares.errors import E_FARE_NO_RULE, E_FARE_UNKNOWN_ROUTE, E_FARE_UNKNOWN_STOP, FareError
from fares.model import FareDecision, LegKind, LegRef, PastLeg, Tap, TapKind
from fares.tariff import FareLegRule, FareTransferType, Tariff


@dataclass(frozen=True, slots=True)
class EntryLeg:
    """The tap-on being closed, as cleared: route, boarding stop, time (aware) and what the purse
    was debited at it (the TAC-verified ``amount_fen``); ``ref`` names it as the card does."""

    route_id: str
    stop_id: str
    time: dt.datetime
    charged_fen: int
    ref: LegRef | None = None

    def __post_init__(self) -> None:
        if self.time.tzinfo is None or self.time.utcoffset() is None:
            raise ValueError(f"EntryLeg.time must be an aware datetime, got {self.time!r}")
        if self.charged_fen < 0:
            raise ValueError(f"charged_fen must be >= 0, got {self.charged_fen}")


@dataclass(frozen=True, slots=True)
class ExitTap:
    """The tap-off: route, alighting stop, time (aware)."""

    route_id: str
    stop_id: str
    time: dt.datetime

    def __post_init__(self) -> None:
        if self.time.tzinfo is None or self.time.utcoffset() is None:
            raise ValueError(f"ExitTap.time must be an aware datetime, got {self.time!r}")


class RefundReason(StrEnum):
    """Why the refund is what it is; the values are stable codes."""

    CLOSED = "closed"  # the exit closes the entry: refund = entry charge - final fare
    OTHER_ROUTE = "other_route"  # the exit is on another route: not this entry's tap-off
    BEFORE_ENTRY = "before_entry"  # the exit is before the entry: not its tap-off
    TOO_LATE = "too_late"  # more than trip_duration_max_s after the entry: the entry charge stands
    LATER_LEG = "later_leg"  # the card boarded again between entry and exit: the entry was no longer open


@dataclass(frozen=True, slots=True)
class TapOffRefund:
    """The refund owed at a tap-off, in fen.

    * ``refund_fen``: what the entry charge owes back (0 unless ``reason`` is ``CLOSED``);
    * ``fare_fen``: what the leg costs in the end, ``charged_fen - refund_fen``;
    * ``minimum_fare_fen``: ``minimum_fare_fen(tariff, category, entry route)``;
    * ``capped``: the daily cap lowered the final fare (only then can ``fare_fen`` be below
      ``minimum_fare_fen`` while ``charged_fen`` is above it);
    * ``decision``: the engine's tap-off decision (product, leg group, transfer), None unless closed.
    """

    refund_fen: int
    fare_fen: int
    charged_fen: int
    minimum_fare_fen: int
    capped: bool
    reason: RefundReason
    decision: FareDecision | None

    def __post_init__(self) -> None:
        if not 0 <= self.refund_fen <= self.charged_fen or self.fare_fen != self.charged_fen - self.refund_fen:
            raise ValueError("0 <= refund_fen <= charged_fen and fare_fen = charged_fen - refund_fen")
        if (self.reason is RefundReason.CLOSED) != (self.decision is not None):
            raise ValueError("a closed leg, and only a closed leg, has a decision")


def tap_off_refund(
    tariff: Tariff,
    *,
    rider_category_id: str | None,
    entry: EntryLeg,
    exit_tap: ExitTap,
    history: Sequence[PastLeg] = (),
) -> TapOffRefund:
    """The refund the engine computes at ``exit_tap`` for ``entry``: exactly ``price_tap``'s
    ``refund_due_fen`` for a tap-off at ``exit_tap`` whose card holds ``history`` (the legs
    before the entry, oldest first, e.g. from ``legs_from_cleared_taps``) and then the entry
    as an open leg. Legs in ``history`` boarding after the exit are ignored, as ``price_tap``
    ignores them.

    Where ``price_tap`` would refuse the tap-off (``E_FARE_NO_ENTRY``) the entry charge stands:
    refund 0, and ``reason`` says why. An exit before the entry is never its tap-off (where
    ``price_tap`` would look for an older open leg instead).

    Bounds: ``0 <= refund_fen <= charged_fen``, and ``refund_fen <= max(0, charged_fen -
    minimum_fare_fen)`` unless ``capped``: the cap can lower the final fare below the minimum
    only when ``history`` shows more paid that day than the card knew when it was charged at
    entry (clearing sees legs the card's 30 records forgot), and then the larger refund is right.

    Raises ``FareError`` for an unknown category, route or stop (entry's or exit's), and when no
    rule prices the leg for this rider (``E_FARE_NO_RULE``).
    """
    _resolve_category(tariff, rider_category_id)
    for route_id, stop_id in ((exit_tap.route_id, exit_tap.stop_id), (entry.route_id, entry.stop_id)):
        if route_id not in tariff.route_codes:
            raise FareError(E_FARE_UNKNOWN_ROUTE, f"route {route_id!r} has no card code in the tariff")
        if stop_id not in tariff.stop_codes:
            raise FareError(E_FARE_UNKNOWN_STOP, f"stop {stop_id!r} has no card code in the tariff")
    minimum = minimum_fare_fen(tariff, rider_category_id, entry.route_id)
    boarded, alighted = local_time(entry.time), local_time(exit_tap.time)
    reason = RefundReason.CLOSED
    if exit_tap.route_id != entry.route_id:
        reason = RefundReason.OTHER_ROUTE
    elif alighted < boarded:
        reason = RefundReason.BEFORE_ENTRY
    elif (alighted - boarded).total_seconds() > tariff.trip_duration_max_s:
        reason = RefundReason.TOO_LATE
    elif any(boarded < local_time(leg.board_time) <= alighted for leg in history):
        reason = RefundReason.LATER_LEG
    if reason is not RefundReason.CLOSED:
        return TapOffRefund(0, entry.charged_fen, entry.charged_fen, minimum, False, reason, None)
    open_leg = PastLeg(
        kind=LegKind.OPEN,
        route_id=entry.route_id,
        board_stop_id=entry.stop_id,
        board_time=entry.time,
        charged_fen=entry.charged_fen,
        ref=entry.ref,
    )
    decision = price_tap(
        tariff,
        rider_category_id=rider_category_id,
        tap=Tap(TapKind.TAP_OFF, exit_tap.route_id, exit_tap.stop_id, exit_tap.time),
        history=[*history, open_leg],
    )
    return TapOffRefund(
        refund_fen=decision.refund_due_fen,
        fare_fen=decision.fare_fen,
        charged_fen=entry.charged_fen,
        minimum_fare_fen=minimum,
        capped=decision.capped,
        reason=reason,
        decision=decision,
    )


def minimum_fare_fen(tariff: Tariff, rider_category_id: str | None, route_id: str) -> int:
    """The least a leg on ``route_id`` can cost a rider of ``rider_category_id`` (None: the
    default category), before the daily cap: over every leg rule that can match the route
    (any stops, any time) and is sold to the rider, the cheaper of its product and what a
    transfer into its leg group can make it cost. A lower bound, never above what the engine
    charges for such a leg with any history (a property test checks it); 0 when a transfer
    can make the leg free.

    Raises ``FareError``: unknown route or category, or no rule prices the route for the rider.
    """
    category = _resolve_category(tariff, rider_category_id)
    if route_id not in tariff.route_codes:
        raise FareError(E_FARE_UNKNOWN_ROUTE, f"route {route_id!r} has no card code in the tariff")
    network = tariff.network_of(route_id)
    networks = frozenset((network,)) if network is not None else frozenset()
    prioritised = tariff.leg_rules_prioritised
    area_sets = tariff.alight_area_sets  # the areas of every known stop, boarding or alighting
    lowest: int | None = None
    for rule in tariff.leg_rules:
        price = tariff.price_fen(rule.fare_product_id, category)
        if price is None:
            continue
        if not (
            _field_matches(rule.network_id, networks, tariff.listed_networks, prioritised)
            and any(_field_matches(rule.from_area_id, a, tariff.listed_from_areas, prioritised) for a in area_sets)
            and any(_field_matches(rule.to_area_id, a, tariff.listed_to_areas, prioritised) for a in area_sets)
        ):
            continue
        cost = min(price, _cheapest_transfer_into(tariff, category, rule, price))
        lowest = cost if lowest is None else min(lowest, cost)
    if lowest is None:
        raise FareError(E_FARE_NO_RULE, f"no fare_leg_rules row prices route {route_id!r} for {category!r}")
    return max(0, lowest)


def _cheapest_transfer_into(tariff: Tariff, category: str | None, rule: FareLegRule, price_fen: int) -> int:
    """The least any transfer rule into the rule's leg group can make the leg add (the engine's
    increments, from any earlier leg, ignoring counts and time limits); ``price_fen`` if none."""
    if rule.leg_group_id is None:
        return price_fen
    first_most = max(
        (p for leg in tariff.leg_rules if (p := tariff.price_fen(leg.fare_product_id, category)) is not None),
        default=0,
    )
    cheapest = price_fen
    for transfer in tariff.transfer_rules:
        if not _group_matches(transfer.to_leg_group_id, rule.leg_group_id, tariff.listed_transfer_to):
            continue
        transfer_fen = 0
        if transfer.fare_product_id is not None:
            sold = tariff.price_fen(transfer.fare_product_id, category)
            if sold is None:
                continue
            transfer_fen = sold
        if transfer.fare_transfer_type is FareTransferType.A_PLUS_AB:
            increment = transfer_fen
        elif transfer.fare_transfer_type is FareTransferType.A_PLUS_AB_PLUS_B:
            increment = transfer_fen + price_fen
        else:  # AB: the transfer product less the first leg's product (at most the dearest leg)
            increment = transfer_fen - max(0, first_most)
        cheapest = min(cheapest, max(0, increment))
    return cheapest
