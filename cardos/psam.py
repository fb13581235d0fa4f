"""The emulated PSAM: the validator's secure module for purchases and APPLICATION BLOCK.

What it does, with the spec sections it follows:

* ``SELECT`` of the T-Union DF ``8011`` and ``READ BINARY`` of its files 0x15 (serial
  information, 14 bytes), 0x16 (terminal number, 6 bytes) and 0x17 (purchase key index,
  1 byte) (``epurse-public-sources.md`` section 7).
* ``INIT SAM FOR PURCHASE`` (``80 70``): diversifies the issuer's master purchase key to the
  card's DPK, computes SESPK and MAC1, and hands out its terminal transaction sequence (TTC).
  The TTC is persistent and is committed before the response leaves (``card-profile.md``,
  "Atomicity and tear"), so a TTC is never given out twice, across restarts and tears.
* ``CREDIT SAM FOR PURCHASE`` (``80 72``): verifies the card's MAC2 against the session of
  the last INIT; the session is volatile and dies with power.
* ``DELIVERY KEY`` (``80 1A``) and ``CIPHER DATA`` (``80 FA 05``): the general crypto services
  that APPLICATION BLOCK (section 9) and TAC recomputation (section 8) use.
* ``GET CHALLENGE`` (``00 84``).

Key custody (``card-profile.md``, "Cryptography"): a field PSAM holds each accepted
issuer's MPK and MAMK only. TAC master keys (MTK) never leave the issuer, so
``DELIVERY KEY`` with P1 = 44 answers 9403 unless the image holds an MTK for that issuer,
which only an issuer-side SAM (the clearing centre's) does. The master keys live in the
image and in this object, nowhere else: nothing here logs them and ``repr`` hides them.

``CIPHER DATA`` padding (project decision, section 9 is the model): the terminal sends
``IV(8) || data || 80 00..`` with the data already padded by ISO 9797-1 method 2 to a
multiple of 8 bytes, exactly as SH and TJ send ``84 1E 00 00 04 80 00 00``. The PSAM checks
and removes that padding and calls ``crypto.secure_messaging_mac`` (maintenance key) or
``crypto.mac`` (TAC key), which pad again, so the MAC equals
``crypto.secure_messaging_mac(DAMK, challenge, 84 1E 00 00 04)``, the value the card checks.
"""

from __future__ import annotations

import json
import os
import secrets
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Final

from cardos import crypto
from cardos.apdu import Command
from cardos.os import CardOS, CardTorn, command
from cardos.profile import PSAM_DF_TUNION
from cardos.sw import (
    SW_BAD_DATA,
    SW_BAD_P1P2,
    SW_CONDITIONS_NOT_SATISFIED,
    SW_FILE_NOT_FOUND,
    SW_KEY_NOT_FOUND,
    SW_MAC_ERROR,
    SW_WRONG_LENGTH,
    StatusError,
    sw_wrong_le,
)

PSAM_IMAGE_KIND: Final = "psam"  # tells a PSAM image from a card image (``cardos.image``)
PSAM_IMAGE_VERSION: Final = 1

DF_MF: Final = bytes.fromhex("3F00")
TTC_FIRST: Final = 1  # BL-PUR's example starts its terminal sequence at 00000001
TTC_MAX: Final = 0xFFFFFFFF  # a PSAM whose sequence is used up refuses INIT (6985)

KEY_USAGE_TAC: Final = 0x44
KEY_USAGE_MAINTENANCE: Final = 0x45
CIPHER_MAC_LAST_BLOCK: Final = 0x05

SFI_SERIAL: Final = 0x15
SFI_TERMINAL: Final = 0x16
SFI_KEY_INDEX: Final = 0x17

# File 0x15 after the 10-byte serial, following the usual PSAM layout: PSAM version,
# key card type, command set version, FCI data (project-defined values).
SERIAL_INFO_TAIL: Final = bytes([0x01, 0x06, 0x01, 0x00])

INIT_SAM_DATA_LEN: Final = 36


