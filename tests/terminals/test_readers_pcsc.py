"""``PcscReader`` through real pcscd + vpcd: CardMonitor events, transmit, deadlines, removal."""

from __future__ import annotations

import queue
import time

import pytest

from cardos.os import TearPlan
from terminals.errors import CardRemoved, ReaderError
from terminals.readers import PcscReader, ReaderEvent, transceive
from terminals.session import Cmd
from tests.pcsc_support import Insert, PcscEnv, wait_card_state
from tests.terminals.test_tap_kit import make_card

pytestmark = pytest.mark.pcsc
# The session fixtures ``pcscd`` and ``vpcd_insert`` (tests/pcsc_support.py) must be registered
# once per session (tests/conftest.py): importing them here as well would give this module its
# own session instance, which waits forever for the vpcd lock the first one holds. To run this
# module alone before that: ``pytest -p tests.pcsc_support <this file>``.

SELECT = Cmd.select_purse().command


def next_event(reader: PcscReader, kind: str, timeout_s: float = 5.0) -> ReaderEvent:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            event = reader.events.get(timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            pytest.fail(f"no {kind} event from {reader.name} within {timeout_s} s")
        if event.kind == kind:
            return event


class SlowCard:
    """Answers every APDU after ``delay_s`` (a card that stalls the reader)."""

    ATR = bytes.fromhex("3B8880010000000000000000")

    def __init__(self, delay_s: float) -> None:
        self.card = make_card()
        self.delay_s = delay_s

    def power_on(self) -> bytes:
        return self.card.power_on()

    def power_off(self) -> None:
        self.card.power_off()

    def transmit(self, apdu: bytes) -> bytes:
        time.sleep(self.delay_s)
        return self.card.transmit(apdu)


def test_card_monitor_events_are_queued_and_apdus_go_through(pcscd: PcscEnv, vpcd_insert: Insert) -> None:
    reader = PcscReader(pcscd.card_reader)
    try:
        handle = vpcd_insert(make_card())
        inserted = next_event(reader, "inserted")
        assert inserted.reader == pcscd.card_reader and inserted.atr
        assert reader.connect(2000) == inserted.atr
        reply = transceive(reader, SELECT, 2000)
        assert reply.sw == 0x9000 and b"\x9f\x0c" in reply.data
        reply = transceive(reader, bytes.fromhex("00B0970000"), 2000)  # wrong Le: 6C3C, resent
        assert reply.sw == 0x9000 and len(reply.data) == 60
        reader.disconnect()
        handle.stop()
        next_event(reader, "removed")
    finally:
        reader.close()


def test_a_card_that_answers_after_the_deadline_is_a_reader_error(pcscd: PcscEnv, vpcd_insert: Insert) -> None:
    reader = PcscReader(pcscd.card_reader, monitor=False)
    try:
        vpcd_insert(SlowCard(delay_s=0.4))
        reader.connect(3000)
        started = time.monotonic()
        with pytest.raises(ReaderError, match="no answer within 100 ms"):
            reader.transmit(SELECT, 100)
        assert time.monotonic() - started < 0.35
        time.sleep(0.5)  # let the stalled exchange end; the reader starts afresh
        reader.connect(3000)
        assert reader.transmit(SELECT, 3000)[-2:] == b"\x90\x00"
    finally:
        reader.close()


def test_a_card_torn_from_the_field_is_card_removed(pcscd: PcscEnv, vpcd_insert: Insert) -> None:
    reader = PcscReader(pcscd.card_reader, monitor=False)
    try:
        card = make_card()
        vpcd_insert(card)
        reader.connect(3000)
        assert reader.transmit(SELECT, 3000)[-2:] == b"\x90\x00"
        card.tear = TearPlan(at_apdu=card.apdu_index + 1)
        with pytest.raises(CardRemoved):
            reader.transmit(SELECT, 3000)
        assert wait_card_state(pcscd.card_reader, present=False)
        with pytest.raises(CardRemoved):
            reader.connect(3000)
    finally:
        reader.close()
