"""The emulated Yikatong user card: file tree, e-purse and citizen-auth applications.

``Card`` is the INS dispatcher (``cardos.os.CardOS``) over an ISO 7816-4 tree built
from a ``CardImage``: the e-purse DF (AID ``A000000632010105``; EFs 0x15, 0x16 on
social security cards, 0x17, cyclic 0x18 and 0x1E) and, when the image carries auth
material, the citizen-auth DF (AID ``F0594B5441555448``; EF 0x01 = certificate).
The application logic is in ``cardos.purse`` and ``cardos.auth``.

Persistent changes are staged and committed by ``CardOS``; ``persist`` then writes the
image atomically if the card has a path (``card-profile.md``, "Card image"). Without a
path nothing is serialised, so in-process taps stay fast.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Final

from cardos.apdu import Command
from cardos.auth import CitizenAuth
from cardos.filesystem import DF, EF, MF, CyclicEF, TransparentEF, binary_address, record_address
from cardos.image import LOG_RECORD_LEN, TRANSIT_RECORD_LEN, CardImage
from cardos.os import CardOS, command
from cardos.profile import (
    AID_AUTH,
    AID_PURSE,
    LOG_RECORDS,
    PROVE_ENTRIES_MAX,
    SFI_CERT,
    SFI_HOLDER,
    SFI_LOG,
    SFI_MANAGEMENT,
    SFI_PUBLIC,
    SFI_TRANSIT,
    TRANSIT_RECORDS,
)
from cardos.purse import Purse, Registers
from cardos.sw import (
    SW_BAD_P1P2,
    SW_CONDITIONS_NOT_SATISFIED,
    SW_INCOMPATIBLE_FILE,
    SW_WARN_FILE_INVALID,
    SW_WRONG_LENGTH,
    StatusError,
)

FID_PURSE_DF: Final = 0x1001  # the PBOC EP DF file id (section 1, older cards select it by fid)
CHALLENGE_LENS: Final = frozenset({4, 8})


def _tlv(tag: bytes, value: bytes) -> bytes:
    if len(value) > 0x7F:
        raise ValueError("FCI values here are short")
    return tag + bytes([len(value)]) + value


def purse_fci(public: bytes) -> bytes:
    """6F { 84 AID, A5 { 9F08 app version, 9F0C file 0x15 } } (section 1)."""
    proprietary = _tlv(b"\x9f\x08", public[9:10]) + _tlv(b"\x9f\x0c", public)
    return _tlv(b"\x6f", _tlv(b"\x84", AID_PURSE) + _tlv(b"\xa5", proprietary))


def _fci_name(aid: bytes) -> bytes:
    return _tlv(b"\x6f", _tlv(b"\x84", aid))


def _fci_fid(fid: int) -> bytes:
    return _tlv(b"\x6f", _tlv(b"\x83", fid.to_bytes(2, "big")))


class Card(CardOS):
    """A Yikatong CPU card. Build it with ``Card.from_image`` and ``power_on`` it."""

    def __init__(
        self,
        image: CardImage,
        path: Path | str | None = None,
        *,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        super().__init__()
        self.path = Path(path) if path is not None else None
        self._random = random_bytes
        self.keys = image.keys
        self._public = image.public
        self._management = image.management
        self._holder = image.holder

        self.purse_df = DF(FID_PURSE_DF, AID_PURSE)
        self.purse_df.add(TransparentEF(SFI_PUBLIC, SFI_PUBLIC, image.public))
        if image.holder is not None:
            self.purse_df.add(TransparentEF(SFI_HOLDER, SFI_HOLDER, image.holder))
        self.purse_df.add(TransparentEF(SFI_MANAGEMENT, SFI_MANAGEMENT, image.management))
        self.log = CyclicEF(SFI_LOG, SFI_LOG, LOG_RECORD_LEN, LOG_RECORDS, deque(image.log_records))
        self.transit = CyclicEF(
            SFI_TRANSIT, SFI_TRANSIT, TRANSIT_RECORD_LEN, TRANSIT_RECORDS, deque(image.transit_records)
        )
        self.purse_df.add(self.log)
        self.purse_df.add(self.transit)
        dfs = [self.purse_df]

        self.registers = Registers.of(image.purse)
        self.prove = deque(image.prove, maxlen=PROVE_ENTRIES_MAX)
        self.load_prove = deque(image.load_prove, maxlen=PROVE_ENTRIES_MAX)
        self.purse = Purse(
            keys=image.keys,
            registers=self.registers,
            log=self.log,
            transit=self.transit,
            prove=self.prove,
            load_prove=self.load_prove,
            stage=self.stage,
            random_bytes=random_bytes,
        )

        self.auth: CitizenAuth | None = None
        self.auth_df: DF | None = None
        if image.auth is not None:
            self.auth = CitizenAuth(image.auth, self.stage)
            self.auth_df = DF(None, AID_AUTH)
            self.auth_df.add(TransparentEF(SFI_CERT, SFI_CERT, image.auth.certificate_der, fixed=False))
            dfs.append(self.auth_df)
        self.mf = MF.of(dfs)
        self._purse_fci = purse_fci(image.public)

        self.current_df: DF = self.mf.root
        self.current_ef: EF | None = None
        self.challenge: bytes | None = None
        self.reset_volatile()

    # --- construction and state -----------------------------------------------------------------
    @classmethod
    def from_image(cls, image: CardImage, path: Path | str | None = None) -> Card:
        """A card with ``image`` as its memory; with ``path``, every commit rewrites that file."""
        return cls(image, path)

    @classmethod
    def load(cls, path: Path | str) -> Card:
        """The card whose image is stored at ``path`` (and is written back there)."""
        return cls(CardImage.load(path), path)

    @property
    def image(self) -> CardImage:
        """The committed state (never a half-done transaction: staged changes are not in it)."""
        return CardImage(
            public=self._public,
            management=self._management,
            keys=self.keys,
            purse=self.registers.snapshot(),
            holder=self._holder,
            log_records=tuple(self.log.records),
            transit_records=tuple(self.transit.records),
            auth=self.auth.snapshot() if self.auth is not None else None,
            prove=tuple(self.prove),
            load_prove=tuple(self.load_prove),
        )

    @property
    def balance_fen(self) -> int:
        return self.registers.balance_fen

    @property
    def offline_counter(self) -> int:
        return self.registers.offline_counter

    @property
    def online_counter(self) -> int:
        return self.registers.online_counter

    @property
    def blocked(self) -> bool:
        return self.registers.blocked

    @property
    def pin_tries_left(self) -> int | None:
        return self.auth.pin_tries_left if self.auth is not None else None

    def persist(self) -> None:
        if self.path is not None:
            self.image.save_atomic(self.path)

    def reset_volatile(self) -> None:
        self.current_df = self.mf.root
        self.current_ef = None
        self.challenge = None
        self.purse.reset_volatile()
        if self.auth is not None:
            self.auth.reset_volatile()

    def _enter(self, df: DF) -> None:
        """Selecting a DF ends every open session of the one before (and of itself)."""
        self.reset_volatile()
        self.current_df = df

    def _purse(self) -> Purse:
        if self.current_df is not self.purse_df:
            raise StatusError(SW_CONDITIONS_NOT_SATISFIED, "select the e-purse application first")
        return self.purse

    def _auth(self) -> CitizenAuth:
        if self.auth is None or self.current_df is not self.auth_df:
            raise StatusError(SW_CONDITIONS_NOT_SATISFIED, "select the citizen-auth application first")
        return self.auth

    # --- ISO 7816-4 commands ------------------------------------------------------------------
    @command(0xA4, cla=0x00)
    def select(self, cmd: Command) -> bytes:
        """SELECT by AID (P1 04), by file id (P1 00: MF, DF or EF) or EF under the DF (P1 02)."""
        p1, p2, data = cmd.p1, cmd.p2, bytes(cmd.data)
        if p2 not in (0x00, 0x0C):
            raise StatusError(SW_BAD_P1P2, "SELECT supports P2 00 (FCI) and 0C (no data)")
        want_fci = p2 == 0x00
        if p1 == 0x04:
            if not data:
                raise StatusError(SW_WRONG_LENGTH, "SELECT by name needs an AID")
            df = self.mf.by_aid(data)
            self._enter(df)
            if df is self.purse_df:
                fci = self._purse_fci if want_fci else b""
                if self.registers.blocked:
                    raise StatusError(SW_WARN_FILE_INVALID, "application blocked", data=fci)
                return fci
            return _fci_name(data) if want_fci else b""
        if p1 not in (0x00, 0x02):
            raise StatusError(SW_BAD_P1P2, f"SELECT P1 {p1:02X} not supported")
        if len(data) != 2:
            raise StatusError(SW_WRONG_LENGTH, "SELECT by file id needs 2 bytes")
        fid = int.from_bytes(data, "big")
        if p1 == 0x00 and (fid == self.mf.root.fid or any(df.fid == fid for df in self.mf.dfs)):
            df = self.mf.by_fid(fid)
            self._enter(df)
            if df is self.purse_df and self.registers.blocked:
                raise StatusError(
                    SW_WARN_FILE_INVALID, "application blocked", data=self._purse_fci if want_fci else b""
                )
            return _fci_fid(fid) if want_fci else b""
        ef = self.current_df.by_fid(fid)
        self.current_ef = ef
        return _fci_fid(fid) if want_fci else b""

    @command(0xB0, cla=0x00)
    def read_binary(self, cmd: Command) -> bytes:
        """00 B0 (80|SFI) offset Le, or 00 B0 offset-high offset-low Le on the current EF."""
        if cmd.data:
            raise StatusError(SW_WRONG_LENGTH, "READ BINARY takes no data")
        sfi, offset = binary_address(cmd.p1, cmd.p2)
        ef = self.current_ef if sfi is None else self.current_df.by_sfi(sfi)
        if ef is None:
            raise StatusError(SW_CONDITIONS_NOT_SATISFIED, "no current EF")
        if not isinstance(ef, TransparentEF):
            raise StatusError(SW_INCOMPATIBLE_FILE, "READ BINARY on a record file")
        self.current_ef = ef
        return ef.read(offset, cmd.le)

    @command(0xB2, cla=0x00)
    def read_record(self, cmd: Command) -> bytes:
        """00 B2 record (SFI << 3 | 4) Le; record 1 is the newest (section 2)."""
        if cmd.data:
            raise StatusError(SW_WRONG_LENGTH, "READ RECORD takes no data")
        ef = self.current_df.cyclic(record_address(cmd.p2))
        self.current_ef = ef
        return ef.read_record(cmd.p1, cmd.le)

    @command(0x84, cla=0x00)
    def get_challenge(self, cmd: Command) -> bytes:
        """00 84 00 00 04 (or 08): a random the next APPLICATION BLOCK MAC must cover."""
        if cmd.p1 != 0x00 or cmd.p2 != 0x00:
            raise StatusError(SW_BAD_P1P2, "GET CHALLENGE needs P1 P2 00 00")
        if cmd.data or cmd.le not in CHALLENGE_LENS:
            raise StatusError(SW_WRONG_LENGTH, "GET CHALLENGE answers 4 or 8 bytes")
        self.challenge = self._random(cmd.ne)
        return self.challenge

    # --- e-purse (cardos.purse) ---------------------------------------------------------------
    @command(0x5C, cla=0x80)
    def get_balance(self, cmd: Command) -> bytes:
        return self._purse().get_balance(cmd)

    @command(0x50, cla=0x80)
    def initialize(self, cmd: Command) -> bytes:
        return self._purse().initialize(cmd)

    @command(0x54, cla=0x80)
    def debit(self, cmd: Command) -> bytes:
        return self._purse().debit(cmd)

    @command(0xDC, cla=0x80)
    def update_capp_data_cache(self, cmd: Command) -> bytes:
        return self._purse().update_capp_data_cache(cmd)

    @command(0x52, cla=0x80)
    def credit_for_load(self, cmd: Command) -> bytes:
        return self._purse().credit_for_load(cmd)

    @command(0x5A, cla=0x80)
    def get_transaction_prove(self, cmd: Command) -> bytes:
        return self._purse().get_transaction_prove(cmd)

    @command(0x1E, cla=0x84)
    def application_block(self, cmd: Command) -> bytes:
        purse = self._purse()
        challenge, self.challenge = self.challenge, None  # one MAC try per challenge
        return purse.application_block(cmd, challenge)

    # --- citizen auth (cardos.auth) -----------------------------------------------------------
    @command(0x20, cla=0x00)
    def verify(self, cmd: Command) -> bytes:
        return self._auth().verify(cmd)

    @command(0x88, cla=0x00)
    def internal_authenticate(self, cmd: Command) -> bytes:
        return self._auth().internal_authenticate(cmd)
