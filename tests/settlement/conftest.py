"""Settlement database fixtures: the same tests on SQLite and on real PostgreSQL (as tests/clearing).

``db_engine`` is parametrized over ``sqlite`` and ``postgresql`` (marked ``postgres``; skips, or
fails under CI, without the server). PostgreSQL tests run in this session's own schema,
truncated between tests; SQLite tests get a copy of a database migrated once per session.
``world`` (``settleworld.World``) registers a small city and ingests signed batches.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "clearing"))  # tapfactory

from clearing import db
from clearing.models import Base


@pytest.fixture(scope="session")
def settle_pg_schema(pg_url: str) -> Iterator[tuple[str, str]]:
    schema = db.random_schema_name("t_set_")
    db.create_schema(pg_url, schema)
    try:
        db.upgrade(pg_url, schema=schema)
        yield pg_url, schema
    finally:
        db.drop_schema(pg_url, schema)


@pytest.fixture(scope="session")
def settle_sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("settlement-db") / "template.db"
    db.upgrade(f"sqlite:///{path}")
    engine = db.make_engine(f"sqlite:///{path}")
    with engine.connect() as conn:
        conn.execute(text("PRAGMA wal_checkpoint(TRUNCATE)"))
    engine.dispose()
    return path


@pytest.fixture
def sqlite_engine(settle_sqlite_template: Path, tmp_path: Path) -> Iterator[Engine]:
    path = tmp_path / "settlement.db"
    shutil.copyfile(settle_sqlite_template, path)
    engine = db.make_engine(f"sqlite:///{path}")
    yield engine
    engine.dispose()


@pytest.fixture
def pg_engine(settle_pg_schema: tuple[str, str]) -> Iterator[Engine]:
    from tapfactory import truncate

    url, schema = settle_pg_schema
    engine = db.make_engine(url, schema=schema)
    with engine.begin() as conn:
        truncate(conn, [t.name for t in Base.metadata.sorted_tables])
    yield engine
    engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_engine(request: pytest.FixtureRequest) -> Engine:
    engine: Engine = request.getfixturevalue("sqlite_engine" if request.param == "sqlite" else "pg_engine")
    return engine
