"""The online load host (flow 5): MAC1 → MAC2, then the card's load TAC → one posting.

A citizen's payment creates a *pending* load (``create_pending``). When the card meets a
load-capable reader, INITIALIZE FOR LOAD gives the balance, online counter, card random
and MAC1; ``authorize`` checks MAC1 with the session key from the card's DLK (key store)
and returns MAC2 over the host's date and time (section 5 and 6 of
``epurse-public-sources.md``). CREDIT FOR LOAD gives the TAC; ``complete`` checks it with
the DTK and posts ``load:<id>`` gateway receivable (or issuer float; for a tap-off's
fare refund, the operator's payable) → card liability, once: a repeated completion
with the same TAC answers ``posted`` and posts nothing.

The card row is locked while a load moves its shadow, the same lock ingest takes, so a
load and a batch touching one card queue instead of racing. The shadow becomes the
card's balance after the load and ``shadow_load_at`` remembers when, so taps made before
the load but uploaded after it are not compared with it (``clearing.validation``).
"""

from __future__ import annotations

import datetime as dt
import hmac
from dataclasses import dataclass
from typing import Final

from sqlalchemy import select
from sqlalchemy.orm import Session

from cardos import crypto
from cardos.records import SHANGHAI_TZ
from clearing import accounts
from clearing.contract import LoadAuthorizeRequest, LoadAuthorizeResponse, LoadCompleteRequest, LoadCompleteResponse
from clearing.contract.codes import Code
from clearing.errors import ClearingError
from clearing.ingest import REFUND_PREFIX
from clearing.keystore import KeyStore, KeyStoreError
from clearing.ledger import TransferSpec, post_transfers
from clearing.models import Card, LoadState, PendingLoad, Terminal, TransferCode, utcnow

LOAD_ID_LEN_MAX: Final = 40
TX_TYPE: Final = crypto.TX_EP_LOAD  # loads into the electronic purse


def _not_found(load_id: str) -> ClearingError:
    return ClearingError(Code.E_UNKNOWN_LOAD, f"no pending load {load_id}")


def _conflict(code: Code, message: str) -> ClearingError:
    return ClearingError(code, message)


@dataclass(frozen=True, slots=True)
class HostTime:
    at: dt.datetime
    date4: bytes
    time3: bytes
    iso_local: str


def host_time(now: dt.datetime) -> HostTime:
    """The date and time MAC2 covers: the host's clock, in the card's zone, to the second."""
    local = now.astimezone(SHANGHAI_TZ).replace(microsecond=0)
    return HostTime(
        local,
        bytes.fromhex(local.strftime("%Y%m%d")),
        bytes.fromhex(local.strftime("%H%M%S")),
        local.isoformat(),
    )


def create_pending(
    session: Session, load_id: str, issuer_id: str, card_asn: str, amount_fen: int, *, payment_ref: str | None = None
) -> PendingLoad:
    """A paid load waiting for the card (the portal calls this on ``payment_intent.succeeded``)."""
    if not 0 < len(load_id) <= LOAD_ID_LEN_MAX:
        raise ClearingError(Code.E_BAD_LOAD_ID, f"load id must be 1..{LOAD_ID_LEN_MAX} characters")
    if amount_fen <= 0:
        raise ClearingError(Code.E_BAD_AMOUNT, "a load moves a positive amount")
    existing = session.get(PendingLoad, load_id)
    if existing is not None:
        if (existing.issuer_id, existing.card_asn, existing.amount_fen) != (issuer_id, card_asn, amount_fen):
            raise _conflict(Code.E_LOAD_CONFLICT, f"load {load_id} exists for another card or amount")
        return existing
    load = PendingLoad(
        id=load_id,
        issuer_id=issuer_id,
        card_asn=card_asn,
        amount_fen=amount_fen,
        state=LoadState.PENDING.value,
        payment_ref=payment_ref,
    )
    session.add(load)
    session.flush()
    return load


def _locked_load(session: Session, load_id: str) -> PendingLoad:
    load = session.execute(select(PendingLoad).where(PendingLoad.id == load_id).with_for_update()).scalar_one_or_none()
    if load is None:
        raise _not_found(load_id)
    return load


