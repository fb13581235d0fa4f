"""The utility bills module's tables, on clearing's metadata (migration 0014; ``docs/utility-bills.md``).

* ``utility_billers`` — a water, electricity or gas company: a settlement payee (merchant) with
  its virtual purchase terminal in clearing and the next terminal sequence of that terminal's
  PSAM (allocated here, in the database, so two portal workers never hand one out twice).
* ``utility_bills`` — one bill: biller, account number, period, amount, due date, state; once
  paid, how (purse or online), the payment's reference and the business day it counts in.
* ``utility_purse_taps`` — the portal terminal's journal: the purse record written before DEBIT
  (``pending``), then with the card's TAC (``committed``), then clearing's verdict (``cleared``,
  ``rejected``) or ``void`` when the card proved the debit never happened.
* ``utility_online_payments`` — a PaymentIntent made for a bill; ``utility_webhook_events``
  the verified events seen once each.
"""

from __future__ import annotations

import datetime as dt
from typing import Final

from sqlalchemy import BigInteger, CheckConstraint, Date, ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from clearing.models import Base, BigId, UTCDateTime, utcnow

BILLER_KINDS: Final = ("water", "electricity", "gas")
BILL_STATES: Final = ("open", "paid")
PAID_VIA: Final = ("purse", "online")
TAP_STATES: Final = ("pending", "committed", "cleared", "rejected", "void")
ONLINE_STATES: Final = ("payment_pending", "paid", "refund_due", "refunded")
PAYMENT_ID_LEN: Final = 35  # "ub_" + 32 hex


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN (" + ", ".join(f"'{v}'" for v in values) + ")"


class UtilityBiller(Base):
    __tablename__ = "utility_billers"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # the settlement payee id
    name: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(12))
    terminal_id: Mapped[str] = mapped_column(String(12), unique=True)
    ttc_next: Mapped[int] = mapped_column(BigInteger, default=1)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        CheckConstraint(_in("kind", BILLER_KINDS), name="kind_valid"),
        CheckConstraint("ttc_next >= 1", name="ttc_positive"),
    )


class UtilityBill(Base):
    __tablename__ = "utility_bills"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    biller_id: Mapped[str] = mapped_column(String(64), ForeignKey("utility_billers.id", ondelete="RESTRICT"))
    account_no: Mapped[str] = mapped_column(String(32))
    holder_masked: Mapped[str] = mapped_column(String(64))
    period: Mapped[str] = mapped_column(String(7))  # YYYY-MM
    amount_fen: Mapped[int] = mapped_column(BigInteger)
    due_date: Mapped[dt.date] = mapped_column(Date)
    state: Mapped[str] = mapped_column(String(8), default="open")
    paid_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    paid_day: Mapped[dt.date | None] = mapped_column(Date)
    paid_via: Mapped[str | None] = mapped_column(String(8))
    paid_ref: Mapped[str | None] = mapped_column(String(64), unique=True)
    receipt_no: Mapped[str | None] = mapped_column(String(40), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        UniqueConstraint("biller_id", "account_no", "period", name="uq_utility_bills_account_period"),
        CheckConstraint("amount_fen > 0", name="amount_positive"),
        CheckConstraint(_in("state", BILL_STATES), name="state_valid"),
        CheckConstraint("paid_via IS NULL OR " + _in("paid_via", PAID_VIA), name="paid_via_valid"),
        CheckConstraint(
            "(state = 'open' AND paid_at IS NULL AND paid_ref IS NULL) OR "
            "(state = 'paid' AND paid_at IS NOT NULL AND paid_ref IS NOT NULL AND paid_day IS NOT NULL)",
            name="paid_complete",
        ),
        Index("ix_utility_bills_paid_day", "biller_id", "paid_day"),
    )


class UtilityPurseTap(Base):
    __tablename__ = "utility_purse_taps"

    terminal_id: Mapped[str] = mapped_column(String(12), primary_key=True)
    terminal_seq: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    bill_id: Mapped[int] = mapped_column(BigId, ForeignKey("utility_bills.id", ondelete="RESTRICT"))
    issuer_id: Mapped[str] = mapped_column(String(16))
    card_asn: Mapped[str] = mapped_column(String(20))
    amount_fen: Mapped[int] = mapped_column(BigInteger)
    record: Mapped[str] = mapped_column(Text)  # the TapRecord, msgspec JSON
    state: Mapped[str] = mapped_column(String(10), default="pending")
    verdict_code: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        CheckConstraint(_in("state", TAP_STATES), name="state_valid"),
        Index("ix_utility_purse_taps_card", "issuer_id", "card_asn", "state"),
        Index("ix_utility_purse_taps_bill", "bill_id", "state"),
    )


class UtilityOnlinePayment(Base):
    __tablename__ = "utility_online_payments"

    id: Mapped[str] = mapped_column(String(PAYMENT_ID_LEN), primary_key=True)
    bill_id: Mapped[int] = mapped_column(BigId, ForeignKey("utility_bills.id", ondelete="RESTRICT"))
    citizen_id: Mapped[int | None] = mapped_column(BigInteger)
    amount_fen: Mapped[int] = mapped_column(BigInteger)
    intent_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    state: Mapped[str] = mapped_column(String(16), default="payment_pending")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        CheckConstraint("amount_fen > 0", name="amount_positive"),
        CheckConstraint(_in("state", ONLINE_STATES), name="state_valid"),
        Index("ix_utility_online_payments_bill", "bill_id"),
    )


class UtilityWebhookEvent(Base):
    __tablename__ = "utility_webhook_events"

    event_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    event_type: Mapped[str] = mapped_column(String(255))
    payment_id: Mapped[str | None] = mapped_column(String(PAYMENT_ID_LEN))
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


__all__ = [
    "BILLER_KINDS",
    "UtilityBill",
    "UtilityBiller",
    "UtilityOnlinePayment",
    "UtilityPurseTap",
    "UtilityWebhookEvent",
]
