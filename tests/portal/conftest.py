"""A real localstripe server for the payment tests, started once per session and stopped after.

localstripe (PyPI) is the Stripe-compatible payment server of issue 10's tests. Missing, its
tests skip locally and fail under ``CI=true`` (``tests.conftest.require``). It is started with
``--from-scratch`` so that it ignores the store it pickles to ``/tmp/localstripe.pickle``
(a path it hard-codes and any other localstripe on the machine shares).
"""

from __future__ import annotations

import importlib.util
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from argon2 import PasswordHasher
from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session

from clearing import db
from clearing.models import Base
from portal.accounts import AccountService
from portal.identity import check_char
from portal.models import PortalCardBinding, PortalCitizen
from portal.passwords import Passwords
from tests.conftest import require

LOCALSTRIPE_KEY = "sk_test_yikatong"
START_TIMEOUT_S = 20.0


def id_number(first17: str) -> str:
    """A resident ID number with its check character."""
    return first17 + check_char(first17)


ALICE = {"mobile": "13912345678", "password": "tea by the Wei river", "real_name": "欧阳娜娜",
         "id_number": id_number("61040219900101123")}  # fmt: skip
BOB = {"mobile": "15087654321", "password": "eight chars", "real_name": "李四",
       "id_number": id_number("61040419851111456")}  # fmt: skip


# --- the database: SQLite and PostgreSQL, one migrated schema per test module ----------------


@pytest.fixture(scope="module")
def pg_schema(pg_url: str, request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    with db.isolated_schema(pg_url, prefix=f"t_{request.module.__name__.rsplit('.', 1)[-1][:20]}_") as schema:
        db.upgrade(pg_url, schema=schema)
        yield pg_url, schema


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """A migrated, empty database of each kind (PostgreSQL: the module's schema, truncated)."""
    if request.param == "sqlite":
        eng = db.ensure_migrated(f"sqlite:///{tmp_path / 'portal.db'}")
    else:
        url, schema = request.getfixturevalue("pg_schema")
        eng = db.make_engine(url, schema=schema)
        with eng.begin() as conn:
            conn.execute(text("SET LOCAL session_replication_role = replica"))  # accounts refuse TRUNCATE
            names = ", ".join(t for t in Base.metadata.tables if t != "taps_default")
            conn.execute(text(f"TRUNCATE TABLE {names} RESTART IDENTITY CASCADE"))
    yield eng
    eng.dispose()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def localstripe_url() -> Iterator[str]:
    require(
        importlib.util.find_spec("localstripe") is not None, "localstripe is not installed (pip install localstripe)"
    )
    from yikatong.live_demo import localstripe  # the one way the project starts it (make run too)

    with tempfile.TemporaryDirectory(prefix="yikatong-localstripe-") as tmp:
        try:
            with localstripe(_free_port(), Path(tmp) / "localstripe.log", LOCALSTRIPE_KEY) as url:
                yield url
        except RuntimeError as exc:  # it exited or did not answer: the log's path is in the message
            pytest.fail(str(exc))


# --- citizen accounts: a cheap argon2id and a fixed lookup key for tests -------------------

TEST_LOOKUP_KEY = bytes(range(32))


def fast_passwords() -> Passwords:
    """argon2id at the smallest cost argon2 takes: the tests hash hundreds of passwords."""
    return Passwords(PasswordHasher(time_cost=1, memory_cost=8, parallelism=1))


def account_service(engine: Engine, **kwargs: Any) -> AccountService:
    return AccountService(
        sessions=db.session_factory(engine), lookup_key=TEST_LOOKUP_KEY, passwords=fast_passwords(), **kwargs
    )


def bind_directly(engine: Engine, citizen_mobile: str, issuer_id: str, card_asn: str) -> None:
    """A binding as if proven (tests of other flows that need a bound card, not the proof)."""
    with Session(engine) as session, session.begin():
        citizen_id = session.scalar(select(PortalCitizen.id).where(PortalCitizen.mobile == citizen_mobile))
        assert citizen_id is not None
        exists = session.scalar(
            select(PortalCardBinding.id).where(
                PortalCardBinding.issuer_id == issuer_id, PortalCardBinding.card_asn == card_asn
            )
        )
        if exists is None:
            session.add(
                PortalCardBinding(citizen_id=citizen_id, issuer_id=issuer_id, card_asn=card_asn, how="transaction")
            )
