"""Settlement (issue 11): parties, dated assignments, windows, running totals, closes, audit.

- ``settlement_fee_schedules``, ``settlement_payees``: fee schedules per category; a payee's
  category, fee override, payout bank account and status (the payee is clearing's
  ``operators`` row).
- ``settlement_route_assignments``, ``settlement_terminal_assignments``: route → operator and
  terminal → operator for business days ``[valid_from, valid_to)``.
- ``settlement_windows`` (close markers), ``settlement_postings`` (the running totals'
  journal), ``settlement_totals`` (running totals per window and payee),
  ``settlement_statements`` (a close per payee), ``settlement_carry``,
  ``settlement_payout_results`` (bank statements imported).
- ``settlement_audit``: append-only. UPDATE and DELETE are refused by triggers on both
  databases (and TRUNCATE on PostgreSQL), with 0008's function ``yk_audit_append_only``.

The models are ``settlement/models.py`` (on clearing's metadata). New tables only.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_TIME = sa.DateTime(timezone=True)

_PG_AUDIT = """
CREATE TRIGGER settlement_audit_no_update BEFORE UPDATE ON settlement_audit
    FOR EACH ROW EXECUTE FUNCTION yk_audit_append_only();
CREATE TRIGGER settlement_audit_no_delete BEFORE DELETE ON settlement_audit
    FOR EACH ROW EXECUTE FUNCTION yk_audit_append_only();
CREATE TRIGGER settlement_audit_no_truncate BEFORE TRUNCATE ON settlement_audit
    FOR EACH STATEMENT EXECUTE FUNCTION yk_audit_append_only();
