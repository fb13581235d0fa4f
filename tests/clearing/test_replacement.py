"""Replacing a lost card moves its balance once, reconciled to the fen; late records stay visible.

Every record here goes through real ingest (TACs verified with the key store's keys); the old
card is an emulated purse (``tapfactory.Card``), the new one is issued by ``clearing.issuance``
from the same key store. The purse oracle: what the emulated old purse holds at the end equals
what moved to the new card less the shortfall that ``replacement.shortfalls`` shows.
"""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session
from tapfactory import OWN_ISSUER, T0, Card, Terminal, make_keystore, register_world

from clearing import db, denylist, loads, replacement
from clearing.errors import ClearingError
from clearing.exceptions_queue import accept
from clearing.ingest import TacKeys, keystore_dtk, make_ingestor, prepare
from clearing.keystore import KeyStore
from clearing.ledger import account_balance, trial_balance
from clearing.models import Account, CardReplacement, CardStatus, ExceptionItem, Transfer, TransferCode
from clearing.models import Card as CardRow
from clearing.validation import Limits

NOW = T0 + dt.timedelta(hours=12)
WAIT_S = 3600
BUS = "0000aa000001"


# --- the pure rule -------------------------------------------------------------------------------


@given(st.integers(0, 10**9), st.integers(0, 10**9))
def test_the_move_conserves_the_liability_and_never_moves_what_held_records_spent(liability: int, held: int) -> None:
    plan = replacement.plan_move(liability, held)
    assert plan.moved_fen + plan.retained_fen == liability
    assert plan.moved_fen == max(0, liability - held)
    assert plan.retained_fen == min(liability, held)
    assert plan.moved_fen >= 0 and plan.retained_fen >= 0


@pytest.mark.parametrize("bad", [-1, 1.5, True, "100", None])
def test_the_rule_refuses_anything_but_whole_non_negative_fen(bad: Any) -> None:
    with pytest.raises(ValueError, match="integer of fen"):
        replacement.plan_move(bad, 0)
    with pytest.raises(ValueError, match="integer of fen"):
        replacement.plan_move(0, bad)


@given(st.integers(0, 10**6), st.integers(0, 10**6))
def test_a_shortfall_is_what_held_records_need_beyond_the_liability(available: int, held: int) -> None:
    assert replacement.shortfall_fen(available, held) == max(0, held - available)


# --- the world ------------------------------------------------------------------------------------


class World:
    def __init__(self, engine: Engine, keystore: KeyStore, balance_fen: int = 3000) -> None:
        self.engine = engine
        self.keystore = keystore
        self.card = Card(0, balance_fen=balance_fen)
        self.opening_fen = balance_fen
        self.bus = Terminal(BUS)
        with Session(engine) as session:
            register_world(session, [self.card], [BUS])
        self.ingestor = make_ingestor(engine, clock=lambda: NOW.astimezone(dt.UTC), limits=Limits(amount_fen_max=500))
        self.keys = TacKeys(keystore_dtk(keystore), keystore.issuers())

    def tap(self, amount_fen: int, minutes: int) -> Any:
        return self.bus.tap(self.card, amount_fen, T0 + dt.timedelta(minutes=minutes))

    def upload(self, records: list[Any]) -> list[tuple[str, str]]:
        if not records:
            return []
        result = self.ingestor.ingest(prepare(BUS, self.bus.batch(records), self.keys))
        return [(v["verdict"], v["code"]) for v in msgspec.json.decode(result.answer)["verdicts"]]

    def report_lost(self, minutes: int) -> None:
        """What the portal's report does in clearing: the denylist entry and the card's status."""
        with Session(self.engine) as session, session.begin():
            denylist.add(session, OWN_ISSUER, self.card.asn, "lost", effective_at=T0 + dt.timedelta(minutes=minutes))
            row = session.execute(select(CardRow).where(CardRow.card_asn == self.card.asn)).scalar_one()
            row.status = CardStatus.LOST.value

    def replace(self, at: dt.datetime = NOW) -> replacement.Replacement:
        with Session(self.engine) as session, session.begin():
            return replacement.replace(
                session, self.keystore, issuer_id=OWN_ISSUER, card_asn=self.card.asn, now=at.astimezone(dt.UTC),
                wait_s=WAIT_S, replaced_by="staff:clerk1",
            )  # fmt: skip

    def available(self, asn: str) -> int:
        with Session(self.engine) as session:
            row = session.execute(select(CardRow).where(CardRow.card_asn == asn)).scalar_one()
            return account_balance(session, row.account_id).available_credit_fen

    def shadow(self, asn: str) -> int:
        with Session(self.engine) as session:
            return int(session.execute(select(CardRow.shadow_balance_fen).where(CardRow.card_asn == asn)).scalar_one())

    def count(self, model: Any, *where: Any) -> int:
        with Session(self.engine) as session:
            return int(session.execute(select(func.count()).select_from(model).where(*where)).scalar_one())

    def shortfall(self) -> int:
        with Session(self.engine) as session:
            return sum(s.shortfall_fen for s in replacement.shortfalls(session))

    def value_conserved(self) -> None:
        """Every fen sold with the card is on a card, paid to the operator, or written off; the ledger balances."""
        with Session(self.engine) as session:
            trial_balance(session)
            by_code = dict(
                session.execute(
                    select(Account.code, func.sum(Account.credits_posted - Account.debits_posted)).group_by(
                        Account.code
                    )
                ).all()
            )
        float_fen = -by_code.get(300, 0)  # issuer float is debit-normal
        assert float_fen == self.opening_fen
        assert by_code.get(100, 0) + by_code.get(200, 0) + by_code.get(410, 0) == self.opening_fen


