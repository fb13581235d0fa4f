"""Transfer discounts shared between the operators of a journey's legs, in integer fen.

When a rider transfers, the fare engine charges the later leg less (or nothing); the tap
credits whoever ran that leg, so without sharing the second operator alone pays for the
city's transfer discount. Settlement shares the discount ``D = Σ standalone − Σ charged``
between the legs in proportion to each leg's standalone fare (its fare as if it were not a
transfer), by the largest-remainder method (``docs/settlement.md``, "Transfer discounts"):

1. each leg's exact quota is ``D × fare_i / Σ fare``; it first gets the quota's floor;
2. the fen left over (fewer than the number of legs) go one each to the legs with the
   largest remainders ``D × fare_i mod Σ fare``; equal remainders go to the earlier leg.

So the shares sum to ``D`` exactly, each is within 1 fen below or above its quota, none is
negative and none exceeds its leg's standalone fare. Every leg then is entitled to
``standalone − share``; the settlement adjustment of a leg is that minus what its tap
already credited, and the adjustments of a journey sum to 0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from settlement.errors import SettlementCode, SettlementError
from settlement.fees import AMOUNT_FEN_MAX

LEGS_MAX: Final = 16  # a day's journey on a city network; more is a broken input, not a rider


def share_discount(discount_fen: int, fares_fen: Sequence[int]) -> tuple[int, ...]:
    """``discount_fen`` split over legs in proportion to ``fares_fen`` (largest remainder, ties earlier)."""
    code = SettlementCode.E_BAD_JOURNEY
    if not 0 < len(fares_fen) <= LEGS_MAX:
        raise SettlementError(code, f"a journey has 1..{LEGS_MAX} legs, not {len(fares_fen)}")
    if any(type(f) is not int or not 0 <= f <= AMOUNT_FEN_MAX for f in fares_fen):
        raise SettlementError(code, "every leg's standalone fare is a whole number of fen ≥ 0")
    total_fen = sum(fares_fen)
    if type(discount_fen) is not int or not 0 <= discount_fen <= total_fen:
        raise SettlementError(
            code, f"a discount of {discount_fen!r} fen is not within 0..{total_fen}, the legs' standalone fares"
        )
    if discount_fen == 0:
        return tuple(0 for _ in fares_fen)
    floors = [discount_fen * f // total_fen for f in fares_fen]
    remainders = [discount_fen * f % total_fen for f in fares_fen]
    left_fen = discount_fen - sum(floors)
    assert 0 <= left_fen < len(fares_fen)
    # Largest remainder first; among equal remainders the earlier leg (lower index) first.
    for index in sorted(range(len(fares_fen)), key=lambda i: (-remainders[i], i))[:left_fen]:
        floors[index] += 1
    shares = tuple(floors)
    assert sum(shares) == discount_fen
    assert all(0 <= s <= f for s, f in zip(shares, fares_fen, strict=True))
    return shares


@dataclass(frozen=True, slots=True)
class JourneyLeg:
    """One leg: who ran it, its standalone fare, and what its tap actually credited that operator."""

    operator_id: str
    standalone_fen: int
    charged_fen: int


@dataclass(frozen=True, slots=True)
class LegSettlement:
    operator_id: str
    share_fen: int  # this leg's part of the journey's transfer discount
    entitled_fen: int  # standalone − share: what the operator earns for the leg
    adjustment_fen: int  # entitled − charged: what settlement moves to (+) or from (−) the operator


def settle_journey(legs: Sequence[JourneyLeg]) -> tuple[LegSettlement, ...]:
    """Each leg's share, entitlement and adjustment; the adjustments sum to 0 exactly."""
    if any(type(leg.charged_fen) is not int or leg.charged_fen < 0 for leg in legs):
        raise SettlementError(SettlementCode.E_BAD_JOURNEY, "every leg's charged amount is a whole number of fen ≥ 0")
    standalone = [leg.standalone_fen for leg in legs]
    discount_fen = sum(standalone) - sum(leg.charged_fen for leg in legs)
    if discount_fen < 0:
        raise SettlementError(
            SettlementCode.E_BAD_JOURNEY,
            "the legs charged more than their standalone fares: there is no discount to share",
        )
    shares = share_discount(discount_fen, standalone)
    result = tuple(
        LegSettlement(leg.operator_id, share, leg.standalone_fen - share, leg.standalone_fen - share - leg.charged_fen)
        for leg, share in zip(legs, shares, strict=True)
    )
    assert sum(r.adjustment_fen for r in result) == 0
    return result


