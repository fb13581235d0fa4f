"""Two cities in one process for the wire's tests: Xianyang (acquirer) and Xi'an (issuer), each its own database.

``Pair`` holds both nodes (``interop_xian.exchange.InteropNode``), each with its own signing
keys (sealed under its own KEK) and the other's public keys imported. Xianyang's sender
reaches Xi'an's ``/interop/v1`` through ``PeerTransport`` (the ASGI app in process, with
faults to inject: the peer down, an acknowledgement lost on the way back). Forwarded records
come from Xianyang's real ingest: a Xi'an card tapped on a Xianyang terminal.

``RecordingTestJudge`` is a stand-in ``IssuerJudge`` for these tests only — not the issuer's
validation (``interop_xian.issuer``): it accepts every item for its record's amount unless
the record's TAC is ``REJECT_TAC``, and keeps each item's first verdict, as the contract asks.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select, text
from sqlalchemy.orm import Session

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "clearing"))  # tapfactory

from tapfactory import OWN_ISSUER, PEER_ISSUER, T0, Card, Terminal, dtk_lookup, register_world, truncate

from clearing import db, registry
from clearing.db import session_factory
from clearing.ingest import TacKeys, make_ingestor, prepare
from clearing.models import Base
from interop_xian import api
from interop_xian.config import InteropConfig
from interop_xian.exchange import InteropNode
from interop_xian.items import InteropItem, ItemOutcome, ItemVerdict
from interop_xian.keys import SigningKeys, import_peer_keys

REJECT_TAC = "ffffffff"
KEYLESS_TAC = "eeeeeeee"  # the test judge lacks this card's key until ``keys_arrived``
NOW = T0.astimezone(dt.UTC) + dt.timedelta(hours=2)
OVERLAP = dt.timedelta(days=7)


class RecordingTestJudge:
    """A test stand-in for the issuer's judge (see the module docstring); ``calls`` counts batches judged."""

    def __init__(self) -> None:
        self.verdicts: dict[str, ItemVerdict] = {}
        self.calls: list[str] = []
        self.fail_next = 0
        self.keys_arrived = False
        self.crash_after_next = 0  # judge (and keep) the batch, then fail before the answer is stored
        self.window_day: dt.date | None = None  # the window its acceptances name (None: none)

    def judge(
        self, *, peer_city: str, batch_id: str, items: Sequence[InteropItem], received_at: dt.datetime
    ) -> list[ItemVerdict]:
        if self.fail_next:
            self.fail_next -= 1
            raise RuntimeError("judge down")
        self.calls.append(batch_id)
        out = []
        for item in items:
            verdict = self.verdicts.get(item.item_id)
            if verdict is None and item.record.get("tac") == KEYLESS_TAC and not self.keys_arrived:
                out.append(ItemVerdict(item.item_id, ItemOutcome.REJECTED, "E_KEY_UNAVAILABLE", 0, "not kept"))
                continue
            if verdict is None:
                if item.record.get("tac") == REJECT_TAC:
                    verdict = ItemVerdict(item.item_id, ItemOutcome.REJECTED, "E_TAC_MISMATCH", 0, "test judge")
                else:
                    verdict = ItemVerdict(item.item_id, ItemOutcome.ACCEPTED, "OK", int(item.record["amount_fen"]),
                                          window_day=self.window_day)  # fmt: skip
                self.verdicts[item.item_id] = verdict
            out.append(verdict)
        if self.crash_after_next:
            self.crash_after_next -= 1
            raise RuntimeError("issuer crashed after judging")
        return out


