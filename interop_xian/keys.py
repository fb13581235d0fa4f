"""Interop's keys: our Ed25519 signing keys sealed under the KEK, and the peer's public keys.

**Our signing keys** live in one file next to the key store, ``<keystore>.interop.json``
(0600), each private key a separate AES-256-GCM ciphertext under the KEK (``clearing.keys.kek``,
the same sealing as the card master keys), with associated data naming the city and the key
id, so a ciphertext moved to another slot does not decrypt; the file carries the KEK check, so
a wrong KEK is refused at once. A private key is never logged, printed or put in a database.
Every change is a locked read-modify-write (``flock`` on ``<file>.lock``, temp file, fsync,
rename), as ``clearing/keys/store_file.py`` does. ``rotate`` adds a key and makes it the one
we sign with; the previous one is kept, marked to retire after the overlap, and still
exported, so the peer can accept it until then.

**The peer's public keys** are public: they live in the database (``interop_peer_keys``),
imported out of band from the peer's export (``yikatong interop keys import FILE``). A key is
accepted until its ``retire_at``; importing a newer key retires the ones the document no
longer lists at the import time plus the overlap. ``YIKATONG_PEER_PUBLIC_KEY`` (hex), when
set, is accepted as a current key of the peer as well.

A key's id is its fingerprint: the first 16 bytes of SHA-256 of the raw public key (hex);
operators read it to each other on the phone before importing.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from sqlalchemy import select
from sqlalchemy.orm import Session

from clearing.errors import ClearingError
from clearing.keys.kek import Kek
from interop_xian.batch import key_id_of, public_key_from_hex, raw_public
from interop_xian.config import CITIES
from interop_xian.errors import InteropCode, InteropError
from interop_xian.models import PeerKey

SIGNING_FORMAT: Final = "yikatong-interop-signing/1"
PUBLIC_FORMAT: Final = "yikatong-interop-public-keys/1"
PUBLIC_KEYS_MAX: Final = 16


def signing_file_path(keystore_path: Path) -> Path:
    return keystore_path.with_name(keystore_path.name + ".interop.json")


def _ad(city: str, key_id: str) -> bytes:
    return f"{SIGNING_FORMAT}|{city}|{key_id}".encode()


def _time(value: dt.datetime | None) -> str | None:
    return None if value is None else value.astimezone(dt.UTC).isoformat(timespec="seconds")


def _parse_time(value: Any, what: str) -> dt.datetime | None:
    if value is None:
        return None
    try:
        moment = dt.datetime.fromisoformat(str(value))
    except ValueError:
        raise InteropError(InteropCode.E_INTEROP_BAD_KEY_FILE, f"{what} is not an ISO time") from None
    if moment.tzinfo is None:
        raise InteropError(InteropCode.E_INTEROP_BAD_KEY_FILE, f"{what} has no time zone")
    return moment.astimezone(dt.UTC)


@dataclass(frozen=True, slots=True)
class PublicKeyInfo:
    key_id: str
    public_key: str  # hex, raw 32 bytes
    created_at: dt.datetime
    retire_at: dt.datetime | None = None

    def accepted_at(self, moment: dt.datetime) -> bool:
        return self.retire_at is None or moment < self.retire_at

    def as_json(self) -> dict[str, Any]:
        return {
            "key_id": self.key_id,
            "public_key": self.public_key,
            "created_at": _time(self.created_at),
            "retire_at": _time(self.retire_at),
        }


# --- our signing keys -----------------------------------------------------------------------


class SigningKeys:
    """Our own signing keys in their sealed file. Holds the KEK's sealer; never shows a private key."""

    def __init__(self, path: Path, kek: bytes, city: str) -> None:
        assert city in CITIES
        self.path = path
        self.city = city
        self._kek = Kek(kek)
        self._lock = threading.Lock()
        self._doc: dict[str, Any] | None = None
        self._stamp: tuple[int, int, int] | None = None
        self._private: dict[str, Ed25519PrivateKey] = {}

    def __repr__(self) -> str:
        return f"SigningKeys({str(self.path)!r}, city={self.city!r})"

    @classmethod
    def from_settings(cls, settings: Any) -> SigningKeys:
        """The signing keys of ``Settings.keystore``'s city; the KEK as the key store has it."""
        from clearing.keystore import kek_from_settings

        try:
            kek = kek_from_settings(settings)
        except ClearingError as exc:
            raise InteropError(InteropCode.E_INTEROP_KEY_STORE, exc.message) from None
        return cls(signing_file_path(Path(settings.keystore)), kek, settings.city)

    # reading

    def _stamp_now(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _read(self) -> dict[str, Any]:
        if not self.path.exists():
            return {"format": SIGNING_FORMAT, "city": self.city, "kek_check": self._kek.new_check(), "keys": []}
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InteropError(
                InteropCode.E_INTEROP_KEY_STORE, f"cannot read {self.path}: {type(exc).__name__}"
            ) from None
        if not isinstance(doc, dict) or doc.get("format") != SIGNING_FORMAT or not isinstance(doc.get("keys"), list):
            raise InteropError(InteropCode.E_INTEROP_KEY_STORE, f"{self.path} is not an interop signing key file")
        if doc.get("city") != self.city:
            raise InteropError(
                InteropCode.E_INTEROP_KEY_STORE, f"{self.path} holds the keys of {doc.get('city')!r}, not {self.city!r}"
            )
        try:
            self._kek.verify_check(doc.get("kek_check"), self.path)
        except ClearingError as exc:
            raise InteropError(InteropCode.E_INTEROP_KEY_STORE, exc.message) from None
        return doc

    def _current_doc(self) -> dict[str, Any]:
        with self._lock:
            stamp = self._stamp_now()
            if self._doc is None or stamp != self._stamp:
                self._doc, self._stamp = self._read(), stamp
            return self._doc

    def keys(self) -> list[PublicKeyInfo]:
        """Every key held, oldest first (the newest is the one we sign with)."""
        return [
            PublicKeyInfo(
                str(k["key_id"]), str(k["public_key"]),
                _parse_time(k["created_at"], "created_at") or dt.datetime.min.replace(tzinfo=dt.UTC),
                _parse_time(k.get("retire_at"), "retire_at"),
            )
            for k in self._current_doc()["keys"]
        ]  # fmt: skip

    def current(self) -> tuple[str, Ed25519PrivateKey]:
        """The key we sign with now: the newest. ``E_INTEROP_NO_SIGNING_KEY`` if there is none."""
        doc = self._current_doc()
        if not doc["keys"]:
            raise InteropError(
                InteropCode.E_INTEROP_NO_SIGNING_KEY,
                f"no interop signing key in {self.path}; run `yikatong interop keys rotate` and give the peer "
                "`yikatong interop keys export`",
            )
        entry = doc["keys"][-1]
        key_id = str(entry["key_id"])
        private = self._private.get(key_id)
        if private is None:
            try:
                raw = self._kek.open(entry["sealed"], _ad(self.city, key_id), f"interop signing key {key_id}")
            except ClearingError as exc:
                raise InteropError(InteropCode.E_INTEROP_KEY_STORE, exc.message) from None
            private = Ed25519PrivateKey.from_private_bytes(raw)
            if key_id_of(private.public_key()) != key_id:
                raise InteropError(InteropCode.E_INTEROP_KEY_STORE, f"signing key {key_id} does not match its id")
            self._private[key_id] = private
        return key_id, private

    def public_key(self, key_id: str) -> Ed25519PublicKey | None:
        for k in self.keys():
            if k.key_id == key_id:
                return public_key_from_hex(k.public_key)
        return None

    # changing

    @contextmanager
    def _changing(self) -> Iterator[dict[str, Any]]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            doc = self._read()
            yield doc
            tmp_fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
            try:
                with os.fdopen(tmp_fd, "w", encoding="utf-8") as out:
                    json.dump(doc, out, indent=1, sort_keys=True)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(tmp, self.path)
            finally:
                Path(tmp).unlink(missing_ok=True)
            with self._lock:
                self._doc, self._stamp = None, None
        finally:
            os.close(fd)

    def rotate(self, *, now: dt.datetime, overlap: dt.timedelta) -> PublicKeyInfo:
        """A new signing key, used from now on; the previous ones retire at ``now + overlap``."""
        private = Ed25519PrivateKey.generate()
        public = private.public_key()
        key_id = key_id_of(public)
        raw = private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        with self._changing() as doc:
            retire = now + overlap
            for k in doc["keys"]:
                old = _parse_time(k.get("retire_at"), "retire_at")
                if old is None or old > retire:
                    k["retire_at"] = _time(retire)
            doc["keys"] = [k for k in doc["keys"] if (_parse_time(k.get("retire_at"), "retire_at") or now) > now][
                -(PUBLIC_KEYS_MAX - 1) :
            ]
            info = PublicKeyInfo(key_id, raw_public(public).hex(), now)
            doc["keys"].append({**info.as_json(), "sealed": self._kek.seal(raw, _ad(self.city, key_id))})
        return info

    def export(self, *, now: dt.datetime) -> dict[str, Any]:
        """The public key document the peer imports: every key still accepted at ``now``."""
        keys = [k for k in self.keys() if k.accepted_at(now)]
        return {"format": PUBLIC_FORMAT, "city": self.city, "keys": [k.as_json() for k in keys]}


# --- the peer's public keys -----------------------------------------------------------------


def parse_public_document(source: Mapping[str, Any] | str | bytes) -> tuple[str, list[PublicKeyInfo]]:
    """A peer's export: ``(city, keys)``; ``E_INTEROP_BAD_KEY_FILE`` names what is wrong."""
    bad = InteropCode.E_INTEROP_BAD_KEY_FILE
    if isinstance(source, str | bytes):
        try:
            source = json.loads(source)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise InteropError(bad, "the key document is not JSON") from None
    if not isinstance(source, Mapping) or source.get("format") != PUBLIC_FORMAT:
        raise InteropError(bad, f"the key document's format must be {PUBLIC_FORMAT!r}")
    city = source.get("city")
    if city not in CITIES:
        raise InteropError(bad, f"the key document's city must be one of {', '.join(CITIES)}")
    raw_keys = source.get("keys")
    if not isinstance(raw_keys, list) or not 0 < len(raw_keys) <= PUBLIC_KEYS_MAX:
        raise InteropError(bad, f"the key document must list 1..{PUBLIC_KEYS_MAX} keys")
    keys = []
    for n, raw in enumerate(raw_keys):
        if not isinstance(raw, Mapping) or not isinstance(raw.get("public_key"), str):
            raise InteropError(bad, f"key {n} has no public_key")
        public = public_key_from_hex(str(raw["public_key"]))
        key_id = key_id_of(public)
        if raw.get("key_id") != key_id:
            raise InteropError(bad, f"key {n}: key_id is not the fingerprint of its public key ({key_id})")
        created = _parse_time(raw.get("created_at"), f"key {n}: created_at")
        if created is None:
            raise InteropError(bad, f"key {n} has no created_at")
        keys.append(PublicKeyInfo(key_id, raw_public(public).hex(), created, _parse_time(raw.get("retire_at"), "")))
    return str(city), keys


@dataclass(frozen=True, slots=True)
class ImportResult:
    added: list[str]
    retired: list[str]


def import_peer_keys(
    session: Session, source: Mapping[str, Any] | str | bytes, *, own_city: str, now: dt.datetime,
    overlap: dt.timedelta,
) -> ImportResult:  # fmt: skip
    """Import a peer's public key document, in the caller's transaction.

    Keys the document lists are added (or their retirement taken from it, never extended);
    the peer's held keys it no longer lists retire at ``now + overlap`` (or earlier, if so set).
    """
    city, keys = parse_public_document(source)
    if city == own_city:
        raise InteropError(
            InteropCode.E_INTEROP_BAD_KEY_FILE, f"the key document is {city}'s own: import the peer's export"
        )
    held = {k.key_id: k for k in session.scalars(select(PeerKey).where(PeerKey.peer_city == city))}
    added, retired = [], []
    listed = set()
    for k in keys:
        listed.add(k.key_id)
        row = held.get(k.key_id)
        if row is None:
            session.add(
                PeerKey(key_id=k.key_id, peer_city=city, public_key=k.public_key, created_at=k.created_at,
                        imported_at=now, retire_at=k.retire_at)
            )  # fmt: skip
            added.append(k.key_id)
        elif k.retire_at is not None and (row.retire_at is None or k.retire_at < row.retire_at):
            row.retire_at = k.retire_at
            retired.append(k.key_id)
    retire = now + overlap
    for key_id, row in held.items():
        if key_id not in listed and (row.retire_at is None or row.retire_at > retire):
            row.retire_at = retire
            retired.append(key_id)
    session.flush()
    return ImportResult(added, retired)


def peer_keys(session: Session, peer_city: str | None = None) -> list[PeerKey]:
    query = select(PeerKey).order_by(PeerKey.peer_city, PeerKey.created_at)
    if peer_city is not None:
        query = query.where(PeerKey.peer_city == peer_city)
    return list(session.scalars(query))


@dataclass(frozen=True, slots=True)
class PeerKeyRing:
    """The peer keys a receiver or sender checks signatures with: ``{key_id: (city, key, retire_at)}``."""

    keys: Mapping[str, tuple[str, Ed25519PublicKey, dt.datetime | None]]

    @classmethod
    def load(cls, session: Session, *, configured: Sequence[tuple[str, str]] = ()) -> PeerKeyRing:
        """The imported keys, plus ``(city, hex)`` keys from the configuration (never retired)."""
        out: dict[str, tuple[str, Ed25519PublicKey, dt.datetime | None]] = {}
        for city, hex_key in configured:
            public = public_key_from_hex(hex_key)
            out[key_id_of(public)] = (city, public, None)
        for row in peer_keys(session):
            out.setdefault(row.key_id, (row.peer_city, public_key_from_hex(row.public_key), row.retire_at))
        return cls(out)

    def key(self, key_id: str, *, now: dt.datetime, city: str | None = None) -> tuple[str, Ed25519PublicKey]:
        """``(city, public key)`` of an accepted key, else ``E_INTEROP_UNKNOWN_KEY`` / ``E_INTEROP_KEY_RETIRED``."""
        found = self.keys.get(key_id)
        if found is None or (city is not None and found[0] != city):
            raise InteropError(
                InteropCode.E_INTEROP_UNKNOWN_KEY,
                f"key {key_id} is not an imported key of {'the peer' if city is None else city}",
            )
        peer, public, retire_at = found
        if retire_at is not None and now >= retire_at:
            raise InteropError(
                InteropCode.E_INTEROP_KEY_RETIRED,
                f"key {key_id} of {peer} retired at {_time(retire_at)}: its overlap has ended",
            )
        return peer, public


__all__ = [
    "PUBLIC_FORMAT",
    "SIGNING_FORMAT",
    "ImportResult",
    "PeerKeyRing",
    "PublicKeyInfo",
    "SigningKeys",
    "import_peer_keys",
    "parse_public_document",
    "peer_keys",
    "signing_file_path",
]
