"""Review (issue 11): a record accepted later pays the operator of the day it was ridden.

A record whose key was missing at ingest is not stored; accepted once the key arrives, it
becomes a tap with the *decision's* business day. The payee was looked up for that day, so a
terminal (or route) that changed hands in between paid the new operator for a ride the old one
ran ("an exception accepted later pays the payee of the tap's day", docs/settlement.md).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from settleworld import DAY0, day_at, make_world, payable
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session
from tapfactory import OWN_ISSUER, make_keystore

from clearing.exceptions_queue import accept
from clearing.ingest import TacKeys, make_ingestor, prepare
from clearing.models import ExceptionItem, Operator, Transfer
from settlement.parties import assign_terminal

DAY1, DAY2 = DAY0 + dt.timedelta(days=1), DAY0 + dt.timedelta(days=2)


def test_a_record_accepted_after_its_terminal_changed_hands_pays_the_days_operator(
    db_engine: Engine, tmp_path: Path
) -> None:
    world = make_world(db_engine, tmp_path / "out")
    keystore = make_keystore(tmp_path)
    terminal = world.terminals["a1"]
    with Session(db_engine) as s, s.begin():
        assign_terminal(s, terminal.terminal_id, "bus-b", valid_from=DAY1, today=DAY1, actor="test")
    terminal.tap(world.cards[0], 150, day_at(DAY0, 8))  # bus-a runs this terminal on DAY0
    no_keys = TacKeys(lambda issuer, asn, version: None, [OWN_ISSUER])  # the key is not held at ingest
    make_ingestor(db_engine, clock=lambda: day_at(DAY0, 10)).ingest(prepare(terminal.terminal_id, terminal.batch(),
                                                                            no_keys))  # fmt: skip
    with Session(db_engine) as s, s.begin():
        item = s.scalars(select(ExceptionItem).where(ExceptionItem.code == "E_KEY_UNAVAILABLE")).one()
        decided = accept(s, keystore, item.id, now=day_at(DAY2, 10), note="key imported")
        transfer = s.get(Transfer, decided.decision_transfer_id)
        assert transfer is not None
        bus_a = s.scalar(select(Operator.payable_account_id).where(Operator.operator_id == "bus-a"))
        assert transfer.credit_account_id == bus_a, "DAY0's operator is paid, not the terminal's owner on DAY2"
    with Session(db_engine) as s:
        assert payable(s, "bus-a") == 150 and payable(s, "bus-b") == 0
