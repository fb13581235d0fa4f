"""Exception decisions follow the money that already moved; every item here comes from real ingest.

Before issue 8, writing off a posted suspect (or a duplicate) debited the card a second time,
accepting a posted suspect failed with E_TRANSFER_CONFLICT, and "unverified" was a list of
codes rather than a TAC check. After every decision here the card's ledger balance, its
shadow balance and its emulated purse agree.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Any

import msgspec
import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session
from tapfactory import MASTER_TAC, OWN_ISSUER, T0, Card, Terminal, make_keystore, register_world, sign

from clearing import accounts
from clearing.errors import ClearingError
from clearing.exceptions_queue import Kind, accept, kind_of, list_items, sweep_gaps, view, write_off
from clearing.ingest import IngestResult, TacKeys, keystore_dtk, make_ingestor, prepare
from clearing.keystore import KeyStore
from clearing.ledger import account_balance, trial_balance
from clearing.models import Account, ExceptionItem, Tap, Transfer
from clearing.models import Card as CardRow
from clearing.validation import Limits

NOW = T0 + dt.timedelta(hours=12)


class World:
    """Real ingest (TAC keys from the key store) over one database, and the emulated purses."""

    def __init__(self, engine: Engine, keystore: KeyStore, cards: list[Card], terminals: list[Terminal]) -> None:
        self.engine = engine
        self.keystore = keystore
        self.cards = cards
        with Session(engine) as session:
            register_world(session, cards, [t.terminal_id for t in terminals])
        self.ingestor = make_ingestor(engine, clock=lambda: NOW.astimezone(dt.UTC), limits=Limits(amount_fen_max=500))
        self.keys = TacKeys(keystore_dtk(keystore), keystore.issuers())

    def upload(self, term: Terminal, records: list[Any] | None = None) -> list[tuple[str, str]]:
        result: IngestResult = self.ingestor.ingest(prepare(term.terminal_id, term.batch(records), self.keys))
        return [(v["verdict"], v["code"]) for v in msgspec.json.decode(result.answer)["verdicts"]]

    def item(self, code: str) -> ExceptionItem:
        with Session(self.engine) as session:
            return session.execute(select(ExceptionItem).where(ExceptionItem.code == code)).scalars().one()

    def decide(self, fn: Any, item_id: int, **kw: Any) -> ExceptionItem:
        with Session(self.engine) as session, session.begin():
            item: ExceptionItem = fn(session, item_id, now=NOW, decided_by="clerk", **kw)
            session.expunge(item)
        return item

    def accept(self, item_id: int, **kw: Any) -> ExceptionItem:
        def run(session: Session, item_id: int, **inner: Any) -> ExceptionItem:
            return accept(session, self.keystore, item_id, **inner)

        return self.decide(run, item_id, **kw)

    def sweep(self, *, days_on: int = 3, age_days: int = 3) -> tuple[int, int]:
        with Session(self.engine) as session, session.begin():
            done = sweep_gaps(session, now=NOW + dt.timedelta(days=days_on), age_days=age_days)
        return done.queued, done.resolved

    def ledger(self, card: Card) -> tuple[int, int]:
        """(ledger balance, shadow balance) of a card."""
        with Session(self.engine) as session:
            row = session.execute(select(CardRow).where(CardRow.card_asn == card.asn)).scalar_one()
            return account_balance(session, row.account_id).credit_balance_fen, row.shadow_balance_fen

    def agree(self, card: Card) -> None:
        """The card's ledger, its shadow and its purse agree (and the ledger balances)."""
        assert self.ledger(card) == (card.balance_fen, card.balance_fen)
        with Session(self.engine) as session:
            trial_balance(session)

    def count(self, model: Any, *where: Any) -> int:
        with Session(self.engine) as session:
            return int(session.execute(select(func.count()).select_from(model).where(*where)).scalar_one())

    def balance(self, owner_ref: str) -> int:
        with Session(self.engine) as session:
            account = session.execute(select(Account).where(Account.owner_ref == owner_ref)).scalar_one()
            return account.credits_posted - account.debits_posted


