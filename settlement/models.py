"""Settlement's tables, on clearing's metadata (as ``portal/models.py``): parties, windows, totals, closes.

Migration 0009 creates them; ``migrations/env.py`` imports this module so the schema test
compares them too. ``docs/settlement.md`` ("Windows", "Close") explains each.

* ``settlement_fee_schedules`` — a fee schedule per merchant category.
* ``settlement_payees`` — what settlement adds to clearing's ``operators`` row of a merchant or
  bus operator: category, fee override, payout bank account, status.
* ``settlement_route_assignments``, ``settlement_terminal_assignments`` — which operator a
  route or a terminal pays, for which business days (``[valid_from, valid_to)``).
* ``settlement_windows`` — the close marker of a business day: ``sealed`` (no transfer can
  join the window any more) then ``closed`` (statements, ledger transfers and file digests
  committed together).
* ``settlement_postings`` — the running totals' journal: one row per source (an ingest batch,
  a decision, a refund) × payee × event day, naming the window it went to.
* ``settlement_totals`` — running totals per window and payee, upserted with every posting.
* ``settlement_statements`` — a closed window's figures per payee; the payout files are
  written from these rows only, so a rerun writes the same bytes.
* ``settlement_carry`` — what each payee carries into its next window (a negative net, a
  payout held for want of an account).
* ``settlement_payout_results`` — cleared and returned payouts imported from bank statements.
* ``settlement_audit`` — every change to a party, append-only (triggers refuse UPDATE and DELETE).
* ``settlement_transfer_legs`` — one row per posted tap that is a transfer (``fare.transfer_of``
  set), written by ingest in the batch's transaction: what the close needs to share the
  journey's discount (migration 0010, ``docs/settlement.md``, "Transfer discounts").

Clearing's ingest writes ``settlement_postings``, ``settlement_totals`` and
``settlement_transfer_legs`` and reads the assignments and the window marker by table name
(``clearing/ingest_totals.py``): clearing never imports settlement (ARCHITECTURE.md, "who may
import whom").
"""

from __future__ import annotations

import datetime as dt
from typing import Final

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    ForeignKey,
    Index,
    Integer,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from clearing.models import Base, BigId, UTCDateTime, utcnow

ROUNDINGS: Final = ("half_up", "half_even", "down")
PAYEE_STATUSES: Final = ("active", "suspended", "closed")
WINDOW_STATES: Final = ("sealed", "closed")
POSTING_KINDS: Final = ("sale", "refund")
RESULT_STATUSES: Final = ("cleared", "returned")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN (" + ", ".join(f"'{v}'" for v in values) + ")"


class FeeScheduleRow(Base):
    """The fee schedule of a merchant category (``settlement.fees.FeeSchedule``)."""

    __tablename__ = "settlement_fee_schedules"

    category: Mapped[str] = mapped_column(String(32), primary_key=True)
    bps: Mapped[int] = mapped_column(Integer)
    min_fen: Mapped[int] = mapped_column(BigInteger)
    cap_fen: Mapped[int | None] = mapped_column(BigInteger)
    rounding: Mapped[str] = mapped_column(String(10))
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        CheckConstraint("bps BETWEEN 0 AND 10000 AND min_fen >= 0", name="bps_min"),
        CheckConstraint("cap_fen IS NULL OR cap_fen >= min_fen", name="cap_above_min"),
        CheckConstraint(_in("rounding", ROUNDINGS), name="rounding_valid"),
    )


