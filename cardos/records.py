"""Byte layouts of the purse files and records (``epurse-public-sources.md`` section 2).

Pure encode/decode functions shared by the card OS, terminals, issuance and clearing,
so each layout is written down exactly once.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from cardos.profile import CardType

SHANGHAI_TZ = dt.timezone(dt.timedelta(hours=8), "Asia/Shanghai")


class RecordFormatError(ValueError):
    """A file or record has the wrong length or an undecodable field."""


# --- BCD dates and times -----------------------------------------------------------


def bcd(digits: str) -> bytes:
    if len(digits) % 2 or not digits.isdigit():
        raise RecordFormatError(f"not an even run of decimal digits: {digits!r}")
    return bytes.fromhex(digits)


def unbcd(data: bytes) -> str:
    text = data.hex()
    if not text.isdigit():
        raise RecordFormatError(f"not BCD: {text}")
    return text


# The formatters and parsers below run several times per tap. They split the fixed-width
# digits themselves instead of going through strftime/strptime (~15 us each), with the same
# results and the same errors: years before 1000 (strftime does not pad them, and ``bcd``
# refuses the odd run of digits) and inputs of another length take the strftime/strptime
# path; tests/cardos/test_records.py checks both paths agree.


def date4(day: dt.date) -> bytes:
    if day.year < 1000:
        return bcd(day.strftime("%Y%m%d"))
    return bytes.fromhex(f"{day.year:04d}{day.month:02d}{day.day:02d}")


def time3(moment: dt.time | dt.datetime) -> bytes:
    return bytes.fromhex(f"{moment.hour:02d}{moment.minute:02d}{moment.second:02d}")


def datetime7(moment: dt.datetime) -> bytes:
    """YYYYMMDDhhmmss in BCD, in the card's local time (Asia/Shanghai)."""
    m = local(moment)
    if m.year < 1000:
        return bcd(m.strftime("%Y%m%d%H%M%S"))
    return bytes.fromhex(f"{m.year:04d}{m.month:02d}{m.day:02d}{m.hour:02d}{m.minute:02d}{m.second:02d}")


def local(moment: dt.datetime) -> dt.datetime:
    """Local card time; naive datetimes are taken as already local."""
    if moment.tzinfo is None:
        return moment
    return moment.astimezone(SHANGHAI_TZ)


def parse_date4(data: bytes) -> dt.date:
    try:
        if len(data) != 4:  # strptime accepts short fields ("%m" matches "6"): keep its answer
            return dt.datetime.strptime(unbcd(data), "%Y%m%d").date()
        # Eight digits leave strptime one split (4-2-2); date() checks the ranges it checks.
        text = unbcd(data)
        return dt.date(int(text[0:4]), int(text[4:6]), int(text[6:8]))
    except ValueError as exc:
        raise RecordFormatError(f"bad BCD date {data.hex()}") from exc


def parse_datetime7(data: bytes) -> dt.datetime:
    """Card-local date-time as an aware datetime in Asia/Shanghai."""
    try:
        if len(data) != 7:
            return dt.datetime.strptime(unbcd(data), "%Y%m%d%H%M%S").replace(tzinfo=SHANGHAI_TZ)
        # Fourteen digits leave strptime one split (4-2-2-2-2-2), and datetime() refuses what it
        # refuses (month or day 00, hour 24, minute or second 60).
        text = unbcd(data)
        return dt.datetime(
            int(text[0:4]),
            int(text[4:6]),
            int(text[6:8]),
            int(text[8:10]),
            int(text[10:12]),
            int(text[12:14]),
            tzinfo=SHANGHAI_TZ,
        )
    except ValueError as exc:
        raise RecordFormatError(f"bad BCD date-time {data.hex()}") from exc


def _need(name: str, data: bytes, length: int) -> None:
    if len(data) != length:
        raise RecordFormatError(f"{name} must be {length} bytes, got {len(data)}")


# --- SFI 0x15: public application information (30 bytes) ---------------------------


@dataclass(frozen=True, slots=True)
class PublicInfo:
    issuer_id: bytes  # 8
    app_type: int
    app_version: int
    asn: bytes  # 10, BCD
    start_date: dt.date
    expiry_date: dt.date
    card_type: CardType

    def encode(self) -> bytes:
        _need("issuer id", self.issuer_id, 8)
        _need("ASN", self.asn, 10)
        return (
            self.issuer_id
            + bytes([self.app_type, self.app_version])
            + self.asn
            + date4(self.start_date)
            + date4(self.expiry_date)
            + bytes([self.card_type.code, 0x00])
        )

    @classmethod
    def decode(cls, data: bytes) -> PublicInfo:
        _need("file 0x15", data, 30)
        try:
            card_type = CardType.from_code(data[28])
        except ValueError as exc:
            raise RecordFormatError(str(exc)) from exc
        return cls(
            issuer_id=data[0:8],
            app_type=data[8],
            app_version=data[9],
            asn=data[10:20],
            start_date=parse_date4(data[20:24]),
            expiry_date=parse_date4(data[24:28]),
            card_type=card_type,
        )