@pytest.fixture
def world(db_engine: Engine, tmp_path: Path) -> World:
    keystore = make_keystore(tmp_path)
    assert isinstance(keystore, KeyStore)
    return World(db_engine, keystore, [Card(n, balance_fen=3000) for n in range(3)], [Terminal("0000aa000001")])


@pytest.fixture
def bus() -> Terminal:
    return Terminal("0000aa000001")


def _gap(world: World, bus: Terminal) -> tuple[Card, Any]:
    """A posted S_COUNTER_GAP still open three business days on, so queued: counter 1 is held back."""
    card = world.cards[0]
    assert world.upload(bus, [bus.tap(card, 100)]) == [("accepted", "OK")]
    missing = bus.tap(card, 100)
    assert world.upload(bus, [bus.tap(card, 100)]) == [("suspect", "S_COUNTER_GAP")]
    assert world.sweep() == (1, 0)
    return card, missing


def test_writing_off_a_posted_gap_moves_nothing_and_accepting_it_succeeds(world: World, bus: Terminal) -> None:
    card, missing = _gap(world, bus)
    item = world.item("S_COUNTER_GAP")
    transfers = world.count(Transfer)
    with Session(world.engine) as session:
        seen = view(session, session.get(ExceptionItem, item.id), NOW)  # type: ignore[arg-type]
    assert seen.kind is Kind.POSTED and seen.amount_fen == 100 and "posted 100 fen" in seen.moved
    assert seen.write_off.moves_fen == 0 and seen.accept.moves_fen == 0
    decided = world.decide(write_off, item.id, note="bus B was offline; counter 1 follows")
    assert decided.state == "written_off" and decided.decision_transfer_id is None
    assert world.count(Transfer) == transfers  # the card is not debited a second time
    assert world.upload(bus, [missing]) == [("accepted", "OK")]  # the held-back record arrives
    world.agree(card)


def test_accepting_a_posted_discontinuity_closes_it_without_a_transfer_conflict(world: World, bus: Terminal) -> None:
    card = world.cards[1]
    record = bus.tap(card, 100)
    lying = sign(msgspec.structs.replace(record, balance_before_fen=record.balance_before_fen - 10))
    assert world.upload(bus, [lying]) == [("suspect", "S_BALANCE_DISCONTINUITY")]
    item = world.item("S_BALANCE_DISCONTINUITY")
    transfers = world.count(Transfer)
    decided = world.accept(item.id, note="terminal rounding; the TAC verified")
    assert decided.state == "accepted" and world.count(Transfer) == transfers
    assert world.ledger(card)[0] == card.balance_fen  # posted once, at ingest


def test_a_posted_record_is_withheld_from_the_operator_only_with_a_named_amount(world: World, bus: Terminal) -> None:
    card, missing = _gap(world, bus)
    item = world.item("S_COUNTER_GAP")
    with pytest.raises(ClearingError) as too_much:
        world.decide(write_off, item.id, note="x", amount_fen=101)
    assert too_much.value.code == "E_BAD_AMOUNT"
    operator_before = world.balance("operator:bus-1")
    decided = world.decide(write_off, item.id, note="operator cannot support this trip", amount_fen=60)
    assert (decided.decision_transfer_id, decided.decision_amount_fen) == (f"exc:{item.id}:write-off", 60)
    assert world.balance("operator:bus-1") == operator_before - 60
    assert world.balance(accounts.WRITE_OFF_INCOME_REF) == 60
    world.upload(bus, [missing])
    world.agree(card)  # the card is untouched: its purse paid, its ledger paid


def test_a_duplicates_decision_never_moves_money(world: World, bus: Terminal) -> None:
    card = world.cards[0]
    record = bus.tap(card, 100)
    assert world.upload(bus, [record]) == [("accepted", "OK")]
    assert world.upload(bus, [record]) == [("rejected", "E_DUPLICATE_TERMINAL_SEQ")]
    item = world.item("E_DUPLICATE_TERMINAL_SEQ")
    with Session(world.engine) as session:
        assert kind_of(session.get(ExceptionItem, item.id), None) is Kind.DUPLICATE  # type: ignore[arg-type]
    with pytest.raises(ClearingError) as refused:
        world.decide(write_off, item.id, note="replay", amount_fen=100)
    assert refused.value.code == "E_DECISION_NOT_ALLOWED"
    transfers = world.count(Transfer)
    assert world.decide(write_off, item.id, note="a replayed upload").state == "written_off"
    assert world.count(Transfer) == transfers
    world.agree(card)


