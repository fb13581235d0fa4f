"""What the agent does with the card: sign a card-login challenge, run the loads waiting for it.

Card commands go through ``terminals.readers`` (a ``Reader``: pyscard's PC/SC in service, an
in-process emulated card in tests), prepared as ``Apdu`` values and run on a ``Channel``, so
the T=0 rules (``61xx``, ``6Cxx``) and the deadlines are the terminal layer's, not redone here.

**Signing** (``card-profile.md``, "Citizen authentication application"; ``portal/card_login.py``):
SELECT the auth application by AID, READ BINARY the certificate (EF SFI 0x01) in short
chunks of 256 bytes (DER says how long it is; short APDUs pass every reader and vpcd), VERIFY
the PIN, INTERNAL AUTHENTICATE over ``SHA-256(origin) || SHA-256(nonce)``; the card's DER
ECDSA signature is transcoded to raw ``r || s`` (32 + 32 bytes) for the ``web-eid:1.0`` token.

**Loading** is ``terminals.loading.load_card`` itself, unchanged: the agent is a load-capable
terminal whose host is the portal (``portal/online_load.py``), reached through the browser
(``portal.reader_agent.jobs.RelayHost``). Only the card on the reader is loaded, and only
when it is the card the portal page chose.
"""

from __future__ import annotations

import base64
import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final, Protocol

from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from cardos.profile import AID_AUTH
from clearing.contract import (
    CardLoads,
    LoadAuthorizeRequest,
    LoadAuthorizeResponse,
    LoadCompleteRequest,
    LoadCompleteResponse,
    LoadResolveRequest,
    LoadResolveResponse,
)
from portal.card_login import ALGORITHM, TOKEN_FORMAT, challenge_hash
from portal.reader_agent.errors import SW_FILE_NOT_FOUND, SW_FUNCTION_NOT_SUPPORTED, AgentError, Code, from_terminal
from terminals.errors import CardRemoved, TerminalError
from terminals.loading import LoadHost, LoadReport, load_card
from terminals.readers import SW_OK, Apdu, Channel, Reader

TIMEOUT_MS: Final = 3000  # per APDU: an ECDSA signature on a slow card takes about a second
CHUNK: Final = 256  # READ BINARY with Le 00
CERT_BYTES_MAX: Final = 4096
PIN_LEN: Final = 6
SW_OFFSET_BEYOND: Final = 0x6B00


class ReaderSource(Protocol):
    """Where the agent finds its reader: PC/SC (``PcscSource``) or one in-process reader in tests."""

    def names(self) -> list[str]:
        """The readers there are now (empty: none connected, or no PC/SC service)."""
        ...

    def open(self) -> Reader:
        """A reader to use for one operation (``AgentError(E_AGENT_NO_READER)`` when there is none)."""
        ...

    def release(self, reader: Reader) -> None: ...


@dataclass
class PcscSource:
    """PC/SC through pyscard: the named reader, or else the first reader pcscd lists."""

    reader_name: str | None = None

    def names(self) -> list[str]:
        try:
            from terminals.readers import pcsc_reader_names

            return pcsc_reader_names()
        except ImportError:  # pyscard is not installed
            return []

    def open(self) -> Reader:
        names = self.names()
        if self.reader_name is not None:
            if self.reader_name not in names:
                raise AgentError(Code.E_AGENT_NO_READER, f"(looking for {self.reader_name!r})")
            name = self.reader_name
        elif names:
            name = names[0]
        else:
            raise AgentError(Code.E_AGENT_NO_READER)
        from terminals.readers import PcscReader

        try:
            return PcscReader(name, monitor=False)
        except TerminalError as exc:
            raise AgentError(Code.E_AGENT_NO_READER, exc.message) from None

    def release(self, reader: Reader) -> None:
        reader.close()


@dataclass
class FixedSource:
    """One reader that is always there (tests: an ``InProcessReader``); ``None`` plays "unplugged"."""

    reader: Reader | None

    def names(self) -> list[str]:
        return [self.reader.name] if self.reader is not None else []

    def open(self) -> Reader:
        if self.reader is None:
            raise AgentError(Code.E_AGENT_NO_READER)
        return self.reader

    def release(self, reader: Reader) -> None:
        reader.disconnect()


