"""Citizen services (issue 13): permit applications and deadlines.

- ``permit_applications`` (state, version, each statutory deadline with its calendar version);
- ``permit_steps`` (every step in order: who, when, the reason told to the citizen);
- ``permit_documents`` (uploaded materials: bytes, sniffed type, size, SHA-256).

The models are ``portal/modules/permits/models.py``; ``docs/permits.md``. New tables only.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_TIME = sa.DateTime(timezone=True)
_STATES = (
    "'submitted', 'materials_requested', 'not_accepted', 'accepted', 'under_review', 'granted', 'denied', "
    "'certificate_issued'"
)
_STEPS = (
    "'submit', 'request_materials', 'supplement', 'accept', 'refuse', 'start_review', 'extend', 'grant', 'deny', "
    "'issue_certificate'"
)


def upgrade() -> None:
    op.create_table(
        "permit_applications",
        sa.Column("id", sa.String(length=27), nullable=False),
        sa.Column("citizen_id", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("title", sa.String(length=200), nullable=False),
        sa.Column("channel", sa.String(length=8), nullable=False),
        sa.Column("delivery", sa.String(length=12), nullable=False),
        sa.Column("state", sa.String(length=24), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("submitted_at", _TIME, nullable=False),
        sa.Column("submitted_on", sa.Date(), nullable=False),
        sa.Column("materials_due", sa.Date(), nullable=False),
        sa.Column("materials_due_calendar", sa.String(length=40), nullable=False),
        sa.Column("materials_requested", sa.Boolean(), nullable=False),
        sa.Column("accepted_on", sa.Date(), nullable=True),
        sa.Column("decision_due", sa.Date(), nullable=True),
        sa.Column("decision_due_calendar", sa.String(length=40), nullable=True),
        sa.Column("extended", sa.Boolean(), nullable=False),
        sa.Column("decided_on", sa.Date(), nullable=True),
        sa.Column("certificate_due", sa.Date(), nullable=True),
        sa.Column("certificate_due_calendar", sa.String(length=40), nullable=True),
        sa.Column("certificate_issued_on", sa.Date(), nullable=True),
        sa.Column("certificate_no", sa.String(length=32), nullable=True),
        sa.CheckConstraint("channel IN ('online', 'counter')", name=op.f("ck_permit_applications_channel_valid")),
        sa.CheckConstraint("delivery IN ('electronic', 'counter')", name=op.f("ck_permit_applications_delivery_valid")),
        sa.CheckConstraint(f"state IN ({_STATES})", name=op.f("ck_permit_applications_state_valid")),
        sa.CheckConstraint("version >= 0", name=op.f("ck_permit_applications_version_nonnegative")),
        sa.ForeignKeyConstraint(
            ["citizen_id"],
            ["portal_citizens.id"],
            name=op.f("fk_permit_applications_citizen_id_portal_citizens"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_permit_applications")),
        sa.UniqueConstraint("certificate_no", name=op.f("uq_permit_applications_certificate_no")),
    )
    op.create_index("ix_permit_applications_citizen", "permit_applications", ["citizen_id", "submitted_at"])
    op.create_index("ix_permit_applications_state", "permit_applications", ["state"])
    op.create_table(
        "permit_documents",
        sa.Column("id", _BIG_ID, autoincrement=True, nullable=False),
        sa.Column("application_id", sa.String(length=27), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("content_type", sa.String(length=24), nullable=False),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        sa.Column("filename", sa.String(length=100), nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=False),
        sa.Column("uploaded_at", _TIME, nullable=False),
        sa.CheckConstraint(
            "content_type IN ('application/pdf', 'image/png', 'image/jpeg')",
            name=op.f("ck_permit_documents_content_type_valid"),
        ),
        sa.CheckConstraint("size_bytes > 0", name=op.f("ck_permit_documents_size_positive")),
        sa.ForeignKeyConstraint(
            ["application_id"],
            ["permit_applications.id"],
            name=op.f("fk_permit_documents_application_id_permit_applications"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_permit_documents")),
        sa.UniqueConstraint("application_id", "sha256", name=op.f("uq_permit_documents_application_id_sha256")),
    )
    op.create_table(
        "permit_steps",
        sa.Column("id", _BIG_ID, autoincrement=True, nullable=False),
        sa.Column("application_id", sa.String(length=27), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("step", sa.String(length=24), nullable=False),
        sa.Column("actor", sa.String(length=64), nullable=False),
        sa.Column("at", _TIME, nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("reason", sa.String(length=500), nullable=False),
        sa.CheckConstraint(f"step IN ({_STEPS})", name=op.f("ck_permit_steps_step_valid")),
        sa.ForeignKeyConstraint(
            ["application_id"],
            ["permit_applications.id"],
            name=op.f("fk_permit_steps_application_id_permit_applications"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_permit_steps")),
        sa.UniqueConstraint("application_id", "version", name=op.f("uq_permit_steps_application_id_version")),
    )


def downgrade() -> None:
    op.drop_table("permit_steps")
    op.drop_table("permit_documents")
    op.drop_index("ix_permit_applications_state", table_name="permit_applications")
    op.drop_index("ix_permit_applications_citizen", table_name="permit_applications")
    op.drop_table("permit_applications")
