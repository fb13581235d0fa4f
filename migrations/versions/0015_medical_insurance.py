"""Medical insurance (issue 13): members, clinics, accumulators, visits, claims and their documents.

- ``medical_members`` (cards enrolled, their region), ``medical_clinics`` (clinic terminals: level,
  region, the operator paid);
- ``medical_accumulators`` (member, year, kind: deductible used, fund paid) and
  ``medical_day_totals`` (fund paid per member and day, for the outpatient daily cap);
- ``medical_visits`` (one clinic settlement: split, rule version, state, purse record);
- ``medical_claims``, ``medical_claim_documents``, ``medical_claim_events`` (claims for treatment
  elsewhere, uploads, every transition).

The models are ``portal/modules/medical/models.py``. New tables only.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_TIME = sa.DateTime(timezone=True)
_CLAIM_AMOUNTS = (
    "total_fen > 0 AND (covered_fen IS NULL OR (covered_fen >= 0 AND covered_fen <= total_fen))"
    " AND (fund_fen IS NULL OR (fund_fen >= 0 AND fund_fen <= total_fen))"
)
_VISIT_SPLIT = (
    "total_fen >= 0 AND covered_fen >= 0 AND covered_fen <= total_fen AND deductible_fen >= 0"
    " AND fund_fen >= 0 AND patient_fen >= 0 AND fund_fen + patient_fen = total_fen"
)


def upgrade() -> None:
    op.create_table(
        "medical_members",
        sa.Column("id", _BIG_ID, autoincrement=True, nullable=False),
        sa.Column("issuer_id", sa.String(length=16), nullable=False),
        sa.Column("card_asn", sa.String(length=20), nullable=False),
        sa.Column("region", sa.String(length=32), nullable=False),
        sa.Column("year_from", sa.Integer(), nullable=False),
        sa.Column("year_to", sa.Integer(), nullable=True),
        sa.Column("created_at", _TIME, nullable=False),
        sa.CheckConstraint("year_to IS NULL OR year_to >= year_from", name=op.f("ck_medical_members_years_ordered")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_medical_members")),
        sa.UniqueConstraint("issuer_id", "card_asn", name=op.f("uq_medical_members_issuer_id_card_asn")),
    )
    op.create_table(
        "medical_accumulators",
        sa.Column("member_id", sa.BigInteger(), nullable=False),
        sa.Column("year", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=12), nullable=False),
        sa.Column("deductible_used_fen", sa.BigInteger(), nullable=False),
        sa.Column("fund_paid_fen", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("kind IN ('outpatient', 'inpatient')", name=op.f("ck_medical_accumulators_kind_valid")),
        sa.CheckConstraint(
            "deductible_used_fen >= 0 AND fund_paid_fen >= 0", name=op.f("ck_medical_accumulators_totals_nonneg")
        ),
        sa.ForeignKeyConstraint(
            ["member_id"], ["medical_members.id"], name=op.f("fk_medical_accumulators_member_id_medical_members")
        ),
        sa.PrimaryKeyConstraint("member_id", "year", "kind", name=op.f("pk_medical_accumulators")),
    )
    op.create_table(
        "medical_claims",
        sa.Column("id", _BIG_ID, autoincrement=True, nullable=False),
        sa.Column("citizen_id", sa.BigInteger(), nullable=False),
        sa.Column("submit_ref", sa.String(length=64), nullable=False),
        sa.Column("member_id", sa.BigInteger(), nullable=False),
        sa.Column("hospital_name", sa.String(length=80), nullable=False),
        sa.Column("hospital_level", sa.String(length=16), nullable=False),
        sa.Column("kind", sa.String(length=12), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("total_fen", sa.BigInteger(), nullable=False),
        sa.Column("covered_fen", sa.BigInteger(), nullable=True),
        sa.Column("fund_fen", sa.BigInteger(), nullable=True),
        sa.Column("deductible_fen", sa.BigInteger(), nullable=True),
        sa.Column("rule_version", sa.String(length=32), nullable=True),
        sa.Column("state", sa.String(length=10), nullable=False),
        sa.Column("reason_code", sa.String(length=8), nullable=True),
        sa.Column("payout_load_id", sa.String(length=64), nullable=True),
        sa.Column("created_at", _TIME, nullable=False),
        sa.Column("updated_at", _TIME, nullable=False),
        sa.CheckConstraint(
            "(state = 'rejected') = (reason_code IS NOT NULL)", name=op.f("ck_medical_claims_rejected_has_reason")
        ),
        sa.CheckConstraint("kind IN ('outpatient', 'inpatient')", name=op.f("ck_medical_claims_kind_valid")),
        sa.CheckConstraint(
            "state IN ('submitted', 'checked', 'valuated', 'paid', 'rejected')",
            name=op.f("ck_medical_claims_state_valid"),
        ),
        sa.CheckConstraint(
            _CLAIM_AMOUNTS,
            name=op.f("ck_medical_claims_amounts_valid"),
        ),
        sa.ForeignKeyConstraint(
            ["citizen_id"], ["portal_citizens.id"], name=op.f("fk_medical_claims_citizen_id_portal_citizens")
        ),
        sa.ForeignKeyConstraint(
            ["member_id"], ["medical_members.id"], name=op.f("fk_medical_claims_member_id_medical_members")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_medical_claims")),
        sa.UniqueConstraint("citizen_id", "submit_ref", name=op.f("uq_medical_claims_citizen_id_submit_ref")),
    )
    op.create_index("ix_medical_claims_citizen", "medical_claims", ["citizen_id"], unique=False)
    op.create_table(
        "medical_day_totals",
        sa.Column("member_id", sa.BigInteger(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("kind", sa.String(length=12), nullable=False),
        sa.Column("fund_paid_fen", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("kind IN ('outpatient', 'inpatient')", name=op.f("ck_medical_day_totals_kind_valid")),
        sa.CheckConstraint("fund_paid_fen >= 0", name=op.f("ck_medical_day_totals_fund_nonneg")),
        sa.ForeignKeyConstraint(
            ["member_id"], ["medical_members.id"], name=op.f("fk_medical_day_totals_member_id_medical_members")
        ),
        sa.PrimaryKeyConstraint("member_id", "day", "kind", name=op.f("pk_medical_day_totals")),
    )
    op.create_table(
        "medical_claim_documents",
        sa.Column("id", _BIG_ID, autoincrement=True, nullable=False),
        sa.Column("claim_id", sa.BigInteger(), nullable=False),
        sa.Column("doc_type", sa.String(length=24), nullable=False),
        sa.Column("content_type", sa.String(length=40), nullable=False),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=False),
        sa.Column("uploaded_at", _TIME, nullable=False),
        sa.ForeignKeyConstraint(
            ["claim_id"], ["medical_claims.id"], name=op.f("fk_medical_claim_documents_claim_id_medical_claims")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_medical_claim_documents")),
    )
    op.create_index("ix_medical_claim_documents_claim", "medical_claim_documents", ["claim_id"], unique=False)
    op.create_table(
        "medical_claim_events",
        sa.Column("id", _BIG_ID, autoincrement=True, nullable=False),
        sa.Column("claim_id", sa.BigInteger(), nullable=False),
        sa.Column("from_state", sa.String(length=10), nullable=True),
        sa.Column("to_state", sa.String(length=10), nullable=False),
        sa.Column("actor", sa.String(length=64), nullable=False),
        sa.Column("reason_code", sa.String(length=8), nullable=True),
        sa.Column("note", sa.String(length=200), nullable=False),
        sa.Column("at", _TIME, nullable=False),
        sa.ForeignKeyConstraint(
            ["claim_id"], ["medical_claims.id"], name=op.f("fk_medical_claim_events_claim_id_medical_claims")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_medical_claim_events")),
    )
    op.create_index("ix_medical_claim_events_claim", "medical_claim_events", ["claim_id"], unique=False)
    op.create_table(
        "medical_clinics",
        sa.Column("terminal_id", sa.String(length=12), nullable=False),
        sa.Column("operator_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=80), nullable=False),
        sa.Column("region", sa.String(length=32), nullable=False),
        sa.Column("hospital_level", sa.String(length=16), nullable=False),
        sa.Column("created_at", _TIME, nullable=False),
        sa.ForeignKeyConstraint(
            ["operator_id"], ["operators.operator_id"], name=op.f("fk_medical_clinics_operator_id_operators")
        ),
        sa.ForeignKeyConstraint(
            ["terminal_id"], ["terminals.terminal_id"], name=op.f("fk_medical_clinics_terminal_id_terminals")
        ),
        sa.PrimaryKeyConstraint("terminal_id", name=op.f("pk_medical_clinics")),
    )
    op.create_table(
        "medical_visits",
        sa.Column("id", _BIG_ID, autoincrement=True, nullable=False),
        sa.Column("terminal_id", sa.String(length=12), nullable=False),
        sa.Column("visit_ref", sa.String(length=64), nullable=False),
        sa.Column("member_id", sa.BigInteger(), nullable=False),
        sa.Column("issuer_id", sa.String(length=16), nullable=False),
        sa.Column("card_asn", sa.String(length=20), nullable=False),
        sa.Column("kind", sa.String(length=12), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("rule_version", sa.String(length=32), nullable=False),
        sa.Column("region", sa.String(length=32), nullable=False),
        sa.Column("hospital_level", sa.String(length=16), nullable=False),
        sa.Column("total_fen", sa.BigInteger(), nullable=False),
        sa.Column("covered_fen", sa.BigInteger(), nullable=False),
        sa.Column("deductible_fen", sa.BigInteger(), nullable=False),
        sa.Column("fund_fen", sa.BigInteger(), nullable=False),
        sa.Column("patient_fen", sa.BigInteger(), nullable=False),
        sa.Column("limited_by", sa.String(length=12), nullable=False),
        sa.Column("state", sa.String(length=10), nullable=False),
        sa.Column("purse_terminal_seq", sa.BigInteger(), nullable=True),
        sa.Column("purse_tac", sa.String(length=8), nullable=True),
        sa.Column("refund_load_id", sa.String(length=64), nullable=True),
        sa.Column("reason", sa.String(length=200), nullable=True),
        sa.Column("decided_by", sa.String(length=64), nullable=True),
        sa.Column("created_at", _TIME, nullable=False),
        sa.Column("settled_at", _TIME, nullable=True),
        sa.Column("closed_at", _TIME, nullable=True),
        sa.CheckConstraint("kind IN ('outpatient', 'inpatient')", name=op.f("ck_medical_visits_kind_valid")),
        sa.CheckConstraint(
            "limited_by IN ('none', 'annual_cap', 'daily_cap')", name=op.f("ck_medical_visits_limited_by_valid")
        ),
        sa.CheckConstraint(
            "state IN ('reserved', 'settled', 'cancelled', 'reversed')", name=op.f("ck_medical_visits_state_valid")
        ),
        sa.CheckConstraint(
            _VISIT_SPLIT,
            name=op.f("ck_medical_visits_split_sums"),
        ),
        sa.ForeignKeyConstraint(
            ["member_id"], ["medical_members.id"], name=op.f("fk_medical_visits_member_id_medical_members")
        ),
        sa.ForeignKeyConstraint(
            ["terminal_id"], ["medical_clinics.terminal_id"], name=op.f("fk_medical_visits_terminal_id_medical_clinics")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_medical_visits")),
        sa.UniqueConstraint("terminal_id", "visit_ref", name=op.f("uq_medical_visits_terminal_id_visit_ref")),
    )
    op.create_index("ix_medical_visits_card", "medical_visits", ["issuer_id", "card_asn", "state"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_medical_visits_card", table_name="medical_visits")
    op.drop_table("medical_visits")
    op.drop_table("medical_clinics")
    op.drop_index("ix_medical_claim_events_claim", table_name="medical_claim_events")
    op.drop_table("medical_claim_events")
    op.drop_index("ix_medical_claim_documents_claim", table_name="medical_claim_documents")
    op.drop_table("medical_claim_documents")
    op.drop_table("medical_day_totals")
    op.drop_index("ix_medical_claims_citizen", table_name="medical_claims")
    op.drop_table("medical_claims")
    op.drop_table("medical_accumulators")
    op.drop_table("medical_members")