class PayeeRow(Base):
    """A payee's settlement terms; the payee itself is clearing's ``operators`` row (same id)."""

    __tablename__ = "settlement_payees"

    payee_id: Mapped[str] = mapped_column(String(64), ForeignKey("operators.operator_id"), primary_key=True)
    category: Mapped[str] = mapped_column(String(32))
    override_bps: Mapped[int | None] = mapped_column(Integer)
    override_min_fen: Mapped[int | None] = mapped_column(BigInteger)
    override_cap_fen: Mapped[int | None] = mapped_column(BigInteger)
    override_rounding: Mapped[str | None] = mapped_column(String(10))
    account_name: Mapped[str | None] = mapped_column(String(70))
    account_number: Mapped[str | None] = mapped_column(String(30))
    cnaps_code: Mapped[str | None] = mapped_column(String(12))
    status: Mapped[str] = mapped_column(String(10), default="active")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        CheckConstraint(_in("status", PAYEE_STATUSES), name="status_valid"),
        CheckConstraint(
            "(override_bps IS NULL) = (override_min_fen IS NULL) AND (override_bps IS NULL) = "
            "(override_rounding IS NULL) AND (override_bps IS NOT NULL OR override_cap_fen IS NULL)",
            name="override_whole",
        ),
        CheckConstraint(
            "(account_name IS NULL) = (account_number IS NULL) AND (account_name IS NULL) = (cnaps_code IS NULL)",
            name="account_whole",
        ),
    )


class RouteAssignment(Base):
    """Route → operator for the business days ``[valid_from, valid_to)`` (``valid_to`` NULL: until changed)."""

    __tablename__ = "settlement_route_assignments"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    route_id: Mapped[str] = mapped_column(String(64))
    operator_id: Mapped[str] = mapped_column(String(64), ForeignKey("operators.operator_id"))
    valid_from: Mapped[dt.date] = mapped_column(Date)
    valid_to: Mapped[dt.date | None] = mapped_column(Date)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        CheckConstraint("valid_to IS NULL OR valid_to > valid_from", name="dates_ordered"),
        UniqueConstraint("route_id", "valid_from"),
    )


class TerminalAssignment(Base):
    """Terminal → operator for the business days ``[valid_from, valid_to)``."""

    __tablename__ = "settlement_terminal_assignments"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    terminal_id: Mapped[str] = mapped_column(String(12), ForeignKey("terminals.terminal_id"))
    operator_id: Mapped[str] = mapped_column(String(64), ForeignKey("operators.operator_id"))
    valid_from: Mapped[dt.date] = mapped_column(Date)
    valid_to: Mapped[dt.date | None] = mapped_column(Date)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        CheckConstraint("valid_to IS NULL OR valid_to > valid_from", name="dates_ordered"),
        UniqueConstraint("terminal_id", "valid_from"),
    )


class WindowRow(Base):
    """The close marker of one business day, and what its close committed (for reconciliation)."""

    __tablename__ = "settlement_windows"

    business_day: Mapped[dt.date] = mapped_column(Date, primary_key=True)
    state: Mapped[str] = mapped_column(String(8))
    sealed_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    closed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    payout_sequence: Mapped[int] = mapped_column(SmallInteger, default=1)
    payees: Mapped[int | None] = mapped_column(Integer)
    gross_fen: Mapped[int | None] = mapped_column(BigInteger)
    refunds_fen: Mapped[int | None] = mapped_column(BigInteger)
    fee_fen: Mapped[int | None] = mapped_column(BigInteger)
    payout_fen: Mapped[int | None] = mapped_column(BigInteger)
    carry_fen: Mapped[int | None] = mapped_column(BigInteger)
    payer_name: Mapped[str | None] = mapped_column(String(140))
    payer_account_name: Mapped[str | None] = mapped_column(String(70))
    payer_account_number: Mapped[str | None] = mapped_column(String(30))
    payer_cnaps_code: Mapped[str | None] = mapped_column(String(12))
    files_sha256: Mapped[str | None] = mapped_column(Text)  # JSON {file name: sha256 hex}

    __table_args__ = (
        CheckConstraint(_in("state", WINDOW_STATES), name="state_valid"),
        CheckConstraint("(state = 'closed') = (closed_at IS NOT NULL)", name="closed_iff_closed_at"),
    )


