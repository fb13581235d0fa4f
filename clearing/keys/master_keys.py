"""The issuers' master keys (MPK, MLK, MTK, MAMK) per key version, and the card keys made from them.

Versions are only ever added (``create``, ``rotate``, ``import_entries``), never changed or
removed. A master key is decrypted the first time it is needed and then kept in memory;
diversified card keys sit in a bounded LRU cache (``dtk`` is the hot path of TAC
verification). The one path on which master keys leave: ``psam_keys`` (purchase and
maintenance keys only, for emulated PSAMs). Errors name issuer, version and key name, never
a value; nothing here logs.
"""

from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cardos.crypto import ALGORITHMS, KEY_LEN, derive_card_key
from cardos.image import CardKeys
from clearing.contract.codes import Code
from clearing.errors import ClearingError
from clearing.keys.common import asn_bytes, associated_data, city_of, issuer_bytes, utc_now
from clearing.keys.kek import Kek
from clearing.keys.store_file import KeyStoreFile

KEY_NAMES: Final = ("mpk", "mlk", "mtk", "mamk")
KEY_VERSION_MAX: Final = 0xFF
CACHE_SIZE_DEFAULT: Final = 100_000

CeremonyEntry = tuple[str, int, int, dict[str, bytes]]  # (issuer_hex, key_version, alg_id, keys)
_Slot = tuple[bytes, bytes, int, str]


@dataclass(frozen=True, slots=True)
class VersionInfo:
    """What ``keys list`` shows: never key material."""

    issuer_id: str
    key_version: int
    alg_id: int
    keys: tuple[str, ...]
    created_at: str
    current: bool


