"""The portal's top-up money path (issue 10): top-ups, webhook event ids, the effect outbox.

- ``portal_topups``: the persisted top-up state machine (``portal.topups``); its id is
  clearing's load id and the payment's Idempotency-Key, so at most 40 characters.
- ``portal_webhook_events``: each verified webhook event id once; a repeat moves nothing.
- ``portal_outbox``: effects written in the transaction of the state change, run after
  commit; ``done_at`` once their answer is applied (partial index on the ones still due).

The models are ``portal/models.py`` (on clearing's metadata). New tables only: plain
``CREATE TABLE`` on both databases.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_STATES = (
    "state IN ('created', 'payment_pending', 'failed', 'canceled', 'paid', 'load_pending', 'loaded', "
    "'refund_requested', 'refunded')"
)
_REASONS = "refund_reason IS NULL OR refund_reason IN ('citizen', 'staff', 'expired', 'external')"
_KINDS = "kind IN ('create_payment_intent', 'cancel_payment_intent', 'create_load', 'cancel_load', 'refund', 'notice')"
_DUE = sa.text("done_at IS NULL")


def upgrade() -> None:
    op.create_table(
        "portal_topups",
        sa.Column("topup_id", sa.String(length=40), nullable=False),
        sa.Column("issuer_id", sa.String(length=16), nullable=False),
        sa.Column("card_asn", sa.String(length=20), nullable=False),
        sa.Column("amount_fen", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("payment_intent_id", sa.String(length=255), nullable=True),
        sa.Column("paid_fen", sa.BigInteger(), nullable=False),
        sa.Column("loaded_fen", sa.BigInteger(), nullable=False),
        sa.Column("refunded_fen", sa.BigInteger(), nullable=False),
        sa.Column("load_voided", sa.Boolean(), nullable=False),
        sa.Column("refund_reason", sa.String(length=16), nullable=True),
        sa.Column("unmatched", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("amount_fen > 0", name=op.f("ck_portal_topups_amount_positive")),
        sa.CheckConstraint(
            "paid_fen >= 0 AND loaded_fen >= 0 AND refunded_fen >= 0", name=op.f("ck_portal_topups_money_nonnegative")
        ),
        sa.CheckConstraint(_STATES, name=op.f("ck_portal_topups_state_valid")),
        sa.CheckConstraint(_REASONS, name=op.f("ck_portal_topups_reason_valid")),
        sa.PrimaryKeyConstraint("topup_id", name=op.f("pk_portal_topups")),
    )
    op.create_index("ix_portal_topups_card_state", "portal_topups", ["issuer_id", "card_asn", "state"])

    op.create_table(
        "portal_webhook_events",
        sa.Column("event_id", sa.String(length=255), nullable=False),
        sa.Column("event_type", sa.String(length=64), nullable=False),
        sa.Column("topup_id", sa.String(length=40), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("event_id", name=op.f("pk_portal_webhook_events")),
    )

    op.create_table(
        "portal_outbox",
        sa.Column("id", _BIG_ID, autoincrement=True, nullable=False),
        sa.Column("topup_id", sa.String(length=40), nullable=False),
        sa.Column("kind", sa.String(length=24), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("done_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.CheckConstraint(_KINDS, name=op.f("ck_portal_outbox_kind_valid")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_portal_outbox")),
    )
    op.create_index("ix_portal_outbox_due", "portal_outbox", ["id"], postgresql_where=_DUE, sqlite_where=_DUE)
    op.create_index("ix_portal_outbox_topup", "portal_outbox", ["topup_id"])


def downgrade() -> None:
    op.drop_index("ix_portal_outbox_topup", table_name="portal_outbox")
    op.drop_index("ix_portal_outbox_due", table_name="portal_outbox")
    op.drop_table("portal_outbox")
    op.drop_table("portal_webhook_events")
    op.drop_index("ix_portal_topups_card_state", table_name="portal_topups")
    op.drop_table("portal_topups")