class PostingRow(Base):
    """One source's contribution to a window's running totals (the totals' journal)."""

    __tablename__ = "settlement_postings"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    window_day: Mapped[dt.date] = mapped_column(Date)
    payee_account_id: Mapped[int] = mapped_column(BigInteger)
    kind: Mapped[str] = mapped_column(String(8))
    source_ref: Mapped[str] = mapped_column(String(120))
    event_day: Mapped[dt.date] = mapped_column(Date)  # the tap's business day, or the decision's
    count: Mapped[int] = mapped_column(Integer)
    amount_fen: Mapped[int] = mapped_column(BigInteger)
    late: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)

    __table_args__ = (
        CheckConstraint(_in("kind", POSTING_KINDS), name="kind_valid"),
        CheckConstraint("count > 0 AND amount_fen >= 0", name="positive"),
        CheckConstraint("late = (event_day < window_day)", name="late_iff_earlier"),
        UniqueConstraint("source_ref", "payee_account_id", "event_day", "kind", name="uq_settlement_postings_source"),
        Index("ix_settlement_postings_window_day", "window_day"),
    )


class TotalRow(Base):
    """Running totals of one window and payee: what the close reads (never the taps)."""

    __tablename__ = "settlement_totals"

    window_day: Mapped[dt.date] = mapped_column(Date, primary_key=True)
    payee_account_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger)
    gross_fen: Mapped[int] = mapped_column(BigInteger)
    refund_count: Mapped[int] = mapped_column(BigInteger)
    refunds_fen: Mapped[int] = mapped_column(BigInteger)
    late_count: Mapped[int] = mapped_column(BigInteger)
    late_fen: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (
        CheckConstraint(
            "count >= 0 AND gross_fen >= 0 AND refund_count >= 0 AND refunds_fen >= 0 AND late_count >= 0 "
            "AND late_fen >= 0",
            name="nonnegative",
        ),
    )


class StatementRow(Base):
    """A closed window's figures for one payee, with the fee schedule and bank account used."""

    __tablename__ = "settlement_statements"

    window_day: Mapped[dt.date] = mapped_column(Date, primary_key=True)
    payee_account_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    payee_id: Mapped[str] = mapped_column(String(64))
    payee_name: Mapped[str] = mapped_column(String(128))
    count: Mapped[int] = mapped_column(BigInteger)
    gross_fen: Mapped[int] = mapped_column(BigInteger)
    refund_count: Mapped[int] = mapped_column(BigInteger)
    refunds_fen: Mapped[int] = mapped_column(BigInteger)
    late_count: Mapped[int] = mapped_column(BigInteger)
    late_fen: Mapped[int] = mapped_column(BigInteger)
    fee_fen: Mapped[int] = mapped_column(BigInteger)
    net_fen: Mapped[int] = mapped_column(BigInteger)
    carry_in_fen: Mapped[int] = mapped_column(BigInteger)
    payout_fen: Mapped[int] = mapped_column(BigInteger)
    carry_out_fen: Mapped[int] = mapped_column(BigInteger)
    fee_bps: Mapped[int] = mapped_column(Integer)
    fee_min_fen: Mapped[int] = mapped_column(BigInteger)
    fee_cap_fen: Mapped[int | None] = mapped_column(BigInteger)
    fee_rounding: Mapped[str] = mapped_column(String(10))
    account_name: Mapped[str | None] = mapped_column(String(70))
    account_number: Mapped[str | None] = mapped_column(String(30))
    cnaps_code: Mapped[str | None] = mapped_column(String(12))
    end_to_end_id: Mapped[str | None] = mapped_column(String(35), unique=True)
    held_reason: Mapped[str | None] = mapped_column(String(64))
    # transfer-discount sharing (0010): what the close moved to (+) or from (−) the payable, and
    # what of the payee's adjustments is still owed because a payable could not give it yet
    sharing_fen: Mapped[int] = mapped_column(BigInteger, default=0)
    sharing_owed_fen: Mapped[int] = mapped_column(BigInteger, default=0)

    __table_args__ = (
        CheckConstraint("fee_fen >= 0 AND payout_fen >= 0", name="nonnegative"),
        CheckConstraint("net_fen + fee_fen = gross_fen - refunds_fen + sharing_fen", name="fee_plus_net"),
        CheckConstraint("carry_out_fen = carry_in_fen + net_fen - payout_fen", name="carry_balances"),
        CheckConstraint("(payout_fen > 0) = (end_to_end_id IS NOT NULL)", name="paid_iff_e2e"),
    )


