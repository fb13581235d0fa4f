"""The purse relay: card commands of a purchase the *portal* runs, transmitted from a whitelist.

For a utility bill paid from the purse (``docs/utility-bills.md``) the portal is the terminal:
it runs the tap session and its PSAM server-side and sends the card's commands, one by one,
through the reader page to this agent. The agent holds the reader for the relay
(``POST /apdu`` → a relay id, ``POST /apdu/<id>/transmit {"apdu"}`` → ``{"data", "sw"}``,
``DELETE /apdu/<id>``) and transmits **only** what a purse purchase needs
(``purse_command``): SELECT of the purse AID, READ BINARY of the purse files 0x15/0x17, READ
RECORD of the purchase log 0x18 and the transit records 0x1E, GET BALANCE, INITIALIZE FOR
(CAPP) PURCHASE, UPDATE CAPP DATA CACHE, DEBIT FOR (CAPP) PURCHASE and GET TRANSACTION PROVE.
Anything else (a load's INITIALIZE/CREDIT FOR LOAD, VERIFY, INTERNAL AUTHENTICATE, APPLICATION
BLOCK, a write, another AID) is ``403 E_AGENT_APDU_REFUSED`` before the card sees it: a page
that is not the portal's cannot reach the agent (its origin check), and the portal's own page,
if subverted, still cannot unblock, load, sign or rewrite the card through it.

A relay lives at most ``RELAY_IDLE_S`` between commands and ``ttl_s`` in all (the registry's);
while open it holds the reader (a second operation is ``E_AGENT_READER_BUSY``).
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field
from typing import Final

from cardos.profile import AID_PURSE, SFI_LOG, SFI_MANAGEMENT, SFI_PUBLIC, SFI_TRANSIT
from portal.reader_agent.errors import AgentError, Code, from_terminal
from portal.reader_agent.jobs import Request
from terminals.errors import TerminalError
from terminals.readers import Channel, Reply, transceive

RELAY_IDLE_S: Final = 30.0
APDU_BYTES_MAX: Final = 261
_READ_BINARY_P1: Final = frozenset({0x80 | SFI_PUBLIC, 0x80 | SFI_MANAGEMENT})
_READ_RECORD_P2: Final = frozenset({(SFI_LOG << 3) | 4, (SFI_TRANSIT << 3) | 4})
_PURCHASE_TYPES: Final = frozenset({0x06, 0x09})


def _case2(apdu: bytes) -> bool:
    return len(apdu) == 5


def _case3or4(apdu: bytes, lc: int | None = None) -> bool:
    """Lc data [Le]: the length byte agrees with the data (and, if given, is ``lc``)."""
    if len(apdu) < 6:
        return False
    n = apdu[4]
    return (lc is None or n == lc) and len(apdu) in (5 + n, 6 + n)


def purse_command(apdu: bytes) -> str | None:
    """The purse command ``apdu`` is, or None: the whitelist (module docstring). Pure."""
    if not 4 < len(apdu) <= APDU_BYTES_MAX:
        return None
    cla, ins, p1, p2 = apdu[:4]
    if (cla, ins, p1, p2) == (0x00, 0xA4, 0x04, 0x00):
        n = apdu[4]
        ok = _case3or4(apdu) and apdu[5 : 5 + n] == AID_PURSE
        return "SELECT purse" if ok else None
    if (cla, ins) == (0x00, 0xB0) and p1 in _READ_BINARY_P1 and _case2(apdu):
        return "READ BINARY"
    if (cla, ins) == (0x00, 0xB2) and 1 <= p1 <= 50 and p2 in _READ_RECORD_P2 and _case2(apdu):
        return "READ RECORD"
    if (cla, ins, p1, p2) == (0x80, 0x5C, 0x00, 0x02) and _case2(apdu):
        return "GET BALANCE"
    if (cla, ins, p2) == (0x80, 0x50, 0x02) and p1 in (0x01, 0x03) and _case3or4(apdu, 11):
        return "INITIALIZE FOR PURCHASE"
    if (cla, ins, p1, p2) == (0x80, 0xDC, 0x00, SFI_TRANSIT << 3) and _case3or4(apdu):
        return "UPDATE CAPP DATA CACHE"
    if (cla, ins, p1, p2) == (0x80, 0x54, 0x01, 0x00) and _case3or4(apdu, 15):
        return "DEBIT FOR PURCHASE"
    if (cla, ins, p1) == (0x80, 0x5A, 0x00) and p2 in _PURCHASE_TYPES and _case3or4(apdu, 2):
        return "GET TRANSACTION PROVE"
    return None


@dataclass
class RelayJob(Request):
    """An open relay: the reader held, the card powered, one command at a time."""

    stack: contextlib.ExitStack | None = None
    channel: Channel | None = None
    last_s: float = 0.0
    transmitted: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def transmit(self, apdu: bytes) -> Reply:
        if purse_command(apdu) is None:
            raise AgentError(Code.E_AGENT_APDU_REFUSED, f"(INS {apdu[1]:02X})" if len(apdu) > 1 else "")
        if not self.lock.acquire(blocking=False):
            raise AgentError(Code.E_AGENT_READER_BUSY)
        try:
            channel = self.channel
            if channel is None or time.monotonic() - self.last_s > RELAY_IDLE_S:
                raise AgentError(Code.E_AGENT_REQUEST_UNKNOWN)
            try:
                reply = transceive(channel.reader, apdu, channel.timeout_ms)
            except TerminalError as exc:
                raise from_terminal(exc) from None
            self.last_s = time.monotonic()
            self.transmitted += 1
            return reply
        finally:
            self.lock.release()

    def release(self) -> None:
        """Give the reader back (the registry calls it when the relay ends, however it ends)."""
        with self.lock:
            stack, self.stack, self.channel = self.stack, None, None
        if stack is not None:
            stack.close()


__all__ = ["APDU_BYTES_MAX", "RELAY_IDLE_S", "RelayJob", "purse_command"]
