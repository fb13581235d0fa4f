"""The issuer key store: master keys and the issuer CA, encrypted at rest under the KEK.

``ARCHITECTURE.md`` ("Key store"): master keys encrypted at rest (AES-GCM under the KEK),
versioned, loaded once; the only code that sees clear master keys is this module and the
emulated PSAM. ``docs/keystore.md`` describes the file format, the KEK and the one path
on which master keys leave the store (``psam_keys``).

Rules this module keeps, and tests check:
* a master key is never logged, printed, put in a database, in a ``repr``/``str`` or in an
  exception message (errors name the issuer, version and key name, never the value);
* each key is a separate AES-256-GCM ciphertext with its own random 96-bit nonce and
  associated data ``yikatong-keystore/1|<issuer_id>|<version>|<name>``, so a ciphertext
  moved to another slot does not decrypt;
* keys are decrypted lazily, on first use, and diversified card keys are kept in a bounded
  LRU cache (``dtk`` is the hot path of TAC verification).
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import os
import stat
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cryptography import x509
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.x509.oid import NameOID

from cardos.crypto import ALG_3DES, ALGORITHMS, KEY_LEN, derive_card_key
from cardos.image import CardKeys
from cardos.profile import ISSUERS

FORMAT: Final = "yikatong-keystore"
FORMAT_VERSION: Final = 1
KEY_NAMES: Final = ("mpk", "mlk", "mtk", "mamk")
KEK_LEN: Final = 32
NONCE_LEN: Final = 12
CACHE_SIZE_DEFAULT: Final = 100_000
KEY_VERSION_MAX: Final = 0xFF
CA_VALIDITY_DAYS: Final = 20 * 366
CARD_CERT_VALIDITY_DAYS: Final = 10 * 366
_KEK_CHECK_PLAINTEXT: Final = b"yikatong key store KEK check"


class KeyStoreError(Exception):
    """A key store operation failed: a stable ``code`` and a sentence that never holds key material."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class VersionInfo:
    """What ``keys list`` shows: never key material."""

    issuer_id: str
    key_version: int
    alg_id: int
    keys: tuple[str, ...]
    created_at: str
    current: bool


def issuer_bytes(issuer: str | bytes) -> bytes:
    """Issuer id from bytes, 16 hex chars, or a city name (``xianyang``, ``xian``)."""
    if isinstance(issuer, bytes):
        raw = issuer
    elif issuer.lower() in ISSUERS:
        raw = ISSUERS[issuer.lower()]
    else:
        try:
            raw = bytes.fromhex(issuer)
        except ValueError:
            raise KeyStoreError("E_BAD_ISSUER", f"issuer {issuer!r} is neither a city name nor 16 hex chars") from None
    if len(raw) != 8:
        raise KeyStoreError("E_BAD_ISSUER", f"issuer id must be 8 bytes, got {len(raw)}")
    return raw


def _asn_bytes(asn: str | bytes) -> bytes:
    if isinstance(asn, str):
        try:
            asn = bytes.fromhex(asn)
        except ValueError:
            raise KeyStoreError("E_BAD_ASN", "card ASN is not hex") from None
    if len(asn) not in (8, 10):
        raise KeyStoreError("E_BAD_ASN", f"card ASN must be 10 bytes (or its last 8), got {len(asn)}")
    return asn[-8:]


def _ad(issuer_hex: str, version: str, name: str) -> bytes:
    return f"{FORMAT}/{FORMAT_VERSION}|{issuer_hex}|{version}|{name}".encode()


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# --- the KEK ------------------------------------------------------------------------------


def dev_kek_path(keystore_path: Path) -> Path:
    return keystore_path.with_name(keystore_path.name + ".kek")


def parse_kek(hex_kek: str) -> bytes:
    try:
        kek = bytes.fromhex(hex_kek.strip())
    except ValueError:
        raise KeyStoreError("E_BAD_KEK", "the KEK is not hex") from None
    if len(kek) != KEK_LEN:
        raise KeyStoreError("E_BAD_KEK", f"the KEK must be {KEK_LEN} bytes ({2 * KEK_LEN} hex chars), got {len(kek)}")
    return kek


