"""The imperative shell of the top-up flow: database, outbox, payment API and clearing around ``portal.topups``.

``docs/portal.md``, "What the shell must do", is the contract; this module keeps it:

- **One transaction per event.** The top-up row is locked, ``topups.apply`` answers the new
  state and the effects, and the state and the effects (``portal_outbox``) are written in
  that transaction. A webhook's event id is recorded in it too (``portal_webhook_events``),
  so a repeated delivery finds it and moves nothing.
- **Effects run after commit** (``run_outbox``), each to an idempotent receiver, and each
  answer is applied as a new event in its own transaction, which also marks the outbox row
  done. An effect that fails stays due (attempts and last error recorded) and is run again.
- **An effect the top-up no longer waits for is not run.** Before it runs, a due-kind effect
  (create intent, create load, cancel load, refund) is compared with ``topups.due_effects``
  of the state as it is now: a webhook may have overtaken it (``payment_intent.succeeded``
  before our own create call's answer was applied), and running it anyway would, say, make
  a second intent at a provider that ignores Idempotency-Key (localstripe).
- **Clearing's side of an effect is in the same transaction as its answer.** The pending
  load is created (``clearing.loads.create_pending``, load id = top-up id, payment reference
  = the intent) in the transaction that applies ``LoadCreated`` and marks the effect done,
  because both live in the one database: a crash leaves both or neither. Its ``expires_at`` is
  the end of the load window (``load_window_s``), so clearing refuses the load when the portal
  would refund it (``docs/portal.md``, "Sweep").
- **A call to the payment service is leased.** Before an effect that calls the provider runs
  (create or cancel an intent, refund), the runner takes a lease on it in the transaction that
  checks it is still due: a row ``portal_outbox_lease:<outbox id>`` of clearing's ``counters``
  holding the lease's end (epoch ms). Another runner (the webhook's background task, a sweep,
  a second sweep) finds the lease and skips the effect, so localstripe, which ignores
  Idempotency-Key, is never asked to refund twice at once. The lease goes with the effect's
  answer (same transaction) or with a recorded failure; a runner that crashed holding one
  leaves it to expire (``lease_s``), and the next run asks the provider what is already done
  (``refund_once`` lists the intent's refunds first).

The payer of a top-up's load is clearing's payment gateway receivable
(``clearing.accounts.gateway_receivable``, ``system:gateway_receivable``): the money the
provider collected for us and has yet to pay out. It is ``create_pending``'s default for a
load with a payment reference, and nothing is posted until the card takes the load.

``create_topup`` trusts the card it is given: ``portal.api`` puts a ``CsrfCitizen`` and the
card's binding in front of it, and ``limit_creation`` (per citizen, per client IP) before it.
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Final, Literal

from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from clearing import loads as clearing_loads
from clearing.db import conflict_insert, lock_for_update
from clearing.errors import ClearingError
from clearing.models import Card, CardStatus, Counter, LoadState, PendingLoad
from portal import topups, webhooks
from portal.errors import Code, PortalError
from portal.limits import TopupLimits, check_topup
from portal.models import PortalOutbox, PortalTopup, PortalWebhookEvent
from portal.payments import PaymentsClient
from portal.ratelimit import MemoryLimiter, RateLimiter, Rule

log = logging.getLogger(__name__)

TOPUP_ID_PREFIX: Final = "tu_"
OUTBOX_BATCH_MAX: Final = 100  # effects one ``run_outbox`` call takes on
ERROR_CHARS_MAX: Final = 500
LEASE_S_DEFAULT: Final = 120  # well past the payment client's timeout (10 s): a live call never outlasts it
LEASE_PREFIX: Final = "portal_outbox_lease:"
LEASE_TOKEN_SPREAD: Final = 1000
_CREATE_PER_CITIZEN: Final = Rule(20, 60 * 60)
_CREATE_PER_IP: Final = Rule(100, 60 * 60)

_KIND_OF: Final[dict[type[topups.Effect], str]] = {
    topups.CreatePaymentIntent: "create_payment_intent",
    topups.CancelPaymentIntent: "cancel_payment_intent",
    topups.CreateLoad: "create_load",
    topups.CancelLoad: "cancel_load",
    topups.Refund: "refund",
    topups.Notice: "notice",
}
_TYPE_OF: Final = {kind: cls for cls, kind in _KIND_OF.items()}
# Effects that are ``due_effects`` of a state: run only while the state still waits for them.
_DUE_KINDS: Final = frozenset({"create_payment_intent", "create_load", "cancel_load", "refund"})
# Effects that call the payment service outside any transaction: leased while they run.
_LEASED_KINDS: Final = frozenset({"create_payment_intent", "cancel_payment_intent", "refund"})


def new_topup_id() -> str:
    """``tu_`` + 128 random bits in hex (35 characters): unguessable, as the top-up id is shown to the browser."""
    topup_id = TOPUP_ID_PREFIX + secrets.token_hex(16)
    assert len(topup_id) <= topups.TOPUP_ID_LEN_MAX and topups.is_topup_id(topup_id)
    return topup_id


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True, slots=True)
class TopupView:
    """What the API shows of a top-up (``client_secret`` only to the request that created the intent)."""

    topup_id: str
    issuer_id: str
    card_asn: str
    amount_fen: int
    state: str
    payment_intent_id: str | None
    paid_fen: int
    loaded_fen: int
    refunded_fen: int
    client_secret: str | None = None


WebhookOutcome = Literal["applied", "duplicate", "ignored"]


@dataclass(frozen=True, slots=True)
class TopupRateLimits:
    """Top-up creation per citizen and per client IP (settings ``portal_topup_per_*_max``)."""

    per_citizen: Rule = _CREATE_PER_CITIZEN
    per_ip: Rule = _CREATE_PER_IP


# The sweep decides under the row lock which event (if any) a top-up is due (``portal.sweep``).
Decide = Callable[[Session, PortalTopup, topups.Topup], topups.Event | None]


@dataclass
class TopupService:
    """Built once by the composition root (``yikatong.app``) or by a test."""

    sessions: sessionmaker[Session]
    payments: PaymentsClient
    webhook_secrets: Sequence[str]
    limits: TopupLimits = field(default_factory=TopupLimits)
    webhook_tolerance_s: int = webhooks.TOLERANCE_S_DEFAULT
    clock: Callable[[], dt.datetime] = _utcnow
    new_id: Callable[[], str] = new_topup_id
    # The load window: clearing's ``expires_at`` of a top-up's load (None: no expiry in clearing).
    load_window_s: int | None = None
    limiter: RateLimiter = field(default_factory=MemoryLimiter)
    rate_limits: TopupRateLimits = field(default_factory=TopupRateLimits)
    lease_s: int = LEASE_S_DEFAULT

    def __post_init__(self) -> None:
        if not self.webhook_secrets or any(not s for s in self.webhook_secrets):
            raise ValueError("the webhook route needs at least one non-empty endpoint secret")
        assert self.load_window_s is None or self.load_window_s > 0
        assert self.lease_s > 0

    @contextmanager
    def _tx(self) -> Iterator[Session]:
        with self.sessions() as session, session.begin():
            yield session

    # --- create ---------------------------------------------------------------------------

    def limit_creation(self, citizen_id: int, client_ip: str) -> None:
        """``429 E_RATE_LIMITED`` past the top-up creation limits (each attempt counts, refused or not)."""
        for key, rule in ((f"topup:citizen:{citizen_id}", self.rate_limits.per_citizen),
                          (f"topup:ip:{client_ip}", self.rate_limits.per_ip)):  # fmt: skip
            if not self.limiter.hit(key, rule):
                log.info("rate limit reached: %s", key.rsplit(":", 1)[0])
                raise PortalError(Code.E_RATE_LIMITED, f"too many top-ups; try again in {int(rule.window_s)} s at most")

    def create_topup(self, issuer_id: str, card_asn: str, amount_fen: object) -> TopupView:
        """Check the limits against what clearing holds for the card, write the top-up, create its intent.

        The intent is created after commit (the outbox), here in the request so the browser
        gets its client secret; if the payment service is down the top-up stays ``created``
        with the effect due, and the answer says so by its state.
        """
        issuer_id, card_asn = issuer_id.lower(), card_asn.lower()
        with self._tx() as session:
            lock_for_update(session)  # SQLite: serialise top-ups of a card as FOR UPDATE does on PostgreSQL
            card = session.execute(
                select(Card).where(Card.issuer_id == issuer_id, Card.card_asn == card_asn).with_for_update()
            ).scalar_one_or_none()
            if card is None:
                raise PortalError(Code.E_CARD_NOT_FOUND, "no card with this issuer and ASN is registered")
            if card.status != CardStatus.ACTIVE.value:
                raise PortalError(Code.E_CARD_NOT_TOPPABLE, f"the card is {card.status}: it takes no top-up")
            amount = check_topup(
                amount_fen,
                self.limits,
                registered=card.holder_name is not None,
                shadow_balance_fen=card.shadow_balance_fen,
                pending_fen=self._pending_fen(session, issuer_id, card_asn),
            )
            topup, effects = topups.new_topup(self.new_id(), f"{issuer_id}:{card_asn}", amount)
            row = PortalTopup(topup_id=topup.topup_id, issuer_id=issuer_id, card_asn=card_asn, created_at=self.clock())
            session.add(row)
            self._write(session, row, topup, effects)
        secret = self.run_outbox(topup.topup_id)
        return self.view(topup.topup_id, client_secret=secret)

    def _pending_fen(self, session: Session, issuer_id: str, card_asn: str) -> int:
        """What may still land on the card, each load once: clearing's open loads that are not
        our top-ups, plus ``may_still_land_fen`` of each of the card's top-ups (``docs/portal.md``)."""
        rows = session.execute(
            select(PortalTopup).where(
                PortalTopup.issuer_id == issuer_id,
                PortalTopup.card_asn == card_asn,
                PortalTopup.state.not_in([s.value for s in topups.FINAL]),
            )
        ).scalars()
        ours = {row.topup_id: topups.may_still_land_fen(_topup_of(row)) for row in rows}
        theirs = sum(
            load.amount_fen for load in clearing_loads.for_card(session, issuer_id, card_asn).loads
            if load.load_id not in ours
        )  # fmt: skip
        return theirs + sum(ours.values())

    def view(self, topup_id: str, *, client_secret: str | None = None) -> TopupView:
        with self.sessions() as session:
            row = session.get(PortalTopup, topup_id) if topups.is_topup_id(topup_id) else None
            if row is None:
                raise PortalError(Code.E_TOPUP_NOT_FOUND, "no top-up with this id")
            return TopupView(
                row.topup_id,
                row.issuer_id,
                row.card_asn,
                row.amount_fen,
                row.state,
                row.payment_intent_id,
                row.paid_fen,
                row.loaded_fen,
                row.refunded_fen,
                client_secret,
            )

    def request_refund(self, topup_id: str, reason: topups.RefundReason) -> TopupView:
        """A command (citizen: ``POST /api/topups/{id}/refund``; clerk): void the load, then refund the payment.

        Refused with ``E_TOPUP_NOT_REFUNDABLE`` unless the top-up holds a payment not loaded.
        The effects (``CancelLoad``, then ``Refund``) run before this answers.
        """
        with self._tx() as session:
            row = self._locked(session, topup_id)
            if row is None:
                raise PortalError(Code.E_TOPUP_NOT_FOUND, "no top-up with this id")
            self._apply(session, row, topups.RefundRequested(reason))
        self.run_outbox(topup_id)
        return self.view(topup_id)

    # --- the sweep's seams (``portal.sweep`` decides, this writes) -------------------------

    def sweep_apply(self, topup_id: str, decide: Decide) -> topups.Event | None:
        """Lock the top-up, ask ``decide`` (under the lock, so on current state) and apply its event.

        One transaction, as for a webhook: the state and the effects are written together, so a
        crash leaves either both or neither. Answers the event applied (None: nothing was due).
        """
        with self._tx() as session:
            lock_for_update(session)  # SQLite: read the load and the row current, as FOR UPDATE does
            row = self._locked(session, topup_id)
            if row is None:
                return None
            event = decide(session, row, _topup_of(row))
            if event is not None:
                self._apply(session, row, event)
            return event

    def requeue_due(self, topup_id: str) -> int:
        """Write the ``due_effects`` the outbox does not hold (state untouched); answer how many."""
        with self._tx() as session:
            row = self._locked(session, topup_id)
            if row is None:
                return 0
            t = _topup_of(row)
            return self._add_effects(session, t.topup_id, topups.due_effects(t))

    # --- webhooks -------------------------------------------------------------------------

    def apply_webhook(self, body: bytes, signature_header: str | None) -> WebhookOutcome:
        """Verify, dedupe and apply one webhook delivery (raises ``PortalError`` only for refusals).

        Effects are not run here; the route runs ``run_outbox`` after answering.
        """
        now_s = int(self.clock().timestamp())
        event = webhooks.verify_and_decode(
            body, signature_header, self.webhook_secrets, now_s=now_s, tolerance_s=self.webhook_tolerance_s
        )
        if not (webhooks.is_plain_id(event.id) and webhooks.is_plain_id(event.type)):
            # Not an id any provider makes (a NUL, a space, over 255 characters): nothing to record or
            # dedupe by, and no reason for the provider to retry. Checked before any SQL.
            log.info("webhook with an event id or type of no provider's shape: ignored")
            return "ignored"
        mapped = webhooks.topup_event(event)
        with self._tx() as session:
            row = None
            if mapped is not None:
                row = self._row_of_event(session, *mapped)
            if not self._record_event(session, event, row.topup_id if row is not None else None):
                return "duplicate"
            if mapped is None:
                return "ignored"
            if row is None:
                log.info("webhook %s names no top-up of ours", event.id)
                return "ignored"
            self._apply(session, row, mapped[1])
        return "applied"

    def _row_of_event(self, session: Session, topup_id: str | None, event: topups.Event) -> PortalTopup | None:
        """The top-up a webhook event is for, locked: by ``metadata.topup_id``, else (a refund made in the
        provider's dashboard carries none) by the intent that paid it."""
        if topup_id is not None:
            return self._locked(session, topup_id)
        pi = getattr(event, "payment_intent_id", None)
        if pi is None:
            return None
        stmt = select(PortalTopup).where(PortalTopup.payment_intent_id == pi).with_for_update()
        return session.execute(stmt.limit(1)).scalar_one_or_none()

    def _record_event(self, session: Session, event: webhooks.Event, topup_id: str | None) -> bool:
        """Insert the event id; False if it was there already (a repeat delivery)."""
        insert = conflict_insert(session.get_bind().dialect.name)
        stmt = (
            insert(PortalWebhookEvent)
            .values(event_id=event.id, event_type=event.type[:64], topup_id=topup_id, received_at=self.clock())
            .on_conflict_do_nothing()
            .returning(PortalWebhookEvent.event_id)
        )
        return session.execute(stmt).scalar_one_or_none() is not None

    # --- state and outbox -----------------------------------------------------------------

    def _locked(self, session: Session, topup_id: str) -> PortalTopup | None:
        if not topups.is_topup_id(topup_id):
            return None
        stmt = select(PortalTopup).where(PortalTopup.topup_id == topup_id).with_for_update()
        return session.execute(stmt).scalar_one_or_none()

    def _apply(self, session: Session, row: PortalTopup, event: topups.Event) -> topups.Topup:
        old = _topup_of(row)
        new, effects = topups.apply(old, event)
        self._write(session, row, new, effects)
        if new.state is topups.State.REFUNDED and old.state is not topups.State.REFUNDED:
            _mark_load_refunded(session, new.topup_id)  # by our refund, or one made at the provider
        return new

    def _write(self, session: Session, row: PortalTopup, t: topups.Topup, effects: list[topups.Effect]) -> None:
        """The state onto the row and the effects into the outbox, skipping one identical to a row still due."""
        assert topups.money_ok(t), t
        row.amount_fen = t.amount_fen
        row.state = t.state.value
        row.payment_intent_id = t.payment_intent_id
        row.paid_fen, row.loaded_fen, row.refunded_fen = t.paid_fen, t.loaded_fen, t.refunded_fen
        row.load_voided = t.load_voided
        row.refund_reason = t.refund_reason.value if t.refund_reason is not None else None
        row.unmatched = [asdict(u) for u in t.unmatched]
        row.updated_at = self.clock()
        session.flush()
        self._add_effects(session, t.topup_id, effects)

    def _add_effects(self, session: Session, topup_id: str, effects: list[topups.Effect]) -> int:
        due = {
            (o.kind, _key(o.payload))
            for o in session.execute(
                select(PortalOutbox).where(PortalOutbox.topup_id == topup_id, PortalOutbox.done_at.is_(None))
            ).scalars()
        }
        added = 0
        for effect in effects:
            kind, payload = _KIND_OF[type(effect)], _payload(effect)
            if (kind, _key(payload)) in due:
                continue
            due.add((kind, _key(payload)))
            session.add(
                PortalOutbox(topup_id=topup_id, kind=kind, payload=payload, created_at=self.clock(), attempts=0)
            )
            added += 1
        session.flush()
        return added

    def run_outbox(self, topup_id: str | None = None, *, batch_max: int = OUTBOX_BATCH_MAX) -> str | None:
        """Run the effects still due (of one top-up, or of all), oldest first; answer a new intent's client secret.

        Safe to run concurrently and repeatedly: every receiver dedupes, a provider call is
        leased (module docstring) and every answer is applied through the state machine.
        Failures are recorded on the row, never raised.
        """
        return self.run_effects(topup_id, batch_max=batch_max)[0]

    def run_effects(
        self, topup_id: str | None = None, *, batch_max: int = OUTBOX_BATCH_MAX, older_than: dt.datetime | None = None
    ) -> tuple[str | None, int]:
        """``run_outbox``, answering also how many effects it tried; ``older_than`` skips newer effects.

        Across all top-ups, effects that failed before go after fresh ones (``attempts``, then
        age), so a few effects failing for ever never starve the rest of a bounded batch. The
        sweep passes ``older_than``: an effect just written is its request's to run (a new
        intent's client secret goes to the browser that asked).
        """
        secret: str | None = None
        tried: set[int] = set()  # each effect once per call: one that fails waits for the next call
        while len(tried) < batch_max:
            with self.sessions() as session:
                stmt = select(PortalOutbox.id).where(PortalOutbox.done_at.is_(None))
                if topup_id is not None:
                    stmt = stmt.where(PortalOutbox.topup_id == topup_id).order_by(PortalOutbox.id)
                else:
                    stmt = stmt.order_by(PortalOutbox.attempts, PortalOutbox.id)
                if older_than is not None:
                    stmt = stmt.where(PortalOutbox.created_at <= older_than)
                ids = [i for i in session.execute(stmt.limit(batch_max)).scalars() if i not in tried]
            if not ids:
                break  # nothing new: answers that wrote further effects (a void, then its refund) are run too
            for outbox_id in ids[: batch_max - len(tried)]:
                tried.add(outbox_id)
                try:
                    got = self._run_one(outbox_id)
                except (PortalError, ClearingError) as exc:
                    self._failed(outbox_id, f"{exc.code}: {exc.message}")
                except Exception as exc:  # one effect's fault must not stop the others; recorded
                    log.exception("outbox effect %s failed", outbox_id)
                    self._failed(outbox_id, f"{type(exc).__name__}")
                else:
                    secret = got or secret
        return secret, len(tried)

    def _run_one(self, outbox_id: int) -> str | None:
        with self._tx() as session:
            lock_for_update(session)  # SQLite: the lease below is read and taken on current data
            item = session.get(PortalOutbox, outbox_id)
            if item is None or item.done_at is not None:
                return None
            row = self._locked(session, item.topup_id)
            assert row is not None, f"outbox {outbox_id} names a top-up that does not exist"
            effect = _effect_of(item.kind, item.payload)
            if item.kind in _DUE_KINDS and effect not in topups.due_effects(_topup_of(row)):
                item.done_at = self.clock()  # overtaken: the state no longer waits for it
                return None
            if isinstance(effect, topups.Notice):
                log.warning("%s: %s", effect.code.value, effect.message)  # the staff console reads the outbox
                item.done_at = self.clock()
                return None
            if isinstance(effect, topups.CreateLoad | topups.CancelLoad):
                self._apply(session, row, _clearing_load(session, row, effect, self._load_expiry()))
                item.done_at = self.clock()
                return None
            assert item.kind in _LEASED_KINDS, item.kind
            lease = self._lease(session, outbox_id)
            if lease is None:
                return None  # another runner is calling the provider for this effect right now
        try:
            return self._call_provider(outbox_id, item.topup_id, effect, lease)
        except BaseException:
            self._release_after_failure(outbox_id, lease)
            raise

    def _call_provider(self, outbox_id: int, topup_id: str, effect: topups.Effect, lease: int) -> str | None:
        """The payment service: called outside any transaction, its answer applied in a new one."""
        secret: str | None = None
        answer: topups.Event | None = None
        if isinstance(effect, topups.CreatePaymentIntent):
            intent = self.payments.create_intent(
                topup_id=effect.topup_id, card_id=effect.card_id, amount_fen=effect.amount_fen
            )
            answer, secret = topups.PaymentCreated(intent.id), intent.client_secret
        elif isinstance(effect, topups.CancelPaymentIntent):
            answer = self._cancel_intent(topup_id, effect.payment_intent_id)
        elif isinstance(effect, topups.Refund):
            total = self.payments.refund_once(
                payment_intent_id=effect.payment_intent_id,
                amount_fen=effect.amount_fen,
                idempotency_key=effect.idempotency_key,
                topup_id=topup_id,
            )
            if total.succeeded_fen < effect.amount_fen:
                why = f"{total.succeeded_fen} of {effect.amount_fen} fen refunded, {total.pending_fen} pending"
                raise PortalError(Code.E_PAYMENTS_UNAVAILABLE, why)
            answer = topups.RefundSucceeded(effect.payment_intent_id, total.succeeded_fen)
        with self._tx() as session:
            item = session.get(PortalOutbox, outbox_id)
            assert item is not None
            if item.done_at is not None:
                _release(session, outbox_id, lease)
                return secret  # another runner applied the same answer first (after our lease ran out)
            row = self._locked(session, item.topup_id)
            assert row is not None
            if answer is not None:
                self._apply(session, row, answer)
            item.done_at = self.clock()
            _release(session, outbox_id, lease)
        return secret

    def _release_after_failure(self, outbox_id: int, lease: int) -> None:
        try:
            with self._tx() as session:
                _release(session, outbox_id, lease)
        except Exception:  # the lease runs out by itself
            log.exception("could not release the lease of outbox effect %s", outbox_id)

    def _cancel_intent(self, topup_id: str, payment_intent_id: str) -> topups.Event | None:
        """Cancel, best effort; its webhook brings the news. One the provider will not cancel is looked at:
        a payment that succeeded meanwhile (its webhook maybe lost) is answered, so it is refunded, not kept."""
        try:
            self.payments.cancel_intent(payment_intent_id)
            return None
        except PortalError as exc:
            if exc.code is Code.E_PAYMENT_NOT_FOUND:
                return None  # nothing to cancel
            if exc.code is not Code.E_PAYMENTS_REFUSED:
                raise  # unavailable: stays due
        intent = self.payments.retrieve_intent(payment_intent_id)
        if intent.status == "succeeded" and intent.metadata.get(webhooks.METADATA_TOPUP_ID) == topup_id:
            return topups.PaymentSucceeded(intent.id, intent.amount, intent.currency)
        return None  # canceled already, or in a state that cannot be canceled nor paid

    def _load_expiry(self) -> dt.datetime | None:
        return None if self.load_window_s is None else self.clock() + dt.timedelta(seconds=self.load_window_s)

    def _lease(self, session: Session, outbox_id: int) -> int | None:
        """Take the effect's lease (module docstring): answer its token, or None while another runner holds it.

        The token is the lease's end in milliseconds times 1000 plus a random 0..999, so only
        the runner that took a lease releases it.
        """
        now_ms = int(self.clock().timestamp() * 1000)
        token = (now_ms + self.lease_s * 1000) * LEASE_TOKEN_SPREAD + secrets.randbelow(LEASE_TOKEN_SPREAD)
        name = f"{LEASE_PREFIX}{outbox_id}"
        insert = conflict_insert(session.get_bind().dialect.name)
        stmt = insert(Counter).values(name=name, value=token).on_conflict_do_nothing().returning(Counter.name)
        if session.execute(stmt).scalar_one_or_none() is not None:
            return token
        held = session.execute(select(Counter).where(Counter.name == name).with_for_update()).scalar_one()
        if held.value // LEASE_TOKEN_SPREAD > now_ms:
            return None
        held.value = token  # the runner that held it crashed: the provider is asked what it did
        return token

    def _failed(self, outbox_id: int, why: str) -> None:
        try:
            with self._tx() as session:
                item = session.get(PortalOutbox, outbox_id)
                if item is not None:
                    item.attempts += 1
                    item.last_error = why[:ERROR_CHARS_MAX]
        except Exception:  # the effect stays due either way; only the note is lost
            log.exception("could not record the failure of outbox effect %s", outbox_id)