class ReaderLock:
    """One card operation at a time: a second one is refused (``E_AGENT_READER_BUSY``), never queued."""

    def __init__(self, source: ReaderSource) -> None:
        self.source = source
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def session(self) -> Iterator[Channel]:
        """The card on the reader, powered, as a ``Channel``; errors become the agent's."""
        if not self._lock.acquire(blocking=False):
            raise AgentError(Code.E_AGENT_READER_BUSY)
        try:
            reader = self.source.open()
            try:
                try:
                    reader.connect(TIMEOUT_MS)
                except CardRemoved:
                    raise AgentError(Code.E_AGENT_NO_CARD) from None
                except TerminalError as exc:
                    raise from_terminal(exc) from None
                try:
                    yield Channel(reader, TIMEOUT_MS)
                except TerminalError as exc:
                    raise from_terminal(exc) from None
            finally:
                self.source.release(reader)
        finally:
            self._lock.release()


# --- card login ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WebEidToken:
    """The ``web-eid:1.0`` token the browser posts to ``POST /api/card-login``."""

    unverified_certificate: str
    signature: str
    app_version: str
    algorithm: str = ALGORITHM
    format: str = TOKEN_FORMAT

    def json(self) -> dict[str, str]:
        return {
            "unverifiedCertificate": self.unverified_certificate,
            "algorithm": self.algorithm,
            "signature": self.signature,
            "format": self.format,
            "appVersion": self.app_version,
        }


def check_pin(pin: str) -> bytes:
    """Refuse a PIN that is not 6 ASCII digits before the card sees it (a typo costs no try)."""
    if len(pin) != PIN_LEN or not all("0" <= c <= "9" for c in pin):
        raise AgentError(Code.E_AGENT_PIN_FORMAT)
    return pin.encode("ascii")


def select_auth() -> Apdu:
    return Apdu(
        bytes([0x00, 0xA4, 0x04, 0x00, len(AID_AUTH)]) + AID_AUTH + b"\x00",
        "SELECT citizen-auth",
        frozenset({SW_OK, SW_FILE_NOT_FOUND, SW_FUNCTION_NOT_SUPPORTED}),
    )


def read_certificate_chunk(offset: int) -> Apdu:
    # from the start by SFI 0x01 (it becomes the current EF), then by offset into the current EF
    sfi_read = bytes([0x00, 0xB0, 0x81, 0x00, 0x00])
    command = sfi_read if offset == 0 else bytes([0x00, 0xB0, (offset >> 8) & 0x7F, offset & 0xFF, 0x00])
    return Apdu(command, "READ BINARY certificate", frozenset({SW_OK, SW_OFFSET_BEYOND}))


def verify_pin(pin: bytes) -> Apdu:
    return Apdu(bytes([0x00, 0x20, 0x00, 0x01, len(pin)]) + pin, "VERIFY", frozenset({SW_OK}))


def internal_authenticate(challenge: bytes) -> Apdu:
    assert len(challenge) == 64
    return Apdu(bytes([0x00, 0x88, 0x00, 0x00, 0x40]) + challenge + b"\x00", "INTERNAL AUTHENTICATE")


def der_length(head: bytes) -> int | None:
    """The whole length of a DER SEQUENCE from its first bytes (None: not a DER SEQUENCE)."""
    if len(head) < 2 or head[0] != 0x30:
        return None
    first = head[1]
    if first < 0x80:
        return 2 + first
    count = first & 0x7F
    if not 1 <= count <= 2 or len(head) < 2 + count:
        return None
    return 2 + count + int.from_bytes(head[2 : 2 + count], "big")


def read_certificate(channel: Channel) -> bytes:
    """EF SFI 0x01 of the auth application, in 256-byte reads, as long as its DER says."""
    data = b""
    total: int | None = None
    while total is None or len(data) < total:
        reply = channel.run(read_certificate_chunk(len(data)))
        if reply.sw == SW_OFFSET_BEYOND or not reply.data:
            break
        data += reply.data
        if total is None:
            total = der_length(data)
            if total is None or total > CERT_BYTES_MAX:
                raise AgentError(Code.E_AGENT_NOT_AUTH_CARD, "(its certificate file does not hold a certificate)")
        if len(reply.data) < CHUNK:
            break
    if total is None or len(data) < total:
        raise AgentError(Code.E_AGENT_NOT_AUTH_CARD, "(its certificate is cut short)")
    return data[:total]


