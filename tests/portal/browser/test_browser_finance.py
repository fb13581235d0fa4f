"""The finance console in Chromium: the day's figures and charts, and the stop map, against the database.

The demo city's morning (``yikatong.demo``: two buses, a transfer, a lost card), served with
the portal; a finance officer made with ``yikatong staff add`` logs in with password and TOTP,
picks the day, and reads it. Every chart must draw (the ECharts instance's option data is
read back from the page) and every number on the page must equal what the database says,
counted here independently of ``settlement.reports``. Then the day is closed as an operator
would (``yikatong settle --date D --before-cutoff``) and the page shows the statements and
each payee's payout status. axe-core finds no serious violation on any of the pages, and the
strict CSP reports nothing (ECharts draws on canvas; no inline style or script).
"""

from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
import sys
import urllib.parse
from collections import Counter
from typing import Any

import pyotp
from sqlalchemy import func, select

from clearing import db
from clearing.models import Operator, Tap
from settlement.models import StatementRow, TotalRow
from tests.portal.browser.conftest import City, axe_check

OFFICER = "fin.zhao"
OFFICER_PASSWORD = "ledgers by the wei river"
SHANGHAI = dt.timezone(dt.timedelta(hours=8))
CHARTS = ("hours", "operators", "routes", "merchants", "issues", "payouts")


