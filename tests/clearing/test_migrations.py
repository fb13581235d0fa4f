"""The one Alembic migration builds exactly the models, on SQLite and PostgreSQL, and tears down cleanly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, inspect, text

from clearing import db
from clearing.models import Base


def _diff(engine: Engine) -> list[Any]:
    def include(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
        return not (type_ == "table" and name in {"alembic_version", "taps_default"})

    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True, "include_object": include})
        return list(compare_metadata(ctx, Base.metadata))


def _tables(engine: Engine) -> set[str]:
    return set(inspect(engine).get_table_names())


def test_sqlite_upgrade_matches_models_and_downgrade_removes_everything(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    db.upgrade(url)
    engine = db.make_engine(url)
    try:
        assert db.current_revision(engine) == db.head_revision()
        assert _tables(engine) >= {t.name for t in Base.metadata.sorted_tables}
        assert _diff(engine) == []
        db.downgrade(url, "base")
        assert _tables(engine) == {"alembic_version"}
        assert db.current_revision(engine) is None
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_postgres_upgrade_matches_models_and_downgrades(pg_url: str) -> None:
    with db.isolated_schema(pg_url, prefix="t_mig_") as schema:
        db.upgrade(pg_url, schema=schema)
        engine = db.make_engine(pg_url, schema=schema)
        try:
            assert _diff(engine) == []
            db.downgrade(pg_url, "base", schema=schema)
            assert _tables(engine) == {"alembic_version"}
        finally:
            engine.dispose()


@pytest.mark.postgres
def test_postgres_0003_moves_partitioned_taps_into_the_plain_table(pg_url: str) -> None:
    """Taps written under 0002 (partitioned, keys in tap_keys) survive the upgrade, and back."""
    with db.isolated_schema(pg_url, prefix="t_mig3_") as schema:
        db.upgrade(pg_url, revision="0002", schema=schema)
        engine = db.make_engine(pg_url, schema=schema)
        try:
            with engine.begin() as conn:
                conn.execute(text(_SEED_0002))
            db.upgrade(pg_url, schema=schema)
            with engine.connect() as conn:
                kind = conn.execute(
                    text(
                        "SELECT c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                        "WHERE n.nspname = :s AND c.relname = 'taps'"
                    ),
                    {"s": schema},
                ).scalar_one()
                assert kind == "r"  # a plain table now
                assert conn.execute(text("SELECT id, terminal_seq FROM taps")).all() == [(1, 7)]
                next_id = conn.execute(text("SELECT nextval(pg_get_serial_sequence('taps', 'id'))")).scalar_one()
                assert next_id > 1
            db.downgrade(pg_url, "0002", schema=schema)
            with engine.connect() as conn:
                assert conn.execute(text("SELECT terminal_id, terminal_seq FROM tap_keys")).all() == [
                    ("0000000000a1", 7)
                ]
                assert conn.execute(text("SELECT id FROM taps")).all() == [(1,)]
        finally:
            engine.dispose()


_SEED_0002 = """
INSERT INTO taps (id, business_day, terminal_id, terminal_seq, psam_serial, issuer_id, card_asn, card_type, tx_type,
                  amount_fen, balance_before_fen, offline_counter, tx_time, tx_utc_offset_min, key_version, alg_id,
                  tac, status, verdict, code, message, received_at)
VALUES (nextval('taps_id_seq'), '2026-11-24', '0000000000a1', 7, '0102', '01007120ffffffff', '71200000000000000001',
        'ordinary', 9, 200, 1000, 3, now(), 480, 1, 0, '01020304', 'normal', 'accepted', 'OK', '', now());
INSERT INTO tap_keys VALUES ('0000000000a1', 7, '01007120ffffffff', '71200000000000000001', 3, 9, '2026-11-24');
"""


def test_ensure_migrated_migrates_only_when_behind(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'e.db'}"
    engine = db.ensure_migrated(url)
    assert db.current_revision(engine) == db.head_revision()
    engine.dispose()
    again = db.ensure_migrated(url)  # at head: no-op
    assert db.current_revision(again) == db.head_revision()
    again.dispose()


def test_sqlite_0003_rebuilds_tables_that_other_rows_refer_to(tmp_path: Path) -> None:
    """Batch mode copies ``transfers``; rows referring to a transfer keep pointing at it."""
    url = f"sqlite:///{tmp_path / 'r.db'}"
    db.upgrade(url, "0002")
    engine = db.make_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text(_SEED_SQLITE_0002))
            conn.execute(
                text(
                    "INSERT INTO transfers (id, debit_account_id, credit_account_id, amount_fen, ledger, code, state,"
                    " created_at) VALUES ('t1', 2, 1, 5, 156, 1, 'posted', '2026-01-01')"
                )
            )
            conn.execute(
                text(
                    "INSERT INTO exception_items (kind, code, message, state, decision_transfer_id, created_at,"
                    " decided_at) VALUES ('tap', 'X', '', 'accepted', 't1', '2026-01-01', '2026-01-01')"
                )
            )
        db.upgrade(url)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT decision_transfer_id FROM exception_items")).all() == [("t1",)]
            assert conn.execute(text("PRAGMA foreign_key_check")).all() == []
    finally:
        engine.dispose()


_SEED_SQLITE_0002 = """
INSERT INTO accounts (id, ledger, code, owner_ref, flags, debits_pending, debits_posted, credits_pending,
                      credits_posted, created_at)
VALUES (1, 156, 1, 'a', 0, 0, 0, 0, 5, '2026-01-01'), (2, 156, 1, 'b', 0, 0, 5, 0, 0, '2026-01-01');
"""


_SEED_ISSUERS_0004 = (
    "INSERT INTO issuers (issuer_id, city, name, own, created_at) VALUES"
    " ('01007120ffffffff', 'xianyang', 'Xianyang Yikatong', true, '2026-01-01'),"
    " ('01007100ffffffff', 'xian', 'Xi''an Chang''an Tong', false, '2026-01-01')"
)


def _check_0005_backfills_city_codes(engine: Engine, upgrade: Any, downgrade: Any) -> None:
    with engine.begin() as conn:
        conn.execute(text(_SEED_ISSUERS_0004))
    upgrade()
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT issuer_id, city_code FROM issuers ORDER BY issuer_id")).all()
        assert rows == [("01007100ffffffff", "7100"), ("01007120ffffffff", "7120")]
    names = {c["name"] for c in inspect(engine).get_check_constraints("issuers")}
    assert names == {"ck_issuers_issuer_id_len", "ck_issuers_city_code_len"}  # as the model names them
    downgrade()
    assert "city_code" not in {c["name"] for c in inspect(engine).get_columns("issuers")}
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM issuers")).scalar_one() == 2


def test_sqlite_0005_gives_existing_issuers_the_city_code_in_their_id(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'i.db'}"
    db.upgrade(url, "0004")
    engine = db.make_engine(url)
    try:
        _check_0005_backfills_city_codes(engine, lambda: db.upgrade(url), lambda: db.downgrade(url, "0004"))
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_postgres_0005_gives_existing_issuers_the_city_code_in_their_id(pg_url: str) -> None:
    with db.isolated_schema(pg_url, prefix="t_mig5_") as schema:
        db.upgrade(pg_url, revision="0004", schema=schema)
        engine = db.make_engine(pg_url, schema=schema)
        try:
            _check_0005_backfills_city_codes(
                engine,
                lambda: db.upgrade(pg_url, schema=schema),
                lambda: db.downgrade(pg_url, "0004", schema=schema),
            )
        finally:
            engine.dispose()
