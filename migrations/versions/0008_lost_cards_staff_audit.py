"""Lost cards, replacements, the staff console and its append-only audit log (issue 10).

- ``card_replacements`` (clearing): a lost card replaced, once per old card, with the balance
  move's reconciliation (shadow, liability, held, moved) and its ``BALANCE_MOVE`` transfer.
- ``portal_lost_reports``: lost-card reports; at most one open (``lost``) per card.
- ``portal_staff``, ``portal_staff_sessions``: staff accounts (role, argon2id, encrypted TOTP
  secret, last TOTP step used) and their sessions (id = SHA-256 of the cookie's token).
- ``portal_audit_log``: append-only. UPDATE and DELETE are refused by triggers on both
  databases (and TRUNCATE on PostgreSQL), so no code path, and no one with only the
  application's grants, can edit history.
- ``portal_card_bindings.how`` also takes ``replacement`` (the new card bound to the old
  card's citizen): the CHECK is replaced (a table rebuild on SQLite, batch mode).

The models are ``clearing/models.py`` (``CardReplacement``) and ``portal/models.py``.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_OPEN = sa.text("state = 'lost'")

_PG_AUDIT = """
CREATE FUNCTION yk_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit log is append-only: % refused', TG_OP USING ERRCODE = 'restrict_violation';
END $$;
CREATE TRIGGER portal_audit_log_no_update BEFORE UPDATE ON portal_audit_log
    FOR EACH ROW EXECUTE FUNCTION yk_audit_append_only();
CREATE TRIGGER portal_audit_log_no_delete BEFORE DELETE ON portal_audit_log
    FOR EACH ROW EXECUTE FUNCTION yk_audit_append_only();
CREATE TRIGGER portal_audit_log_no_truncate BEFORE TRUNCATE ON portal_audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION yk_audit_append_only();
"""
_SQLITE_AUDIT = (
    """CREATE TRIGGER portal_audit_log_no_update BEFORE UPDATE ON portal_audit_log
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only: UPDATE refused'); END""",
    """CREATE TRIGGER portal_audit_log_no_delete BEFORE DELETE ON portal_audit_log
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only: DELETE refused'); END""",
)
_TRIGGERS = ("portal_audit_log_no_update", "portal_audit_log_no_delete", "portal_audit_log_no_truncate")


