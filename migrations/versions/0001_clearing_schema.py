"""Clearing schema: ledger, registry, uploads and taps, denylist, loads, exceptions.

One migration that creates everything, on SQLite and PostgreSQL alike. It spells out the
tables rather than calling ``Base.metadata.create_all`` so that later model changes need
their own revisions (``tests/clearing/test_migrations.py`` checks models == migrations).

PostgreSQL only: ``taps`` is range-partitioned by ``business_day`` with a default
partition (``taps_default``); its primary key is ``(id, business_day)`` because a
partitioned table's keys must contain the partition key. The natural keys of a tap are
unique in ``tap_keys`` instead (``clearing.models.TapKey``). Daily partitions are added
ahead of time by ``clearing.db.create_tap_partitions``.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC = sa.DateTime(timezone=True)  # values are UTC; clearing.models.UTCDateTime converts


def _taps_primary_key(postgres: bool) -> list[sa.PrimaryKeyConstraint]:
    if postgres:
        return [sa.PrimaryKeyConstraint("id", "business_day", name=op.f("pk_taps"))]
    return [sa.PrimaryKeyConstraint("id", name=op.f("pk_taps"))]


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    op.create_table(
        "accounts",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("ledger", sa.Integer(), nullable=False),
        sa.Column("code", sa.Integer(), nullable=False),
        sa.Column("owner_ref", sa.String(length=80), nullable=False),
        sa.Column("flags", sa.Integer(), nullable=False),
        sa.Column("debits_pending", sa.BigInteger(), nullable=False),
        sa.Column("debits_posted", sa.BigInteger(), nullable=False),
        sa.Column("credits_pending", sa.BigInteger(), nullable=False),
        sa.Column("credits_posted", sa.BigInteger(), nullable=False),
        sa.Column("created_at", UTC, nullable=False),
        sa.CheckConstraint(
            "(flags & 1) = 0 OR debits_pending + debits_posted <= credits_posted",
            name=op.f("ck_accounts_debits_must_not_exceed_credits"),
        ),
        sa.CheckConstraint(
            "(flags & 2) = 0 OR credits_pending + credits_posted <= debits_posted",
            name=op.f("ck_accounts_credits_must_not_exceed_debits"),
        ),
        sa.CheckConstraint("(flags & 3) <> 3", name=op.f("ck_accounts_flags_exclusive")),
        sa.CheckConstraint(
            "debits_pending >= 0 AND debits_posted >= 0 AND credits_pending >= 0 AND credits_posted >= 0",
            name=op.f("ck_accounts_totals_nonnegative"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_accounts")),
        sa.UniqueConstraint("code", "owner_ref", name=op.f("uq_accounts_code_owner_ref")),
    )
    op.create_table(
        "counters",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_counters")),
    )
    op.create_table(
        "denylist_entries",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("issuer_id", sa.String(length=16), nullable=False),
        sa.Column("card_asn", sa.String(length=20), nullable=False),
        sa.Column("reason", sa.String(length=64), nullable=False),
        sa.Column("effective_at", UTC, nullable=False),
        sa.Column("added_version", sa.BigInteger(), nullable=False),
        sa.Column("removed_version", sa.BigInteger(), nullable=True),
        sa.Column("removed_at", UTC, nullable=True),
        sa.Column("created_at", UTC, nullable=False),
        sa.CheckConstraint(
            "removed_version IS NULL OR removed_version > added_version",
            name=op.f("ck_denylist_entries_versions_ordered"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_denylist_entries")),
    )
    op.create_index("ix_denylist_entries_added_version", "denylist_entries", ["added_version"], unique=False)
    op.create_index("ix_denylist_entries_removed_version", "denylist_entries", ["removed_version"], unique=False)
    op.create_index(
        "uq_denylist_entries_live_card",
        "denylist_entries",
        ["issuer_id", "card_asn"],
        unique=True,
        sqlite_where=sa.text("removed_version IS NULL"),
        postgresql_where=sa.text("removed_version IS NULL"),
    )
    op.create_table(
        "issuers",
        sa.Column("issuer_id", sa.String(length=16), nullable=False),
        sa.Column("city", sa.String(length=16), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("own", sa.Boolean(), nullable=False),
        sa.Column("created_at", UTC, nullable=False),
        sa.CheckConstraint("length(issuer_id) = 16", name=op.f("ck_issuers_issuer_id_len")),
        sa.PrimaryKeyConstraint("issuer_id", name=op.f("pk_issuers")),
    )
    op.create_table(
        "tap_keys",
        sa.Column("terminal_id", sa.String(length=12), nullable=False),
        sa.Column("terminal_seq", sa.BigInteger(), nullable=False),
        sa.Column("issuer_id", sa.String(length=16), nullable=False),
        sa.Column("card_asn", sa.String(length=20), nullable=False),
        sa.Column("offline_counter", sa.Integer(), nullable=False),
        sa.Column("tx_type", sa.SmallInteger(), nullable=False),
        sa.Column("business_day", sa.Date(), nullable=False),
        sa.PrimaryKeyConstraint("terminal_id", "terminal_seq", name=op.f("pk_tap_keys")),
        sa.UniqueConstraint(
            "issuer_id",
            "card_asn",
            "offline_counter",
            "tx_type",
            name=op.f("uq_tap_keys_issuer_id_card_asn_offline_counter_tx_type"),
        ),
    )
    op.create_table(
        "cards",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("issuer_id", sa.String(length=16), nullable=False),
        sa.Column("card_asn", sa.String(length=20), nullable=False),
        sa.Column("card_type", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("issued_at", UTC, nullable=False),
        sa.Column("start_date", sa.Date(), nullable=False),
        sa.Column("expiry_date", sa.Date(), nullable=False),
        sa.Column("key_version", sa.SmallInteger(), nullable=False),
        sa.Column("alg_id", sa.SmallInteger(), nullable=False),
        sa.Column("account_id", sa.BigInteger(), nullable=False),
        sa.Column("shadow_balance_fen", sa.BigInteger(), nullable=False),
        sa.Column("last_offline_counter", sa.Integer(), nullable=True),
        sa.Column("last_online_counter", sa.Integer(), nullable=True),
        sa.Column("last_tx_at", UTC, nullable=True),
        sa.Column("shadow_load_at", UTC, nullable=True),
        sa.Column("auth_cert_serial", sa.String(length=40), nullable=True),
        sa.Column("holder_name", sa.String(length=64), nullable=True),
        sa.Column("replaced_by_id", sa.BigInteger(), nullable=True),
        sa.CheckConstraint(
            "card_type IN ('ordinary', 'student', 'senior', 'social_security')", name=op.f("ck_cards_card_type_valid")
        ),
        sa.CheckConstraint("status IN ('active', 'blocked', 'lost', 'replaced')", name=op.f("ck_cards_status_valid")),
        sa.CheckConstraint(
            "key_version BETWEEN 0 AND 255 AND alg_id BETWEEN 0 AND 255", name=op.f("ck_cards_key_bytes")
        ),
        sa.CheckConstraint("length(card_asn) = 20", name=op.f("ck_cards_asn_len")),
        sa.CheckConstraint("shadow_balance_fen >= 0", name=op.f("ck_cards_shadow_balance_nonnegative")),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], name=op.f("fk_cards_account_id_accounts")),
        sa.ForeignKeyConstraint(["issuer_id"], ["issuers.issuer_id"], name=op.f("fk_cards_issuer_id_issuers")),
        sa.ForeignKeyConstraint(["replaced_by_id"], ["cards.id"], name=op.f("fk_cards_replaced_by_id_cards")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cards")),
        sa.UniqueConstraint("account_id", name=op.f("uq_cards_account_id")),
        sa.UniqueConstraint("issuer_id", "card_asn", name=op.f("uq_cards_issuer_id_card_asn")),
    )
    op.create_table(
        "operators",
        sa.Column("operator_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("payable_account_id", sa.BigInteger(), nullable=False),
        sa.Column("created_at", UTC, nullable=False),
        sa.CheckConstraint("kind IN ('bus_operator', 'merchant')", name=op.f("ck_operators_kind_valid")),
        sa.ForeignKeyConstraint(
            ["payable_account_id"], ["accounts.id"], name=op.f("fk_operators_payable_account_id_accounts")
        ),
        sa.PrimaryKeyConstraint("operator_id", name=op.f("pk_operators")),
        sa.UniqueConstraint("payable_account_id", name=op.f("uq_operators_payable_account_id")),
    )
    op.create_table(
        "transfers",
        sa.Column("id", sa.String(length=80), nullable=False),
        sa.Column("debit_account_id", sa.BigInteger(), nullable=False),
        sa.Column("credit_account_id", sa.BigInteger(), nullable=False),
        sa.Column("amount_fen", sa.BigInteger(), nullable=False),
        sa.Column("ledger", sa.Integer(), nullable=False),
        sa.Column("code", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=8), nullable=False),
        sa.Column("pending_id", sa.String(length=80), nullable=True),
        sa.Column("source_ref", sa.String(length=120), nullable=True),
        sa.Column("created_at", UTC, nullable=False),
        sa.CheckConstraint("state <> 'pending' OR pending_id IS NULL", name=op.f("ck_transfers_pending_has_no_parent")),
        sa.CheckConstraint("state IN ('pending', 'posted', 'voided')", name=op.f("ck_transfers_state_valid")),
        sa.CheckConstraint("amount_fen > 0", name=op.f("ck_transfers_amount_positive")),
        sa.CheckConstraint("debit_account_id <> credit_account_id", name=op.f("ck_transfers_accounts_differ")),
        sa.ForeignKeyConstraint(
            ["credit_account_id"], ["accounts.id"], name=op.f("fk_transfers_credit_account_id_accounts")
        ),
        sa.ForeignKeyConstraint(
            ["debit_account_id"], ["accounts.id"], name=op.f("fk_transfers_debit_account_id_accounts")
        ),
        sa.ForeignKeyConstraint(["pending_id"], ["transfers.id"], name=op.f("fk_transfers_pending_id_transfers")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_transfers")),
        sa.UniqueConstraint("pending_id", name=op.f("uq_transfers_pending_id")),
    )
    op.create_index(op.f("ix_transfers_credit_account_id"), "transfers", ["credit_account_id"], unique=False)
    op.create_index(op.f("ix_transfers_debit_account_id"), "transfers", ["debit_account_id"], unique=False)
    op.create_table(
        "exception_items",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("tap_id", sa.BigInteger(), nullable=True),
        sa.Column("tap_business_day", sa.Date(), nullable=True),
        sa.Column("record", sa.JSON(), nullable=True),
        sa.Column("terminal_id", sa.String(length=12), nullable=True),
        sa.Column("terminal_seq", sa.BigInteger(), nullable=True),
        sa.Column("batch_seq", sa.BigInteger(), nullable=True),
        sa.Column("issuer_id", sa.String(length=16), nullable=True),
        sa.Column("card_asn", sa.String(length=20), nullable=True),
        sa.Column("offline_counter", sa.Integer(), nullable=True),
        sa.Column("amount_fen", sa.BigInteger(), nullable=True),
        sa.Column("code", sa.String(length=32), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("state", sa.String(length=12), nullable=False),
        sa.Column("decision_transfer_id", sa.String(length=80), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("decided_by", sa.String(length=64), nullable=True),
        sa.Column("created_at", UTC, nullable=False),
        sa.Column("decided_at", UTC, nullable=True),
        sa.CheckConstraint(
            "(state = 'open') = (decided_at IS NULL)", name=op.f("ck_exception_items_decided_iff_closed")
        ),
        sa.CheckConstraint("state IN ('open', 'accepted', 'written_off')", name=op.f("ck_exception_items_state_valid")),
        sa.ForeignKeyConstraint(
            ["decision_transfer_id"], ["transfers.id"], name=op.f("fk_exception_items_decision_transfer_id_transfers")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_exception_items")),
        sa.UniqueConstraint("tap_id", name=op.f("uq_exception_items_tap_id")),
    )
    op.create_index("ix_exception_items_state_created", "exception_items", ["state", "created_at"], unique=False)
    op.create_index("ix_exception_items_terminal_batch", "exception_items", ["terminal_id", "batch_seq"], unique=False)
    op.create_table(
        "pending_loads",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("issuer_id", sa.String(length=16), nullable=False),
        sa.Column("card_asn", sa.String(length=20), nullable=False),
        sa.Column("amount_fen", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.String(length=12), nullable=False),
        sa.Column("payment_ref", sa.String(length=128), nullable=True),
        sa.Column("terminal_id", sa.String(length=12), nullable=True),
        sa.Column("online_counter", sa.Integer(), nullable=True),
        sa.Column("balance_before_fen", sa.BigInteger(), nullable=True),
        sa.Column("card_random", sa.String(length=8), nullable=True),
        sa.Column("key_version", sa.SmallInteger(), nullable=True),
        sa.Column("alg_id", sa.SmallInteger(), nullable=True),
        sa.Column("mac1", sa.String(length=8), nullable=True),
        sa.Column("mac2", sa.String(length=8), nullable=True),
        sa.Column("tx_time", UTC, nullable=True),
        sa.Column("tac", sa.String(length=8), nullable=True),
        sa.Column("transfer_id", sa.String(length=80), nullable=True),
        sa.Column("created_at", UTC, nullable=False),
        sa.Column("updated_at", UTC, nullable=False),
        sa.CheckConstraint(
            "state IN ('pending', 'authorized', 'posted', 'cancelled', 'refunded')",
            name=op.f("ck_pending_loads_state_valid"),
        ),
        sa.CheckConstraint("amount_fen > 0", name=op.f("ck_pending_loads_amount_positive")),
        sa.ForeignKeyConstraint(
            ["issuer_id", "card_asn"],
            ["cards.issuer_id", "cards.card_asn"],
            name=op.f("fk_pending_loads_issuer_id_cards"),
        ),
        sa.ForeignKeyConstraint(["transfer_id"], ["transfers.id"], name=op.f("fk_pending_loads_transfer_id_transfers")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pending_loads")),
        sa.UniqueConstraint("payment_ref", name=op.f("uq_pending_loads_payment_ref")),
    )
    op.create_index("ix_pending_loads_card_state", "pending_loads", ["issuer_id", "card_asn", "state"], unique=False)
    op.create_table(
        "terminals",
        sa.Column("terminal_id", sa.String(length=12), nullable=False),
        sa.Column("operator_id", sa.String(length=64), nullable=False),
        sa.Column("payable_account_id", sa.BigInteger(), nullable=False),
        sa.Column("route", sa.String(length=64), nullable=True),
        sa.Column("token_hash", sa.String(length=200), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("created_at", UTC, nullable=False),
        sa.CheckConstraint("length(terminal_id) = 12", name=op.f("ck_terminals_terminal_id_len")),
        sa.ForeignKeyConstraint(
            ["operator_id"], ["operators.operator_id"], name=op.f("fk_terminals_operator_id_operators")
        ),
        sa.ForeignKeyConstraint(
            ["payable_account_id"], ["accounts.id"], name=op.f("fk_terminals_payable_account_id_accounts")
        ),
        sa.PrimaryKeyConstraint("terminal_id", name=op.f("pk_terminals")),
    )
    op.create_index(op.f("ix_terminals_operator_id"), "terminals", ["operator_id"], unique=False)
    op.create_table(
        "batches",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("terminal_id", sa.String(length=12), nullable=False),
        sa.Column("batch_seq", sa.BigInteger(), nullable=False),
        sa.Column("content_hash", sa.String(length=64), nullable=False),
        sa.Column("record_count", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=8), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=True),
        sa.Column("answer", sa.Text(), nullable=True),
        sa.Column("received_at", UTC, nullable=False),
        sa.Column("done_at", UTC, nullable=True),
        sa.CheckConstraint("status <> 'done' OR answer IS NOT NULL", name=op.f("ck_batches_done_has_answer")),
        sa.CheckConstraint("status IN ('queued', 'done')", name=op.f("ck_batches_status_valid")),
        sa.CheckConstraint("batch_seq >= 0 AND record_count >= 0", name=op.f("ck_batches_nonnegative")),
        sa.ForeignKeyConstraint(
            ["terminal_id"], ["terminals.terminal_id"], name=op.f("fk_batches_terminal_id_terminals")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_batches")),
        sa.UniqueConstraint("terminal_id", "batch_seq", name=op.f("uq_batches_terminal_id_batch_seq")),
    )
    op.create_table(
        "taps",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("business_day", sa.Date(), nullable=False),
        sa.Column("batch_id", sa.BigInteger(), nullable=True),
        sa.Column("batch_seq", sa.BigInteger(), nullable=True),
        sa.Column("terminal_id", sa.String(length=12), nullable=False),
        sa.Column("terminal_seq", sa.BigInteger(), nullable=False),
        sa.Column("psam_serial", sa.String(length=64), nullable=False),
        sa.Column("issuer_id", sa.String(length=16), nullable=False),
        sa.Column("card_asn", sa.String(length=20), nullable=False),
        sa.Column("card_type", sa.String(length=64), nullable=False),
        sa.Column("tx_type", sa.SmallInteger(), nullable=False),
        sa.Column("amount_fen", sa.BigInteger(), nullable=False),
        sa.Column("balance_before_fen", sa.BigInteger(), nullable=False),
        sa.Column("offline_counter", sa.Integer(), nullable=False),
        sa.Column("tx_time", UTC, nullable=False),
        sa.Column("tx_utc_offset_min", sa.SmallInteger(), nullable=False),
        sa.Column("key_version", sa.SmallInteger(), nullable=False),
        sa.Column("alg_id", sa.SmallInteger(), nullable=False),
        sa.Column("tac", sa.String(length=8), nullable=False),
        sa.Column("route_id", sa.String(length=64), nullable=True),
        sa.Column("stop_id", sa.String(length=64), nullable=True),
        sa.Column("vehicle_id", sa.String(length=64), nullable=True),
        sa.Column("fare_product_id", sa.String(length=64), nullable=True),
        sa.Column("fare_rider_category_id", sa.String(length=64), nullable=True),
        sa.Column("fare_leg_group_id", sa.String(length=64), nullable=True),
        sa.Column("fare_full_fen", sa.BigInteger(), nullable=True),
        sa.Column("fare_discount_fen", sa.BigInteger(), nullable=True),
        sa.Column("fare_transfer_of", sa.BigInteger(), nullable=True),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("verdict", sa.String(length=10), nullable=False),
        sa.Column("code", sa.String(length=32), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("transfer_id", sa.String(length=80), nullable=True),
        sa.Column("received_at", UTC, nullable=False),
        sa.CheckConstraint("status IN ('normal', 'recovered', 'blocked')", name=op.f("ck_taps_status_valid")),
        sa.CheckConstraint(
            "verdict IN ('accepted', 'rejected', 'suspect', 'forwarded')", name=op.f("ck_taps_verdict_valid")
        ),
        sa.CheckConstraint("amount_fen >= 0 AND balance_before_fen >= 0", name=op.f("ck_taps_amounts_nonnegative")),
        sa.CheckConstraint("offline_counter BETWEEN 0 AND 65535", name=op.f("ck_taps_offline_counter_u16")),
        sa.CheckConstraint("terminal_seq BETWEEN 0 AND 4294967295", name=op.f("ck_taps_terminal_seq_u32")),
        sa.ForeignKeyConstraint(["batch_id"], ["batches.id"], name=op.f("fk_taps_batch_id_batches")),
        *_taps_primary_key(postgres),
        **({"postgresql_partition_by": "RANGE (business_day)"} if postgres else {}),
    )
    if postgres:
        op.execute("CREATE TABLE taps_default PARTITION OF taps DEFAULT")
    op.create_index("ix_taps_batch_id", "taps", ["batch_id"], unique=False)
    op.create_index("ix_taps_card_counter", "taps", ["issuer_id", "card_asn", "offline_counter"], unique=False)
    op.create_index("ix_taps_terminal_seq", "taps", ["terminal_id", "terminal_seq"], unique=False)


def downgrade() -> None:
    op.drop_table("taps")
    op.drop_table("batches")
    op.drop_table("terminals")
    op.drop_table("pending_loads")
    op.drop_table("exception_items")
    op.drop_table("transfers")
    op.drop_table("operators")
    op.drop_table("cards")
    op.drop_table("tap_keys")
    op.drop_table("issuers")
    op.drop_table("denylist_entries")
    op.drop_table("counters")
    op.drop_table("accounts")
