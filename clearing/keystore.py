"""The issuer key store: master keys and the issuer CA, encrypted at rest under the KEK.

``ARCHITECTURE.md`` ("Key store"): master keys encrypted at rest (AES-GCM under the KEK),
versioned, loaded once; the only code that sees clear master keys is the key store and the
emulated PSAM. ``docs/keystore.md`` describes the file format, the KEK and the one path on
which master keys leave the store (``psam_keys``).

``KeyStore`` is the facade the rest of Yikatong uses. It composes three parts that live in
one file (``clearing/keys/``): the KEK (``kek``), the master keys (``master_keys``) and the
issuer CAs (``issuer_ca``), persisted by ``store_file``, which runs every change as a
read-modify-write under a cross-process lock.

Rules the parts keep, and tests check:
* a master key is never logged, printed, put in a database, in a ``repr``/``str`` or in an
  exception message (errors name the issuer, version and key name, never the value);
* each key is a separate AES-256-GCM ciphertext with its own random 96-bit nonce and
  associated data ``yikatong-keystore/1|<issuer_id>|<version>|<name>``, so a ciphertext
  moved to another slot does not decrypt;
* keys are decrypted lazily, on first use, and diversified card keys are kept in a bounded
  LRU cache (``dtk`` is the hot path of TAC verification);
* two processes changing the store at once (``keys rotate``, ``init``, ``import``, a CA)
  both keep their change.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from cardos.crypto import ALG_3DES
from cardos.image import CardKeys
from clearing.contract.codes import Code
from clearing.errors import ClearingError
from clearing.keys.common import issuer_bytes
from clearing.keys.issuer_ca import CARD_CERT_VALIDITY_DAYS, IssuerCA, read_ca_certificates
from clearing.keys.kek import Kek, dev_kek_path, kek_from_settings, load_dev_kek, load_or_create_dev_kek, parse_kek
from clearing.keys.master_keys import CACHE_SIZE_DEFAULT, KEY_NAMES, MasterKeys, VersionInfo, parse_ceremony
from clearing.keys.store_file import KeyStoreFile, lock_path


class KeyStore:
    """A file-based key store. Open it with ``KeyStore.open(path, kek)`` or ``from_settings``."""

    def __init__(self, path: Path, kek: bytes, *, cache_size: int = CACHE_SIZE_DEFAULT) -> None:
        sealer = Kek(kek)
        self._file = KeyStoreFile(path, sealer)
        self._masters = MasterKeys(self._file, sealer, cache_size=cache_size)
        self._ca = IssuerCA(self._file, sealer)

    def __repr__(self) -> str:
        held = ", ".join(f"{i}/v{','.join(sorted(e['versions']))}" for i, e in sorted(self._file.issuers.items()))
        return f"KeyStore({str(self._file.path)!r}, issuers=[{held}])"

    __str__ = __repr__

    # --- opening ------------------------------------------------------------------------------

    @classmethod
    def open(cls, path: Path | str, kek: bytes, *, cache_size: int = CACHE_SIZE_DEFAULT) -> KeyStore:
        """Load the store at ``path`` (an empty store if the file does not exist yet)."""
        return cls(Path(path), kek, cache_size=cache_size)

    @classmethod
    def from_settings(cls, settings: Any, *, create: bool = False) -> KeyStore:
        """The store at ``Settings.keystore`` with the KEK of the settings.

        Only ``yikatong init`` (and the demo) pass ``create``: for a missing store the dev KEK
        file and its directory are created, the store on its first write (``ensure_file``).
        Anything else refuses a store that
        does not exist (``E_NO_KEYSTORE``) or a missing dev KEK file (``E_NO_KEK``), naming
        it, instead of starting an empty store at a mistyped path.
        """
        path = Path(settings.keystore)
        exists = path.is_file()
        if not exists and not create:
            raise ClearingError(
                Code.E_NO_KEYSTORE,
                f"key store {path} does not exist; run `yikatong init` first (or check YIKATONG_KEYSTORE)",
            )
        return cls.open(path, kek_from_settings(settings, create=not exists))

    def ensure_file(self) -> None:
        """Write the store (with its KEK check) if its file does not exist yet (``yikatong init``)."""
        if not self.path.is_file():
            with self._changing():
                pass

    @property
    def path(self) -> Path:
        return self._file.path

    def refresh(self) -> bool:
        """Reload the file if another process changed it (e.g. ``keys rotate``); True if reloaded.

        Already decrypted keys and cached card keys stay valid: versions are never changed,
        only added.
        """
        return self._file.refresh()

    @contextmanager
    def _changing(self) -> Iterator[None]:
        """One locked read-modify-write of the file; on any error nothing is written or kept."""
        try:
            with self._file.update():
                yield
        except BaseException:
            self._masters.forget()
            self._ca.forget()
            raise

    # --- what is held -------------------------------------------------------------------------

    def issuers(self) -> list[str]:
        return self._masters.issuers()

    def has_issuer(self, issuer: str | bytes) -> bool:
        return self._masters.has_issuer(issuer)

    def versions(self, issuer: str | bytes) -> list[int]:
        return self._masters.versions(issuer)

    def current_version(self, issuer: str | bytes) -> int:
        """The key version new cards get: the newest."""
        return self._masters.current_version(issuer)

    def alg_id(self, issuer: str | bytes, key_version: int) -> int:
        return self._masters.alg_id(issuer, key_version)

    def list_versions(self) -> list[VersionInfo]:
        return self._masters.list_versions()

    def lacks(self, issuer: str | bytes, key_versions: Iterable[int] = ()) -> str | None:
        """What the store lacks to clear an own issuer's cards (TAC and load keys at each of
        ``key_versions``, or at its newest version): None, or a phrase for an error."""
        issuer_hex = issuer_bytes(issuer).hex()
        held = {v.key_version: v for v in self._masters.list_versions() if v.issuer_id == issuer_hex}
        if not held:
            return "no keys at all"
        wanted = sorted(set(key_versions)) or [max(held)]
        absent = [v for v in wanted if v not in held]
        if absent:
            return f"no key version {', '.join(map(str, absent))}"
        partial = [v for v in wanted if not {"mtk", "mlk"} <= set(held[v].keys)]
        if partial:
            return f"only a peer's keys (no MTK/MLK) at key version {', '.join(map(str, partial))}"
        return None

    def require(self, cleared: Mapping[str, Iterable[int]]) -> None:
        """Refuse (``E_KEY_MISSING``) unless every issuer cleared here has its keys at every key
        version its cards carry (``registry.cleared_issuers``).

        ``serve`` and ``clear`` check this before they start: a record judged without its key
        can only wait for it (``E_KEY_UNAVAILABLE``).
        """
        for issuer_hex, in_use in sorted(cleared.items()):
            versions = set(in_use)
            what = self.lacks(issuer_hex, versions)
            if what is None:
                continue
            if versions:
                shown = ", ".join(map(str, sorted(versions)))
                fix = (
                    "restore the key store or import the issuer's keys (`yikatong keys import FILE`); new keys "
                    f"would not verify the cards already issued under key version {shown}"
                )
            else:
                fix = "run `yikatong init` (or `yikatong keys init --issuer ID`), or `yikatong keys import FILE`"
            raise ClearingError(
                Code.E_KEY_MISSING,
                f"key store {self.path} has {what} for issuer {issuer_hex}, whose cards this centre clears; {fix}",
            )

    def _master(self, issuer_hex: str, key_version: int, name: str) -> bytes:
        """A clear master key; private (tests compare card keys with ``derive_card_key`` of it)."""
        return self._masters._master(issuer_hex, key_version, name)

    # --- adding keys --------------------------------------------------------------------------

    def init(self, issuers: Iterable[str | bytes], *, alg_id: int = ALG_3DES, key_version: int = 1) -> list[str]:
        """Generate fresh master keys (version ``key_version``) and an issuer CA per issuer.

        Refuses (``E_KEYS_EXIST``, nothing written) if any of them already has keys.
        """
        wanted = list(dict.fromkeys(issuer_bytes(i).hex() for i in issuers))
        if not wanted:
            raise ClearingError(Code.E_NO_ISSUERS, "name at least one issuer")
        with self._changing():
            existing = [i for i in wanted if self._masters.has_issuer(i)]
            if existing:
                raise ClearingError(
                    Code.E_KEYS_EXIST, f"issuer(s) {', '.join(existing)} already have keys; use `keys rotate`"
                )
            for issuer_hex in wanted:
                self._masters.create(issuer_hex, alg_id=alg_id, key_version=key_version)
                self._ca.ensure(issuer_hex)
        return wanted

    def rotate(self, issuer: str | bytes) -> int:
        """Add the next key version for an issuer; old versions stay for cards already issued."""
        issuer_hex = issuer_bytes(issuer).hex()
        with self._changing():
            return self._masters.rotate(issuer_hex)

    def import_ceremony(self, source: Path | str | Mapping[str, Any]) -> list[tuple[str, int]]:
        """Import master keys from a key-ceremony JSON document (``spec/terminal-api.md``, Administration).

        ``{"issuers": [{"issuer_id", "alg_id", "key_version", "mpk", "mlk", "mtk", "mamk"}]}``,
        hex. A peer issuer may come with ``mpk`` and ``mamk`` only. An (issuer, version) that
        is already held with the same keys is skipped; with other keys it is refused. All or
        nothing: the file is written only if every entry is valid. An issuer CA is created
        for every imported issuer that has none.
        """
        parsed = parse_ceremony(source)
        with self._changing():
            imported = self._masters.import_entries(parsed)
            for issuer_hex, _version in imported:
                self._ca.ensure(issuer_hex)
        return imported

    def ensure_ca(self, issuer: str | bytes) -> bool:
        """Create the issuer CA of an issuer that has keys but no CA; True if one was created."""
        issuer_hex = issuer_bytes(issuer).hex()
        if self._ca.has_ca(issuer_hex):
            return False
        with self._changing():
            return self._ca.ensure(issuer_hex)

    # --- card keys ----------------------------------------------------------------------------

    def dtk(self, issuer: str | bytes, asn: str | bytes, key_version: int) -> bytes:
        """The card's TAC key (cached): the hot path of TAC verification in clearing."""
        return self._masters.card_key(issuer, asn, key_version, "mtk")

    def dlk(self, issuer: str | bytes, asn: str | bytes, key_version: int) -> bytes:
        """The card's load key (cached): MAC1/MAC2 of online loads."""
        return self._masters.card_key(issuer, asn, key_version, "mlk")

    def dpk(self, issuer: str | bytes, asn: str | bytes, key_version: int) -> bytes:
        return self._masters.card_key(issuer, asn, key_version, "mpk")

    def damk(self, issuer: str | bytes, asn: str | bytes, key_version: int) -> bytes:
        return self._masters.card_key(issuer, asn, key_version, "mamk")

    def card_keys(self, issuer: str | bytes, asn: str | bytes, key_version: int | None = None) -> CardKeys:
        """All four diversified keys of a card (personalisation), at ``key_version`` or the newest."""
        return self._masters.card_keys(issuer, asn, key_version)

    @property
    def cache_hits(self) -> int:
        return self._masters.cache_hits

    @property
    def cache_misses(self) -> int:
        return self._masters.cache_misses

    def cache_clear(self) -> None:
        self._masters.cache_clear()

    # --- the sanctioned export: emulated PSAMs -----------------------------------------------

    def psam_keys(self, issuer_ids: Iterable[str | bytes]) -> dict[bytes, tuple[bytes, bytes, int, int]]:
        """``{issuer_id: (mpk, mamk, key_version, alg_id)}`` at each issuer's newest version.

        The one sanctioned path on which master keys leave the store (``docs/keystore.md``).
        """
        return self._masters.psam_keys(issuer_ids)

    def psam_keys_all_versions(self, issuer_ids: Iterable[str | bytes]) -> list[tuple[bytes, bytes, bytes, int, int]]:
        """``[(issuer_id, mpk, mamk, key_version, alg_id)]`` for every held version."""
        return self._masters.psam_keys_all_versions(issuer_ids)

    # --- issuer CA ----------------------------------------------------------------------------

    def ca_certificate(self, issuer: str | bytes) -> x509.Certificate:
        """The issuer CA's self-signed certificate (public; the portal checks card certificates with it)."""
        return self._ca.certificate(issuer)

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
        return self._ca.sign_card_certificate(
            issuer, card_public_key, card_asn_hex, now=now, validity_days=validity_days
        )


__all__ = [
    "KEY_NAMES",
    "ClearingError",
    "KeyStore",
    "VersionInfo",
    "dev_kek_path",
    "issuer_bytes",
    "kek_from_settings",
    "load_dev_kek",
    "load_or_create_dev_kek",
    "lock_path",
    "parse_kek",
    "read_ca_certificates",
]
