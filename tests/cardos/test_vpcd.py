"""vpcd framing and connection life against an in-test fake vpcd (the real path: tests/pcsc)."""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from cardkit import make_card

from cardos.card import Card
from cardos.os import SmartCard, TearPlan
from cardos.psam import Psam, psam_image_for_terminal
from cardos.vpcd import EndReason, VpcdClient, VpcdUnavailable, answer, encode_frame, recv_frame

TERMINAL = bytes.fromhex("360486600002")


def make_psam() -> Psam:
    return Psam(psam_image_for_terminal(TERMINAL, bytes(10), {}))


class FakeVpcd:
    """The vpcd side of one slot: listens, accepts one card, exchanges frames."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.server.getsockname()[1]
        self.conn: socket.socket | None = None

    def accept(self, timeout_s: float = 5.0) -> socket.socket:
        self.server.settimeout(timeout_s)
        self.conn, _ = self.server.accept()
        self.conn.settimeout(timeout_s)
        return self.conn

    def send(self, payload: bytes) -> None:
        assert self.conn is not None
        # vpcd's own habit: the length and the payload in two writes
        self.conn.sendall(struct.pack("!H", len(payload)))
        self.conn.sendall(payload)

    def exchange(self, payload: bytes) -> bytes:
        self.send(payload)
        assert self.conn is not None
        reply = recv_frame(self.conn)
        assert reply is not None
        return reply

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.server.close()


@pytest.fixture
def vpcd() -> Iterator[FakeVpcd]:
    fake = FakeVpcd()
    yield fake
    fake.close()


def test_frame_is_two_byte_big_endian_length_then_payload() -> None:
    assert encode_frame(b"\x90\x00") == b"\x00\x02\x90\x00"
    assert encode_frame(bytes(300))[:2] == b"\x01\x2c"
    with pytest.raises(ValueError):
        encode_frame(bytes(0x10000))


def test_control_bytes_power_and_atr_and_apdus_get_one_answer() -> None:
    psam = make_psam()
    assert answer(psam, b"\x04", psam.ATR) == psam.ATR  # ATR even before power on
    assert answer(psam, b"\x01", psam.ATR) is None
    assert psam.powered
    assert answer(psam, bytes.fromhex("00B0960006"), psam.ATR) == TERMINAL + b"\x90\x00"
    assert answer(psam, b"\x02", psam.ATR) is None and psam.powered  # reset: off then on
    assert answer(psam, b"\x00", psam.ATR) is None
    assert not psam.powered


@pytest.mark.parametrize("frame", [b"", b"\x03", b"\x05", b"\x09", b"\xff", b"\x00\x00", b"\x80\x5c\x00"])
def test_a_frame_that_is_not_one_of_the_four_control_bytes_is_an_apdu(frame: bytes) -> None:
    """card-profile.md, "PC/SC": every other frame is an APDU answered by exactly one frame."""
    psam = make_psam()
    psam.power_on()
    assert answer(psam, frame, psam.ATR) == b"\x67\x00"  # shorter than a header: wrong length
    assert psam.powered  # not taken for a power control


def test_client_serves_a_session_like_vpcd_drives_it(vpcd: FakeVpcd) -> None:
    handle = VpcdClient(make_psam(), port=vpcd.port).serve_in_thread()
    conn = vpcd.accept()
    vpcd.send(b"\x01")
    assert handle.wait_powered(2)
    assert vpcd.exchange(b"\x04") == Psam.ATR
    assert vpcd.exchange(bytes.fromhex("00B0960006")) == TERMINAL + b"\x90\x00"
    assert vpcd.exchange(bytes.fromhex("00B0990001")) == b"\x6a\x82"
    handle.stop()
    assert handle.wait_ended(2) is EndReason.STOPPED
    assert conn.recv(1) == b""  # the card left the reader


def make_user_card() -> SmartCard:
    return make_card()


ODD_FRAMES = (b"\x09", b"", b"\xff", b"\x03", b"\x00\xb0", b"\x00\xb0\x96", b"\x00\xb0\x96\x00\x06\x00\x00")


@pytest.mark.parametrize(
    ("make", "atr", "good_apdu", "good_len"),
    [(make_psam, Psam.ATR, "00B0960006", 6), (make_user_card, Card.ATR, "0084000004", 4)],
    ids=["psam", "card"],
)
def test_odd_frames_each_get_one_answer_and_the_stream_stays_in_step(
    vpcd: FakeVpcd, make: Callable[[], SmartCard], atr: bytes, good_apdu: str, good_len: int
) -> None:
    """A lone unknown byte or an empty frame is a malformed APDU: 6700 comes back at once.

    Without an answer vpcd (and the pcscd transmit behind it) would wait for ever; here
    the fake vpcd's receive would time out.
    """
    handle = VpcdClient(make(), port=vpcd.port).serve_in_thread()
    vpcd.accept(timeout_s=2)
    vpcd.send(b"\x01")
    assert handle.wait_powered(2)
    for frame in ODD_FRAMES:
        assert vpcd.exchange(frame) == b"\x67\x00", frame.hex()
    # still in step and still powered: the next real APDU gets its own answer
    reply = vpcd.exchange(bytes.fromhex(good_apdu))
    assert reply[-2:] == b"\x90\x00" and len(reply) == good_len + 2
    assert vpcd.exchange(b"\x04") == atr
    handle.stop()
    assert handle.wait_ended(2) is EndReason.STOPPED


def test_an_apdu_to_an_unpowered_card_removes_it_cleanly(vpcd: FakeVpcd) -> None:
    """vpcd never powered the card up: no answer can be right, so the card leaves the reader."""
    handle = VpcdClient(make_psam(), port=vpcd.port).serve_in_thread()
    conn = vpcd.accept(timeout_s=2)
    vpcd.send(b"\x09")
    assert recv_frame(conn) is None  # closed, not left waiting
    assert handle.wait_ended(2) is EndReason.TORN


def test_a_frame_cut_short_by_vpcd_closing_ends_the_insertion(vpcd: FakeVpcd) -> None:
    handle = VpcdClient(make_psam(), port=vpcd.port, connect_attempts=1).serve_in_thread()
    conn = vpcd.accept(timeout_s=2)
    vpcd.send(b"\x01")
    assert handle.wait_powered(2)
    conn.sendall(b"\x00\x05\x00\xb0")  # announces 5 bytes, sends 2, then goes away
    conn.close()
    vpcd.server.close()  # nothing to reconnect to
    assert handle.wait_ended(3) is EndReason.VPCD_CLOSED
    assert isinstance(handle.error, VpcdUnavailable)


def test_client_sets_nodelay(vpcd: FakeVpcd) -> None:
    client = VpcdClient(make_psam(), port=vpcd.port)
    client.connect()
    assert client._sock is not None
    assert client._sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    client.stop()
    client._close()


def test_tear_removes_the_card_and_it_can_be_reinserted(vpcd: FakeVpcd) -> None:
    psam = make_psam()
    client = VpcdClient(psam, port=vpcd.port)
    handle = client.serve_in_thread()
    conn = vpcd.accept()
    vpcd.send(b"\x01")
    assert handle.wait_powered(2)
    psam.tear = TearPlan(at_apdu=1)
    vpcd.send(bytes.fromhex("00B0960006"))
    assert recv_frame(conn) is None  # no answer: the connection closed
    assert handle.wait_ended(2) is EndReason.TORN
    handle = client.serve_in_thread()  # re-insert
    vpcd.accept()
    vpcd.send(b"\x01")
    assert vpcd.exchange(bytes.fromhex("00B0960006")) == TERMINAL + b"\x90\x00"
    handle.stop()


def test_client_retries_until_vpcd_listens() -> None:
    probe = socket.create_server(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there now
    accepted: list[socket.socket] = []

    def late_vpcd() -> None:
        time.sleep(0.3)
        server = socket.create_server(("127.0.0.1", port))
        conn, _ = server.accept()
        accepted.append(conn)
        server.close()

    thread = threading.Thread(target=late_vpcd)
    thread.start()
    handle = VpcdClient(make_psam(), port=port, connect_attempts=40, retry_delay_s=0.05).serve_in_thread()
    thread.join(5)
    assert accepted
    handle.stop()
    accepted[0].close()


def test_unreachable_vpcd_is_a_clear_error_after_bounded_retries() -> None:
    probe = socket.create_server(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    client = VpcdClient(make_psam(), port=port, connect_attempts=3, retry_delay_s=0.01)
    started = time.monotonic()
    with pytest.raises(VpcdUnavailable, match="E_VPCD_UNREACHABLE"):
        client.connect()
    assert time.monotonic() - started < 2


def test_vpcd_going_away_makes_the_client_reconnect(vpcd: FakeVpcd) -> None:
    handle = VpcdClient(make_psam(), port=vpcd.port, retry_delay_s=0.02).serve_in_thread()
    first = vpcd.accept()
    first.close()  # pcscd restarted
    second = vpcd.accept()
    vpcd.send(b"\x01")
    assert vpcd.exchange(bytes.fromhex("00B0960006")) == TERMINAL + b"\x90\x00"
    handle.stop()
    assert handle.wait_ended(2) is EndReason.STOPPED
    assert second.recv(1) == b""


def test_reinsert_after_tear_reconnects_on_its_own(vpcd: FakeVpcd) -> None:
    psam = make_psam()
    handle = VpcdClient(psam, port=vpcd.port, reinsert_after_tear_s=0.05).serve_in_thread()
    first = vpcd.accept()
    vpcd.send(b"\x01")
    psam.tear = TearPlan(at_apdu=1)
    vpcd.send(bytes.fromhex("00B0960006"))
    assert recv_frame(first) is None
    vpcd.accept()  # back in the reader
    vpcd.send(b"\x01")
    assert vpcd.exchange(bytes.fromhex("00B0960006")) == TERMINAL + b"\x90\x00"
    handle.stop()
    assert handle.wait_ended(2) is EndReason.STOPPED


def test_stop_while_waiting_for_vpcd_ends_quietly() -> None:
    probe = socket.create_server(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    client = VpcdClient(make_psam(), port=port, connect_attempts=1000, retry_delay_s=0.05)
    result: list[object] = []
    thread = threading.Thread(target=lambda: result.append(client._connect()))
    thread.start()
    time.sleep(0.2)
    client.stop()
    thread.join(2)
    assert result == [False]
