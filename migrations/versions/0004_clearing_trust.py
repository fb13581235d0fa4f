"""Clearing trust (issue 8): decisions that follow the money, refunds from verified legs, reserved loads.

- ``taps`` gains the counters a gap is missing (``gap_first``..``gap_last``, partial index
  ``ix_taps_gaps``: gaps become exception items only when still open after an age) and the
  tap-off's fare facts the terminal claims (``fare_tap_kind``,
  ``fare_tariff_version``, ``fare_refund_claimed_fen``) and the refund clearing computed
  (``refund_fen``): the refund is stored with the tap.
- ``exception_items`` gains the missing counter range of a gap (``gap_first``..``gap_last``,
  so the item resolves itself when they arrive), the amount a decision moved, the state
  ``resolved`` (closed by clearing itself) and a partial index on a card's open items.
- ``pending_loads`` gains its kind, the payer account (a column, never parsed from the id),
  the pending transfer reserving the amount, an expiry, and the state ``expired``.
- ``interop_forwards`` holds other issuers' records apart from ``taps``: they cannot claim
  the natural keys a genuine record needs before their issuer has verified them.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_OPEN = sa.text("state = 'open'")
_EXCEPTION_STATES_OLD = "state IN ('open', 'accepted', 'written_off')"
_EXCEPTION_STATES = "state IN ('open', 'accepted', 'written_off', 'resolved')"
_LOAD_STATES_OLD = "state IN ('pending', 'authorized', 'posted', 'cancelled', 'refunded')"
_LOAD_STATES = "state IN ('pending', 'authorized', 'posted', 'cancelled', 'expired', 'refunded')"
_LOAD_KINDS = "kind IN ('topup', 'refund', 'counter')"


def upgrade() -> None:
    # taps: plain ADD COLUMN on both databases (SQLite keeps the table and its triggers)
    op.add_column("taps", sa.Column("fare_tap_kind", sa.String(length=8), nullable=True))
    op.add_column("taps", sa.Column("fare_tariff_version", sa.String(length=64), nullable=True))
    op.add_column("taps", sa.Column("fare_refund_claimed_fen", sa.BigInteger(), nullable=True))
    op.add_column("taps", sa.Column("refund_fen", sa.BigInteger(), nullable=True))
    op.add_column("taps", sa.Column("gap_first", sa.Integer(), nullable=True))
    op.add_column("taps", sa.Column("gap_last", sa.Integer(), nullable=True))
    where = sa.text("gap_first IS NOT NULL")
    op.create_index("ix_taps_gaps", "taps", ["business_day"], postgresql_where=where, sqlite_where=where)

    with op.batch_alter_table("exception_items") as batch:
        batch.add_column(sa.Column("gap_first", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("gap_last", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("decision_amount_fen", sa.BigInteger(), nullable=True))
        batch.drop_constraint(op.f("ck_exception_items_state_valid"), type_="check")
        batch.create_check_constraint("state_valid", _EXCEPTION_STATES)
        batch.create_check_constraint("gap_ordered", "gap_first IS NULL OR gap_last >= gap_first")
    op.create_index(
        "ix_exception_items_open_card",
        "exception_items",
        ["issuer_id", "card_asn"],
        postgresql_where=_OPEN,
        sqlite_where=_OPEN,
    )

    with op.batch_alter_table("pending_loads") as batch:
        batch.add_column(sa.Column("kind", sa.String(length=8), nullable=False, server_default="topup"))
        batch.add_column(sa.Column("payer_account_id", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("reserve_transfer_id", sa.String(length=80), nullable=True))
        batch.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
        batch.drop_constraint(op.f("ck_pending_loads_state_valid"), type_="check")
        batch.create_check_constraint("state_valid", _LOAD_STATES)
        batch.create_check_constraint("kind_valid", _LOAD_KINDS)
        batch.create_foreign_key("fk_pending_loads_payer_account_id_accounts", "accounts", ["payer_account_id"], ["id"])
        batch.create_foreign_key(
            "fk_pending_loads_reserve_transfer_id_transfers", "transfers", ["reserve_transfer_id"], ["id"]
        )
    # refunds made before this revision named their terminal in the id; give them their payer
    op.execute(
        "UPDATE pending_loads SET kind = 'refund', payer_account_id = ("
        " SELECT t.payable_account_id FROM terminals t"
        " WHERE pending_loads.id LIKE 'refund:' || t.terminal_id || ':%')"
        " WHERE id LIKE 'refund:%'"
    )
    op.execute(
        "UPDATE pending_loads SET kind = 'counter'"
        " WHERE kind = 'topup' AND payment_ref IS NULL AND id NOT LIKE 'refund:%'"
    )
    with op.batch_alter_table("pending_loads") as batch:
        batch.alter_column("kind", server_default=None)

    op.create_table(
        "interop_forwards",
        sa.Column("id", _BIG_ID, autoincrement=True, nullable=False),
        sa.Column("batch_id", sa.BigInteger(), nullable=False),
        sa.Column("batch_seq", sa.BigInteger(), nullable=False),
        sa.Column("terminal_id", sa.String(length=12), nullable=False),
        sa.Column("terminal_seq", sa.BigInteger(), nullable=False),
        sa.Column("record_digest", sa.String(length=64), nullable=False),
        sa.Column("issuer_id", sa.String(length=16), nullable=False),
        sa.Column("card_asn", sa.String(length=20), nullable=False),
        sa.Column("offline_counter", sa.Integer(), nullable=False),
        sa.Column("tx_type", sa.SmallInteger(), nullable=False),
        sa.Column("amount_fen", sa.BigInteger(), nullable=False),
        sa.Column("tx_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("business_day", sa.Date(), nullable=False),
        sa.Column("record", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(length=12), nullable=False),
        sa.Column("issuer_code", sa.String(length=32), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("amount_fen >= 0", name=op.f("ck_interop_forwards_amount_nonnegative")),
        sa.CheckConstraint(
            "state IN ('forwarded', 'accepted', 'rejected')", name=op.f("ck_interop_forwards_state_valid")
        ),
        sa.ForeignKeyConstraint(["batch_id"], ["batches.id"], name=op.f("fk_interop_forwards_batch_id_batches")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_interop_forwards")),
        sa.UniqueConstraint(
            "terminal_id",
            "terminal_seq",
            "record_digest",
            name=op.f("uq_interop_forwards_terminal_id_terminal_seq_record_digest"),
        ),
    )
    op.create_index("ix_interop_forwards_state_issuer", "interop_forwards", ["state", "issuer_id"], unique=False)
    # Forwarded records written before this revision sit in taps and hold natural keys they
    # never proved: move them out, so a genuine record can claim its keys.
    op.execute(
        "INSERT INTO interop_forwards (batch_id, batch_seq, terminal_id, terminal_seq, record_digest, issuer_id,"
        " card_asn, offline_counter, tx_type, amount_fen, tx_time, business_day, record, state, received_at)"
        " SELECT batch_id, batch_seq, terminal_id, terminal_seq, 'migrated-' || id, issuer_id, card_asn,"
        " offline_counter, tx_type, amount_fen, tx_time, business_day, '{}', 'forwarded', received_at"
        " FROM taps WHERE verdict = 'forwarded' AND batch_id IS NOT NULL"
    )
    op.execute("DELETE FROM taps WHERE verdict = 'forwarded'")


def downgrade() -> None:
    op.drop_index("ix_interop_forwards_state_issuer", table_name="interop_forwards")
    op.drop_table("interop_forwards")
    op.execute("UPDATE pending_loads SET state = 'cancelled' WHERE state = 'expired'")
    with op.batch_alter_table("pending_loads") as batch:
        batch.drop_constraint(op.f("fk_pending_loads_reserve_transfer_id_transfers"), type_="foreignkey")
        batch.drop_constraint(op.f("fk_pending_loads_payer_account_id_accounts"), type_="foreignkey")
        batch.drop_constraint(op.f("ck_pending_loads_kind_valid"), type_="check")
        batch.drop_constraint(op.f("ck_pending_loads_state_valid"), type_="check")
        batch.create_check_constraint("state_valid", _LOAD_STATES_OLD)
        batch.drop_column("expires_at")
        batch.drop_column("reserve_transfer_id")
        batch.drop_column("payer_account_id")
        batch.drop_column("kind")
    op.drop_index("ix_exception_items_open_card", table_name="exception_items")
    op.execute("UPDATE exception_items SET state = 'accepted' WHERE state = 'resolved'")
    with op.batch_alter_table("exception_items") as batch:
        batch.drop_constraint(op.f("ck_exception_items_gap_ordered"), type_="check")
        batch.drop_constraint(op.f("ck_exception_items_state_valid"), type_="check")
        batch.create_check_constraint("state_valid", _EXCEPTION_STATES_OLD)
        batch.drop_column("decision_amount_fen")
        batch.drop_column("gap_last")
        batch.drop_column("gap_first")
    # Forwarded records go back to nothing: 0003's taps would make them claim keys again.
    op.drop_index("ix_taps_gaps", table_name="taps")
    for column in (
        "gap_last",
        "gap_first",
        "refund_fen",
        "fare_refund_claimed_fen",
        "fare_tariff_version",
        "fare_tap_kind",
    ):
        op.drop_column("taps", column)
