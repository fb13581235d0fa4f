"""Review (issue 11): a fee limited to the payable's balance stays said so when the payout is also held.

The close takes a fee no larger than the payable holds and writes ``FEE_LIMITED`` as the held
reason; reconciliation accepts a lower fee only with that reason. A payee suspended (or without
an account) had the reason overwritten by ``payee suspended``, and reconcile then reported a
wrong fee for a statement that was right.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from settleworld import DAY0, day_at, make_world
from sqlalchemy import Engine, select, text

from clearing.exceptions_queue import write_off
from clearing.models import ExceptionItem
from settlement.close import FEE_LIMITED
from settlement.models import StatementRow
from settlement.parties import set_status
from settlement.reconcile import differences


@pytest.mark.parametrize("hold", ["suspended", "no account"])
def test_a_fee_limited_statement_of_a_held_payee_reconciles(db_engine: Engine, tmp_path: Path, hold: str) -> None:
    world = make_world(db_engine, tmp_path / "out")
    with world.session() as s, s.begin():
        if hold == "suspended":
            set_status(s, "shop-1", "suspended", actor="test")
        else:
            s.execute(text("UPDATE settlement_payees SET account_name = NULL, account_number = NULL, "
                           "cnaps_code = NULL WHERE payee_id = 'shop-1'"))  # fmt: skip
    world.ingest("shop", day_at(DAY0, 9), [5_000])  # fee: the 1.00 CNY minimum
    with world.session() as s, s.begin():  # a later window's write-off draws the payable to 0.50
        item = ExceptionItem(kind="tap", code="S_BALANCE_DISCONTINUITY", message="test", state="open",
                             created_at=world.now)  # fmt: skip
        item.tap_id = s.execute(text("SELECT id FROM taps WHERE amount_fen = 5000")).scalar_one()
        s.add(item)
        s.flush()
        write_off(s, item.id, now=world.now, note="withheld", amount_fen=4_950)
    world.close(DAY0)
    with world.session() as s:
        line = s.scalars(select(StatementRow).where(StatementRow.payee_id == "shop-1")).one()
        assert (line.fee_fen, line.payout_fen, line.carry_out_fen) == (50, 0, 4_950)
        assert line.held_reason is not None and FEE_LIMITED in line.held_reason
        assert differences(s, DAY0, world.out_dir) == []
