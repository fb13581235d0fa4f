"""Pay a bill online: a PaymentIntent, and the verified webhook that marks the bill paid.

``docs/utility-bills.md``, "Paying online". The intent is made through ``portal.payments`` (the
payment id ``ub_`` + 128 random bits rides in the intent's metadata key ``topup_id``, the key the
client writes; the top-up webhook ignores it, since it is not a top-up id). ``POST
/webhooks/utility-bills`` verifies the signature exactly as the top-up webhook does
(``portal.webhooks.verify``), records each event id once, and for a ``payment_intent.succeeded``
of one of ours, in one transaction:

* the bill open, amount and currency right → the bill **paid** (``online``, the intent id), the
  money moved **gateway receivable → biller payable** (transfer ``bill:<payment id>``) and the
  sale recorded in settlement's running totals (``clearing.ingest_totals.record_event``), so
  the nightly close pays the biller;
* the bill already paid (by the purse, or by another intent) → the payment is ``refund_due``
  and refunded in full after the commit (``refund_once``, key ``bill-refund:<payment id>``):
  a bill is paid once, never twice.

A replayed event is a duplicate (its id); a second event for a paid payment changes nothing;
the transfer id makes even a lost dedupe row harmless.
"""

from __future__ import annotations

import datetime as dt
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from clearing import accounts
from clearing.ingest_totals import SALE, record_event
from clearing.ledger import TransferSpec, post_transfers
from clearing.models import TransferCode, utcnow
from portal.errors import PortalError
from portal.modules.utility_bills import bills
from portal.modules.utility_bills.errors import BillCode, BillError
from portal.modules.utility_bills.models import UtilityOnlinePayment, UtilityPurseTap, UtilityWebhookEvent
from portal.payments import PaymentsClient
from portal.webhooks import decode_event, payment_intent_of, verify

PAYMENT_PREFIX: Final = "ub_"
CURRENCY: Final = "cny"


def new_payment_id() -> str:
    return PAYMENT_PREFIX + secrets.token_hex(16)


def is_payment_id(value: str) -> bool:
    tail = value[len(PAYMENT_PREFIX) :]
    return value.startswith(PAYMENT_PREFIX) and len(tail) == 32 and all(c in "0123456789abcdef" for c in tail)


def transfer_id(payment_id: str) -> str:
    return f"bill:{payment_id}"


@dataclass(frozen=True, slots=True)
class OnlineStarted:
    payment_id: str
    bill_id: int
    amount_fen: int
    state: str
    intent_id: str | None
    client_secret: str | None


