"""The medical module's tables, on clearing's metadata (migration 0015; ``docs/medical.md``).

* ``medical_members`` — a card enrolled in the scheme (参合), the region whose rules apply.
* ``medical_clinics`` — a registered terminal that is a clinic: its hospital level, region and
  the operator (merchant) whose payable receives both shares of a visit.
* ``medical_accumulators`` — per member, year and visit kind: deductible used, fund paid
  (reserved visits included, so two visits cannot both use one deductible).
* ``medical_day_totals`` — the fund paid per member and day (the outpatient daily cap).
* ``medical_visits`` — one settlement at a clinic, with its split, the rule version it was
  priced by, its state and the purse record that paid the patient's share.
* ``medical_claims``, ``medical_claim_documents``, ``medical_claim_events`` — online claims for
  treatment elsewhere, their uploaded documents and every state change (append-only).
"""

from __future__ import annotations

import datetime as dt
from typing import Final

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Date,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from clearing.models import Base, BigId, UTCDateTime, utcnow

VISIT_KINDS: Final = ("outpatient", "inpatient")
VISIT_STATES: Final = ("reserved", "settled", "cancelled", "reversed")
CLAIM_STATES: Final = ("submitted", "checked", "valuated", "paid", "rejected")
LIMITS: Final = ("none", "annual_cap", "daily_cap")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN (" + ", ".join(f"'{v}'" for v in values) + ")"


class MedicalMember(Base):
    """A card enrolled in the scheme; ``region`` picks the rule tables."""

    __tablename__ = "medical_members"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    issuer_id: Mapped[str] = mapped_column(String(16))
    card_asn: Mapped[str] = mapped_column(String(20))
    region: Mapped[str] = mapped_column(String(32))
    year_from: Mapped[int] = mapped_column(Integer)
    year_to: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        UniqueConstraint("issuer_id", "card_asn"),
        CheckConstraint("year_to IS NULL OR year_to >= year_from", name="years_ordered"),
    )


class MedicalClinic(Base):
    """A clinic terminal: where it is, its level, and whose payable a visit credits."""

    __tablename__ = "medical_clinics"

    terminal_id: Mapped[str] = mapped_column(String(12), ForeignKey("terminals.terminal_id"), primary_key=True)
    operator_id: Mapped[str] = mapped_column(String(64), ForeignKey("operators.operator_id"))
    name: Mapped[str] = mapped_column(String(80))
    region: Mapped[str] = mapped_column(String(32))
    hospital_level: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class MedicalAccumulator(Base):
    __tablename__ = "medical_accumulators"

    member_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("medical_members.id"), primary_key=True)
    year: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(12), primary_key=True)
    deductible_used_fen: Mapped[int] = mapped_column(BigInteger, default=0)
    fund_paid_fen: Mapped[int] = mapped_column(BigInteger, default=0)

    __table_args__ = (
        CheckConstraint("deductible_used_fen >= 0 AND fund_paid_fen >= 0", name="totals_nonneg"),
        CheckConstraint(_in("kind", VISIT_KINDS), name="kind_valid"),
    )


class MedicalDayTotal(Base):
    __tablename__ = "medical_day_totals"

    member_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("medical_members.id"), primary_key=True)
    day: Mapped[dt.date] = mapped_column(Date, primary_key=True)
    kind: Mapped[str] = mapped_column(String(12), primary_key=True)
    fund_paid_fen: Mapped[int] = mapped_column(BigInteger, default=0)

    __table_args__ = (
        CheckConstraint("fund_paid_fen >= 0", name="fund_nonneg"),
        CheckConstraint(_in("kind", VISIT_KINDS), name="kind_valid"),
    )


