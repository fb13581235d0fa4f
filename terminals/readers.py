"""Readers as plugins (STYLE.md, the Keyple row): a small ``Reader`` protocol, two implementations.

* ``PcscReader``: a PC/SC reader through pyscard. Card insertion and removal come from
  pyscard's ``CardMonitor``; its observer only puts a ``ReaderEvent`` on a ``queue.Queue``
  (STYLE.md: "a reader callback only enqueues") and the terminal reads the queue at its own
  pace. Every PC/SC call for one reader runs on that reader's own I/O thread, so a transmit
  can be given a deadline: the caller waits ``timeout_ms`` for the answer and otherwise gets
  ``ReaderError``, abandons the stuck thread and starts a fresh one with a fresh context.
* ``InProcessReader``: wraps a cardos ``SmartCard`` (an emulated card or PSAM) in this
  process; ``insert``/``remove`` put it into or take it out of the field. ``CardTorn`` from
  the card becomes ``CardRemoved``, as a real reader would report a card that vanished.

On top of a reader, ``transceive`` is the one place that deals with T=0 status words:
``61xx`` (fetch the rest with GET RESPONSE) and ``6Cxx`` (resend with Le = xx)
(``epurse-public-sources.md`` sections 2 and 7). ``Channel`` runs a prepared ``Apdu`` and
turns an unexpected status word into ``CardRefused(sw, what)``.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any, Final, Literal, Protocol, TypeVar

from cardos.apdu import parse_command
from cardos.os import CardTorn, SmartCard
from cardos.sw import StatusError
from terminals.errors import CardRefused, CardRemoved, ReaderError

T = TypeVar("T")

SW_OK: Final = 0x9000
GET_RESPONSE_CHAIN_MAX: Final = 32  # 32 x 256 bytes is more than any purse answer
TIMEOUT_MS_DEFAULT: Final = 500


@dataclass(frozen=True, slots=True)
class ReaderEvent:
    """A card entered (``inserted``) or left (``removed``) a reader's field."""

    kind: Literal["inserted", "removed"]
    reader: str
    atr: bytes = b""
    at_monotonic: float = field(default_factory=time.monotonic)


class Reader(Protocol):
    """What a terminal needs of a reader. Implementations never decide anything about cards."""

    name: str
    events: queue.Queue[ReaderEvent]

    def connect(self, timeout_ms: int) -> bytes:
        """Power the card in the field and return its ATR; ``CardRemoved`` when there is none."""
        ...

    def transmit(self, apdu: bytes, timeout_ms: int) -> bytes:
        """Send one command APDU; return response data || SW1 SW2 within ``timeout_ms``."""
        ...

    def disconnect(self) -> None:
        """Power the card down (the next ``connect`` starts it afresh, like a new presentation)."""
        ...

    def close(self) -> None:
        """Release the reader (observers, threads, contexts)."""
        ...


# --- prepared commands and the one T=0 exchange ---------------------------------------


@dataclass(frozen=True, slots=True)
class Apdu:
    """A command prepared without I/O: bytes, a name for errors, and the status words it may return.

    A status word outside ``accept`` raises ``CardRefused`` in ``Channel.run``; one inside is
    handed back to the session to decide (``6A83`` from GET TRANSACTION PROVE, ``9401`` from
    INITIALIZE, ...).
    """

    command: bytes
    what: str
    accept: frozenset[int] = frozenset({SW_OK})


@dataclass(frozen=True, slots=True)
class Reply:
    data: bytes
    sw: int

    @property
    def ok(self) -> bool:
        return self.sw == SW_OK


def split_response(raw: bytes) -> tuple[bytes, int]:
    if len(raw) < 2:
        raise ReaderError(f"response of {len(raw)} bytes has no status word")
    return raw[:-2], (raw[-2] << 8) | raw[-1]