# --- SFI 0x17: management information (60 bytes) -------------------------------------


@dataclass(frozen=True, slots=True)
class ManagementInfo:
    country_code: bytes  # 4
    province_code: bytes  # 2
    city_code: bytes  # 2
    interoperable: bool
    card_type: CardType

    def encode(self) -> bytes:
        out = bytearray(60)
        out[0:4] = self.country_code
        out[4:6] = self.province_code
        out[6:8] = self.city_code
        out[8:10] = b"\x00\x01" if self.interoperable else b"\x00\x00"
        out[10] = self.card_type.code
        return bytes(out)

    @classmethod
    def decode(cls, data: bytes) -> ManagementInfo:
        _need("file 0x17", data, 60)
        try:
            card_type = CardType.from_code(data[10])
        except ValueError as exc:
            raise RecordFormatError(str(exc)) from exc
        return cls(data[0:4], data[4:6], data[6:8], data[8:10] != b"\x00\x00", card_type)


# --- SFI 0x18: transaction log record (23 bytes) --------------------------------------


@dataclass(frozen=True, slots=True)
class LogRecord:
    counter: int  # online counter for loads, offline counter for purchases
    overdraft_fen: int
    amount_fen: int
    tx_type: int
    terminal_id: bytes  # 6
    date: bytes  # 4 BCD
    time: bytes  # 3 BCD

    def encode(self) -> bytes:
        return (
            self.counter.to_bytes(2, "big")
            + self.overdraft_fen.to_bytes(3, "big")
            + self.amount_fen.to_bytes(4, "big")
            + bytes([self.tx_type])
            + self.terminal_id
            + self.date
            + self.time
        )

    @classmethod
    def decode(cls, data: bytes) -> LogRecord:
        _need("log record", data, 23)
        return cls(
            counter=int.from_bytes(data[0:2], "big"),
            overdraft_fen=int.from_bytes(data[2:5], "big"),
            amount_fen=int.from_bytes(data[5:9], "big"),
            tx_type=data[9],
            terminal_id=data[10:16],
            date=data[16:20],
            time=data[20:23],
        )


# --- SFI 0x1E: transit process record (48 bytes) --------------------------------------

TRANSIT_ENTRY = 0x03
TRANSIT_EXIT = 0x04
TRANSIT_SINGLE = 0x06
TRANSIT_BLOCK = 0x12

INDUSTRY_METRO = 0x01
INDUSTRY_BUS = 0x02


@dataclass(frozen=True, slots=True)
class TransitRecord:
    """One leg as the validator caches it with UPDATE CAPP DATA CACHE.

    ``line`` and ``station`` are the 2-byte numeric GTFS route and stop codes of the
    tariff; ``operator`` is the bus operator code.
    """

    tx_type: int
    terminal_id: bytes  # 6 (stored as 00 00 + 6 bytes)
    industry: int
    line: int
    station: int
    operator: int
    amount_fen: int
    balance_after_fen: int
    moment: dt.datetime
    acquirer_city: bytes  # 2
    acquirer_id: bytes  # 8
    # Project-defined use of RFU bytes 42-45: the PSAM terminal sequence (TTC) of this
    # leg, so a later leg can name it as ``transfer_of`` from what the card carries.
    terminal_seq: int = 0

    def encode(self) -> bytes:
        _need("terminal id", self.terminal_id, 6)
        out = (
            bytes([self.tx_type])
            + b"\x00\x00"
            + self.terminal_id
            + bytes([self.industry])
            + self.line.to_bytes(2, "big")
            + self.station.to_bytes(2, "big")
            + self.operator.to_bytes(2, "big")
            + b"\x00"
            + self.amount_fen.to_bytes(4, "big")
            + self.balance_after_fen.to_bytes(4, "big")
            + datetime7(self.moment)
            + self.acquirer_city
            + self.acquirer_id
            + self.terminal_seq.to_bytes(4, "big")
            + bytes(2)
        )
        _need("transit record", out, 48)
        return out

    @classmethod
    def decode(cls, data: bytes) -> TransitRecord:
        _need("transit record", data, 48)
        return cls(
            tx_type=data[0],
            terminal_id=data[3:9],
            industry=data[9],
            line=int.from_bytes(data[10:12], "big"),
            station=int.from_bytes(data[12:14], "big"),
            operator=int.from_bytes(data[14:16], "big"),
            amount_fen=int.from_bytes(data[17:21], "big"),
            balance_after_fen=int.from_bytes(data[21:25], "big"),
            moment=parse_datetime7(data[25:32]),
            acquirer_city=data[32:34],
            acquirer_id=data[34:42],
            terminal_seq=int.from_bytes(data[42:46], "big"),
        )


def is_empty_record(data: bytes) -> bool:
    """A never-written cyclic record slot (all 00 or all FF)."""
    return data.count(0) == len(data) or data.count(0xFF) == len(data)
