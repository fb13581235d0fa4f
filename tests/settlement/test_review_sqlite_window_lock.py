"""Review (issue 11): on SQLite, reading the latest sealed day takes the write lock first.

pysqlite begins a transaction at the first write, so a read before it runs on its own: a seal
could commit between ``sealed_through`` and the caller's insert, and a decision's transfer leg
(a free transfer accepted from the exception queue writes no transfer before it) would join the
window just sealed — after its close read the legs, so in no window's sharing. Holding the one
write lock from the read on, as the seal does, keeps the order PostgreSQL's advisory lock gives.
"""

from __future__ import annotations

import sqlite3

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from clearing.ingest_totals import sealed_through


def test_sealed_through_holds_sqlites_write_lock_until_the_callers_commit(sqlite_engine: Engine) -> None:
    database = sqlite_engine.url.database
    assert database is not None
    with Session(sqlite_engine) as session:
        assert sealed_through(session) is None
        other = sqlite3.connect(database, timeout=0, isolation_level=None)
        try:
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                other.execute("BEGIN IMMEDIATE")  # a seal's first statement waits here
        finally:
            other.close()
        session.rollback()
    other = sqlite3.connect(database, timeout=0, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # released with the caller's transaction
        other.execute("ROLLBACK")
    finally:
        other.close()
