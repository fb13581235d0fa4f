"""Engines, sessions and migrations for clearing's database (SQLite or PostgreSQL).

One place decides how a URL becomes an engine, so the embedded default (a SQLite file in
WAL mode) and production (PostgreSQL through psycopg 3) behave the same to callers:
foreign keys on, a busy timeout instead of instant "database is locked", UTC everywhere.
``upgrade(url)`` runs the Alembic migrations in ``migrations/`` (the one schema path that
also partitions ``taps`` on PostgreSQL); ``create_all`` is a quick metadata-only path for
throwaway SQLite databases.

Only ``yikatong init`` (and the demo, which builds its own city) creates or migrates a
database: ``ensure_migrated``. Every other command opens one with ``open_migrated``, which
refuses a SQLite file that does not exist and a database not at head, naming it, so a
mistyped ``YIKATONG_DATABASE_URL`` is an error rather than a new empty city. A SQLite file
holds personal data: it is created 0600, and SQLite gives its -wal/-shm/-journal files the
mode of the database file.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

from sqlalchemy import Engine, create_engine, event, false, select, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

from clearing.contract.codes import Code
from clearing.errors import ClearingError
from clearing.models import Base, Counter

SQLITE_BUSY_TIMEOUT_MS: Final = 10_000
PG_STATEMENT_TIMEOUT_MS: Final = 0  # no limit by default; set per session for interactive paths
_SCHEMA_RE: Final = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

MIGRATIONS_DIR: Final = Path(__file__).resolve().parent.parent / "migrations"


def normalize_url(url: str) -> str:
    """``postgresql://`` and ``postgres://`` mean psycopg 3; everything else is left alone."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def is_postgres(engine_or_url: Engine | str) -> bool:
    url = engine_or_url if isinstance(engine_or_url, str) else str(engine_or_url.url)
    return normalize_url(url).startswith("postgresql")


def check_schema_name(schema: str) -> str:
    if not _SCHEMA_RE.match(schema):
        raise ValueError(f"bad schema name {schema!r}: lowercase letters, digits and _ only")
    return schema


PG_POOL_SIZE = 20
PG_POOL_OVERFLOW = 20


