"""The top-up (充值) state machine: ``apply(topup, event) -> (topup, effects)``, pure.

A top-up is paid through a PaymentIntent, becomes a pending load in clearing, and ends loaded
on the card or refunded. Its events come from three places that each deliver at least once and
in any order: payment webhooks, clearing (load created, completed, voided) and the portal itself
(refund requested, windows expired). ``docs/portal.md`` has the full table.

Rules that make it safe under repeats, reordering and crashes:

- **Effects are commands to idempotent receivers, re-issued until their result is seen.**
  ``apply`` answers the effects of the transition plus ``due_effects`` of the new state (what
  the state still waits for: the load to be created, cancelled, the payment refunded). So a
  crash that loses an effect is healed by the next event or by a sweep calling
  ``due_effects``; every receiver dedupes (clearing by load id = top-up id, the payment API by
  ``Idempotency-Key``). Nothing is "sent once" and hoped for.
- **Facts never raise.** An event the state does not expect changes nothing (a ``Notice`` when
  money may be involved). Only a citizen's or clerk's command (``RefundRequested``) is refused.
- **Each paid top-up loads at most once**: the load id is the top-up id, and only one payment
  is the top-up's — the first that succeeds with the right amount and currency while the
  top-up is open for payment. Any other successful payment carrying this top-up (a second
  intent, a wrong amount, a payment after the top-up was cancelled) is *unmatched*: refunded in
  full, never loaded.
- **Refunds plus loads never exceed payments**: a refund is asked for only after clearing has
  voided the load (``LoadVoided``: a voided reservation can never post). If the card takes the
  load first, the top-up is loaded and the refund is dropped (``N_LOADED_BEFORE_REFUND``).
  A refund made at the provider outside this flow stops the load; if the card took it anyway
  the top-up is ``loaded`` with ``refunded_fen > 0`` (``loaded_and_refunded``), recorded with
  ``N_LOADED_AND_REFUNDED`` for staff to recover the difference: a fact, never an error.
- **Refunds are totals.** ``Refund`` asks for the intent to be refunded up to an amount in
  total, and ``RefundSucceeded`` reports the total known refunded; a top-up is refunded only
  once the whole payment is covered (a partial refund at the dashboard is not the refund).

Amounts are integer fen; the currency is ``cny``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Final

from portal.errors import Code, PortalError

CURRENCY: Final = "cny"
TOPUP_ID_LEN_MAX: Final = 40  # the top-up id is clearing's load id (clearing.loads.LOAD_ID_LEN_MAX)
TOPUP_ID_SHAPE: Final = re.compile(r"tu_[0-9a-f]{32}")  # what ``topup_service.new_topup_id`` makes


def is_topup_id(value: object) -> bool:
    """Whether ``value`` has the shape of a top-up id we issue (``tu_`` + 32 lower-case hex).

    Checked before an id from outside (a URL, webhook metadata) reaches SQL: anything else is
    not ours, and a NUL or an over-long string never becomes a database error.
    """
    return isinstance(value, str) and TOPUP_ID_SHAPE.fullmatch(value) is not None


class State(StrEnum):
    CREATED = "created"  # row written, no payment intent known yet
    PAYMENT_PENDING = "payment_pending"  # intent created, waiting for the citizen to pay
    FAILED = "failed"  # the last payment attempt failed; the citizen may try again
    CANCELED = "canceled"  # never paid: intent canceled or the payment window passed
    PAID = "paid"  # payment succeeded; the pending load is being created
    LOAD_PENDING = "load_pending"  # clearing holds a pending load for the card
    LOADED = "loaded"  # the card took the load (clearing posted it)
    REFUND_REQUESTED = "refund_requested"  # load being voided, then the payment refunded
    REFUNDED = "refunded"  # paid back in full


OPEN_FOR_PAYMENT: Final = frozenset({State.CREATED, State.PAYMENT_PENDING, State.FAILED})
HOLDS_PAYMENT: Final = frozenset({State.PAID, State.LOAD_PENDING, State.LOADED, State.REFUND_REQUESTED, State.REFUNDED})
FINAL: Final = frozenset({State.LOADED, State.REFUNDED, State.CANCELED})


class RefundReason(StrEnum):
    CITIZEN = "citizen"  # asked for on the portal
    STAFF = "staff"  # a clerk in the staff console
    EXPIRED = "expired"  # not loaded within the load window (ours or clearing's expires_at)
    EXTERNAL = "external"  # refunded at the payment provider outside this flow


@dataclass(frozen=True, slots=True)
class UnmatchedPayment:
    payment_intent_id: str
    amount_fen: int
    refunded: bool = False  # refunded in full (``refunded_fen >= amount_fen``)
    refunded_fen: int = 0  # what the provider is known to have refunded of it so far


@dataclass(frozen=True, slots=True)
class Topup:
    topup_id: str
    card_id: str  # "<issuer_id>:<card_asn>", as clearing names the card
    amount_fen: int
    state: State = State.CREATED
    payment_intent_id: str | None = None  # before payment: the intent in use; after: the one that paid
    paid_fen: int = 0
    loaded_fen: int = 0
    refunded_fen: int = 0
    load_voided: bool = False
    refund_reason: RefundReason | None = None
    unmatched: tuple[UnmatchedPayment, ...] = ()

    def __post_init__(self) -> None:
        if not 0 < len(self.topup_id) <= TOPUP_ID_LEN_MAX:
            raise ValueError(f"a top-up id has 1..{TOPUP_ID_LEN_MAX} characters")
        if type(self.amount_fen) is not int or self.amount_fen <= 0:
            raise ValueError("a top-up moves a positive whole number of fen")
        _check_shape(self)


def new_topup(topup_id: str, card_id: str, amount_fen: int) -> tuple[Topup, list[Effect]]:
    """A new top-up (its amount already passed ``portal.limits.check_topup``) and its first effect."""
    topup = Topup(topup_id, card_id, amount_fen)
    return topup, due_effects(topup)


# --- events ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PaymentCreated:  # our create call answered
    payment_intent_id: str


@dataclass(frozen=True, slots=True)
class PaymentSucceeded:  # payment_intent.succeeded
    payment_intent_id: str
    amount_fen: int
    currency: str


@dataclass(frozen=True, slots=True)
class PaymentFailed:  # payment_intent.payment_failed
    payment_intent_id: str


@dataclass(frozen=True, slots=True)
class PaymentCanceled:  # payment_intent.canceled
    payment_intent_id: str


@dataclass(frozen=True, slots=True)
class PaymentWindowExpired:  # the portal's sweep: not paid in time
    pass


@dataclass(frozen=True, slots=True)
class LoadCreated:  # clearing.loads.create_pending answered
    pass


@dataclass(frozen=True, slots=True)
class LoadCompleted:  # clearing posted the load: the card holds it
    pass


@dataclass(frozen=True, slots=True)
class LoadVoided:  # clearing cancelled or expired the load: its reservation can never post
    pass


@dataclass(frozen=True, slots=True)
class RefundRequested:  # a command: refused unless the top-up holds an unloaded payment
    reason: RefundReason


@dataclass(frozen=True, slots=True)
class LoadWindowExpired:  # the portal's sweep: paid but not loaded within the load window
    pass


@dataclass(frozen=True, slots=True)
class RefundSucceeded:
    """The provider has refunded at least ``amount_fen`` of the intent **in total** (not one refund's part).

    From our refund call (the sum of the intent's succeeded refunds), ``charge.refunded``
    (``amount_refunded``) or ``refund.created``/``refund.updated`` (that refund's amount: a
    lower bound of the total). Applied as a maximum, so repeats and any order are harmless.
    """

    payment_intent_id: str
    amount_fen: int


Event = (
    PaymentCreated
    | PaymentSucceeded
    | PaymentFailed
    | PaymentCanceled
    | PaymentWindowExpired
    | LoadCreated
    | LoadCompleted
    | LoadVoided
    | RefundRequested
    | LoadWindowExpired
    | RefundSucceeded
)


# --- effects -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CreatePaymentIntent:  # Idempotency-Key: the top-up id
    topup_id: str
    card_id: str
    amount_fen: int


@dataclass(frozen=True, slots=True)
class CancelPaymentIntent:  # best effort: a payment that still lands is unmatched and refunded
    payment_intent_id: str


@dataclass(frozen=True, slots=True)
class CreateLoad:  # clearing.loads.create_pending(load_id=topup id, payment_ref=intent); idempotent
    load_id: str
    card_id: str
    amount_fen: int
    payment_intent_id: str


@dataclass(frozen=True, slots=True)
class CancelLoad:
    """Void the load so that it can never post; answers ``LoadVoided`` once it is so.

    The shell creates the load first if it does not exist yet (``create_pending`` is
    idempotent) and cancels it in the same transaction, so a ``CreateLoad`` still in flight
    finds the cancelled row and creates nothing. An *authorized* load may be on the card
    (``E_LOAD_IN_DOUBT``): no ``LoadVoided`` until clearing resolves it, one way or the other.
    """

    load_id: str
    card_id: str
    amount_fen: int
    payment_intent_id: str


@dataclass(frozen=True, slots=True)
class Refund:
    """Have ``amount_fen`` of the intent refunded **in total**: the shell refunds only what earlier refunds
    (succeeded or pending, ours or made at the provider) leave; Idempotency-Key "refund:<intent>"."""

    payment_intent_id: str
    amount_fen: int

    @property
    def idempotency_key(self) -> str:
        return f"refund:{self.payment_intent_id}"


@dataclass(frozen=True, slots=True)
class Notice:  # for the staff console: nothing refused, a person should look
    code: Code
    message: str


Effect = CreatePaymentIntent | CancelPaymentIntent | CreateLoad | CancelLoad | Refund | Notice


def due_effects(t: Topup) -> list[Effect]:
    """What the state still waits for; safe to issue again (a sweep after a crash calls this)."""
    effects: list[Effect] = []
    if t.state is State.CREATED:
        effects.append(CreatePaymentIntent(t.topup_id, t.card_id, t.amount_fen))
    elif t.state is State.PAID:
        assert t.payment_intent_id is not None
        effects.append(CreateLoad(t.topup_id, t.card_id, t.amount_fen, t.payment_intent_id))
    elif t.state is State.REFUND_REQUESTED:
        assert t.payment_intent_id is not None
        if not t.load_voided:
            effects.append(CancelLoad(t.topup_id, t.card_id, t.amount_fen, t.payment_intent_id))
        elif t.refunded_fen < t.paid_fen:
            effects.append(Refund(t.payment_intent_id, t.paid_fen))
    effects.extend(Refund(u.payment_intent_id, u.amount_fen) for u in t.unmatched if not u.refunded)
    return effects


def may_still_land_fen(t: Topup) -> int:
    """What this top-up may still put on the card: the portal's part of ``limits.check_topup``'s pending sum."""
    if t.state in OPEN_FOR_PAYMENT or t.state in (State.PAID, State.LOAD_PENDING):
        return t.amount_fen
    if t.state is State.REFUND_REQUESTED and not t.load_voided:
        return t.amount_fen
    return 0


def loaded_and_refunded(t: Topup) -> bool:
    """The one case where loads plus refunds exceed the payment: refunded at the provider, loaded all the same.

    The machine itself never refunds a load that may post (it refunds only after ``LoadVoided``),
    so this is always a refund made outside this flow (dashboard, support, a bank reversal)
    racing a card that met a reader first. It is recorded, not refused: the top-up is
    ``loaded`` with ``refunded_fen > 0`` and a ``N_LOADED_AND_REFUNDED`` notice asks staff to
    recover ``over_credited_fen`` (from the card's balance or from the citizen).
    """
    return t.state is State.LOADED and t.refunded_fen > 0


def over_credited_fen(t: Topup) -> int:
    """What went out beyond the payment: loaded and refunded both (0 unless ``loaded_and_refunded``)."""
    return max(0, t.loaded_fen + t.refunded_fen - t.paid_fen)


def money_ok(t: Topup) -> bool:
    """Loads plus refunds never exceed what the top-up's own payment brought in, refunds never exceed it
    at all, and the one exception (``loaded_and_refunded``: an outside refund raced the card) is recorded."""
    if t.refunded_fen > t.paid_fen:
        return False
    return t.loaded_fen + t.refunded_fen <= t.paid_fen or loaded_and_refunded(t)


# --- the transition function ------------------------------------------------------------


def apply(t: Topup, event: Event) -> tuple[Topup, list[Effect]]:
    """The next state and the effects to run (the transition's, then ``due_effects``).

    Commands refused: ``RefundRequested`` when nothing paid is left unloaded
    (``E_TOPUP_NOT_REFUNDABLE``). Every other event is a fact and is absorbed.
    """
    new, once = _step(t, event)
    new = _settle(new)
    _check_shape(new)
    return new, [*once, *due_effects(new)]


def _step(t: Topup, e: Event) -> tuple[Topup, list[Effect]]:
    match e:
        case PaymentCreated(pi):
            return _payment_created(t, pi)
        case PaymentSucceeded():
            return _payment_succeeded(t, e)
        case PaymentFailed(pi):
            if t.state in (State.CREATED, State.PAYMENT_PENDING) and t.payment_intent_id in (None, pi):
                return replace(t, state=State.FAILED, payment_intent_id=pi), []
            return t, []
        case PaymentCanceled(pi):
            if t.state in OPEN_FOR_PAYMENT and t.payment_intent_id in (None, pi):
                return replace(t, state=State.CANCELED, payment_intent_id=pi), []
            return t, []
        case PaymentWindowExpired():
            if t.state in OPEN_FOR_PAYMENT:
                once: list[Effect] = [] if t.payment_intent_id is None else [CancelPaymentIntent(t.payment_intent_id)]
                return replace(t, state=State.CANCELED), once
            return t, []
        case LoadCreated():
            return (replace(t, state=State.LOAD_PENDING), []) if t.state is State.PAID else (t, [])
        case LoadCompleted():
            return _load_completed(t)
        case LoadVoided():
            return _load_voided(t)
        case RefundRequested(reason):
            if t.state in (State.PAID, State.LOAD_PENDING):
                return replace(t, state=State.REFUND_REQUESTED, refund_reason=reason), []
            if t.state is State.REFUND_REQUESTED:
                return t, []
            raise PortalError(Code.E_TOPUP_NOT_REFUNDABLE, f"top-up {t.topup_id} is {t.state}: nothing to refund")
        case LoadWindowExpired():
            if t.state in (State.PAID, State.LOAD_PENDING):
                return replace(t, state=State.REFUND_REQUESTED, refund_reason=RefundReason.EXPIRED), []
            return t, []
        case RefundSucceeded():
            return _refund_succeeded(t, e)
    raise AssertionError(f"unknown event {e!r}")  # pragma: no cover - the match is exhaustive


def _payment_created(t: Topup, pi: str) -> tuple[Topup, list[Effect]]:
    if t.state in OPEN_FOR_PAYMENT:
        # The newest intent is the one the browser is given; a payment on an older one still
        # counts if it is the first to succeed (``_payment_succeeded``).
        state = State.PAYMENT_PENDING if t.state is State.CREATED else t.state
        return replace(t, state=state, payment_intent_id=pi), []
    if t.state is State.CANCELED and pi != t.payment_intent_id:
        return t, [CancelPaymentIntent(pi)]  # an intent created after the top-up was given up
    return t, []


def _payment_succeeded(t: Topup, e: PaymentSucceeded) -> tuple[Topup, list[Effect]]:
    matches = e.amount_fen == t.amount_fen and e.currency == CURRENCY
    if any(u.payment_intent_id == e.payment_intent_id for u in t.unmatched):
        # A repeat of one already set aside (and being refunded), even if it now reads as matching
        # (the provider's ``amount`` after a short ``amount_received``): never loaded as well.
        return t, []
    if matches and t.state in OPEN_FOR_PAYMENT:
        return replace(t, state=State.PAID, payment_intent_id=e.payment_intent_id, paid_fen=e.amount_fen), []
    if t.state in HOLDS_PAYMENT and e.payment_intent_id == t.payment_intent_id:
        return t, []  # a repeat of the payment we hold
    why = "amount or currency differs" if not matches else f"the top-up is {t.state}"
    notice = Notice(Code.N_PAYMENT_UNMATCHED, f"top-up {t.topup_id}: payment {e.payment_intent_id} refunded ({why})")
    unmatched = UnmatchedPayment(e.payment_intent_id, e.amount_fen)
    return replace(t, unmatched=(*t.unmatched, unmatched)), [notice]


def _load_completed(t: Topup) -> tuple[Topup, list[Effect]]:
    if t.state in (State.PAID, State.LOAD_PENDING):
        return replace(t, state=State.LOADED, loaded_fen=t.amount_fen), []
    if t.state is State.REFUND_REQUESTED and not t.load_voided and t.refunded_fen > 0:
        # Refunded at the provider before the load could be voided, and the card took it first.
        loaded = replace(t, state=State.LOADED, loaded_fen=t.amount_fen)
        return loaded, [_loaded_and_refunded(loaded)]
    if t.state is State.REFUND_REQUESTED and not t.load_voided:
        notice = Notice(Code.N_LOADED_BEFORE_REFUND, f"top-up {t.topup_id}: the card took the load; refund dropped")
        return replace(t, state=State.LOADED, loaded_fen=t.amount_fen), [notice]
    if t.state is State.LOADED:
        return t, []
    return t, [Notice(Code.N_UNEXPECTED_EVENT, f"top-up {t.topup_id}: load completed while {t.state}")]


def _load_voided(t: Topup) -> tuple[Topup, list[Effect]]:
    if t.state is State.REFUND_REQUESTED:
        return replace(t, load_voided=True), []
    if t.state in (State.PAID, State.LOAD_PENDING):  # clearing's own expires_at passed
        return replace(t, state=State.REFUND_REQUESTED, refund_reason=RefundReason.EXPIRED, load_voided=True), []
    if t.state is State.LOADED:
        return t, [Notice(Code.N_UNEXPECTED_EVENT, f"top-up {t.topup_id}: load voided after it posted")]
    return t, []


def _refund_succeeded(t: Topup, e: RefundSucceeded) -> tuple[Topup, list[Effect]]:
    for i, u in enumerate(t.unmatched):
        if u.payment_intent_id == e.payment_intent_id:
            total = max(u.refunded_fen, e.amount_fen)
            if total == u.refunded_fen:
                return t, []  # a repeat, or an older total
            settled_u = replace(u, refunded_fen=total, refunded=total >= u.amount_fen)
            return replace(t, unmatched=(*t.unmatched[:i], settled_u, *t.unmatched[i + 1 :])), []
    ours = e.payment_intent_id == t.payment_intent_id and t.state in HOLDS_PAYMENT
    if not ours:
        return t, [_unexpected(t, "refund")]
    total = max(t.refunded_fen, e.amount_fen)
    if total == t.refunded_fen:
        return t, []  # a repeat, or an older total
    if total > t.paid_fen:
        return t, [_unexpected(t, f"a refund of {total} fen of {t.paid_fen} paid")]
    if t.state is State.REFUND_REQUESTED:
        return replace(t, refunded_fen=total), []
    if t.state in (State.PAID, State.LOAD_PENDING):
        # Refunded at the provider outside this flow: stop the load before the card takes it.
        stopped = replace(t, state=State.REFUND_REQUESTED, refund_reason=RefundReason.EXTERNAL, refunded_fen=total)
        return stopped, [_unexpected(t, "refund")]
    if t.state is State.LOADED:
        # Refunded at the provider after the card took the load: recorded for staff recovery.
        both = replace(t, refunded_fen=total, refund_reason=t.refund_reason or RefundReason.EXTERNAL)
        return both, [_loaded_and_refunded(both)]
    return t, [_unexpected(t, "refund")]  # refunded: more refunded than our own refund said


def _loaded_and_refunded(t: Topup) -> Notice:
    return Notice(
        Code.N_LOADED_AND_REFUNDED,
        f"top-up {t.topup_id}: loaded on the card and refunded {t.refunded_fen} fen at the provider; "
        f"{over_credited_fen(t)} fen to recover",
    )


def _unexpected(t: Topup, what: str) -> Notice:
    return Notice(Code.N_UNEXPECTED_EVENT, f"top-up {t.topup_id}: {what} while {t.state}")


def _settle(t: Topup) -> Topup:
    """A refund requested, the load voided and the payment refunded: the top-up is refunded."""
    if t.state is State.REFUND_REQUESTED and t.load_voided and t.refunded_fen >= t.paid_fen:
        return replace(t, state=State.REFUNDED)
    return t


def _check_shape(t: Topup) -> None:
    """What every state implies about the money fields (asserted after each transition)."""
    assert t.paid_fen in (0, t.amount_fen), t
    assert t.loaded_fen in (0, t.amount_fen), t
    assert t.refunded_fen >= 0, t
    assert (t.paid_fen > 0) == (t.state in HOLDS_PAYMENT), t
    assert (t.loaded_fen > 0) == (t.state is State.LOADED), t
    assert t.state not in HOLDS_PAYMENT or t.payment_intent_id is not None, t
    assert t.state is not State.REFUNDED or (t.load_voided and t.refunded_fen >= t.paid_fen), t
    assert not t.load_voided or t.state in (State.REFUND_REQUESTED, State.REFUNDED), t


__all__ = [
    "CURRENCY",
    "CancelLoad",
    "CancelPaymentIntent",
    "CreateLoad",
    "CreatePaymentIntent",
    "Effect",
    "Event",
    "LoadCompleted",
    "LoadCreated",
    "LoadVoided",
    "LoadWindowExpired",
    "Notice",
    "PaymentCanceled",
    "PaymentCreated",
    "PaymentFailed",
    "PaymentSucceeded",
    "PaymentWindowExpired",
    "Refund",
    "RefundReason",
    "RefundRequested",
    "RefundSucceeded",
    "State",
    "Topup",
    "UnmatchedPayment",
    "apply",
    "due_effects",
    "is_topup_id",
    "loaded_and_refunded",
    "may_still_land_fen",
    "money_ok",
    "new_topup",
    "over_credited_fen",
]