def with_le(command: bytes, le: int) -> bytes:
    """The same command with Le replaced (6Cxx handling); Le 0 means 256."""
    try:
        cmd = parse_command(command)
    except StatusError as exc:
        raise ReaderError(f"cannot resend malformed command {command.hex()}: {exc}") from None
    head = bytes([cmd.cla, cmd.ins, cmd.p1, cmd.p2])
    lc = bytes([len(cmd.data)]) + cmd.data if cmd.data else b""
    return head + lc + bytes([le & 0xFF])


def _remaining_ms(deadline: float) -> int:
    left = int((deadline - time.monotonic()) * 1000)
    if left <= 0:
        raise ReaderError("deadline passed before the command could be sent")
    return left


def transceive(reader: Reader, command: bytes, timeout_ms: int) -> Reply:
    """Exchange one command, following ``6Cxx`` once and ``61xx`` chains; one deadline for all of it."""
    deadline = time.monotonic() + timeout_ms / 1000
    data, sw = split_response(reader.transmit(command, timeout_ms))
    if sw & 0xFF00 == 0x6C00:
        data, sw = split_response(reader.transmit(with_le(command, sw & 0xFF), _remaining_ms(deadline)))
    chunks = [data]
    rounds = 0
    while sw & 0xFF00 == 0x6100:
        rounds += 1
        if rounds > GET_RESPONSE_CHAIN_MAX:
            raise ReaderError(f"more than {GET_RESPONSE_CHAIN_MAX} GET RESPONSE rounds")
        get_response = bytes([0x00, 0xC0, 0x00, 0x00, sw & 0xFF])
        more, sw = split_response(reader.transmit(get_response, _remaining_ms(deadline)))
        chunks.append(more)
    return Reply(b"".join(chunks), sw)


class Channel:
    """A reader plus the per-command deadline: the one place a session's APDUs meet I/O."""

    def __init__(self, reader: Reader, timeout_ms: int = TIMEOUT_MS_DEFAULT) -> None:
        if timeout_ms <= 0:
            raise ValueError("timeout_ms must be positive")
        self.reader = reader
        self.timeout_ms = timeout_ms
        self.exchanges = 0

    def run(self, apdu: Apdu) -> Reply:
        self.exchanges += 1
        reply = transceive(self.reader, apdu.command, self.timeout_ms)
        if reply.sw not in apdu.accept:
            raise CardRefused(reply.sw, apdu.what)
        return reply


# --- in-process reader ------------------------------------------------------------------


class InProcessReader:
    """A reader whose card is a cardos object in this process (tests, benchmarks, a local PSAM).

    The deadline is checked after the call returns, because an in-process card cannot be
    interrupted: an answer later than ``timeout_ms`` is discarded and reported as
    ``ReaderError``, exactly as the PC/SC reader reports a missed deadline.
    """

    def __init__(self, name: str = "in-process", card: SmartCard | None = None) -> None:
        self.name = name
        self.events: queue.Queue[ReaderEvent] = queue.Queue()
        self._card: SmartCard | None = None
        self._powered = False
        self._lock = threading.Lock()
        if card is not None:
            self.insert(card)

    @property
    def card(self) -> SmartCard | None:
        return self._card

    def insert(self, card: SmartCard) -> None:
        """Put a card in the field (a new presentation) and report it as an event."""
        with self._lock:
            if self._card is not None and self._powered:
                self._card.power_off()
            self._card = card
            self._powered = False
        self.events.put(ReaderEvent("inserted", self.name))

    def remove(self) -> None:
        with self._lock:
            card, self._card = self._card, None
            if card is not None and self._powered:
                card.power_off()
            self._powered = False
        if card is not None:
            self.events.put(ReaderEvent("removed", self.name))

    def connect(self, timeout_ms: int) -> bytes:
        with self._lock:
            if self._card is None:
                raise CardRemoved(f"no card in {self.name}")
            self._powered = True
            return self._card.power_on()

    def transmit(self, apdu: bytes, timeout_ms: int) -> bytes:
        with self._lock:
            card = self._card
            if card is None or not self._powered:
                raise CardRemoved(f"no powered card in {self.name}")
            started = time.monotonic()
            try:
                raw = card.transmit(apdu)
            except CardTorn as exc:
                self._powered = False
                raise CardRemoved(f"card left {self.name}: {exc}") from None
        if (time.monotonic() - started) * 1000 > timeout_ms:
            raise ReaderError(f"{self.name}: answer later than {timeout_ms} ms, discarded")
        return raw

    def disconnect(self) -> None:
        with self._lock:
            if self._card is not None and self._powered:
                self._card.power_off()
            self._powered = False

    def close(self) -> None:
        self.disconnect()


