"""The load flow of a load-capable terminal (a kiosk, the portal's reader page, an online validator).

At a card's presentation the terminal asks clearing which loads wait for it
(``GET /v1/terminals/{id}/cards/{issuer}/{asn}/loads``) and works through them
(``ARCHITECTURE.md`` flow 5, ``docs/clearing.md`` "Online loads"):

* an **authorized** load is in doubt — its MAC2 went out, its TAC never came back (the card
  was pulled after CREDIT FOR LOAD, or before it). GET TRANSACTION PROVE with P2 02 at the
  load's online counter + 1 asks the card: ``MAC2 ‖ TAC`` means it holds the load, which the
  host verifies and posts (``resolve``); ``6A83`` plus the card's online counter from a
  fresh INITIALIZE FOR LOAD lets the host see whether the card ever credited it — if not,
  the load is pending again and is loaded now in that same card session;
* a **pending** load runs INITIALIZE FOR LOAD (MAC1 to the host, ``authorize``) → CREDIT
  FOR LOAD with the host's MAC2 → the TAC to the host (``complete``).

A card pulled during CREDIT FOR LOAD leaves the load authorized; the next presentation
settles it from the card, never with a second MAC2. Nothing here keeps state between
presentations: the host's load states are the truth.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar, Final, Protocol

import httpx
import msgspec

from cardos.crypto import TX_EP_LOAD
from cardos.records import PublicInfo
from clearing.contract import (
    CardLoad,
    CardLoads,
    ErrorBody,
    LoadAuthorizeRequest,
    LoadAuthorizeResponse,
    LoadCompleteRequest,
    LoadCompleteResponse,
    LoadResolveRequest,
    LoadResolveResponse,
)
from terminals.errors import CardRemoved, TerminalError
from terminals.readers import SW_OK, Apdu, Channel, Reader
from terminals.session import SW_RECORD_NOT_FOUND, Cmd

PURSE_KEY_INDEX: Final = 0x01
SW_PURSE_FULL: Final = 0x9501  # CREDIT would take the purse past its maximum (docs/decisions.md)
_FILE_15_LEN: Final = 30


class LoadRefused(TerminalError):
    """The host refused a load step: its stable code (``E_LOAD_IN_DOUBT``, ``E_CARD_NOT_ACTIVE``…) and sentence."""

    code: ClassVar[str] = "E_LOAD_REFUSED"

    def __init__(self, error_code: str, message: str, status_code: int | None = None) -> None:
        super().__init__(f"{error_code}: {message}")
        self.error_code = error_code
        self.status_code = status_code


class LoadHost(Protocol):
    """The clearing centre's online-load API, as this terminal sees it."""

    def pending(self, issuer_id: str, card_asn: str) -> CardLoads: ...

    def authorize(self, load_id: str, req: LoadAuthorizeRequest) -> LoadAuthorizeResponse: ...

    def complete(self, load_id: str, req: LoadCompleteRequest) -> LoadCompleteResponse: ...

    def resolve(self, load_id: str, req: LoadResolveRequest) -> LoadResolveResponse: ...


class HttpLoadHost:
    """``LoadHost`` over the terminal API with the terminal's bearer token (httpx)."""

    def __init__(self, client: httpx.Client, terminal_id: str, token: str) -> None:
        self.client = client
        self.terminal_id = terminal_id
        self.headers = {"Authorization": f"Bearer {token}"}

    def _call(self, method: str, path: str, kind: type[Any], body: msgspec.Struct | None = None) -> Any:
        content = msgspec.json.encode(body) if body is not None else None
        response = self.client.request(method, path, content=content, headers=self.headers)
        if response.status_code != 200:
            try:
                error = msgspec.json.decode(response.content, type=ErrorBody)
                raise LoadRefused(error.code, error.message, response.status_code)
            except msgspec.MsgspecError:
                raise LoadRefused(
                    "E_UPLOAD", f"HTTP {response.status_code} from {path}", response.status_code
                ) from None
        return msgspec.json.decode(response.content, type=kind)

    def pending(self, issuer_id: str, card_asn: str) -> CardLoads:
        path = f"/v1/terminals/{self.terminal_id}/cards/{issuer_id}/{card_asn}/loads"
        result: CardLoads = self._call("GET", path, CardLoads)
        return result

    def authorize(self, load_id: str, req: LoadAuthorizeRequest) -> LoadAuthorizeResponse:
        result: LoadAuthorizeResponse = self._call("POST", f"/v1/loads/{load_id}/authorize", LoadAuthorizeResponse, req)
        return result

    def complete(self, load_id: str, req: LoadCompleteRequest) -> LoadCompleteResponse:
        result: LoadCompleteResponse = self._call("POST", f"/v1/loads/{load_id}/complete", LoadCompleteResponse, req)
        return result

    def resolve(self, load_id: str, req: LoadResolveRequest) -> LoadResolveResponse:
        result: LoadResolveResponse = self._call("POST", f"/v1/loads/{load_id}/resolve", LoadResolveResponse, req)
        return result


