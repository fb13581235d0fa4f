"""Bridge an emulated card to pcscd through the vpcd virtual reader driver.

The vpcd protocol (``card-profile.md``, "PC/SC"; vsmartcard's ``vicc``): the card side is
a TCP client of vpcd. Every message is a frame of a 2-byte big-endian length and a
payload. A 1-byte payload 00, 01, 02 or 04 is a control message: 00 power off, 01 power
on, 02 reset, 04 get ATR (answered with the ATR). Every other payload, whatever its length
(0 bytes, another single byte), is a command APDU answered by exactly one frame: vpcd
waits for that answer, so a frame we dropped would hang pcscd. Being connected means
being in the reader; closing the socket removes the card.

Latency (``card-profile.md``): vpcd writes the length and the payload in two ``send``
calls, so it waits for our ACK of the first part; with delayed ACK that costs ~44 ms per
transmit. We set ``TCP_NODELAY`` and, after every receive, ``TCP_QUICKACK`` (Linux resets
it on its own), which brings a transmit through pcscd to ~0.1 ms. We answer with one
``sendall`` so our side never splits a frame.

A ``CardTorn`` from ``transmit`` (tear injection, or a PSAM whose image write failed) is a
card that lost power in the field: we close the connection, which removes the card. It
can be re-inserted by connecting again (``serve_in_thread`` once more, or
``reinsert_after_tear_s``).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
import threading
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final

from cardos.os import CardOS, CardTorn, SmartCard

log = logging.getLogger(__name__)

DEFAULT_HOST: Final = "127.0.0.1"
PORT_CARD: Final = 35963  # "Virtual PCD 00 00"
PORT_PSAM: Final = 35964  # "Virtual PCD 00 01"

CTRL_OFF: Final = 0x00
CTRL_ON: Final = 0x01
CTRL_RESET: Final = 0x02
CTRL_ATR: Final = 0x04
CONTROL_BYTES: Final = frozenset({CTRL_OFF, CTRL_ON, CTRL_RESET, CTRL_ATR})

FRAME_LEN_MAX: Final = 0xFFFF
CONNECT_ATTEMPTS: Final = 50
CONNECT_RETRY_DELAY_S: Final = 0.1
CONNECT_TIMEOUT_S: Final = 2.0

_QUICKACK: Final[int | None] = getattr(socket, "TCP_QUICKACK", None)


class VpcdUnavailable(ConnectionError):
    """vpcd did not accept a connection within the bounded retries."""


class EndReason(StrEnum):
    """Why one insertion (one TCP connection) ended."""

    STOPPED = "stopped"  # we were asked to stop: card removed on purpose
    VPCD_CLOSED = "vpcd_closed"  # pcscd/vpcd went away or closed the connection
    TORN = "torn"  # the card lost power (CardTorn): removed


def encode_frame(payload: bytes) -> bytes:
    """One vpcd frame: 2-byte big-endian length, then the payload."""
    if len(payload) > FRAME_LEN_MAX:
        raise ValueError(f"frame payload of {len(payload)} bytes exceeds {FRAME_LEN_MAX}")
    return struct.pack("!H", len(payload)) + payload


def _quickack(sock: socket.socket) -> None:
    if _QUICKACK is not None:
        sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)


def _recv_exact(sock: socket.socket, n: int, quickack: bool) -> bytes | None:
    """Read exactly ``n`` bytes; ``None`` when the peer closed the connection."""
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if quickack:
            _quickack(sock)
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def recv_frame(sock: socket.socket, *, quickack: bool = True) -> bytes | None:
    """Read one frame's payload; ``None`` on a clean close by the peer."""
    head = _recv_exact(sock, 2, quickack)
    if head is None:
        return None
    (size,) = struct.unpack("!H", head)
    if size == 0:
        return b""
    return _recv_exact(sock, size, quickack)


