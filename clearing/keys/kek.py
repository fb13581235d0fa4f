"""The key-encryption key (KEK): where it comes from, and the AES-256-GCM sealing it does.

Production injects ``YIKATONG_KEK`` (64 hex chars) from a secret store. Development uses a
0600 file next to the key store, ``<keystore>.kek``, created with the store (by ``yikatong
init``; any other command refuses a missing one, ``E_NO_KEK``). Every secret in
the key store (master keys, CA private keys) is sealed by ``Kek.seal`` under its own random
96-bit nonce and its slot's associated data; ``kek_check`` is a known plaintext sealed the
same way, so a store opened with another KEK fails at once (``E_KEK_MISMATCH``).
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from clearing.contract.codes import Code
from clearing.errors import ClearingError

KEK_LEN: Final = 32
NONCE_LEN: Final = 12
_CHECK_PLAINTEXT: Final = b"yikatong key store KEK check"
_CHECK_AD: Final = b"kek_check"


def dev_kek_path(keystore_path: Path) -> Path:
    return keystore_path.with_name(keystore_path.name + ".kek")


def parse_kek(hex_kek: str) -> bytes:
    try:
        kek = bytes.fromhex(hex_kek.strip())
    except ValueError:
        raise ClearingError(Code.E_BAD_KEK, "the KEK is not hex") from None
    if len(kek) != KEK_LEN:
        raise ClearingError(
            Code.E_BAD_KEK, f"the KEK must be {KEK_LEN} bytes ({2 * KEK_LEN} hex chars), got {len(kek)}"
        )
    return kek


def load_or_create_dev_kek(keystore_path: Path) -> bytes:
    """Development KEK: a 0600 file next to the key store, created on first use.

    Production injects ``YIKATONG_KEK`` from a secret store instead. A KEK file readable by
    group or others is refused. The file appears complete or not at all (written to a
    temporary file, then hard-linked into place, which fails if another process won), so a
    process racing the one that creates it never reads half a KEK.
    """
    path = dev_kek_path(keystore_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        kek = os.urandom(KEK_LEN)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)  # mode 0600
        try:
            with os.fdopen(fd, "w", encoding="ascii") as out:
                out.write(kek.hex() + "\n")
                out.flush()
                os.fsync(out.fileno())
            os.link(tmp, path)
            return kek
        except FileExistsError:
            pass  # another process created it first: use theirs
        finally:
            Path(tmp).unlink(missing_ok=True)
    if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ClearingError(Code.E_KEK_PERMISSIONS, f"dev KEK file {path} is accessible to group/others; chmod 600 it")
    return parse_kek(path.read_text(encoding="ascii"))


def load_dev_kek(keystore_path: Path) -> bytes:
    """The dev KEK file next to an existing key store; ``E_NO_KEK`` if it is missing (never created here)."""
    path = dev_kek_path(keystore_path)
    if not path.exists():
        raise ClearingError(
            Code.E_NO_KEK,
            f"YIKATONG_KEK is unset and the dev KEK file {path} does not exist; set YIKATONG_KEK or restore "
            f"the file (a new KEK would not open key store {keystore_path})",
        )
    return load_or_create_dev_kek(keystore_path)


def kek_from_settings(settings: Any, *, create: bool = False) -> bytes:
    """The KEK from ``Settings.kek`` (hex), else the dev KEK file next to ``Settings.keystore``.

    ``create`` (``yikatong init`` making a new store): the dev KEK file is created if missing.
    """
    secret = getattr(settings, "kek", None)
    if secret is not None:
        return parse_kek(secret.get_secret_value())
    path = Path(settings.keystore)
    return load_or_create_dev_kek(path) if create else load_dev_kek(path)


class Kek:
    """The KEK as an AES-256-GCM sealer. Holds the key; never shows it."""

    __slots__ = ("_aead",)

    def __init__(self, kek: bytes) -> None:
        if len(kek) != KEK_LEN:
            raise ClearingError(Code.E_BAD_KEK, f"the KEK must be {KEK_LEN} bytes")
        self._aead = AESGCM(kek)

    def __repr__(self) -> str:
        return "Kek(<hidden>)"

    def seal(self, plaintext: bytes, ad: bytes) -> dict[str, str]:
        """``{"nonce", "ct"}`` (hex) under a fresh random nonce."""
        nonce = os.urandom(NONCE_LEN)
        return {"nonce": nonce.hex(), "ct": self._aead.encrypt(nonce, plaintext, ad).hex()}

    def open(self, blob: Mapping[str, str], ad: bytes, what: str) -> bytes:
        """The plaintext of a sealed blob; ``what`` names it in the error (never its value)."""
        try:
            return self._aead.decrypt(bytes.fromhex(blob["nonce"]), bytes.fromhex(blob["ct"]), ad)
        except (InvalidTag, KeyError, ValueError):
            raise ClearingError(Code.E_KEY_DECRYPT, f"{what} does not decrypt (wrong KEK or tampered store)") from None

    def new_check(self) -> dict[str, str]:
        """A fresh ``kek_check`` for a new store."""
        return self.seal(_CHECK_PLAINTEXT, _CHECK_AD)

    def verify_check(self, check: Mapping[str, str] | None, where: Path) -> None:
        """Refuse (``E_KEK_MISMATCH``) a store whose ``kek_check`` this KEK does not open."""
        if check is None:
            return
        try:
            self._aead.decrypt(bytes.fromhex(check["nonce"]), bytes.fromhex(check["ct"]), _CHECK_AD)
        except (InvalidTag, KeyError, ValueError):
            raise ClearingError(
                Code.E_KEK_MISMATCH, f"the KEK does not open key store {where} (wrong YIKATONG_KEK or KEK file?)"
            ) from None


__all__ = [
    "KEK_LEN",
    "NONCE_LEN",
    "Kek",
    "dev_kek_path",
    "kek_from_settings",
    "load_dev_kek",
    "load_or_create_dev_kek",
    "parse_kek",
]
