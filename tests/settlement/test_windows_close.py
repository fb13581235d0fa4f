"""Windows, running totals and the close, on SQLite and PostgreSQL (docs/settlement.md, "Windows", "Close")."""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path

import pytest
from settleworld import DAY0, day_at, make_world, payable
from sqlalchemy import Engine, func, select

from clearing.ledger import trial_balance
from clearing.models import Transfer
from settlement.errors import SettlementError
from settlement.models import PostingRow, StatementRow, TotalRow
from settlement.payouts import validate_pain001
from settlement.reconcile import differences

DAY1 = DAY0 + dt.timedelta(days=1)


def _digests(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def test_a_close_pays_net_of_fees_and_a_rerun_changes_nothing(db_engine: Engine, tmp_path: Path) -> None:
    world = make_world(db_engine, tmp_path / "out")
    world.ingest("a1", day_at(DAY0, 8), [200, 200, 150])
    world.ingest("shop", day_at(DAY0, 10), [1_234_550 // 10] * 10)  # 12 345.50 CNY of sales
    world.ingest("b1", day_at(DAY0, 11), [100])
    with world.session() as s:
        totals = {r.payee_account_id: (r.count, r.gross_fen) for r in s.scalars(select(TotalRow))}
        assert sorted(totals.values()) == [(1, 100), (3, 550), (10, 1_234_550)]
        assert s.scalar(select(func.count()).select_from(PostingRow)) == 3  # one row per batch and payee
    first = world.close(DAY0)
    assert first.newly_closed and first.payees == 3
    assert (first.gross_fen, first.fee_fen) == (1_235_200, 4691)  # 38 bps of 12 345.50 = 46.91 (half up)
    assert first.payout_fen == 550 + 1_234_550 - 4691 and first.carry_fen == 100  # bus-b has no account
    directory = tmp_path / "out" / DAY0.isoformat()
    validate_pain001((directory / f"pain001-{DAY0}.xml").read_bytes())
    before = _digests(directory)
    with world.session() as s:
        transfers = s.scalar(select(func.count()).select_from(Transfer))
        held = s.scalars(select(StatementRow.held_reason).where(StatementRow.payee_id == "bus-b")).one()
        assert held == "no payout account"
        assert payable(s, "shop-1") == 0 and payable(s, "bus-a") == 0 and payable(s, "bus-b") == 100
        trial_balance(s)
    again = world.close(DAY0)
    assert not again.newly_closed and again.files_written == []
    assert _digests(directory) == before
    with world.session() as s:
        assert s.scalar(select(func.count()).select_from(Transfer)) == transfers
        assert differences(s, DAY0, tmp_path / "out") == []
    (directory / f"payouts-{DAY0}.csv").unlink()
    world.close(DAY0)  # a lost file is written again, the same bytes
    assert _digests(directory) == before


def test_a_late_record_falls_in_the_next_open_window_and_is_listed(db_engine: Engine, tmp_path: Path) -> None:
    world = make_world(db_engine, tmp_path / "out")
    world.ingest("a1", day_at(DAY0), [200])
    world.close(DAY0)
    world.ingest("a1", day_at(DAY0, 20), [300])  # tapped on DAY0, uploaded after its close
    world.ingest("a1", day_at(DAY1), [100])
    with world.session() as s:
        rows = s.scalars(select(TotalRow).where(TotalRow.window_day == DAY1)).all()
        assert [(r.count, r.gross_fen, r.late_count, r.late_fen) for r in rows] == [(2, 400, 1, 300)]
        assert s.scalar(select(func.count()).select_from(TotalRow).where(TotalRow.window_day == DAY0)) == 1
    result = world.close(DAY1)
    assert result.gross_fen == 400
    late = (tmp_path / "out" / DAY1.isoformat() / f"late-{DAY1}.csv").read_text()
    assert f"{DAY0.isoformat()},1,300" in late.replace("\r\n", "\n")


def test_windows_close_in_day_order_and_only_after_their_day(db_engine: Engine, tmp_path: Path) -> None:
    world = make_world(db_engine, tmp_path / "out")
    world.ingest("a1", day_at(DAY0), [200])
    world.ingest("a1", day_at(DAY1), [200])
    with pytest.raises(SettlementError, match="E_WINDOW_ORDER"):
        world.close(DAY1)
    world.now = day_at(DAY0, 23)
    with pytest.raises(SettlementError, match="E_WINDOW_NOT_OVER"):
        world.close(DAY0)
    assert world.close(DAY0, early=True).gross_fen == 200
    world.now = day_at(DAY1 + dt.timedelta(days=3))
    with pytest.raises(SettlementError, match="E_WINDOW_ORDER"):
        world.close(DAY1 + dt.timedelta(days=2))  # DAY1 has transfers
    assert world.close(DAY1).gross_fen == 200
    assert world.close(DAY1 + dt.timedelta(days=2)).payees == 0  # seals the empty day before it with it
    with pytest.raises(SettlementError, match="E_WINDOW_SEALED_EMPTY"):
        world.close(DAY1 + dt.timedelta(days=1))
