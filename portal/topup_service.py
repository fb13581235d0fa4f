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
  because both live in the one database: a crash leaves both or neither.

The payer of a top-up's load is clearing's payment gateway receivable
(``clearing.accounts.gateway_receivable``, ``system:gateway_receivable``): the money the
provider collected for us and has yet to pay out. It is ``create_pending``'s default for a
load with a payment reference, and nothing is posted until the card takes the load.

Citizen authentication is not here yet: ``create_topup`` trusts the card it is given. The
accounts slice of issue 10 puts a ``CurrentCitizen`` in front of it (``portal.api``).
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Final, Literal

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from clearing import loads as clearing_loads
from clearing.db import conflict_insert, lock_for_update
from clearing.errors import ClearingError
from clearing.models import Card, CardStatus, LoadState, PendingLoad
from portal import topups, webhooks
from portal.errors import Code, PortalError
from portal.limits import TopupLimits, check_topup
from portal.models import PortalOutbox, PortalTopup, PortalWebhookEvent
from portal.payments import PaymentsClient

log = logging.getLogger(__name__)

TOPUP_ID_PREFIX: Final = "tu_"
OUTBOX_BATCH_MAX: Final = 100  # effects one ``run_outbox`` call takes on
ERROR_CHARS_MAX: Final = 500

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

    def __post_init__(self) -> None:
        if not self.webhook_secrets or any(not s for s in self.webhook_secrets):
            raise ValueError("the webhook route needs at least one non-empty endpoint secret")

    @contextmanager
    def _tx(self) -> Iterator[Session]:
        with self.sessions() as session, session.begin():
            yield session

    # --- create ---------------------------------------------------------------------------

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
        """A command (citizen or clerk; no route yet): void the load, then refund the payment.

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
        due = {
            (o.kind, _key(o.payload))
            for o in session.execute(
                select(PortalOutbox).where(PortalOutbox.topup_id == t.topup_id, PortalOutbox.done_at.is_(None))
            ).scalars()
        }
        for effect in effects:
            kind, payload = _KIND_OF[type(effect)], _payload(effect)
            if (kind, _key(payload)) in due:
                continue
            due.add((kind, _key(payload)))
            session.add(
                PortalOutbox(topup_id=t.topup_id, kind=kind, payload=payload, created_at=self.clock(), attempts=0)
            )
        session.flush()

    def run_outbox(self, topup_id: str | None = None, *, batch_max: int = OUTBOX_BATCH_MAX) -> str | None:
        """Run the effects still due (of one top-up, or of all), oldest first; answer a new intent's client secret.

        Safe to run concurrently and repeatedly: every receiver dedupes and every answer is
        applied through the state machine. Failures are recorded on the row, never raised.
        """
        secret: str | None = None
        tried: set[int] = set()  # each effect once per call: one that fails waits for the next call
        while len(tried) < batch_max:
            with self.sessions() as session:
                stmt = select(PortalOutbox.id).where(PortalOutbox.done_at.is_(None)).order_by(PortalOutbox.id)
                if topup_id is not None:
                    stmt = stmt.where(PortalOutbox.topup_id == topup_id)
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
        return secret

    def _run_one(self, outbox_id: int) -> str | None:
        with self._tx() as session:
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
                self._apply(session, row, _clearing_load(session, row, effect))
                item.done_at = self.clock()
                return None
        # The payment service: called outside any transaction, its answer applied in a new one.
        secret: str | None = None
        answer: topups.Event | None = None
        if isinstance(effect, topups.CreatePaymentIntent):
            intent = self.payments.create_intent(
                topup_id=effect.topup_id, card_id=effect.card_id, amount_fen=effect.amount_fen
            )
            answer, secret = topups.PaymentCreated(intent.id), intent.client_secret
        elif isinstance(effect, topups.CancelPaymentIntent):
            self.payments.cancel_intent(effect.payment_intent_id)  # its webhook brings the news
        elif isinstance(effect, topups.Refund):
            total = self.payments.refund_once(
                payment_intent_id=effect.payment_intent_id,
                amount_fen=effect.amount_fen,
                idempotency_key=effect.idempotency_key,
                topup_id=item.topup_id,
            )
            if total.succeeded_fen < effect.amount_fen:
                why = f"{total.succeeded_fen} of {effect.amount_fen} fen refunded, {total.pending_fen} pending"
                raise PortalError(Code.E_PAYMENTS_UNAVAILABLE, why)
            answer = topups.RefundSucceeded(effect.payment_intent_id, total.succeeded_fen)
        with self._tx() as session:
            item = session.get(PortalOutbox, outbox_id)
            assert item is not None
            if item.done_at is not None:
                return secret  # another runner applied the same answer first
            row = self._locked(session, item.topup_id)
            assert row is not None
            if answer is not None:
                self._apply(session, row, answer)
            item.done_at = self.clock()
        return secret

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


def _clearing_load(session: Session, row: PortalTopup, effect: topups.CreateLoad | topups.CancelLoad) -> topups.Event:
    """Create (and for ``CancelLoad`` then cancel) the pending load; answer what its row's state means.

    ``CancelLoad`` creates first (idempotent) so a ``CreateLoad`` still in flight finds a
    cancelled row and creates nothing. An authorized load may be on the card: clearing
    refuses to cancel it (``E_LOAD_IN_DOUBT``) and the effect stays due until clearing
    resolves it from the card.
    """
    load = clearing_loads.create_pending(
        session, effect.load_id, row.issuer_id, row.card_asn, effect.amount_fen, payment_ref=effect.payment_intent_id
    )
    if isinstance(effect, topups.CancelLoad) and load.state == LoadState.PENDING.value:
        load = clearing_loads.cancel(session, effect.load_id)
    if isinstance(effect, topups.CancelLoad) and load.state == LoadState.AUTHORIZED.value:
        clearing_loads.cancel(session, effect.load_id)  # raises E_LOAD_IN_DOUBT: kept due
    return _event_of_load(load.state)


def _event_of_load(state: str) -> topups.Event:
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


__all__ = ["TopupService", "TopupView", "WebhookOutcome", "new_topup_id"]
