"""The APDU parser refuses every malformed byte string with 6700 and never crashes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cardos.apdu import Command, parse_command, split_response
from cardos.sw import SW_WRONG_LENGTH, StatusError


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("00A40400", Command(0x00, 0xA4, 0x04, 0x00)),
        ("805C000204", Command(0x80, 0x5C, 0x00, 0x02, b"", 4)),
        ("00B0950000", Command(0x00, 0xB0, 0x95, 0x00, b"", 256)),
        ("00A4040008A000000632010105", Command(0, 0xA4, 4, 0, bytes.fromhex("A000000632010105"))),
        ("00A4040008A00000063201010500", Command(0, 0xA4, 4, 0, bytes.fromhex("A000000632010105"), 256)),
        ("00B08100000400", Command(0, 0xB0, 0x81, 0, b"", 0x400)),
        ("00880000000002AABB0100", Command(0, 0x88, 0, 0, b"\xaa\xbb", 0x100)),
    ],
)
def test_parses_every_iso_case(raw: str, expected: Command) -> None:
    assert parse_command(bytes.fromhex(raw)) == expected


@pytest.mark.parametrize(
    "raw", ["", "00", "00A404", "00A4040005AABB", "00A404000000", "00A40400020102FF00", "00A40400000003AABB"]
)
def test_malformed_apdus_get_wrong_length(raw: str) -> None:
    with pytest.raises(StatusError) as info:
        parse_command(bytes.fromhex(raw))
    assert info.value.sw == SW_WRONG_LENGTH


@given(st.binary(max_size=300))
def test_parser_never_crashes(raw: bytes) -> None:
    try:
        cmd = parse_command(raw)
    except StatusError as exc:
        assert exc.sw == SW_WRONG_LENGTH
    else:
        assert (cmd.cla, cmd.ins, cmd.p1, cmd.p2) == tuple(raw[:4])


@given(st.binary(min_size=1, max_size=255), st.one_of(st.none(), st.integers(1, 255)))
def test_short_commands_round_trip(data: bytes, le: int | None) -> None:
    cmd = Command(0x80, 0x50, 0x01, 0x02, data, le)
    assert parse_command(cmd.to_bytes()) == cmd


def test_split_response_needs_a_status_word() -> None:
    assert split_response(b"\x01\x02\x90\x00") == (b"\x01\x02", 0x9000)
    with pytest.raises(ValueError, match="status word"):
        split_response(b"\x90")
