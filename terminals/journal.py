"""The terminal's offline journal: SQLite in WAL mode with ``synchronous=FULL``.

Why each table exists (ARCHITECTURE.md flows 2 and 3):

* ``taps``: append-only (triggers refuse UPDATE and DELETE). One row per tap the card
  signed: the contract ``TapRecord`` as msgspec JSON plus the columns the terminal queries.
  ``append`` commits (and so fsyncs the WAL) before it returns, and the validator reports
  success only after it returns.
* ``pending``: the write-ahead record of a debit in flight. It is written, durably, just
  before DEBIT is sent; it holds everything the tap record needs except the TAC. Whatever
  happens next (tear, reader failure, SIGKILL, power loss), the next presentation of the
  card resolves it with GET TRANSACTION PROVE (``epurse-public-sources.md`` section 8): the
  pending row is deleted in the same transaction that appends the tap, or is moved to
  ``pending_resolved`` when the card proves the debit never happened.
* ``batches`` + ``meta.upload_cursor``: a batch is cut, numbered and stored (its exact body)
  in one transaction that also advances the cursor, BEFORE the first upload attempt. A retry
  after a timeout, a restart or a SIGKILL therefore sends the same ``batch_seq`` with the same
  bytes, which the clearing centre answers idempotently; a tap is in exactly one batch.
* ``verdicts``: the clearing centre's answer per record.
* ``fraud_events``: records a card signed that cannot be genuine: an offline counter this
  journal already holds for the card (a copy of a card image tapped after the original), or
  one below it (a rolled-back image). Each keeps its evidence: the record the card produced,
  the record already journaled, when it was seen. ``taps`` stays unique on (card, counter,
  type); the fraud record still has its own terminal sequence and goes up in its own batches
  (``batches.source``), as an ordinary record, for clearing to refuse as a duplicate
  (``E_DUPLICATE_CARD_COUNTER``) and queue without moving money.

Schema 2 added ``fraud_events``, ``batches.source`` and ``meta.fraud_upload_cursor``; a schema 1
journal is migrated in place when it is opened (additions only, nothing rewritten).

The file holds card numbers: it is created ``0600`` (SQLite gives its ``-wal`` and ``-shm`` the
database file's mode), and an existing one readable by others is narrowed to ``0600``.

Each ``Journal`` object owns one connection and is used from one thread; the uploader opens
its own. WAL lets the validator append while the uploader reads.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import sqlite3
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

import msgspec

from clearing.contract import BATCH_RECORDS_MAX, BatchAnswer, TapRecord, decode_batch
from terminals.errors import DuplicateCardRecord, JournalError

SCHEMA_VERSION: Final = 2
FRAUD_KINDS: Final = frozenset({"duplicate_card_counter", "counter_regressed"})
BATCH_SOURCES: Final = ("taps", "fraud_events")  # the tables a batch is cut from, in upload order
_CURSOR_KEYS: Final = {"taps": "upload_cursor", "fraud_events": "fraud_upload_cursor"}
BUSY_TIMEOUT_MS: Final = 10_000
PAGE_SIZE: Final = 1024
STATUSES: Final = frozenset({"normal", "recovered", "blocked"})
PAID_STATUSES: Final = ("normal", "recovered")
LAST_PAID_CACHED_TAPS: Final = 200_000  # the newest taps whose card and time are kept in memory

_SCHEMA: Final = """
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
    source TEXT NOT NULL DEFAULT 'taps',
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
CREATE TABLE IF NOT EXISTS fraud_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL CHECK (kind IN ('duplicate_card_counter', 'counter_regressed')),
    detected_at TEXT NOT NULL,
    terminal_id TEXT NOT NULL,
    terminal_seq INTEGER NOT NULL,
    issuer_id TEXT NOT NULL,
    card_asn TEXT NOT NULL,
    offline_counter INTEGER NOT NULL,
    tx_type INTEGER NOT NULL,
    amount_fen INTEGER NOT NULL CHECK (amount_fen >= 0),
    mac2_ok INTEGER NOT NULL CHECK (mac2_ok IN (0, 1)),
    interop INTEGER NOT NULL CHECK (interop IN (0, 1)),
    record BLOB NOT NULL,
    earlier_tap_id INTEGER NOT NULL,
    earlier_record BLOB NOT NULL,
    UNIQUE (terminal_id, terminal_seq)
);
CREATE TRIGGER IF NOT EXISTS fraud_events_no_update BEFORE UPDATE ON fraud_events
    BEGIN SELECT RAISE(ABORT, 'fraud events are append-only'); END;
