"""What a terminal shows people: times, yuan, why a fare is what it is, and the tally of a run.

Pure functions, no I/O, so the console of ``yikatong terminal run`` and its tests agree.

* Times are always Asia/Shanghai with the offset written out (``08:15:02 +08:00``): the
  journal and the wire carry aware times, the console must not leave a reader guessing whether
  a time is UTC. The same shape as ``yikatong.commands.local_time.shanghai`` (date included).
* Money on the console is yuan with two decimals; inside it is integer fen (ARCHITECTURE.md).
  ``parse_yuan`` is the one reading of a cashier's typed amount: yuan, at most two decimals.
"""

from __future__ import annotations

import datetime as dt
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from cardos.profile import PURSE_MAX_FEN
from cardos.records import SHANGHAI_TZ

if TYPE_CHECKING:  # session imports this module for its messages
    from terminals.session import TapResult

_YUAN: Final = re.compile(r"[0-9]+(?:\.[0-9]{1,2})?")  # ASCII digits only: str.isdigit takes "١٢"


def _local(moment: dt.datetime) -> dt.datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"naive datetime {moment!r}: terminal times are aware")
    return moment.astimezone(SHANGHAI_TZ)


def shanghai_clock(moment: dt.datetime) -> str:
    """``08:15:02 +08:00``: a time of today on the console."""
    local = _local(moment)
    return f"{local:%H:%M:%S} {local.isoformat()[-6:]}"


def shanghai_stamp(moment: dt.datetime) -> str:
    """``2026-12-02 08:15:02 +08:00``: a time that may not be today."""
    local = _local(moment)
    return f"{local:%Y-%m-%d %H:%M:%S} {local.isoformat()[-6:]}"


def yuan(fen: int | None) -> str:
    """``12.50`` for 1250 fen; ``-`` for no amount."""
    if fen is None:
        return "-"
    sign = "-" if fen < 0 else ""
    return f"{sign}{abs(fen) // 100}.{abs(fen) % 100:02d}"


class AmountError(ValueError):
    """A typed amount that is not a sale: the message says what to type instead."""

    code: Final = "E_AMOUNT"

    def __init__(self, message: str) -> None:
        super().__init__(f"{self.code}: {message}")
        self.message = message


def parse_yuan(text: str, *, max_fen: int = PURSE_MAX_FEN) -> int:
    """A cashier's amount in yuan (``12``, ``12.5``, ``12.50``) as fen; ``AmountError`` otherwise.

    Yuan, not fen, because that is what a price tag says; at most two decimals because a fen
    is the smallest unit (``12.505`` is a typo, not a rounding question); positive and at most
    what a purse can hold (``card-profile.md``: 10,000 CNY).
    """
    entered = text.strip()
    if entered.startswith("-"):
        raise AmountError(f"{entered!r} is negative: a sale is a positive amount in yuan, e.g. 12.50")
    if _YUAN.fullmatch(entered) is None:
        if re.fullmatch(r"[0-9]+\.[0-9]{3,}", entered):
            raise AmountError(f"{entered!r} has more than two decimals: yuan and fen, e.g. 12.50")
        raise AmountError(f"{entered!r} is not an amount: type yuan with a point, e.g. 12.50")
    whole, _, decimals = entered.partition(".")
    fen = int(whole) * 100 + int((decimals + "00")[:2])
    if fen <= 0:
        raise AmountError("the amount must be more than 0.00")
    if fen > max_fen:
        raise AmountError(f"{yuan(fen)} is more than a purse can hold ({yuan(max_fen)})")
    return fen


# --- the tally of a run -------------------------------------------------------------------

TALLY_ORDER: Final = ("paid", "recovered", "repeated", "refused", "failed")


@dataclass(slots=True)
class Tally:
    """Counts of a run's taps by ``Outcome.tally`` and the money taken (fen)."""

    counts: Counter[str] = field(default_factory=Counter)
    paid_fen: int = 0

    def add(self, result: TapResult) -> None:
        kind = result.outcome.tally
        self.counts[kind] += 1
        if kind == "paid":
            self.paid_fen += result.amount_fen

    @property
    def taps(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        """``paid 3 (6.00 CNY), recovered 0, repeated 1, refused 1, failed 0``."""
        parts = [f"{kind} {self.counts[kind]}" for kind in TALLY_ORDER]
        parts[0] += f" ({yuan(self.paid_fen)} CNY)"
        return ", ".join(parts)


VERDICT_ORDER: Final = ("accepted", "suspect", "rejected", "forwarded")


def verdict_counts(verdicts: Counter[str]) -> str:
    """``accepted 11, suspect 0, rejected 1, forwarded 0``."""
    return ", ".join(f"{name} {verdicts[name]}" for name in VERDICT_ORDER)
