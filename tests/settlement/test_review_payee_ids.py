"""Review (issue 11): a payee id with a trailing newline stops every close.

Clearing's operator rule is ``^[A-Za-z0-9][A-Za-z0-9 ._-]{0,63}$`` applied with ``re.match``, and
``$`` matches before a final newline: ``"shop-2\\n"`` is registered. The payout files refuse it
(``payouts.PAYEE_ID_RE``, whole string), so the first close that pays it fails, and every later
day waits for it (windows settle in day order).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from settleworld import ACCOUNT_SHOP, DAY0, day_at, make_world
from sqlalchemy import Engine
from sqlalchemy.orm import Session
from tapfactory import Terminal

from clearing import registry
from settlement.errors import SettlementError
from settlement.parties import add_payee, set_account


def test_a_payee_id_with_a_trailing_newline_is_refused(sqlite_engine: Engine) -> None:
    with Session(sqlite_engine) as session, pytest.raises(SettlementError, match="E_BAD_PAYEE"):
        add_payee(session, "shop-2\n", name="Tea", kind="merchant", category="transit", actor="test")


def test_an_operator_registered_by_clearing_with_a_trailing_newline_does_not_stop_the_close(
    sqlite_engine: Engine, tmp_path: Path
) -> None:
    world = make_world(sqlite_engine, tmp_path / "out")
    world.terminals["c1"] = Terminal("0000d0000001")
    with Session(sqlite_engine) as session, session.begin():
        try:
            registry.register_terminal(session, world.terminals["c1"].terminal_id, "bus-c\n")
        except Exception:  # noqa: BLE001 - the fix: clearing refuses the id
            return
        set_account(session, "bus-c\n", ACCOUNT_SHOP, actor="test")
    world.ingest("c1", day_at(DAY0), [100])
    world.close(DAY0)  # unfixed: E_BAD_PAYEE from the payout batch, and no later day can close