CREATE TRIGGER IF NOT EXISTS fraud_events_no_delete BEFORE DELETE ON fraud_events
    BEGIN SELECT RAISE(ABORT, 'fraud events are append-only'); END;
"""

_encoder = msgspec.json.Encoder()
_record_decoder = msgspec.json.Decoder(TapRecord)
_answer_decoder = msgspec.json.Decoder(BatchAnswer)


def epoch_s(iso_time: str) -> int:
    moment = dt.datetime.fromisoformat(iso_time)
    if moment.tzinfo is None:
        raise JournalError(f"tx_time {iso_time} has no offset")
    return int(moment.timestamp())


def utc_now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class PendingTap:
    """A debit sent to a card whose outcome the terminal has not seen (section 8)."""

    record: TapRecord  # everything but the TAC (``tac`` is 00000000 here)
    created_at: str


@dataclass(frozen=True, slots=True)
class JournaledTap:
    id: int
    record: TapRecord
    mac2_ok: bool
    interop: bool


@dataclass(frozen=True, slots=True)
class FraudEvent:
    """A record the card signed that cannot be genuine, with the record it clashes with."""

    id: int
    kind: str  # ``duplicate_card_counter`` or ``counter_regressed``
    detected_at: str  # UTC, ISO 8601
    record: TapRecord  # what the card produced (uploaded as an ordinary record)
    earlier_tap_id: int
    earlier: TapRecord  # what this journal already held for the card
    mac2_ok: bool


@dataclass(frozen=True, slots=True)
class StoredBatch:
    """A batch as cut: its number and the exact bytes every attempt sends.

    ``first_tap_id``/``last_tap_id`` are row ids of ``source`` (``taps`` or ``fraud_events``).
    """

    terminal_id: str
    batch_seq: int
    body: bytes
    records: int
    first_tap_id: int
    last_tap_id: int
    terminal_seqs: tuple[int, ...]
    attempts: int
    source: str = "taps"


def ensure_private_file(path: Path) -> None:
    """Create ``path`` as ``0600`` if missing, and narrow it (and its -wal/-shm) if others can read it.

    SQLite creates ``-wal`` and ``-shm`` with the database file's permissions, so making the
    main file private first is what keeps card numbers out of other users' reach.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        if stat.S_IMODE(os.fstat(fd).st_mode) & 0o077:
            with contextlib.suppress(PermissionError):  # not ours to change; SQLite still opens it
                os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    for suffix in ("-wal", "-shm"):
        side = path.with_name(path.name + suffix)
        with contextlib.suppress(FileNotFoundError, PermissionError):
            if stat.S_IMODE(side.stat().st_mode) & 0o077:
                side.chmod(0o600)


