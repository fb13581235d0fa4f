"""The key store's one JSON file: read, atomic write, and locked read-modify-write.

Several processes share the file: a running server reads it, and ``keys init|import|rotate``,
``init`` or a CA being created write it. Every change runs under an exclusive ``flock`` on
``<keystore>.lock`` next to the store, re-reads the file under that lock, changes what it
read and replaces the file (temp file, fsync, rename, mode 0600) before letting go, so two
writers never lose each other's changes. Readers take no lock: the rename makes every
version of the file complete. The lock file is never deleted (deleting it would let two
writers lock different files).
"""

from __future__ import annotations

import copy
import fcntl
import json
import os
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from clearing.contract.codes import Code
from clearing.errors import ClearingError
from clearing.keys.common import FORMAT, FORMAT_VERSION
from clearing.keys.kek import Kek


def lock_path(keystore_path: Path) -> Path:
    return keystore_path.with_name(keystore_path.name + ".lock")


def empty_doc() -> dict[str, Any]:
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "issuers": {}}


def read_doc(path: Path) -> dict[str, Any]:
    """The parsed file (an empty store if it does not exist yet); no KEK needed."""
    if not path.exists():
        return empty_doc()
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ClearingError(Code.E_KEYSTORE_FORMAT, f"cannot read key store {path}: {type(exc).__name__}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("issuers"), dict):
        raise ClearingError(Code.E_KEYSTORE_FORMAT, f"{path} is not a Yikatong key store")
    if doc.get("format_version") != FORMAT_VERSION:
        raise ClearingError(Code.E_KEYSTORE_FORMAT, f"{path} has format version {doc.get('format_version')!r}")
    return doc


def _signature(path: Path) -> tuple[int, int, int] | None:
    """What tells one version of the file from the next: every write is a new inode."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


@contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (created 0600 if missing), held until the block ends."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


class KeyStoreFile:
    """The loaded document of one key store file, shared by the master-key store and the issuer CA."""

    def __init__(self, path: Path, kek: Kek) -> None:
        self.path = path
        self._kek = kek
        self._lock = threading.RLock()
        self._changing = 0
        self._seen = _signature(path)
        self.doc = read_doc(path)
        kek.verify_check(self.doc.get("kek_check"), path)

    @property
    def issuers(self) -> dict[str, Any]:
        """``{issuer_hex: entry}`` as last read (or as being changed)."""
        issuers = self.doc["issuers"]
        assert isinstance(issuers, dict)
        return issuers

    @property
    def changing(self) -> bool:
        """True inside ``update()`` (in the thread running it)."""
        return self._changing > 0

    def entry(self, issuer_hex: str) -> dict[str, Any]:
        entry = self.issuers.get(issuer_hex)
        if entry is None and self.refresh():  # an issuer imported by another process since
            entry = self.issuers.get(issuer_hex)
        if entry is None:
            raise ClearingError(Code.E_UNKNOWN_ISSUER, f"no keys for issuer {issuer_hex}")
        assert isinstance(entry, dict)
        return entry

    def _load(self) -> None:
        seen = _signature(self.path)
        doc = read_doc(self.path)
        self._kek.verify_check(doc.get("kek_check"), self.path)
        self.doc, self._seen = doc, seen

    def refresh(self) -> bool:
        """Re-read the file if another process replaced it; True if it did."""
        with self._lock:
            if self._changing or _signature(self.path) == self._seen:
                return False
            self._load()
            return True

    @contextmanager
    def update(self) -> Iterator[None]:
        """A read-modify-write of the document, all or nothing, under the cross-process lock.

        On entry the file is re-read under the lock; the block changes ``doc``; on a clean exit
        the file is replaced, and on any error ``doc`` is put back as read and nothing is
        written. Nested updates join the outer one.
        """
        with self._lock:
            if self._changing:
                yield
                return
            with _exclusive(lock_path(self.path)):
                self._load()
                before = copy.deepcopy(self.doc)
                self._changing += 1
                try:
                    if "kek_check" not in self.doc:
                        self.doc["kek_check"] = self._kek.new_check()
                    yield
                    self._save()
                except BaseException:
                    self.doc = before
                    raise
                finally:
                    self._changing -= 1

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump(self.doc, out, indent=2, sort_keys=True)
                out.write("\n")
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self._seen = _signature(self.path)


__all__ = ["KeyStoreFile", "empty_doc", "lock_path", "read_doc"]