class MasterKeys:
    """Master keys of the issuers in one key store file; changes run inside ``file.update()``."""

    def __init__(self, file: KeyStoreFile, kek: Kek, *, cache_size: int = CACHE_SIZE_DEFAULT) -> None:
        assert cache_size > 0
        self._file = file
        self._kek = kek
        self._lock = threading.RLock()
        self._clear: dict[tuple[str, int, str], bytes] = {}
        self._cache: OrderedDict[_Slot, Any] = OrderedDict()
        self._cache_size = cache_size
        self.cache_hits = 0
        self.cache_misses = 0

    def __repr__(self) -> str:
        return f"MasterKeys({self._file.path}, {len(self._file.issuers)} issuers)"

    # --- what is held -------------------------------------------------------------------------

    def issuers(self) -> list[str]:
        return sorted(self._file.issuers)

    def has_issuer(self, issuer: str | bytes) -> bool:
        return issuer_bytes(issuer).hex() in self._file.issuers

    def versions(self, issuer: str | bytes) -> list[int]:
        return sorted(int(v) for v in self._file.entry(issuer_bytes(issuer).hex())["versions"])

    def current_version(self, issuer: str | bytes) -> int:
        """The key version new cards get: the newest."""
        return self.versions(issuer)[-1]

    def alg_id(self, issuer: str | bytes, key_version: int) -> int:
        return int(self._version(issuer_bytes(issuer).hex(), key_version)["alg_id"])

    def list_versions(self) -> list[VersionInfo]:
        out = []
        for issuer_hex in self.issuers():
            current = self.current_version(issuer_hex)
            for version in self.versions(issuer_hex):
                v = self._version(issuer_hex, version)
                keys = tuple(sorted(v["keys"]))
                out.append(
                    VersionInfo(issuer_hex, version, int(v["alg_id"]), keys, v["created_at"], version == current)
                )
        return out

    def _version(self, issuer_hex: str, key_version: int) -> dict[str, Any]:
        v = self._file.entry(issuer_hex)["versions"].get(str(key_version))
        if v is None and self._file.refresh():  # a version rotated in by another process
            v = self._file.entry(issuer_hex)["versions"].get(str(key_version))
        if v is None:
            raise ClearingError(Code.E_UNKNOWN_KEY_VERSION, f"no key version {key_version} for issuer {issuer_hex}")
        assert isinstance(v, dict)
        return v

    def _master(self, issuer_hex: str, key_version: int, name: str) -> bytes:
        slot = (issuer_hex, key_version, name)
        key = self._clear.get(slot)
        if key is not None:
            return key
        blob = self._version(issuer_hex, key_version)["keys"].get(name)
        if blob is None:
            raise ClearingError(
                Code.E_KEY_MISSING,
                f"issuer {issuer_hex} key version {key_version} has no {name.upper()} "
                "(a peer issuer's load and TAC keys stay with that issuer)",
            )
        key = self._kek.open(
            blob, associated_data(issuer_hex, str(key_version), name), f"{name.upper()} v{key_version}"
        )
        with self._lock:
            self._clear[slot] = key
        return key

    def forget(self) -> None:
        """Drop decrypted master keys and cached card keys (after a change that did not save)."""
        with self._lock:
            self._clear.clear()
            self._cache.clear()

    # --- adding versions (inside ``file.update()``) -------------------------------------------

    def _add_version(self, issuer_hex: str, key_version: int, alg_id: int, keys: Mapping[str, bytes]) -> None:
        assert self._file.changing, "master keys change only inside KeyStoreFile.update()"
        if alg_id not in ALGORITHMS:
            raise ClearingError(Code.E_BAD_ALG, f"unknown algorithm id {alg_id}")
        if not 0 <= key_version <= KEY_VERSION_MAX:
            raise ClearingError(Code.E_BAD_KEY_VERSION, f"key version {key_version} is not a byte")
        if "mpk" not in keys:
            raise ClearingError(Code.E_KEY_MISSING, f"issuer {issuer_hex} v{key_version}: an MPK is required")
        for name, value in keys.items():
            if name not in KEY_NAMES or len(value) != KEY_LEN:
                raise ClearingError(
                    Code.E_BAD_KEY, f"issuer {issuer_hex} v{key_version}: {name} must be {KEY_LEN} bytes"
                )
        entry = self._file.issuers.setdefault(issuer_hex, {"city": city_of(issuer_hex), "versions": {}})
        if str(key_version) in entry["versions"]:
            raise ClearingError(
                Code.E_KEYS_EXIST, f"issuer {issuer_hex} already has key version {key_version}; refusing to overwrite"
            )
        entry["versions"][str(key_version)] = {
            "alg_id": alg_id,
            "created_at": utc_now().isoformat(),
            "keys": {
                n: self._kek.seal(k, associated_data(issuer_hex, str(key_version), n)) for n, k in sorted(keys.items())
            },
        }

    def create(self, issuer_hex: str, *, alg_id: int, key_version: int) -> None:
        """Fresh random master keys, all four, as the issuer's first version."""
        if issuer_hex in self._file.issuers:
            raise ClearingError(Code.E_KEYS_EXIST, f"issuer {issuer_hex} already has keys; use `keys rotate`")
        self._add_version(issuer_hex, key_version, alg_id, {name: os.urandom(KEY_LEN) for name in KEY_NAMES})

    def rotate(self, issuer_hex: str) -> int:
        """Add version n+1 with fresh keys, the same algorithm and the same key names as version n."""
        current = self.current_version(issuer_hex)
        if current >= KEY_VERSION_MAX:
            raise ClearingError(Code.E_KEY_VERSION_EXHAUSTED, f"issuer {issuer_hex} is at key version {current}")
        v = self._version(issuer_hex, current)
        keys = {name: os.urandom(KEY_LEN) for name in sorted(v["keys"])}
        self._add_version(issuer_hex, current + 1, int(v["alg_id"]), keys)
        return current + 1

    def import_entries(self, parsed: Iterable[CeremonyEntry]) -> list[tuple[str, int]]:
        """Add every (issuer, version) not yet held; one already held must hold the same keys.

        Checks all entries before adding any, so a conflict leaves the document unchanged.
        """
        entries = list(parsed)
        for issuer_hex, version, alg_id, keys in entries:
            held = self._file.issuers.get(issuer_hex, {}).get("versions", {}).get(str(version))
            if held is None:
                continue
            same = held["alg_id"] == alg_id and sorted(held["keys"]) == sorted(keys)
            same = same and all(self._master(issuer_hex, version, n) == k for n, k in keys.items())
            if not same:
                raise ClearingError(
                    Code.E_KEYS_EXIST, f"issuer {issuer_hex} key version {version} is already held with other keys"
                )
        imported: list[tuple[str, int]] = []
        for issuer_hex, version, alg_id, keys in entries:
            if str(version) in self._file.issuers.get(issuer_hex, {}).get("versions", {}):
                continue
            self._add_version(issuer_hex, version, alg_id, keys)
            imported.append((issuer_hex, version))
        return imported

    # --- card keys ----------------------------------------------------------------------------

    def _cached(self, slot: _Slot) -> Any:
        with self._lock:
            value = self._cache.get(slot)
            if value is not None:
                self._cache.move_to_end(slot)
                self.cache_hits += 1
            else:
                self.cache_misses += 1
            return value

    def _remember(self, slot: _Slot, value: Any) -> None:
        with self._lock:
            self._cache[slot] = value
            self._cache.move_to_end(slot)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)

    def cache_len(self) -> int:
        return len(self._cache)

    def cache_clear(self) -> None:
        with self._lock:
            self._cache.clear()
            self.cache_hits = self.cache_misses = 0

    def card_key(self, issuer: str | bytes, asn: str | bytes, key_version: int, name: str) -> bytes:
        """One diversified card key (cached): ``name`` is the master key's (mpk, mlk, mtk, mamk)."""
        iid, asn8 = issuer_bytes(issuer), asn_bytes(asn)
        slot = (iid, asn8, key_version, name)
        hit = self._cached(slot)
        if hit is not None:
            assert isinstance(hit, bytes)
            return hit
        issuer_hex = iid.hex()
        alg = self.alg_id(issuer_hex, key_version)
        key = derive_card_key(self._master(issuer_hex, key_version, name), iid, asn8, alg)
        self._remember(slot, key)
        return key

    def card_keys(self, issuer: str | bytes, asn: str | bytes, key_version: int | None = None) -> CardKeys:
        """All four diversified keys of a card (personalisation), at ``key_version`` or the newest."""
        version = self.current_version(issuer) if key_version is None else key_version
        iid, asn8 = issuer_bytes(issuer), asn_bytes(asn)
        slot = (iid, asn8, version, "*")
        hit = self._cached(slot)
        if hit is not None:
            assert isinstance(hit, CardKeys)
            return hit
        keys = CardKeys(
            dpk=self.card_key(iid, asn8, version, "mpk"),
            dlk=self.card_key(iid, asn8, version, "mlk"),
            dtk=self.card_key(iid, asn8, version, "mtk"),
            damk=self.card_key(iid, asn8, version, "mamk"),
            key_version=version,
            alg_id=self.alg_id(iid, version),
        )
        self._remember(slot, keys)
        return keys

    # --- the sanctioned export: emulated PSAMs -----------------------------------------------

    def psam_keys(self, issuer_ids: Iterable[str | bytes]) -> dict[bytes, tuple[bytes, bytes, int, int]]:
        """``{issuer_id: (mpk, mamk, key_version, alg_id)}`` at each issuer's newest version.

        The one sanctioned path on which master keys leave the store: to personalise an
        emulated PSAM (``cardos.psam.psam_image_for_terminal``), which needs the master
        purchase and maintenance keys to diversify per card. Load and TAC master keys are
        never exported. See ``docs/keystore.md``.
        """
        out: dict[bytes, tuple[bytes, bytes, int, int]] = {}
        for issuer in issuer_ids:
            iid = issuer_bytes(issuer)
            version = self.current_version(iid)
            _, mpk, mamk, _, alg = self._psam_entry(iid, version)
            out[iid] = (mpk, mamk, version, alg)
        return out

    def psam_keys_all_versions(self, issuer_ids: Iterable[str | bytes]) -> list[tuple[bytes, bytes, bytes, int, int]]:
        """``[(issuer_id, mpk, mamk, key_version, alg_id)]`` for every held version (PSAMs that
        must still serve cards issued before a rotation). Same export rule as ``psam_keys``."""
        return [self._psam_entry(iid, v) for iid in map(issuer_bytes, issuer_ids) for v in self.versions(iid)]

    def _psam_entry(self, iid: bytes, version: int) -> tuple[bytes, bytes, bytes, int, int]:
        issuer_hex = iid.hex()
        mpk, mamk = self._master(issuer_hex, version, "mpk"), self._master(issuer_hex, version, "mamk")
        return iid, mpk, mamk, version, self.alg_id(issuer_hex, version)


