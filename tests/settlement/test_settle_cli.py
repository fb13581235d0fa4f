"""``yikatong settle``, ``reconcile``, ``merchant``, ``operator``, ``fees`` — and the demo city settles."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from pydantic import SecretStr
from settleworld import DAY0, day_at, make_world
from sqlalchemy import Engine
from typer.testing import CliRunner, Result

from clearing import db
from yikatong.cli import app
from yikatong.settings import Settings, get_settings


def _run(monkeypatch: pytest.MonkeyPatch, url: str, out: Path, *args: str) -> Result:
    monkeypatch.setenv("YIKATONG_DATABASE_URL", url)
    monkeypatch.setenv("YIKATONG_SETTLEMENT_DIR", str(out))
    get_settings.cache_clear()
    try:
        return CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})
    finally:
        get_settings.cache_clear()


def test_settle_and_reconcile_commands(sqlite_engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    world = make_world(sqlite_engine, tmp_path / "out")
    world.ingest("a1", day_at(DAY0), [200, 300])
    url = str(sqlite_engine.url)
    day = DAY0.isoformat()
    assert _run(monkeypatch, url, tmp_path / "out", "reconcile", "--date", day).exit_code == 1  # not closed yet
    first = _run(monkeypatch, url, tmp_path / "out", "settle", "--date", day)
    assert first.exit_code == 0, first.output
    assert "closed: 1 payee(s)" in first.stdout and f"payouts-{day}.csv" in first.stdout
    again = _run(monkeypatch, url, tmp_path / "out", "settle", "--date", day)
    assert "already closed; nothing changed" in again.stdout and "(unchanged)" in again.stdout
    ok = _run(monkeypatch, url, tmp_path / "out", "reconcile", "--date", day)
    assert ok.exit_code == 0 and "agree" in ok.stdout
    statement = tmp_path / "bank.csv"
    statement.write_text("end_to_end_id,amount_fen,status\nYKT-unknown,5,booked\n")
    bank = _run(monkeypatch, url, tmp_path / "out", "reconcile", "--date", day, "--statement", str(statement))
    assert bank.exit_code == 1 and "not ours" in bank.stdout  # our payout is on no statement now
    bad = _run(monkeypatch, url, tmp_path / "out", "settle", "--date", "2026-13-01")
    assert bad.exit_code == 1 and "E_BAD_DATE" in bad.stderr


def test_party_commands_change_and_audit(
    sqlite_engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_world(sqlite_engine, tmp_path / "out")
    url, out = str(sqlite_engine.url), tmp_path / "out"
    assert (
        _run(monkeypatch, url, out, "fees", "set", "--category", "retail", "--bps", "60", "--min-fen", "50").exit_code
        == 0
    )
    added = _run(
        monkeypatch, url, out, "merchant", "add", "--id", "shop-2", "--name", "Ma's Noodles", "--category", "retail"
    )
    assert added.exit_code == 0, added.output
    bad = _run(monkeypatch, url, out, "merchant", "set-account", "--id", "shop-2", "--name", "Ma", "--number", "１２３",
               "--cnaps", "12")  # fmt: skip
    assert bad.exit_code == 1 and "E_BAD_ACCOUNT_NUMBER" in bad.stderr and "E_BAD_CNAPS_CODE" in bad.stderr
    good = _run(monkeypatch, url, out, "merchant", "set-account", "--id", "shop-2", "--name", "Ma Noodles",
                "--number", "6222020000000000303", "--cnaps", "102791000013", "--actor", "finance-1")  # fmt: skip
    assert good.exit_code == 0 and "…0303" in good.stdout
    assert _run(monkeypatch, url, out, "merchant", "set-fee", "--id", "shop-2", "--bps", "20").exit_code == 0
    today = dt.datetime.now(dt.timezone(dt.timedelta(hours=8))).date().isoformat()  # the business day
    route = _run(monkeypatch, url, out, "operator", "assign-route", "--route", "R9", "--operator", "bus-b",
                 "--from", today)  # fmt: skip
    assert route.exit_code == 0, route.output
    past = _run(monkeypatch, url, out, "operator", "assign-route", "--route", "R9", "--operator", "bus-b",
                "--from", "2020-01-01")  # fmt: skip
    assert past.exit_code == 1 and "E_BAD_ASSIGNMENT" in past.stderr
    log = _run(monkeypatch, url, out, "merchant", "audit", "--target", "payee:shop-2")
    assert "finance-1 payee_account" in log.stdout and "6222020000000000303" not in log.stdout
    listing = _run(monkeypatch, url, out, "merchant", "list")
    assert "shop-2" in listing.stdout and "retail" in listing.stdout
    for group in ("merchant", "operator", "fees"):
        assert _run(monkeypatch, url, out, group, "--help").exit_code == 0


def test_the_demo_city_settles_and_reconciles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from yikatong.demo import run_demo

    settings = Settings(database_url=f"sqlite:///{tmp_path / 'demo.db'}", keystore=tmp_path / "keystore.json",
                        kek=SecretStr("11" * 32), redis_url=None,
                        settlement_dir=tmp_path / "var" / "settlement")  # fmt: skip
    run_demo(settings, seed=7, workdir=tmp_path / "demo", use_pcsc=False)
    url, out = settings.database_url, tmp_path / "var" / "settlement"
    today = dt.datetime.now(dt.timezone(dt.timedelta(hours=8))).date().isoformat()
    first = _run(monkeypatch, url, out, "settle", "--date", today, "--before-cutoff")
    assert first.exit_code == 0, first.output
    assert (out / today / f"statement-{today}.csv").is_file()
    checked = _run(monkeypatch, url, out, "reconcile", "--date", today)
    assert checked.exit_code == 0, checked.output
    db.make_engine(url).dispose()


def test_a_merchant_in_a_category_without_a_fee_schedule_is_refused(
    sqlite_engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, out = str(sqlite_engine.url), tmp_path / "out"
    refused = _run(monkeypatch, url, out, "merchant", "add", "--id", "shop-9", "--name", "Tea", "--category", "nosuch")
    assert refused.exit_code == 1 and "E_UNKNOWN_FEE_CATEGORY" in refused.output
    assert "shop-9" not in _run(monkeypatch, url, out, "merchant", "list").stdout
    assert _run(monkeypatch, url, out, "fees", "set", "--category", "nosuch", "--bps", "30").exit_code == 0
    added = _run(monkeypatch, url, out, "merchant", "add", "--id", "shop-9", "--name", "Tea", "--category", "nosuch")
    assert added.exit_code == 0, added.output
    moved = _run(monkeypatch, url, out, "merchant", "set-fee", "--id", "shop-9", "--category", "other")
    assert moved.exit_code == 1 and "E_UNKNOWN_FEE_CATEGORY" in moved.output
