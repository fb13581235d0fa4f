"""A plain index on ``denylist_entries (issuer_id, card_asn)``: every entry of a card, live or removed.

The partial unique index ``uq_denylist_entries_live_card`` covers live entries only; this one
lets ingest look up a card's removed entries too (``docs/notes-ingest-to-platform.md``, item 6).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_denylist_entries_card", "denylist_entries", ["issuer_id", "card_asn"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_denylist_entries_card", table_name="denylist_entries")
