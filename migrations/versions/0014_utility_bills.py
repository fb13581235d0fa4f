"""Citizen services (issue 13): utility billers, bills and payments.

- ``utility_billers`` (a settlement payee, its virtual purchase terminal, the PSAM's next sequence);
- ``utility_bills`` (account, period, amount, due date, state; how and when it was paid);
- ``utility_purse_taps`` (the portal terminal's journal of purse records);
- ``utility_online_payments`` and ``utility_webhook_events`` (online payment of a bill).

The models are ``portal/modules/utility_bills/models.py``; ``docs/utility-bills.md``. New tables only.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "utility_billers",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("kind", sa.String(length=12), nullable=False),
        sa.Column("terminal_id", sa.String(length=12), nullable=False),
        sa.Column("ttc_next", sa.BigInteger(), nullable=False),
        sa.Column("created_at", _TIME, nullable=False),
        sa.CheckConstraint("kind IN ('water', 'electricity', 'gas')", name=op.f("ck_utility_billers_kind_valid")),
        sa.CheckConstraint("ttc_next >= 1", name=op.f("ck_utility_billers_ttc_positive")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_utility_billers")),
        sa.UniqueConstraint("terminal_id", name=op.f("uq_utility_billers_terminal_id")),
    )
    op.create_table(
        "utility_webhook_events",
        sa.Column("event_id", sa.String(length=255), nullable=False),
        sa.Column("event_type", sa.String(length=255), nullable=False),
        sa.Column("payment_id", sa.String(length=35), nullable=True),
        sa.Column("received_at", _TIME, nullable=False),
        sa.PrimaryKeyConstraint("event_id", name=op.f("pk_utility_webhook_events")),
    )
    op.create_table(
        "utility_bills",
        sa.Column("id", _BIG_ID, autoincrement=True, nullable=False),
        sa.Column("biller_id", sa.String(length=64), nullable=False),
        sa.Column("account_no", sa.String(length=32), nullable=False),
        sa.Column("holder_masked", sa.String(length=64), nullable=False),
        sa.Column("period", sa.String(length=7), nullable=False),
        sa.Column("amount_fen", sa.BigInteger(), nullable=False),
        sa.Column("due_date", sa.Date(), nullable=False),
        sa.Column("state", sa.String(length=8), nullable=False),
        sa.Column("paid_at", _TIME, nullable=True),
        sa.Column("paid_day", sa.Date(), nullable=True),
        sa.Column("paid_via", sa.String(length=8), nullable=True),
        sa.Column("paid_ref", sa.String(length=64), nullable=True),
        sa.Column("receipt_no", sa.String(length=40), nullable=True),
        sa.Column("created_at", _TIME, nullable=False),
        sa.CheckConstraint(
            "(state = 'open' AND paid_at IS NULL AND paid_ref IS NULL) OR "
            "(state = 'paid' AND paid_at IS NOT NULL AND paid_ref IS NOT NULL AND paid_day IS NOT NULL)",
            name=op.f("ck_utility_bills_paid_complete"),
        ),
        sa.CheckConstraint(
            "paid_via IS NULL OR paid_via IN ('purse', 'online')", name=op.f("ck_utility_bills_paid_via_valid")
        ),
        sa.CheckConstraint("state IN ('open', 'paid')", name=op.f("ck_utility_bills_state_valid")),
        sa.CheckConstraint("amount_fen > 0", name=op.f("ck_utility_bills_amount_positive")),
        sa.ForeignKeyConstraint(
            ["biller_id"],
            ["utility_billers.id"],
            name=op.f("fk_utility_bills_biller_id_utility_billers"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_utility_bills")),
        sa.UniqueConstraint("biller_id", "account_no", "period", name="uq_utility_bills_account_period"),
        sa.UniqueConstraint("paid_ref", name=op.f("uq_utility_bills_paid_ref")),
        sa.UniqueConstraint("receipt_no", name=op.f("uq_utility_bills_receipt_no")),
    )
    op.create_index("ix_utility_bills_paid_day", "utility_bills", ["biller_id", "paid_day"], unique=False)
    op.create_table(
        "utility_online_payments",
        sa.Column("id", sa.String(length=35), nullable=False),
        sa.Column("bill_id", _BIG_ID, nullable=False),
        sa.Column("citizen_id", sa.BigInteger(), nullable=True),
        sa.Column("amount_fen", sa.BigInteger(), nullable=False),
        sa.Column("intent_id", sa.String(length=255), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("created_at", _TIME, nullable=False),
        sa.CheckConstraint(
            "state IN ('payment_pending', 'paid', 'refund_due', 'refunded')",
            name=op.f("ck_utility_online_payments_state_valid"),
        ),
        sa.CheckConstraint("amount_fen > 0", name=op.f("ck_utility_online_payments_amount_positive")),
        sa.ForeignKeyConstraint(
            ["bill_id"],
            ["utility_bills.id"],
            name=op.f("fk_utility_online_payments_bill_id_utility_bills"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_utility_online_payments")),
        sa.UniqueConstraint("intent_id", name=op.f("uq_utility_online_payments_intent_id")),
    )
    op.create_index("ix_utility_online_payments_bill", "utility_online_payments", ["bill_id"], unique=False)
    op.create_table(
        "utility_purse_taps",
        sa.Column("terminal_id", sa.String(length=12), nullable=False),
        sa.Column("terminal_seq", sa.BigInteger(), nullable=False),
        sa.Column("bill_id", _BIG_ID, nullable=False),
        sa.Column("issuer_id", sa.String(length=16), nullable=False),
        sa.Column("card_asn", sa.String(length=20), nullable=False),
        sa.Column("amount_fen", sa.BigInteger(), nullable=False),
        sa.Column("record", sa.Text(), nullable=False),
        sa.Column("state", sa.String(length=10), nullable=False),
        sa.Column("verdict_code", sa.String(length=64), nullable=True),
        sa.Column("created_at", _TIME, nullable=False),
        sa.Column("updated_at", _TIME, nullable=False),
        sa.CheckConstraint(
            "state IN ('pending', 'committed', 'cleared', 'rejected', 'void')",
            name=op.f("ck_utility_purse_taps_state_valid"),
        ),
        sa.ForeignKeyConstraint(
            ["bill_id"],
            ["utility_bills.id"],
            name=op.f("fk_utility_purse_taps_bill_id_utility_bills"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("terminal_id", "terminal_seq", name=op.f("pk_utility_purse_taps")),
    )
    op.create_index("ix_utility_purse_taps_bill", "utility_purse_taps", ["bill_id", "state"], unique=False)
    op.create_index(
        "ix_utility_purse_taps_card", "utility_purse_taps", ["issuer_id", "card_asn", "state"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_utility_purse_taps_card", table_name="utility_purse_taps")
    op.drop_index("ix_utility_purse_taps_bill", table_name="utility_purse_taps")
    op.drop_table("utility_purse_taps")
    op.drop_index("ix_utility_online_payments_bill", table_name="utility_online_payments")
    op.drop_table("utility_online_payments")
    op.drop_index("ix_utility_bills_paid_day", table_name="utility_bills")
    op.drop_table("utility_bills")
    op.drop_table("utility_webhook_events")
    op.drop_table("utility_billers")