# --- clearing's side ---------------------------------------------------------------------


def _release(session: Session, outbox_id: int, lease: int) -> None:
    """Drop the lease if it is still this runner's (one that ran out may have been taken over)."""
    session.execute(delete(Counter).where(Counter.name == f"{LEASE_PREFIX}{outbox_id}", Counter.value == lease))


def _clearing_load(
    session: Session,
    row: PortalTopup,
    effect: topups.CreateLoad | topups.CancelLoad,
    expires_at: dt.datetime | None = None,
) -> topups.Event:
    """Create (and for ``CancelLoad`` then cancel) the pending load; answer what its row's state means.

    ``CancelLoad`` creates first (idempotent) so a ``CreateLoad`` still in flight finds a
    cancelled row and creates nothing. An authorized load may be on the card: clearing
    refuses to cancel it (``E_LOAD_IN_DOUBT``) and the effect stays due until clearing
    resolves it from the card.
    """
    load = clearing_loads.create_pending(
        session,
        effect.load_id,
        row.issuer_id,
        row.card_asn,
        effect.amount_fen,
        payment_ref=effect.payment_intent_id,
        expires_at=expires_at,
    )
    if isinstance(effect, topups.CancelLoad) and load.state == LoadState.PENDING.value:
        load = clearing_loads.cancel(session, effect.load_id)
    if isinstance(effect, topups.CancelLoad) and load.state == LoadState.AUTHORIZED.value:
        clearing_loads.cancel(session, effect.load_id)  # raises E_LOAD_IN_DOUBT: kept due
    return event_of_load(load.state)


