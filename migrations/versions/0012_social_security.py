"""Citizen services (issue 13): social security contributions and statements.

- ``ss_imports``: contribution files imported, unique by their SHA-256.
- ``ss_entries``: the contribution record: contributions (unique by person, month,
  insurance and payer through ``entry_key``) and corrections of them. Append-only: UPDATE and
  DELETE are refused by triggers on both databases (and TRUNCATE on PostgreSQL); so is
  ``ss_imports``.
- ``ss_statements``: statements issued, with the content their PDF and code are made from.

The models are ``portal/modules/social_security/models.py`` (on clearing's metadata). New
tables only.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_TIME = sa.DateTime(timezone=True)
_APPEND_ONLY = ("ss_entries", "ss_imports")

_PG_FUNCTION = """
CREATE FUNCTION yk_ss_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the social security record is append-only: % refused', TG_OP
        USING ERRCODE = 'restrict_violation';
END $$;
"""


def _pg_triggers(table: str) -> str:
    return f"""
CREATE TRIGGER {table}_no_update BEFORE UPDATE ON {table}
    FOR EACH ROW EXECUTE FUNCTION yk_ss_append_only();
CREATE TRIGGER {table}_no_delete BEFORE DELETE ON {table}
    FOR EACH ROW EXECUTE FUNCTION yk_ss_append_only();
CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table}
    FOR EACH STATEMENT EXECUTE FUNCTION yk_ss_append_only();
"""


def _sqlite_triggers(table: str) -> tuple[str, ...]:
    return tuple(
        f"""CREATE TRIGGER {table}_no_{op_name.lower()} BEFORE {op_name} ON {table}
    BEGIN SELECT RAISE(ABORT, 'the social security record is append-only: {op_name} refused'); END"""
        for op_name in ("UPDATE", "DELETE")
    )


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    op.create_table(
        "ss_imports",
        sa.Column("id", _BIG_ID, autoincrement=True, nullable=False),
        sa.Column("file_digest", sa.String(length=64), nullable=False),
        sa.Column("file_name", sa.String(length=128), nullable=False),
        sa.Column("rows_total", sa.Integer(), nullable=False),
        sa.Column("rows_new", sa.Integer(), nullable=False),
        sa.Column("actor", sa.String(length=64), nullable=False),
        sa.Column("imported_at", _TIME, nullable=False),
        sa.CheckConstraint("rows_new >= 0 AND rows_new <= rows_total", name=op.f("ck_ss_imports_rows_valid")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ss_imports")),
        sa.UniqueConstraint("file_digest", name=op.f("uq_ss_imports_file_digest")),
    )
    op.create_table(
        "ss_entries",
        sa.Column("id", _BIG_ID, autoincrement=True, nullable=False),
        sa.Column("entry_key", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=12), nullable=False),
        sa.Column("person_hash", sa.String(length=64), nullable=False),
        sa.Column("person_masked", sa.String(length=18), nullable=False),
        sa.Column("month", sa.String(length=7), nullable=False),
        sa.Column("insurance", sa.String(length=16), nullable=False),
        sa.Column("payer_id", sa.String(length=18), nullable=False),
        sa.Column("base_fen", sa.BigInteger(), nullable=False),
        sa.Column("employer_fen", sa.BigInteger(), nullable=False),
        sa.Column("personal_fen", sa.BigInteger(), nullable=False),
        sa.Column("account_fen", sa.BigInteger(), nullable=False),
        sa.Column("import_id", _BIG_ID, nullable=True),
        sa.Column("corrects_id", _BIG_ID, nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("actor", sa.String(length=64), nullable=False),
        sa.Column("created_at", _TIME, nullable=False),
        sa.CheckConstraint("kind IN ('contribution', 'correction')", name=op.f("ck_ss_entries_kind_valid")),
        sa.CheckConstraint(
            "insurance IN ('pension', 'medical', 'unemployment', 'work_injury', 'maternity')",
            name=op.f("ck_ss_entries_insurance_valid"),
        ),
        sa.CheckConstraint(
            "kind <> 'contribution' OR (base_fen > 0 AND employer_fen >= 0 AND personal_fen >= 0 "
            "AND account_fen >= 0 AND import_id IS NOT NULL AND corrects_id IS NULL)",
            name=op.f("ck_ss_entries_contribution_valid"),
        ),
        sa.CheckConstraint(
            "kind <> 'correction' OR (corrects_id IS NOT NULL AND reason <> '')",
            name=op.f("ck_ss_entries_correction_valid"),
        ),
        sa.ForeignKeyConstraint(["import_id"], ["ss_imports.id"], name=op.f("fk_ss_entries_import_id_ss_imports")),
        sa.ForeignKeyConstraint(["corrects_id"], ["ss_entries.id"], name=op.f("fk_ss_entries_corrects_id_ss_entries")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ss_entries")),
        sa.UniqueConstraint("entry_key", name=op.f("uq_ss_entries_entry_key")),
    )
    op.create_index("ix_ss_entries_person_month", "ss_entries", ["person_hash", "month"])
    op.create_index("ix_ss_entries_corrects_id", "ss_entries", ["corrects_id"])
    op.create_table(
        "ss_statements",
        sa.Column("number", sa.String(length=24), nullable=False),
        sa.Column("person_hash", sa.String(length=64), nullable=False),
        sa.Column("year", sa.Integer(), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("issued_at", _TIME, nullable=False),
        sa.PrimaryKeyConstraint("number", name=op.f("pk_ss_statements")),
    )
    op.create_index("ix_ss_statements_person_hash", "ss_statements", ["person_hash"])
    if postgres:
        op.execute(_PG_FUNCTION)
        for table in _APPEND_ONLY:
            op.execute(_pg_triggers(table))
    else:
        for table in _APPEND_ONLY:
            for statement in _sqlite_triggers(table):
                op.execute(statement)


def downgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    for table in _APPEND_ONLY:
        for name in ("update", "delete", "truncate") if postgres else ("update", "delete"):
            op.execute(f"DROP TRIGGER IF EXISTS {table}_no_{name}" + (f" ON {table}" if postgres else ""))
    if postgres:
        op.execute("DROP FUNCTION yk_ss_append_only()")
    op.drop_index("ix_ss_statements_person_hash", table_name="ss_statements")
    op.drop_table("ss_statements")
    op.drop_index("ix_ss_entries_corrects_id", table_name="ss_entries")
    op.drop_index("ix_ss_entries_person_month", table_name="ss_entries")
    op.drop_table("ss_entries")
    op.drop_table("ss_imports")
