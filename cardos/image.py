"""The card image: an emulated card's whole persistent memory as a versioned JSON document.

``card-profile.md``, "Card image": files, purse, per-card keys (the emulated secure
memory), auth material, PIN state and the prove data of the last purchases and loads.
The schema is documented field by field in ``docs/card-image.md``; bump ``SCHEMA_VERSION``
(and write a migration note there) whenever its meaning changes. Loading reads the
versions in ``READABLE_VERSIONS`` and refuses any other version and any malformed
document with ``ImageError`` rather than guessing.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from cardos.crypto import ALGORITHMS, KEY_LEN, MAC_LEN
from cardos.profile import LOG_RECORDS, PIN_TRIES_MAX, PROVE_ENTRIES_MAX, PURSE_MAX_FEN, TRANSIT_RECORDS

SCHEMA_VERSION: Final = 2
# Version 1 had no ``load_prove``; it reads as version 2 with none (docs/card-image.md).
READABLE_VERSIONS: Final = frozenset({1, SCHEMA_VERSION})

PUBLIC_LEN: Final = 30  # SFI 0x15
HOLDER_LEN: Final = 55  # SFI 0x16
MANAGEMENT_LEN: Final = 60  # SFI 0x17
LOG_RECORD_LEN: Final = 23  # SFI 0x18
TRANSIT_RECORD_LEN: Final = 48  # SFI 0x1E
COUNTER_MAX: Final = 0xFFFF  # 2-byte transaction counters
PIN_LEN: Final = 6
PURCHASE_PROVE_TYPES: Final = frozenset({0x06, 0x09})  # GET TRANSACTION PROVE P2 of ``prove``
LOAD_PROVE_TYPES: Final = frozenset({0x02})  # P2 of ``load_prove`` (project-defined)
PROVE_TYPES: Final = PURCHASE_PROVE_TYPES | LOAD_PROVE_TYPES


class ImageError(ValueError):
    """E_CARD_IMAGE: a card image is malformed or of an unknown schema version."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"E_CARD_IMAGE: {reason}")


def _need(ok: bool, reason: str) -> None:
    if not ok:
        raise ImageError(reason)


@dataclass(frozen=True, slots=True)
class CardKeys:
    """Per-card (already diversified) keys and the algorithm the card is personalised for."""

    dpk: bytes = field(repr=False)  # purchase
    dlk: bytes = field(repr=False)  # load
    dtk: bytes = field(repr=False)  # TAC
    damk: bytes = field(repr=False)  # application maintenance (APPLICATION BLOCK)
    key_version: int
    alg_id: int

    def __post_init__(self) -> None:
        for name in ("dpk", "dlk", "dtk", "damk"):
            value = getattr(self, name)
            _need(isinstance(value, bytes) and len(value) == KEY_LEN, f"key {name} must be {KEY_LEN} bytes")
        _need(0 <= self.key_version <= 0xFF, f"key version {self.key_version} is not a byte")
        _need(self.alg_id in ALGORITHMS, f"unknown algorithm id {self.alg_id:#04x}")


@dataclass(frozen=True, slots=True)
class PurseState:
    """The purse's persistent registers. Amounts in fen; counters are the 2-byte CTCs."""

    balance_fen: int = 0
    online_counter: int = 0  # loads
    offline_counter: int = 0  # purchases
    blocked: bool = False  # APPLICATION BLOCK is permanent

    def __post_init__(self) -> None:
        _need(0 <= self.balance_fen <= PURSE_MAX_FEN, f"balance {self.balance_fen} fen outside 0..{PURSE_MAX_FEN}")
        for name in ("online_counter", "offline_counter"):
            value = getattr(self, name)
            _need(0 <= value <= COUNTER_MAX, f"{name} {value} outside 0..{COUNTER_MAX}")


@dataclass(frozen=True, slots=True)
class AuthState:
    """Citizen-auth material: EC P-256 private key (PEM), certificate (DER), PIN and tries left."""

    private_key_pem: bytes = field(repr=False)
    certificate_der: bytes
    pin: str = field(repr=False)
    pin_tries_left: int = PIN_TRIES_MAX

    def __post_init__(self) -> None:
        _need(len(self.pin) == PIN_LEN and self.pin.isascii() and self.pin.isdigit(), "PIN must be 6 ASCII digits")
        _need(0 <= self.pin_tries_left <= PIN_TRIES_MAX, f"PIN tries {self.pin_tries_left} outside 0..{PIN_TRIES_MAX}")
        _need(len(self.certificate_der) > 0, "empty certificate")
        _need(self.private_key_pem.startswith(b"-----BEGIN"), "private key is not PEM")


