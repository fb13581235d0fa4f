"""Taps carry their natural keys as unique indexes; hot references are checked per statement.

Why (measured server-side cost per row of the ingest COPYs, ``docs/clearing.md``,
"Performance"):

- ``taps`` was range-partitioned by business day, so its natural keys could not be unique
  on it and every tap also wrote a row to the guard table ``tap_keys``: 24 + 10 µs per
  tap. Unpartitioned with the two natural keys as unique indexes: 11–15 µs. A tap's keys
  are unique for all time, which no partitioned table can say; retention is by archiving
  closed years, not by dropping day partitions.
- The row-level foreign keys ``transfers.debit_account_id``/``credit_account_id`` and
  ``taps.batch_id`` ran one locking lookup per row (transfers 25 → 8 µs without them).
  They are replaced by statement-level triggers that check the whole statement's rows with
  one anti-join (PostgreSQL, about 4 µs a row) or by row triggers (SQLite), and accounts
  and batches may no longer be deleted or truncated, so a checked reference cannot dangle
  later. The check functions carry the migration's ``search_path``, as a foreign key is
  bound to its table.
- ``cards`` and ``accounts`` are updated on every cleared tap: ``fillfactor`` leaves room
  on each page so those updates stay heap-only (no index writes).
- ``ix_taps_batch_id`` goes: ingest finds a batch's taps by their natural key, and a batch
  is one terminal's, so ``uq_taps_terminal_seq`` narrows any search by batch.
- ``batches.answer`` (tens of kB per batch) is compressed with lz4 where the server has it.
- ``UNIQUE(pending_id)`` becomes a partial unique index (``WHERE pending_id IS NOT NULL``):
  the same guarantee, and the tap transfers, which have no pending id, skip it (2 µs a row).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UPDATE_HEAVY_FILLFACTOR = 80

_PG_FUNCTIONS = """
CREATE FUNCTION yk_transfers_accounts_exist() RETURNS trigger LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    IF EXISTS (
        SELECT 1 FROM (SELECT debit_account_id AS id FROM new_rows UNION SELECT credit_account_id FROM new_rows) n
        WHERE NOT EXISTS (SELECT 1 FROM accounts a WHERE a.id = n.id)
    ) THEN
        RAISE EXCEPTION 'a transfer names an account that does not exist' USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END $$;
CREATE FUNCTION yk_taps_batches_exist() RETURNS trigger LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    IF EXISTS (
        SELECT 1 FROM (SELECT DISTINCT batch_id AS id FROM new_rows WHERE batch_id IS NOT NULL) n
        WHERE NOT EXISTS (SELECT 1 FROM batches b WHERE b.id = n.id)
    ) THEN
        RAISE EXCEPTION 'a tap names a batch that does not exist' USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END $$;
CREATE FUNCTION yk_never_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% rows are never deleted (other rows refer to them)', TG_TABLE_NAME
        USING ERRCODE = 'restrict_violation';
END $$;
"""
_PG_TRIGGERS = """
CREATE TRIGGER transfers_accounts_exist_ins AFTER INSERT ON transfers
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION yk_transfers_accounts_exist();
CREATE TRIGGER transfers_accounts_exist_upd AFTER UPDATE ON transfers
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION yk_transfers_accounts_exist();
CREATE TRIGGER taps_batches_exist_ins AFTER INSERT ON taps
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION yk_taps_batches_exist();
CREATE TRIGGER taps_batches_exist_upd AFTER UPDATE ON taps
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION yk_taps_batches_exist();
CREATE TRIGGER accounts_never_deleted BEFORE DELETE ON accounts FOR EACH ROW EXECUTE FUNCTION yk_never_delete();
CREATE TRIGGER batches_never_deleted BEFORE DELETE ON batches FOR EACH ROW EXECUTE FUNCTION yk_never_delete();
CREATE TRIGGER accounts_never_truncated BEFORE TRUNCATE ON accounts
    FOR EACH STATEMENT EXECUTE FUNCTION yk_never_delete();
CREATE TRIGGER batches_never_truncated BEFORE TRUNCATE ON batches
    FOR EACH STATEMENT EXECUTE FUNCTION yk_never_delete();
