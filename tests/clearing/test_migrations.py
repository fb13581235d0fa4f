"""The one Alembic migration builds exactly the models, on SQLite and PostgreSQL, and tears down cleanly."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, inspect, text

from clearing import db
from clearing.models import Base


def _diff(engine: Engine) -> list[Any]:
    def include(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
        return not (type_ == "table" and name in {"alembic_version", "taps_default"})

    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True, "include_object": include})
        return list(compare_metadata(ctx, Base.metadata))


def _tables(engine: Engine) -> set[str]:
    return set(inspect(engine).get_table_names())


def test_sqlite_upgrade_matches_models_and_downgrade_removes_everything(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    db.upgrade(url)
    engine = db.make_engine(url)
    try:
        assert db.current_revision(engine) == db.head_revision()
        assert _tables(engine) >= {t.name for t in Base.metadata.sorted_tables}
        assert _diff(engine) == []
        db.downgrade(url, "base")
        assert _tables(engine) == {"alembic_version"}
        assert db.current_revision(engine) is None
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_postgres_upgrade_partitions_taps_matches_models_and_downgrades(pg_url: str) -> None:
    with db.isolated_schema(pg_url, prefix="t_mig_") as schema:
        db.upgrade(pg_url, schema=schema)
        engine = db.make_engine(pg_url, schema=schema)
        try:
            assert _diff(engine) == []
            with engine.connect() as conn:
                kind = conn.execute(
                    text(
                        "SELECT c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                        "WHERE n.nspname = :s AND c.relname = 'taps'"
                    ),
                    {"s": schema},
                ).scalar_one()
                assert kind == "p"  # partitioned table
            made = db.create_tap_partitions(engine, dt.date(2026, 11, 24), 2)
            assert made == ["taps_20261124", "taps_20261125"]
            db.downgrade(pg_url, "base", schema=schema)
            assert _tables(engine) == {"alembic_version"}
        finally:
            engine.dispose()


def test_ensure_migrated_migrates_only_when_behind(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'e.db'}"
    engine = db.ensure_migrated(url)
    assert db.current_revision(engine) == db.head_revision()
    engine.dispose()
    again = db.ensure_migrated(url)  # at head: no-op
    assert db.current_revision(again) == db.head_revision()
    again.dispose()
