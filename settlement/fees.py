"""Merchant fees: a schedule per category, an override per merchant, exact integer fen.

A schedule is basis points on the window's net sales (gross − refunds), a minimum and an
optional cap in fen, and a rounding rule (``docs/settlement.md``, "Fees"). The fee is
computed once per payee and window from the exact rational ``base × bps / 10 000``: there
are no floats anywhere, and rounding happens exactly once, so a merchant can redo the
statement with pencil and paper.

Rules, in order:
1. ``base = gross − refunds``; a base ≤ 0 pays no fee (a quiet day, or a day of refunds,
   owes no minimum).
2. ``raw = round(base × bps / 10 000)`` with the schedule's rounding (default half up).
3. ``fee = min(cap, max(minimum, raw))``, and never more than ``base``: the fee can take all
   of a day's sales but never makes a payee owe money for selling.

So ``minimum ≤ fee ≤ cap`` whenever ``base ≥ minimum``; the fee never decreases as the base
grows (every step is monotone); ``fee + net == gross − refunds`` exactly (``assess``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from settlement.errors import SettlementCode, SettlementError

BPS_DENOMINATOR: Final = 10_000
# TIGER_STYLE "put a limit on everything": 10^15 fen (10 trillion yuan) is far above any
# payee-day and far below BIGINT (9.2 × 10^18), so base × bps never leaves exact integers
# the database can hold, and a runaway total is refused instead of paid.
AMOUNT_FEN_MAX: Final = 10**15
CATEGORY_LEN_MAX: Final = 32


class Rounding(StrEnum):
    """How the exact fee ``base × bps / 10 000`` becomes whole fen."""

    HALF_UP = "half_up"  # 四舍五入: what merchants and bank statements do by hand (the default)
    HALF_EVEN = "half_even"  # banker's rounding (GB/T 8170 四舍六入五成双), for contracts that say so
    DOWN = "down"  # truncation, in the merchant's favour, for promotional schedules


def round_ratio(numerator: int, denominator: int, rounding: Rounding) -> int:
    """``numerator / denominator`` rounded to an integer, exactly (both ≥ 0, denominator > 0)."""
    assert numerator >= 0 and denominator > 0
    quotient, remainder = divmod(numerator, denominator)
    if rounding is Rounding.DOWN or remainder == 0:
        return quotient
    twice = 2 * remainder
    if twice > denominator:
        return quotient + 1
    if twice < denominator:
        return quotient
    if rounding is Rounding.HALF_UP:
        return quotient + 1
    return quotient + (quotient & 1)  # HALF_EVEN: a tie goes to the even neighbour


@dataclass(frozen=True, slots=True)
class FeeSchedule:
    """Basis points, minimum and cap in fen, rounding; always valid once built."""

    bps: int
    min_fen: int = 0
    cap_fen: int | None = None  # None: no cap
    rounding: Rounding = Rounding.HALF_UP

    def __post_init__(self) -> None:
        if type(self.bps) is not int or not 0 <= self.bps <= BPS_DENOMINATOR:
            raise SettlementError(
                SettlementCode.E_BAD_FEE_SCHEDULE, f"basis points {self.bps!r} are not a whole number in 0..10000"
            )
        if type(self.min_fen) is not int or not 0 <= self.min_fen <= AMOUNT_FEN_MAX:
            raise SettlementError(
                SettlementCode.E_BAD_FEE_SCHEDULE, f"minimum {self.min_fen!r} is not a whole number of fen ≥ 0"
            )
        if self.cap_fen is not None and (
            type(self.cap_fen) is not int or not self.min_fen <= self.cap_fen <= AMOUNT_FEN_MAX
        ):
            raise SettlementError(
                SettlementCode.E_BAD_FEE_SCHEDULE,
                f"cap {self.cap_fen!r} is not a whole number of fen at or above the minimum {self.min_fen}",
            )
        if not isinstance(self.rounding, Rounding):
            raise SettlementError(SettlementCode.E_BAD_FEE_SCHEDULE, f"unknown rounding rule {self.rounding!r}")


@dataclass(frozen=True, slots=True)
class FeeBook:
    """The schedules per merchant category; a merchant's override replaces its category's.

    An override is a whole schedule, never a field-by-field patch: a negotiated contract
    states all its terms, and a partial override would silently pick up a later change of
    the category's cap or rounding.
    """

    categories: Mapping[str, FeeSchedule]

    def __post_init__(self) -> None:
        for category in self.categories:
            if not 0 < len(category) <= CATEGORY_LEN_MAX or not category.isascii():
                raise SettlementError(
                    SettlementCode.E_BAD_FEE_SCHEDULE, f"category {category!r} is not 1..32 ASCII characters"
                )

    def schedule_for(self, category: str, override: FeeSchedule | None = None) -> FeeSchedule:
        """The schedule that applies to a merchant of ``category`` with its ``override``, if any."""
        if override is not None:
            return override
        schedule = self.categories.get(category)
        if schedule is None:
            raise SettlementError(
                SettlementCode.E_UNKNOWN_FEE_CATEGORY, f"no fee schedule for category {category!r} and no override"
            )
        return schedule


def _check_amount(name: str, amount_fen: int) -> None:
    if type(amount_fen) is not int or not 0 <= amount_fen <= AMOUNT_FEN_MAX:
        raise SettlementError(
            SettlementCode.E_BAD_SETTLEMENT_AMOUNT,
            f"{name} {amount_fen!r} is not a whole number of fen in 0..{AMOUNT_FEN_MAX}",
        )


def fee(gross_fen: int, refunds_fen: int, schedule: FeeSchedule) -> int:
    """The fee in fen for a window's ``gross_fen`` sales and ``refunds_fen`` refunds (module rules 1–3)."""
    _check_amount("gross", gross_fen)
    _check_amount("refunds", refunds_fen)
    base_fen = gross_fen - refunds_fen
    if base_fen <= 0:
        return 0
    raw_fen = round_ratio(base_fen * schedule.bps, BPS_DENOMINATOR, schedule.rounding)
    fee_fen = max(schedule.min_fen, raw_fen)
    if schedule.cap_fen is not None:
        fee_fen = min(schedule.cap_fen, fee_fen)
    fee_fen = min(base_fen, fee_fen)
    assert 0 <= fee_fen <= base_fen
    return fee_fen


@dataclass(frozen=True, slots=True)
class FeeAssessment:
    """One payee's window in figures: what it sold, gave back, pays and is paid."""

    gross_fen: int
    refunds_fen: int
    fee_fen: int
    net_fen: int  # may be negative: refunds above sales are carried forward, never paid out

    def __post_init__(self) -> None:
        assert self.net_fen + self.fee_fen == self.gross_fen - self.refunds_fen, "fee + net must equal gross − refunds"


def assess(gross_fen: int, refunds_fen: int, schedule: FeeSchedule) -> FeeAssessment:
    """Gross, refunds, fee and net of one payee's window; ``fee + net == gross − refunds`` exactly."""
    fee_fen = fee(gross_fen, refunds_fen, schedule)
    return FeeAssessment(gross_fen, refunds_fen, fee_fen, gross_fen - refunds_fen - fee_fen)


__all__ = [
    "AMOUNT_FEN_MAX",
    "BPS_DENOMINATOR",
    "FeeAssessment",
    "FeeBook",
    "FeeSchedule",
    "Rounding",
    "assess",
    "fee",
    "round_ratio",
]
