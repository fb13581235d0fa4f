"""Whatever the order of taps, rounds, lost answers, a peer down, a peer restored from a backup and
an acquirer that stops between storing an answer and applying it, or an issuer that dies between
judging and answering, both sides end with equal and
opposite positions and no item is paid twice (SQLite; the judge is the wire's test stand-in)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select
from wire_support import PEER_ISSUER, make_pair, sqlite_engines, wire_sqlite_template_fixture  # noqa: F401 - the fixture

from clearing import accounts
from clearing.ledger import account_balance, trial_balance
from interop_xian.models import OutboxItem
from interop_xian.sender import Sender

OPS = st.sampled_from(
    ["tap", "round", "lose_ack", "down", "up", "restore_peer", "deliver_only", "issuer_crash", "wait"]
)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(OPS, min_size=3, max_size=14), amounts=st.lists(st.integers(1, 900), min_size=14, max_size=14))
def test_positions_stay_equal_and_opposite_whatever_the_faults(
    ops: list[str], amounts: list[int], wire_sqlite_template: Path
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        engines = list(sqlite_engines(wire_sqlite_template, home))
        backup = home / "xian-backup.db"
        try:
            p = make_pair(engines[0], engines[1], home / "keys", batch_items_max=3)
            for n, op in enumerate(ops):
                if op == "tap":
                    p.tap([amounts[n], amounts[-n - 1]])
                elif op == "round":
                    p.exchange()
                elif op == "lose_ack":
                    p.transport.lose_acks += 1
                elif op == "down":
                    p.transport.down = True
                elif op == "up":
                    p.transport.down = False
                elif op == "restore_peer":  # Xi'an loses what it received since its last backup
                    if backup.exists():
                        engines[1].dispose()
                        shutil.copyfile(backup, home / "xian.db")
                    else:
                        with engines[1].connect() as conn:
                            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
                        shutil.copyfile(home / "xian.db", backup)
                elif op == "issuer_crash":  # the issuer judges the next batch, then dies before answering
                    p.judge.crash_after_next += 1
                elif op == "deliver_only":  # the acquirer stops after storing answers, before applying them
                    node = p.xianyang.node
                    Sender(node.sessions, node.config, node.signing, node._client).deliver_due(now=p.now)  # type: ignore[arg-type]
                p.later(400)
            p.transport.down = False
            p.transport.lose_acks = 0
            p.judge.crash_after_next = 0
            for _ in range(3):  # drain
                p.exchange()
                p.later(400)
            with p.xianyang.session() as session:
                states = dict(session.execute(select(OutboxItem.state, func.count()).group_by(OutboxItem.state)).all())
                due_from = account_balance(session, accounts.due_from_peer(session, PEER_ISSUER)).debit_balance_fen
                paid = session.scalar(select(func.coalesce(func.sum(OutboxItem.amount_fen), 0))
                                      .where(OutboxItem.state == "accepted"))  # fmt: skip
                trial_balance(session)
            judged_fen = sum(v.amount_fen for v in p.judge.verdicts.values())
            assert set(states) <= {"accepted"}
            assert due_from == paid == judged_fen  # what the issuer owes is what the acquirer is owed
            assert due_from == p.xianyang.scalar("SELECT coalesce(sum(gross_fen), 0) FROM settlement_totals")
        finally:
            for engine in engines:
                engine.dispose()
