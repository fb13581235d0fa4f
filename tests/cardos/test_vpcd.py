"""vpcd framing and connection life against an in-test fake vpcd (the real path: tests/pcsc)."""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator

import pytest

from cardos.os import TearPlan
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
    assert answer(psam, b"\x09", psam.ATR) is None  # unknown control: ignored


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