class _WriteTx:
    """BEGIN IMMEDIATE ... COMMIT; under ``synchronous=FULL`` COMMIT returns after the WAL is fsync'd."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *_: object) -> None:
        self._db.execute("ROLLBACK" if exc_type is not None else "COMMIT")


class Journal:
    """One connection to the journal file; see the module docstring for the tables.

    ``pending_sync`` is how durable the write-ahead pending row is before DEBIT goes out:
    ``"full"`` (the default) fsyncs it, so a power cut mid-tap loses nothing; ``"normal"``
    leaves it in the OS page cache (WAL ``synchronous=NORMAL`` for that one commit), which a
    SIGKILL or crash of the validator cannot lose and which the tap record's own fsync, a
    millisecond later, makes durable. It halves the fsyncs per tap; the price is that a power
    cut in that millisecond may lose the pending row of a debit the card then made (the card
    keeps it; clearing sees the gap in the card's offline counter). Tap records are always
    fsync'd before the tap reports success.
    """

    def __init__(self, path: str | Path, *, pending_sync: Literal["full", "normal"] = "full") -> None:
        if pending_sync not in ("full", "normal"):
            raise ValueError(f"pending_sync is 'full' or 'normal', not {pending_sync!r}")
        self.pending_sync = pending_sync
        self.path = Path(path)
        ensure_private_file(self.path)
        self._db = sqlite3.connect(str(self.path), isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
        self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        # Small pages: a tap's commit rewrites a few pages, and fewer bytes to fsync is faster
        # (only takes effect when the file is created).
        self._db.execute(f"PRAGMA page_size = {PAGE_SIZE}")
        mode = self._db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise JournalError(f"journal {path} cannot use WAL mode (got {mode})")
        self._db.execute("PRAGMA synchronous = FULL")
        self._db.execute("PRAGMA foreign_keys = ON")
        with self._write():
            for statement in _SCHEMA.split(";\n"):
                if statement.strip():
                    self._db.execute(statement)
            row = self._db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if row is None:
                self._db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
                self._db.execute("INSERT INTO meta VALUES ('upload_cursor', '0')")
                self._db.execute("INSERT INTO meta VALUES ('fraud_upload_cursor', '0')")
            elif int(row[0]) == 1:
                self._migrate_from_1()
            elif int(row[0]) != SCHEMA_VERSION:
                raise JournalError(f"journal {path} has schema {row[0]}, this terminal speaks {SCHEMA_VERSION}")
        self._load_caches()

    def _migrate_from_1(self) -> None:
        """Schema 1 -> 2 inside the opening transaction: only additions (``fraud_events`` was
        created by the schema script), so every tap, batch and verdict stays as it was."""
        columns = {r[1] for r in self._db.execute("PRAGMA table_info(batches)")}
        if "source" not in columns:
            self._db.execute("ALTER TABLE batches ADD COLUMN source TEXT NOT NULL DEFAULT 'taps'")
        self._db.execute("INSERT OR IGNORE INTO meta VALUES ('fraud_upload_cursor', '0')")
        self._db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))

    def _load_caches(self) -> None:
        """In-memory answers for the two questions every tap asks (is there a pending debit for
        this card; when did it last pay). Valid because one process writes a journal's taps and
        pending rows (the uploader's connection writes only batches and verdicts)."""
        self._pending_keys = {(r[0], r[1]) for r in self._db.execute("SELECT issuer_id, card_asn FROM pending")}
        floor = self._db.execute("SELECT coalesce(max(id), 0) FROM taps").fetchone()[0] - LAST_PAID_CACHED_TAPS
        self._last_paid: dict[tuple[str, str, int], int] = {}
        rows = self._db.execute(
            "SELECT issuer_id, card_asn, tx_type, max(tx_epoch_s) FROM taps WHERE id > ?"
            " AND status IN ('normal', 'recovered') GROUP BY issuer_id, card_asn, tx_type",
            (floor,),
        )
        for issuer_id, card_asn, tx_type, epoch in rows:
            self._last_paid[(issuer_id, card_asn, tx_type)] = int(epoch)
        # A card's counters only grow with its taps here, so the newest taps give each card's
        # highest counter; a card with none among them needs the table only if older taps exist.
        self._every_tap_cached = floor < 1
        self._max_counter: dict[tuple[str, str], int] = {
            (r[0], r[1]): int(r[2])
            for r in self._db.execute(
                "SELECT issuer_id, card_asn, max(offline_counter) FROM taps WHERE id > ? GROUP BY issuer_id, card_asn",
                (floor,),
            )
        }
        # Taps at or before the floor are not cached; the cache answers for any time after the newest of them.
        newest_uncached = self._db.execute("SELECT max(tx_epoch_s) FROM taps WHERE id <= ?", (floor,)).fetchone()[0]
        self._cached_after_epoch_s = -1 if newest_uncached is None else int(newest_uncached)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write(self) -> _WriteTx:
        return _WriteTx(self._db)

    # --- taps -----------------------------------------------------------------------------
    def append(self, record: TapRecord, *, mac2_ok: bool = True, interop: bool = False) -> int:
        """Append one tap durably; it also resolves the card's pending debit if this is it.

        Returns the journal id. The same terminal sequence twice is a terminal fault
        (``JournalError``). The same (card, offline counter, type) twice is the card's fault: the
        record is kept as a ``duplicate_card_counter`` fraud event, the pending debit closed, and
        ``DuplicateCardRecord`` raised so the tap refuses the card and the terminal goes on.
        """
        _check_record(record)
        body = _encoder.encode(record)
        now = utc_now_iso()
        try:
            with self._write():
                cur = self._db.execute(
                    "INSERT INTO taps (terminal_id, terminal_seq, issuer_id, card_asn, offline_counter, tx_type,"
                    " amount_fen, status, tx_time, tx_epoch_s, mac2_ok, interop, journaled_at, record)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        record.terminal_id,
                        record.terminal_seq,
                        record.issuer_id,
                        record.card_asn,
                        record.offline_counter,
                        record.tx_type,
                        record.amount_fen,
                        record.status,
                        record.tx_time,
                        epoch_s(record.tx_time),
                        int(mac2_ok),
                        int(interop),
                        now,
                        body,
                    ),
                )
                closed = self._close_pending(record)
        except sqlite3.IntegrityError as exc:
            earlier = self._journaled_under_card_key(record)
            if earlier is None:
                raise JournalError(
                    f"tap {record.terminal_id}/{record.terminal_seq} (card {record.card_asn}, counter"
                    f" {record.offline_counter}) is already journaled: {exc}"
                ) from None
            earlier_id, earlier_record = earlier
            fraud_id = self.append_fraud(
                record, "duplicate_card_counter", earlier_id, earlier_record, mac2_ok=mac2_ok, interop=interop
            )
            raise DuplicateCardRecord(
                f"card {record.card_asn} signed offline counter {record.offline_counter} again (already journaled as"
                f" terminal sequence {earlier_record.terminal_seq}); kept as fraud event {fraud_id}",
                fraud_id=fraud_id,
                earlier=earlier_record,
            ) from None
        tap_id = cur.lastrowid
        assert tap_id is not None and tap_id > 0
        if closed:
            self._pending_keys.discard((record.issuer_id, record.card_asn))
        if record.status in PAID_STATUSES:
            key = (record.issuer_id, record.card_asn, record.tx_type)
            self._last_paid[key] = max(self._last_paid.get(key, 0), epoch_s(record.tx_time))
        card = (record.issuer_id, record.card_asn)
        self._max_counter[card] = max(self._max_counter.get(card, -1), record.offline_counter)
        return tap_id

    def _close_pending(self, record: TapRecord) -> int:
        return int(
            self._db.execute(
                "DELETE FROM pending WHERE issuer_id = ? AND card_asn = ? AND terminal_id = ? AND terminal_seq = ?",
                (record.issuer_id, record.card_asn, record.terminal_id, record.terminal_seq),
            ).rowcount
        )

    def _journaled_under_card_key(self, record: TapRecord) -> tuple[int, TapRecord] | None:
        row = self._db.execute(
            "SELECT id, record FROM taps WHERE issuer_id = ? AND card_asn = ? AND offline_counter = ? AND tx_type = ?",
            (record.issuer_id, record.card_asn, record.offline_counter, record.tx_type),
        ).fetchone()
        return None if row is None else (int(row[0]), _decode_record(row[1]))

    def counter_clash(self, issuer_id: str, card_asn: str, offline_counter: int) -> tuple[str, int, TapRecord] | None:
        """Whether a card's offline counter cannot be genuine here: ``(kind, tap id, record)``.

        A card's counter only grows (card-profile.md, "Atomicity and tear"), and this journal
        holds every purchase the card made here, so a counter at or below one journaled for the
        card is an image copied or rolled back: ``duplicate_card_counter`` when equal,
        ``counter_regressed`` when below (the record named is the lowest at or above it).
        Every tap asks, so the usual answer (a counter above all seen) comes from memory.
        """
        highest = self._max_counter.get((issuer_id, card_asn))
        if (highest is not None and offline_counter > highest) or (highest is None and self._every_tap_cached):
            return None
        row = self._db.execute(
            "SELECT id, record, offline_counter FROM taps WHERE issuer_id = ? AND card_asn = ?"
            " AND offline_counter >= ? ORDER BY offline_counter, id LIMIT 1",
            (issuer_id, card_asn, offline_counter),
        ).fetchone()
        if row is None:
            return None
        kind = "duplicate_card_counter" if int(row[2]) == offline_counter else "counter_regressed"
        return kind, int(row[0]), _decode_record(row[1])

    def append_fraud(
        self,
        record: TapRecord,
        kind: str,
        earlier_tap_id: int,
        earlier: TapRecord,
        *,
        mac2_ok: bool = True,
        interop: bool = False,
    ) -> int:
        """Keep a record that cannot be genuine, with its evidence, durably; close its pending debit.

        Returns the fraud event's id. It is uploaded like a tap (``next_batch``), never counted
        as one here (not in ``taps``, not a payment for the repeat-tap rule).
        """
        if kind not in FRAUD_KINDS:
            raise JournalError(f"unknown fraud kind {kind!r}")
        _check_record(record)
        if earlier.issuer_id != record.issuer_id or earlier.card_asn != record.card_asn:
            raise JournalError("a fraud event's evidence is a record of the same card")
        with self._write():
            taken = self._db.execute(
                "SELECT 1 FROM taps WHERE terminal_id = ? AND terminal_seq = ?",
                (record.terminal_id, record.terminal_seq),
            ).fetchone()
            if taken is not None:
                raise JournalError(f"terminal sequence {record.terminal_id}/{record.terminal_seq} is already a tap")
            try:
                cur = self._db.execute(
                    "INSERT INTO fraud_events (kind, detected_at, terminal_id, terminal_seq, issuer_id, card_asn,"
                    " offline_counter, tx_type, amount_fen, mac2_ok, interop, record, earlier_tap_id, earlier_record)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        kind,
                        utc_now_iso(),
                        record.terminal_id,
                        record.terminal_seq,
                        record.issuer_id,
                        record.card_asn,
                        record.offline_counter,
                        record.tx_type,
                        record.amount_fen,
                        int(mac2_ok),
                        int(interop),
                        _encoder.encode(record),
                        earlier_tap_id,
                        _encoder.encode(earlier),
                    ),
                )
            except sqlite3.IntegrityError as exc:
                raise JournalError(
                    f"fraud record {record.terminal_id}/{record.terminal_seq} is already journaled: {exc}"
                ) from None
            closed = self._close_pending(record)
        if closed:
            self._pending_keys.discard((record.issuer_id, record.card_asn))
        fraud_id = cur.lastrowid
        assert fraud_id is not None and fraud_id > 0
        return fraud_id

    def fraud_events(self) -> list[FraudEvent]:
        rows = self._db.execute(
            "SELECT id, kind, detected_at, record, earlier_tap_id, earlier_record, mac2_ok"
            " FROM fraud_events ORDER BY id"
        ).fetchall()
        return [
            FraudEvent(r[0], r[1], r[2], _decode_record(r[3]), r[4], _decode_record(r[5]), bool(r[6])) for r in rows
        ]

    def fraud_count(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM fraud_events").fetchone()[0])

    def last_paid_epoch_s(self, issuer_id: str, card_asn: str, tx_type: int, since_epoch_s: int) -> int | None:
        """The latest time at or after ``since_epoch_s`` this card paid here (normal or recovered).

        For the repeat-tap rule; answered from memory when the cache covers ``since_epoch_s``.
        """
        if since_epoch_s > self._cached_after_epoch_s:
            epoch = self._last_paid.get((issuer_id, card_asn, tx_type))
            return epoch if epoch is not None and epoch >= since_epoch_s else None
        row = self._db.execute(
            "SELECT max(tx_epoch_s) FROM taps WHERE issuer_id = ? AND card_asn = ? AND tx_type = ?"
            " AND status IN ('normal', 'recovered') AND tx_epoch_s >= ?",
            (issuer_id, card_asn, tx_type, since_epoch_s),
        ).fetchone()
        return None if row[0] is None else int(row[0])

    def taps(self, after_id: int = 0, limit: int = BATCH_RECORDS_MAX) -> list[JournaledTap]:
        rows = self._db.execute(
            "SELECT id, record, mac2_ok, interop FROM taps WHERE id > ? ORDER BY id LIMIT ?", (after_id, limit)
        ).fetchall()
        return [JournaledTap(r[0], _decode_record(r[1]), bool(r[2]), bool(r[3])) for r in rows]

    def iter_taps(self) -> Iterator[JournaledTap]:
        after = 0
        while True:
            page = self.taps(after, 1000)
            if not page:
                return
            yield from page
            after = page[-1].id

    def count(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM taps").fetchone()[0])

    # --- pending debits (section 8) --------------------------------------------------------
    def save_pending(self, record: TapRecord) -> None:
        """Durably note a debit about to be sent; replaces an older pending of the same card."""
        _check_record(record)
        relaxed = self.pending_sync == "normal"
        if relaxed:
            self._db.execute("PRAGMA synchronous = NORMAL")
        try:
            self._insert_pending(record)
        finally:
            if relaxed:
                self._db.execute("PRAGMA synchronous = FULL")
        self._pending_keys.add((record.issuer_id, record.card_asn))

    def _insert_pending(self, record: TapRecord) -> None:
        # One statement outside BEGIN...COMMIT is its own transaction (the connection is in
        # autocommit mode): committed, and under ``synchronous=FULL`` fsync'd, before it returns.
        assert not self._db.in_transaction
        self._db.execute(
            "INSERT OR REPLACE INTO pending (issuer_id, card_asn, terminal_id, terminal_seq, created_at, record)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (
                record.issuer_id,
                record.card_asn,
                record.terminal_id,
                record.terminal_seq,
                utc_now_iso(),
                _encoder.encode(record),
            ),
        )

    def pending_for(self, issuer_id: str, card_asn: str) -> PendingTap | None:
        if (issuer_id, card_asn) not in self._pending_keys:
            return None
        row = self._db.execute(
            "SELECT record, created_at FROM pending WHERE issuer_id = ? AND card_asn = ?", (issuer_id, card_asn)
        ).fetchone()
        return None if row is None else PendingTap(_decode_record(row[0]), row[1])

    def pending(self) -> list[PendingTap]:
        rows = self._db.execute("SELECT record, created_at FROM pending ORDER BY created_at").fetchall()
        return [PendingTap(_decode_record(r[0]), r[1]) for r in rows]

    def resolve_pending(self, record: TapRecord, outcome: str) -> None:
        """Close a pending debit that produced no tap (``not_debited``, ``mac1_refused``, ``unproven``)."""
        with self._write():
            cur = self._db.execute(
                "DELETE FROM pending WHERE issuer_id = ? AND card_asn = ? AND terminal_id = ? AND terminal_seq = ?",
                (record.issuer_id, record.card_asn, record.terminal_id, record.terminal_seq),
            )
            if cur.rowcount:
                self._pending_keys.discard((record.issuer_id, record.card_asn))
                self._db.execute(
                    "INSERT INTO pending_resolved (issuer_id, card_asn, terminal_id, terminal_seq, outcome,"
                    " resolved_at, record) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        record.issuer_id,
                        record.card_asn,
                        record.terminal_id,
                        record.terminal_seq,
                        outcome,
                        utc_now_iso(),
                        _encoder.encode(record),
                    ),
                )

    def resolved_pending(self) -> list[tuple[str, TapRecord]]:
        rows = self._db.execute("SELECT outcome, record FROM pending_resolved ORDER BY id").fetchall()
        return [(r[0], _decode_record(r[1])) for r in rows]

    # --- batches (flow 3) ---------------------------------------------------------------------
    def upload_cursor(self, source: str = "taps") -> int:
        key = _CURSOR_KEYS[source]
        return int(self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()[0])

    def next_batch(self, records_max: int = BATCH_RECORDS_MAX) -> StoredBatch | None:
        """The oldest unanswered batch, or a new one cut from the records after a cursor.

        Cutting is one transaction: number, body and cursor are durable together, before any
        attempt to send, so every attempt sends the same batch. Taps are cut before fraud
        events, so a clone's record reaches clearing after the record it duplicates.
        """
        if not 1 <= records_max <= BATCH_RECORDS_MAX:
            raise ValueError(f"a batch holds 1 to {BATCH_RECORDS_MAX} records")
        with self._write():
            stored = self._unanswered()
            if stored is not None:
                return stored
            for source in BATCH_SOURCES:
                batch = self._cut(source, records_max)
                if batch is not None:
                    return batch
            return None

    def _cut(self, source: str, records_max: int) -> StoredBatch | None:
        assert source in BATCH_SOURCES and self._db.in_transaction
        cursor = self.upload_cursor(source)
        rows = self._db.execute(
            f"SELECT id, terminal_id, terminal_seq, record FROM {source} WHERE id > ? ORDER BY id LIMIT ?",  # noqa: S608 - a fixed table name
            (cursor, records_max),
        ).fetchall()
        if not rows:
            return None
        terminal_id = rows[0][1]
        rows = _same_terminal_prefix(rows, terminal_id)
        last = self._db.execute("SELECT max(batch_seq) FROM batches WHERE terminal_id = ?", (terminal_id,)).fetchone()[
            0
        ]
        batch_seq = 1 if last is None else int(last) + 1
        created_at = utc_now_iso()
        body = (
            b'{"batch_seq":%d,"created_at":"%s","records":[' % (batch_seq, created_at.encode())
            + b",".join(r[3] for r in rows)
            + b"]}"
        )
        batch = decode_batch(body)  # the body is a valid contract batch, checked before it is stored
        seqs = tuple(r[2] for r in rows)
        assert tuple(rec.terminal_seq for rec in batch.records) == seqs
        self._db.execute(
            "INSERT INTO batches (terminal_id, batch_seq, first_tap_id, last_tap_id, records, created_at, body, source)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (terminal_id, batch_seq, rows[0][0], rows[-1][0], len(rows), created_at, body, source),
        )
        self._db.execute("UPDATE meta SET value = ? WHERE key = ?", (str(rows[-1][0]), _CURSOR_KEYS[source]))
        return StoredBatch(terminal_id, batch_seq, body, len(rows), rows[0][0], rows[-1][0], seqs, 0, source)

    def _unanswered(self) -> StoredBatch | None:
        # rowid is the order batches were cut in (the table is never deleted from)
        row = self._db.execute(
            "SELECT terminal_id, batch_seq, body, records, first_tap_id, last_tap_id, attempts, source FROM batches"
            " WHERE answered_at IS NULL ORDER BY rowid LIMIT 1"
        ).fetchone()
        if row is None:
            return None
        source = row[7]
        if source not in BATCH_SOURCES:
            raise JournalError(f"batch {row[0]}/{row[1]} is cut from unknown table {source!r}")
        seqs = tuple(
            r[0]
            for r in self._db.execute(
                f"SELECT terminal_seq FROM {source} WHERE id BETWEEN ? AND ? AND terminal_id = ? ORDER BY id",  # noqa: S608 - checked above
                (row[4], row[5], row[0]),
            )
        )
        if len(seqs) != row[3]:
            raise JournalError(f"batch {row[0]}/{row[1]} lists {row[3]} records, the journal has {len(seqs)}")
        return StoredBatch(row[0], row[1], row[2], row[3], row[4], row[5], seqs, row[6], source)

    def note_attempt(self, batch: StoredBatch, error: str | None) -> None:
        with self._write():
            self._db.execute(
                "UPDATE batches SET attempts = attempts + 1, last_error = ? WHERE terminal_id = ? AND batch_seq = ?",
                (error, batch.terminal_id, batch.batch_seq),
            )

    def store_answer(self, batch: StoredBatch, answer_body: bytes) -> BatchAnswer:
        """Check the answer fits the batch (same seq, one verdict per record, in order) and store it."""
        try:
            answer = _answer_decoder.decode(answer_body)
        except msgspec.DecodeError as exc:  # ValidationError is a DecodeError
            raise JournalError(f"answer to batch {batch.batch_seq} is not a BatchAnswer: {exc}") from None
        if answer.batch_seq != batch.batch_seq:
            raise JournalError(f"answer is for batch {answer.batch_seq}, not {batch.batch_seq}")
        got = tuple(v.terminal_seq for v in answer.verdicts)
        if got != batch.terminal_seqs:
            raise JournalError(f"answer to batch {batch.batch_seq} does not give one verdict per record, in order")
        with self._write():
            self._db.executemany(
                "INSERT OR REPLACE INTO verdicts (terminal_id, terminal_seq, batch_seq, verdict, code, message)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (batch.terminal_id, v.terminal_seq, batch.batch_seq, v.verdict, v.code, v.message)
                    for v in answer.verdicts
                ],
            )
            self._db.execute(
                "UPDATE batches SET answered_at = ?, answer = ? WHERE terminal_id = ? AND batch_seq = ?",
                (utc_now_iso(), answer_body, batch.terminal_id, batch.batch_seq),
            )
        return answer

    def verdicts(self) -> dict[tuple[str, int], tuple[str, str]]:
        rows = self._db.execute("SELECT terminal_id, terminal_seq, verdict, code FROM verdicts").fetchall()
        return {(r[0], r[1]): (r[2], r[3]) for r in rows}

    def unanswered_records(self) -> int:
        """Records (taps and fraud records) not yet answered by the clearing centre, batched or not."""
        waiting = 0
        for source in BATCH_SOURCES:
            cursor = self.upload_cursor(source)
            waiting += self._db.execute(
                f"SELECT count(*) FROM {source} WHERE id > ?",  # noqa: S608 - a fixed table name
                (cursor,),
            ).fetchone()[0]
        in_flight = self._db.execute(
            "SELECT coalesce(sum(records), 0) FROM batches WHERE answered_at IS NULL"
        ).fetchone()[0]
        return int(waiting) + int(in_flight)


_Row = tuple[int, str, int, bytes]


def _same_terminal_prefix(rows: list[_Row], terminal_id: str) -> list[_Row]:
    """A batch belongs to one terminal id (it is in the URL): stop at a PSAM change."""
    for i, row in enumerate(rows):
        if row[1] != terminal_id:
            return rows[:i]
    return rows


def _check_record(record: TapRecord) -> None:
    """Positive and negative space of a record about to be written (STYLE.md)."""
    if record.status not in STATUSES:
        raise JournalError(f"unknown status {record.status!r}")
    if record.status == "blocked" and record.amount_fen != 0:
        raise JournalError("a blocked record debits nothing")
    if record.amount_fen > record.balance_before_fen:
        raise JournalError(f"amount {record.amount_fen} exceeds balance {record.balance_before_fen}")


def _decode_record(body: bytes) -> TapRecord:
    record = _record_decoder.decode(body)
    _check_record(record)  # assert again where it is read back
    return record
