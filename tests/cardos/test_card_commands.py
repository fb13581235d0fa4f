"""The user card's ISO commands byte by byte: SELECT and FCI, READ BINARY, READ RECORD, GET CHALLENGE.

Layouts and status words from epurse-public-sources.md sections 1, 2 and 11.
"""

from __future__ import annotations

import pytest
from cardkit import HOLDER, Terminal, apdu, make_card, make_image, public_info, select_apdu, transit_record

from cardos.apdu import split_response
from cardos.card import Card
from cardos.os import CardTorn
from cardos.profile import AID_AUTH, AID_PURSE, CardType
from cardos.records import LogRecord, ManagementInfo, PublicInfo


def send(card: Card, raw: bytes | str) -> tuple[bytes, int]:
    return split_response(card.transmit(apdu(raw) if isinstance(raw, str) else raw))


def tlv(data: bytes) -> dict[bytes, bytes]:
    """Flat BER-TLV walk (1- or 2-byte tags, short lengths); constructed tags are entered."""
    out: dict[bytes, bytes] = {}
    i = 0
    while i < len(data):
        tag = data[i : i + 1]
        i += 1
        if tag[0] & 0x1F == 0x1F:
            tag += data[i : i + 1]
            i += 1
        length = data[i]
        i += 1
        value = data[i : i + length]
        i += length
        out[tag] = value
        if tag[0] & 0x20:
            out.update(tlv(value))
    return out


@pytest.fixture
def card() -> Card:
    return make_card()


def test_select_purse_returns_fci_with_app_version_and_file_15(card: Card) -> None:
    fci, sw = send(card, select_apdu(AID_PURSE))
    assert sw == 0x9000
    tags = tlv(fci)
    assert tags[b"\x84"] == AID_PURSE
    public = card.image.public
    assert tags[b"\x9f\x0c"] == public and len(public) == 30
    assert tags[b"\x9f\x08"] == bytes([public[9]])
    assert PublicInfo.decode(tags[b"\x9f\x0c"]).asn == public_info().asn


def test_select_with_p2_0c_returns_no_data(card: Card) -> None:
    assert send(card, bytes.fromhex("00A4040C08") + AID_PURSE) == (b"", 0x9000)


def test_select_unknown_aid_is_6a82_and_keeps_the_selection(card: Card) -> None:
    send(card, select_apdu(AID_PURSE))
    assert send(card, select_apdu(bytes.fromhex("A000000632010106")))[1] == 0x6A82
    assert send(card, "00B095001E")[1] == 0x9000


def test_select_mf_by_file_id_then_purse_files_are_not_in_scope(card: Card) -> None:
    data, sw = send(card, "00A40000023F00")
    assert sw == 0x9000 and tlv(data)[b"\x83"] == b"\x3f\x00"
    assert send(card, "00B095001E")[1] == 0x6A82
    assert send(card, "805C000204")[1] == 0x6985


def test_select_purse_df_by_file_id_1001(card: Card) -> None:
    assert send(card, "00A40000021001")[1] == 0x9000
    assert send(card, "805C000204") == ((10_000).to_bytes(4, "big"), 0x9000)


def test_auth_app_is_absent_on_an_ordinary_card(card: Card) -> None:
    assert send(card, select_apdu(AID_AUTH))[1] == 0x6A82


def test_auth_app_is_present_on_a_social_security_card() -> None:
    card = make_card(card_type=CardType.SOCIAL_SECURITY)
    data, sw = send(card, select_apdu(AID_AUTH))
    assert sw == 0x9000 and tlv(data)[b"\x84"] == AID_AUTH


def test_select_bad_p1_p2_and_length(card: Card) -> None:
    assert send(card, bytes.fromhex("00A4040108") + AID_PURSE)[1] == 0x6A86
    assert send(card, bytes.fromhex("00A4080008") + AID_PURSE)[1] == 0x6A86
    assert send(card, "00A40000033F0000")[1] == 0x6700
    assert send(card, "00A40400")[1] == 0x6700


@pytest.mark.parametrize(
    ("sfi", "length"),
    [(0x15, 30), (0x17, 60)],
)
def test_read_binary_by_sfi_returns_the_fixed_file(card: Card, sfi: int, length: int) -> None:
    send(card, select_apdu(AID_PURSE))
    data, sw = send(card, bytes([0x00, 0xB0, 0x80 | sfi, 0x00, length]))
    assert sw == 0x9000 and len(data) == length
    # TJ sends Le = 00: the whole file
    assert send(card, bytes([0x00, 0xB0, 0x80 | sfi, 0x00, 0x00])) == (data, 0x9000)
    if sfi == 0x17:
        assert ManagementInfo.decode(data).interoperable