class CarryRow(Base):
    """What a payee carries into its next window, as of the close of ``through_day``."""

    __tablename__ = "settlement_carry"

    payee_account_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    carry_fen: Mapped[int] = mapped_column(BigInteger)
    through_day: Mapped[dt.date] = mapped_column(Date)
    sharing_owed_fen: Mapped[int] = mapped_column(BigInteger, default=0)  # 0010: sharing not moved yet


class PayoutResultRow(Base):
    """A payout seen on a bank statement: cleared (booked) or returned, once per status."""

    __tablename__ = "settlement_payout_results"

    end_to_end_id: Mapped[str] = mapped_column(String(35), primary_key=True)
    status: Mapped[str] = mapped_column(String(8), primary_key=True)
    window_day: Mapped[dt.date | None] = mapped_column(Date)
    amount_fen: Mapped[int] = mapped_column(BigInteger)
    booked_on: Mapped[dt.date | None] = mapped_column(Date)
    statement_ref: Mapped[str] = mapped_column(String(120))
    reason: Mapped[str | None] = mapped_column(String(64))
    imported_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)

    __table_args__ = (CheckConstraint(_in("status", RESULT_STATUSES), name="status_valid"),)


class SettlementAuditRow(Base):
    """One change to a party (merchant, fee schedule, account, assignment); rows are never changed."""

    __tablename__ = "settlement_audit"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    actor: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(32))
    target: Mapped[str] = mapped_column(String(120))
    detail: Mapped[str] = mapped_column(Text)

    __table_args__ = (Index("ix_settlement_audit_target", "target"),)


class TransferLegRow(Base):
    """A posted tap that is a transfer: enough to walk its journey back and share its discount.

    Written by clearing (``clearing/ingest_totals.py``) in the transaction that posts the tap,
    in the window its sale joined (``window_of``); nothing is written for a tap that is not a
    transfer. ``transfer_of`` is the earlier leg's terminal_seq (the wire's ``fare.transfer_of``).
    """

    __tablename__ = "settlement_transfer_legs"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    window_day: Mapped[dt.date] = mapped_column(Date)
    issuer_id: Mapped[str] = mapped_column(String(16))
    card_asn: Mapped[str] = mapped_column(String(20))
    terminal_id: Mapped[str] = mapped_column(String(12))
    terminal_seq: Mapped[int] = mapped_column(BigInteger)
    offline_counter: Mapped[int] = mapped_column(Integer)
    tx_time: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    transfer_of: Mapped[int] = mapped_column(BigInteger)
    product_id: Mapped[str] = mapped_column(String(64))
    rider_category_id: Mapped[str | None] = mapped_column(String(64))
    tariff_version: Mapped[str | None] = mapped_column(String(64))
    charged_fen: Mapped[int] = mapped_column(BigInteger)
    full_fare_fen: Mapped[int] = mapped_column(BigInteger)
    payee_account_id: Mapped[int] = mapped_column(BigInteger)
    tap_id: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (
        CheckConstraint("charged_fen >= 0 AND full_fare_fen >= 0", name="nonnegative"),
        UniqueConstraint("terminal_id", "terminal_seq", name="uq_settlement_transfer_legs_tap"),
        Index("ix_settlement_transfer_legs_window_day", "window_day"),
    )


__all__ = [
    "PAYEE_STATUSES",
    "ROUNDINGS",
    "CarryRow",
    "FeeScheduleRow",
    "PayeeRow",
    "PayoutResultRow",
    "PostingRow",
    "RouteAssignment",
    "SettlementAuditRow",
    "StatementRow",
    "TerminalAssignment",
    "TotalRow",
    "TransferLegRow",
    "WindowRow",
]