def load_or_create_dev_kek(keystore_path: Path) -> bytes:
    """Development KEK: a 0600 file next to the key store, created on first use.

    Production injects ``YIKATONG_KEK`` from a secret store instead. A KEK file readable by
    group or others is refused.
    """
    path = dev_kek_path(keystore_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise KeyStoreError(
                "E_KEK_PERMISSIONS", f"dev KEK file {path} is accessible to group/others; chmod 600 it"
            ) from None
        return parse_kek(path.read_text(encoding="ascii"))
    kek = os.urandom(KEK_LEN)
    with os.fdopen(fd, "w", encoding="ascii") as out:
        out.write(kek.hex() + "\n")
    return kek


def kek_from_settings(settings: Any) -> bytes:
    """The KEK from ``Settings.kek`` (hex), else the dev KEK file next to ``Settings.keystore``."""
    secret = getattr(settings, "kek", None)
    if secret is not None:
        return parse_kek(secret.get_secret_value())
    return load_or_create_dev_kek(Path(settings.keystore))


# --- the store ------------------------------------------------------------------------------


class KeyStore:
    """A file-based key store. Open it with ``KeyStore.open(path, kek)`` or ``from_settings``."""

    def __init__(self, path: Path, kek: bytes, doc: dict[str, Any], *, cache_size: int = CACHE_SIZE_DEFAULT) -> None:
        if len(kek) != KEK_LEN:
            raise KeyStoreError("E_BAD_KEK", f"the KEK must be {KEK_LEN} bytes")
        assert cache_size > 0
        self._path = path
        self._aead = AESGCM(kek)
        self._doc = doc
        self._lock = threading.RLock()
        self._clear: dict[tuple[str, int, str], bytes] = {}
        self._ca_key: dict[str, ec.EllipticCurvePrivateKey] = {}
        self._cache: OrderedDict[tuple[bytes, bytes, int, str], Any] = OrderedDict()
        self._cache_size = cache_size
        self.cache_hits = 0
        self.cache_misses = 0
        self._mtime_ns = path.stat().st_mtime_ns if path.exists() else 0
        self._check_kek()

    def __repr__(self) -> str:
        held = ", ".join(f"{i}/v{','.join(sorted(e['versions']))}" for i, e in sorted(self._doc["issuers"].items()))
        return f"KeyStore({str(self._path)!r}, issuers=[{held}])"

    __str__ = __repr__

    # --- opening and saving ---------------------------------------------------------------

    @classmethod
    def open(cls, path: Path | str, kek: bytes, *, cache_size: int = CACHE_SIZE_DEFAULT) -> KeyStore:
        """Load the store at ``path`` (an empty store if the file does not exist yet)."""
        path = Path(path)
        return cls(path, kek, _read_doc(path), cache_size=cache_size)

    @classmethod
    def from_settings(cls, settings: Any) -> KeyStore:
        return cls.open(Path(settings.keystore), kek_from_settings(settings))

    @property
    def path(self) -> Path:
        return self._path

    def _check_kek(self) -> None:
        check = self._doc.get("kek_check")
        if check is None:
            return
        try:
            self._aead.decrypt(bytes.fromhex(check["nonce"]), bytes.fromhex(check["ct"]), b"kek_check")
        except InvalidTag:
            raise KeyStoreError(
                "E_KEK_MISMATCH", f"the KEK does not open key store {self._path} (wrong YIKATONG_KEK or KEK file?)"
            ) from None

    def _save(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self._path.name}.", suffix=".tmp", dir=self._path.parent)
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump(self._doc, out, indent=2, sort_keys=True)
                out.write("\n")
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self._path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self._mtime_ns = self._path.stat().st_mtime_ns

    def refresh(self) -> bool:
        """Reload the file if another process changed it (e.g. ``keys rotate``); True if reloaded.

        Already decrypted keys and cached card keys stay valid: versions are never changed,
        only added.
        """
        if not self._path.exists() or self._path.stat().st_mtime_ns == self._mtime_ns:
            return False
        with self._lock:
            doc = _read_doc(self._path)
            self._doc = doc
            self._mtime_ns = self._path.stat().st_mtime_ns
            self._check_kek()
        return True

    # --- encryption ---------------------------------------------------------------------------

    def _seal(self, plaintext: bytes, ad: bytes) -> dict[str, str]:
        nonce = os.urandom(NONCE_LEN)
        return {"nonce": nonce.hex(), "ct": self._aead.encrypt(nonce, plaintext, ad).hex()}

    def _open_blob(self, blob: Mapping[str, str], ad: bytes, what: str) -> bytes:
        try:
            return self._aead.decrypt(bytes.fromhex(blob["nonce"]), bytes.fromhex(blob["ct"]), ad)
        except (InvalidTag, KeyError, ValueError):
            raise KeyStoreError("E_KEY_DECRYPT", f"{what} does not decrypt (wrong KEK or tampered store)") from None

    @contextmanager
    def _changing(self) -> Iterator[None]:
        """All-or-nothing change of the document: saved at the end, restored on any error."""
        with self._lock:
            doc, clear, ca_keys = copy.deepcopy(self._doc), dict(self._clear), dict(self._ca_key)
            try:
                yield
                self._save()
            except BaseException:
                self._doc, self._clear, self._ca_key = doc, clear, ca_keys
                raise

    def _ensure_kek_check(self) -> None:
        if "kek_check" not in self._doc:
            self._doc["kek_check"] = self._seal(_KEK_CHECK_PLAINTEXT, b"kek_check")

    # --- what is held -------------------------------------------------------------------------

    def issuers(self) -> list[str]:
        return sorted(self._doc["issuers"])

    def has_issuer(self, issuer: str | bytes) -> bool:
        return issuer_bytes(issuer).hex() in self._doc["issuers"]

    def _entry(self, issuer_hex: str) -> dict[str, Any]:
        entry = self._doc["issuers"].get(issuer_hex)
        if entry is None:
            raise KeyStoreError("E_UNKNOWN_ISSUER", f"no keys for issuer {issuer_hex}")
        assert isinstance(entry, dict)
        return entry

    def versions(self, issuer: str | bytes) -> list[int]:
        return sorted(int(v) for v in self._entry(issuer_bytes(issuer).hex())["versions"])

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
                out.append(
                    VersionInfo(
                        issuer_hex,
                        version,
                        int(v["alg_id"]),
                        tuple(sorted(v["keys"])),
                        v["created_at"],
                        version == current,
                    )
                )
        return out

    def _version(self, issuer_hex: str, key_version: int) -> dict[str, Any]:
        entry = self._entry(issuer_hex)
        v = entry["versions"].get(str(key_version))
        if v is None and self.refresh():
            v = self._entry(issuer_hex)["versions"].get(str(key_version))
        if v is None:
            raise KeyStoreError("E_UNKNOWN_KEY_VERSION", f"no key version {key_version} for issuer {issuer_hex}")
        assert isinstance(v, dict)
        return v

    def _master(self, issuer_hex: str, key_version: int, name: str) -> bytes:
        slot = (issuer_hex, key_version, name)
        key = self._clear.get(slot)
        if key is not None:
            return key
        v = self._version(issuer_hex, key_version)
        blob = v["keys"].get(name)
        if blob is None:
            raise KeyStoreError(
                "E_KEY_MISSING",
                f"issuer {issuer_hex} key version {key_version} has no {name.upper()} "
                "(a peer issuer's load and TAC keys stay with that issuer)",
            )
        key = self._open_blob(blob, _ad(issuer_hex, str(key_version), name), f"{name.upper()} v{key_version}")
        with self._lock:
            self._clear[slot] = key
        return key

    # --- adding keys --------------------------------------------------------------------------

    def _add_version(
        self, issuer_hex: str, key_version: int, alg_id: int, keys: Mapping[str, bytes], city: str | None
    ) -> None:
        if alg_id not in ALGORITHMS:
            raise KeyStoreError("E_BAD_ALG", f"unknown algorithm id {alg_id}")
        if not 0 <= key_version <= KEY_VERSION_MAX:
            raise KeyStoreError("E_BAD_KEY_VERSION", f"key version {key_version} is not a byte")
        if "mpk" not in keys:
            raise KeyStoreError("E_KEY_MISSING", f"issuer {issuer_hex} v{key_version}: an MPK is required")
        for name, value in keys.items():
            if name not in KEY_NAMES or len(value) != KEY_LEN:
                raise KeyStoreError("E_BAD_KEY", f"issuer {issuer_hex} v{key_version}: {name} must be {KEY_LEN} bytes")
        entry = self._doc["issuers"].setdefault(issuer_hex, {"city": city, "versions": {}})
        if str(key_version) in entry["versions"]:
            raise KeyStoreError(
                "E_KEYS_EXIST", f"issuer {issuer_hex} already has key version {key_version}; refusing to overwrite"
            )
        entry["versions"][str(key_version)] = {
            "alg_id": alg_id,
            "created_at": _now().isoformat(),
            "keys": {n: self._seal(k, _ad(issuer_hex, str(key_version), n)) for n, k in sorted(keys.items())},
        }
        for name, value in keys.items():
            self._clear[(issuer_hex, key_version, name)] = value

    def init(self, issuers: Iterable[str | bytes], *, alg_id: int = ALG_3DES, key_version: int = 1) -> list[str]:
        """Generate fresh master keys (version ``key_version``) and an issuer CA per issuer.

        Refuses (``E_KEYS_EXIST``, nothing written) if any of them already has keys.
        """
        wanted = [issuer_bytes(i).hex() for i in issuers]
        if not wanted:
            raise KeyStoreError("E_NO_ISSUERS", "name at least one issuer")
        with self._changing():
            existing = [i for i in wanted if i in self._doc["issuers"]]
            if existing:
                raise KeyStoreError(
                    "E_KEYS_EXIST", f"issuer(s) {', '.join(existing)} already have keys; use `keys rotate`"
                )
            self._ensure_kek_check()
            for issuer_hex in wanted:
                keys = {name: os.urandom(KEY_LEN) for name in KEY_NAMES}
                self._add_version(issuer_hex, key_version, alg_id, keys, _city_of(issuer_hex))
                self._ensure_ca(issuer_hex)
        return wanted

    def rotate(self, issuer: str | bytes) -> int:
        """Add the next key version for an issuer; old versions stay for cards already issued."""
        issuer_hex = issuer_bytes(issuer).hex()
        self.refresh()
        with self._changing():
            current = self.current_version(issuer_hex)
            if current >= KEY_VERSION_MAX:
                raise KeyStoreError("E_KEY_VERSION_EXHAUSTED", f"issuer {issuer_hex} is at key version {current}")
            alg_id = self.alg_id(issuer_hex, current)
            held = sorted(self._version(issuer_hex, current)["keys"])
            keys = {name: os.urandom(KEY_LEN) for name in held}
            self._add_version(issuer_hex, current + 1, alg_id, keys, None)
        return current + 1

    def import_ceremony(self, source: Path | str | Mapping[str, Any]) -> list[tuple[str, int]]:
        """Import master keys from a key-ceremony JSON document (``spec/terminal-api.md``, Administration).

        ``{"issuers": [{"issuer_id", "alg_id", "key_version", "mpk", "mlk", "mtk", "mamk"}]}``,
        hex. A peer issuer may come with ``mpk`` and ``mamk`` only. An (issuer, version) that
        is already held with the same keys is skipped; with other keys it is refused. All or
        nothing: the file is written only if every entry is valid.
        """
        if isinstance(source, Mapping):
            doc: Any = source
        else:
            try:
                doc = json.loads(Path(source).read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as exc:
                raise KeyStoreError("E_CEREMONY_FILE", f"cannot read key ceremony file: {type(exc).__name__}") from None
        if not isinstance(doc, Mapping) or not isinstance(doc.get("issuers"), list):
            raise KeyStoreError("E_CEREMONY_FORMAT", 'expected {"issuers": [...]}')
        parsed = [_parse_ceremony_entry(i, item) for i, item in enumerate(doc["issuers"])]
        imported: list[tuple[str, int]] = []
        with self._changing():
            for issuer_hex, version, alg_id, keys in parsed:
                held = self._doc["issuers"].get(issuer_hex, {}).get("versions", {}).get(str(version))
                if held is not None:
                    same = held["alg_id"] == alg_id and sorted(held["keys"]) == sorted(keys)
                    same = same and all(self._master(issuer_hex, version, n) == k for n, k in keys.items())
                    if not same:
                        raise KeyStoreError(
                            "E_KEYS_EXIST",
                            f"issuer {issuer_hex} key version {version} is already held with other keys",
                        )
                    continue
            self._ensure_kek_check()
            for issuer_hex, version, alg_id, keys in parsed:
                if str(version) in self._doc["issuers"].get(issuer_hex, {}).get("versions", {}):
                    continue
                self._add_version(issuer_hex, version, alg_id, keys, _city_of(issuer_hex))
                self._ensure_ca(issuer_hex)
                imported.append((issuer_hex, version))
        return imported

    # --- card keys ----------------------------------------------------------------------------

    def _cached(self, slot: tuple[bytes, bytes, int, str]) -> Any:
        with self._lock:
            value = self._cache.get(slot)
            if value is not None:
                self._cache.move_to_end(slot)
                self.cache_hits += 1
            else:
                self.cache_misses += 1
            return value

    def _remember(self, slot: tuple[bytes, bytes, int, str], value: Any) -> None:
        with self._lock:
            self._cache[slot] = value
            self._cache.move_to_end(slot)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)

    def _card_key(self, issuer: str | bytes, asn: str | bytes, key_version: int, name: str) -> bytes:
        iid, asn8 = issuer_bytes(issuer), _asn_bytes(asn)
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

    def dtk(self, issuer: str | bytes, asn: str | bytes, key_version: int) -> bytes:
        """The card's TAC key (cached): the hot path of TAC verification in clearing."""
        return self._card_key(issuer, asn, key_version, "mtk")

    def dlk(self, issuer: str | bytes, asn: str | bytes, key_version: int) -> bytes:
        """The card's load key (cached): MAC1/MAC2 of online loads."""
        return self._card_key(issuer, asn, key_version, "mlk")

    def dpk(self, issuer: str | bytes, asn: str | bytes, key_version: int) -> bytes:
        return self._card_key(issuer, asn, key_version, "mpk")

    def damk(self, issuer: str | bytes, asn: str | bytes, key_version: int) -> bytes:
        return self._card_key(issuer, asn, key_version, "mamk")

    def card_keys(self, issuer: str | bytes, asn: str | bytes, key_version: int | None = None) -> CardKeys:
        """All four diversified keys of a card (personalisation), at ``key_version`` or the newest."""
        version = self.current_version(issuer) if key_version is None else key_version
        iid, asn8 = issuer_bytes(issuer), _asn_bytes(asn)
        slot = (iid, asn8, version, "*")
        hit = self._cached(slot)
        if hit is not None:
            assert isinstance(hit, CardKeys)
            return hit
        keys = CardKeys(
            dpk=self.dpk(iid, asn8, version),
            dlk=self.dlk(iid, asn8, version),
            dtk=self.dtk(iid, asn8, version),
            damk=self.damk(iid, asn8, version),
            key_version=version,
            alg_id=self.alg_id(iid, version),
        )
        self._remember(slot, keys)
        return keys

    def cache_clear(self) -> None:
        with self._lock:
            self._cache.clear()
            self.cache_hits = self.cache_misses = 0

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
            issuer_hex = iid.hex()
            out[iid] = (
                self._master(issuer_hex, version, "mpk"),
                self._master(issuer_hex, version, "mamk"),
                version,
                self.alg_id(issuer_hex, version),
            )
        return out

    def psam_keys_all_versions(self, issuer_ids: Iterable[str | bytes]) -> list[tuple[bytes, bytes, bytes, int, int]]:
        """``[(issuer_id, mpk, mamk, key_version, alg_id)]`` for every held version (PSAMs that
        must still serve cards issued before a rotation). Same export rule as ``psam_keys``."""
        out = []
        for issuer in issuer_ids:
            iid = issuer_bytes(issuer)
            for version in self.versions(iid):
                issuer_hex = iid.hex()
                out.append(
                    (
                        iid,
                        self._master(issuer_hex, version, "mpk"),
                        self._master(issuer_hex, version, "mamk"),
                        version,
                        self.alg_id(issuer_hex, version),
                    )
                )
        return out

    # --- issuer CA ----------------------------------------------------------------------------

    def _ensure_ca(self, issuer_hex: str) -> None:
        entry = self._entry(issuer_hex)
        if "ca" in entry:
            return
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Yikatong"),
                x509.NameAttribute(NameOID.COMMON_NAME, f"Yikatong issuer CA {issuer_hex}"),
            ]
        )
        now = _now()
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=CA_VALIDITY_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256())
        )
        der = key.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        entry["ca"] = {
            "key": self._seal(der, _ad(issuer_hex, "ca", "private_key")),
            "certificate_pem": cert.public_bytes(serialization.Encoding.PEM).decode("ascii"),
            "created_at": now.isoformat(),
        }
        self._ca_key[issuer_hex] = key

    def ca_certificate(self, issuer: str | bytes) -> x509.Certificate:
        """The issuer CA's self-signed certificate (public; the portal checks card certificates with it)."""
        issuer_hex = issuer_bytes(issuer).hex()
        ca = self._entry(issuer_hex).get("ca")
        if ca is None:
            raise KeyStoreError("E_NO_CA", f"issuer {issuer_hex} has no CA in this key store")
        return x509.load_pem_x509_certificate(ca["certificate_pem"].encode("ascii"))

    def _ca_private_key(self, issuer_hex: str) -> ec.EllipticCurvePrivateKey:
        key = self._ca_key.get(issuer_hex)
        if key is not None:
            return key
        ca = self._entry(issuer_hex).get("ca")
        if ca is None:
            raise KeyStoreError("E_NO_CA", f"issuer {issuer_hex} has no CA in this key store")
        der = self._open_blob(ca["key"], _ad(issuer_hex, "ca", "private_key"), "issuer CA key")
        loaded = serialization.load_der_private_key(der, password=None)
        assert isinstance(loaded, ec.EllipticCurvePrivateKey)
        self._ca_key[issuer_hex] = loaded
        return loaded

    def sign_card_certificate(
        self,
        issuer: str | bytes,
        card_public_key: ec.EllipticCurvePublicKey,
        card_asn_hex: str,
        *,
        now: dt.datetime | None = None,
        validity_days: int = CARD_CERT_VALIDITY_DAYS,
    ) -> x509.Certificate:
        """A card's citizen-auth certificate, subject = card ASN (hex), signed by the issuer CA.

        The CA private key stays inside the store (``card-profile.md``, "Citizen authentication").
        """
        issuer_hex = issuer_bytes(issuer).hex()
        ca_cert = self.ca_certificate(issuer_hex)
        ca_key = self._ca_private_key(issuer_hex)
        start = now or _now()
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Yikatong"),
                x509.NameAttribute(NameOID.SERIAL_NUMBER, card_asn_hex),
                x509.NameAttribute(NameOID.COMMON_NAME, card_asn_hex),
            ]
        )
        ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca_cert.subject)
            .public_key(card_public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(start - dt.timedelta(minutes=5))
            .not_valid_after(start + dt.timedelta(days=validity_days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
            .sign(ca_key, hashes.SHA256())
        )


def read_ca_certificates(path: Path | str) -> dict[str, x509.Certificate]:
    """Every issuer CA certificate in a key store file, without the KEK (they are public)."""
    doc = _read_doc(Path(path))
    return {
        issuer_hex: x509.load_pem_x509_certificate(entry["ca"]["certificate_pem"].encode("ascii"))
        for issuer_hex, entry in doc["issuers"].items()
        if "ca" in entry
    }


def _city_of(issuer_hex: str) -> str | None:
    for city, iid in ISSUERS.items():
        if iid.hex() == issuer_hex:
            return city
    return None


def _read_doc(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {"format": FORMAT, "format_version": FORMAT_VERSION, "issuers": {}}
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise KeyStoreError("E_KEYSTORE_FORMAT", f"cannot read key store {path}: {type(exc).__name__}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("issuers"), dict):
        raise KeyStoreError("E_KEYSTORE_FORMAT", f"{path} is not a Yikatong key store")
    if doc.get("format_version") != FORMAT_VERSION:
        raise KeyStoreError("E_KEYSTORE_FORMAT", f"{path} has format version {doc.get('format_version')!r}")
    return doc


def _parse_ceremony_entry(index: int, item: object) -> tuple[str, int, int, dict[str, bytes]]:
    where = f"issuers[{index}]"
    if not isinstance(item, Mapping):
        raise KeyStoreError("E_CEREMONY_FORMAT", f"{where} must be an object")
    unknown = set(item) - {"issuer_id", "alg_id", "key_version", *KEY_NAMES}
    if unknown:
        raise KeyStoreError("E_CEREMONY_FORMAT", f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    issuer_id = item.get("issuer_id")
    if not isinstance(issuer_id, str) or len(issuer_id) != 16:
        raise KeyStoreError("E_CEREMONY_FORMAT", f"{where}.issuer_id must be 16 hex chars")
    issuer_hex = issuer_bytes(issuer_id).hex()
    alg_id, version = item.get("alg_id"), item.get("key_version")
    if type(alg_id) is not int or alg_id not in ALGORITHMS:
        raise KeyStoreError("E_CEREMONY_FORMAT", f"{where}.alg_id must be one of {sorted(ALGORITHMS)}")
    if type(version) is not int or not 0 <= version <= KEY_VERSION_MAX:
        raise KeyStoreError("E_CEREMONY_FORMAT", f"{where}.key_version must be 0..255")
    keys: dict[str, bytes] = {}
    for name in KEY_NAMES:
        value = item.get(name)
        if value is None:
            continue
        # Never echo the value: it is key material.
        if not isinstance(value, str) or len(value) != 2 * KEY_LEN:
            raise KeyStoreError("E_CEREMONY_FORMAT", f"{where}.{name} must be {2 * KEY_LEN} hex chars")
        try:
            keys[name] = bytes.fromhex(value)
        except ValueError:
            raise KeyStoreError("E_CEREMONY_FORMAT", f"{where}.{name} is not hex") from None
    if "mpk" not in keys:
        raise KeyStoreError("E_CEREMONY_FORMAT", f"{where}: mpk is required")
    return issuer_hex, version, alg_id, keys


__all__ = [
    "KEY_NAMES",
    "KeyStore",
    "KeyStoreError",
    "VersionInfo",
    "dev_kek_path",
    "issuer_bytes",
    "kek_from_settings",
    "load_or_create_dev_kek",
    "parse_kek",
    "read_ca_certificates",
]
