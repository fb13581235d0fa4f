"""Engine rules: bound values stay out of errors; ``lock_for_update`` serialises SQLite like FOR UPDATE."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from clearing import db


def test_an_integrity_error_does_not_show_its_parameters(tmp_path: Path) -> None:
    engine = db.make_engine(f"sqlite:///{tmp_path / 'p.db'}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE people (mobile TEXT UNIQUE)"))
        conn.execute(text("INSERT INTO people VALUES (:m)"), {"m": "13912345678"})
    with pytest.raises(IntegrityError) as caught, engine.begin() as conn:
        conn.execute(text("INSERT INTO people VALUES (:m)"), {"m": "13912345678"})
    assert "13912345678" not in str(caught.value)
    assert "hidden" in str(caught.value)


def test_lock_for_update_takes_the_sqlite_write_lock_until_the_transaction_ends(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    engine = db.make_engine(f"sqlite:///{path}")
    db.create_all(engine)
    other = sqlite3.connect(path, timeout=0.05, isolation_level=None)
    with Session(engine) as session:
        db.lock_for_update(session)
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            other.execute("BEGIN IMMEDIATE")  # a second read-check-write waits its turn
        session.rollback()
    other.execute("BEGIN IMMEDIATE")
    other.execute("ROLLBACK")