def _how_check(hows: tuple[str, ...]) -> str:
    return "how IN (" + ", ".join(f"'{h}'" for h in hows) + ")"


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    op.create_table(
        "card_replacements",
        sa.Column("id", _BIG_ID, autoincrement=True, nullable=False),
        sa.Column("old_card_id", sa.BigInteger(), nullable=False),
        sa.Column("new_card_id", sa.BigInteger(), nullable=False),
        sa.Column("shadow_fen", sa.BigInteger(), nullable=False),
        sa.Column("liability_fen", sa.BigInteger(), nullable=False),
        sa.Column("held_fen", sa.BigInteger(), nullable=False),
        sa.Column("moved_fen", sa.BigInteger(), nullable=False),
        sa.Column("transfer_id", sa.String(length=80), nullable=True),
        sa.Column("replaced_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("replaced_by", sa.String(length=64), nullable=False),
        sa.CheckConstraint(
            "shadow_fen >= 0 AND liability_fen >= 0 AND held_fen >= 0 AND moved_fen >= 0",
            name=op.f("ck_card_replacements_amounts_nonnegative"),
        ),
        sa.CheckConstraint("moved_fen <= liability_fen", name=op.f("ck_card_replacements_moved_within_liability")),
        sa.CheckConstraint(
            "(moved_fen = 0) = (transfer_id IS NULL)", name=op.f("ck_card_replacements_transfer_iff_moved")
        ),
        sa.CheckConstraint("old_card_id <> new_card_id", name=op.f("ck_card_replacements_cards_differ")),
        sa.ForeignKeyConstraint(["old_card_id"], ["cards.id"], name=op.f("fk_card_replacements_old_card_id_cards")),
        sa.ForeignKeyConstraint(["new_card_id"], ["cards.id"], name=op.f("fk_card_replacements_new_card_id_cards")),
        sa.ForeignKeyConstraint(
            ["transfer_id"], ["transfers.id"], name=op.f("fk_card_replacements_transfer_id_transfers")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_card_replacements")),
        sa.UniqueConstraint("old_card_id", name=op.f("uq_card_replacements_old_card_id")),
        sa.UniqueConstraint("new_card_id", name=op.f("uq_card_replacements_new_card_id")),
    )

    op.create_table(
        "portal_lost_reports",
        sa.Column("id", _BIG_ID, autoincrement=True, nullable=False),
        sa.Column("issuer_id", sa.String(length=16), nullable=False),
        sa.Column("card_asn", sa.String(length=20), nullable=False),
        sa.Column("citizen_id", sa.BigInteger(), nullable=False),
        sa.Column("assurance", sa.String(length=8), nullable=False),
        sa.Column("state", sa.String(length=8), nullable=False),
        sa.Column("reported_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("denylist_version", sa.BigInteger(), nullable=False),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("state IN ('lost', 'found', 'replaced')", name=op.f("ck_portal_lost_reports_state_valid")),
        sa.CheckConstraint("assurance IN ('account', 'card')", name=op.f("ck_portal_lost_reports_assurance_valid")),
        sa.CheckConstraint(
            "(state = 'lost') = (closed_at IS NULL)", name=op.f("ck_portal_lost_reports_closed_iff_not_lost")
        ),
        sa.ForeignKeyConstraint(
            ["citizen_id"], ["portal_citizens.id"], name=op.f("fk_portal_lost_reports_citizen_id_portal_citizens")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_portal_lost_reports")),
    )
    op.create_index("ix_portal_lost_reports_citizen_id", "portal_lost_reports", ["citizen_id"])
    op.create_index(
        "uq_portal_lost_reports_open_card",
        "portal_lost_reports",
        ["issuer_id", "card_asn"],
        unique=True,
        sqlite_where=_OPEN,
        postgresql_where=_OPEN,
    )

    op.create_table(
        "portal_staff",
        sa.Column("id", _BIG_ID, autoincrement=True, nullable=False),
        sa.Column("username", sa.String(length=32), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("password_hash", sa.String(length=255), nullable=False),
        sa.Column("totp_secret_enc", sa.String(length=255), nullable=False),
        sa.Column("totp_last_step", sa.BigInteger(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "role IN ('counter_clerk', 'finance', 'administrator')", name=op.f("ck_portal_staff_role_valid")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_portal_staff")),
        sa.UniqueConstraint("username", name=op.f("uq_portal_staff_username")),
    )

    op.create_table(
        "portal_staff_sessions",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("staff_id", sa.BigInteger(), nullable=False),
        sa.Column("csrf_token", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["staff_id"],
            ["portal_staff.id"],
            name=op.f("fk_portal_staff_sessions_staff_id_portal_staff"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_portal_staff_sessions")),
    )
    op.create_index("ix_portal_staff_sessions_staff_id", "portal_staff_sessions", ["staff_id"])

    op.create_table(
        "portal_audit_log",
        sa.Column("id", _BIG_ID, autoincrement=True, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=64), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("target", sa.String(length=120), nullable=False),
        sa.Column("outcome", sa.String(length=64), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_portal_audit_log")),
    )
    op.create_index("ix_portal_audit_log_at", "portal_audit_log", ["at"])
    if postgres:
        op.execute(_PG_AUDIT)
    else:
        for statement in _SQLITE_AUDIT:
            op.execute(statement)

    with op.batch_alter_table("portal_card_bindings") as batch:
        batch.drop_constraint(op.f("ck_portal_card_bindings_how_valid"), type_="check")
        batch.create_check_constraint(
            op.f("ck_portal_card_bindings_how_valid"), _how_check(("transaction", "card_login", "replacement"))
        )


def downgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    op.execute("DELETE FROM portal_card_bindings WHERE how = 'replacement'")
    with op.batch_alter_table("portal_card_bindings") as batch:
        batch.drop_constraint(op.f("ck_portal_card_bindings_how_valid"), type_="check")
        batch.create_check_constraint(
            op.f("ck_portal_card_bindings_how_valid"), _how_check(("transaction", "card_login"))
        )
    for trigger in _TRIGGERS:
        if postgres or trigger != "portal_audit_log_no_truncate":
            op.execute(f"DROP TRIGGER IF EXISTS {trigger}" + (" ON portal_audit_log" if postgres else ""))
    if postgres:
        op.execute("DROP FUNCTION yk_audit_append_only()")
    op.drop_index("ix_portal_audit_log_at", table_name="portal_audit_log")
    op.drop_table("portal_audit_log")
    op.drop_index("ix_portal_staff_sessions_staff_id", table_name="portal_staff_sessions")
    op.drop_table("portal_staff_sessions")
    op.drop_table("portal_staff")
    op.drop_index("uq_portal_lost_reports_open_card", table_name="portal_lost_reports")
    op.drop_index("ix_portal_lost_reports_citizen_id", table_name="portal_lost_reports")
    op.drop_table("portal_lost_reports")
    op.drop_table("card_replacements")