@pytest.mark.parametrize("decision", ["accept", "write_off"])
def test_a_held_record_is_settled_once_either_way_and_the_ledger_meets_the_purse(
    world: World, bus: Terminal, decision: str
) -> None:
    card = world.cards[2]
    assert world.upload(bus, [bus.tap(card, 600)]) == [("rejected", "E_AMOUNT_LIMIT")]  # the limit is 500
    assert world.ledger(card) == (3000, 3000) and card.balance_fen == 2400  # the purse paid; the ledger did not
    item = world.item("E_AMOUNT_LIMIT")
    if decision == "accept":
        world.accept(item.id, note="a long intercity fare")
        assert world.balance("operator:bus-1") == 600
    else:
        world.decide(write_off, item.id, note="not payable to the operator")
        assert world.balance(accounts.WRITE_OFF_INCOME_REF) == 600
    world.agree(card)
    with pytest.raises(ClearingError) as again:
        world.accept(item.id)
    assert again.value.code == "E_ALREADY_DECIDED"


def test_a_forged_record_is_refused_on_accept_by_checking_its_tac(world: World, bus: Terminal) -> None:
    card = world.cards[0]
    forged = msgspec.structs.replace(bus.tap(card, 100), amount_fen=1)
    card.balance_fen += 100  # the card never paid
    assert world.upload(bus, [forged]) == [("rejected", "E_TAC_MISMATCH")]
    item = world.item("E_TAC_MISMATCH")
    with pytest.raises(ClearingError) as refused:
        world.accept(item.id)
    assert refused.value.code == "E_UNVERIFIED_RECORD" and "does not verify" in refused.value.message
    with pytest.raises(ClearingError):
        world.decide(write_off, item.id, note="forged", amount_fen=1)
    world.decide(write_off, item.id, note="forged by a tampered validator")
    assert world.count(Tap) == 0
    world.agree(card)


def test_a_record_judged_without_its_key_is_accepted_once_the_key_is_imported(world: World, bus: Terminal) -> None:
    """E_KEY_UNAVAILABLE is not a forgery: the accept verifies the TAC with the key store, now complete."""
    card = world.cards[1]
    record = sign(msgspec.structs.replace(bus.tap(card, 100), key_version=2))
    bus.pending[-1] = record
    assert world.upload(bus) == [("rejected", "E_KEY_UNAVAILABLE")]
    item = world.item("E_KEY_UNAVAILABLE")
    with pytest.raises(ClearingError) as missing:
        world.accept(item.id)
    assert missing.value.code == "E_UNVERIFIED_RECORD" and "no TAC key" in missing.value.message
    world.keystore.import_ceremony(
        {"issuers": [{"issuer_id": OWN_ISSUER, "alg_id": 0, "key_version": 2, "mpk": os.urandom(16).hex(),
                      "mlk": os.urandom(16).hex(), "mtk": bytes(b ^ 2 for b in MASTER_TAC).hex(),
                      "mamk": os.urandom(16).hex()}]}
    )  # fmt: skip
    decided = world.accept(item.id, note="key version 2 imported")
    assert decided.decision_transfer_id == f"tap:{bus.terminal_id}:{record.terminal_seq}"
    world.agree(card)