@pytest.fixture
def world(db_engine: Engine, tmp_path: Path) -> World:
    keystore = make_keystore(tmp_path)
    assert isinstance(keystore, KeyStore)
    return World(db_engine, keystore)


# --- examples ----------------------------------------------------------------------------------------


def test_the_balance_less_what_the_lost_card_spent_before_the_validators_knew_moves_once(world: World) -> None:
    assert world.upload([world.tap(200, 10), world.tap(300, 20)]) == [("accepted", "OK")] * 2
    world.report_lost(30)
    # Before the validator's next poll the card still pays: that record clears later, against the old card.
    assert world.upload([world.tap(100, 40)]) == [("rejected", "E_DENYLISTED")]
    done = world.replace()
    assert not done.replayed and done.image is not None
    assert (done.plan.liability_fen, done.plan.held_fen, done.plan.moved_fen, done.plan.retained_fen) == (
        2500, 100, 2400, 100,
    )  # fmt: skip
    # the purse oracle: what the lost purse held when it was last used is on the new card, to the fen
    assert done.image.purse.balance_fen == world.card.balance_fen == 2400
    assert world.available(done.new_card_asn) == world.shadow(done.new_card_asn) == 2400
    assert world.available(world.card.asn) == 100
    with Session(world.engine) as session:
        move = session.get(Transfer, done.transfer_id)
        assert move is not None and move.code == TransferCode.BALANCE_MOVE and move.amount_fen == 2400
        old = session.execute(select(CardRow).where(CardRow.card_asn == world.card.asn)).scalar_one()
        new = session.execute(select(CardRow).where(CardRow.card_asn == done.new_card_asn)).scalar_one()
        assert old.status == "replaced" and old.replaced_by_id == new.id and new.status == "active"
        assert (move.debit_account_id, move.credit_account_id) == (old.account_id, new.account_id)
    world.value_conserved()
    # the held record clears against the old card: the retained 100 fen pay the operator
    item_id = world.count(ExceptionItem)
    with Session(world.engine) as session, session.begin():
        accept(session, world.keystore, item_id, now=NOW, decided_by="clerk")
    assert world.available(world.card.asn) == 0 and world.shortfall() == 0
    world.value_conserved()


def test_replaying_the_replacement_moves_nothing_more(world: World) -> None:
    world.upload([world.tap(200, 10)])
    world.report_lost(30)
    first = world.replace()
    transfers = world.count(Transfer)
    again = world.replace(NOW + dt.timedelta(hours=1))
    assert again.replayed and again.image is None
    assert (again.new_card_asn, again.transfer_id, again.plan) == (first.new_card_asn, first.transfer_id, first.plan)
    assert world.count(Transfer) == transfers and world.count(CardReplacement) == 1
    assert world.count(CardRow) == 2
    world.value_conserved()


def test_a_record_arriving_after_the_move_is_held_and_shown_never_paid_from_nothing(world: World) -> None:
    world.upload([world.tap(200, 10)])
    late = world.tap(150, 20)  # tapped before the report, uploaded only after the replacement
    world.report_lost(30)
    done = world.replace()
    assert done.plan.moved_fen == 2800 and world.available(world.card.asn) == 0
    assert world.upload([late]) == [("suspect", "S_BALANCE_DISCONTINUITY")]
    assert world.available(world.card.asn) == 0  # the liability never goes below zero
    with Session(world.engine) as session:
        [short] = replacement.shortfalls(session)
    assert (short.card_asn, short.shortfall_fen, short.held_fen, short.available_fen) == (world.card.asn, 150, 150, 0)
    # the oracle: the lost purse holds what moved, less the shortfall on record
    assert world.card.balance_fen == done.plan.moved_fen - short.shortfall_fen
    world.value_conserved()


