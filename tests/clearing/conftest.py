"""Shared clearing database fixtures: the same tests on SQLite and on real PostgreSQL.

Fixtures (use these in any clearing test):
* ``db_engine`` — an Engine on a clean database at Alembic head; parametrized over
  ``sqlite`` and ``postgresql`` (the latter marked ``postgres``; it skips, or fails under
  CI, when the server is missing, through ``tests.conftest.require``).
* ``db_sessions`` — a ``sessionmaker`` on ``db_engine``; ``db_session`` — one open Session.
* ``sqlite_engine`` / ``pg_engine`` — the same, one backend only.
* ``pg_schema`` — (url, schema) of this test session's private PostgreSQL schema.

Isolation: other engineers use the same ``test`` database at the same time, so this
session migrates its own schema ``t_<random>`` once (search_path set per connection)
and drops it at the end; between tests every table is truncated. SQLite tests get a
copy of a database file migrated once per session.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker
from tapfactory import truncate

from clearing import db
from clearing.models import Base


@pytest.fixture(scope="session")
def pg_schema(pg_url: str) -> Iterator[tuple[str, str]]:
    schema = db.random_schema_name("t_")
    db.create_schema(pg_url, schema)
    try:
        db.upgrade(pg_url, schema=schema)
        yield pg_url, schema
    finally:
        db.drop_schema(pg_url, schema)


@pytest.fixture(scope="session")
def _sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("clearing-db") / "template.db"
    db.upgrade(f"sqlite:///{path}")
    engine = db.make_engine(f"sqlite:///{path}")
    with engine.connect() as conn:  # fold the WAL into the main file so a plain copy is complete
        conn.execute(text("PRAGMA wal_checkpoint(TRUNCATE)"))
    engine.dispose()
    return path


@pytest.fixture
def sqlite_engine(_sqlite_template: Path, tmp_path: Path) -> Iterator[Engine]:
    path = tmp_path / "clearing.db"
    shutil.copyfile(_sqlite_template, path)
    engine = db.make_engine(f"sqlite:///{path}")
    yield engine
    engine.dispose()


def _truncate_all(engine: Engine) -> None:
    with engine.begin() as conn:
        truncate(conn, [t.name for t in Base.metadata.sorted_tables])


@pytest.fixture
def pg_engine(pg_schema: tuple[str, str]) -> Iterator[Engine]:
    url, schema = pg_schema
    engine = db.make_engine(url, schema=schema)
    _truncate_all(engine)
    yield engine
    engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_engine(request: pytest.FixtureRequest) -> Engine:
    name = "sqlite_engine" if request.param == "sqlite" else "pg_engine"
    engine: Engine = request.getfixturevalue(name)
    return engine


@pytest.fixture
def db_sessions(db_engine: Engine) -> sessionmaker[Session]:
    return db.session_factory(db_engine)


@pytest.fixture
def db_session(db_sessions: sessionmaker[Session]) -> Iterator[Session]:
    with db_sessions() as session:
        yield session