def test_a_gap_is_queued_only_when_still_open_after_its_age_and_closes_itself(world: World, bus: Terminal) -> None:
    card = world.cards[0]
    assert world.upload(bus, [bus.tap(card, 100)]) == [("accepted", "OK")]
    missing = bus.tap(card, 100)
    assert world.upload(bus, [bus.tap(card, 100)]) == [("suspect", "S_COUNTER_GAP")]
    assert world.count(ExceptionItem) == 0  # ingest queues no gap: most fill within the day
    assert world.sweep(days_on=2) == (0, 0)  # two business days on: still young
    assert world.sweep(days_on=3) == (1, 0)  # three: still open, so a person sees it
    assert world.sweep(days_on=3) == (0, 0)  # the sweep is idempotent
    item = world.item("S_COUNTER_GAP")
    assert (item.gap_first, item.gap_last, item.state) == (1, 1, "open")
    with Session(world.engine) as session:
        assert [i.code for i in list_items(session)] == ["S_COUNTER_GAP"]
    assert world.upload(bus, [missing]) == [("accepted", "OK")]  # the offline bus uploads at last
    assert world.sweep(days_on=4) == (0, 1)
    item = world.item("S_COUNTER_GAP")
    assert item.state == "resolved" and item.decided_by == "clearing" and "gap closed" in (item.note or "")
    world.agree(card)


def test_a_gap_filled_in_time_never_reaches_the_queue(world: World, bus: Terminal) -> None:
    card = world.cards[1]
    assert world.upload(bus, [bus.tap(card, 100)]) == [("accepted", "OK")]
    missing = bus.tap(card, 100)
    assert world.upload(bus, [bus.tap(card, 100)]) == [("suspect", "S_COUNTER_GAP")]
    assert world.upload(bus, [missing]) == [("accepted", "OK")]
    assert world.sweep(days_on=10) == (0, 0)
    assert world.count(ExceptionItem) == 0
    world.agree(card)


def test_the_cli_says_what_moved_and_what_a_decision_would_do_before_doing_it(
    sqlite_engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from yikatong.cli import app
    from yikatong.settings import get_settings

    kek = os.urandom(32)
    keystore = make_keystore(tmp_path, kek)
    assert isinstance(keystore, KeyStore)
    monkeypatch.setenv("YIKATONG_KEK", kek.hex())
    bus = Terminal("0000aa000001")
    world = World(sqlite_engine, keystore, [Card(n, balance_fen=3000) for n in range(3)], [bus])
    _card, _ = _gap(world, bus)
    assert world.upload(bus, [bus.tap(world.cards[2], 600)]) == [("rejected", "E_AMOUNT_LIMIT")]
    monkeypatch.setenv("YIKATONG_DATABASE_URL", str(sqlite_engine.url))
    monkeypatch.setenv("YIKATONG_KEYSTORE", str(keystore.path))
    monkeypatch.setenv("COLUMNS", "250")
    get_settings.cache_clear()
    runner = CliRunner()
    try:
        listed = runner.invoke(app, ["exceptions", "list"])
        assert listed.exit_code == 0, listed.output
        assert "S_COUNTER_GAP" in listed.output and "posted 100 fen" in listed.output
        assert "E_AMOUNT_LIMIT" in listed.output and "re-verifies the TAC" in listed.output
        gap = world.item("S_COUNTER_GAP")
        shown = runner.invoke(app, ["exceptions", "show", str(gap.id)])
        assert shown.exit_code == 0 and "write-off would: closes the item; moves nothing" in shown.output
        refused = runner.invoke(app, ["exceptions", "write-off", str(gap.id), "--note", "x"], input="n\n")
        assert refused.exit_code == 1 and "E_ABORTED" in refused.output
        assert world.item("S_COUNTER_GAP").state == "open"
        done = runner.invoke(app, ["exceptions", "write-off", str(gap.id), "--note", "offline bus", "--yes"])
        assert done.exit_code == 0 and "nothing moved" in done.output, done.output
        held = world.item("E_AMOUNT_LIMIT")
        accepted = runner.invoke(app, ["exceptions", "accept", str(held.id), "--yes"])
        assert accepted.exit_code == 0 and f"tap:{bus.terminal_id}:" in accepted.output, accepted.output
        again = runner.invoke(app, ["exceptions", "accept", str(held.id), "--yes"])
        assert again.exit_code == 1 and "E_ALREADY_DECIDED" in again.output
    finally:
        get_settings.cache_clear()