@pytest.mark.parametrize("le", [0x01, 0x1D, 0x1F, 0x3C])
def test_wrong_le_on_a_fixed_file_answers_6cxx_with_the_length(card: Card, le: int) -> None:
    send(card, select_apdu(AID_PURSE))
    data, sw = send(card, bytes([0x00, 0xB0, 0x95, 0x00, le]))
    assert (data, sw) == (b"", 0x6C1E)
    # resending with Le = xx works (section 2)
    assert send(card, bytes([0x00, 0xB0, 0x95, 0x00, sw & 0xFF]))[1] == 0x9000


def test_read_binary_with_offset_and_offset_beyond_the_file(card: Card) -> None:
    send(card, select_apdu(AID_PURSE))
    full, _ = send(card, "00B095001E")
    assert send(card, "00B0950A14") == (full[10:], 0x9000)
    assert send(card, "00B0951E01")[1] == 0x6B00
    # P1 bit 8 clear: offset into the current EF (0x15 after the SFI read)
    assert send(card, "00B0000A14") == (full[10:], 0x9000)


def test_read_binary_of_holder_file_on_social_security_card_only(card: Card) -> None:
    send(card, select_apdu(AID_PURSE))
    assert send(card, "00B0960037")[1] == 0x6A82
    ss = make_card(card_type=CardType.SOCIAL_SECURITY)
    send(ss, select_apdu(AID_PURSE))
    assert send(ss, "00B0960037") == (HOLDER, 0x9000)


def test_read_binary_errors(card: Card) -> None:
    send(card, select_apdu(AID_PURSE))
    assert send(card, "00B0000000")[1] == 0x6985  # no current EF yet
    assert send(card, "00B0980017")[1] == 0x6981  # a record file
    assert send(card, "00B0D50000")[1] == 0x6A86  # SFI with P1 bits 7-6 set
    assert send(card, "00B09500021234")[1] == 0x6700  # data in a READ BINARY
    assert send(card, "00B09F0000")[1] == 0x6A82


def test_read_record_on_a_fresh_card_is_6a83(card: Card) -> None:
    send(card, select_apdu(AID_PURSE))
    assert send(card, "00B201C417") == (b"", 0x6A83)
    assert send(card, "00B201F430") == (b"", 0x6A83)


def test_log_and_transit_records_are_cyclic_newest_first(card: Card) -> None:
    terminal = Terminal(card, card.keys)
    for i in range(12):
        assert terminal.purchase(i + 1, capp=True, record=transit_record(i + 1, 10_000 - i)).ok
    send(card, select_apdu(AID_PURSE))
    logs = []
    for n in range(1, 11):
        data, sw = send(card, bytes([0x00, 0xB2, n, 0xC4, 0x17]))
        assert sw == 0x9000 and len(data) == 23
        logs.append(LogRecord.decode(data))
    assert [r.amount_fen for r in logs] == list(range(12, 2, -1))  # 10 kept, newest first
    assert [r.counter for r in logs] == list(range(11, 1, -1))  # the CTC each INITIALIZE returned
    assert all(r.tx_type == 0x09 and r.terminal_id == terminal.terminal_id for r in logs)
    assert send(card, "00B20BC417")[1] == 0x6A83  # record 11 of a 10-record file
    first, sw = send(card, "00B201F430")
    assert sw == 0x9000 and first == transit_record(12, 10_000 - 11)
    assert send(card, "00B20CF430")[1] == 0x9000 and send(card, "00B20DF430")[1] == 0x6A83


def test_read_record_errors(card: Card) -> None:
    send(card, select_apdu(AID_PURSE))
    Terminal(card, card.keys).purchase(1)
    assert send(card, "00B201C417")[1] == 0x9000
    assert send(card, "00B201C400")[1] == 0x9000  # Le 00: the record
    assert send(card, "00B201C410")[1] == 0x6C17
    assert send(card, "00B200C417")[1] == 0x6A83  # record 0
    assert send(card, "00B201C017")[1] == 0x6A86  # P2 mode other than "record number in P1"
    assert send(card, "00B2010417")[1] == 0x6A86  # SFI 0
    assert send(card, "00B201AC17")[1] == 0x6981  # 0x15 is transparent
    assert send(card, "00B201FC17")[1] == 0x6A82  # no SFI 0x1F


def test_get_challenge_4_and_8_bytes(card: Card) -> None:
    a, sw = send(card, "0084000004")
    assert sw == 0x9000 and len(a) == 4
    b, sw = send(card, "0084000008")
    assert sw == 0x9000 and len(b) == 8
    assert send(card, "0084000005")[1] == 0x6700
    assert send(card, "0084000000")[1] == 0x6700
    assert send(card, "0084010004")[1] == 0x6A86


def test_unknown_ins_and_wrong_cla(card: Card) -> None:
    assert send(card, "00CA000000")[1] == 0x6D00
    assert send(card, "80B095001E")[1] == 0x6E00
    assert send(card, "005C000204")[1] == 0x6E00
    assert send(card, "00")[1] == 0x6700


def test_unpowered_card_cannot_answer() -> None:
    card = Card(make_image())
    with pytest.raises(CardTorn):
        card.transmit(select_apdu(AID_PURSE))
