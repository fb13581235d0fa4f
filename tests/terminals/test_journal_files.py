"""The journal file itself: private to the terminal, and old journals still open (schema 1 -> 2)."""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

import pytest

from clearing.contract import encode
from terminals.denylist import Denylist
from terminals.errors import JournalError
from terminals.journal import SCHEMA_VERSION, Journal
from tests.terminals.test_journal import answer_for, record

# The schema of the first journals in the field (terminals/journal.py at schema_version 1),
# kept verbatim: a validator updated in the field must open the journal it wrote yesterday.
V1_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS taps (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    terminal_id TEXT NOT NULL,
    terminal_seq INTEGER NOT NULL,
    issuer_id TEXT NOT NULL,
    card_asn TEXT NOT NULL,
    offline_counter INTEGER NOT NULL,
    tx_type INTEGER NOT NULL,
    amount_fen INTEGER NOT NULL CHECK (amount_fen >= 0),
    status TEXT NOT NULL CHECK (status IN ('normal', 'recovered', 'blocked')),
    tx_time TEXT NOT NULL,
    tx_epoch_s INTEGER NOT NULL,
    mac2_ok INTEGER NOT NULL CHECK (mac2_ok IN (0, 1)),
    interop INTEGER NOT NULL CHECK (interop IN (0, 1)),
    journaled_at TEXT NOT NULL,
    record BLOB NOT NULL,
    UNIQUE (terminal_id, terminal_seq),
    UNIQUE (issuer_id, card_asn, offline_counter, tx_type)
);
CREATE TRIGGER IF NOT EXISTS taps_no_update BEFORE UPDATE ON taps
    BEGIN SELECT RAISE(ABORT, 'taps are append-only'); END;
CREATE TRIGGER IF NOT EXISTS taps_no_delete BEFORE DELETE ON taps
    BEGIN SELECT RAISE(ABORT, 'taps are append-only'); END;
CREATE TABLE IF NOT EXISTS pending (
    issuer_id TEXT NOT NULL,
    card_asn TEXT NOT NULL,
    terminal_id TEXT NOT NULL,
    terminal_seq INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    record BLOB NOT NULL,
    PRIMARY KEY (issuer_id, card_asn)
);
CREATE TABLE IF NOT EXISTS pending_resolved (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    issuer_id TEXT NOT NULL,
    card_asn TEXT NOT NULL,
    terminal_id TEXT NOT NULL,
    terminal_seq INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    resolved_at TEXT NOT NULL,
    record BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS batches (
    terminal_id TEXT NOT NULL,
    batch_seq INTEGER NOT NULL,
    first_tap_id INTEGER NOT NULL,
    last_tap_id INTEGER NOT NULL,
    records INTEGER NOT NULL CHECK (records BETWEEN 1 AND 10000),
    created_at TEXT NOT NULL,
    body BLOB NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    answered_at TEXT,
    answer BLOB,
    PRIMARY KEY (terminal_id, batch_seq)
);
CREATE TABLE IF NOT EXISTS verdicts (
    terminal_id TEXT NOT NULL,
    terminal_seq INTEGER NOT NULL,
    batch_seq INTEGER NOT NULL,
    verdict TEXT NOT NULL,
    code TEXT NOT NULL,
    message TEXT NOT NULL,
    PRIMARY KEY (terminal_id, terminal_seq)
);
"""


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_journal_and_its_wal_and_shm_are_private(tmp_path: Path) -> None:
    old_umask = os.umask(0o022)  # the usual default, which would give 0644
    try:
        path = tmp_path / "journal.db"
        with Journal(path) as journal:
            journal.append(record(1))
            sides = [path.with_name(path.name + suffix) for suffix in ("-wal", "-shm")]
            assert all(side.exists() for side in sides)
            assert [mode(p) for p in (path, *sides)] == [0o600, 0o600, 0o600]
    finally:
        os.umask(old_umask)


def test_a_denylist_opened_first_also_creates_a_private_file(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    Denylist(path).close()
    assert mode(path) == 0o600


def test_a_journal_readable_by_others_is_narrowed_when_opened(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    Journal(path).close()
    path.chmod(0o644)
    with Journal(path) as journal:
        journal.append(record(1))
    assert mode(path) == 0o600


def _v1_journal(path: Path) -> None:
    """A journal as schema 1 left it: two taps, one batch answered, one tap still to upload."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    for statement in V1_SCHEMA.split(";\n"):
        if statement.strip():
            db.execute(statement)
    db.execute("INSERT INTO meta VALUES ('schema_version', '1')")
    db.execute("INSERT INTO meta VALUES ('upload_cursor', '0')")
    db.close()


def test_a_schema_1_journal_opens_migrated_and_goes_on_uploading(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    _v1_journal(path)
    # Fill it through the schema 1 tables only (what the old code wrote).
    db = sqlite3.connect(path, isolation_level=None)
    for seq in (1, 2):
        rec = record(seq)
        db.execute(
            "INSERT INTO taps (terminal_id, terminal_seq, issuer_id, card_asn, offline_counter, tx_type, amount_fen,"
            " status, tx_time, tx_epoch_s, mac2_ok, interop, journaled_at, record)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0, 1, 0, '2025-06-02T00:00:00Z', ?)",
            (rec.terminal_id, seq, rec.issuer_id, rec.card_asn, seq, 9, 200, "normal", rec.tx_time, encode(rec)),
        )
    db.execute(
        "INSERT INTO batches (terminal_id, batch_seq, first_tap_id, last_tap_id, records, created_at, body)"
        " VALUES ('360486600002', 1, 1, 1, 1, '2025-06-02T00:00:00Z', ?)",
        (b'{"batch_seq":1,"created_at":"2025-06-02T00:00:00Z","records":[' + encode(record(1)) + b"]}",),
    )
    db.execute("UPDATE meta SET value = '1' WHERE key = 'upload_cursor'")
    db.close()

    with Journal(path) as journal:
        assert journal._db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == str(
            SCHEMA_VERSION
        )
        assert journal.count() == 2 and journal.fraud_count() == 0
        assert journal.unanswered_records() == 2  # batch 1 in flight, tap 2 not yet cut
        resent = journal.next_batch()
        assert resent is not None and (resent.batch_seq, resent.source, resent.terminal_seqs) == (1, "taps", (1,))
        journal.store_answer(resent, answer_for(resent.body))
        fresh = journal.next_batch()
        assert fresh is not None and (fresh.batch_seq, fresh.terminal_seqs) == (2, (2,))
        # The new table works in the old file: a clone of the card of tap 2 is kept, not refused.
        journal.append_fraud(record(3, counter=2, amount_fen=0), "duplicate_card_counter", 2, record(2))
        assert journal.fraud_count() == 1
    with Journal(path) as again:  # and opening it once more is a no-op
        assert again.count() == 2 and again.fraud_count() == 1


def test_a_journal_from_a_newer_terminal_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    Journal(path).close()
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    db.close()
    with pytest.raises(JournalError, match="schema 99"):
        Journal(path)