def is_control(payload: bytes) -> bool:
    """True for the four 1-byte control frames; anything else is an APDU."""
    return len(payload) == 1 and payload[0] in CONTROL_BYTES


def answer(card: SmartCard, payload: bytes, atr: bytes) -> bytes | None:
    """What the card sends back for one vpcd frame (``None``: nothing is sent).

    Only the four control frames go unanswered (except get ATR). Every other frame goes
    to ``card.transmit``, malformed ones included: an empty frame or an unknown single
    byte is an APDU shorter than its header, which the card's own dispatcher refuses with
    ``6700`` like any other bad APDU. vpcd waits for exactly one answer per APDU, so
    ignoring such a frame would leave pcscd waiting for ever.

    Pure protocol logic, kept apart from the socket so that it can be tested alone.
    ``CardTorn`` propagates to the caller (also for an APDU to an unpowered card: the
    reader and the card disagree about power, and removing the card resolves that).
    """
    if not is_control(payload):
        return card.transmit(payload)
    ctrl = payload[0]
    if ctrl == CTRL_ATR:
        return atr
    if ctrl == CTRL_OFF:
        card.power_off()
    elif ctrl == CTRL_ON:
        card.power_on()
    else:  # CTRL_RESET
        card.power_off()
        card.power_on()
    return None


@dataclass(slots=True)
class VpcdHandle:
    """A card served in a background thread; ``stop()`` removes it from the reader."""

    client: VpcdClient
    thread: threading.Thread
    powered: threading.Event = field(default_factory=threading.Event)
    ended: threading.Event = field(default_factory=threading.Event)
    reason: EndReason | None = None
    error: BaseException | None = None

    def stop(self, timeout_s: float = 5.0) -> None:
        self.client.stop()
        self.thread.join(timeout_s)

    def wait_powered(self, timeout_s: float = 5.0) -> bool:
        """True once pcscd powered the card up (it has seen the insertion)."""
        return self.powered.wait(timeout_s)

    def wait_ended(self, timeout_s: float = 5.0) -> EndReason | None:
        self.ended.wait(timeout_s)
        return self.reason