def test_a_card_not_reported_lost_is_not_replaced(world: World) -> None:
    with pytest.raises(ClearingError) as refused:
        world.replace()
    assert refused.value.code.value == "E_CARD_NOT_LOST"
    assert world.count(CardReplacement) == 0 and world.count(CardRow) == 1


def test_the_waiting_period_comes_first(world: World) -> None:
    world.report_lost(30)
    with pytest.raises(ClearingError) as refused:
        world.replace(T0 + dt.timedelta(minutes=30, seconds=WAIT_S - 1))
    assert refused.value.code.value == "E_REPLACEMENT_TOO_EARLY"
    assert not world.replace(T0 + dt.timedelta(minutes=30, seconds=WAIT_S)).replayed


def test_a_card_with_a_load_waiting_is_not_replaced_until_the_load_is_settled(world: World) -> None:
    with Session(world.engine) as session, session.begin():
        loads.create_pending(session, "ld_waiting", OWN_ISSUER, world.card.asn, 500)
    world.report_lost(30)
    with pytest.raises(ClearingError) as refused:
        world.replace()
    assert refused.value.code.value == "E_REPLACEMENT_LOADS_OPEN"
    with Session(world.engine) as session, session.begin():
        loads.cancel(session, "ld_waiting")
    assert world.replace().plan.moved_fen == 3000


def test_an_unknown_card_is_refused(world: World) -> None:
    with Session(world.engine) as session, pytest.raises(ClearingError) as refused:
        replacement.replace(
            session, world.keystore, issuer_id=OWN_ISSUER, card_asn="3104" + "9" * 16, now=NOW.astimezone(dt.UTC),
            wait_s=0, replaced_by="staff:x",
        )  # fmt: skip
    assert refused.value.code.value == "E_UNKNOWN_CARD"


# --- any story: money conserved, replay inert, purse oracle ----------------------------------------


@pytest.fixture(scope="module")
def template_and_keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, KeyStore, Path]:
    where = tmp_path_factory.mktemp("replacement")
    path = where / "template.db"
    db.upgrade(f"sqlite:///{path}")
    engine = db.make_engine(f"sqlite:///{path}")
    with engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    engine.dispose()
    keystore = make_keystore(where)
    assert isinstance(keystore, KeyStore)
    return path, keystore, where


_story = st.tuples(
    st.lists(st.tuples(st.integers(1, 400), st.booleans()), min_size=0, max_size=6),  # (amount, uploaded late)
    st.integers(0, 6),  # taps before the report
)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(story=_story, example=st.uuids())
def test_any_story_conserves_money_replays_inertly_and_matches_the_purse(
    template_and_keys: tuple[Path, KeyStore, Path], story: tuple[list[tuple[int, bool]], int], example: Any
) -> None:
    template, keystore, where = template_and_keys
    path = where / f"{example}.db"
    shutil.copyfile(template, path)
    engine = db.make_engine(f"sqlite:///{path}")
    try:
        taps, reported_after = story
        world = World(engine, keystore)
        early, late = [], []
        for i, (amount, is_late) in enumerate(taps):
            record = world.tap(amount, 10 * (i + 1) + (5 if i >= reported_after else 0))
            (late if is_late else early).append(record)
        world.report_lost(10 * min(reported_after, len(taps)) + 7)
        world.upload(early)
        done = world.replace()
        world.value_conserved()
        assert world.available(done.new_card_asn) == world.shadow(done.new_card_asn) == done.plan.moved_fen
        world.upload(late)
        world.value_conserved()
        again = world.replace(NOW + dt.timedelta(hours=2))
        assert again.replayed and again.plan == done.plan and world.count(CardReplacement) == 1
        assert world.available(done.new_card_asn) == done.plan.moved_fen  # nothing more moved
        # the purse oracle: the lost purse == what moved − the shortfall shown to staff
        assert world.card.balance_fen == done.plan.moved_fen - world.shortfall()
        if not late:
            assert world.card.balance_fen == done.plan.moved_fen and world.shortfall() == 0
    finally:
        engine.dispose()
        path.unlink(missing_ok=True)