def make_engine(url: str, *, schema: str | None = None, echo: bool = False, **kwargs: Any) -> Engine:
    """An engine for ``url``; ``schema`` (PostgreSQL only) becomes the connection's search_path.

    SQLite: WAL journal, ``foreign_keys=ON``, ``busy_timeout``, ``synchronous=NORMAL``
    (durable in WAL mode across application crashes; an OS crash may lose the last
    commits, which terminals re-upload idempotently). ``sqlite://`` (in memory) uses one
    shared connection so every session sees the same database.
    """
    url = normalize_url(url)
    # A statement's bound values are personal data (names, mobiles) or secrets (token hashes):
    # they stay out of every error message and so out of every log line.
    kwargs.setdefault("hide_parameters", True)
    if url.startswith("sqlite"):
        if schema is not None:
            raise ValueError("schema is a PostgreSQL option")
        in_memory = sqlite_path(url) is None
        connect_args: dict[str, Any] = {"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
        if in_memory:
            kwargs.setdefault("poolclass", StaticPool)
        engine = create_engine(url, echo=echo, connect_args=connect_args, **kwargs)
        _install_sqlite_pragmas(engine, wal=not in_memory)
        return engine
    if url.startswith("postgresql"):
        connect_args = dict(kwargs.pop("connect_args", {}))
        # libpq ``options`` given in the URL (``?options=-csearch_path%3Dt_x``: how a process
        # configured only by YIKATONG_DATABASE_URL is pointed at a schema) are kept; ours follow.
        url_options = make_url(url).query.get("options")
        options = [url_options] if isinstance(url_options, str) else list(url_options or ())
        options.append("-c timezone=UTC")
        if schema is not None:
            options.append(f"-c search_path={check_schema_name(schema)}")
        connect_args["options"] = " ".join(options)
        kwargs.setdefault("pool_pre_ping", True)
        # A server process runs its sync routes on anyio's 40 worker threads: a pool of 5 (the
        # default) made the rest open and close an overflow connection per request, and a
        # PostgreSQL connection is a forked backend. 20 kept, 20 more under a burst.
        kwargs.setdefault("pool_size", PG_POOL_SIZE)
        kwargs.setdefault("max_overflow", PG_POOL_OVERFLOW)
        return create_engine(url, echo=echo, connect_args=connect_args, **kwargs)
    raise ValueError(f"unsupported database URL scheme: {url.split(':', 1)[0]}")


def _install_sqlite_pragmas(engine: Engine, *, wal: bool) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            if wal:
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        finally:
            cursor.close()


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions that keep loaded objects usable after commit (CLI and API code reads them after)."""
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on any exception."""
    with factory() as session, session.begin():
        yield session


def create_all(engine: Engine) -> None:
    """Create every table from the models (no Alembic stamp, no partitioning): tests and scratch DBs."""
    Base.metadata.create_all(engine)


def alembic_config(url: str, *, schema: str | None = None) -> Any:
    """The Alembic config for ``migrations/`` with ``url`` (the ini file is ``migrations/alembic.ini``)."""
    from alembic.config import Config

    cfg = Config(str(MIGRATIONS_DIR / "alembic.ini"))
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", normalize_url(url).replace("%", "%%"))
    if schema is not None:
        cfg.attributes["schema"] = check_schema_name(schema)
    return cfg


def upgrade(url: str, revision: str = "head", *, schema: str | None = None) -> None:
    """Migrate the database at ``url`` (optionally inside PostgreSQL ``schema``) to ``revision``."""
    from alembic import command

    command.upgrade(alembic_config(url, schema=schema), revision)


def downgrade(url: str, revision: str = "base", *, schema: str | None = None) -> None:
    from alembic import command

    command.downgrade(alembic_config(url, schema=schema), revision)


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        rev: str | None = MigrationContext.configure(conn).get_current_revision()
        return rev


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    head = script.get_current_head()
    assert head is not None, "migrations/ has no head revision"
    return head


SQLITE_SIDE_FILES: Final = ("-wal", "-shm", "-journal")


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite URL; None for an in-memory database or another kind of URL."""
    url = normalize_url(url)
    if not url.startswith("sqlite"):
        return None
    database = make_url(url).database
    return None if database in (None, "", ":memory:") else Path(str(database))


def _make_private(path: Path) -> None:
    """Create the SQLite file 0600 if missing, and take group/other access off it and its side files."""
    with contextlib.suppress(FileExistsError):  # an empty file is an empty database
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    for file in (path, *(path.with_name(path.name + suffix) for suffix in SQLITE_SIDE_FILES)):
        try:
            if file.stat().st_mode & 0o077:
                file.chmod(0o600)
        except FileNotFoundError:
            continue


def ensure_migrated(url: str, *, schema: str | None = None) -> Engine:
    """The init path (``yikatong init``, the demo, tests): create the database if missing and migrate it to head.

    A SQLite file is created 0600 with its directory; one that is readable by others is made
    0600 (it holds personal data). Every other command uses ``open_migrated``.
    """
    path = sqlite_path(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        _make_private(path)
    engine = make_engine(url, schema=schema)
    if current_revision(engine) != head_revision():
        upgrade(url, schema=schema)
    return engine


def open_migrated(url: str, *, schema: str | None = None) -> Engine:
    """Engine for an existing database at head; creates and migrates nothing.

    ``E_NO_DATABASE``: the SQLite file does not exist. ``E_DB_NOT_MIGRATED``: the database
    has no Yikatong schema or another revision. Either names the database and says to run
    ``yikatong init``.
    """
    path = sqlite_path(url)
    if path is not None and not path.is_file():
        raise ClearingError(
            Code.E_NO_DATABASE,
            f"{path} does not exist; run `yikatong init` first (or check YIKATONG_DATABASE_URL)",
        )
    engine = make_engine(url, schema=schema)
    current, head = current_revision(engine), head_revision()
    if current == head:
        return engine
    engine.dispose()
    where = str(path) if path is not None else redacted_url(url)
    if current is None:
        why = f"{where} holds no Yikatong schema; run `yikatong init` to create it (or check YIKATONG_DATABASE_URL)"
    else:
        why = f"{where} is at schema revision {current}, this version needs {head}; run `yikatong init` to migrate it"
    raise ClearingError(Code.E_DB_NOT_MIGRATED, why)


def redacted_url(url: str) -> str:
    """A database URL without its password, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - for a message only; never fail on a URL we cannot parse
        return "(unparsable URL)"


# --- PostgreSQL schemas (test isolation, multi-tenant scratch) ------------------------------


def random_schema_name(prefix: str = "t_") -> str:
    return check_schema_name(prefix + secrets.token_hex(6))


def create_schema(url: str, schema: str) -> None:
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{check_schema_name(schema)}"'))
    finally:
        engine.dispose()


def drop_schema(url: str, schema: str) -> None:
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{check_schema_name(schema)}" CASCADE'))
    finally:
        engine.dispose()


@contextmanager
def isolated_schema(url: str, prefix: str = "t_") -> Iterator[str]:
    """A fresh PostgreSQL schema ``t_<random>`` for the duration of the block, dropped after."""
    schema = random_schema_name(prefix)
    create_schema(url, schema)
    try:
        yield schema
    finally:
        drop_schema(url, schema)


# --- upserts ------------------------------------------------------------------------------


def conflict_insert(dialect: str) -> Callable[..., Any]:
    """The dialect's ``insert`` construct, the one with ``on_conflict_do_nothing``/``_do_update``.

    PostgreSQL and SQLite both speak ``INSERT … ON CONFLICT``; SQLAlchemy spells it per dialect.
    """
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert
    raise RuntimeError(f"unsupported database dialect {dialect}")


# --- counters -----------------------------------------------------------------------------


def bump_counter(session: Session, name: str, by: int = 1) -> int:
    """Increment the named counter and return its new value, in the caller's transaction.

    One upsert: the first use of a counter creates it, and two transactions that both use a
    new counter first queue on the row instead of one failing on the primary key. The row
    lock (PostgreSQL) or write lock (SQLite) means no two transactions get the same value.
    """
    assert by > 0
    insert_fn = conflict_insert(session.get_bind().dialect.name)
    stmt = insert_fn(Counter).values(name=name, value=by)
    stmt = stmt.on_conflict_do_update(index_elements=[Counter.name], set_={"value": Counter.value + by})
    return int(session.execute(stmt.returning(Counter.value)).scalar_one())


def on_postgres(session: Session) -> bool:
    """Whether the session's database is PostgreSQL, where the set-based paths (arrays, COPY) run."""
    return session.get_bind().dialect.name == "postgresql"


def lock_for_update(session: Session) -> None:
    """Make the ``SELECT … FOR UPDATE`` reads that follow serialise on SQLite too.

    PostgreSQL locks the rows; SQLite ignores ``FOR UPDATE``, and pysqlite starts its
    transaction only at the first write, so a read-check-write (a card's cap, a load's state)
    could run on a stale snapshot beside another one. A no-op write first takes SQLite's one
    write lock (waiting ``busy_timeout``), so everything read after it is current until commit.
    """
    if session.get_bind().dialect.name == "sqlite":
        session.execute(update(Counter).where(false()).values(value=Counter.value))


def read_counter(session: Session, name: str) -> int:
    value = session.execute(select(Counter.value).where(Counter.name == name)).scalar_one_or_none()
    return 0 if value is None else int(value)


__all__ = [
    "MIGRATIONS_DIR",
    "alembic_config",
    "bump_counter",
    "conflict_insert",
    "create_all",
    "create_schema",
    "current_revision",
    "downgrade",
    "drop_schema",
    "ensure_migrated",
    "head_revision",
    "is_postgres",
    "isolated_schema",
    "make_engine",
    "normalize_url",
    "open_migrated",
    "random_schema_name",
    "read_counter",
    "redacted_url",
    "session_factory",
    "sqlite_path",
    "transaction",
    "upgrade",
]