# --- key ceremony files -----------------------------------------------------------------------


def parse_ceremony(source: Path | str | Mapping[str, Any]) -> list[CeremonyEntry]:
    """Parse a key-ceremony document (``spec/terminal-api.md``, Administration), all entries or none.

    ``{"issuers": [{"issuer_id", "alg_id", "key_version", "mpk", "mlk", "mtk", "mamk"}]}``,
    hex; a peer issuer may come with ``mpk`` and ``mamk`` only. Errors name the field, never
    its value.
    """
    if isinstance(source, Mapping):
        doc: Any = source
    else:
        try:
            doc = json.loads(Path(source).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ClearingError(Code.E_CEREMONY_FILE, f"cannot read key ceremony file: {type(exc).__name__}") from None
    if not isinstance(doc, Mapping) or not isinstance(doc.get("issuers"), list):
        raise ClearingError(Code.E_CEREMONY_FORMAT, 'expected {"issuers": [...]}')
    return [_parse_ceremony_entry(i, item) for i, item in enumerate(doc["issuers"])]


def _parse_ceremony_entry(index: int, item: object) -> CeremonyEntry:
    where = f"issuers[{index}]"
    if not isinstance(item, Mapping):
        raise ClearingError(Code.E_CEREMONY_FORMAT, f"{where} must be an object")
    unknown = set(item) - {"issuer_id", "alg_id", "key_version", *KEY_NAMES}
    if unknown:
        raise ClearingError(Code.E_CEREMONY_FORMAT, f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    issuer_id = item.get("issuer_id")
    if not isinstance(issuer_id, str) or len(issuer_id) != 16:
        raise ClearingError(Code.E_CEREMONY_FORMAT, f"{where}.issuer_id must be 16 hex chars")
    issuer_hex = issuer_bytes(issuer_id).hex()
    alg_id, version = item.get("alg_id"), item.get("key_version")
    if type(alg_id) is not int or alg_id not in ALGORITHMS:
        raise ClearingError(Code.E_CEREMONY_FORMAT, f"{where}.alg_id must be one of {sorted(ALGORITHMS)}")
    if type(version) is not int or not 0 <= version <= KEY_VERSION_MAX:
        raise ClearingError(Code.E_CEREMONY_FORMAT, f"{where}.key_version must be 0..255")
    keys: dict[str, bytes] = {}
    for name in KEY_NAMES:
        value = item.get(name)
        if value is None:
            continue
        # Never echo the value: it is key material.
        if not isinstance(value, str) or len(value) != 2 * KEY_LEN:
            raise ClearingError(Code.E_CEREMONY_FORMAT, f"{where}.{name} must be {2 * KEY_LEN} hex chars")
        try:
            keys[name] = bytes.fromhex(value)
        except ValueError:
            raise ClearingError(Code.E_CEREMONY_FORMAT, f"{where}.{name} is not hex") from None
    if "mpk" not in keys:
        raise ClearingError(Code.E_CEREMONY_FORMAT, f"{where}: mpk is required")
    return issuer_hex, version, alg_id, keys


__all__ = [
    "CACHE_SIZE_DEFAULT",
    "KEY_NAMES",
    "KEY_VERSION_MAX",
    "CeremonyEntry",
    "MasterKeys",
    "VersionInfo",
    "parse_ceremony",
]