class VpcdClient:
    """Connect one card (anything with the ``SmartCard`` protocol) to one vpcd slot."""

    def __init__(
        self,
        card: SmartCard,
        host: str = DEFAULT_HOST,
        port: int = PORT_CARD,
        *,
        atr: bytes | None = None,
        connect_attempts: int = CONNECT_ATTEMPTS,
        retry_delay_s: float = CONNECT_RETRY_DELAY_S,
        reinsert_after_tear_s: float | None = None,
        quickack: bool = True,
    ) -> None:
        """``quickack=False`` exists only to measure the baseline of ``benchmarks.pcsc``."""
        if connect_attempts < 1:
            raise ValueError("connect_attempts must be at least 1")
        self.card = card
        self.host = host
        self.port = port
        self.atr = atr if atr is not None else (card.ATR if isinstance(card, CardOS) else CardOS.ATR)
        self.connect_attempts = connect_attempts
        self.retry_delay_s = retry_delay_s
        self.reinsert_after_tear_s = reinsert_after_tear_s
        self.quickack = quickack
        self._sock: socket.socket | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._on_power: threading.Event | None = None

    def __repr__(self) -> str:
        return f"VpcdClient({self.host}:{self.port}, connected={self._sock is not None})"

    # --- connection -------------------------------------------------------------------------
    def connect(self) -> None:
        """Insert the card: connect to vpcd, retrying a bounded number of times."""
        self._stopping.clear()
        if not self._connect():
            raise VpcdUnavailable(f"E_VPCD_STOPPED: stopped while connecting to {self.host}:{self.port}")

    def _connect(self) -> bool:
        """Connect with bounded retries; False if stopped meanwhile, ``VpcdUnavailable`` if never."""
        last: OSError | None = None
        for attempt in range(self.connect_attempts):
            if self._stopping.is_set():
                break
            try:
                sock = socket.create_connection((self.host, self.port), timeout=CONNECT_TIMEOUT_S)
            except OSError as exc:
                last = exc
                if attempt + 1 < self.connect_attempts:
                    self._stopping.wait(self.retry_delay_s)
                continue
            sock.settimeout(None)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.quickack:
                _quickack(sock)
            with self._lock:
                self._sock = sock
            if self._stopping.is_set():  # stop() raced with the connect: leave at once
                self.stop()
            return True
        if self._stopping.is_set():
            return False
        detail = f"{last.strerror or last}" if last is not None else "no attempt"
        raise VpcdUnavailable(
            f"E_VPCD_UNREACHABLE: vpcd not listening at {self.host}:{self.port} after "
            f"{self.connect_attempts} attempts ({detail}); is pcscd running with the vpcd driver?"
        )

    def stop(self) -> None:
        """Remove the card: shut the socket down, which also wakes a blocked receive."""
        self._stopping.set()
        with self._lock:
            sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):  # already closed by the peer
                sock.shutdown(socket.SHUT_RDWR)

    def _close(self) -> None:
        with self._lock:
            sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    # --- serving ------------------------------------------------------------------------------
    def serve_connection(self) -> EndReason:
        """Answer frames on the current connection until it ends; the card is then removed."""
        sock = self._sock
        if sock is None:
            raise RuntimeError("serve_connection() before connect()")
        try:
            while True:
                try:
                    payload = recv_frame(sock, quickack=self.quickack)
                except OSError:
                    payload = None
                if payload is None:
                    return EndReason.STOPPED if self._stopping.is_set() else EndReason.VPCD_CLOSED
                try:
                    reply = answer(self.card, payload, self.atr)
                except CardTorn as exc:
                    log.info("vpcd %s:%d: card torn (%s); removing it", self.host, self.port, exc)
                    return EndReason.TORN
                if payload in (bytes([CTRL_ON]), bytes([CTRL_RESET])) and self._on_power is not None:
                    self._on_power.set()
                if reply is not None:
                    try:
                        sock.sendall(encode_frame(reply))
                    except OSError:
                        return EndReason.STOPPED if self._stopping.is_set() else EndReason.VPCD_CLOSED
        finally:
            self._close()
            # Out of the reader is out of the field: whatever was volatile is gone.
            self.card.power_off()

    def serve_forever(self) -> EndReason:
        """Serve until stopped; reconnect (bounded) when vpcd goes away.

        After a tear the card stays out of the reader unless ``reinsert_after_tear_s`` is
        set. Returns the reason the last insertion ended; raises ``VpcdUnavailable`` when
        vpcd cannot be reached within the retries.
        """
        if self._sock is None:
            self.connect()
        while True:
            reason = self.serve_connection()
            if reason is EndReason.STOPPED or self._stopping.is_set():
                return EndReason.STOPPED
            if reason is EndReason.TORN:
                if self.reinsert_after_tear_s is None:
                    return reason
                if self._stopping.wait(self.reinsert_after_tear_s):
                    return EndReason.STOPPED
            if not self._connect():
                return EndReason.STOPPED

    def serve_in_thread(self, name: str | None = None) -> VpcdHandle:
        """Insert the card now (raising ``VpcdUnavailable`` here) and serve it in a daemon thread."""
        self.connect()
        handle = VpcdHandle(client=self, thread=threading.Thread())
        self._on_power = handle.powered

        def run() -> None:
            try:
                handle.reason = self.serve_forever()
            except BaseException as exc:  # noqa: BLE001 - handed to the owner through the handle
                handle.error = exc
                handle.reason = EndReason.VPCD_CLOSED
            finally:
                handle.ended.set()

        handle.thread = threading.Thread(target=run, name=name or f"vpcd-{self.port}", daemon=True)
        handle.thread.start()
        return handle