def _card_key(keystore: KeyStore, which: str, issuer_id: str, asn: str, key_version: int) -> bytes:
    try:
        return (
            keystore.dlk(issuer_id, asn, key_version) if which == "dlk" else keystore.dtk(issuer_id, asn, key_version)
        )
    except KeyStoreError as exc:
        raise _conflict(Code.E_UNKNOWN_KEY, f"no key version {key_version} for issuer {issuer_id}") from exc


def _source_account(session: Session, load: PendingLoad) -> int:
    """Who pays a load: a fare refund comes back from the operator paid at the tap-on; a paid
    top-up from the payment gateway receivable; anything else (cash at a kiosk) from the float."""
    if load.id.startswith(REFUND_PREFIX):
        terminal_id = load.id[len(REFUND_PREFIX) :].split(":", 1)[0]
        payable = session.execute(
            select(Terminal.payable_account_id).where(Terminal.terminal_id == terminal_id)
        ).scalar_one_or_none()
        if payable is None:
            raise _conflict(Code.E_UNKNOWN_TERMINAL, f"fare refund {load.id} names unknown terminal {terminal_id}")
        return int(payable)
    if load.payment_ref is not None:
        return accounts.gateway_receivable(session)
    return accounts.issuer_float(session, load.issuer_id)


def authorize(
    session: Session, keystore: KeyStore, load_id: str, req: LoadAuthorizeRequest, now: dt.datetime
) -> LoadAuthorizeResponse:
    """Check MAC1 and answer MAC2 (in the caller's transaction; the load becomes ``authorized``).

    Asking again with the same card session (random, counter) returns the same MAC2 and
    time: a reader that lost the answer can retry. Another session replaces the first only
    when the card provably never used the first MAC2: its online counter has not moved
    (CREDIT FOR LOAD increments it at commit), or another posted load of this card consumed
    that counter. Otherwise the first credit may have happened with its TAC withheld, and a
    second MAC2 would credit the card twice: ``E_LOAD_IN_DOUBT``, resolved from the card's
    log, never by a new MAC2.
    """
    load = _locked_load(session, load_id)
    if (load.issuer_id, load.card_asn) != (req.issuer_id, req.card_asn):
        raise _conflict(Code.E_WRONG_CARD, f"load {load_id} is for another card")
    if load.amount_fen != req.amount_fen:
        raise _conflict(Code.E_WRONG_AMOUNT, f"load {load_id} is for {load.amount_fen} fen, not {req.amount_fen}")
    if load.state == LoadState.AUTHORIZED.value and (load.card_random, load.online_counter, load.terminal_id) == (
        req.card_random,
        req.online_counter,
        req.terminal_id,
    ):
        assert load.mac2 is not None and load.tx_time is not None
        return LoadAuthorizeResponse(load.mac2, host_time(load.tx_time).iso_local)
    if load.state not in (LoadState.PENDING.value, LoadState.AUTHORIZED.value):
        raise _conflict(Code.E_LOAD_STATE, f"load {load_id} is {load.state}")
    if (
        load.state == LoadState.AUTHORIZED.value
        and req.online_counter != load.online_counter
        and not _counter_used_by_another_load(session, load)
    ):
        raise _conflict(
            Code.E_LOAD_IN_DOUBT,
            f"load {load_id} was authorized at online counter {load.online_counter} and the card is now at "
            f"{req.online_counter}: it may already be credited; resolve it from the card's log",
        )
    if req.alg_id not in crypto.ALGORITHMS:
        raise _conflict(Code.E_BAD_ALGORITHM, f"unknown algorithm id {req.alg_id:#04x}")
    dlk = _card_key(keystore, "dlk", req.issuer_id, req.card_asn, req.key_version)
    terminal = bytes.fromhex(req.terminal_id)
    session_key = crypto.load_session_key(dlk, bytes.fromhex(req.card_random), req.online_counter, req.alg_id)
    mac1 = crypto.mac(
        session_key, crypto.load_mac1_data(req.balance_before_fen, req.amount_fen, TX_TYPE, terminal), req.alg_id
    )
    if not hmac.compare_digest(mac1, bytes.fromhex(req.mac1)):
        raise _conflict(Code.E_MAC1_MISMATCH, f"MAC1 does not verify for card {req.card_asn}, load {load_id}")
    when = host_time(now)
    mac2 = crypto.mac(
        session_key, crypto.load_mac2_data(req.amount_fen, TX_TYPE, terminal, when.date4, when.time3), req.alg_id
    ).hex()
    load.state = LoadState.AUTHORIZED.value
    load.terminal_id = req.terminal_id
    load.online_counter = req.online_counter
    load.balance_before_fen = req.balance_before_fen
    load.card_random = req.card_random
    load.key_version = req.key_version
    load.alg_id = req.alg_id
    load.mac1 = req.mac1
    load.mac2 = mac2
    load.tx_time = when.at
    load.updated_at = utcnow()
    session.flush()
    return LoadAuthorizeResponse(mac2, when.iso_local)