class MedicalVisit(Base):
    """One visit settled (or being settled) at a clinic terminal."""

    __tablename__ = "medical_visits"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    terminal_id: Mapped[str] = mapped_column(String(12), ForeignKey("medical_clinics.terminal_id"))
    visit_ref: Mapped[str] = mapped_column(String(64))
    member_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("medical_members.id"))
    issuer_id: Mapped[str] = mapped_column(String(16))
    card_asn: Mapped[str] = mapped_column(String(20))
    kind: Mapped[str] = mapped_column(String(12))
    day: Mapped[dt.date] = mapped_column(Date)  # Asia/Shanghai
    rule_version: Mapped[str] = mapped_column(String(32))
    region: Mapped[str] = mapped_column(String(32))
    hospital_level: Mapped[str] = mapped_column(String(16))
    total_fen: Mapped[int] = mapped_column(BigInteger)
    covered_fen: Mapped[int] = mapped_column(BigInteger)
    deductible_fen: Mapped[int] = mapped_column(BigInteger)
    fund_fen: Mapped[int] = mapped_column(BigInteger)
    patient_fen: Mapped[int] = mapped_column(BigInteger)
    limited_by: Mapped[str] = mapped_column(String(12))
    state: Mapped[str] = mapped_column(String(10))
    purse_terminal_seq: Mapped[int | None] = mapped_column(BigInteger)
    purse_tac: Mapped[str | None] = mapped_column(String(8))
    refund_load_id: Mapped[str | None] = mapped_column(String(64))
    reason: Mapped[str | None] = mapped_column(String(200))
    decided_by: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    settled_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    closed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        UniqueConstraint("terminal_id", "visit_ref"),
        Index("ix_medical_visits_card", "issuer_id", "card_asn", "state"),
        CheckConstraint(
            "total_fen >= 0 AND covered_fen >= 0 AND covered_fen <= total_fen AND deductible_fen >= 0"
            " AND fund_fen >= 0 AND patient_fen >= 0 AND fund_fen + patient_fen = total_fen",
            name="split_sums",
        ),
        CheckConstraint(_in("state", VISIT_STATES), name="state_valid"),
        CheckConstraint(_in("kind", VISIT_KINDS), name="kind_valid"),
        CheckConstraint(_in("limited_by", LIMITS), name="limited_by_valid"),
    )


class MedicalClaim(Base):
    """A claim for treatment elsewhere, filed online by the card's holder."""

    __tablename__ = "medical_claims"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    citizen_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("portal_citizens.id"))
    submit_ref: Mapped[str] = mapped_column(String(64))  # the form's nonce: a form sent twice is one claim
    member_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("medical_members.id"))
    hospital_name: Mapped[str] = mapped_column(String(80))
    hospital_level: Mapped[str] = mapped_column(String(16))
    kind: Mapped[str] = mapped_column(String(12))
    day: Mapped[dt.date] = mapped_column(Date)
    total_fen: Mapped[int] = mapped_column(BigInteger)
    covered_fen: Mapped[int | None] = mapped_column(BigInteger)  # set when checked
    fund_fen: Mapped[int | None] = mapped_column(BigInteger)  # set when valuated
    deductible_fen: Mapped[int | None] = mapped_column(BigInteger)
    rule_version: Mapped[str | None] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(10))
    reason_code: Mapped[str | None] = mapped_column(String(8))
    payout_load_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        Index("ix_medical_claims_citizen", "citizen_id"),
        UniqueConstraint("citizen_id", "submit_ref"),
        CheckConstraint(_in("state", CLAIM_STATES), name="state_valid"),
        CheckConstraint(_in("kind", VISIT_KINDS), name="kind_valid"),
        CheckConstraint(
            "total_fen > 0 AND (covered_fen IS NULL OR (covered_fen >= 0 AND covered_fen <= total_fen))"
            " AND (fund_fen IS NULL OR (fund_fen >= 0 AND fund_fen <= total_fen))",
            name="amounts_valid",
        ),
        CheckConstraint("(state = 'rejected') = (reason_code IS NOT NULL)", name="rejected_has_reason"),
    )


class MedicalClaimDocument(Base):
    __tablename__ = "medical_claim_documents"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    claim_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("medical_claims.id"))
    doc_type: Mapped[str] = mapped_column(String(24))
    content_type: Mapped[str] = mapped_column(String(40))
    size_bytes: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    content: Mapped[bytes] = mapped_column(LargeBinary)
    uploaded_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (Index("ix_medical_claim_documents_claim", "claim_id"),)


class MedicalClaimEvent(Base):
    """Every transition of a claim: who, from what, to what, with which reason code."""

    __tablename__ = "medical_claim_events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    claim_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("medical_claims.id"))
    from_state: Mapped[str | None] = mapped_column(String(10))
    to_state: Mapped[str] = mapped_column(String(10))
    actor: Mapped[str] = mapped_column(String(64))
    reason_code: Mapped[str | None] = mapped_column(String(8))
    note: Mapped[str] = mapped_column(String(200), default="")
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (Index("ix_medical_claim_events_claim", "claim_id"),)


__all__ = [
    "CLAIM_STATES",
    "VISIT_KINDS",
    "VISIT_STATES",
    "MedicalAccumulator",
    "MedicalClaim",
    "MedicalClaimDocument",
    "MedicalClaimEvent",
    "MedicalClinic",
    "MedicalDayTotal",
    "MedicalMember",
    "MedicalVisit",
]