def _cli(city: City, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    s = city.settings
    env = dict(os.environ, YIKATONG_DATABASE_URL=s.database_url, YIKATONG_KEYSTORE=str(s.keystore))
    env["YIKATONG_KEK"] = s.kek.get_secret_value() if s.kek is not None else ""
    env["YIKATONG_SETTLEMENT_DIR"] = str(city.workdir / "settlement")
    done = subprocess.run(
        [sys.executable, "-m", "yikatong.cli", *args], input=stdin, capture_output=True, text=True, env=env,
        timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def _officer(city: City) -> str:
    done = _cli(city, "staff", "add", "--username", OFFICER, "--role", "finance", "--password-stdin",
                stdin=OFFICER_PASSWORD + "\n")  # fmt: skip
    uri = re.search(r"otpauth://\S+", done.stdout)
    assert uri is not None, done.stdout
    return urllib.parse.parse_qs(urllib.parse.urlsplit(uri.group(0)).query)["secret"][0]


def _database(city: City, day: dt.date) -> dict[str, Any]:
    """The day's figures counted straight from the tables (not through settlement.reports)."""
    engine = db.make_engine(city.settings.database_url)
    try:
        with db.session_factory(engine)() as session:
            taps = session.execute(
                select(Tap.tx_time, Tap.verdict, Tap.route_id, Tap.stop_id, Tap.amount_fen, Tap.transfer_id).where(
                    Tap.business_day == day
                )
            ).all()
            totals = {
                operator_id: (gross, refunds)
                for operator_id, gross, refunds in session.execute(
                    select(Operator.operator_id, TotalRow.gross_fen, TotalRow.refunds_fen)
                    .join(Operator, Operator.payable_account_id == TotalRow.payee_account_id)
                    .where(TotalRow.window_day == day)
                )
            }
            statements = {
                s.payee_id: (s.gross_fen, s.fee_fen, s.net_fen, s.payout_fen, s.carry_out_fen, s.held_reason)
                for s in session.scalars(select(StatementRow).where(StatementRow.window_day == day))
            }
            kinds = {str(i): str(k) for i, k in session.execute(select(Operator.operator_id, Operator.kind))}
            n_taps = session.scalar(select(func.count()).select_from(Tap).where(Tap.business_day == day))
    finally:
        engine.dispose()
    hours: Counter[tuple[int, str]] = Counter()
    routes: dict[str, int] = {}
    stops: Counter[str] = Counter()
    for tx_time, verdict, route, stop, amount, transfer in taps:
        hours[(tx_time.astimezone(SHANGHAI).hour, verdict)] += 1
        if route is not None:
            routes[route] = routes.get(route, 0) + (amount if transfer else 0)
        if stop is not None:
            stops[stop] += 1
    posted = sum(amount for *_, amount, transfer in taps if transfer)
    return {"taps": n_taps, "posted": posted, "hours": hours, "routes": routes, "stops": stops, "totals": totals,
            "statements": statements, "kinds": kinds}  # fmt: skip


def _option(page: Any, chart: str) -> Any:
    return page.evaluate(
        "id => { const c = echarts.getInstanceByDom(document.getElementById(id)); return c ? c.getOption() : null; }",
        f"chart-{chart}",
    )


def _fen(page: Any, selector: str) -> int:
    return int(page.get_attribute(selector, "data-fen"))


def _wait_drawn(page: Any, charts: tuple[str, ...]) -> None:
    for chart in charts:
        page.wait_for_selector(f"#chart-{chart}[data-drawn] canvas", state="attached")
    assert page.get_attribute("#finance", "data-error") is None


def _check_day_page(page: Any, day: dt.date, want: dict[str, Any]) -> None:
    _wait_drawn(page, CHARTS)
    assert int(page.inner_text("#total-taps")) == want["taps"]
    assert _fen(page, "#total-posted") == want["posted"]
    # taps per hour: the chart's series (business-day order from the cut-off, 00 here) and the table
    hours = _option(page, "hours")
    labels = [int(h) for h in hours["xAxis"][0]["data"]]
    assert labels == list(range(24))
    by_series = {s["name"]: s["data"] for s in hours["series"]}
    for verdict, name in (("accepted", "已接受"), ("suspect", "可疑"), ("rejected", "已拒绝"), ("forwarded", "已转发")):
        assert by_series[name] == [want["hours"][(h, verdict)] for h in labels], verdict
    for h in {h for h, _ in want["hours"]}:
        assert (
            int(page.text_content(f"#hours-table tr[data-hour='{h}'] td:nth-of-type(1)"))
            == want["hours"][(h, "accepted")]
        )
    # revenue per route: chart and table equal the day's posted taps per route
    routes = _option(page, "routes")
    assert dict(zip(routes["xAxis"][0]["data"], routes["series"][0]["data"], strict=True)) == want["routes"]
    for route, fen in want["routes"].items():
        assert _fen(page, f"#routes-table tr[data-route='{route}'] td[data-fen]") == fen
    # revenue per operator and merchants' sales: the window's totals (or statements once closed)
    operators = _option(page, "operators")
    bus = {p: g - r for p, (g, r) in want["totals"].items() if want["kinds"][p] == "bus_operator"}
    assert sorted(operators["series"][0]["data"]) == sorted(bus.values())
    for payee, (gross, _refunds) in want["totals"].items():
        table = "operators-table" if want["kinds"][payee] == "bus_operator" else "merchants-table"
        assert _fen(page, f"#{table} tr[data-payee='{payee}'] td:nth-of-type(2)") == gross
    merchants = _option(page, "merchants")
    assert merchants["series"][0]["data"] == [
        g - r for p, (g, r) in sorted(want["totals"].items()) if want["kinds"][p] == "merchant"
    ]
    issues = _option(page, "issues")
    rows = page.locator("#issues-table tr[data-kind]").count()
    assert len(issues["series"][0]["data"]) == rows
    payouts = _option(page, "payouts")
    pie = {d["status"]: d["value"] for d in payouts["series"][0]["data"]}
    assert sum(pie.values()) == page.locator("#payouts-table tr[data-status]").count()


def test_finance_officer_reads_the_day_and_the_map_and_the_numbers_are_the_databases(browser: Any, city: City) -> None:
    engine = db.make_engine(city.settings.database_url)
    with db.session_factory(engine)() as session:
        day = session.scalar(select(func.max(Tap.business_day)))
    engine.dispose()
    assert day is not None, "the demo city cleared taps"
    secret = _officer(city)
    context = browser.new_context(locale="zh-CN", base_url=city.url)
    context.set_default_timeout(30_000)
    csp: list[str] = []
    try:
        page = context.new_page()
        page.on("console", lambda m: csp.append(m.text) if "Content Security Policy" in m.text else None)
        page.goto("/staff/login")
        page.fill("#username", OFFICER)
        page.fill("#password", OFFICER_PASSWORD)
        page.fill("#totp", pyotp.TOTP(secret).now())
        with page.expect_navigation():
            page.click("#staff-login-submit")
        page.click("#nav-finance")
        page.wait_for_selector("#days-table")
        axe_check(page)
        page.fill("#day", day.isoformat())
        with page.expect_navigation():
            page.click("#day-submit")
        assert page.url.endswith(f"/staff/finance/days/{day.isoformat()}")
        assert page.get_attribute("#window-state", "data-state") == "open"
        want = _database(city, day)
        assert want["taps"] > 0
        _check_day_page(page, day, want)
        axe_check(page)

        # the stop map: every feed stop placed, sized by its taps, the routes' lines through them
        page.click("#map-link")
        _wait_drawn(page, ("map",))
        option = _option(page, "map")
        scatter = next(s for s in option["series"] if s["type"] == "scatter")
        drawn = {d["stop_id"]: d["value"][2] for d in scatter["data"]}
        assert {s: n for s, n in drawn.items() if n} == dict(want["stops"])
        lines = [s for s in option["series"] if s["type"] == "line"]
        assert {s["name"].split()[-1] for s in lines} == set(want["routes"])
        for stop, n in want["stops"].items():
            assert int(page.text_content(f"#stops-table tr[data-stop='{stop}'] td:nth-of-type(3)")) == n
        axe_check(page)

        # the operator closes the day; the page now shows the statements and the payout status
        _cli(city, "settle", "--date", day.isoformat(), "--before-cutoff")
        page.goto(f"/staff/finance/days/{day.isoformat()}")
        assert page.get_attribute("#window-state", "data-state") == "closed"
        want = _database(city, day)
        assert want["statements"]
        _check_day_page(page, day, want)
        for payee, (gross, fee, net, payout, _carry, held) in want["statements"].items():
            table = "operators-table" if want["kinds"][payee] == "bus_operator" else "merchants-table"
            assert _fen(page, f"#{table} tr[data-payee='{payee}'] td:nth-of-type(2)") == gross
            assert _fen(page, f"#{table} tr[data-payee='{payee}'] td:nth-of-type(5)") == fee
            assert _fen(page, f"#payouts-table tr[data-payee='{payee}'] td:nth-of-type(2)") == net
            assert _fen(page, f"#payouts-table tr[data-payee='{payee}'] td:nth-of-type(3)") == payout
            status = page.get_attribute(f"#payouts-table tr[data-payee='{payee}']", "data-status")
            assert status == ("instructed" if payout else "held" if held else "nothing_due"), (payee, status)
        axe_check(page)
    finally:
        context.close()
    assert not csp, csp