"""
_SQLITE_TRIGGERS = (
    """CREATE TRIGGER transfers_accounts_exist_ins BEFORE INSERT ON transfers
    WHEN NOT EXISTS (SELECT 1 FROM accounts WHERE id = NEW.debit_account_id)
      OR NOT EXISTS (SELECT 1 FROM accounts WHERE id = NEW.credit_account_id)
    BEGIN SELECT RAISE(ABORT, 'a transfer names an account that does not exist'); END""",
    """CREATE TRIGGER transfers_accounts_exist_upd BEFORE UPDATE ON transfers
    WHEN NOT EXISTS (SELECT 1 FROM accounts WHERE id = NEW.debit_account_id)
      OR NOT EXISTS (SELECT 1 FROM accounts WHERE id = NEW.credit_account_id)
    BEGIN SELECT RAISE(ABORT, 'a transfer names an account that does not exist'); END""",
    """CREATE TRIGGER taps_batches_exist_ins BEFORE INSERT ON taps
    WHEN NEW.batch_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM batches WHERE id = NEW.batch_id)
    BEGIN SELECT RAISE(ABORT, 'a tap names a batch that does not exist'); END""",
    """CREATE TRIGGER taps_batches_exist_upd BEFORE UPDATE ON taps
    WHEN NEW.batch_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM batches WHERE id = NEW.batch_id)
    BEGIN SELECT RAISE(ABORT, 'a tap names a batch that does not exist'); END""",
    """CREATE TRIGGER accounts_never_deleted BEFORE DELETE ON accounts
    BEGIN SELECT RAISE(ABORT, 'accounts rows are never deleted (other rows refer to them)'); END""",
    """CREATE TRIGGER batches_never_deleted BEFORE DELETE ON batches
    BEGIN SELECT RAISE(ABORT, 'batches rows are never deleted (other rows refer to them)'); END""",
)
_TRIGGERS = (
    ("transfers_accounts_exist_ins", "transfers"),
    ("transfers_accounts_exist_upd", "transfers"),
    ("taps_batches_exist_ins", "taps"),
    ("taps_batches_exist_upd", "taps"),
    ("accounts_never_deleted", "accounts"),
    ("batches_never_deleted", "batches"),
    ("accounts_never_truncated", "accounts"),  # PostgreSQL only (SQLite has no TRUNCATE)
    ("batches_never_truncated", "batches"),
)
_KEY_INDEXES = (
    ("uq_taps_terminal_seq", ["terminal_id", "terminal_seq"]),
    ("uq_taps_card_counter", ["issuer_id", "card_asn", "offline_counter", "tx_type"]),
)


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _upgrade_postgres()
    else:
        _upgrade_sqlite()


def _upgrade_postgres() -> None:
    # taps: copy the partitioned table into a plain one (same columns, defaults, checks),
    # keeping the id sequence; then the keys that tap_keys used to guard.
    op.execute("ALTER SEQUENCE taps_id_seq OWNED BY NONE")
    op.execute("CREATE TABLE taps_plain (LIKE taps INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
    op.execute("INSERT INTO taps_plain SELECT * FROM taps")
    op.execute("DROP TABLE taps")
    op.execute("ALTER TABLE taps_plain RENAME TO taps")
    op.execute("ALTER SEQUENCE taps_id_seq OWNED BY taps.id")
    op.create_primary_key("pk_taps", "taps", ["id"])
    for name, columns in _KEY_INDEXES:
        op.create_index(name, "taps", columns, unique=True)
    op.drop_table("tap_keys")
    op.drop_constraint("fk_transfers_debit_account_id_accounts", "transfers", type_="foreignkey")
    op.drop_constraint("fk_transfers_credit_account_id_accounts", "transfers", type_="foreignkey")
    op.drop_constraint("uq_transfers_pending_id", "transfers", type_="unique")
    _create_pending_index()
    op.execute(_PG_FUNCTIONS)
    op.execute(_PG_TRIGGERS)
    for table in ("cards", "accounts"):
        op.execute(f"ALTER TABLE {table} SET (fillfactor = {UPDATE_HEAVY_FILLFACTOR})")
    if _has_lz4():
        for column in ("answer", "body"):
            op.execute(f"ALTER TABLE batches ALTER COLUMN {column} SET COMPRESSION lz4")


def _create_pending_index() -> None:
    """UNIQUE(pending_id) as a partial index: the tap transfers (nearly all) have none and skip it."""
    where = sa.text("pending_id IS NOT NULL")
    op.create_index(
        "uq_transfers_pending_id", "transfers", ["pending_id"], unique=True, postgresql_where=where, sqlite_where=where
    )


def _has_lz4() -> bool:
    """Whether this server was built with lz4 (PostgreSQL 14+): much cheaper than pglz for answers."""
    found = op.get_bind().exec_driver_sql(
        "SELECT 1 FROM pg_settings WHERE name = 'default_toast_compression' AND 'lz4' = ANY(enumvals)"
    )
    return found.first() is not None


def _upgrade_sqlite() -> None:
    op.drop_index("ix_taps_card_counter", table_name="taps")
    op.drop_index("ix_taps_terminal_seq", table_name="taps")
    op.drop_index("ix_taps_batch_id", table_name="taps")
    with op.batch_alter_table("taps") as batch:
        batch.drop_constraint("fk_taps_batch_id_batches", type_="foreignkey")
    for name, columns in _KEY_INDEXES:
        op.create_index(name, "taps", columns, unique=True)
    op.drop_table("tap_keys")
    with op.batch_alter_table("transfers") as batch:
        batch.drop_constraint("fk_transfers_debit_account_id_accounts", type_="foreignkey")
        batch.drop_constraint("fk_transfers_credit_account_id_accounts", type_="foreignkey")
        batch.drop_constraint("uq_transfers_pending_id", type_="unique")
    _create_pending_index()
    for statement in _SQLITE_TRIGGERS:
        op.execute(statement)


def downgrade() -> None:
    """Back to 0002's shape. Taps all return to the default partition (0002 had no others unless
    ``create_tap_partitions`` made them; those days would need their rows moved first)."""
    postgres = op.get_bind().dialect.name == "postgresql"
    for trigger, table in _TRIGGERS:
        op.execute(f"DROP TRIGGER IF EXISTS {trigger}" + (f" ON {table}" if postgres else ""))
    if postgres:
        op.execute("DROP FUNCTION yk_transfers_accounts_exist(), yk_taps_batches_exist(), yk_never_delete()")
        for table in ("cards", "accounts"):
            op.execute(f"ALTER TABLE {table} RESET (fillfactor)")
        if _has_lz4():
            for column in ("answer", "body"):
                op.execute(f"ALTER TABLE batches ALTER COLUMN {column} SET COMPRESSION default")
    op.drop_index("uq_transfers_pending_id", table_name="transfers")
    with op.batch_alter_table("transfers") as batch:
        batch.create_foreign_key("fk_transfers_debit_account_id_accounts", "accounts", ["debit_account_id"], ["id"])
        batch.create_foreign_key("fk_transfers_credit_account_id_accounts", "accounts", ["credit_account_id"], ["id"])
        batch.create_unique_constraint("uq_transfers_pending_id", ["pending_id"])
    op.create_table(
        "tap_keys",
        sa.Column("terminal_id", sa.String(length=12), nullable=False),
        sa.Column("terminal_seq", sa.BigInteger(), nullable=False),
        sa.Column("issuer_id", sa.String(length=16), nullable=False),
        sa.Column("card_asn", sa.String(length=20), nullable=False),
        sa.Column("offline_counter", sa.Integer(), nullable=False),
        sa.Column("tx_type", sa.SmallInteger(), nullable=False),
        sa.Column("business_day", sa.Date(), nullable=False),
        sa.PrimaryKeyConstraint("terminal_id", "terminal_seq", name="pk_tap_keys"),
        sa.UniqueConstraint(
            "issuer_id",
            "card_asn",
            "offline_counter",
            "tx_type",
            name="uq_tap_keys_issuer_id_card_asn_offline_counter_tx_type",
        ),
    )
    op.execute(
        "INSERT INTO tap_keys (terminal_id, terminal_seq, issuer_id, card_asn, offline_counter, tx_type, business_day)"
        " SELECT terminal_id, terminal_seq, issuer_id, card_asn, offline_counter, tx_type, business_day FROM taps"
    )
    for name, _ in _KEY_INDEXES:
        op.drop_index(name, table_name="taps")
    if postgres:
        op.execute("ALTER SEQUENCE taps_id_seq OWNED BY NONE")
        op.execute("ALTER TABLE taps RENAME TO taps_plain")
        op.execute("ALTER TABLE taps_plain DROP CONSTRAINT pk_taps")
        op.execute(
            "CREATE TABLE taps (LIKE taps_plain INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"
            " PARTITION BY RANGE (business_day)"
        )
        op.execute("CREATE TABLE taps_default PARTITION OF taps DEFAULT")
        op.execute("INSERT INTO taps SELECT * FROM taps_plain")
        op.execute("DROP TABLE taps_plain")
        op.execute("ALTER SEQUENCE taps_id_seq OWNED BY taps.id")
        op.create_primary_key("pk_taps", "taps", ["id", "business_day"])
        op.create_foreign_key("fk_taps_batch_id_batches", "taps", "batches", ["batch_id"], ["id"])
    else:
        with op.batch_alter_table("taps") as batch:
            batch.create_foreign_key("fk_taps_batch_id_batches", "batches", ["batch_id"], ["id"])
    op.create_index("ix_taps_batch_id", "taps", ["batch_id"], unique=False)
    op.create_index("ix_taps_card_counter", "taps", ["issuer_id", "card_asn", "offline_counter"], unique=False)
    op.create_index("ix_taps_terminal_seq", "taps", ["terminal_id", "terminal_seq"], unique=False)
