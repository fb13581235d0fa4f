"""The reader layer: T=0 status words in one place, deadlines, typed errors, events."""

from __future__ import annotations

import time

import pytest

from cardos.os import CardTorn
from terminals.errors import CardRefused, CardRemoved, ReaderError
from terminals.readers import Apdu, Channel, InProcessReader, transceive, with_le


class T0Card:
    """A card that answers like a T=0 card: 61xx for long answers, 6Cxx for a wrong Le."""

    def __init__(self, payload: bytes = bytes(range(40)), chunk: int = 16, delay_s: float = 0.0) -> None:
        self.payload = payload
        self.chunk = chunk
        self.delay_s = delay_s
        self.sent: list[bytes] = []
        self._left = b""
        self.torn = False

    def power_on(self) -> bytes:
        return b"\x3b\x00"

    def power_off(self) -> None:
        pass

    def transmit(self, apdu: bytes) -> bytes:
        self.sent.append(apdu)
        time.sleep(self.delay_s)
        if self.torn:
            raise CardTorn("gone")
        if apdu[:2] == b"\x00\xc0":
            n = min(apdu[4], self.chunk)  # a card may give less than asked and say 61xx again
            part, self._left = self._left[:n], self._left[n:]
            return part + (bytes([0x61, min(len(self._left), 255)]) if self._left else b"\x90\x00")
        if apdu[:2] == b"\x00\xb0":  # READ BINARY: exact Le or 6Cxx
            if apdu[4] != 12:
                return b"\x6c\x0c"
            return bytes(12) + b"\x90\x00"
        if apdu[:2] == b"\x80\xca":  # a long answer through GET RESPONSE
            first, self._left = self.payload[: self.chunk], self.payload[self.chunk :]
            return first + bytes([0x61, min(len(self._left), 255)])
        return b"\x6d\x00"


def test_61xx_is_followed_with_get_response_until_9000() -> None:
    card = T0Card()
    reader = InProcessReader("r", card)
    reader.connect(100)
    reply = transceive(reader, bytes.fromhex("80CA000000"), 100)
    assert reply.data == card.payload and reply.sw == 0x9000
    assert card.sent[1:] == [bytes.fromhex("00C0000018"), bytes.fromhex("00C0000008")]


def test_6cxx_resends_the_same_command_with_the_right_le() -> None:
    card = T0Card()
    reader = InProcessReader("r", card)
    reader.connect(100)
    reply = transceive(reader, bytes.fromhex("00B0950000"), 100)
    assert reply.sw == 0x9000 and reply.data == bytes(12)
    assert card.sent == [bytes.fromhex("00B0950000"), bytes.fromhex("00B095000C")]


def test_with_le_replaces_or_adds_le_for_every_case() -> None:
    assert with_le(bytes.fromhex("00B0950000"), 0x1E) == bytes.fromhex("00B095001E")
    assert with_le(bytes.fromhex("80DC00F0020102"), 0x05) == bytes.fromhex("80DC00F002010205")
    assert with_le(bytes.fromhex("805A000902000508"), 0x08) == bytes.fromhex("805A000902000508")


def test_unexpected_status_word_is_card_refused_with_what() -> None:
    reader = InProcessReader("r", T0Card())
    reader.connect(100)
    with pytest.raises(CardRefused) as caught:
        Channel(reader, 100).run(Apdu(bytes.fromhex("80AA000000"), "SOMETHING"))
    assert caught.value.sw == 0x6D00 and caught.value.what == "SOMETHING"
    assert caught.value.code == "E_CARD_REFUSED" and "SOMETHING answered 6D00" in str(caught.value)


def test_an_answer_later_than_the_deadline_is_a_reader_error() -> None:
    reader = InProcessReader("r", T0Card(delay_s=0.03))
    reader.connect(100)
    with pytest.raises(ReaderError):
        reader.transmit(bytes.fromhex("80CA000000"), 10)


def test_a_torn_card_is_card_removed_and_must_be_presented_again() -> None:
    card = T0Card()
    reader = InProcessReader("r", card)
    reader.connect(100)
    card.torn = True
    with pytest.raises(CardRemoved):
        reader.transmit(bytes.fromhex("80CA000000"), 100)
    card.torn = False
    with pytest.raises(CardRemoved):  # powered down until the next presentation
        reader.transmit(bytes.fromhex("80CA000000"), 100)
    reader.connect(100)
    assert reader.transmit(bytes.fromhex("00B095000C"), 100)[-2:] == b"\x90\x00"


def test_no_card_in_the_field_is_card_removed() -> None:
    reader = InProcessReader("r")
    with pytest.raises(CardRemoved):
        reader.connect(100)


def test_insert_and_remove_are_queued_as_events() -> None:
    reader = InProcessReader("r")
    reader.insert(T0Card())
    reader.remove()
    reader.remove()  # nothing to remove: no event
    kinds = [reader.events.get_nowait().kind for _ in range(2)]
    assert kinds == ["inserted", "removed"] and reader.events.empty()
