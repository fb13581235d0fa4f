"""Record layouts round-trip and refuse wrong lengths with RecordFormatError, never a crash."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cardos.profile import ISSUER_XIANYANG, CardType
from cardos.records import (
    SHANGHAI_TZ,
    LogRecord,
    ManagementInfo,
    PublicInfo,
    RecordFormatError,
    TransitRecord,
    bcd,
    date4,
    datetime7,
    parse_date4,
    parse_datetime7,
    time3,
)

moments = st.datetimes(min_value=dt.datetime(2000, 1, 1), max_value=dt.datetime(2099, 12, 31)).map(
    lambda m: m.replace(microsecond=0, tzinfo=SHANGHAI_TZ)
)


def test_public_info_round_trip() -> None:
    info = PublicInfo(
        ISSUER_XIANYANG,
        0x01,
        0x02,
        bytes.fromhex("03104712000000000001"),
        dt.date(2026, 1, 1),
        dt.date(2036, 1, 1),
        CardType.STUDENT,
    )
    raw = info.encode()
    assert len(raw) == 30 and raw[28] == CardType.STUDENT.code
    assert PublicInfo.decode(raw) == info


def test_management_info_carries_the_interop_flag() -> None:
    info = ManagementInfo(b"\x00\x00\x01\x56", b"\x61\x00", b"\x71\x20", True, CardType.SENIOR)
    raw = info.encode()
    assert raw[8:10] == b"\x00\x01"
    assert ManagementInfo.decode(raw) == info


@given(
    st.sampled_from([3, 4, 6]),
    st.binary(min_size=6, max_size=6),
    st.integers(0, 0xFFFF),
    st.integers(0, 0xFFFF),
    st.integers(0, 0xFFFFFFFF),
    st.integers(0, 0xFFFFFFFF),
    moments,
    st.integers(0, 0xFFFFFFFF),
)
def test_transit_record_round_trip(
    tx_type: int, terminal: bytes, line: int, station: int, amount: int, balance: int, moment: dt.datetime, seq: int
) -> None:
    rec = TransitRecord(tx_type, terminal, 2, line, station, 7, amount, balance, moment, b"\x71\x20", bytes(8), seq)
    raw = rec.encode()
    assert len(raw) == 48
    assert TransitRecord.decode(raw) == rec


@given(st.integers(0, 0xFFFF), st.integers(0, 0xFFFFFF), st.integers(0, 0xFFFFFFFF), moments)
def test_log_record_round_trip(counter: int, overdraft: int, amount: int, moment: dt.datetime) -> None:
    raw7 = datetime7(moment)
    rec = LogRecord(counter, overdraft, amount, 9, bytes(6), raw7[:4], raw7[4:])
    assert LogRecord.decode(rec.encode()) == rec
    assert parse_datetime7(raw7) == moment


@given(st.binary(max_size=80))
def test_decoders_never_crash(raw: bytes) -> None:
    for decoder in (PublicInfo.decode, ManagementInfo.decode, LogRecord.decode, TransitRecord.decode):
        with contextlib.suppress(RecordFormatError):
            decoder(raw)


def test_bad_bcd_date_is_a_format_error() -> None:
    with pytest.raises(RecordFormatError, match="BCD"):
        parse_datetime7(bytes.fromhex("20261399000000"))


# --- the fast BCD paths agree with strptime/strftime (the reference they replaced) -------------


def _strptime_date4(data: bytes) -> dt.date | None:
    try:
        return dt.datetime.strptime(data.hex(), "%Y%m%d").date() if data.hex().isdigit() else None
    except ValueError:
        return None


def _strptime_datetime7(data: bytes) -> dt.datetime | None:
    try:
        text = data.hex()
        return dt.datetime.strptime(text, "%Y%m%d%H%M%S").replace(tzinfo=SHANGHAI_TZ) if text.isdigit() else None
    except ValueError:
        return None


def _parsed(convert: Callable[[Any], object], value: object) -> object:
    """What ``convert`` answers, None for a RecordFormatError."""
    try:
        return convert(value)
    except RecordFormatError:
        return None


# Two-digit fields biased to their edges (00, 01, 12, 13, 23, 24, 28-32, 59-61) and to BCD
# nibbles A-F, so every range check of strptime is crossed from both sides.
_pair = st.one_of(
    st.sampled_from(["00", "01", "02", "09", "10", "12", "13", "19", "20", "23", "24", "28", "29", "30", "31", "32"]),
    st.sampled_from(["39", "40", "59", "60", "61", "99", "0a", "a0", "ff", "1f"]),
    st.integers(0, 0xFF).map(lambda b: f"{b:02x}"),
)
_year = st.one_of(
    st.sampled_from(["0000", "0001", "0999", "1000", "1999", "2000", "2024", "2025", "2100", "9999", "20a5"]),
    st.integers(0, 0xFFFF).map(lambda v: f"{v:04x}"),
)


@given(_year, _pair, _pair)
def test_fast_date4_parse_agrees_with_strptime(year: str, month: str, day: str) -> None:
    raw = bytes.fromhex(year + month + day)
    assert _parsed(parse_date4, raw) == _strptime_date4(raw)


@given(_year, _pair, _pair, _pair, _pair, _pair)
def test_fast_datetime7_parse_agrees_with_strptime(
    year: str, month: str, day: str, hour: str, minute: str, second: str
) -> None:
    raw = bytes.fromhex(year + month + day + hour + minute + second)
    assert _parsed(parse_datetime7, raw) == _strptime_datetime7(raw)


@given(st.binary(max_size=9))
def test_date_parsers_of_any_length_agree_with_strptime(raw: bytes) -> None:
    assert _parsed(parse_date4, raw) == _strptime_date4(raw)
    assert _parsed(parse_datetime7, raw) == _strptime_datetime7(raw)


@given(st.datetimes(min_value=dt.datetime(1, 1, 1), max_value=dt.datetime(9999, 12, 31)))
def test_fast_bcd_formatting_agrees_with_strftime(moment: dt.datetime) -> None:
    def reference(fmt: str) -> bytes | None:
        try:
            return bcd(moment.strftime(fmt))
        except RecordFormatError:
            return None

    assert _parsed(date4, moment) == reference("%Y%m%d")
    assert time3(moment) == reference("%H%M%S")
    assert _parsed(datetime7, moment) == reference("%Y%m%d%H%M%S")