# --- PC/SC reader (pyscard) -------------------------------------------------------------


class _IoThread:
    """One daemon thread that runs every PC/SC call of one reader, so calls can have deadlines."""

    def __init__(self, name: str) -> None:
        self._jobs: queue.Queue[tuple[Callable[[], Any], Future[Any]] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name=f"pcsc-io-{name}", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            fn, fut = job
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn())
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting caller
                fut.set_exception(exc)

    def call(self, fn: Callable[[], T], timeout_ms: int) -> T:
        fut: Future[T] = Future()
        self._jobs.put((fn, fut))
        try:
            return fut.result(timeout=timeout_ms / 1000)
        except FutureTimeout:
            fut.cancel()
            raise ReaderError(f"no answer within {timeout_ms} ms") from None

    def stop(self) -> None:
        self._jobs.put(None)


def pcsc_reader_names() -> list[str]:
    """The PC/SC readers pcscd knows now (empty when pcscd is not running)."""
    from smartcard import scard

    hresult, context = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
    if hresult != scard.SCARD_S_SUCCESS:
        return []
    try:
        hresult, names = scard.SCardListReaders(context, [])
        return list(names) if hresult == scard.SCARD_S_SUCCESS else []
    finally:
        scard.SCardReleaseContext(context)


class PcscReader:
    """A PC/SC reader through pyscard's ``scard`` layer, with deadlines and typed errors.

    ``monitor=True`` registers a ``CardMonitor`` observer whose ``update`` only enqueues
    events for this reader; a PSAM reader does not need one.
    """

    def __init__(self, name: str, *, monitor: bool = True, unpower_on_disconnect: bool = True) -> None:
        from smartcard import scard

        self._scard = scard
        self.name = name
        self.events: queue.Queue[ReaderEvent] = queue.Queue()
        self._unpower = unpower_on_disconnect
        self._io = _IoThread(name)
        self._context = self._io.call(self._establish, 5000)
        self._card: Any = None
        self._protocol: int = 0
        self._gone = False  # the card left mid-exchange: do not send it power commands
        self._observer: Any = None
        if monitor:
            self._observer = _make_observer(name, self.events)
            from smartcard.CardMonitoring import CardMonitor

            CardMonitor().addObserver(self._observer)

    # The following run on the I/O thread only.
    def _establish(self) -> Any:
        hresult, context = self._scard.SCardEstablishContext(self._scard.SCARD_SCOPE_USER)
        if hresult != self._scard.SCARD_S_SUCCESS:
            raise ReaderError(f"PC/SC not available: {self._message(hresult)}")
        return context

    def _message(self, hresult: int) -> str:
        return f"{self._scard.SCardGetErrorMessage(hresult)} ({hresult & 0xFFFFFFFF:#010x})"

    def _fail(self, hresult: int, doing: str) -> Exception:
        s = self._scard
        gone = {
            s.SCARD_W_REMOVED_CARD,
            s.SCARD_E_NO_SMARTCARD,
            s.SCARD_W_RESET_CARD,
            s.SCARD_W_UNPOWERED_CARD,
            s.SCARD_W_UNRESPONSIVE_CARD,
            s.SCARD_E_NOT_TRANSACTED,
            s.SCARD_E_INVALID_HANDLE,
        }
        if hresult in gone:
            return CardRemoved(f"{self.name}: {doing}: {self._message(hresult)}")
        return ReaderError(f"{self.name}: {doing}: {self._message(hresult)}")

    def _do_connect(self) -> bytes:
        s = self._scard
        self._do_disconnect()
        hresult, card, protocol = s.SCardConnect(
            self._context, self.name, s.SCARD_SHARE_SHARED, s.SCARD_PROTOCOL_T0 | s.SCARD_PROTOCOL_T1
        )
        if hresult != s.SCARD_S_SUCCESS:
            raise self._fail(hresult, "connect")
        self._card, self._protocol, self._gone = card, protocol, False
        hresult, _reader, _state, _proto, atr = s.SCardStatus(card)
        if hresult != s.SCARD_S_SUCCESS:
            raise self._fail(hresult, "status")
        return bytes(atr)

    def _do_transmit(self, apdu: bytes) -> bytes:
        s = self._scard
        if self._card is None:
            raise CardRemoved(f"{self.name}: not connected")
        hresult, response = s.SCardTransmit(self._card, self._protocol, list(apdu))
        if hresult != s.SCARD_S_SUCCESS:
            error = self._fail(hresult, "transmit")
            self._gone = isinstance(error, CardRemoved)
            raise error
        if len(response) < 2:  # vpcd answers nothing when the card's connection dropped mid-APDU
            self._gone = True
            raise CardRemoved(f"{self.name}: the card gave no status word (left the field)")
        return bytes(response)

    def _do_disconnect(self) -> None:
        s = self._scard
        if self._card is None:
            return
        card, self._card = self._card, None
        # Unpowering a card that has just vanished wedges the vpcd slot (seen with pcsc-lite
        # and ifd-vpcd): leave it alone then.
        unpower = self._unpower and not self._gone
        s.SCardDisconnect(card, s.SCARD_UNPOWER_CARD if unpower else s.SCARD_LEAVE_CARD)

    # Public API: each call waits for the I/O thread with a deadline.
    def connect(self, timeout_ms: int) -> bytes:
        return self._call(self._do_connect, timeout_ms)

    def transmit(self, apdu: bytes, timeout_ms: int) -> bytes:
        return self._call(lambda: self._do_transmit(apdu), timeout_ms)

    def disconnect(self) -> None:
        with contextlib.suppress(ReaderError):  # the card is being abandoned anyway
            self._call(self._do_disconnect, TIMEOUT_MS_DEFAULT)

    def _call(self, fn: Callable[[], T], timeout_ms: int) -> T:
        try:
            return self._io.call(fn, timeout_ms)
        except ReaderError:
            self._restart_io()
            raise

    def _restart_io(self) -> None:
        """A call missed its deadline: abandon the stuck thread and its context, start afresh."""
        self._io.stop()
        self._card = None
        self._io = _IoThread(self.name)
        self._context = self._io.call(self._establish, 5000)

    def close(self) -> None:
        if self._observer is not None:
            from smartcard.CardMonitoring import CardMonitor

            CardMonitor().deleteObserver(self._observer)
            self._observer = None
        self.disconnect()
        context = self._context

        def release() -> None:
            self._scard.SCardReleaseContext(context)

        with contextlib.suppress(ReaderError):
            self._io.call(release, TIMEOUT_MS_DEFAULT)
        self._io.stop()


def _make_observer(reader_name: str, events: queue.Queue[ReaderEvent]) -> Any:
    """A ``CardObserver`` that only enqueues events of one reader (no card I/O in the callback)."""
    from smartcard.CardMonitoring import CardObserver

    class _Enqueue(CardObserver):  # type: ignore[misc]
        def update(self, observable: object, handlers: tuple[list[Any], list[Any]]) -> None:
            added, removed = handlers
            for card in removed:
                if card.reader == reader_name:
                    events.put(ReaderEvent("removed", reader_name, bytes(card.atr)))
            for card in added:
                if card.reader == reader_name:
                    events.put(ReaderEvent("inserted", reader_name, bytes(card.atr)))

    return _Enqueue()
