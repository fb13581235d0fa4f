"""Top-up limits: what one top-up may be, and what a card may come to hold.

The PBOC's prepaid-card rules cap a registered (实名) card at 5,000 CNY and an anonymous one
at 1,000 CNY. The cap is on what the card *will* hold, so the check counts the card's last
cleared (shadow) balance plus every load that may still land on it: clearing's pending and
authorized loads and the portal's top-ups that are being paid or are paid but not yet loaded
(the caller sums them once each; a top-up in ``load_pending`` *is* a clearing pending load).
Counting the open payments stops two browser tabs from each passing the check alone.

The shadow balance can be higher than the purse (taps not yet uploaded lower the purse
first), so the check errs on the side of refusing, never of overfilling. The card's own
purse maximum (``cardos.profile.PURSE_MAX_FEN``, 10,000 CNY) is above both caps; the card
would refuse a load beyond it with ``9501`` anyway.

Every limit is a setting (``TopupLimits``); amounts are integer fen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from portal.errors import Code, PortalError

REGISTERED_CARD_BALANCE_FEN_MAX: Final = 500_000  # 5,000 CNY
ANONYMOUS_CARD_BALANCE_FEN_MAX: Final = 100_000  # 1,000 CNY
TOPUP_FEN_MIN: Final = 100  # 1 CNY: below it the payment fee is most of the payment
TOPUP_FEN_MAX: Final = 100_000  # 1,000 CNY per top-up


@dataclass(frozen=True, slots=True)
class TopupLimits:
    """The limits in force; the settings build one (``YIKATONG_TOPUP_*``, to be added)."""

    registered_card_balance_fen_max: int = REGISTERED_CARD_BALANCE_FEN_MAX
    anonymous_card_balance_fen_max: int = ANONYMOUS_CARD_BALANCE_FEN_MAX
    topup_fen_min: int = TOPUP_FEN_MIN
    topup_fen_max: int = TOPUP_FEN_MAX

    def __post_init__(self) -> None:
        for name in (
            "registered_card_balance_fen_max",
            "anonymous_card_balance_fen_max",
            "topup_fen_min",
            "topup_fen_max",
        ):
            value = getattr(self, name)
            if type(value) is not int or value <= 0:
                raise ValueError(f"{name} is a positive whole number of fen, got {value!r}")
        if self.topup_fen_min > self.topup_fen_max:
            raise ValueError("topup_fen_min exceeds topup_fen_max")

    def balance_fen_max(self, *, registered: bool) -> int:
        return self.registered_card_balance_fen_max if registered else self.anonymous_card_balance_fen_max


def headroom_fen(limits: TopupLimits, *, registered: bool, shadow_balance_fen: int, pending_fen: int) -> int:
    """The largest amount the card may still take (0 when full): what the form offers as its maximum."""
    assert type(shadow_balance_fen) is int and shadow_balance_fen >= 0, shadow_balance_fen
    assert type(pending_fen) is int and pending_fen >= 0, pending_fen
    room = limits.balance_fen_max(registered=registered) - shadow_balance_fen - pending_fen
    return max(0, min(room, limits.topup_fen_max))


def check_topup(
    amount_fen: object, limits: TopupLimits, *, registered: bool, shadow_balance_fen: int, pending_fen: int
) -> int:
    """Answer the amount if a top-up of it is allowed now, else raise ``PortalError`` saying which limit.

    ``amount_fen`` is typed ``object`` because it comes from a form: a float, a bool or a
    string is refused here with a code rather than trusted to the caller's parsing.
    """
    if type(amount_fen) is not int:
        raise PortalError(Code.E_TOPUP_AMOUNT_TYPE, "the amount is a whole number of fen")
    if amount_fen < limits.topup_fen_min:
        raise PortalError(Code.E_TOPUP_BELOW_MIN, f"the smallest top-up is {limits.topup_fen_min} fen")
    if amount_fen > limits.topup_fen_max:
        raise PortalError(Code.E_TOPUP_ABOVE_MAX, f"the largest top-up is {limits.topup_fen_max} fen")
    room = headroom_fen(limits, registered=registered, shadow_balance_fen=shadow_balance_fen, pending_fen=pending_fen)
    if amount_fen > room:
        cap = limits.balance_fen_max(registered=registered)
        raise PortalError(
            Code.E_CARD_BALANCE_LIMIT,
            f"the card may hold at most {cap} fen; with its balance and pending loads it can take {room} fen more",
        )
    return amount_fen


__all__ = ["TopupLimits", "check_topup", "headroom_fen"]
