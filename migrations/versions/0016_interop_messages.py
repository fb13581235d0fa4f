"""Interop messages (issue 12): window digests and dispute moves over the signed channel.

``interop_messages_out`` keeps our dispute moves until the peer answered them, in order;
``interop_messages_in`` the peer's we acted on, with our answer, so a replay acts once. The
alarms may now also say that an item was moved out of a window final here (``window_moved``)
or that the peer refused one of our messages (``message_refused``).

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_TIME = sa.DateTime(timezone=True)
_KINDS_BEFORE = "kind IN ('net_debit_cap', 'digest_mismatch')"
_KINDS_AFTER = "kind IN ('net_debit_cap', 'digest_mismatch', 'window_moved', 'message_refused')"


def upgrade() -> None:
    op.create_table(
        "interop_messages_out",
        sa.Column("id", _BIG_ID, autoincrement=True, nullable=False),
        sa.Column("peer_city", sa.String(length=16), nullable=False),
        sa.Column("message_id", sa.String(length=128), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.Column("state", sa.String(length=10), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", _TIME, nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("reply_body", sa.LargeBinary(), nullable=True),
        sa.Column("created_at", _TIME, nullable=False),
        sa.Column("updated_at", _TIME, nullable=False),
        sa.CheckConstraint("kind IN ('window', 'dispute')", name=op.f("ck_interop_messages_out_kind_valid")),
        sa.CheckConstraint(
            "state IN ('pending', 'delivered', 'refused')", name=op.f("ck_interop_messages_out_state_valid")
        ),
        sa.CheckConstraint("attempts >= 0", name=op.f("ck_interop_messages_out_attempts_nonnegative")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_interop_messages_out")),
        sa.UniqueConstraint("message_id", name=op.f("uq_interop_messages_out_message_id")),
    )
    op.create_index(
        "ix_interop_messages_out_peer_state", "interop_messages_out", ["peer_city", "state", "id"], unique=False
    )
    op.create_table(
        "interop_messages_in",
        sa.Column("id", _BIG_ID, autoincrement=True, nullable=False),
        sa.Column("peer_city", sa.String(length=16), nullable=False),
        sa.Column("message_id", sa.String(length=128), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("reply_body", sa.LargeBinary(), nullable=False),
        sa.Column("received_at", _TIME, nullable=False),
        sa.CheckConstraint("kind IN ('window', 'dispute')", name=op.f("ck_interop_messages_in_kind_valid")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_interop_messages_in")),
        sa.UniqueConstraint("peer_city", "message_id", name=op.f("uq_interop_messages_in_peer_city_message_id")),
    )
    with op.batch_alter_table("interop_alarms") as batch:
        batch.drop_constraint(op.f("ck_interop_alarms_kind_valid"), type_="check")
        batch.create_check_constraint(op.f("ck_interop_alarms_kind_valid"), _KINDS_AFTER)


def downgrade() -> None:
    op.execute("DELETE FROM interop_alarms WHERE kind IN ('window_moved', 'message_refused')")
    with op.batch_alter_table("interop_alarms") as batch:
        batch.drop_constraint(op.f("ck_interop_alarms_kind_valid"), type_="check")
        batch.create_check_constraint(op.f("ck_interop_alarms_kind_valid"), _KINDS_BEFORE)
    op.drop_table("interop_messages_in")
    op.drop_index("ix_interop_messages_out_peer_state", table_name="interop_messages_out")
    op.drop_table("interop_messages_out")