class OnlineBills:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        payments: PaymentsClient,
        webhook_secrets: Sequence[str],
        *,
        clock: Callable[[], dt.datetime] = utcnow,
        tolerance_s: int = 300,
    ) -> None:
        self.sessions = sessions
        self.payments = payments
        self.webhook_secrets = list(webhook_secrets)
        self.clock = clock
        self.tolerance_s = tolerance_s

    def start(self, citizen_id: int, bill_id: int) -> OnlineStarted:
        with self.sessions() as session, session.begin():
            bill, _ = bills.bill_of(session, bill_id, lock=True)
            if bill.state != "open":
                raise BillError(BillCode.E_BILL_PAID, "the bill is already paid")
            busy = session.execute(
                select(UtilityPurseTap.terminal_seq).where(
                    UtilityPurseTap.bill_id == bill.id, UtilityPurseTap.state.in_(("pending", "committed"))
                )
            ).first()
            if busy is not None:
                raise BillError(BillCode.E_BILL_IN_PAYMENT, "a purse payment of this bill is not settled yet")
            payment = UtilityOnlinePayment(id=new_payment_id(), bill_id=bill.id, citizen_id=citizen_id,
                                           amount_fen=bill.amount_fen, state="payment_pending")  # fmt: skip
            session.add(payment)
            payment_id, amount_fen = payment.id, bill.amount_fen
        try:
            intent = self.payments.create_intent(topup_id=payment_id, card_id="", amount_fen=amount_fen)
        except PortalError as exc:
            raise BillError(BillCode.E_BILL_PAYMENTS, exc.message) from None
        with self.sessions() as session, session.begin():
            row = session.get(UtilityOnlinePayment, payment_id, with_for_update=True)
            assert row is not None
            row.intent_id = intent.id
        return OnlineStarted(payment_id, bill_id, amount_fen, "payment_pending", intent.id, intent.client_secret)

    def intent_of(self, payment_id: str) -> str | None:
        with self.sessions() as session:
            row = session.get(UtilityOnlinePayment, payment_id)
            return None if row is None else row.intent_id

    def apply_webhook(self, body: bytes, header: str | None) -> str:
        """``applied``, ``duplicate`` or ``ignored``; a bad signature raises ``PortalError`` (400)."""
        verify(body, header, self.webhook_secrets, now_s=int(time.time()), tolerance_s=self.tolerance_s)
        event = decode_event(body)
        if event.type != "payment_intent.succeeded":
            return "ignored"
        intent = payment_intent_of(event)
        payment_id = intent.metadata.get("topup_id", "")
        if not is_payment_id(payment_id) or intent.status != "succeeded":
            return "ignored"
        amount = intent.amount_received if intent.amount_received is not None else intent.amount
        refund: tuple[str, int] | None = None
        with self.sessions() as session:
            try:
                with session.begin():
                    session.add(UtilityWebhookEvent(event_id=event.id[:255], event_type=event.type[:255],
                                                    payment_id=payment_id))  # fmt: skip
                    session.flush()
                    outcome, refund = self._succeeded(session, payment_id, intent.id, amount, intent.currency)
            except IntegrityError:
                return "duplicate"
        if refund is not None:
            self.refund(*refund)
        return outcome

    def _succeeded(
        self, session: Session, payment_id: str, intent_id: str, amount_fen: int, currency: str
    ) -> tuple[str, tuple[str, int] | None]:
        payment = session.get(UtilityOnlinePayment, payment_id, with_for_update=True)
        if payment is None:
            return "ignored", None
        if payment.state != "payment_pending":
            return "applied", None  # already decided: a second event changes nothing
        bill, biller = bills.bill_of(session, payment.bill_id, lock=True)
        if payment.intent_id is None:
            payment.intent_id = intent_id  # the webhook overtook our own create's answer
        if bill.state != "open" or amount_fen != bill.amount_fen or currency != CURRENCY:
            payment.state = "refund_due"  # paid otherwise, or not this bill's amount: give it back
            return "applied", (payment_id, amount_fen)
        now = self.clock()
        tid = transfer_id(payment_id)
        payable = accounts.operator_payable(session, biller.id)
        post_transfers(session, [TransferSpec.single(tid, accounts.gateway_receivable(session), payable, amount_fen,
                                                     TransferCode.PURCHASE, source_ref=intent_id)])  # fmt: skip
        record_event(session, payee_account_id=payable, kind=SALE, source_ref=tid, amount_fen=amount_fen, at=now)
        bills.mark_paid(bill, via="online", ref=intent_id, at=now)
        payment.state = "paid"
        return "applied", None

    def refund_due(self, limit: int = 100) -> int:
        """Retry the refunds still due (the provider was down when they were decided); how many were tried."""
        with self.sessions() as session:
            due = session.execute(
                select(UtilityOnlinePayment.id, UtilityOnlinePayment.amount_fen)
                .where(UtilityOnlinePayment.state == "refund_due")
                .limit(limit)
            ).all()
        for payment_id, amount_fen in due:
            self.refund(payment_id, amount_fen)
        return len(due)

    def refund(self, payment_id: str, amount_fen: int) -> None:
        """Refund a payment the bill did not need; kept ``refund_due`` (retried) if the provider is down."""
        intent_id = self.intent_of(payment_id)
        if intent_id is None:
            return
        try:
            key = f"bill-refund:{payment_id}"
            total = self.payments.refund_once(
                payment_intent_id=intent_id, amount_fen=amount_fen, idempotency_key=key, topup_id=payment_id
            )
        except PortalError:
            return
        if total.succeeded_fen >= amount_fen:
            with self.sessions() as session, session.begin():
                row = session.get(UtilityOnlinePayment, payment_id, with_for_update=True)
                if row is not None and row.state == "refund_due":
                    row.state = "refunded"


__all__ = ["OnlineBills", "OnlineStarted", "is_payment_id", "new_payment_id", "transfer_id"]
