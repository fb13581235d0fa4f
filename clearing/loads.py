"""The online load host (flow 5): reserve, MAC1 → MAC2, the card's TAC → post; never stuck in doubt.

A paid top-up (or a tap-off's refund, or cash at a counter) is a *pending* load
(``create_pending``); its payer is a column (``payer_account_id``): the payment gateway's
receivable, the operator that received the entry fare, or the issuer's float. At the card's
next presentation on a load-capable reader (``terminals.loading``):

1. ``authorize`` — INITIALIZE FOR LOAD gave balance, online counter, random and MAC1. The
   host checks the card (registered, active, not denylisted), the key version (the card's,
   held by the key store) and MAC1, **reserves** the amount with a pending transfer
   ``load:<id>:reserve`` (payer → card liability, so the money cannot be paid out twice
   meanwhile) and answers MAC2 over its own date and time.
2. ``complete`` — CREDIT FOR LOAD's TAC, verified with the DTK, **posts** the reservation
   (``load:<id>``). A repeat with the same TAC answers ``posted`` and posts nothing.
3. ``cancel`` / ``expire`` — a load that never reached the card **voids** its reservation; the
   payment is then refunded through its payment reference (``mark_refunded``).

A load whose TAC never reached the host (the card was pulled after CREDIT FOR LOAD) is *in
doubt*: a new MAC2 could credit the card twice, so ``authorize`` refuses one
(``E_LOAD_IN_DOUBT``) once the card's online counter has moved. ``resolve`` settles it from
the card itself: GET TRANSACTION PROVE with P2 02 at the load's online counter + 1 answers
MAC2 ‖ TAC when the card committed the load — the TAC is verified and the load posted — or
``6A83``; then, if the card's online counter has not moved past the load's, the card never
credited it and the load is pending again (its reservation kept), to be authorized afresh.

The card row is locked while a load moves its shadow, the same lock ingest takes, so a load
and a batch touching one card queue instead of racing. The shadow becomes the card's balance
after the load and ``shadow_load_at`` remembers when, so taps made before the load but
uploaded after it are not compared with it (``clearing.validation``).

Every refusal is a ``ClearingError`` with a 4xx code: a ledger refusal (say a payer that
cannot cover the reservation) included.
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
from clearing import accounts, transfer_ids
from clearing.contract import (
    CardLoad,
    CardLoads,
    LoadAuthorizeRequest,
    LoadAuthorizeResponse,
    LoadCompleteRequest,
    LoadCompleteResponse,
    LoadResolveRequest,
    LoadResolveResponse,
)
from clearing.contract.codes import Code
from clearing.db import lock_for_update
from clearing.errors import ClearingError
from clearing.ingest_totals import REFUND, record_event
from clearing.keystore import KeyStore
from clearing.ledger import TransferSpec, post_transfers
from clearing.models import (
    Card,
    CardStatus,
    DenylistEntryRow,
    LoadKind,
    LoadState,
    PendingLoad,
    TransferCode,
    utcnow,
)

LOAD_ID_LEN_MAX: Final = 40
TX_TYPE: Final = crypto.TX_EP_LOAD  # loads into the electronic purse
OPEN_STATES: Final = (LoadState.PENDING.value, LoadState.AUTHORIZED.value)


def _not_found(load_id: str) -> ClearingError:
    return ClearingError(Code.E_UNKNOWN_LOAD, f"no pending load {load_id}")


def _conflict(code: Code, message: str) -> ClearingError:
    return ClearingError(code, message)


load_transfer_id = transfer_ids.load


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
    session: Session,
    load_id: str,
    issuer_id: str,
    card_asn: str,
    amount_fen: int,
    *,
    payment_ref: str | None = None,
    kind: LoadKind | None = None,
    payer_account_id: int | None = None,
    expires_at: dt.datetime | None = None,
) -> PendingLoad:
    """A paid load waiting for the card (the portal calls this on ``payment_intent.succeeded``).

    The payer: a top-up (``payment_ref``) is paid from the gateway receivable, cash at a
    counter from the issuer's float; a refund names its payer. Idempotent by ``load_id``.
    """
    if not 0 < len(load_id) <= LOAD_ID_LEN_MAX:
        raise ClearingError(Code.E_BAD_LOAD_ID, f"load id must be 1..{LOAD_ID_LEN_MAX} characters")
    if amount_fen <= 0:
        raise ClearingError(Code.E_BAD_AMOUNT, "a load moves a positive amount")
    kind = kind or (LoadKind.TOPUP if payment_ref is not None else LoadKind.COUNTER)
    if kind is LoadKind.REFUND and payer_account_id is None:
        raise ClearingError(Code.E_BAD_AMOUNT, "a refund load names the account that pays it")
    if kind is LoadKind.TOPUP and payment_ref is None:
        raise ClearingError(Code.E_BAD_AMOUNT, "a top-up load carries its payment reference")
    existing = session.get(PendingLoad, load_id)
    if existing is not None:
        if (existing.issuer_id, existing.card_asn, existing.amount_fen) != (issuer_id, card_asn, amount_fen):
            raise _conflict(Code.E_LOAD_CONFLICT, f"load {load_id} exists for another card or amount")
        return existing
    if session.execute(select(Card.id).where(Card.issuer_id == issuer_id, Card.card_asn == card_asn)).first() is None:
        raise ClearingError(Code.E_UNKNOWN_CARD, f"card {card_asn} of issuer {issuer_id} is not registered")
    if payer_account_id is None:
        payer_account_id = (
            accounts.gateway_receivable(session)
            if kind is LoadKind.TOPUP
            else accounts.issuer_float(session, issuer_id)
        )
    load = PendingLoad(
        id=load_id,
        issuer_id=issuer_id,
        card_asn=card_asn,
        amount_fen=amount_fen,
        state=LoadState.PENDING.value,
        payment_ref=payment_ref,
        kind=kind.value,
        payer_account_id=payer_account_id,
        expires_at=expires_at,
    )
    session.add(load)
    session.flush()
    return load


def _locked_load(session: Session, load_id: str) -> PendingLoad:
    lock_for_update(session)  # SQLite: the write lock first, so the state read below stays current
    load = session.execute(select(PendingLoad).where(PendingLoad.id == load_id).with_for_update()).scalar_one_or_none()
    if load is None:
        raise _not_found(load_id)
    return load


def _locked_card(session: Session, load: PendingLoad) -> Card:
    card = session.execute(
        select(Card).where(Card.issuer_id == load.issuer_id, Card.card_asn == load.card_asn).with_for_update()
    ).scalar_one_or_none()
    if card is None:
        raise ClearingError(Code.E_UNKNOWN_CARD, f"card {load.card_asn} of load {load.id} is not registered")
    return card


def _card_key(keystore: KeyStore, which: str, issuer_id: str, asn: str, key_version: int) -> bytes:
    try:
        return (
            keystore.dlk(issuer_id, asn, key_version) if which == "dlk" else keystore.dtk(issuer_id, asn, key_version)
        )
    except ClearingError as exc:
        raise _conflict(Code.E_UNKNOWN_KEY, f"no key version {key_version} for issuer {issuer_id}") from exc


def _payer(session: Session, load: PendingLoad) -> int:
    if load.payer_account_id is not None:
        return load.payer_account_id
    # loads made before payers were a column: a top-up is the gateway's, anything else the float's
    if load.payment_ref is not None:
        return accounts.gateway_receivable(session)
    return accounts.issuer_float(session, load.issuer_id)


def _check_card(session: Session, card: Card, load: PendingLoad, key_version: int) -> None:
    """Only an active card, off the denylist, with its own key version, is loaded."""
    if card.status != CardStatus.ACTIVE.value:
        raise ClearingError(Code.E_CARD_NOT_ACTIVE, f"card {card.card_asn} is {card.status}: load {load.id} waits")
    listed = session.execute(
        select(DenylistEntryRow.reason).where(
            DenylistEntryRow.issuer_id == card.issuer_id,
            DenylistEntryRow.card_asn == card.card_asn,
            DenylistEntryRow.removed_version.is_(None),
        )
    ).first()
    if listed is not None:
        raise ClearingError(
            Code.E_CARD_NOT_ACTIVE, f"card {card.card_asn} is on the denylist ({listed[0]}): load {load.id} waits"
        )
    if key_version != card.key_version:
        raise ClearingError(
            Code.E_UNKNOWN_KEY,
            f"card {card.card_asn} answered key version {key_version}, registered with {card.key_version}",
        )


def _reserve(session: Session, load: PendingLoad, card: Card) -> None:
    """The pending transfer that holds the amount from the payer until the card has it (idempotent)."""
    if load.reserve_transfer_id is not None:
        return
    reserve_id = transfer_ids.load_reserve(load.id)
    post_transfers(
        session,
        [
            TransferSpec.pending(
                reserve_id, _payer(session, load), card.account_id, load.amount_fen, int(TransferCode.LOAD),
                source_ref=load.id,
            )
        ],
    )  # fmt: skip
    load.reserve_transfer_id = reserve_id


def authorize(
    session: Session, keystore: KeyStore, load_id: str, req: LoadAuthorizeRequest, now: dt.datetime
) -> LoadAuthorizeResponse:
    """Check the card and MAC1, reserve the amount and answer MAC2 (in the caller's transaction).

    Asking again with the same card session (random, counter) returns the same MAC2 and
    time: a reader that lost the answer can retry. Another session replaces the first only
    when the card provably never used the first MAC2: its online counter has not moved
    (CREDIT FOR LOAD increments it at commit), or another posted load of this card consumed
    that counter. Otherwise the first credit may have happened with its TAC withheld, and a
    second MAC2 would credit the card twice: ``E_LOAD_IN_DOUBT``, settled by ``resolve``.
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
    if load.state not in OPEN_STATES:
        raise _conflict(Code.E_LOAD_STATE, f"load {load_id} is {load.state}")
    if (
        load.state == LoadState.AUTHORIZED.value
        and req.online_counter != load.online_counter
        and not _counter_used_by_another_load(session, load)
    ):
        raise _conflict(
            Code.E_LOAD_IN_DOUBT,
            f"load {load_id} was authorized at online counter {load.online_counter} and the card is now at "
            f"{req.online_counter}: it may already be credited; resolve it from the card (GET TRANSACTION PROVE)",
        )
    if load.expires_at is not None and now >= load.expires_at:
        raise _conflict(Code.E_LOAD_STATE, f"load {load_id} expired at {load.expires_at.isoformat()}")
    if req.alg_id not in crypto.ALGORITHMS:
        raise _conflict(Code.E_BAD_ALGORITHM, f"unknown algorithm id {req.alg_id:#04x}")
    card = _locked_card(session, load)
    _check_card(session, card, load, req.key_version)
    dlk = _card_key(keystore, "dlk", req.issuer_id, req.card_asn, req.key_version)
    terminal = bytes.fromhex(req.terminal_id)
    session_key = crypto.load_session_key(dlk, bytes.fromhex(req.card_random), req.online_counter, req.alg_id)
    mac1 = crypto.mac(
        session_key, crypto.load_mac1_data(req.balance_before_fen, req.amount_fen, TX_TYPE, terminal), req.alg_id
    )
    if not hmac.compare_digest(mac1, bytes.fromhex(req.mac1)):
        raise _conflict(Code.E_MAC1_MISMATCH, f"MAC1 does not verify for card {req.card_asn}, load {load_id}")
    _reserve(session, load, card)
    _clear_stale_authorizations(session, load, req.online_counter)
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


def _clear_stale_authorizations(session: Session, load: PendingLoad, online_counter: int) -> None:
    """Other loads of the card authorized at this same online counter never reached it.

    The card shows that counter again in a new session (MAC1 verified): had one of them been
    credited, the counter would have moved. Their MAC2s are bound to their own sessions'
    randoms and can no longer be used, so they are pending again, reservations kept.
    """
    stale = session.execute(
        select(PendingLoad)
        .where(
            PendingLoad.issuer_id == load.issuer_id,
            PendingLoad.card_asn == load.card_asn,
            PendingLoad.state == LoadState.AUTHORIZED.value,
            PendingLoad.online_counter == online_counter,
            PendingLoad.id != load.id,
        )
        .with_for_update()
    ).scalars()
    for other in stale:
        _not_credited(session, other)


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


def _expected_tac(keystore: KeyStore, load: PendingLoad) -> bytes:
    assert load.terminal_id and load.tx_time and load.key_version is not None and load.alg_id is not None
    assert load.balance_before_fen is not None and load.online_counter is not None
    dtk = _card_key(keystore, "dtk", load.issuer_id, load.card_asn, load.key_version)
    when = host_time(load.tx_time)
    return crypto.load_tac(
        dtk,
        load.balance_before_fen + load.amount_fen,
        load.online_counter,
        load.amount_fen,
        TX_TYPE,
        bytes.fromhex(load.terminal_id),
        when.date4,
        when.time3,
        load.alg_id,
    )


def _post(session: Session, load: PendingLoad, tac: str) -> None:
    """Post the reserved load and move the card's shadow (the card holds the value now)."""
    assert load.tx_time is not None and load.balance_before_fen is not None
    card = _locked_card(session, load)
    transfer_id = load_transfer_id(load.id)
    if load.reserve_transfer_id is not None:
        spec = TransferSpec.post(transfer_id, load.reserve_transfer_id, code=int(TransferCode.LOAD))
    else:  # authorized before reservations existed
        spec = TransferSpec.single(
            transfer_id, _payer(session, load), card.account_id, load.amount_fen, int(TransferCode.LOAD),
            source_ref=load.id,
        )  # fmt: skip
    post_transfers(session, [spec])
    if load.kind == LoadKind.REFUND.value:  # a tap-off refund leaves the operator's window when it reaches the card
        record_event(session, payee_account_id=_payer(session, load), kind=REFUND, source_ref=transfer_id,
                     amount_fen=load.amount_fen, at=dt.datetime.now(dt.UTC))  # fmt: skip
    assert load.online_counter is not None
    balance_after = load.balance_before_fen + load.amount_fen
    # A tap made after this load and already cleared, or a later load already posted (this
    # completion came late, say resolved from the card), has moved the shadow past it;
    # otherwise the card's balance is now the balance after the load.
    after_taps = card.last_tx_at is None or card.last_tx_at <= load.tx_time
    after_loads = card.last_online_counter is None or load.online_counter > card.last_online_counter
    if after_taps and after_loads:
        card.shadow_balance_fen = balance_after
        card.shadow_load_at = load.tx_time
    if after_loads:
        card.last_online_counter = load.online_counter
    load.state = LoadState.POSTED.value
    load.tac = tac
    load.transfer_id = transfer_id
    load.updated_at = utcnow()
    session.flush()


def complete(session: Session, keystore: KeyStore, load_id: str, req: LoadCompleteRequest) -> LoadCompleteResponse:
    """Verify the load TAC and post the reservation, once (in the caller's transaction)."""
    load = _locked_load(session, load_id)
    if load.state == LoadState.POSTED.value:
        if load.tac == req.tac:
            return LoadCompleteResponse("posted")
        raise _conflict(Code.E_LOAD_STATE, f"load {load_id} was already posted with another TAC")
    if load.state != LoadState.AUTHORIZED.value:
        raise _conflict(Code.E_LOAD_STATE, f"load {load_id} is {load.state}, not authorized")
    if not hmac.compare_digest(_expected_tac(keystore, load), bytes.fromhex(req.tac)):
        raise _conflict(Code.E_TAC_MISMATCH, f"TAC does not verify for card {load.card_asn}, load {load_id}")
    _post(session, load, req.tac)
    return LoadCompleteResponse("posted")


def resolve(
    session: Session, keystore: KeyStore, load_id: str, req: LoadResolveRequest, now: dt.datetime
) -> LoadResolveResponse:
    """Settle an authorized load from what the card says (module docstring)."""
    load = _locked_load(session, load_id)
    if load.state == LoadState.POSTED.value:
        if req.prove_tac is not None and load.tac == req.prove_tac:
            return LoadResolveResponse("posted")
        raise _conflict(Code.E_LOAD_STATE, f"load {load_id} is already posted")
    if load.state == LoadState.PENDING.value and req.prove_tac is None:
        return LoadResolveResponse("pending")  # nothing in doubt
    if load.state != LoadState.AUTHORIZED.value:
        raise _conflict(Code.E_LOAD_STATE, f"load {load_id} is {load.state}: nothing to resolve")
    if req.prove_tac is not None or req.prove_mac2 is not None:
        if req.prove_tac is None or req.prove_mac2 is None:
            raise ClearingError(Code.E_MALFORMED, "a card's proof is MAC2 and TAC together")
        if req.prove_mac2 == load.mac2 and hmac.compare_digest(
            _expected_tac(keystore, load), bytes.fromhex(req.prove_tac)
        ):
            _post(session, load, req.prove_tac)
            return LoadResolveResponse("posted")
        if _counter_used_by_another_load(session, load):
            # the card proves the load another session made at this counter: not this one
            return _not_credited(session, load)
        raise _conflict(
            Code.E_TAC_MISMATCH,
            f"the card's proof does not match load {load_id} as authorized (MAC2 or TAC differs)",
        )
    if req.online_counter is None:
        raise ClearingError(Code.E_MALFORMED, "without the card's proof, give its online counter now")
    assert load.online_counter is not None
    if req.online_counter == load.online_counter or _counter_used_by_another_load(session, load):
        return _not_credited(session, load)
    raise _conflict(
        Code.E_LOAD_IN_DOUBT,
        f"load {load_id}: the card does not prove it and its online counter moved from {load.online_counter} to "
        f"{req.online_counter}; a person must look at the card's log",
    )


def _not_credited(session: Session, load: PendingLoad) -> LoadResolveResponse:
    """The card never ran CREDIT FOR LOAD for this authorization: pending again, a new MAC2 is safe."""
    load.state = LoadState.PENDING.value
    load.mac2 = None
    load.card_random = None
    load.updated_at = utcnow()
    session.flush()
    return LoadResolveResponse("pending")


def _void(session: Session, load: PendingLoad, state: LoadState) -> PendingLoad:
    if load.state == LoadState.AUTHORIZED.value:
        raise _conflict(
            Code.E_LOAD_IN_DOUBT,
            f"load {load.id} is authorized: the card may hold it; resolve it from the card before it can be {state}",
        )
    if load.state != LoadState.PENDING.value:
        raise _conflict(Code.E_LOAD_STATE, f"load {load.id} is {load.state}")
    if load.reserve_transfer_id is not None:
        post_transfers(
            session,
            [TransferSpec.void(transfer_ids.load_void(load.id), load.reserve_transfer_id, code=TransferCode.LOAD)],
        )
    load.state = state.value
    load.updated_at = utcnow()
    session.flush()
    return load


def cancel(session: Session, load_id: str) -> PendingLoad:
    """Cancel a load that never reached the card: void its reservation; refund it by its payment reference."""
    return _void(session, _locked_load(session, load_id), LoadState.CANCELLED)


def expire(session: Session, now: dt.datetime) -> list[str]:
    """Expire the pending loads past ``expires_at`` (authorized ones stay: they may be on a card)."""
    ids = session.execute(
        select(PendingLoad.id)
        .where(PendingLoad.state == LoadState.PENDING.value, PendingLoad.expires_at.is_not(None))
        .where(PendingLoad.expires_at <= now)
        .order_by(PendingLoad.id)
    ).scalars()
    done = []
    for load_id in list(ids):
        _void(session, _locked_load(session, load_id), LoadState.EXPIRED)
        done.append(load_id)
    return done


def mark_refunded(session: Session, load_id: str) -> PendingLoad:
    """A cancelled or expired top-up was paid back through its payment reference."""
    load = _locked_load(session, load_id)
    if load.state not in (LoadState.CANCELLED.value, LoadState.EXPIRED.value):
        raise _conflict(
            Code.E_LOAD_STATE, f"load {load_id} is {load.state}: only a cancelled or expired load is refunded"
        )
    load.state = LoadState.REFUNDED.value
    load.updated_at = utcnow()
    session.flush()
    return load


def for_card(session: Session, issuer_id: str, card_asn: str) -> CardLoads:
    """The loads waiting for a card, oldest first: authorized ones (to resolve) and pending ones."""
    rows = session.execute(
        select(PendingLoad.id, PendingLoad.amount_fen, PendingLoad.state, PendingLoad.online_counter)
        .where(PendingLoad.issuer_id == issuer_id, PendingLoad.card_asn == card_asn)
        .where(PendingLoad.state.in_(OPEN_STATES))
        .order_by(PendingLoad.created_at, PendingLoad.id)
    ).all()
    return CardLoads(
        [
            CardLoad(load_id, amount, state, counter if state == LoadState.AUTHORIZED.value else None)  # type: ignore[arg-type]
            for load_id, amount, state, counter in rows
        ]
    )


__all__ = [
    "authorize",
    "cancel",
    "complete",
    "create_pending",
    "expire",
    "for_card",
    "host_time",
    "load_transfer_id",
    "mark_refunded",
    "resolve",
]