class LoadOutcome(StrEnum):
    LOADED = "loaded"  # credited now and posted
    RECOVERED = "recovered"  # the card already held it (proved): posted now
    IN_DOUBT = "in_doubt"  # the card left mid-load: tap again; it is settled from the card next time
    REFUSED = "refused"  # the host or the card refused it (reason says why); nothing moved


@dataclass(frozen=True, slots=True)
class LoadResult:
    load_id: str
    amount_fen: int
    outcome: LoadOutcome
    reason: str = ""


@dataclass(frozen=True, slots=True)
class LoadReport:
    issuer_id: str
    card_asn: str
    results: list[LoadResult] = field(default_factory=list)
    balance_fen: int | None = None  # the purse after the loads, when read

    @property
    def loaded_fen(self) -> int:
        return sum(r.amount_fen for r in self.results if r.outcome in (LoadOutcome.LOADED, LoadOutcome.RECOVERED))


def _initialize_load(amount_fen: int, terminal_id: bytes) -> Apdu:
    data = bytes([PURSE_KEY_INDEX]) + amount_fen.to_bytes(4, "big") + terminal_id
    return Apdu(bytes.fromhex("805000020B") + data + b"\x10", "INITIALIZE FOR LOAD", frozenset({SW_OK, SW_PURSE_FULL}))


def _credit_load(host_time: dt.datetime, mac2: bytes) -> Apdu:
    data = bytes.fromhex(host_time.strftime("%Y%m%d%H%M%S")) + mac2
    return Apdu(bytes.fromhex("805200000B") + data + b"\x04", "CREDIT FOR LOAD", frozenset({SW_OK, SW_PURSE_FULL}))


@dataclass(frozen=True, slots=True)
class _Init:
    balance_fen: int
    online_counter: int
    key_version: int
    alg_id: int
    card_random: str
    mac1: str


def _init(channel: Channel, amount_fen: int, terminal: bytes) -> _Init | None:
    reply = channel.run(_initialize_load(amount_fen, terminal))
    if reply.sw != SW_OK or len(reply.data) != 16:
        return None  # the purse would go past its maximum
    d = reply.data
    return _Init(
        int.from_bytes(d[0:4], "big"), int.from_bytes(d[4:6], "big"), d[6], d[7], d[8:12].hex(), d[12:16].hex()
    )


def _load_now(
    channel: Channel, host: LoadHost, terminal_id: str, info: PublicInfo, load: CardLoad, init: _Init | None
) -> LoadResult:
    """Authorize, credit and complete one pending load (``init``: a fresh INITIALIZE answer to reuse)."""
    terminal = bytes.fromhex(terminal_id)
    if init is None:
        init = _init(channel, load.amount_fen, terminal)
    if init is None:
        return LoadResult(load.load_id, load.amount_fen, LoadOutcome.REFUSED, "the purse would pass its maximum")
    req = LoadAuthorizeRequest(
        terminal_id=terminal_id, issuer_id=info.issuer_id.hex(), card_asn=info.asn.hex(), amount_fen=load.amount_fen,
        balance_before_fen=init.balance_fen, online_counter=init.online_counter, card_random=init.card_random,
        mac1=init.mac1, key_version=init.key_version, alg_id=init.alg_id,
    )  # fmt: skip
    try:
        answer = host.authorize(load.load_id, req)
    except LoadRefused as exc:
        return LoadResult(load.load_id, load.amount_fen, LoadOutcome.REFUSED, str(exc))
    try:
        reply = channel.run(_credit_load(dt.datetime.fromisoformat(answer.tx_time), bytes.fromhex(answer.mac2)))
    except CardRemoved as exc:
        return LoadResult(load.load_id, load.amount_fen, LoadOutcome.IN_DOUBT, f"tap again: {exc.message}")
    if reply.sw != SW_OK:
        return LoadResult(load.load_id, load.amount_fen, LoadOutcome.REFUSED, "the purse would pass its maximum")
    try:
        host.complete(load.load_id, LoadCompleteRequest(reply.data.hex()))
    except LoadRefused as exc:
        # the card holds the value; the host has not posted it: the next presentation proves it
        return LoadResult(load.load_id, load.amount_fen, LoadOutcome.IN_DOUBT, str(exc))
    return LoadResult(load.load_id, load.amount_fen, LoadOutcome.LOADED)


