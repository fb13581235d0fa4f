"""Review (issue 11): a payout the bank statement books twice is a difference, not "already imported".

Importing matched entries by end-to-end id and status, once: a second booked debit of the same
payout on the same statement (the bank executed the instruction twice: the payer paid twice)
was counted as already known, and reconcile said the window agreed. It is now an exception item
(``E_STATEMENT_UNKNOWN_ENTRY``, once however often the file is imported), and reconcile of the
payout's day lists it — as it lists an entry for another amount than the payout's.
"""

from __future__ import annotations

from pathlib import Path

from settleworld import DAY0, day_at, make_world
from sqlalchemy import Engine, select

from clearing.models import ExceptionItem
from settlement.bank_statements import import_entries, parse_csv
from settlement.models import StatementRow
from settlement.reconcile import differences


def test_a_payout_booked_twice_on_one_statement_is_flagged_and_reconcile_lists_it(
    db_engine: Engine, tmp_path: Path
) -> None:
    world = make_world(db_engine, tmp_path / "out")
    world.ingest("a1", day_at(DAY0), [200, 300])
    world.ingest("shop", day_at(DAY0), [10_000])
    world.close(DAY0)
    with world.session() as s:
        paid = {r.payee_id: (r.end_to_end_id, r.payout_fen) for r in s.scalars(select(StatementRow)) if r.payout_fen}
    (bus, bus_fen), (shop, shop_fen) = paid["bus-a"], paid["shop-1"]
    rows = [(bus, bus_fen), (shop, shop_fen), (bus, bus_fen)]  # bus-a's payout left the payer's account twice
    data = ("end_to_end_id,amount_fen,status\r\n" + "".join(f"{e},{f},booked\r\n" for e, f in rows)).encode()
    for _ in range(2):  # a replay of the file adds nothing
        with world.session() as s, s.begin():
            report = import_entries(s, parse_csv(data), statement_ref="S1.csv", now=world.now, day=DAY0)
        with world.session() as s:
            items = list(s.scalars(select(ExceptionItem).where(ExceptionItem.kind == "payout")))
        assert [(i.code, (i.record or {}).get("end_to_end_id")) for i in items] == [("E_STATEMENT_UNKNOWN_ENTRY", bus)]
    assert report.unknown == 1
    with world.session() as s:
        found = differences(s, DAY0, world.out_dir)
    assert [(d.what, d.subject) for d in found] == [("bank", bus)]
    assert "twice" in found[0].cause
