"""Property: any sequence of taps, uploads, replays and crashes keeps the books right.

After every step the ledger balances (debits == credits == the sum of posted transfers);
at the end every genuine record has been posted exactly once, and every card's shadow
balance equals the balance after its highest-counter posted record. Terminals upload
independently, so a card's records arrive out of counter order across batches.
"""

from __future__ import annotations

import datetime as dt
import shutil
import tempfile
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session
from tapfactory import OWN_ISSUER, T0, Card, Terminal, dtk_lookup, register_world, truncate

from clearing import db
from clearing.contract import Batch, TapRecord
from clearing.ingest import TacKeys, make_ingestor, prepare
from clearing.ledger import trial_balance
from clearing.models import Base, Tap, Transfer
from clearing.models import Card as CardRow

NOW = T0 + dt.timedelta(days=1)
TERMINALS = ("0000aa000001", "0000aa000002", "0000aa000003")
OPENING_FEN = 3000


class SimulatedCrash(Exception):
    """The process died just before COMMIT."""


tap = st.tuples(st.just("tap"), st.integers(0, 3), st.integers(0, 2), st.sampled_from([0, 100, 150, 200, 400]))
upload = st.tuples(st.just("upload"), st.integers(0, 2), st.booleans(), st.booleans())  # crash?, shuffle?
replay = st.tuples(st.just("replay"), st.integers(0, 2), st.booleans(), st.just(0))  # same batch, or records again
actions = st.lists(st.one_of(tap, tap, upload, replay), min_size=1, max_size=40)


class Model:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.cards = [Card(n, balance_fen=OPENING_FEN) for n in range(4)]
        self.terms = [Terminal(t) for t in TERMINALS]
        self.sent: dict[int, list[Batch]] = {i: [] for i in range(len(TERMINALS))}
        self.genuine: list[TapRecord] = []
        self.ingestor = make_ingestor(engine, clock=lambda: NOW.astimezone(dt.UTC))
        self.keys = TacKeys(dtk_lookup, [OWN_ISSUER])
        self.crash_next = False
        self.ingestor.before_commit = self._maybe_crash
        with Session(engine) as session:
            register_world(session, self.cards, list(TERMINALS))

    def _maybe_crash(self, _: object) -> None:
        if self.crash_next:
            self.crash_next = False
            raise SimulatedCrash

    def ingest(self, terminal: int, batch: Batch) -> None:
        self.ingestor.ingest(prepare(TERMINALS[terminal], batch, self.keys))
        self.check_ledger()

    def step(self, action: tuple[Any, ...]) -> None:
        kind = action[0]
        if kind == "tap":
            _, c, t, amount = action
            card = self.cards[c]
            if amount <= card.balance_fen:
                self.genuine.append(self.terms[t].tap(card, amount))
        elif kind == "upload":
            _, t, crash, shuffle = action
            term = self.terms[t]
            if not term.pending:
                return
            records = list(reversed(term.pending)) if shuffle else list(term.pending)
            batch = term.batch(records)
            term.pending = []
            if crash:
                self.crash_next = True
                with pytest.raises(SimulatedCrash):
                    self.ingest(t, batch)
            self.ingest(t, batch)  # the terminal retries until it gets an answer
            self.sent[t].append(batch)
        elif kind == "replay":
            _, t, same, _ = action
            if not self.sent[t]:
                return
            earlier = self.sent[t][-1]
            if same:
                self.ingest(t, earlier)
            else:
                self.ingest(t, self.terms[t].batch(list(earlier.records)))

    def finish(self) -> None:
        for t, term in enumerate(self.terms):
            if term.pending:
                batch = term.batch()
                self.ingest(t, batch)

    def check_ledger(self) -> None:
        with Session(self.engine) as session:
            tb = trial_balance(session)
            assert tb.debits_posted == tb.credits_posted == tb.transfers_posted_fen

    def check_end(self) -> None:
        with Session(self.engine) as session:
            posted = {
                tid: fen
                for tid, fen in session.execute(
                    select(Transfer.id, Transfer.amount_fen).where(Transfer.id.like("tap:%"))
                )
            }
            expected = {f"tap:{r.terminal_id}:{r.terminal_seq}": r.amount_fen for r in self.genuine if r.amount_fen}
            assert posted == expected, "every genuine record posted exactly once, nothing else"
            for card in self.cards:
                row = session.execute(select(CardRow).where(CardRow.card_asn == card.asn)).scalar_one()
                last = session.execute(
                    select(Tap.balance_before_fen - Tap.amount_fen)
                    .where(Tap.card_asn == card.asn, Tap.verdict.in_(("accepted", "suspect")))
                    .order_by(Tap.offline_counter.desc())
                    .limit(1)
                ).scalar_one_or_none()
                assert row.shadow_balance_fen == (OPENING_FEN if last is None else last) == card.balance_fen
            taps = session.execute(select(func.count()).select_from(Tap)).scalar_one()
            assert taps == len(self.genuine)  # duplicates are never stored twice


def _run(engine: Engine, steps: list[tuple[Any, ...]]) -> None:
    model = Model(engine)
    for action in steps:
        model.step(action)
    model.finish()
    model.check_ledger()
    model.check_end()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=actions)
def test_uploads_replays_and_crashes_keep_the_books_right_sqlite(_sqlite_template: Path, steps: list[Any]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "clearing.db"
        shutil.copyfile(_sqlite_template, path)
        engine = db.make_engine(f"sqlite:///{path}")
        try:
            _run(engine, steps)
        finally:
            engine.dispose()


@pytest.mark.postgres
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=actions)
def test_uploads_replays_and_crashes_keep_the_books_right_postgres(
    pg_schema: tuple[str, str], steps: list[Any]
) -> None:
    url, schema = pg_schema
    engine = db.make_engine(url, schema=schema)
    try:
        with engine.begin() as conn:
            truncate(conn, [t.name for t in Base.metadata.sorted_tables])
        _run(engine, steps)
    finally:
        engine.dispose()


def test_model_sanity_all_genuine_records_post() -> None:
    """The strategy's records are genuine: the property would be vacuous otherwise."""
    card = Card(0, balance_fen=1000)
    record = Terminal(TERMINALS[0]).tap(card, 100)
    assert msgspec.json.decode(msgspec.json.encode(record))["tac"] != "00000000"
