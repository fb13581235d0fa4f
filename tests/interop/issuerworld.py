"""A small Xianyang for the issuer side of interop: our cards tapped on Xi'an's terminals, forwarded to us.

Fixtures (import them into a test module): ``issuer_sqlite``, ``issuer_pg`` and ``issuer_db``
(parametrized over both), each an Engine on a clean database at head. ``IssuerWorld`` registers
the issuers and our cards (``tests/clearing/tapfactory.py``), builds the peer's items exactly as
the acquirer does (``item_id = <acquirer city>:<terminal>:<seq>:<digest16>``) and judges them.
"""

from __future__ import annotations

import datetime as dt
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import pytest
from sqlalchemy import Engine, func, select, text
from sqlalchemy.orm import Session

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "clearing"))  # tapfactory

from tapfactory import OWN_ISSUER, T0, Card, Terminal, dtk_lookup, register_world, truncate

from clearing import db
from clearing.contract import TapRecord
from clearing.ingest import TacKeys, make_ingestor, prepare
from clearing.ledger import account_balance, trial_balance
from clearing.models import Base, Transfer
from clearing.models import Card as CardRow
from clearing.validation import record_digest
from interop_xian.issuer import IssuerJudgeDb, peer_issuer_id
from interop_xian.items import InteropItem, ItemVerdict
from interop_xian.models import Booking, IssuerItem

PEER = "xian"
RECEIVED = T0 + dt.timedelta(hours=2)


@pytest.fixture(scope="session")
def issuer_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("interop-issuer-db") / "template.db"
    db.upgrade(f"sqlite:///{path}")
    engine = db.make_engine(f"sqlite:///{path}")
    with engine.connect() as conn:
        conn.execute(text("PRAGMA wal_checkpoint(TRUNCATE)"))
    engine.dispose()
    return path


@pytest.fixture
def issuer_sqlite(issuer_template: Path, tmp_path: Path) -> Iterator[Engine]:
    path = tmp_path / "issuer.db"
    shutil.copyfile(issuer_template, path)
    engine = db.make_engine(f"sqlite:///{path}")
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def issuer_pg_schema(pg_url: str) -> Iterator[tuple[str, str]]:
    schema = db.random_schema_name("t_iss_")
    db.create_schema(pg_url, schema)
    try:
        db.upgrade(pg_url, schema=schema)
        yield pg_url, schema
    finally:
        db.drop_schema(pg_url, schema)


@pytest.fixture
def issuer_pg(issuer_pg_schema: tuple[str, str]) -> Iterator[Engine]:
    url, schema = issuer_pg_schema
    engine = db.make_engine(url, schema=schema)
    with engine.begin() as conn:
        truncate(conn, [t.name for t in Base.metadata.sorted_tables])
    yield engine
    engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def issuer_db(request: pytest.FixtureRequest) -> Engine:
    name = "issuer_sqlite" if request.param == "sqlite" else "issuer_pg"
    engine: Engine = request.getfixturevalue(name)
    return engine


def item_of(record: TapRecord, acquirer: str = PEER) -> InteropItem:
    """The item the acquirer sends for a forwarded record (``interop_xian.items.InteropItem``)."""
    digest = record_digest(record)
    return InteropItem(
        f"{acquirer}:{record.terminal_id}:{record.terminal_seq}:{digest[:16]}",
        record.terminal_id,
        record.terminal_seq,
        digest,
        msgspec.to_builtins(record),
    )


@dataclass
class IssuerWorld:
    engine: Engine
    cards: list[Card]
    peer_terminal: Terminal = field(default_factory=lambda: Terminal("00000a000001"))
    own_terminal: Terminal = field(default_factory=lambda: Terminal("00000b000001"))
    batches: int = 0

    def judge_with(self) -> IssuerJudgeDb:
        return IssuerJudgeDb(self.engine, TacKeys(dtk_lookup, [OWN_ISSUER]))

    def judge(self, records: list[TapRecord], *, at: dt.datetime = RECEIVED) -> list[ItemVerdict]:
        return self.judge_items([item_of(r) for r in records], at=at)

    def judge_items(self, items: list[InteropItem], *, at: dt.datetime = RECEIVED) -> list[ItemVerdict]:
        self.batches += 1
        return self.judge_with().judge(peer_city=PEER, batch_id=f"{PEER}:{self.batches}", items=items, received_at=at)

    def ingest_own(self, records: list[TapRecord]) -> bytes:
        """Our own clearing clears records of our own terminal (the same card keys, another path)."""
        batch = self.own_terminal.batch(records)
        ingestor = make_ingestor(self.engine, clock=lambda: RECEIVED)
        return ingestor.ingest(prepare(self.own_terminal.terminal_id, batch, TacKeys(dtk_lookup, [OWN_ISSUER]))).answer

    # --- reads ---

    def shadow(self, card: Card) -> tuple[int, int | None]:
        with Session(self.engine) as s:
            row = s.execute(select(CardRow).where(CardRow.card_asn == card.asn)).scalar_one()
            return row.shadow_balance_fen, row.last_offline_counter

    def due_to_fen(self) -> int:
        from clearing import accounts

        with Session(self.engine) as s, s.begin():
            account = accounts.due_to_peer(s, peer_issuer_id(s, PEER))
            return account_balance(s, account).credit_balance_fen

    def interop_transfers(self) -> list[Transfer]:
        with Session(self.engine) as s:
            return list(s.execute(select(Transfer).where(Transfer.id.like("iss:%")).order_by(Transfer.id)).scalars())

    def bookings(self) -> list[Booking]:
        with Session(self.engine) as s:
            return list(s.execute(select(Booking).order_by(Booking.id)).scalars())

    def items_stored(self) -> int:
        with Session(self.engine) as s:
            return int(s.execute(select(func.count(IssuerItem.id))).scalar_one())

    def balanced(self) -> None:
        with Session(self.engine) as s:
            tb = trial_balance(s)
            assert tb.debits_posted == tb.credits_posted


def make_world(engine: Engine, *, cards: int = 3, balance_fen: int = 10_000) -> IssuerWorld:
    world = IssuerWorld(engine, [Card(n, balance_fen=balance_fen) for n in range(1, cards + 1)])
    with Session(engine) as session:
        register_world(session, world.cards, [world.own_terminal.terminal_id])
    return world


# The fixtures, for ``from issuerworld import *`` in a test module (helpers are imported by name).
__all__ = ["issuer_db", "issuer_pg", "issuer_pg_schema", "issuer_sqlite", "issuer_template"]
