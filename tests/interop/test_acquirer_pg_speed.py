"""The acquirer's PostgreSQL fast paths (issue 12, benchmark) leave exactly the rows of the generic ones.

On PostgreSQL ``outbox.collect`` is one ``INSERT … SELECT``, ``build_batches`` marks a batch's
items with one array, and ``acquirer._apply_chunk`` marks the accepted items with one statement
each and posts through ``ledger.post_transfers_bulk``; rejected items keep the ORM path (their
hook opens a dispute). The same exchange run both ways must leave the same rows.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from pg_rows import table_rows
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session
from wire_support import (  # noqa: F401 - the fixtures
    KEYLESS_TAC,
    REJECT_TAC,
    Pair,
    _pg_engines,
    make_pair,
    wire_pg_schemas_fixture,
)

from clearing.ledger import post_transfers, trial_balance
from clearing.models import InteropForward
from interop_xian import acquirer, outbox
from interop_xian.items import ItemOutcome, ItemVerdict

pytestmark = pytest.mark.postgres

_CLOCK_COLUMNS = {"created_at"}  # the ledger's and the accounts' wall clock; the rest runs on the pair's clock
_TABLES = (
    "accounts", "transfers", "interop_outbox", "interop_forwards", "interop_bookings", "interop_disputes",
    "interop_alarms", "settlement_postings", "settlement_totals", "interop_batches_out",
)  # fmt: skip


def _rows(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    return table_rows(
        engine,
        _TABLES,
        skip=lambda table, c: c in _CLOCK_COLUMNS or (table == "interop_batches_out" and c.startswith("ack")),
    )


def _run(pair: Pair) -> dict[str, list[tuple[Any, ...]]]:
    """Accepted, accepted in a named window, rejected, not judged yet, and accepted for another amount."""
    pair.judge.window_day = dt.date(2026, 3, 3)
    pair.tap([200, 300, 150, 250])
    pair.tap([120], tac=REJECT_TAC)
    pair.tap([130], tac=KEYLESS_TAC)
    with Session(pair.xianyang.engine) as s:
        forwards = list(s.scalars(select(InteropForward).order_by(InteropForward.id)))
    other = forwards[1]
    item_id = outbox.item_id_of("xianyang", other.terminal_id, other.terminal_seq, other.record_digest)
    pair.judge.verdicts[item_id] = ItemVerdict(item_id, ItemOutcome.ACCEPTED, "OK", 299, "")
    first = pair.exchange()
    assert (first.collected, first.accepted, first.rejected) == (6, 3, 2)
    pair.tap([170, 180])  # a second round, after the first was applied
    second = pair.exchange()
    assert (second.collected, second.accepted) == (2, 2)
    with Session(pair.xianyang.engine) as s:
        trial_balance(s)
    return _rows(pair.xianyang.engine)


def test_the_acquirer_fast_paths_leave_exactly_the_rows_of_the_generic_ones(
    wire_pg_schemas: tuple[str, tuple[str, str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, schemas = wire_pg_schemas
    runs = []
    for n, fast in enumerate((True, False)):
        with monkeypatch.context() as m:
            if not fast:
                m.setattr(acquirer, "on_postgres", lambda _s: False)
                m.setattr(outbox, "on_postgres", lambda _s: False)
                m.setattr(acquirer, "post_transfers_bulk", post_transfers)
            engines = _pg_engines(url, schemas)
            try:
                runs.append(_run(make_pair(*engines, tmp_path / f"keys{n}")))
            finally:
                for engine in engines:
                    engine.dispose()
    fast_rows, generic_rows = runs
    for table in _TABLES:
        assert fast_rows[table] == generic_rows[table], table
    states = {row[0]: row for row in fast_rows["interop_outbox"]}
    assert len(states) == 8 and fast_rows["interop_disputes"] and fast_rows["interop_bookings"]
    assert {r[2] for r in fast_rows["interop_bookings"]} == {"2026-03-03"}  # the issuer's named window
