"""Parties (dated assignments, audit), decisions in their own window, bank statements, reconciliation."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from settleworld import DAY0, day_at, make_world, payable
from sqlalchemy import Engine, select, text
from sqlalchemy.exc import DBAPIError
from tapfactory import make_keystore

from clearing.exceptions_queue import accept, list_items, write_off
from clearing.models import ExceptionItem
from settlement.bank_statements import camt053_for, import_entries, parse_camt053, parse_csv
from settlement.errors import SettlementError
from settlement.models import PostingRow, SettlementAuditRow, StatementRow, TotalRow
from settlement.parties import assign_route, assign_terminal
from settlement.reconcile import differences

DAY1, DAY2 = DAY0 + dt.timedelta(days=1), DAY0 + dt.timedelta(days=2)


def test_a_terminal_and_a_route_changing_hands_pay_the_right_party_each_day(db_engine: Engine, tmp_path: Path) -> None:
    world = make_world(db_engine, tmp_path / "out")
    with world.session() as s, s.begin():
        assign_terminal(s, world.terminals["a1"].terminal_id, "bus-b", valid_from=DAY1, today=DAY0, actor="clerk")
        assign_route(s, "R1", "shop-1", valid_from=DAY2, today=DAY0, actor="clerk")  # every tap of R1 from DAY2
    world.ingest("a1", day_at(DAY0, 23), [100])
    world.ingest("a1", day_at(DAY1, 6), [200])  # one batch, one day each side of the handover
    world.ingest("a1", day_at(DAY2, 6), [400])
    with world.session() as s:
        by_payee = {(p.payee_account_id, p.event_day): p.amount_fen for p in s.scalars(select(PostingRow))}
        assert sorted(by_payee.values()) == [100, 200, 400]
        assert payable(s, "bus-a") == 100 and payable(s, "bus-b") == 200 and payable(s, "shop-1") == 400
        actions = [r.action for r in s.scalars(select(SettlementAuditRow).order_by(SettlementAuditRow.id))]
        assert actions[-2:] == ["assign_terminal", "assign_route"]
    world.close(DAY0)
    with world.session() as s, s.begin():
        with pytest.raises(SettlementError, match="E_BAD_ASSIGNMENT"):  # DAY0 is paid
            assign_route(s, "R1", "bus-a", valid_from=DAY0, today=DAY0, actor="clerk")
        with pytest.raises(SettlementError, match="E_BAD_ASSIGNMENT"):  # the past
            assign_route(s, "R1", "bus-a", valid_from=DAY1, today=DAY2, actor="clerk")


def test_the_audit_log_refuses_updates_and_deletes(db_engine: Engine, tmp_path: Path) -> None:
    world = make_world(db_engine, tmp_path / "out")
    for statement in ("UPDATE settlement_audit SET actor = 'x'", "DELETE FROM settlement_audit"):
        with pytest.raises(DBAPIError, match="append-only"), world.engine.begin() as conn:
            conn.execute(text(statement))
    with world.session() as s:
        details = [r.detail for r in s.scalars(select(SettlementAuditRow))]
        assert any("…0202" in d for d in details) and not any("6222020000000000202" in d for d in details)


def test_decisions_fall_in_the_window_in_which_they_are_made(db_engine: Engine, tmp_path: Path) -> None:
    world = make_world(db_engine, tmp_path / "out")
    keystore = make_keystore(tmp_path)
    world.amount_fen_max = 20_000
    world.ingest("shop", day_at(DAY0, 9), [30_000, 500])  # the first is held: E_AMOUNT_LIMIT
    world.close(DAY0)
    with world.session() as s:
        item = list_items(s, code="E_AMOUNT_LIMIT")[0]
    with world.session() as s, s.begin():
        accept(s, keystore, item.id, now=day_at(DAY1, 10), note="limit raised")
    with world.session() as s:
        rows = s.scalars(select(TotalRow).where(TotalRow.window_day == DAY1)).all()
        assert [(r.count, r.gross_fen, r.late_count) for r in rows] == [(1, 30_000, 0)]  # the decision's day
    world.ingest("shop", day_at(DAY1, 9), [1000])
    with world.session() as s:
        posted = [i for i in list_items(s, state=None) if i.code == "E_AMOUNT_LIMIT"]
        assert posted and posted[0].state == "accepted"
    world.amount_fen_max = 500_000
    world.ingest("a1", day_at(DAY1, 9), [300, 300])
    world.now = day_at(DAY2, 12)
    with world.session() as s, s.begin():  # a suspect-free posted tap: withhold 100 fen from bus-a
        tap_item = ExceptionItem(kind="tap", code="S_BALANCE_DISCONTINUITY", message="test", state="open",
                                 created_at=world.now)  # fmt: skip
        tap_id = s.execute(text("SELECT id FROM taps WHERE amount_fen = 300 ORDER BY id LIMIT 1")).scalar_one()
        tap_item.tap_id = tap_id
        s.add(tap_item)
        s.flush()
        write_off(s, tap_item.id, now=day_at(DAY1, 23), note="withheld", amount_fen=100)
    world.close(DAY1)
    with world.session() as s:
        lines = {r.payee_id: r for r in s.scalars(select(StatementRow).where(StatementRow.window_day == DAY1))}
        assert lines["shop-1"].gross_fen == 31_000 and lines["bus-a"].refunds_fen == 100
        assert lines["bus-a"].payout_fen == 500
        assert differences(s, DAY1, tmp_path / "out") == []


def test_a_bank_statement_clears_payouts_and_returns_become_exception_items(db_engine: Engine, tmp_path: Path) -> None:
    world = make_world(db_engine, tmp_path / "out")
    world.ingest("a1", day_at(DAY0), [200, 300])
    world.ingest("shop", day_at(DAY0), [10_000])
    world.close(DAY0)
    with world.session() as s:
        paid = {r.payee_id: (r.end_to_end_id, r.payout_fen) for r in s.scalars(select(StatementRow))}
    e2e_bus, fen_bus = paid["bus-a"]
    e2e_shop, fen_shop = paid["shop-1"]
    assert e2e_bus and e2e_shop
    camt = camt053_for([(e2e_bus, fen_bus, "DBIT"), (e2e_shop, fen_shop, "DBIT"), (e2e_shop, fen_shop, "CRDT"),
                        ("NOT-OURS-1", 500, "DBIT")], statement_id="S1", booked_on=DAY1)  # fmt: skip
    entries = parse_camt053(camt)
    assert [e.status for e in entries] == ["cleared", "cleared", "returned", "cleared"]
    for _ in range(2):  # importing the same statement twice adds nothing
        with world.session() as s, s.begin():
            import_entries(s, entries, statement_ref="S1", now=world.now, day=DAY0)
        with world.session() as s:
            codes = sorted(i.code for i in s.scalars(select(ExceptionItem).where(ExceptionItem.kind == "payout")))
            assert codes == ["E_PAYOUT_RETURNED", "E_STATEMENT_UNKNOWN_ENTRY"]
    with world.session() as s:
        found = differences(s, DAY0, tmp_path / "out")
        assert [(d.what, d.subject) for d in found] == [("bank", e2e_shop)]
    csv_statement = f"end_to_end_id,amount_fen,status\r\n{e2e_bus},{fen_bus + 1},booked\r\n".encode()
    with world.session() as s, s.begin():
        report = import_entries(s, parse_csv(csv_statement), statement_ref="S2.csv", now=world.now)
        assert report.unknown == 1  # the amount differs


def test_a_malformed_camt053_is_refused_with_its_path() -> None:
    bad = camt053_for([("YKT1", 100, "DBIT")], statement_id="S", booked_on=DAY0).replace(b"CNY", b"EUR")
    with pytest.raises(SettlementError, match=r"E_BAD_BANK_STATEMENT.*Ntry\[1\]/Amt"):
        parse_camt053(bad)
    with pytest.raises(SettlementError, match="E_BAD_BANK_STATEMENT"):
        parse_camt053(b"<!DOCTYPE x [<!ENTITY a 'b'>]><x>&a;</x>")


def test_reconcile_names_a_changed_file_and_a_stray_payable_move(db_engine: Engine, tmp_path: Path) -> None:
    world = make_world(db_engine, tmp_path / "out")
    world.ingest("a1", day_at(DAY0), [200])
    world.close(DAY0)
    path = tmp_path / "out" / DAY0.isoformat() / f"payouts-{DAY0}.csv"
    path.write_bytes(path.read_bytes().replace(b",200,", b",900,"))
    from clearing.ledger import TransferSpec, post_transfers
    from clearing.models import Operator, TransferCode

    with world.session() as s, s.begin():
        account = s.scalar(select(Operator.payable_account_id).where(Operator.operator_id == "bus-b"))
        from clearing import accounts

        post_transfers(s, [TransferSpec.single("stray:1", accounts.issuer_float(s, "01007120ffffffff"), account, 50,
                                               TransferCode.PURCHASE)])  # fmt: skip
    with world.session() as s:
        found = {(d.what, d.cause.split(" ")[1]) for d in differences(s, DAY0, tmp_path / "out")}
    assert ("file", "file") in found and ("payable", "payable") in found