class PsamImageError(ValueError):
    """E_PSAM_IMAGE: a PSAM image file is missing, unreadable, or fails its schema."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"E_PSAM_IMAGE: {reason}")


@dataclass(frozen=True, slots=True)
class IssuerKeys:
    """One issuer's master keys at one key version, as this PSAM holds them.

    ``mtk`` is present only in an issuer-side SAM (see the module docstring).
    """

    issuer_id: bytes
    key_version: int
    alg_id: int
    mpk: bytes = field(repr=False)
    mamk: bytes = field(repr=False)
    mtk: bytes | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if len(self.issuer_id) != 8:
            raise PsamImageError(f"issuer id must be 8 bytes, got {len(self.issuer_id)}")
        if not 0 <= self.key_version <= 0xFF:
            raise PsamImageError(f"key version {self.key_version} is not a byte")
        if self.alg_id not in crypto.ALGORITHMS:
            raise PsamImageError(f"unknown algorithm id {self.alg_id:#04x}")
        for name, key in (("MPK", self.mpk), ("MAMK", self.mamk), ("MTK", self.mtk)):
            if key is not None and len(key) != crypto.KEY_LEN:
                raise PsamImageError(f"{name} must be {crypto.KEY_LEN} bytes")


@dataclass(slots=True)
class PsamImage:
    """The PSAM's persistent memory; ``ttc_next`` is the next terminal sequence to give out."""

    terminal_id: bytes
    serial: bytes
    key_index: int = 0x01
    ttc_next: int = TTC_FIRST
    issuers: tuple[IssuerKeys, ...] = ()

    def __post_init__(self) -> None:
        if len(self.terminal_id) != 6:
            raise PsamImageError(f"terminal number must be 6 bytes, got {len(self.terminal_id)}")
        if len(self.serial) != 10:
            raise PsamImageError(f"PSAM serial must be 10 bytes, got {len(self.serial)}")
        if not 0 <= self.key_index <= 0xFF:
            raise PsamImageError(f"key index {self.key_index} is not a byte")
        if not 0 <= self.ttc_next <= TTC_MAX + 1:
            raise PsamImageError(f"terminal sequence {self.ttc_next} out of range")
        seen = {(k.issuer_id, k.key_version) for k in self.issuers}
        if len(seen) != len(self.issuers):
            raise PsamImageError("an issuer id and key version appear twice")

    def __repr__(self) -> str:
        held = ", ".join(f"{k.issuer_id.hex()}/v{k.key_version}" for k in self.issuers)
        return (
            f"PsamImage(terminal_id={self.terminal_id.hex()}, serial={self.serial.hex()}, "
            f"key_index={self.key_index}, ttc_next={self.ttc_next}, issuers=[{held}])"
        )

    def keys_for(self, issuer_id: bytes, key_version: int) -> IssuerKeys | None:
        for keys in self.issuers:
            if keys.issuer_id == issuer_id and keys.key_version == key_version:
                return keys
        return None

    def newest_keys_for(self, issuer_id: bytes) -> IssuerKeys | None:
        held = [k for k in self.issuers if k.issuer_id == issuer_id]
        return max(held, key=lambda k: k.key_version) if held else None

    # --- JSON (kind "psam", schema_version 1; documented in docs/pcsc.md) -------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "kind": PSAM_IMAGE_KIND,
            "schema_version": PSAM_IMAGE_VERSION,
            "terminal_id": self.terminal_id.hex(),
            "serial": self.serial.hex(),
            "key_index": self.key_index,
            "ttc_next": self.ttc_next,
            "issuers": [
                {
                    "issuer_id": k.issuer_id.hex(),
                    "key_version": k.key_version,
                    "alg_id": k.alg_id,
                    "mpk": k.mpk.hex(),
                    "mamk": k.mamk.hex(),
                    "mtk": None if k.mtk is None else k.mtk.hex(),
                }
                for k in self.issuers
            ],
        }

    @classmethod
    def from_json(cls, doc: object) -> PsamImage:
        if not isinstance(doc, dict):
            raise PsamImageError("a PSAM image is a JSON object")
        if doc.get("kind") is None and "purse" in doc and "files" in doc:
            raise PsamImageError("this is a card image, not a PSAM image")
        if doc.get("kind") != PSAM_IMAGE_KIND:
            raise PsamImageError(f"not a PSAM image (kind {doc.get('kind')!r})")
        if doc.get("schema_version") != PSAM_IMAGE_VERSION:
            raise PsamImageError(
                f"unsupported schema_version {doc.get('schema_version')!r} (this build reads {PSAM_IMAGE_VERSION})"
            )
        try:
            issuers = tuple(
                IssuerKeys(
                    issuer_id=bytes.fromhex(k["issuer_id"]),
                    key_version=int(k["key_version"]),
                    alg_id=int(k["alg_id"]),
                    mpk=bytes.fromhex(k["mpk"]),
                    mamk=bytes.fromhex(k["mamk"]),
                    mtk=None if k.get("mtk") is None else bytes.fromhex(k["mtk"]),
                )
                for k in doc["issuers"]
            )
            return cls(
                terminal_id=bytes.fromhex(doc["terminal_id"]),
                serial=bytes.fromhex(doc["serial"]),
                key_index=int(doc["key_index"]),
                ttc_next=int(doc["ttc_next"]),
                issuers=issuers,
            )
        except PsamImageError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            # bytes.fromhex and int name the position or type, never a key value.
            raise PsamImageError(f"malformed PSAM image: {type(exc).__name__}: {exc}") from None

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PsamImage:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise PsamImageError(f"cannot read PSAM image {path}: {exc.strerror}") from None
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PsamImageError(f"PSAM image {path} is not JSON: {exc.msg} at line {exc.lineno}") from None
        return cls.from_json(doc)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write atomically: temp file, fsync, rename, fsync the directory.

        A crash leaves either the old or the new image, never a torn one; the file is
        created 0600 because it holds master keys.
        """
        target = Path(path)
        data = json.dumps(self.to_json(), indent=1, sort_keys=True).encode()
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def psam_image_for_terminal(
    terminal_id: bytes,
    serial: bytes,
    issuers: dict[bytes, tuple[bytes, bytes, int, int]],
    *,
    key_index: int = 0x01,
) -> PsamImage:
    """A fresh field PSAM for one terminal: ``issuers`` maps issuer id to (MPK, MAMK, key version, alg id)."""
    held = tuple(
        IssuerKeys(issuer_id=issuer_id, key_version=version, alg_id=alg, mpk=mpk, mamk=mamk)
        for issuer_id, (mpk, mamk, version, alg) in issuers.items()
    )
    return PsamImage(terminal_id=terminal_id, serial=serial, key_index=key_index, issuers=held)


@dataclass(frozen=True, slots=True)
class _PurchaseSession:
    """What CREDIT SAM FOR PURCHASE needs from the last INIT: SESPK, amount and algorithm."""

    session_key: bytes = field(repr=False)
    amount_fen: int
    alg_id: int


@dataclass(frozen=True, slots=True)
class _DeliveredKey:
    usage: int
    key: bytes = field(repr=False)
    alg_id: int


def _strip_padding(data: bytes) -> bytes:
    """Undo ISO 9797-1 method 2 padding sent by the terminal (module docstring)."""
    if not data or len(data) % 8:
        raise StatusError(SW_WRONG_LENGTH, "CIPHER DATA input must be padded to a multiple of 8 bytes")
    body = data.rstrip(b"\x00")
    if not body.endswith(b"\x80") or len(data) - len(body) >= 16:
        raise StatusError(SW_BAD_DATA, "CIPHER DATA input is not ISO 9797-1 method 2 padded")
    return body[:-1]


class Psam(CardOS):
    """A T-Union PSAM on the CardOS core (see the module docstring for the command set)."""

    # 3B 08 + 8 historical bytes: T=0 only, so no TCK (ISO 7816-3 section 8.2.5).
    ATR: ClassVar[bytes] = bytes.fromhex("3B08") + b"\x80YKTPSAM"

    def __init__(self, image: PsamImage, path: str | os.PathLike[str] | None = None) -> None:
        super().__init__()
        self.image = image
        self.path = None if path is None else Path(path)
        self._selected: bytes = DF_MF
        self._session: _PurchaseSession | None = None
        self._delivered: _DeliveredKey | None = None

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Psam:
        """Load an image and persist every commit back to it."""
        return cls(PsamImage.load(path), path=path)

    def __repr__(self) -> str:
        return f"Psam(terminal_id={self.image.terminal_id.hex()}, ttc_next={self.image.ttc_next}, path={self.path})"

    # --- CardOS hooks ---------------------------------------------------------------------
    def reset_volatile(self) -> None:
        self._selected = DF_MF
        self._session = None
        self._delivered = None

    def persist(self) -> None:
        """Write the image; a failed write is an EEPROM failure and cuts power.

        Raising ``CardTorn`` here means the response (which may carry a TTC that is not
        yet on disk) never leaves, so a restart cannot hand the same TTC out again.
        """
        if self.path is None:
            return
        try:
            self.image.save(self.path)
        except OSError as exc:
            self.power_off()
            raise CardTorn(f"PSAM image write failed: {exc.strerror}") from None

    # --- commands ---------------------------------------------------------------------------
    @command(0xA4, cla=0x00)
    def select(self, cmd: Command) -> bytes:
        """SELECT by file id: MF 3F00 or the T-Union DF 8011 (section 7)."""
        if cmd.p1 != 0x00 or cmd.p2 not in (0x00, 0x0C):
            raise StatusError(SW_BAD_P1P2, "PSAM selects by file id only")
        if cmd.data not in (DF_MF, PSAM_DF_TUNION):
            raise StatusError(SW_FILE_NOT_FOUND, f"no file {cmd.data.hex()}")
        self._selected = cmd.data
        self._session = None
        self._delivered = None
        return b""

    @command(0xB0, cla=0x00)
    def read_binary(self, cmd: Command) -> bytes:
        """READ BINARY by SFI (P1 = 80 | SFI, P2 = offset); 6Cxx when Le is longer than the file."""
        if not cmd.p1 & 0x80:
            raise StatusError(SW_BAD_P1P2, "READ BINARY by SFI only")
        sfi = cmd.p1 & 0x1F
        if sfi == SFI_SERIAL:
            content = self.image.serial + SERIAL_INFO_TAIL
        elif sfi == SFI_TERMINAL:
            content = self.image.terminal_id
        elif sfi == SFI_KEY_INDEX:
            content = bytes([self.image.key_index])
        else:
            raise StatusError(SW_FILE_NOT_FOUND, f"no file with SFI {sfi:02X}")
        rest = content[cmd.p2 :]
        if cmd.le is None or cmd.le == 256:
            return rest
        if cmd.le > len(rest):
            raise StatusError(sw_wrong_le(len(rest)))
        return rest[: cmd.le]

    @command(0x84, cla=0x00)
    def get_challenge(self, cmd: Command) -> bytes:
        if cmd.ne not in (4, 8):
            raise StatusError(SW_WRONG_LENGTH, "GET CHALLENGE gives 4 or 8 bytes")
        return secrets.token_bytes(cmd.ne)

    def _require_application(self) -> None:
        if self._selected != PSAM_DF_TUNION:
            raise StatusError(SW_CONDITIONS_NOT_SATISFIED, "select DF 8011 first")

    @command(0x70, cla=0x80)
    def init_sam_for_purchase(self, cmd: Command) -> bytes:
        """MAC1 for (CAPP) purchase; answers TTC(4) || MAC1(4) (section 7).

        The TTC given out is the value before the increment; the increment is staged, so
        it is on disk before the response can leave.
        """
        self._require_application()
        self._session = None
        if cmd.p1 != 0x00 or cmd.p2 != 0x00:
            raise StatusError(SW_BAD_P1P2)
        data = cmd.data
        if len(data) != INIT_SAM_DATA_LEN:
            raise StatusError(SW_WRONG_LENGTH, f"INIT SAM FOR PURCHASE takes {INIT_SAM_DATA_LEN} bytes")
        card_random, ctc = data[0:4], int.from_bytes(data[4:6], "big")
        amount_fen, tx_type = int.from_bytes(data[6:10], "big"), data[10]
        date4, time3 = data[11:15], data[15:18]
        key_version, alg_id = data[18], data[19]
        asn8, issuer_id = data[20:28], data[28:36]
        if tx_type not in (crypto.TX_EP_PURCHASE, crypto.TX_CAPP_PURCHASE):
            raise StatusError(SW_BAD_DATA, f"transaction type {tx_type:02X} is not a purchase")
        keys = self.image.keys_for(issuer_id, key_version)
        if keys is None or keys.alg_id != alg_id:
            raise StatusError(SW_KEY_NOT_FOUND, f"no purchase key for issuer {issuer_id.hex()} v{key_version}")
        ttc = self.image.ttc_next
        if ttc > TTC_MAX:
            raise StatusError(SW_CONDITIONS_NOT_SATISFIED, "terminal transaction sequence exhausted")
        dpk = crypto.derive_card_key(keys.mpk, issuer_id, asn8, alg_id)
        sespk = crypto.purchase_session_key(dpk, card_random, ctc, ttc, alg_id)
        mac1 = crypto.mac(
            sespk, crypto.purchase_mac1_data(amount_fen, tx_type, self.image.terminal_id, date4, time3), alg_id
        )
        self.stage(self._advance_ttc)
        self._session = _PurchaseSession(sespk, amount_fen, alg_id)
        return ttc.to_bytes(4, "big") + mac1

    def _advance_ttc(self) -> None:
        self.image.ttc_next += 1

    @command(0x72, cla=0x80)
    def credit_sam_for_purchase(self, cmd: Command) -> bytes:
        """Verify the card's MAC2 over the amount with the last INIT's SESPK; 9302 otherwise."""
        if len(cmd.data) != crypto.MAC_LEN:
            raise StatusError(SW_WRONG_LENGTH, "CREDIT SAM FOR PURCHASE takes a 4-byte MAC2")
        session = self._session
        if session is None:
            raise StatusError(SW_MAC_ERROR, "no purchase session to verify MAC2 against")
        expected = crypto.mac(session.session_key, crypto.purchase_mac2_data(session.amount_fen), session.alg_id)
        if not secrets.compare_digest(expected, cmd.data):
            raise StatusError(SW_MAC_ERROR, "MAC2 does not verify")
        self._session = None
        return b""

    @command(0x1A, cla=0x80)
    def delivery_key(self, cmd: Command) -> bytes:
        """Derive a card key from ``ASN[last 8] || issuer id`` for CIPHER DATA (sections 7-9).

        P1 45: maintenance key (DAMK from MAMK); P1 44: TAC key (DTK from MTK, issuer-side
        SAMs only). P2 is the key version; P2 = 00 with no version 00 held means the newest
        version held for the issuer (project-defined; SH sends a fixed P2).
        """
        self._require_application()
        self._delivered = None
        if cmd.p1 not in (KEY_USAGE_TAC, KEY_USAGE_MAINTENANCE):
            raise StatusError(SW_BAD_P1P2, f"key usage {cmd.p1:02X} not supported")
        if len(cmd.data) != 16:
            raise StatusError(SW_WRONG_LENGTH, "DELIVERY KEY takes ASN[last 8] || issuer id")
        asn8, issuer_id = cmd.data[:8], cmd.data[8:]
        keys = self.image.keys_for(issuer_id, cmd.p2)
        if keys is None and cmd.p2 == 0x00:
            keys = self.image.newest_keys_for(issuer_id)
        if keys is None:
            raise StatusError(SW_KEY_NOT_FOUND, f"no keys for issuer {issuer_id.hex()} v{cmd.p2}")
        master = keys.mamk if cmd.p1 == KEY_USAGE_MAINTENANCE else keys.mtk
        if master is None:
            raise StatusError(SW_KEY_NOT_FOUND, "TAC master keys never leave the issuer")
        card_key = crypto.derive_card_key(master, issuer_id, asn8, keys.alg_id)
        if cmd.p1 == KEY_USAGE_TAC:
            card_key = crypto.tac_key(card_key, keys.alg_id)
        self._delivered = _DeliveredKey(cmd.p1, card_key, keys.alg_id)
        return b""

    @command(0xFA, cla=0x80)
    def cipher_data(self, cmd: Command) -> bytes:
        """MAC with the delivered key: data = IV(8) || padded input (module docstring)."""
        self._require_application()
        delivered = self._delivered
        if delivered is None:
            raise StatusError(SW_CONDITIONS_NOT_SATISFIED, "DELIVERY KEY first")
        if cmd.p1 != CIPHER_MAC_LAST_BLOCK or cmd.p2 != 0x00:
            raise StatusError(SW_BAD_P1P2, "only P1 = 05 (MAC, single command) is supported")
        if len(cmd.data) < 16:
            raise StatusError(SW_WRONG_LENGTH, "CIPHER DATA takes IV(8) and at least one block")
        iv, body = cmd.data[:8], _strip_padding(cmd.data[8:])
        if delivered.usage == KEY_USAGE_MAINTENANCE:
            return crypto.secure_messaging_mac(delivered.key, iv, body, delivered.alg_id)
        full_iv = iv + bytes(crypto.block_size(delivered.alg_id) - len(iv))
        return crypto.mac(delivered.key, body, delivered.alg_id, iv=full_iv)