def _settle(
    channel: Channel, host: LoadHost, terminal_id: str, info: PublicInfo, load: CardLoad
) -> LoadResult | _Init | None:
    """An authorized load: ask the card. Its result, or (not credited) a fresh INITIALIZE to load with."""
    assert load.online_counter is not None
    reply = channel.run(Cmd.get_transaction_prove(TX_EP_LOAD, load.online_counter + 1))
    if reply.sw == SW_OK and len(reply.data) == 8:
        req = LoadResolveRequest(terminal_id, prove_mac2=reply.data[:4].hex(), prove_tac=reply.data[4:].hex())
        try:
            proved = host.resolve(load.load_id, req)
        except LoadRefused as exc:
            return LoadResult(load.load_id, load.amount_fen, LoadOutcome.REFUSED, str(exc))
        if proved.status == "posted":
            return LoadResult(load.load_id, load.amount_fen, LoadOutcome.RECOVERED)
        # the card proved another load at that counter: this one never reached it; load it now
        return _init(channel, load.amount_fen, bytes.fromhex(terminal_id))
    assert reply.sw == SW_RECORD_NOT_FOUND
    init = _init(channel, load.amount_fen, bytes.fromhex(terminal_id))
    if init is None:
        return LoadResult(load.load_id, load.amount_fen, LoadOutcome.REFUSED, "the purse would pass its maximum")
    try:
        answer = host.resolve(load.load_id, LoadResolveRequest(terminal_id, online_counter=init.online_counter))
    except LoadRefused as exc:
        return LoadResult(load.load_id, load.amount_fen, LoadOutcome.REFUSED, str(exc))
    return init if answer.status == "pending" else None


def _read_card(channel: Channel) -> PublicInfo:
    select = channel.run(Cmd.select_purse())
    if select.sw != SW_OK:
        raise TerminalError(f"the card's purse answered {select.sw:04X} to SELECT: it takes no load")
    return PublicInfo.decode(channel.run(Cmd.read_binary(0x15, _FILE_15_LEN)).data)


def load_card(reader: Reader, host: LoadHost, terminal_id: str, *, timeout_ms: int = 1000) -> LoadReport:
    """Run every load waiting for the card on ``reader`` (connected here); a report per load."""
    reader.connect(timeout_ms)
    channel = Channel(reader, timeout_ms)
    info = _read_card(channel)
    issuer, asn = info.issuer_id.hex(), info.asn.hex()
    waiting: Sequence[CardLoad] = host.pending(issuer, asn).loads
    results: list[LoadResult] = []
    for load in waiting:
        init: _Init | None = None
        if load.state == "authorized":
            settled = _settle(channel, host, terminal_id, info, load)
            if isinstance(settled, LoadResult):
                results.append(settled)
                continue
            if settled is None:
                results.append(LoadResult(load.load_id, load.amount_fen, LoadOutcome.REFUSED, "still in doubt"))
                continue
            init = settled
        results.append(_load_now(channel, host, terminal_id, info, load, init))
        if results[-1].outcome is LoadOutcome.IN_DOUBT:
            break  # the card is gone
    balance = None
    if not results or results[-1].outcome is not LoadOutcome.IN_DOUBT:
        reply = channel.run(Cmd.get_balance())
        balance = int.from_bytes(reply.data[:4], "big")
    return LoadReport(issuer, asn, results, balance)


__all__ = [
    "HttpLoadHost",
    "LoadHost",
    "LoadOutcome",
    "LoadRefused",
    "LoadReport",
    "LoadResult",
    "load_card",
]
