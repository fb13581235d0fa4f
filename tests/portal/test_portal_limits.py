"""Top-up limits: per top-up bounds, and the card cap counted over balance plus pending loads."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from portal.errors import Code, PortalError
from portal.limits import TopupLimits, check_topup, headroom_fen

LIMITS = TopupLimits()


def code_of(amount: object, *, registered: bool = True, balance: int = 0, pending: int = 0) -> Code | None:
    try:
        check_topup(amount, LIMITS, registered=registered, shadow_balance_fen=balance, pending_fen=pending)
    except PortalError as exc:
        return exc.code
    return None


def test_defaults_are_the_pboc_caps() -> None:
    assert LIMITS.balance_fen_max(registered=True) == 500_000
    assert LIMITS.balance_fen_max(registered=False) == 100_000


@pytest.mark.parametrize("amount", [100.0, "100", True, None, 100.5])
def test_only_integer_fen_is_an_amount(amount: object) -> None:
    assert code_of(amount) is Code.E_TOPUP_AMOUNT_TYPE


def test_per_topup_bounds() -> None:
    assert code_of(99) is Code.E_TOPUP_BELOW_MIN
    assert code_of(0) is Code.E_TOPUP_BELOW_MIN
    assert code_of(-100) is Code.E_TOPUP_BELOW_MIN
    assert code_of(100) is None
    assert code_of(100_000) is None
    assert code_of(100_001) is Code.E_TOPUP_ABOVE_MAX


def test_the_cap_counts_pending_loads_as_well_as_the_balance() -> None:
    assert code_of(50_000, registered=False, balance=50_000) is None
    assert code_of(50_000, registered=False, balance=30_000, pending=20_001) is Code.E_CARD_BALANCE_LIMIT
    assert code_of(100, registered=True, balance=450_000, pending=49_900) is None
    assert code_of(101, registered=True, balance=450_000, pending=49_900) is Code.E_CARD_BALANCE_LIMIT


def test_a_full_card_has_no_headroom_and_an_overfull_one_none_either() -> None:
    assert headroom_fen(LIMITS, registered=False, shadow_balance_fen=100_000, pending_fen=0) == 0
    assert headroom_fen(LIMITS, registered=False, shadow_balance_fen=90_000, pending_fen=20_000) == 0


def test_limits_are_settings_and_are_checked() -> None:
    tight = TopupLimits(anonymous_card_balance_fen_max=20_000, topup_fen_min=1, topup_fen_max=10_000)
    check_topup(1, tight, registered=False, shadow_balance_fen=0, pending_fen=0)
    with pytest.raises(PortalError):
        check_topup(10_001, tight, registered=True, shadow_balance_fen=0, pending_fen=0)
    bad: list[dict[str, Any]] = [
        {"topup_fen_min": 0},
        {"topup_fen_max": 50, "topup_fen_min": 100},
        {"topup_fen_max": 1.5},
    ]
    for fields in bad:
        with pytest.raises(ValueError):
            TopupLimits(**fields)


@given(
    st.integers(-10, 700_000),
    st.booleans(),
    st.integers(0, 600_000),
    st.integers(0, 600_000),
)
def test_an_allowed_amount_never_takes_the_card_past_its_cap(
    amount: int, registered: bool, balance: int, pending: int
) -> None:
    allowed = code_of(amount, registered=registered, balance=balance, pending=pending) is None
    room = headroom_fen(LIMITS, registered=registered, shadow_balance_fen=balance, pending_fen=pending)
    if allowed:
        assert balance + pending + amount <= LIMITS.balance_fen_max(registered=registered)
        assert LIMITS.topup_fen_min <= amount <= LIMITS.topup_fen_max
    # The headroom is exactly the boundary the check draws (when it is reachable at all).
    assert allowed == (LIMITS.topup_fen_min <= amount <= room)