class PeerTransport(httpx.BaseTransport):
    """Xianyang → Xi'an through Xi'an's app in process, with faults: ``down`` and ``lose_acks``."""

    def __init__(self, app: FastAPI) -> None:
        self.client = TestClient(app, base_url="https://xian.test")
        self.down = False
        self.lose_acks = 0
        self.posts = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if self.down:
            raise httpx.ConnectError("peer down", request=request)
        self.posts += 1
        answer = self.client.request(request.method, request.url.path, content=request.read(),
                                     headers=dict(request.headers))  # fmt: skip
        if self.lose_acks and answer.status_code == 200:
            self.lose_acks -= 1
            raise httpx.ReadTimeout("acknowledgement lost", request=request)
        return httpx.Response(answer.status_code, headers=answer.headers, content=answer.content)


@dataclass
class City:
    name: str
    engine: Engine
    node: InteropNode
    signing: SigningKeys

    def session(self) -> Session:
        return Session(self.engine)

    def scalar(self, sql: str, **params: Any) -> Any:
        with self.engine.connect() as conn:
            return conn.execute(text(sql), params).scalar()


@dataclass
class Pair:
    xianyang: City
    xian: City
    judge: RecordingTestJudge
    transport: PeerTransport
    xian_app: FastAPI
    terminal: Terminal
    cards: list[Card]
    now: dt.datetime = NOW
    ingest_log: list[bytes] = field(default_factory=list)

    def tap(self, amounts: Sequence[int], *, tac: str | None = None, at: dt.datetime | None = None) -> None:
        """One upload from the Xianyang terminal: a Xi'an card's tap per amount (from ``at``, else T0's day)."""
        for n, amount in enumerate(amounts):
            when = (at + dt.timedelta(seconds=n)) if at is not None else T0 + dt.timedelta(minutes=self.terminal.seq)
            record = self.terminal.tap(self.cards[n % len(self.cards)], amount, when)
            if tac is not None:
                import msgspec

                self.terminal.pending[-1] = msgspec.structs.replace(record, tac=tac)
        ingestor = make_ingestor(self.xianyang.engine, clock=lambda: self.now)
        batch = self.terminal.batch()
        self.ingest_log.append(ingestor.ingest(prepare(self.terminal.terminal_id, batch,
                                                       TacKeys(dtk_lookup, [OWN_ISSUER]))).answer)  # fmt: skip

    def exchange(self, **kw: Any) -> Any:
        return self.xianyang.node.exchange(now=self.now, **kw)

    def later(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


def windows_close_at_once(pair: Pair) -> None:
    """Ready the pair to close windows: Xi'an knows Xianyang's issuer (as ``yikatong init`` registers
    it, for the final instruction's accounts), and both close a window as soon as its day ends."""
    with Session(pair.xian.engine) as session, session.begin():
        registry.register_issuer(session, OWN_ISSUER, city="xianyang", name="Xianyang", own=False)
    for city in (pair.xianyang, pair.xian):
        object.__setattr__(city.node.config, "window_close_delay_s", 0.0)  # the config is frozen: a test's knob


def city_config(city: str, **kw: Any) -> InteropConfig:
    defaults: dict[str, Any] = {"peer_url": "https://xian.test" if city == "xianyang" else "https://xianyang.test",
                                "retry_base_s": 5.0, "retry_max_s": 300.0, "batch_items_max": 50}  # fmt: skip
    return InteropConfig(city=city, **{**defaults, **kw})


def make_pair(xianyang_engine: Engine, xian_engine: Engine, keys_dir: Path, **config: Any) -> Pair:
    judge = RecordingTestJudge()
    signing = {c: SigningKeys(keys_dir / f"{c}.interop.json", os.urandom(32), c) for c in ("xianyang", "xian")}
    for keys in signing.values():
        keys.rotate(now=NOW - dt.timedelta(days=1), overlap=OVERLAP)
    engines = {"xianyang": xianyang_engine, "xian": xian_engine}
    for city, engine in engines.items():
        other = "xian" if city == "xianyang" else "xianyang"
        with Session(engine) as session, session.begin():
            import_peer_keys(session, signing[other].export(now=NOW), own_city=city, now=NOW, overlap=OVERLAP)
    xian_node = InteropNode(session_factory(xian_engine), city_config("xian", **config), signing["xian"], judge)
    xian_app = FastAPI()
    api.mount(xian_app, xian_node)
    transport = PeerTransport(xian_app)
    client = httpx.Client(base_url="https://xian.test", transport=transport)
    xianyang_node = InteropNode(session_factory(xianyang_engine), city_config("xianyang", **config),
                                signing["xianyang"], RecordingTestJudge(), client=client)  # fmt: skip
    cards = [Card(100 + n, balance_fen=50_000, issuer_id=PEER_ISSUER, asn_hex=f"3101{100 + n:016d}") for n in range(3)]
    terminal = Terminal("0a0000000001")
    with Session(xianyang_engine) as session:
        register_world(session, [], [terminal.terminal_id], operator="xianyang-bus")
    return Pair(
        City("xianyang", xianyang_engine, xianyang_node, signing["xianyang"]),
        City("xian", xian_engine, xian_node, signing["xian"]),
        judge, transport, xian_app, terminal, cards,
    )  # fmt: skip


def count(engine: Engine, model: Any, *where: Any) -> int:
    with Session(engine) as session:
        return int(session.scalar(select(func.count()).select_from(model).where(*where)) or 0)


# --- databases: two per test, SQLite or PostgreSQL -------------------------------------------


@pytest.fixture(scope="session", name="wire_sqlite_template")
def wire_sqlite_template_fixture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("wire-db") / "template.db"
    db.upgrade(f"sqlite:///{path}")
    engine = db.make_engine(f"sqlite:///{path}")
    with engine.connect() as conn:
        conn.execute(text("PRAGMA wal_checkpoint(TRUNCATE)"))
    engine.dispose()
    return path


@pytest.fixture(scope="session", name="wire_pg_schemas")
def wire_pg_schemas_fixture(pg_url: str) -> Iterator[tuple[str, tuple[str, str]]]:
    schemas = (db.random_schema_name("t_wxy_"), db.random_schema_name("t_wxa_"))
    for schema in schemas:
        db.create_schema(pg_url, schema)
    try:
        for schema in schemas:
            db.upgrade(pg_url, schema=schema)
        yield pg_url, schemas
    finally:
        for schema in schemas:
            db.drop_schema(pg_url, schema)


def sqlite_engines(template: Path, tmp_path: Path) -> tuple[Engine, Engine]:
    """Xianyang's and Xi'an's SQLite databases in ``tmp_path``, copies of the migrated template."""
    import shutil

    out = []
    for city in ("xianyang", "xian"):
        path = tmp_path / f"{city}.db"
        shutil.copyfile(template, path)
        out.append(db.make_engine(f"sqlite:///{path}"))
    return out[0], out[1]


def _pg_engines(url: str, schemas: tuple[str, str]) -> tuple[Engine, Engine]:
    out = []
    for schema in schemas:
        engine = db.make_engine(url, schema=schema)
        with engine.begin() as conn:
            truncate(conn, [t.name for t in Base.metadata.sorted_tables])
        out.append(engine)
    return out[0], out[1]


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)], name="pair")
def pair_fixture(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Pair]:
    if request.param == "sqlite":
        engines = sqlite_engines(request.getfixturevalue("wire_sqlite_template"), tmp_path)
    else:
        url, schemas = request.getfixturevalue("wire_pg_schemas")
        engines = _pg_engines(url, schemas)
    made = make_pair(*engines, tmp_path / "keys")
    try:
        yield made
    finally:
        for engine in engines:
            engine.dispose()


__all__ = [
    "KEYLESS_TAC",
    "NOW",
    "OVERLAP",
    "PEER_ISSUER",
    "REJECT_TAC",
    "City",
    "Pair",
    "RecordingTestJudge",
    "count",
    "make_pair",
    "pair_fixture",
    "wire_pg_schemas_fixture",
    "wire_sqlite_template_fixture",
]
