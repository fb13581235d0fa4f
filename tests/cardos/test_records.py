"""Record layouts round-trip and refuse wrong lengths with RecordFormatError, never a crash."""

from __future__ import annotations

import contextlib
import datetime as dt

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
    datetime7,
    parse_datetime7,
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