@dataclass(frozen=True, slots=True)
class ProveEntry:
    """What GET TRANSACTION PROVE answers for one committed purchase or load.

    ``counter`` is the counter INITIALIZE returned plus one (the value after the
    commit), which is what validators send (section 8): the offline counter for a
    purchase (06, 09), the online counter for a load (02). ``mac2`` is the MAC2 the
    DEBIT returned, or for a load the host's MAC2 that CREDIT FOR LOAD accepted; ``tac``
    is the TAC the DEBIT or the CREDIT FOR LOAD returned.
    """

    tx_type: int
    counter: int
    mac2: bytes
    tac: bytes

    def __post_init__(self) -> None:
        _need(self.tx_type in PROVE_TYPES, f"prove entry of type {self.tx_type:#04x}")
        _need(1 <= self.counter <= COUNTER_MAX, f"prove counter {self.counter} outside 1..{COUNTER_MAX}")
        _need(len(self.mac2) == MAC_LEN and len(self.tac) == MAC_LEN, "prove MAC2 and TAC are 4 bytes each")


@dataclass(frozen=True, slots=True)
class CardImage:
    """A card's committed state. Records are newest first, as READ RECORD numbers them."""

    public: bytes  # SFI 0x15, 30 bytes
    management: bytes  # SFI 0x17, 60 bytes
    keys: CardKeys
    purse: PurseState = PurseState()
    holder: bytes | None = None  # SFI 0x16, 55 bytes (social security cards)
    log_records: tuple[bytes, ...] = ()  # SFI 0x18
    transit_records: tuple[bytes, ...] = ()  # SFI 0x1E
    auth: AuthState | None = None
    prove: tuple[ProveEntry, ...] = ()  # purchases, newest first
    load_prove: tuple[ProveEntry, ...] = ()  # loads, newest first
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        _need(
            self.schema_version == SCHEMA_VERSION,
            f"unsupported schema_version {self.schema_version!r} (this build reads {SCHEMA_VERSION})",
        )
        _need(len(self.public) == PUBLIC_LEN, f"file 0x15 must be {PUBLIC_LEN} bytes")
        _need(len(self.management) == MANAGEMENT_LEN, f"file 0x17 must be {MANAGEMENT_LEN} bytes")
        _need(self.holder is None or len(self.holder) == HOLDER_LEN, f"file 0x16 must be {HOLDER_LEN} bytes")
        _need(len(self.log_records) <= LOG_RECORDS, f"more than {LOG_RECORDS} log records")
        _need(all(len(r) == LOG_RECORD_LEN for r in self.log_records), f"log records are {LOG_RECORD_LEN} bytes")
        _need(len(self.transit_records) <= TRANSIT_RECORDS, f"more than {TRANSIT_RECORDS} transit records")
        _need(
            all(len(r) == TRANSIT_RECORD_LEN for r in self.transit_records),
            f"transit records are {TRANSIT_RECORD_LEN} bytes",
        )
        _need(len(self.prove) <= PROVE_ENTRIES_MAX, f"more than {PROVE_ENTRIES_MAX} prove entries")
        _need(all(p.tx_type in PURCHASE_PROVE_TYPES for p in self.prove), "prove holds purchases (06, 09) only")
        _need(len(self.load_prove) <= PROVE_ENTRIES_MAX, f"more than {PROVE_ENTRIES_MAX} load_prove entries")
        _need(all(p.tx_type in LOAD_PROVE_TYPES for p in self.load_prove), "load_prove holds loads (02) only")

    # --- JSON ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        files: dict[str, Any] = {"15": self.public.hex()}
        if self.holder is not None:
            files["16"] = self.holder.hex()
        files["17"] = self.management.hex()
        files["18"] = [r.hex() for r in self.log_records]
        files["1E"] = [r.hex() for r in self.transit_records]
        auth = None
        if self.auth is not None:
            auth = {
                "private_key_pem": self.auth.private_key_pem.decode("ascii"),
                "certificate_der": self.auth.certificate_der.hex(),
                "pin": self.auth.pin,
                "pin_tries_left": self.auth.pin_tries_left,
            }
        return {
            "schema_version": self.schema_version,
            "files": files,
            "purse": {
                "balance_fen": self.purse.balance_fen,
                "online_counter": self.purse.online_counter,
                "offline_counter": self.purse.offline_counter,
                "alg_id": self.keys.alg_id,
                "key_version": self.keys.key_version,
                "blocked": self.purse.blocked,
            },
            "keys": {name: getattr(self.keys, name).hex() for name in ("dpk", "dlk", "dtk", "damk")},
            "auth": auth,
            "prove": [_prove_dict(p) for p in self.prove],
            "load_prove": [_prove_dict(p) for p in self.load_prove],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, doc: object) -> CardImage:
        root = _obj(doc, "image")
        _need(root.get("kind") != "psam", "this is a PSAM image, not a card image")  # cardos.psam.PSAM_IMAGE_KIND
        version = root.get("schema_version")
        _need(
            type(version) is int and version in READABLE_VERSIONS,
            f"unsupported schema_version {version!r} (this build reads {sorted(READABLE_VERSIONS)})",
        )
        files = _obj(root.get("files"), "files")
        purse = _obj(root.get("purse"), "purse")
        keys = _obj(root.get("keys"), "keys")
        auth_doc = root.get("auth")
        auth = None
        if auth_doc is not None:
            a = _obj(auth_doc, "auth")
            pem = _str(a, "private_key_pem", "auth")
            _need(pem.isascii(), "auth.private_key_pem is not ASCII PEM")
            auth = AuthState(
                private_key_pem=pem.encode("ascii"),
                certificate_der=_hex(a, "certificate_der", "auth"),
                pin=_str(a, "pin", "auth"),
                pin_tries_left=_int(a, "pin_tries_left", "auth"),
            )
        holder = _hex(files, "16", "files") if files.get("16") is not None else None
        return cls(
            public=_hex(files, "15", "files"),
            management=_hex(files, "17", "files"),
            holder=holder,
            log_records=_hex_list(files, "18"),
            transit_records=_hex_list(files, "1E"),
            keys=CardKeys(
                dpk=_hex(keys, "dpk", "keys"),
                dlk=_hex(keys, "dlk", "keys"),
                dtk=_hex(keys, "dtk", "keys"),
                damk=_hex(keys, "damk", "keys"),
                key_version=_int(purse, "key_version", "purse"),
                alg_id=_int(purse, "alg_id", "purse"),
            ),
            purse=PurseState(
                balance_fen=_int(purse, "balance_fen", "purse"),
                online_counter=_int(purse, "online_counter", "purse"),
                offline_counter=_int(purse, "offline_counter", "purse"),
                blocked=_bool(purse, "blocked", "purse"),
            ),
            auth=auth,
            prove=_prove_list(root, "prove"),
            load_prove=_prove_list(root, "load_prove"),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> CardImage:
        try:
            doc = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ImageError(f"not JSON: {exc}") from exc
        return cls.from_dict(doc)

    # --- files ----------------------------------------------------------------------------
    def save_atomic(self, path: Path | str) -> None:
        """Write the image so that a crash leaves the old or the new file, never half of one."""
        target = Path(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(self.to_json())
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_dir(target.parent)

    @classmethod
    def load(cls, path: Path | str) -> CardImage:
        return cls.from_json(Path(path).read_bytes())


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --- strict field readers: every failure names the field -------------------------------


def _obj(value: object, where: str) -> dict[str, Any]:
    _need(isinstance(value, dict), f"{where} must be an object")
    assert isinstance(value, dict)
    return value


def _int(doc: dict[str, Any], key: str, where: str) -> int:
    value = doc.get(key)
    _need(type(value) is int, f"{where}.{key} must be an integer")
    assert isinstance(value, int)
    return value


def _bool(doc: dict[str, Any], key: str, where: str) -> bool:
    value = doc.get(key)
    _need(isinstance(value, bool), f"{where}.{key} must be true or false")
    return bool(value)


def _str(doc: dict[str, Any], key: str, where: str) -> str:
    value = doc.get(key)
    _need(isinstance(value, str), f"{where}.{key} must be a string")
    assert isinstance(value, str)
    return value


def _hex(doc: dict[str, Any], key: str, where: str) -> bytes:
    text = _str(doc, key, where)
    try:
        return bytes.fromhex(text)
    except ValueError as exc:
        raise ImageError(f"{where}.{key} is not hex") from exc


def _prove_dict(entry: ProveEntry) -> dict[str, Any]:
    return {"tx_type": entry.tx_type, "counter": entry.counter, "mac2": entry.mac2.hex(), "tac": entry.tac.hex()}


def _prove_list(root: dict[str, Any], key: str) -> tuple[ProveEntry, ...]:
    """``prove`` or ``load_prove``; absent means empty (a version 1 image has no ``load_prove``)."""
    items = root.get(key, [])
    _need(isinstance(items, list), f"{key} must be a list")
    assert isinstance(items, list)
    where = f"{key}[]"
    return tuple(
        ProveEntry(
            tx_type=_int(p, "tx_type", where),
            counter=_int(p, "counter", where),
            mac2=_hex(p, "mac2", where),
            tac=_hex(p, "tac", where),
        )
        for p in (_obj(item, where) for item in items)
    )


def _hex_list(files: dict[str, Any], key: str) -> tuple[bytes, ...]:
    items = files.get(key, [])
    _need(isinstance(items, list), f"files.{key} must be a list of hex records")
    assert isinstance(items, list)
    out = []
    for item in items:
        _need(isinstance(item, str), f"files.{key} must be a list of hex records")
        try:
            out.append(bytes.fromhex(item))
        except ValueError as exc:
            raise ImageError(f"files.{key} holds a record that is not hex") from exc
    return tuple(out)