def event_of_load(state: str) -> topups.Event:
    """What a clearing load row's state tells the top-up: created, completed (posted) or voided."""
    if state in (LoadState.PENDING.value, LoadState.AUTHORIZED.value):
        return topups.LoadCreated()
    if state == LoadState.POSTED.value:
        return topups.LoadCompleted()
    assert state in (LoadState.CANCELLED.value, LoadState.EXPIRED.value, LoadState.REFUNDED.value), state
    return topups.LoadVoided()


def _mark_load_refunded(session: Session, load_id: str) -> None:
    load = session.get(PendingLoad, load_id)
    if load is not None and load.state in (LoadState.CANCELLED.value, LoadState.EXPIRED.value):
        clearing_loads.mark_refunded(session, load_id)


# --- rows, effects and payloads ----------------------------------------------------------


def topup_of(row: PortalTopup) -> topups.Topup:
    """The persisted row as the state machine's ``Topup``."""
    return _topup_of(row)


def _topup_of(row: PortalTopup) -> topups.Topup:
    return topups.Topup(
        topup_id=row.topup_id,
        card_id=f"{row.issuer_id}:{row.card_asn}",
        amount_fen=row.amount_fen,
        state=topups.State(row.state),
        payment_intent_id=row.payment_intent_id,
        paid_fen=row.paid_fen,
        loaded_fen=row.loaded_fen,
        refunded_fen=row.refunded_fen,
        load_voided=row.load_voided,
        refund_reason=topups.RefundReason(row.refund_reason) if row.refund_reason is not None else None,
        unmatched=tuple(
            topups.UnmatchedPayment(
                str(u["payment_intent_id"]),
                int(u["amount_fen"]),
                bool(u["refunded"]),
                int(u.get("refunded_fen", u["amount_fen"] if u["refunded"] else 0)),  # rows before refunded_fen
            )
            for u in row.unmatched
        ),
    )


def _payload(effect: topups.Effect) -> dict[str, Any]:
    data = asdict(effect)
    if isinstance(effect, topups.Notice):
        data["code"] = effect.code.value
    return data


def _effect_of(kind: str, payload: dict[str, Any]) -> topups.Effect:
    cls = _TYPE_OF[kind]
    if cls is topups.Notice:
        return topups.Notice(Code(payload["code"]), str(payload["message"]))
    effect: topups.Effect = cls(**payload)
    return effect


def _key(payload: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, str(v)) for k, v in payload.items()))


__all__ = [
    "LEASE_PREFIX",
    "Decide",
    "TopupRateLimits",
    "TopupService",
    "TopupView",
    "WebhookOutcome",
    "event_of_load",
    "new_topup_id",
    "topup_of",
]