def _counter_used_by_another_load(session: Session, load: PendingLoad) -> bool:
    """A posted load of the same card at the counter this load was authorized at."""
    other = session.execute(
        select(PendingLoad.id).where(
            PendingLoad.issuer_id == load.issuer_id,
            PendingLoad.card_asn == load.card_asn,
            PendingLoad.online_counter == load.online_counter,
            PendingLoad.state == LoadState.POSTED.value,
            PendingLoad.id != load.id,
        )
    ).first()
    return other is not None


def complete(session: Session, keystore: KeyStore, load_id: str, req: LoadCompleteRequest) -> LoadCompleteResponse:
    """Verify the load TAC and post it, once (in the caller's transaction)."""
    load = _locked_load(session, load_id)
    if load.state == LoadState.POSTED.value:
        if load.tac == req.tac:
            return LoadCompleteResponse("posted")
        raise _conflict(Code.E_LOAD_STATE, f"load {load_id} was already posted with another TAC")
    if load.state != LoadState.AUTHORIZED.value:
        raise _conflict(Code.E_LOAD_STATE, f"load {load_id} is {load.state}, not authorized")
    assert load.terminal_id and load.tx_time and load.key_version is not None and load.alg_id is not None
    assert load.balance_before_fen is not None and load.online_counter is not None
    dtk = _card_key(keystore, "dtk", load.issuer_id, load.card_asn, load.key_version)
    when = host_time(load.tx_time)
    balance_after = load.balance_before_fen + load.amount_fen
    expected = crypto.load_tac(
        dtk,
        balance_after,
        load.online_counter,
        load.amount_fen,
        TX_TYPE,
        bytes.fromhex(load.terminal_id),
        when.date4,
        when.time3,
        load.alg_id,
    )
    if not hmac.compare_digest(expected, bytes.fromhex(req.tac)):
        raise _conflict(Code.E_TAC_MISMATCH, f"TAC does not verify for card {load.card_asn}, load {load_id}")
    card = session.execute(
        select(Card).where(Card.issuer_id == load.issuer_id, Card.card_asn == load.card_asn).with_for_update()
    ).scalar_one()
    source = _source_account(session, load)
    transfer_id = f"load:{load.id}"
    post_transfers(
        session,
        [
            TransferSpec.single(
                transfer_id, source, card.account_id, load.amount_fen, int(TransferCode.LOAD), source_ref=load_id
            )
        ],
    )
    if card.last_tx_at is None or card.last_tx_at <= load.tx_time:
        # A tap made after this load and already cleared (the completion came late) has moved
        # the shadow past it; otherwise the card's balance is now the balance after the load.
        card.shadow_balance_fen = balance_after
        card.shadow_load_at = load.tx_time
    card.last_online_counter = load.online_counter
    load.state = LoadState.POSTED.value
    load.tac = req.tac
    load.transfer_id = transfer_id
    load.updated_at = utcnow()
    session.flush()
    return LoadCompleteResponse("posted")


__all__ = [
    "authorize",
    "complete",
    "create_pending",
    "host_time",
]
