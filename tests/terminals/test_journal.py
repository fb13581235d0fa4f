"""The journal: durable, append-only, batches cut once and replayed byte for byte."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import msgspec
import pytest

from clearing.contract import BatchAnswer, TapRecord, Verdict, decode_batch, encode
from terminals.errors import DuplicateCardRecord, JournalError
from terminals.journal import Journal


def record(seq: int, *, asn: str = "03104000000000000001", counter: int | None = None, **changes: object) -> TapRecord:
    base = TapRecord(
        terminal_id="360486600002",
        terminal_seq=seq,
        psam_serial="00000000000000000001",
        issuer_id="01007120ffffffff",
        card_asn=asn,
        card_type="ordinary",
        tx_type=9,
        amount_fen=200,
        balance_before_fen=5_000,
        offline_counter=seq if counter is None else counter,
        tx_time="2025-06-02T08:00:00+08:00",
        key_version=1,
        alg_id=0,
        tac="01020304",
    )
    return msgspec.structs.replace(base, **changes)


@pytest.fixture
def journal(tmp_path: Path) -> Journal:
    with Journal(tmp_path / "j.db") as j:
        yield j


def answer_for(body: bytes) -> bytes:
    batch = decode_batch(body)
    verdicts = [Verdict(r.terminal_seq, "accepted", "OK", "") for r in batch.records]
    return encode(BatchAnswer(batch.batch_seq, "2025-06-02T09:00:00Z", verdicts))


def test_the_journal_runs_in_wal_mode_with_full_sync(journal: Journal) -> None:
    db = sqlite3.connect(journal.path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert journal._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_appended_records_survive_a_reopen_in_order(tmp_path: Path) -> None:
    with Journal(tmp_path / "j.db") as j:
        for seq in (3, 1, 2):
            j.append(record(seq))
    with Journal(tmp_path / "j.db") as j:
        assert [t.record.terminal_seq for t in j.iter_taps()] == [3, 1, 2]
        assert j.count() == 3


def test_the_same_terminal_sequence_or_card_counter_cannot_be_journaled_twice(journal: Journal) -> None:
    journal.append(record(1))
    with pytest.raises(JournalError):
        journal.append(record(1, asn="03104000000000000009"))
    with pytest.raises(DuplicateCardRecord):  # the card's fault: kept as a fraud event, not a tap
        journal.append(record(2, counter=1))
    assert journal.count() == 1 and journal.fraud_count() == 1


def test_taps_are_append_only(journal: Journal) -> None:
    journal.append(record(1))
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        journal._db.execute("UPDATE taps SET amount_fen = 0")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        journal._db.execute("DELETE FROM taps")


def test_records_that_break_the_money_rules_are_refused(journal: Journal) -> None:
    with pytest.raises(JournalError):
        journal.append(record(1, amount_fen=6_000))
    with pytest.raises(JournalError):
        journal.append(record(1, status="blocked"))


def test_a_pending_debit_is_closed_by_the_append_of_the_same_tap(journal: Journal) -> None:
    pending = record(7, tac="00000000")
    journal.save_pending(pending)
    assert journal.pending_for(pending.issuer_id, pending.card_asn).record == pending
    journal.append(record(8, counter=99))  # another tap of the same card does not close it
    assert journal.pending_for(pending.issuer_id, pending.card_asn) is not None
    journal.append(record(7))
    assert journal.pending() == []


def test_resolved_pending_is_kept_for_audit(journal: Journal) -> None:
    pending = record(7, tac="00000000")
    journal.save_pending(pending)
    journal.resolve_pending(pending, "not_debited")
    assert journal.pending() == [] and journal.resolved_pending() == [("not_debited", pending)]


def test_last_paid_ignores_blocked_records(journal: Journal) -> None:
    card = ("01007120ffffffff", "03104000000000000001", 9)
    journal.append(record(1, amount_fen=0, status="blocked"))
    assert journal.last_paid_epoch_s(*card, 0) is None
    journal.append(record(2, tx_time="2025-06-02T08:00:30+08:00"))
    assert journal.last_paid_epoch_s(*card, 0) == 1748822430
    assert journal.last_paid_epoch_s(*card, 1748822431) is None


def test_last_paid_answers_the_same_from_memory_and_from_sql(tmp_path: Path) -> None:
    card = ("01007120ffffffff", "03104000000000000001", 9)
    with Journal(tmp_path / "j.db") as j:
        j.append(record(1, tx_time="2025-06-02T08:00:30+08:00"))
        j.append(record(2, asn="03104000000000000002", tx_time="2025-06-02T09:00:00+08:00"))
        from_memory = [j.last_paid_epoch_s(*card, since) for since in (0, 1748822430, 1748822431)]
        j._cached_after_epoch_s = 1 << 40  # force the SQL path
        from_sql = [j.last_paid_epoch_s(*card, since) for since in (0, 1748822430, 1748822431)]
        assert from_memory == from_sql == [1748822430, 1748822430, None]
    with Journal(tmp_path / "j.db") as j:  # reloaded from the file
        assert j.last_paid_epoch_s(*card, 0) == 1748822430
        j.save_pending(record(3, tac="00000000"))
    with Journal(tmp_path / "j.db") as j:
        assert j.pending_for(card[0], card[1]) is not None


def test_a_batch_is_cut_once_and_every_attempt_sends_the_same_bytes(tmp_path: Path) -> None:
    with Journal(tmp_path / "j.db") as j:
        for seq in range(1, 6):
            j.append(record(seq))
        batch = j.next_batch(3)
        assert batch is not None and (batch.batch_seq, batch.records, batch.terminal_seqs) == (1, 3, (1, 2, 3))
        assert decode_batch(batch.body).records == [record(s) for s in (1, 2, 3)]
        j.append(record(6))
    with Journal(tmp_path / "j.db") as j:  # a restart before the answer: the same batch again
        again = j.next_batch(3)
        assert again == batch
        j.store_answer(again, answer_for(again.body))
        second = j.next_batch(3)
        assert second is not None and (second.batch_seq, second.terminal_seqs) == (2, (4, 5, 6))
        j.store_answer(second, answer_for(second.body))
        assert j.next_batch(3) is None
        assert j.unanswered_records() == 0
        assert len(j.verdicts()) == 6


def test_a_batch_holds_one_terminal_id(journal: Journal) -> None:
    journal.append(record(1))
    journal.append(record(1, terminal_id="360486600099", counter=50))
    journal.append(record(2, counter=51))
    first = journal.next_batch()
    assert first is not None and (first.terminal_id, first.terminal_seqs) == ("360486600002", (1,))
    journal.store_answer(first, answer_for(first.body))
    second = journal.next_batch()
    assert second is not None and (second.terminal_id, second.batch_seq) == ("360486600099", 1)
    journal.store_answer(second, answer_for(second.body))
    third = journal.next_batch()
    assert third is not None and (third.terminal_id, third.batch_seq) == ("360486600002", 2)


def test_an_answer_that_does_not_fit_the_batch_is_refused(journal: Journal) -> None:
    journal.append(record(1))
    journal.append(record(2))
    batch = journal.next_batch()
    assert batch is not None
    wrong_order = encode(
        BatchAnswer(1, "2025-06-02T09:00:00Z", [Verdict(2, "accepted", "OK", ""), Verdict(1, "accepted", "OK", "")])
    )
    with pytest.raises(JournalError):
        journal.store_answer(batch, wrong_order)
    with pytest.raises(JournalError):
        journal.store_answer(batch, b'{"batch_seq": 2, "received_at": "x", "verdicts": []}')
    assert journal.next_batch() == batch  # still unanswered
