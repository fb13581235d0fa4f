"""Shared fixtures: real PostgreSQL and Redis, and the rule for parts that cannot be had.

Where a real part is missing, its tests skip with a one-line reason; under ``CI=true``
a missing part is a failure, not a skip (issue 2, "Repository").
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

# The real-pcscd fixtures (``pcscd``, ``vpcd_insert``), registered once for every directory.
pytest_plugins = ["tests.pcsc_support"]

IN_CI = os.environ.get("CI", "").lower() == "true"
# pytest-xdist's workers start with COLUMNS=80 and LINES=24 in the environment; rich fixes a
# console's width at construction when COLUMNS is set, so the CLI's module-level consoles would
# ignore the width a test passes to CliRunner. Without them rich reads COLUMNS at each print.
os.environ.pop("COLUMNS", None)
os.environ.pop("LINES", None)

TEST_DATABASE_URL = os.environ.get("YIKATONG_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
TEST_REDIS_URL = os.environ.get("YIKATONG_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def require(available: bool, reason: str) -> None:
    """Skip (or fail under CI) when a real part is not available."""
    if available:
        return
    if IN_CI:
        pytest.fail(f"required part missing under CI=true: {reason}")
    pytest.skip(reason)


def sqlalchemy_pg_url(url: str = TEST_DATABASE_URL) -> str:
    if url.startswith("postgresql://"):
        return "postgresql+psycopg://" + url[len("postgresql://") :]
    return url


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """SQLAlchemy URL of the real PostgreSQL test database."""
    import psycopg

    try:
        with psycopg.connect(TEST_DATABASE_URL, connect_timeout=3) as conn:
            conn.execute("select 1")
    except psycopg.OperationalError as exc:
        require(False, f"PostgreSQL not reachable at {TEST_DATABASE_URL}: {exc}".splitlines()[0])
    yield sqlalchemy_pg_url()


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    import redis

    client = redis.Redis.from_url(TEST_REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        require(False, f"Redis not reachable at {TEST_REDIS_URL}: {exc}")
    finally:
        client.close()
    yield TEST_REDIS_URL


@pytest.hookimpl(tryfirst=True)  # before the -m selection reads the markers
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test that needs the one pair of vpcd slots (the ``pcscd`` fixture) is marked ``pcsc``:
    ``make test`` runs the others on xdist workers (``--dist loadfile``: each file whole on one
    worker, in order) and the ``pcsc`` ones after, in one process, because the slots are a
    machine-wide resource that ``tests/pcsc_support.py`` locks for a whole session."""
    for item in items:
        if "pcscd" in getattr(item, "fixturenames", ()) and not item.get_closest_marker("pcsc"):
            item.add_marker(pytest.mark.pcsc)
