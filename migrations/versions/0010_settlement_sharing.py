"""Settlement: transfer-discount sharing totals (issue 11).

- ``settlement_transfer_legs``: one row per posted tap that is a transfer (``fare.transfer_of``
  set), written by ingest in the batch's transaction, in the window its sale joined; the close
  walks each leg's journey back from it and shares the discount (``docs/settlement.md``,
  "Transfer discounts").
- ``settlement_statements.sharing_fen`` (signed: what the close moved to or from the payable
  for transfer discounts) and ``sharing_owed_fen`` (what of the payee's adjustments a payable
  could not give yet); the fee-plus-net check becomes ``net + fee = gross − refunds + sharing``.
- ``settlement_carry.sharing_owed_fen``: that owed part, carried into the next close.

Existing rows get 0 (nothing was shared before), so every old statement still checks.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_TIME = sa.DateTime(timezone=True)
_CHECK = "ck_settlement_statements_fee_plus_net"


def upgrade() -> None:
    op.create_table(
        "settlement_transfer_legs",
        sa.Column("id", _BIG_ID, autoincrement=True, nullable=False),
        sa.Column("window_day", sa.Date(), nullable=False),
        sa.Column("issuer_id", sa.String(length=16), nullable=False),
        sa.Column("card_asn", sa.String(length=20), nullable=False),
        sa.Column("terminal_id", sa.String(length=12), nullable=False),
        sa.Column("terminal_seq", sa.BigInteger(), nullable=False),
        sa.Column("offline_counter", sa.Integer(), nullable=False),
        sa.Column("tx_time", _TIME, nullable=False),
        sa.Column("transfer_of", sa.BigInteger(), nullable=False),
        sa.Column("product_id", sa.String(length=64), nullable=False),
        sa.Column("rider_category_id", sa.String(length=64), nullable=True),
        sa.Column("tariff_version", sa.String(length=64), nullable=True),
        sa.Column("charged_fen", sa.BigInteger(), nullable=False),
        sa.Column("full_fare_fen", sa.BigInteger(), nullable=False),
        sa.Column("payee_account_id", sa.BigInteger(), nullable=False),
        sa.Column("tap_id", sa.BigInteger(), nullable=False),
        sa.CheckConstraint(
            "charged_fen >= 0 AND full_fare_fen >= 0", name=op.f("ck_settlement_transfer_legs_nonnegative")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_settlement_transfer_legs")),
        sa.UniqueConstraint("terminal_id", "terminal_seq", name=op.f("uq_settlement_transfer_legs_tap")),
    )
    op.create_index("ix_settlement_transfer_legs_window_day", "settlement_transfer_legs", ["window_day"])
    with op.batch_alter_table("settlement_statements") as batch:
        batch.add_column(sa.Column("sharing_fen", sa.BigInteger(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("sharing_owed_fen", sa.BigInteger(), nullable=False, server_default="0"))
        batch.drop_constraint(op.f(_CHECK), type_="check")
        batch.create_check_constraint(op.f(_CHECK), "net_fen + fee_fen = gross_fen - refunds_fen + sharing_fen")
    with op.batch_alter_table("settlement_statements") as batch:
        batch.alter_column("sharing_fen", server_default=None)
        batch.alter_column("sharing_owed_fen", server_default=None)
    with op.batch_alter_table("settlement_carry") as batch:
        batch.add_column(sa.Column("sharing_owed_fen", sa.BigInteger(), nullable=False, server_default="0"))
    with op.batch_alter_table("settlement_carry") as batch:
        batch.alter_column("sharing_owed_fen", server_default=None)


def downgrade() -> None:
    with op.batch_alter_table("settlement_carry") as batch:
        batch.drop_column("sharing_owed_fen")
    with op.batch_alter_table("settlement_statements") as batch:
        batch.drop_constraint(op.f(_CHECK), type_="check")
        batch.create_check_constraint(op.f(_CHECK), "net_fen + fee_fen = gross_fen - refunds_fen")
        batch.drop_column("sharing_owed_fen")
        batch.drop_column("sharing_fen")
    op.drop_index("ix_settlement_transfer_legs_window_day", table_name="settlement_transfer_legs")
    op.drop_table("settlement_transfer_legs")