"""
_SQLITE_AUDIT = (
    """CREATE TRIGGER settlement_audit_no_update BEFORE UPDATE ON settlement_audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only: UPDATE refused'); END""",
    """CREATE TRIGGER settlement_audit_no_delete BEFORE DELETE ON settlement_audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only: DELETE refused'); END""",
)
_TRIGGERS = ("settlement_audit_no_update", "settlement_audit_no_delete", "settlement_audit_no_truncate")
_TABLES = (
    "settlement_terminal_assignments",
    "settlement_route_assignments",
    "settlement_payees",
    "settlement_windows",
    "settlement_totals",
    "settlement_statements",
    "settlement_postings",
    "settlement_payout_results",
    "settlement_fee_schedules",
    "settlement_carry",
    "settlement_audit",
)


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    op.create_table(
        "settlement_audit",
        sa.Column("id", _BIG_ID, autoincrement=True, nullable=False),
        sa.Column("at", _TIME, nullable=False),
        sa.Column("actor", sa.String(length=64), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("target", sa.String(length=120), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_settlement_audit")),
    )
    op.create_index("ix_settlement_audit_target", "settlement_audit", ["target"])
    if postgres:
        op.execute(_PG_AUDIT)
    else:
        for statement in _SQLITE_AUDIT:
            op.execute(statement)

    op.create_table(
        "settlement_carry",
        sa.Column("payee_account_id", sa.BigInteger(), nullable=False),
        sa.Column("carry_fen", sa.BigInteger(), nullable=False),
        sa.Column("through_day", sa.Date(), nullable=False),
        sa.PrimaryKeyConstraint("payee_account_id", name=op.f("pk_settlement_carry")),
    )
    op.create_table(
        "settlement_fee_schedules",
        sa.Column("category", sa.String(length=32), nullable=False),
        sa.Column("bps", sa.Integer(), nullable=False),
        sa.Column("min_fen", sa.BigInteger(), nullable=False),
        sa.Column("cap_fen", sa.BigInteger(), nullable=True),
        sa.Column("rounding", sa.String(length=10), nullable=False),
        sa.Column("updated_at", _TIME, nullable=False),
        sa.CheckConstraint(
            "rounding IN ('half_up', 'half_even', 'down')", name=op.f("ck_settlement_fee_schedules_rounding_valid")
        ),
        sa.CheckConstraint(
            "bps BETWEEN 0 AND 10000 AND min_fen >= 0", name=op.f("ck_settlement_fee_schedules_bps_min")
        ),
        sa.CheckConstraint(
            "cap_fen IS NULL OR cap_fen >= min_fen", name=op.f("ck_settlement_fee_schedules_cap_above_min")
        ),
        sa.PrimaryKeyConstraint("category", name=op.f("pk_settlement_fee_schedules")),
    )
    op.create_table(
        "settlement_payout_results",
        sa.Column("end_to_end_id", sa.String(length=35), nullable=False),
        sa.Column("status", sa.String(length=8), nullable=False),
        sa.Column("window_day", sa.Date(), nullable=True),
        sa.Column("amount_fen", sa.BigInteger(), nullable=False),
        sa.Column("booked_on", sa.Date(), nullable=True),
        sa.Column("statement_ref", sa.String(length=120), nullable=False),
        sa.Column("reason", sa.String(length=64), nullable=True),
        sa.Column("imported_at", _TIME, nullable=False),
        sa.CheckConstraint("status IN ('cleared', 'returned')", name=op.f("ck_settlement_payout_results_status_valid")),
        sa.PrimaryKeyConstraint("end_to_end_id", "status", name=op.f("pk_settlement_payout_results")),
    )
    op.create_table(
        "settlement_postings",
        sa.Column("id", _BIG_ID, autoincrement=True, nullable=False),
        sa.Column("window_day", sa.Date(), nullable=False),
        sa.Column("payee_account_id", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("source_ref", sa.String(length=120), nullable=False),
        sa.Column("event_day", sa.Date(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("amount_fen", sa.BigInteger(), nullable=False),
        sa.Column("late", sa.Boolean(), nullable=False),
        sa.Column("created_at", _TIME, nullable=False),
        sa.CheckConstraint("kind IN ('sale', 'refund')", name=op.f("ck_settlement_postings_kind_valid")),
        sa.CheckConstraint("count > 0 AND amount_fen >= 0", name=op.f("ck_settlement_postings_positive")),
        sa.CheckConstraint("late = (event_day < window_day)", name=op.f("ck_settlement_postings_late_iff_earlier")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_settlement_postings")),
        sa.UniqueConstraint(
            "source_ref", "payee_account_id", "event_day", "kind", name=op.f("uq_settlement_postings_source")
        ),
    )
    op.create_index("ix_settlement_postings_window_day", "settlement_postings", ["window_day"])
    op.create_table(
        "settlement_statements",
        sa.Column("window_day", sa.Date(), nullable=False),
        sa.Column("payee_account_id", sa.BigInteger(), nullable=False),
        sa.Column("payee_id", sa.String(length=64), nullable=False),
        sa.Column("payee_name", sa.String(length=128), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.Column("gross_fen", sa.BigInteger(), nullable=False),
        sa.Column("refund_count", sa.BigInteger(), nullable=False),
        sa.Column("refunds_fen", sa.BigInteger(), nullable=False),
        sa.Column("late_count", sa.BigInteger(), nullable=False),
        sa.Column("late_fen", sa.BigInteger(), nullable=False),
        sa.Column("fee_fen", sa.BigInteger(), nullable=False),
        sa.Column("net_fen", sa.BigInteger(), nullable=False),
        sa.Column("carry_in_fen", sa.BigInteger(), nullable=False),
        sa.Column("payout_fen", sa.BigInteger(), nullable=False),
        sa.Column("carry_out_fen", sa.BigInteger(), nullable=False),
        sa.Column("fee_bps", sa.Integer(), nullable=False),
        sa.Column("fee_min_fen", sa.BigInteger(), nullable=False),
        sa.Column("fee_cap_fen", sa.BigInteger(), nullable=True),
        sa.Column("fee_rounding", sa.String(length=10), nullable=False),
        sa.Column("account_name", sa.String(length=70), nullable=True),
        sa.Column("account_number", sa.String(length=30), nullable=True),
        sa.Column("cnaps_code", sa.String(length=12), nullable=True),
        sa.Column("end_to_end_id", sa.String(length=35), nullable=True),
        sa.Column("held_reason", sa.String(length=64), nullable=True),
        sa.CheckConstraint(
            "(payout_fen > 0) = (end_to_end_id IS NOT NULL)", name=op.f("ck_settlement_statements_paid_iff_e2e")
        ),
        sa.CheckConstraint(
            "carry_out_fen = carry_in_fen + net_fen - payout_fen",
            name=op.f("ck_settlement_statements_carry_balances"),
        ),
        sa.CheckConstraint("fee_fen >= 0 AND payout_fen >= 0", name=op.f("ck_settlement_statements_nonnegative")),
        sa.CheckConstraint(
            "net_fen + fee_fen = gross_fen - refunds_fen", name=op.f("ck_settlement_statements_fee_plus_net")
        ),
        sa.PrimaryKeyConstraint("window_day", "payee_account_id", name=op.f("pk_settlement_statements")),
        sa.UniqueConstraint("end_to_end_id", name=op.f("uq_settlement_statements_end_to_end_id")),
    )
    op.create_table(
        "settlement_totals",
        sa.Column("window_day", sa.Date(), nullable=False),
        sa.Column("payee_account_id", sa.BigInteger(), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.Column("gross_fen", sa.BigInteger(), nullable=False),
        sa.Column("refund_count", sa.BigInteger(), nullable=False),
        sa.Column("refunds_fen", sa.BigInteger(), nullable=False),
        sa.Column("late_count", sa.BigInteger(), nullable=False),
        sa.Column("late_fen", sa.BigInteger(), nullable=False),
        sa.CheckConstraint(
            "count >= 0 AND gross_fen >= 0 AND refund_count >= 0 AND refunds_fen >= 0 AND late_count >= 0 "
            "AND late_fen >= 0",
            name=op.f("ck_settlement_totals_nonnegative"),
        ),
        sa.PrimaryKeyConstraint("window_day", "payee_account_id", name=op.f("pk_settlement_totals")),
    )
    op.create_table(
        "settlement_windows",
        sa.Column("business_day", sa.Date(), nullable=False),
        sa.Column("state", sa.String(length=8), nullable=False),
        sa.Column("sealed_at", _TIME, nullable=False),
        sa.Column("closed_at", _TIME, nullable=True),
        sa.Column("payout_sequence", sa.SmallInteger(), nullable=False),
        sa.Column("payees", sa.Integer(), nullable=True),
        sa.Column("gross_fen", sa.BigInteger(), nullable=True),
        sa.Column("refunds_fen", sa.BigInteger(), nullable=True),
        sa.Column("fee_fen", sa.BigInteger(), nullable=True),
        sa.Column("payout_fen", sa.BigInteger(), nullable=True),
        sa.Column("carry_fen", sa.BigInteger(), nullable=True),
        sa.Column("payer_name", sa.String(length=140), nullable=True),
        sa.Column("payer_account_name", sa.String(length=70), nullable=True),
        sa.Column("payer_account_number", sa.String(length=30), nullable=True),
        sa.Column("payer_cnaps_code", sa.String(length=12), nullable=True),
        sa.Column("files_sha256", sa.Text(), nullable=True),
        sa.CheckConstraint(
            "(state = 'closed') = (closed_at IS NOT NULL)", name=op.f("ck_settlement_windows_closed_iff_closed_at")
        ),
        sa.CheckConstraint("state IN ('sealed', 'closed')", name=op.f("ck_settlement_windows_state_valid")),
        sa.PrimaryKeyConstraint("business_day", name=op.f("pk_settlement_windows")),
    )
    op.create_table(
        "settlement_payees",
        sa.Column("payee_id", sa.String(length=64), nullable=False),
        sa.Column("category", sa.String(length=32), nullable=False),
        sa.Column("override_bps", sa.Integer(), nullable=True),
        sa.Column("override_min_fen", sa.BigInteger(), nullable=True),
        sa.Column("override_cap_fen", sa.BigInteger(), nullable=True),
        sa.Column("override_rounding", sa.String(length=10), nullable=True),
        sa.Column("account_name", sa.String(length=70), nullable=True),
        sa.Column("account_number", sa.String(length=30), nullable=True),
        sa.Column("cnaps_code", sa.String(length=12), nullable=True),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("created_at", _TIME, nullable=False),
        sa.Column("updated_at", _TIME, nullable=False),
        sa.CheckConstraint(
            "status IN ('active', 'suspended', 'closed')", name=op.f("ck_settlement_payees_status_valid")
        ),
        sa.CheckConstraint(
            "(account_name IS NULL) = (account_number IS NULL) AND (account_name IS NULL) = (cnaps_code IS NULL)",
            name=op.f("ck_settlement_payees_account_whole"),
        ),
        sa.CheckConstraint(
            "(override_bps IS NULL) = (override_min_fen IS NULL) AND (override_bps IS NULL) = "
            "(override_rounding IS NULL) AND (override_bps IS NOT NULL OR override_cap_fen IS NULL)",
            name=op.f("ck_settlement_payees_override_whole"),
        ),
        sa.ForeignKeyConstraint(
            ["payee_id"], ["operators.operator_id"], name=op.f("fk_settlement_payees_payee_id_operators")
        ),
        sa.PrimaryKeyConstraint("payee_id", name=op.f("pk_settlement_payees")),
    )
    for table, column, length, refers in (
        ("settlement_route_assignments", "route_id", 64, None),
        ("settlement_terminal_assignments", "terminal_id", 12, "terminals"),
    ):
        foreign = (
            [sa.ForeignKeyConstraint([column], [f"{refers}.{column}"], name=op.f(f"fk_{table}_{column}_{refers}"))]
            if refers
            else []
        )
        op.create_table(
            table,
            sa.Column("id", _BIG_ID, autoincrement=True, nullable=False),
            sa.Column(column, sa.String(length=length), nullable=False),
            sa.Column("operator_id", sa.String(length=64), nullable=False),
            sa.Column("valid_from", sa.Date(), nullable=False),
            sa.Column("valid_to", sa.Date(), nullable=True),
            sa.Column("created_at", _TIME, nullable=False),
            sa.CheckConstraint("valid_to IS NULL OR valid_to > valid_from", name=op.f(f"ck_{table}_dates_ordered")),
            sa.ForeignKeyConstraint(
                ["operator_id"], ["operators.operator_id"], name=op.f(f"fk_{table}_operator_id_operators")
            ),
            *foreign,
            sa.PrimaryKeyConstraint("id", name=op.f(f"pk_{table}")),
            sa.UniqueConstraint(column, "valid_from", name=op.f(f"uq_{table}_{column}_valid_from")),
        )


def downgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    for trigger in _TRIGGERS:
        if postgres or trigger != "settlement_audit_no_truncate":
            op.execute(f"DROP TRIGGER IF EXISTS {trigger}" + (" ON settlement_audit" if postgres else ""))
    op.drop_index("ix_settlement_postings_window_day", table_name="settlement_postings")
    op.drop_index("ix_settlement_audit_target", table_name="settlement_audit")
    for table in _TABLES:
        op.drop_table(table)
