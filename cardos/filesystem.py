"""ISO 7816-4 file tree of a Yikatong card: MF, application DFs, transparent and cyclic EFs.

Only what the card profile needs (``card-profile.md``, ``epurse-public-sources.md``
section 2): DFs selected by AID or file id, EFs addressed by short file identifier
(SFI), transparent EFs read with READ BINARY and cyclic record EFs (newest record is
record 1) read with READ RECORD. Lookups raise ``StatusError`` so handlers stay flat.

The tree holds the committed file contents. Writers (the purse at its commit point)
call ``CyclicEF.push`` only from a staged change (``cardos.os.CardOS.stage``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from cardos.sw import (
    SW_BAD_P1P2,
    SW_FILE_NOT_FOUND,
    SW_INCOMPATIBLE_FILE,
    SW_OFFSET_ERROR,
    SW_RECORD_NOT_FOUND,
    StatusError,
    sw_wrong_le,
)

FID_MF = 0x3F00
SHORT_LE_MAX = 256  # Le = 00 in a short APDU: "as much as there is, up to 256"


@dataclass(slots=True)
class TransparentEF:
    """A binary EF. ``fixed`` files (0x15/0x16/0x17) answer 6Cxx unless Le fits exactly."""

    fid: int
    sfi: int
    data: bytes
    fixed: bool = True

    def read(self, offset: int, ne: int | None) -> bytes:
        """READ BINARY from ``offset``; ``ne`` is the Le of the command (None: absent)."""
        size = len(self.data)
        if offset >= size:
            raise StatusError(SW_OFFSET_ERROR, f"offset {offset} beyond EF {self.fid:04X} of {size} bytes")
        remaining = size - offset
        if self.fixed:
            # Le = 00 (256) means "all of it"; any other Le must match (section 2: resend with 6Cxx).
            if ne == remaining or (ne == SHORT_LE_MAX and remaining <= SHORT_LE_MAX):
                return self.data[offset:]
            raise StatusError(sw_wrong_le(remaining), f"EF {self.fid:04X} has {remaining} bytes from offset {offset}")
        if ne is None:
            raise StatusError(sw_wrong_le(min(remaining, 0xFF)), "READ BINARY without Le")
        return self.data[offset : offset + ne]


@dataclass(slots=True)
class CyclicEF:
    """A cyclic record EF: record 1 is the newest; the oldest falls off when full."""

    fid: int
    sfi: int
    record_len: int
    records_max: int
    records: deque[bytes] = field(default_factory=deque)

    def __post_init__(self) -> None:
        self.records = deque(self.records, maxlen=self.records_max)
        for record in self.records:
            self._check(record)

    def _check(self, record: bytes) -> None:
        if len(record) != self.record_len:
            raise ValueError(f"EF {self.fid:04X} records are {self.record_len} bytes, got {len(record)}")

    def read_record(self, number: int, ne: int | None) -> bytes:
        """READ RECORD ``number`` (1 = newest); an unwritten slot is 6A83 (section 2)."""
        if not 1 <= number <= self.records_max:
            raise StatusError(SW_RECORD_NOT_FOUND, f"record {number} outside 1..{self.records_max}")
        if number > len(self.records):
            raise StatusError(SW_RECORD_NOT_FOUND, f"record {number} of EF {self.fid:04X} is empty")
        if ne is not None and ne != self.record_len and ne != SHORT_LE_MAX:
            raise StatusError(sw_wrong_le(self.record_len), f"records of EF {self.fid:04X} are {self.record_len} bytes")
        return self.records[number - 1]

    def push(self, record: bytes) -> None:
        """Write a new newest record. Call only from a staged change."""
        self._check(record)
        self.records.appendleft(record)


EF = TransparentEF | CyclicEF


@dataclass(slots=True)
class DF:
    """An application DF (or the MF): its EFs by SFI and by file id."""

    fid: int | None
    aid: bytes | None
    efs: dict[int, EF] = field(default_factory=dict)  # by SFI

    def add(self, ef: EF) -> None:
        if ef.sfi in self.efs:
            raise ValueError(f"SFI {ef.sfi:#04x} already used in this DF")
        self.efs[ef.sfi] = ef

    def by_sfi(self, sfi: int) -> EF:
        ef = self.efs.get(sfi)
        if ef is None:
            raise StatusError(SW_FILE_NOT_FOUND, f"no EF with SFI {sfi:#04x} here")
        return ef

    def by_fid(self, fid: int) -> EF:
        for ef in self.efs.values():
            if ef.fid == fid:
                return ef
        raise StatusError(SW_FILE_NOT_FOUND, f"no EF {fid:04X} here")

    def transparent(self, sfi: int) -> TransparentEF:
        ef = self.by_sfi(sfi)
        if not isinstance(ef, TransparentEF):
            raise StatusError(SW_INCOMPATIBLE_FILE, f"EF with SFI {sfi:#04x} is not transparent")
        return ef

    def cyclic(self, sfi: int) -> CyclicEF:
        ef = self.by_sfi(sfi)
        if not isinstance(ef, CyclicEF):
            raise StatusError(SW_INCOMPATIBLE_FILE, f"EF with SFI {sfi:#04x} is not a record file")
        return ef


@dataclass(slots=True)
class MF:
    """The master file: holds the application DFs (it has no EFs of its own here)."""

    dfs: list[DF] = field(default_factory=list)
    root: DF = field(default_factory=lambda: DF(FID_MF, None))

    @classmethod
    def of(cls, dfs: Iterable[DF]) -> MF:
        return cls(list(dfs))

    def by_aid(self, aid: bytes) -> DF:
        for df in self.dfs:
            if df.aid == aid:
                return df
        raise StatusError(SW_FILE_NOT_FOUND, f"no application {aid.hex().upper()}")

    def by_fid(self, fid: int) -> DF:
        if fid == FID_MF:
            return self.root
        for df in self.dfs:
            if df.fid == fid:
                return df
        raise StatusError(SW_FILE_NOT_FOUND, f"no DF {fid:04X}")


def binary_address(p1: int, p2: int) -> tuple[int | None, int]:
    """READ BINARY P1/P2 -> (SFI or None for the current EF, offset) per ISO 7816-4.

    P1 bit 8 set: bits 5..1 are the SFI and P2 the offset (bits 7..6 must be 0).
    Otherwise P1 P2 is a 15-bit offset into the current EF.
    """
    if p1 & 0x80:
        if p1 & 0x60:
            raise StatusError(SW_BAD_P1P2, f"P1 {p1:02X}: bits 7-6 must be 0 with an SFI")
        sfi = p1 & 0x1F
        if sfi == 0:
            return None, p2
        return sfi, p2
    return None, (p1 << 8) | p2


def record_address(p2: int) -> int:
    """READ RECORD P2 -> SFI; only "record number in P1" (low bits 100) with an SFI."""
    sfi, mode = p2 >> 3, p2 & 0x07
    if mode != 0b100 or sfi == 0:
        raise StatusError(SW_BAD_P1P2, f"P2 {p2:02X}: need (SFI << 3) | 4")
    return sfi
