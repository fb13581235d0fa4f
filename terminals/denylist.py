"""The terminal's local denylist (ARCHITECTURE.md flow 2; ``spec/terminal-api.md``, "Denylist").

Kept in SQLite (by default the journal file, in its own tables) so that an update pulled by
the uploader is applied atomically: one transaction replaces or patches the entries and
moves the version, so a validator never sees half a delta. Lookups are served from an
in-memory snapshot that is reloaded when another connection has committed (``PRAGMA
data_version``, looked at no more than once per ``recheck_s``), so a tap costs a dictionary
lookup, not a query.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import time
from pathlib import Path
from typing import Final

from clearing.contract import DenylistDelta, DenylistEntry
from terminals.journal import ensure_private_file

BUSY_TIMEOUT_MS: Final = 10_000

_SCHEMA: Final = (
    "CREATE TABLE IF NOT EXISTS denylist (issuer_id TEXT NOT NULL, card_asn TEXT NOT NULL, reason TEXT NOT NULL,"
    " effective_at TEXT NOT NULL, PRIMARY KEY (issuer_id, card_asn))",
    "CREATE TABLE IF NOT EXISTS denylist_state (id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL)",
    "INSERT OR IGNORE INTO denylist_state VALUES (1, 0)",
)


class Denylist:
    """Cards to block at the next tap, keyed by (issuer id, ASN) in lower-case hex."""

    def __init__(self, path: str | Path, *, recheck_s: float = 1.0) -> None:
        self.recheck_s = recheck_s  # how stale the snapshot may get before another connection's update shows
        self._checked_at = -float("inf")
        ensure_private_file(Path(path))  # usually the journal file, which holds card numbers
        self._db = sqlite3.connect(str(path), isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
        self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        self._db.execute("PRAGMA page_size = 1024")  # as the journal's, when this creates the file
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = FULL")
        self._db.execute("BEGIN IMMEDIATE")
        try:
            for statement in _SCHEMA:
                self._db.execute(statement)
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._data_version = -1
        self._entries: dict[tuple[str, str], DenylistEntry] = {}
        self._version = 0
        self._refresh()

    def close(self) -> None:
        self._db.close()

    def _refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._checked_at < self.recheck_s:
            return
        self._checked_at = now
        data_version = int(self._db.execute("PRAGMA data_version").fetchone()[0])
        if data_version == self._data_version:
            return
        self._db.execute("BEGIN")
        try:
            rows = self._db.execute("SELECT issuer_id, card_asn, reason, effective_at FROM denylist").fetchall()
            version = int(self._db.execute("SELECT version FROM denylist_state").fetchone()[0])
        finally:
            self._db.execute("COMMIT")
        self._entries = {(r[0], r[1]): DenylistEntry(r[0], r[1], r[2], r[3]) for r in rows}
        self._version = version
        self._data_version = data_version

    @property
    def version(self) -> int:
        self._refresh(force=True)
        return self._version

    def __len__(self) -> int:
        self._refresh(force=True)
        return len(self._entries)

    def hit(self, issuer_id: str, card_asn: str, at: dt.datetime) -> DenylistEntry | None:
        """The entry that denies this card at ``at`` (an aware datetime), if any."""
        self._refresh()
        entry = self._entries.get((issuer_id, card_asn))
        if entry is None:
            return None
        if dt.datetime.fromisoformat(entry.effective_at) > at:
            return None
        return entry

    def apply(self, delta: DenylistDelta) -> bool:
        """Apply one answer of ``GET /denylist`` atomically; a stale version changes nothing.

        Returns whether anything was applied.
        """
        self._db.execute("BEGIN IMMEDIATE")
        try:
            current = int(self._db.execute("SELECT version FROM denylist_state").fetchone()[0])
            if delta.version < current or (delta.version == current and not delta.full):
                self._db.execute("ROLLBACK")
                return False
            if delta.full:
                self._db.execute("DELETE FROM denylist")
            self._db.executemany(
                "INSERT OR REPLACE INTO denylist VALUES (?, ?, ?, ?)",
                [(e.issuer_id, e.card_asn, e.reason, e.effective_at) for e in delta.added],
            )
            self._db.executemany(
                "DELETE FROM denylist WHERE issuer_id = ? AND card_asn = ?",
                [(e.issuer_id, e.card_asn) for e in delta.removed],
            )
            self._db.execute("UPDATE denylist_state SET version = ?", (delta.version,))
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._data_version = -1  # our own commit does not move data_version for this connection
        self._refresh(force=True)
        return True
