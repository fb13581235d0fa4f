"""Payees in Chromium: finance registers a merchant, sets its payout account, sees it masked, downloads a statement.

The demo city served for real (``conftest.city``); a finance account made with ``yikatong staff
add`` as an operator makes it, logged in with password and TOTP; the demo morning's window is
closed by ``settlement.close.close_window`` (what ``yikatong settle`` runs). The PDF downloaded
through the browser is byte-identical to the one rendered from the database, and shows the
close's payout for that payee.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
import sys
import urllib.parse
from pathlib import Path
from typing import Any

import pyotp
from sqlalchemy import func, select

from clearing import db
from settlement.bank import BankAccount
from settlement.close import close_window
from settlement.models import PayeeRow, SettlementAuditRow, StatementRow, TotalRow
from settlement.payouts import Payer
from settlement.statement_pdf import statement_document, statement_pdf, yuan_text
from tests.portal.browser.conftest import City, axe_check

FINANCE_PASSWORD = "ledgers by the Wei river"
NUMBER = "6222020000000000202"


def _finance(city: City) -> str:
    """``yikatong staff add --role finance``; the TOTP secret read off the printed URI."""
    s = city.settings
    env = dict(os.environ, YIKATONG_DATABASE_URL=s.database_url, YIKATONG_KEYSTORE=str(s.keystore))
    env["YIKATONG_KEK"] = s.kek.get_secret_value() if s.kek is not None else ""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "yikatong.cli",
            "staff",
            "add",
            "--username",
            "money.li",
            "--role",
            "finance",
            "--password-stdin",
        ],
        input=FINANCE_PASSWORD + "\n",
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    uri = re.search(r"otpauth://\S+", done.stdout)
    assert uri is not None, done.stdout
    return urllib.parse.parse_qs(urllib.parse.urlsplit(uri.group(0)).query)["secret"][0]


def _close_first_day(city: City, out: Path) -> tuple[dt.date, str, int]:
    """Close the earliest window with running totals; (day, a payee paid that day, its payout)."""
    s = city.settings
    account = BankAccount(s.settlement_payer_account_name, s.settlement_payer_account_number, s.settlement_payer_cnaps)
    payer = Payer(s.settlement_payer_name, account)
    engine = db.make_engine(s.database_url)
    try:
        with db.session_factory(engine)() as session:
            day = session.scalar(select(func.min(TotalRow.window_day)))
        assert day is not None, "the demo morning cleared taps"
        close_window(engine, day, now=dt.datetime.now(dt.UTC), payer=payer, out_dir=out, early=True)
        with db.session_factory(engine)() as session:
            line = session.scalars(
                select(StatementRow).where(StatementRow.window_day == day).order_by(StatementRow.gross_fen.desc())
            ).first()
            assert line is not None
            return day, line.payee_id, line.gross_fen
    finally:
        engine.dispose()


def test_finance_adds_a_merchant_sets_its_account_and_downloads_a_statement(
    browser: Any, city: City, tmp_path: Path
) -> None:
    secret = _finance(city)
    day, paid_payee, gross_fen = _close_first_day(city, tmp_path / "settlement")
    staff = browser.new_context(locale="zh-CN", base_url=city.url, accept_downloads=True)
    staff.set_default_timeout(30_000)
    try:
        console = staff.new_page()
        console.goto("/staff/login")
        console.fill("#username", "money.li")
        console.fill("#password", FINANCE_PASSWORD)
        console.fill("#totp", pyotp.TOTP(secret).now())
        with console.expect_navigation():
            console.click("#staff-login-submit")
        console.click("#nav-parties")
        console.wait_for_selector("#payees")
        axe_check(console)

        console.fill("#payee_id", "tea-1")
        console.fill("#name", "渭城茶馆")
        console.select_option("#kind", "merchant")
        console.select_option("#category", "transit")
        with console.expect_navigation():
            console.click("#add-payee-submit")
        assert console.inner_text("#payee-name").strip() == "渭城茶馆"
        axe_check(console)

        # a wrong account: each field says what is wrong, nothing is stored
        console.fill("#account_name", "渭城茶馆")
        console.fill("#account_number", "6222 0202")
        console.fill("#cnaps", "10579100003")
        with console.expect_navigation():
            console.click("#account-submit")
        assert console.is_visible("#account_number-error") and console.is_visible("#cnaps-error")
        assert console.is_visible("#error-summary")
        axe_check(console)
        console.fill("#account_number", NUMBER)
        console.fill("#cnaps", "105791000034")
        with console.expect_navigation():
            console.click("#account-submit")
        shown = console.inner_text("#payee-account")
        assert "…0202" in shown and "105791000034" in shown and NUMBER not in console.content()

        console.goto("/staff/parties")
        row = console.inner_text("tr[data-payee='tea-1'] .account")
        assert "…0202" in row and NUMBER not in console.content()

        console.goto(f"/staff/parties/{paid_payee}")
        axe_check(console)
        with console.expect_download() as download_info:
            console.click(f"#statement-days a[href$='day={day.isoformat()}']")
        download = download_info.value
        assert download.suggested_filename == f"statement-{paid_payee}-{day.isoformat()}.pdf"
        pdf = Path(download.path()).read_bytes()
    finally:
        staff.close()

    engine = db.make_engine(city.settings.database_url)
    try:
        with db.session_factory(engine)() as session:
            expected = statement_pdf(statement_document(session, paid_payee, day))
            account = session.get(PayeeRow, "tea-1")
            audit = select(SettlementAuditRow).where(SettlementAuditRow.target == "payee:tea-1")
            changes = list(session.scalars(audit.order_by(SettlementAuditRow.id)))
    finally:
        engine.dispose()
    assert pdf == expected  # what the browser got is the database's statement, byte for byte
    assert f"({yuan_text(gross_fen)}) Tj".encode() in pdf
    assert account is not None and account.account_number == NUMBER
    assert [(c.actor, c.action) for c in changes] == [
        ("staff:money.li", "merchant_add"),
        ("staff:money.li", "payee_account"),
    ]
