"""Review (issue 11): a refund drawing a payable while the close computes does not fail the close.

The close reads what each payable can still be debited, computes the statements, then posts. A
write-off (or a tap-off refund's reservation) committed between the read and the post made the
payout exceed the payable: the ledger refused the batch (``E_DEBITS_EXCEED_CREDITS``) and the
close failed, where it retries a deadlock. It now settles again from the new balances.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from settleworld import DAY0, day_at, make_world
from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session

from clearing.exceptions_queue import write_off
from clearing.models import ExceptionItem
from settlement.models import StatementRow
from settlement.reconcile import differences


@pytest.mark.postgres
def test_a_write_off_committed_while_the_close_computes_is_settled_from_the_new_balance(
    pg_engine: Engine, tmp_path: Path
) -> None:
    world = make_world(pg_engine, tmp_path / "out")
    world.ingest("shop", day_at(DAY0, 9), [10_000])
    with Session(pg_engine) as s, s.begin():
        item = ExceptionItem(kind="tap", code="S_BALANCE_DISCONTINUITY", message="test", state="open",
                             created_at=world.now)  # fmt: skip
        item.tap_id = s.execute(text("SELECT id FROM taps WHERE amount_fen = 10000")).scalar_one()
        s.add(item)
        s.flush()
        item_id = item.id
    calls: list[str] = []

    def write_off_meanwhile(step: str, done: int, total: int) -> None:
        calls.append(step)
        if calls.count("settle") == 2:  # inside the settle: statements computed, nothing posted
            with Session(pg_engine) as s, s.begin():
                write_off(s, item_id, now=world.now, note="withheld", amount_fen=9_990)

    world.close(DAY0, progress=write_off_meanwhile)
    with Session(pg_engine) as s:
        line = s.scalars(select(StatementRow).where(StatementRow.payee_id == "shop-1")).one()
        assert (line.fee_fen, line.payout_fen, line.carry_out_fen) == (10, 0, 9_990)
        assert differences(s, DAY0, world.out_dir) == []
