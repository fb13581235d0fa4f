"""Batch ingest on SQLite and PostgreSQL: posting, idempotency, exception queue, identical results."""

from __future__ import annotations

import datetime as dt
from typing import Any

import msgspec
import pytest
from sqlalchemy import Engine, func, select, text
from sqlalchemy.orm import Session
from tapfactory import OWN_ISSUER, PEER_ISSUER, T0, Card, Terminal, dtk_lookup, journey, register_world

from clearing.contract import Batch
from clearing.errors import ClearingError
from clearing.ingest import IngestResult, TacKeys, make_ingestor, prepare
from clearing.ledger import trial_balance
from clearing.models import Account, BatchRow, ExceptionItem, InteropForward, Tap, Transfer
from clearing.models import Card as CardRow
from clearing.refunds import default_refunds

NOW = T0 + dt.timedelta(days=1)


def clock() -> dt.datetime:
    return NOW.astimezone(dt.UTC)


class Clearing:
    """One database, its ingest path and the TAC keys: what a clearing worker holds."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.ingestor = make_ingestor(engine, clock=clock, refund_pricer=default_refunds())
        self.keys = TacKeys(dtk_lookup, [OWN_ISSUER])

    def upload(self, terminal_id: str, batch: Batch) -> IngestResult:
        return self.ingestor.ingest(prepare(terminal_id, batch, self.keys))

    def verdicts(self, result: IngestResult) -> list[tuple[str, str]]:
        answer = msgspec.json.decode(result.answer)
        return [(v["verdict"], v["code"]) for v in answer["verdicts"]]

    def scalar(self, stmt: Any) -> Any:
        with Session(self.engine) as session:
            return session.execute(stmt).scalar_one()

    def card(self, card: Card) -> CardRow:
        with Session(self.engine) as session:
            return session.execute(select(CardRow).where(CardRow.card_asn == card.asn)).scalar_one()

    def balanced(self) -> int:
        with Session(self.engine) as session:
            return trial_balance(session).debits_posted


@pytest.fixture
def clearing(db_engine: Engine) -> Clearing:
    return Clearing(db_engine)


def setup(clearing: Clearing, cards: list[Card], terminals: list[Terminal]) -> None:
    with Session(clearing.engine) as session:
        register_world(session, cards, [t.terminal_id for t in terminals])


def test_accepted_batch_posts_transfers_and_moves_the_shadow(clearing: Clearing) -> None:
    cards = [Card(n, balance_fen=1000) for n in range(3)]
    term = Terminal("0000aa000001")
    setup(clearing, cards, [term])
    for card in cards:
        term.tap(card, 200)
        term.tap(card, 100)
    result = clearing.upload(term.terminal_id, term.batch())
    assert not result.replayed
    assert clearing.verdicts(result) == [("accepted", "OK")] * 6
    assert clearing.scalar(select(func.count()).select_from(Transfer).where(Transfer.id.like("tap:%"))) == 6
    assert clearing.scalar(select(func.count()).select_from(Tap)) == 6
    row = clearing.card(cards[0])
    assert (row.shadow_balance_fen, row.last_offline_counter) == (700, 1)
    payable = clearing.scalar(select(Account.credits_posted).where(Account.owner_ref == "operator:bus-1"))
    assert payable == 900
    assert clearing.balanced() == 3000 + 900
    status = clearing.scalar(select(BatchRow.status))
    assert status == "done"


def test_replayed_batch_posts_nothing_and_returns_the_same_bytes(clearing: Clearing) -> None:
    card = Card(1)
    term = Terminal("0000aa000001")
    setup(clearing, [card], [term])
    term.tap(card)
    batch = term.batch()
    first = clearing.upload(term.terminal_id, batch)
    posted = clearing.balanced()
    again = clearing.upload(term.terminal_id, batch)
    assert again.replayed and again.answer == first.answer
    assert clearing.balanced() == posted
    assert clearing.scalar(select(func.count()).select_from(Tap)) == 1


def test_same_batch_seq_with_other_content_conflicts(clearing: Clearing) -> None:
    card = Card(1)
    term = Terminal("0000aa000001")
    setup(clearing, [card], [term])
    record = term.tap(card)
    clearing.upload(term.terminal_id, Batch(1, T0.isoformat(), [record]))
    with pytest.raises(ClearingError) as caught:
        clearing.upload(term.terminal_id, Batch(1, T0.isoformat(), [record, term.tap(card)]))
    assert caught.value.code.value == "E_BATCH_CONFLICT"
    assert clearing.scalar(select(func.count()).select_from(Tap)) == 1


def test_record_seen_in_an_earlier_batch_is_a_duplicate(clearing: Clearing) -> None:
    card = Card(1)
    term = Terminal("0000aa000001")
    setup(clearing, [card], [term])
    record = term.tap(card)
    clearing.upload(term.terminal_id, Batch(1, T0.isoformat(), [record]))
    posted = clearing.balanced()
    result = clearing.upload(term.terminal_id, Batch(2, T0.isoformat(), [record, term.tap(card)]))
    assert clearing.verdicts(result) == [("rejected", "E_DUPLICATE_TERMINAL_SEQ"), ("accepted", "OK")]
    assert clearing.balanced() == posted + 200


def test_rejections_and_suspects_go_to_the_exception_queue(clearing: Clearing) -> None:
    good, gap = Card(1), Card(2)
    term = Terminal("0000aa000001")
    setup(clearing, [good, gap], [term])
    forged = msgspec.structs.replace(term.tap(good), amount_fen=1)
    gap.counter += 3
    suspect = term.tap(gap)  # first cleared counter is 3: the shadow is fine, but counters 0..2 are missing
    gap_row_counter = suspect.offline_counter
    result = clearing.upload(term.terminal_id, term.batch([forged, suspect]))
    verdicts = clearing.verdicts(result)
    assert verdicts[0] == ("rejected", "E_TAC_MISMATCH")
    assert verdicts[1][0] == "accepted"  # no counter cleared before: nothing to compare with
    with Session(clearing.engine) as session:
        items = session.execute(select(ExceptionItem).order_by(ExceptionItem.id)).scalars().all()
        assert [i.code for i in items] == ["E_TAC_MISMATCH"]
        assert items[0].tap_id is None and items[0].record is not None
        assert items[0].record["amount_fen"] == 1 and items[0].terminal_seq == forged.terminal_seq
        # the forgery left no tap row and no natural key behind
        assert session.execute(select(func.count()).select_from(Tap)).scalar_one() == 1
    assert gap_row_counter == 3
    later = term.tap(gap)
    gap.counter += 1
    after_gap = term.tap(gap)
    result = clearing.upload(term.terminal_id, term.batch([later, after_gap]))
    assert clearing.verdicts(result) == [("accepted", "OK"), ("suspect", "S_COUNTER_GAP")]
    with Session(clearing.engine) as session:
        # the gap waits on its tap row, not in the queue: it is queued only if still open days on
        assert session.execute(select(ExceptionItem).where(ExceptionItem.code == "S_COUNTER_GAP")).first() is None
        tap = session.execute(select(Tap).where(Tap.offline_counter == 6)).scalar_one()
        assert (tap.verdict, tap.transfer_id) == ("suspect", f"tap:{term.terminal_id}:{after_gap.terminal_seq}")
        assert (tap.gap_first, tap.gap_last) == (5, 5)


def test_peer_cards_are_forwarded_stored_and_not_posted(clearing: Clearing) -> None:
    xian = Card(7, issuer_id=PEER_ISSUER)
    term = Terminal("0000aa000001")
    setup(clearing, [xian], [term])
    term.tap(xian)
    result = clearing.upload(term.terminal_id, term.batch())
    assert clearing.verdicts(result) == [("forwarded", "I_FORWARDED_INTEROP")]
    assert clearing.scalar(select(InteropForward.state)) == "forwarded"
    assert clearing.scalar(select(func.count()).select_from(Tap)) == 0  # it claims no natural key
    assert clearing.scalar(select(func.count()).select_from(Transfer).where(Transfer.id.like("tap:%"))) == 0


def test_a_late_record_from_another_terminal_fills_the_gap(clearing: Clearing) -> None:
    card = Card(1, balance_fen=1000)
    bus_a, bus_b = Terminal("0000aa000001"), Terminal("0000aa000002")
    setup(clearing, [card], [bus_a, bus_b])
    bus_a.tap(card, 100)  # counter 0
    offline = bus_b.tap(card, 100)  # counter 1, bus B uploads a day later
    bus_a.tap(card, 100)  # counter 2
    bus_a.tap(card, 100)  # counter 3
    result = clearing.upload(bus_a.terminal_id, bus_a.batch())
    assert clearing.verdicts(result) == [("accepted", "OK"), ("suspect", "S_COUNTER_GAP"), ("accepted", "OK")]
    result = clearing.upload(bus_b.terminal_id, bus_b.batch([offline]))
    assert clearing.verdicts(result) == [("accepted", "OK")]
    row = clearing.card(card)
    assert (row.shadow_balance_fen, row.last_offline_counter) == (600, 3)
    assert clearing.balanced() == 1000 + 400


def test_the_denylist_rejects_taps_after_the_listing(clearing: Clearing) -> None:
    from clearing.models import DenylistEntryRow

    card = Card(1, balance_fen=1000)
    term = Terminal("0000aa000001")
    setup(clearing, [card], [term])
    with Session(clearing.engine) as session:
        session.add(
            DenylistEntryRow(
                issuer_id=OWN_ISSUER,
                card_asn=card.asn,
                reason="lost",
                effective_at=T0 + dt.timedelta(hours=1),
                added_version=1,
            )
        )
        session.commit()
    term.tap(card, 100, when=T0)
    term.tap(card, 100, when=T0 + dt.timedelta(hours=2))
    result = clearing.upload(term.terminal_id, term.batch())
    assert clearing.verdicts(result) == [("accepted", "OK"), ("rejected", "E_DENYLISTED")]
    assert clearing.scalar(select(func.count()).select_from(Tap)) == 2  # authentic: stored, keys claimed


def _snapshot(engine: Engine) -> dict[str, Any]:
    """Everything ingest writes, without surrogate ids."""
    with engine.connect() as conn:

        def plain(value: Any) -> Any:
            if isinstance(value, dt.date):
                return value.isoformat()
            return int(value) if isinstance(value, bool) else value

        def rows(sql: str) -> list[tuple[Any, ...]]:
            return [tuple(plain(v) for v in r) for r in conn.execute(text(sql))]

        return {
            "taps": rows(
                "SELECT terminal_id, terminal_seq, batch_seq, issuer_id, card_asn, offline_counter, tx_type, "
                "amount_fen, balance_before_fen, business_day, verdict, code, message, transfer_id, fare_product_id, "
                "tx_utc_offset_min, fare_tap_kind, fare_tariff_version, fare_refund_claimed_fen, refund_fen, "
                "gap_first, gap_last FROM taps ORDER BY terminal_id, terminal_seq"
            ),
            "transfers": rows(
                "SELECT t.id, d.owner_ref, c.owner_ref, t.amount_fen, t.code, t.state, t.source_ref FROM transfers t "
                "JOIN accounts d ON d.id = t.debit_account_id JOIN accounts c ON c.id = t.credit_account_id "
                "ORDER BY t.id"
            ),
            "accounts": rows("SELECT owner_ref, debits_posted, credits_posted FROM accounts ORDER BY owner_ref"),
            "cards": rows(
                "SELECT card_asn, shadow_balance_fen, last_offline_counter, status FROM cards ORDER BY card_asn"
            ),
            "exceptions": rows(
                "SELECT terminal_id, terminal_seq, batch_seq, code, message, tap_id IS NULL, state, gap_first, "
                "gap_last, note FROM exception_items ORDER BY terminal_id, terminal_seq, code"
            ),
            "batches": rows("SELECT terminal_id, batch_seq, status, answer FROM batches ORDER BY 1, 2"),
            "loads": rows(
                "SELECT l.id, l.card_asn, l.amount_fen, l.state, l.kind, a.owner_ref FROM pending_loads l "
                "JOIN accounts a ON a.id = l.payer_account_id ORDER BY l.id"
            ),
            "forwards": rows(
                "SELECT terminal_id, terminal_seq, record_digest, issuer_id, card_asn, offline_counter, amount_fen, "
                "business_day, state FROM interop_forwards ORDER BY terminal_id, terminal_seq, record_digest"
            ),
        }


def _scenario(engine: Engine) -> list[bytes]:
    clearing = Clearing(engine)
    cards = [Card(n, balance_fen=2000) for n in range(6)] + [Card(99, issuer_id=PEER_ISSUER)]
    terms = [Terminal("0000aa000001"), Terminal("0000aa000002")]
    setup(clearing, cards, terms)
    answers = []
    late = []
    for step in range(3):
        for i, card in enumerate(cards):
            term = terms[(i + step) % 2]
            record = term.tap(card, 100 + 10 * i)
            if step == 1 and i == 2:  # held back: arrives in a later batch
                term.pending.remove(record)
                late.append((term, record))
        forged = msgspec.structs.replace(terms[0].tap(cards[0], 50), amount_fen=5)
        terms[0].pending[-1] = forged
        for term in terms:
            batch = term.batch()
            answers.append(clearing.upload(term.terminal_id, batch).answer)
            answers.append(clearing.upload(term.terminal_id, batch).answer)  # replay
    for term, record in late:
        answers.append(clearing.upload(term.terminal_id, term.batch([record, record])).answer)
    journey(terms[0], cards[1], "ic_airport", at=T0 + dt.timedelta(hours=3))
    answers.append(clearing.upload(terms[0].terminal_id, terms[0].batch()).answer)
    # front-door tap-on on one validator, back-door tap-off on the other, uploaded first: the
    # refund waits for the entry, which fills the gap and pays it when it arrives
    _tap_on, _tap_off = journey(
        terms[1], cards[3], "ic_weicheng", at=T0 + dt.timedelta(hours=4), exit_terminal=terms[0]
    )
    answers.append(clearing.upload(terms[0].terminal_id, terms[0].batch()).answer)
    answers.append(clearing.upload(terms[1].terminal_id, terms[1].batch()).answer)
    return answers


@pytest.mark.postgres
def test_sqlite_and_postgresql_paths_write_the_same(sqlite_engine: Engine, pg_engine: Engine) -> None:
    assert _scenario(sqlite_engine) == _scenario(pg_engine)
    lite, pg = _snapshot(sqlite_engine), _snapshot(pg_engine)
    for table in lite:
        assert lite[table] == pg[table], table
    assert {row[3] for row in lite["exceptions"]} >= {"E_TAC_MISMATCH"}
    assert [row[-2:] for row in lite["taps"] if row[11] == "S_COUNTER_GAP"]  # gaps on their tap rows
    assert all(row[-2:] == (None, None) for row in lite["taps"] if row[11] != "S_COUNTER_GAP")
    assert [(row[2], row[4]) for row in lite["loads"]] == [(300, "refund"), (600, "refund")]
    assert len(lite["forwards"]) == 3


@pytest.mark.postgres
def test_a_card_cleared_by_another_worker_meanwhile_is_judged_again(pg_engine: Engine) -> None:
    """Phase 1 judged against a snapshot; another batch cleared the card before phase 2 locked it."""
    import threading

    from clearing.ingest_pg import PgIngestor

    card = Card(1, balance_fen=1000)
    bus_a, bus_b = Terminal("0000aa000001"), Terminal("0000aa000002")
    setup(Clearing(pg_engine), [card], [bus_a, bus_b])
    first = Clearing(pg_engine)
    first.upload(bus_a.terminal_id, bus_a.batch([bus_a.tap(card, 100)]))  # counter 0 cleared
    middle = bus_b.tap(card, 100)  # counter 1, on bus B
    last = bus_a.tap(card, 100)  # counter 2, on bus A
    slow, fast = Clearing(pg_engine), Clearing(pg_engine)
    assert isinstance(slow.ingestor, PgIngestor)
    paused, resume = threading.Event(), threading.Event()

    def pause(_: object) -> None:
        paused.set()
        assert resume.wait(20)

    slow.ingestor.between_phases = pause
    results: list[IngestResult] = []
    worker = threading.Thread(target=lambda: results.append(slow.upload(bus_a.terminal_id, bus_a.batch([last]))))
    worker.start()
    assert paused.wait(20)  # counter 2 judged against "last cleared 0": a gap, written as suspect
    fast.upload(bus_b.terminal_id, bus_b.batch([middle]))  # counter 1 commits meanwhile
    resume.set()
    worker.join(20)
    assert clearing_verdicts(results[0]) == [("accepted", "OK")]  # re-judged under the lock: no gap
    with Session(pg_engine) as session:
        assert session.execute(select(Tap.verdict).where(Tap.terminal_seq == last.terminal_seq)).all() == [
            ("accepted",)
        ]
        assert session.execute(select(func.count()).select_from(ExceptionItem)).scalar_one() == 0
    row = slow.card(card)
    assert (row.shadow_balance_fen, row.last_offline_counter) == (700, 2)
    assert slow.balanced() == 1000 + 300


def clearing_verdicts(result: IngestResult) -> list[tuple[str, str]]:
    answer = msgspec.json.decode(result.answer)
    return [(v["verdict"], v["code"]) for v in answer["verdicts"]]