def journey_adjustments(legs: Sequence[JourneyLeg]) -> tuple[int, ...]:
    """Each leg's adjustment (``settle_journey``), or all 0 when the legs have no discount to share.

    A journey whose legs charged more than their standalone fares (a tap-on charged the most the
    leg could cost, refunded later at the exit), or that breaks the rule's limits, moves nothing:
    sharing never takes from a journey what its legs did not give.
    """
    try:
        return tuple(leg.adjustment_fen for leg in settle_journey(legs))
    except SettlementError:
        return tuple(0 for _ in legs)


def added_leg_adjustments(legs: Sequence[JourneyLeg]) -> tuple[int, ...]:
    """What the journey's last leg brings: ``adjustments(1..k) − adjustments(1..k−1)``, per leg.

    Settled leg by leg, in the windows the legs fall in, a journey telescopes to exactly its
    full-journey adjustments; a single leg brings nothing. The result sums to 0.
    """
    if len(legs) < 2:
        return tuple(0 for _ in legs)
    after = journey_adjustments(legs)
    before = (*journey_adjustments(legs[:-1]), 0)
    result = tuple(a - b for a, b in zip(after, before, strict=True))
    assert sum(result) == 0
    return result


def sharing_moves(wanted: Mapping[str, int], room: Mapping[str, int]) -> tuple[dict[str, int], dict[str, int]]:
    """What a close moves for each payee, and what stays owed: ``moved + owed == wanted``.

    ``wanted`` (summing to 0) is each payee's adjustments plus what it was owed before; ``room``
    is what its payable can still give after the fee. A payee giving (−) gives at most its room
    — a payable never goes below zero — and the payees receiving (+) are paid from what was
    given, in payee-id order, until it runs out; the rest is owed into the next close. Both
    ``moved`` and ``owed`` sum to 0.
    """
    assert sum(wanted.values()) == 0, "sharing only moves money between payables"
    moved: dict[str, int] = {}
    given = 0
    for payee in sorted(wanted):
        if wanted[payee] < 0:
            moved[payee] = -min(-wanted[payee], max(0, room.get(payee, 0)))
            given -= moved[payee]
    for payee in sorted(wanted):
        if wanted[payee] > 0:
            moved[payee] = min(wanted[payee], given)
            given -= moved[payee]
    assert given == 0, "what the receivers want is what the givers owe, and never less than what they gave"
    owed = {payee: fen - moved.get(payee, 0) for payee, fen in wanted.items()}
    return {p: f for p, f in moved.items() if f}, {p: f for p, f in owed.items() if f}


def pair_moves(moved: Mapping[str, int]) -> tuple[tuple[str, str, int], ...]:
    """``moved`` (summing to 0) as payable → payable transfers ``(from, to, fen)``.

    The givers and the receivers, each in payee-id order, are paired greedily: each transfer
    exhausts one side, so there are fewer transfers than payees, and the same moves always give
    the same transfers (their ids are derived from the pair).
    """
    assert sum(moved.values()) == 0
    givers = [(p, -f) for p, f in sorted(moved.items()) if f < 0]
    takers = [(p, f) for p, f in sorted(moved.items()) if f > 0]
    out: list[tuple[str, str, int]] = []
    g = t = 0
    give_left = givers[0][1] if givers else 0
    take_left = takers[0][1] if takers else 0
    while g < len(givers) and t < len(takers):
        fen = min(give_left, take_left)
        out.append((givers[g][0], takers[t][0], fen))
        give_left -= fen
        take_left -= fen
        if give_left == 0:
            g += 1
            give_left = givers[g][1] if g < len(givers) else 0
        if take_left == 0:
            t += 1
            take_left = takers[t][1] if t < len(takers) else 0
    assert g == len(givers) and t == len(takers)
    return tuple(out)


__all__ = [
    "LEGS_MAX",
    "JourneyLeg",
    "LegSettlement",
    "added_leg_adjustments",
    "journey_adjustments",
    "pair_moves",
    "settle_journey",
    "share_discount",
    "sharing_moves",
]