def raw_signature(der: bytes) -> bytes:
    """The card's DER ECDSA signature as JWS carries it: ``r || s``, 32 bytes each."""
    try:
        r, s = decode_dss_signature(der)
    except ValueError:
        raise AgentError(Code.E_AGENT_CARD_REFUSED, "(its signature is not DER ECDSA)") from None
    if r >= 1 << 256 or s >= 1 << 256:
        raise AgentError(Code.E_AGENT_CARD_REFUSED, "(its signature is not P-256)")
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def sign_challenge(channel: Channel, *, origin: str, nonce: str, pin: str, app_version: str) -> WebEidToken:
    """SELECT, READ BINARY, VERIFY, INTERNAL AUTHENTICATE (module docstring): the login token."""
    pin_bytes = check_pin(pin)
    selected = channel.run(select_auth())
    if selected.sw != SW_OK:
        raise AgentError(Code.E_AGENT_NOT_AUTH_CARD)
    certificate = read_certificate(channel)
    channel.run(verify_pin(pin_bytes))  # 63Cx / 6983 raise CardRefused("VERIFY"): from_terminal words them
    signature = channel.run(internal_authenticate(challenge_hash(origin, nonce))).data
    return WebEidToken(
        base64.b64encode(certificate).decode("ascii"),
        base64.b64encode(raw_signature(signature)).decode("ascii"),
        app_version,
    )


# --- online load ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ExpectedCard:
    issuer_id: str
    card_asn: str


class ExpectingHost:
    """A ``LoadHost`` that first checks the card ``load_card`` read is the one the page chose."""

    def __init__(self, host: LoadHost, expected: ExpectedCard | None) -> None:
        self.host = host
        self.expected = expected

    def pending(self, issuer_id: str, card_asn: str) -> CardLoads:
        if self.expected is not None and (issuer_id, card_asn) != (self.expected.issuer_id, self.expected.card_asn):
            raise AgentError(Code.E_AGENT_WRONG_CARD)
        return self.host.pending(issuer_id, card_asn)

    def authorize(self, load_id: str, req: LoadAuthorizeRequest) -> LoadAuthorizeResponse:
        return self.host.authorize(load_id, req)

    def complete(self, load_id: str, req: LoadCompleteRequest) -> LoadCompleteResponse:
        return self.host.complete(load_id, req)

    def resolve(self, load_id: str, req: LoadResolveRequest) -> LoadResolveResponse:
        return self.host.resolve(load_id, req)


def run_loads(channel: Channel, host: LoadHost, terminal_id: str, expected: ExpectedCard | None) -> LoadReport:
    """``terminals.loading.load_card`` on the powered card (the channel's reader is already connected)."""
    reader = _Connected(channel.reader)
    return load_card(reader, ExpectingHost(host, expected), terminal_id, timeout_ms=channel.timeout_ms)


class _Connected:
    """The session's reader with ``connect`` a no-op: ``load_card`` connects, the lock already did."""

    def __init__(self, reader: Reader) -> None:
        self._reader = reader
        self.name = reader.name
        self.events = reader.events

    def connect(self, timeout_ms: int) -> bytes:
        return b""

    def transmit(self, apdu: bytes, timeout_ms: int) -> bytes:
        return self._reader.transmit(apdu, timeout_ms)

    def disconnect(self) -> None:
        self._reader.disconnect()

    def close(self) -> None:
        self._reader.close()


__all__ = [
    "ExpectedCard",
    "ExpectingHost",
    "FixedSource",
    "PcscSource",
    "ReaderLock",
    "ReaderSource",
    "WebEidToken",
    "check_pin",
    "der_length",
    "raw_signature",
    "read_certificate",
    "run_loads",
    "sign_challenge",
]
