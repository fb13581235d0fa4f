"""Interop with Xi'an (issue 12): outbox, batches, peer keys, positions, disputes.

Two marked blocks, one per half of interop (``interop_xian/models.py`` likewise):

- wire: ``interop_channels`` (last sequence per peer and direction), ``interop_outbox``
  (forwarded records on their way to their issuer), ``interop_batches_out`` (the exact bytes
  sent and the acknowledgement), ``interop_batches_in`` (batches received and the
  acknowledgement answered), ``interop_peer_keys`` (peers' Ed25519 public keys with their
  retirement), ``interop_refusals`` (deliveries refused before judging).
- issuer: see its block.

New tables only.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    _upgrade_wire()
    _upgrade_issuer()


def downgrade() -> None:
    _downgrade_issuer()
    _downgrade_wire()


# --- wire ---

_WIRE_TABLES = (
    "interop_outbox",
    "interop_refusals",
    "interop_peer_keys",
    "interop_channels",
    "interop_batches_out",
    "interop_batches_in",
)


def _upgrade_wire() -> None:
    op.create_table(
        "interop_batches_in",
        sa.Column("id", _BIG_ID, autoincrement=True, nullable=False),
        sa.Column("peer_city", sa.String(length=16), nullable=False),
        sa.Column("sequence", sa.BigInteger(), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("key_id", sa.String(length=32), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.Column("item_count", sa.Integer(), nullable=False),
        sa.Column("accepted_count", sa.Integer(), nullable=False),
        sa.Column("ack_body", sa.LargeBinary(), nullable=False),
        sa.Column("received_at", _TIME, nullable=False),
        sa.CheckConstraint(
            "sequence > 0 AND item_count > 0 AND accepted_count >= 0", name=op.f("ck_interop_batches_in_counts_valid")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_interop_batches_in")),
        sa.UniqueConstraint("peer_city", "sequence", name=op.f("uq_interop_batches_in_peer_city_sequence")),
    )
    op.create_table(
        "interop_batches_out",
        sa.Column("id", _BIG_ID, autoincrement=True, nullable=False),
        sa.Column("peer_city", sa.String(length=16), nullable=False),
        sa.Column("sequence", sa.BigInteger(), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.Column("item_count", sa.Integer(), nullable=False),
        sa.Column("amount_fen", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.String(length=12), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", _TIME, nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("ack_body", sa.LargeBinary(), nullable=True),
        sa.Column("ack_key_id", sa.String(length=32), nullable=True),
        sa.Column("created_at", _TIME, nullable=False),
        sa.Column("acknowledged_at", _TIME, nullable=True),
        sa.CheckConstraint(
            "(state = 'acknowledged') = (ack_body IS NOT NULL)",
            name=op.f("ck_interop_batches_out_ack_when_acknowledged"),
        ),
        sa.CheckConstraint("state IN ('sent', 'acknowledged')", name=op.f("ck_interop_batches_out_state_valid")),
        sa.CheckConstraint(
            "sequence > 0 AND item_count > 0 AND amount_fen >= 0 AND attempts >= 0",
            name=op.f("ck_interop_batches_out_counts_valid"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_interop_batches_out")),
        sa.UniqueConstraint("peer_city", "sequence", name=op.f("uq_interop_batches_out_peer_city_sequence")),
    )
    op.create_index("ix_interop_batches_out_state", "interop_batches_out", ["peer_city", "state", "sequence"])
    op.create_table(
        "interop_channels",
        sa.Column("peer_city", sa.String(length=16), nullable=False),
        sa.Column("direction", sa.String(length=3), nullable=False),
        sa.Column("last_sequence", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", _TIME, nullable=False),
        sa.CheckConstraint("direction IN ('out', 'in')", name=op.f("ck_interop_channels_direction_valid")),
        sa.CheckConstraint("last_sequence >= 0", name=op.f("ck_interop_channels_sequence_nonnegative")),
        sa.PrimaryKeyConstraint("peer_city", "direction", name=op.f("pk_interop_channels")),
    )
    op.create_table(
        "interop_peer_keys",
        sa.Column("key_id", sa.String(length=32), nullable=False),
        sa.Column("peer_city", sa.String(length=16), nullable=False),
        sa.Column("public_key", sa.String(length=64), nullable=False),
        sa.Column("created_at", _TIME, nullable=False),
        sa.Column("imported_at", _TIME, nullable=False),
        sa.Column("retire_at", _TIME, nullable=True),
        sa.PrimaryKeyConstraint("key_id", name=op.f("pk_interop_peer_keys")),
    )
    op.create_index("ix_interop_peer_keys_peer", "interop_peer_keys", ["peer_city"])
    op.create_table(
        "interop_refusals",
        sa.Column("id", _BIG_ID, autoincrement=True, nullable=False),
        sa.Column("received_at", _TIME, nullable=False),
        sa.Column("code", sa.String(length=40), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("key_id", sa.String(length=32), nullable=True),
        sa.Column("peer_city", sa.String(length=16), nullable=True),
        sa.Column("sequence", sa.BigInteger(), nullable=True),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("body_bytes", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_interop_refusals")),
    )
    op.create_index("ix_interop_refusals_received", "interop_refusals", ["received_at"])
    op.create_table(
        "interop_outbox",
        sa.Column("id", _BIG_ID, autoincrement=True, nullable=False),
        sa.Column("forward_id", sa.BigInteger(), nullable=False),
        sa.Column("item_id", sa.String(length=96), nullable=False),
        sa.Column("peer_city", sa.String(length=16), nullable=False),
        sa.Column("peer_issuer_id", sa.String(length=16), nullable=False),
        sa.Column("amount_fen", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.String(length=12), nullable=False),
        sa.Column("batch_sequence", sa.BigInteger(), nullable=True),
        sa.Column("code", sa.String(length=40), nullable=True),
        sa.Column("verdict_amount_fen", sa.BigInteger(), nullable=True),
        sa.Column("window_day", sa.Date(), nullable=True),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("transfer_id", sa.String(length=80), nullable=True),
        sa.Column("created_at", _TIME, nullable=False),
        sa.Column("updated_at", _TIME, nullable=False),
        sa.CheckConstraint(
            "(state = 'pending') = (batch_sequence IS NULL)", name=op.f("ck_interop_outbox_batched_unless_pending")
        ),
        sa.CheckConstraint(
            "state IN ('pending', 'sent', 'acknowledged', 'accepted', 'rejected')",
            name=op.f("ck_interop_outbox_state_valid"),
        ),
        sa.CheckConstraint("amount_fen >= 0", name=op.f("ck_interop_outbox_amount_nonnegative")),
        sa.ForeignKeyConstraint(
            ["forward_id"], ["interop_forwards.id"], name=op.f("fk_interop_outbox_forward_id_interop_forwards")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_interop_outbox")),
        sa.UniqueConstraint("forward_id", name=op.f("uq_interop_outbox_forward_id")),
        sa.UniqueConstraint("item_id", name=op.f("uq_interop_outbox_item_id")),
    )
    op.create_index("ix_interop_outbox_peer_batch", "interop_outbox", ["peer_city", "batch_sequence"])
    op.create_index("ix_interop_outbox_peer_state", "interop_outbox", ["peer_city", "state"])


def _downgrade_wire() -> None:
    for table in _WIRE_TABLES:
        op.drop_table(table)


# --- issuer ---
# interop_xian.issuer, netting, window_close, disputes: judged items, the position journal, caps,
# window instructions, alarms, disputes and their events.

_ISSUER_TABLES = (
    "interop_dispute_events",
    "interop_windows",
    "interop_peer_limits",
    "interop_issuer_items",
    "interop_disputes",
    "interop_bookings",
    "interop_alarms",
)


def _upgrade_issuer() -> None:
    op.create_table(
        "interop_alarms",
        sa.Column("id", _BIG_ID, autoincrement=True, nullable=False),
        sa.Column("peer_city", sa.String(length=16), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("window_day", sa.Date(), nullable=True),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.Column("created_at", _TIME, nullable=False),
        sa.CheckConstraint("kind IN ('net_debit_cap', 'digest_mismatch')", name=op.f("ck_interop_alarms_kind_valid")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_interop_alarms")),
    )
    op.create_index("ix_interop_alarms_peer_created", "interop_alarms", ["peer_city", "created_at"], unique=False)
    op.create_table(
        "interop_bookings",
        sa.Column("id", _BIG_ID, autoincrement=True, nullable=False),
        sa.Column("peer_city", sa.String(length=16), nullable=False),
        sa.Column("window_day", sa.Date(), nullable=False),
        sa.Column("direction", sa.String(length=8), nullable=False),
        sa.Column("item_id", sa.String(length=96), nullable=False),
        sa.Column("amount_fen", sa.BigInteger(), nullable=False),
        sa.Column("source", sa.String(length=8), nullable=False),
        sa.Column("transfer_id", sa.String(length=80), nullable=False),
        sa.Column("created_at", _TIME, nullable=False),
        sa.CheckConstraint("direction IN ('due_to', 'due_from')", name=op.f("ck_interop_bookings_direction_valid")),
        sa.CheckConstraint("source IN ('item', 'dispute')", name=op.f("ck_interop_bookings_source_valid")),
        sa.CheckConstraint("amount_fen > 0", name=op.f("ck_interop_bookings_amount_positive")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_interop_bookings")),
        sa.UniqueConstraint(
            "peer_city", "direction", "item_id", name=op.f("uq_interop_bookings_peer_city_direction_item_id")
        ),
    )
    op.create_index("ix_interop_bookings_peer_window", "interop_bookings", ["peer_city", "window_day"], unique=False)
    op.create_table(
        "interop_disputes",
        sa.Column("id", _BIG_ID, autoincrement=True, nullable=False),
        sa.Column("peer_city", sa.String(length=16), nullable=False),
        sa.Column("role", sa.String(length=8), nullable=False),
        sa.Column("item_id", sa.String(length=96), nullable=False),
        sa.Column("amount_fen", sa.BigInteger(), nullable=False),
        sa.Column("reason_code", sa.String(length=40), nullable=False),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("deadline", sa.Date(), nullable=True),
        sa.Column("opened_at", _TIME, nullable=False),
        sa.Column("updated_at", _TIME, nullable=False),
        sa.Column("outcome_transfer_id", sa.String(length=80), nullable=True),
        sa.Column("evidence", sa.Text(), nullable=True),
        sa.CheckConstraint("role IN ('issuer', 'acquirer')", name=op.f("ck_interop_disputes_role_valid")),
        sa.CheckConstraint(
            "state IN ('opened', 'evidence_requested', 'evidence_given', 'accepted', 'rejected', 'written_off')",
            name=op.f("ck_interop_disputes_state_valid"),
        ),
        sa.CheckConstraint("amount_fen >= 0", name=op.f("ck_interop_disputes_amount_nonnegative")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_interop_disputes")),
        sa.UniqueConstraint("peer_city", "role", "item_id", name=op.f("uq_interop_disputes_peer_city_role_item_id")),
    )
    op.create_index("ix_interop_disputes_state_deadline", "interop_disputes", ["state", "deadline"], unique=False)
    op.create_table(
        "interop_issuer_items",
        sa.Column("id", _BIG_ID, autoincrement=True, nullable=False),
        sa.Column("peer_city", sa.String(length=16), nullable=False),
        sa.Column("item_id", sa.String(length=96), nullable=False),
        sa.Column("batch_id", sa.String(length=128), nullable=False),
        sa.Column("terminal_id", sa.String(length=12), nullable=False),
        sa.Column("terminal_seq", sa.BigInteger(), nullable=False),
        sa.Column("record_digest", sa.String(length=64), nullable=False),
        sa.Column("issuer_id", sa.String(length=16), nullable=False),
        sa.Column("card_asn", sa.String(length=20), nullable=False),
        sa.Column("offline_counter", sa.Integer(), nullable=False),
        sa.Column("tx_type", sa.SmallInteger(), nullable=False),
        sa.Column("amount_fen", sa.BigInteger(), nullable=False),
        sa.Column("tx_time", _TIME, nullable=True),
        sa.Column("outcome", sa.String(length=10), nullable=False),
        sa.Column("code", sa.String(length=32), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("claims_keys", sa.Boolean(), nullable=False),
        sa.Column("window_day", sa.Date(), nullable=True),
        sa.Column("transfer_id", sa.String(length=80), nullable=True),
        sa.Column("record", sa.JSON(), nullable=False),
        sa.Column("received_at", _TIME, nullable=False),
        sa.CheckConstraint(
            "outcome = 'rejected' OR claims_keys", name=op.f("ck_interop_issuer_items_accepted_claims_keys")
        ),
        sa.CheckConstraint("outcome IN ('accepted', 'rejected')", name=op.f("ck_interop_issuer_items_outcome_valid")),
        sa.CheckConstraint("amount_fen >= 0", name=op.f("ck_interop_issuer_items_amount_nonnegative")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_interop_issuer_items")),
        sa.UniqueConstraint("peer_city", "item_id", name=op.f("uq_interop_issuer_items_peer_city_item_id")),
    )
    op.create_index(
        "uq_interop_issuer_items_card_counter",
        "interop_issuer_items",
        ["issuer_id", "card_asn", "offline_counter", "tx_type"],
        unique=True,
        sqlite_where=sa.text("claims_keys"),
        postgresql_where=sa.text("claims_keys"),
    )
    op.create_index(
        "uq_interop_issuer_items_terminal_seq",
        "interop_issuer_items",
        ["peer_city", "terminal_id", "terminal_seq"],
        unique=True,
        sqlite_where=sa.text("claims_keys"),
        postgresql_where=sa.text("claims_keys"),
    )
    op.create_table(
        "interop_peer_limits",
        sa.Column("peer_city", sa.String(length=16), nullable=False),
        sa.Column("cap_fen", sa.BigInteger(), nullable=True),
        sa.Column("alarm_pct", sa.SmallInteger(), nullable=False),
        sa.Column("updated_at", _TIME, nullable=False),
        sa.CheckConstraint("alarm_pct BETWEEN 1 AND 100", name=op.f("ck_interop_peer_limits_alarm_pct_range")),
        sa.CheckConstraint("cap_fen IS NULL OR cap_fen >= 0", name=op.f("ck_interop_peer_limits_cap_nonnegative")),
        sa.PrimaryKeyConstraint("peer_city", name=op.f("pk_interop_peer_limits")),
    )
    op.create_table(
        "interop_windows",
        sa.Column("peer_city", sa.String(length=16), nullable=False),
        sa.Column("window_day", sa.Date(), nullable=False),
        sa.Column("state", sa.String(length=10), nullable=False),
        sa.Column("due_to_fen", sa.BigInteger(), nullable=False),
        sa.Column("due_from_fen", sa.BigInteger(), nullable=False),
        sa.Column("our_digest", sa.String(length=64), nullable=False),
        sa.Column("peer_digest", sa.String(length=64), nullable=True),
        sa.Column("instruction", sa.JSON(), nullable=False),
        sa.Column("finalized_at", _TIME, nullable=True),
        sa.Column("updated_at", _TIME, nullable=False),
        sa.CheckConstraint(
            "(state = 'final') = (finalized_at IS NOT NULL)", name=op.f("ck_interop_windows_final_iff_finalized")
        ),
        sa.CheckConstraint("state IN ('proposed', 'mismatch', 'final')", name=op.f("ck_interop_windows_state_valid")),
        sa.CheckConstraint(
            "due_to_fen >= 0 AND due_from_fen >= 0", name=op.f("ck_interop_windows_amounts_nonnegative")
        ),
        sa.PrimaryKeyConstraint("peer_city", "window_day", name=op.f("pk_interop_windows")),
    )
    op.create_table(
        "interop_dispute_events",
        sa.Column("id", _BIG_ID, autoincrement=True, nullable=False),
        sa.Column("dispute_id", sa.BigInteger(), nullable=False),
        sa.Column("from_state", sa.String(length=20), nullable=True),
        sa.Column("to_state", sa.String(length=20), nullable=False),
        sa.Column("actor", sa.String(length=64), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("at", _TIME, nullable=False),
        sa.ForeignKeyConstraint(
            ["dispute_id"], ["interop_disputes.id"], name=op.f("fk_interop_dispute_events_dispute_id_interop_disputes")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_interop_dispute_events")),
    )
    op.create_index("ix_interop_dispute_events_dispute", "interop_dispute_events", ["dispute_id"], unique=False)
    # ### end Alembic commands ###


def _downgrade_issuer() -> None:
    # indexes go with their tables; dependants first
    for table in _ISSUER_TABLES:
        op.drop_table(table)
