"""The portal's citizen accounts (issue 10): citizens, login sessions, card bindings.

- ``portal_citizens``: mobile number (unique, the login), argon2id password hash, real name,
  the ID number's keyed hash (unique) and masked form; never the clear ID number.
- ``portal_sessions``: id = SHA-256 of the cookie's token (a copy of the table opens no
  session), the CSRF token, expiry and assurance level (``account`` or ``card``).
- ``portal_card_bindings``: which citizen a card is bound to; (issuer, ASN) unique.

The models are ``portal/models.py``. New tables only: plain ``CREATE TABLE`` on both databases.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "portal_citizens",
        sa.Column("id", _BIG_ID, autoincrement=True, nullable=False),
        sa.Column("mobile", sa.String(length=11), nullable=False),
        sa.Column("password_hash", sa.String(length=255), nullable=False),
        sa.Column("real_name", sa.String(length=64), nullable=False),
        sa.Column("id_number_hash", sa.String(length=64), nullable=True),
        sa.Column("id_number_masked", sa.String(length=18), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_portal_citizens")),
        sa.UniqueConstraint("mobile", name=op.f("uq_portal_citizens_mobile")),
        sa.UniqueConstraint("id_number_hash", name=op.f("uq_portal_citizens_id_number_hash")),
    )

    op.create_table(
        "portal_sessions",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("citizen_id", sa.BigInteger(), nullable=False),
        sa.Column("csrf_token", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("assurance", sa.String(length=8), nullable=False),
        sa.CheckConstraint("assurance IN ('account', 'card')", name=op.f("ck_portal_sessions_assurance_valid")),
        sa.ForeignKeyConstraint(
            ["citizen_id"],
            ["portal_citizens.id"],
            name=op.f("fk_portal_sessions_citizen_id_portal_citizens"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_portal_sessions")),
    )
    op.create_index("ix_portal_sessions_citizen_id", "portal_sessions", ["citizen_id"])
    op.create_index("ix_portal_sessions_expires_at", "portal_sessions", ["expires_at"])

    op.create_table(
        "portal_card_bindings",
        sa.Column("id", _BIG_ID, autoincrement=True, nullable=False),
        sa.Column("citizen_id", sa.BigInteger(), nullable=False),
        sa.Column("issuer_id", sa.String(length=16), nullable=False),
        sa.Column("card_asn", sa.String(length=20), nullable=False),
        sa.Column("bound_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("how", sa.String(length=16), nullable=False),
        sa.CheckConstraint("how IN ('transaction', 'card_login')", name=op.f("ck_portal_card_bindings_how_valid")),
        sa.ForeignKeyConstraint(
            ["citizen_id"],
            ["portal_citizens.id"],
            name=op.f("fk_portal_card_bindings_citizen_id_portal_citizens"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_portal_card_bindings")),
        sa.UniqueConstraint("issuer_id", "card_asn", name=op.f("uq_portal_card_bindings_issuer_id_card_asn")),
    )
    op.create_index("ix_portal_card_bindings_citizen_id", "portal_card_bindings", ["citizen_id"])


def downgrade() -> None:
    op.drop_index("ix_portal_card_bindings_citizen_id", table_name="portal_card_bindings")
    op.drop_table("portal_card_bindings")
    op.drop_index("ix_portal_sessions_expires_at", table_name="portal_sessions")
    op.drop_index("ix_portal_sessions_citizen_id", table_name="portal_sessions")
    op.drop_table("portal_sessions")
    op.drop_table("portal_citizens")
