"""Utility bills: the biller's import, look-up and bill pages, the receipt, the daily file (CLI and
staff download), and paying online through a real localstripe whose signed webhook marks the bill paid.

The site is the real app (``yikatong.app.assemble`` with the pages, on SQLite); the purse payment
is ``test_utility_bills_purse.py``.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from clearing import accounts, db
from clearing.ledger import account_balance, trial_balance
from clearing.models import Transfer
from portal.models import PortalAuditEntry
from portal.modules.utility_bills import bills
from portal.modules.utility_bills.demo import seed_demo_bills
from portal.modules.utility_bills.errors import BillError
from portal.modules.utility_bills.models import UtilityBill, UtilityOnlinePayment
from portal.modules.utility_bills.online import transfer_id
from settlement.models import TotalRow
from tests.portal.conftest import ALICE
from tests.portal.test_pages import Site, citizen, make_site
from tests.portal.test_portal_topup_flow import SECRET, _Receiver, hooks, webhook_of  # noqa: F401 - fixture
from yikatong.cli import app as cli

HEADER = ",".join(bills.CSV_COLUMNS)


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    eng = db.ensure_migrated(f"sqlite:///{tmp_path / 'bills.db'}")
    return eng


def seed(engine: Engine) -> list[int]:
    with Session(engine) as session, session.begin():
        return seed_demo_bills(session, holder_name="王小明", today=dt.date(2026, 12, 3))


# --- import ---------------------------------------------------------------------------------------


def test_a_file_with_a_bad_row_imports_nothing_and_names_every_problem(engine: Engine) -> None:
    seed(engine)
    text = (f"{HEADER}\nW-1001,张三,2026-11,1200,2026-12-20\nW-1002,李四,2026-13,-5,tomorrow\n"
            "W-1001,张三,2026-11,1200,2026-12-20\n")  # fmt: skip
    with Session(engine) as session, session.begin(), pytest.raises(BillError) as refused:
        bills.import_bills(session, "xianyang-water", text)
    message = refused.value.message
    assert refused.value.code.value == "E_BILL_IMPORT"
    for where in ("line 3, period", "line 3, amount_fen", "line 3, due_date", "line 4, account_no"):
        assert where in message
    with Session(engine) as session:
        assert session.scalar(select(func.count()).select_from(UtilityBill).where(
            UtilityBill.account_no == "W-1001")) == 0  # fmt: skip


def test_the_same_file_twice_adds_nothing_and_a_changed_amount_is_refused(engine: Engine) -> None:
    seed(engine)
    text = f"{HEADER}\nW-2001,张三,2026-11,1200,2026-12-20\n"
    with Session(engine) as session, session.begin():
        assert bills.import_bills(session, "xianyang-water", text) == bills.ImportResult(1, 0)
    with Session(engine) as session, session.begin():
        assert bills.import_bills(session, "xianyang-water", text) == bills.ImportResult(0, 1)
    with Session(engine) as session, session.begin(), pytest.raises(BillError):
        bills.import_bills(session, "xianyang-water", text.replace("1200", "1300"))
    with Session(engine) as session:
        bill = session.scalars(select(UtilityBill).where(UtilityBill.account_no == "W-2001")).one()
        assert bill.holder_masked == "张*" and bill.amount_fen == 1200  # the clear name is never stored


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=200))
def test_any_file_is_rows_or_problems_never_a_crash(text: str) -> None:
    rows, problems = bills.parse_bill_rows(HEADER + "\n" + text)
    assert all(r.amount_fen > 0 for r in rows)
    assert all(p.line >= 1 for p in problems)


def test_the_daily_file_lists_the_days_payments_with_a_total() -> None:
    at = dt.datetime(2026, 12, 3, 2, 0, tzinfo=dt.UTC)
    lines = [bills.FileLine(at, dt.date(2026, 12, 3), "W-1", "2026-11", 1250, "purse", "tap:0000fe010001:1", "UB1"),
             bills.FileLine(at, dt.date(2026, 12, 3), "W-2", "2026-11", 99, "online", "pi_x", "UB2")]  # fmt: skip
    text = bills.daily_file_csv("xianyang-water", dt.date(2026, 12, 3), lines)
    rows = text.strip().split("\n")
    assert rows[0] == "biller,xianyang-water,business_day,2026-12-03"
    assert rows[2].endswith(",12.50") and rows[3].endswith(",0.99")
    assert rows[-1] == "total,2,,,1349,,,,13.49"


# --- pages -------------------------------------------------------------------------------------------


def test_a_citizen_finds_a_bill_by_account_number_and_sees_only_masked_data(engine: Engine, tmp_path: Path) -> None:
    site = make_site(engine, tmp_path)
    ids = seed(engine)
    client = citizen(site, ALICE, card=False)
    page = client.get("/bills", params={"biller": "xianyang-power", "account": "E-61040001"})
    assert page.status_code == 200 and 'id="bill-results"' in page.text
    table = page.text[page.text.index('id="bill-results"') :]
    assert "王**" in table and "王小明" not in page.text and "E-61040001" not in table
    missing = client.get("/bills", params={"biller": "xianyang-power", "account": "E-99999999"})
    assert missing.status_code == 404 and 'id="lookup-error"' in missing.text
    bill = client.get(f"/bills/{ids[2]}")
    assert bill.status_code == 200 and 'id="pay-purse"' in bill.text and 'id="pay-online-form"' in bill.text
    assert "******0001" in bill.text and "E-61040001" not in bill.text
    purse = client.get(f"/bills/{ids[2]}/purse")
    assert purse.status_code == 200 and "/static/bills.js" in purse.text and 'data-bill-id="' in purse.text
    assert client.get(f"/bills/{ids[2]}/receipt").status_code == 404  # not paid yet
    assert client.get("/bills/abc").status_code == 404
    home = client.get("/")
    assert 'id="home-bills"' in home.text
    anonymous = site.client().get("/bills", follow_redirects=False)
    assert anonymous.status_code == 303 and anonymous.headers["location"].startswith("/login")


def test_the_json_api_refuses_bad_input_with_a_code(engine: Engine, tmp_path: Path) -> None:
    site = make_site(engine, tmp_path)
    seed(engine)
    client = citizen(site, ALICE, card=False)
    assert client.get("/api/bills", params={"biller": "xianyang-gas", "account": "x"}).json()["code"] == (
        "E_BILL_MALFORMED")  # fmt: skip
    assert client.get("/api/bills/0").status_code == 422
    assert client.get("/api/bills/999").json()["code"] == "E_BILL_NOT_FOUND"
    no_csrf = site.client().post("/api/bills/1/purse")
    assert no_csrf.status_code == 401
    body = client.post("/api/bills/purse/pr_" + "0" * 32, json={"seq": 1, "sw": 36864},
                       headers={"X-CSRF-Token": client.get("/api/me").json()["csrf_token"]})  # fmt: skip
    assert body.status_code == 404 and body.json()["code"] == "E_BILL_SESSION_UNKNOWN"


# --- paying online (localstripe) ----------------------------------------------------------------


@pytest.fixture
def online_site(engine: Engine, tmp_path: Path, localstripe_url: str) -> Site:
    return make_site(engine, tmp_path, payments_url=localstripe_url, test_mode=True, webhook_secret=SECRET)


def _deliver(site: Site, body: bytes, header: str) -> str:
    answer = site.client().post("/webhooks/utility-bills", content=body,
                                headers={"Content-Type": "application/json", "Stripe-Signature": header})  # fmt: skip
    assert answer.status_code == 200, answer.text
    return str(answer.json()["status"])


def _pay_online(client: object, bill_id: int) -> str:
    page = client.get(f"/bills/{bill_id}")  # type: ignore[attr-defined]
    token = re.search(r'name="csrf_token" value="([^"]*)"', page.text)
    assert token is not None
    answer = client.post(f"/bills/{bill_id}/online", data={"csrf_token": token.group(1)},  # type: ignore[attr-defined]
                         follow_redirects=False)  # fmt: skip
    assert answer.status_code == 303, answer.text
    payment_id = answer.headers["location"].split("payment=")[1]
    with Session(engine_of(client)) as session:
        row = session.get(UtilityOnlinePayment, payment_id)
        assert row is not None and row.intent_id
        return row.intent_id


def engine_of(client: object) -> Engine:
    return client.app.state.utility_bills_deps.sessions.kw["bind"]  # type: ignore[attr-defined, no-any-return]


def test_a_bill_paid_online_is_marked_paid_by_the_verified_webhook_once(
    online_site: Site,
    hooks: type[_Receiver],  # noqa: F811 - the fixture
) -> None:
    ids = seed(online_site.engine)
    client = citizen(online_site, ALICE, card=False)
    bill_id = ids[4]
    intent_id = _pay_online(client, bill_id)
    body, header = webhook_of(hooks, intent_id, "payment_intent.succeeded")
    forged = online_site.client().post("/webhooks/utility-bills", content=body + b" ",
                                       headers={"Stripe-Signature": header})  # fmt: skip
    assert forged.status_code == 400
    assert _deliver(online_site, body, header) == "applied"
    assert _deliver(online_site, body, header) == "duplicate"
    with Session(online_site.engine) as session:
        bill = session.get(UtilityBill, bill_id)
        assert bill is not None and bill.state == "paid" and bill.paid_via == "online" and bill.paid_ref == intent_id
        payable = accounts.operator_payable(session, "xianyang-gas")
        assert account_balance(session, payable).credit_balance_fen == bill.amount_fen
        [row] = session.scalars(select(Transfer).where(Transfer.credit_account_id == payable)).all()
        payment_id = session.scalars(
            select(UtilityOnlinePayment.id).where(UtilityOnlinePayment.bill_id == bill_id)
        ).one()
        assert row.id == transfer_id(payment_id)
        totals = session.scalars(select(TotalRow).where(TotalRow.payee_account_id == payable)).all()
        assert sum(t.gross_fen for t in totals) == bill.amount_fen
        trial_balance(session)
    receipt = client.get(f"/bills/{bill_id}/receipt")
    assert receipt.status_code == 200 and 'data-via="online"' in receipt.text
    # the same event under a new id (a provider retry) pays nothing more
    event = json.loads(body)
    event["id"] = event["id"] + "_again"
    from tests.portal.test_portal_topup_flow import signed

    again, again_header = signed(event)
    assert _deliver(online_site, again, again_header) == "applied"
    with Session(online_site.engine) as session:
        assert account_balance(session, accounts.operator_payable(session, "xianyang-gas")).credit_balance_fen == (
            session.get(UtilityBill, bill_id).amount_fen)  # type: ignore[union-attr]  # fmt: skip
    # a second payment of a paid bill is refused before any intent is made
    token = re.search(r'name="csrf_token" value="([^"]*)"', client.get(f"/bills/{ids[5]}").text)
    assert token is not None
    paid_again = client.post(f"/bills/{bill_id}/online", data={"csrf_token": token.group(1)})
    assert paid_again.status_code == 409


def test_a_second_intent_that_succeeds_on_a_paid_bill_is_refunded(
    online_site: Site,
    hooks: type[_Receiver],  # noqa: F811 - the fixture
) -> None:
    ids = seed(online_site.engine)
    client = citizen(online_site, ALICE, card=False)
    bill_id = ids[0]
    from portal.modules.utility_bills.online import OnlineBills

    service: OnlineBills = client.app.state.utility_bills_deps.online  # type: ignore[attr-defined]
    first = service.start(1, bill_id)
    second = service.start(1, bill_id)  # two tabs: both intents exist
    for started in (first, second):
        assert started.intent_id is not None
        service.payments.confirm_test_payment(started.intent_id)
    for started in (first, second):
        body, header = webhook_of(hooks, str(started.intent_id), "payment_intent.succeeded")
        assert _deliver(online_site, body, header) == "applied"
    with Session(online_site.engine) as session:
        states = dict(session.execute(select(UtilityOnlinePayment.id, UtilityOnlinePayment.state)).all())
        assert states[first.payment_id] == "paid" and states[second.payment_id] == "refunded"
        bill = session.get(UtilityBill, bill_id)
        assert bill is not None and bill.paid_ref == first.intent_id
        assert account_balance(session, accounts.operator_payable(session, "xianyang-water")).credit_balance_fen == (
            bill.amount_fen)  # fmt: skip
    refunds = service.payments.refunds_of(str(second.intent_id))
    assert sum(r.amount for r in refunds if r.status == "succeeded") == second.amount_fen


# --- the daily file: CLI and staff download --------------------------------------------------------


def test_the_cli_prints_the_billers_file_of_a_day(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = seed(engine)
    paid_at = dt.datetime(2026, 12, 3, 1, 0, tzinfo=dt.UTC)
    with Session(engine) as session, session.begin():
        bill, _ = bills.bill_of(session, ids[0], lock=True)
        bills.mark_paid(bill, via="online", ref="pi_test_1", at=paid_at)
    monkeypatch.setenv("YIKATONG_DATABASE_URL", str(engine.url))
    from yikatong.settings import get_settings

    get_settings.cache_clear()
    result = CliRunner().invoke(cli, ["bills", "file", "--biller", "xianyang-water", "--date", "2026-12-03"])
    assert result.exit_code == 0, result.output
    assert "pi_test_1" in result.output and result.output.strip().split("\n")[-1].startswith("total,1,")
    bad = CliRunner().invoke(cli, ["bills", "file", "--biller", "nobody", "--date", "2026-12-03"])
    assert bad.exit_code == 1 and "E_BILL_BILLER_UNKNOWN" in bad.output
    # the sweep: nothing committed and uncleared, no refund due; a missing key store is a clear error
    monkeypatch.setenv("YIKATONG_KEYSTORE", str(tmp_path / "none.json"))
    get_settings.cache_clear()
    swept = CliRunner().invoke(cli, ["bills", "sweep"])
    assert swept.exit_code == 1 and "E_NO_KEYSTORE" in swept.output
    from clearing.keystore import KeyStore

    KeyStore.open(tmp_path / "ks.json", bytes.fromhex("55" * 32)).init(["xianyang"])
    monkeypatch.setenv("YIKATONG_KEYSTORE", str(tmp_path / "ks.json"))
    monkeypatch.setenv("YIKATONG_KEK", "55" * 32)
    get_settings.cache_clear()
    swept = CliRunner().invoke(cli, ["bills", "sweep"])
    assert swept.exit_code == 0 and "cleared 0 committed" in swept.output, swept.output
    get_settings.cache_clear()
    with Session(engine) as session:
        assert session.scalar(select(func.count()).select_from(PortalAuditEntry)) == 0


def test_finance_downloads_a_billers_daily_file_and_the_download_is_audited(engine: Engine, tmp_path: Path) -> None:
    import os

    from clearing.keystore import KeyStore
    from tests.portal.test_lost_cards import make_rig
    from tests.portal.test_staff_pages import staff_login

    keystore = KeyStore.open(tmp_path / "ks.json", os.urandom(32))
    keystore.init(["xianyang"])
    rig = make_rig(engine, keystore, tmp_path, pages=True)
    try:
        ids = seed(engine)
        with Session(engine) as session, session.begin():
            bill, _ = bills.bill_of(session, ids[1], lock=True)
            bills.mark_paid(bill, via="online", ref="pi_test_2", at=dt.datetime(2026, 12, 3, 3, tzinfo=dt.UTC))
        clerk, _ = staff_login(rig, "clerk1", "counter_clerk")
        assert clerk.get("/staff/bills/file?biller=xianyang-water&date=2026-12-03").status_code == 403
        finance, _ = staff_login(rig, "money1", "finance")
        form = finance.get("/staff/bills")
        assert form.status_code == 200 and 'id="bills-file-form"' in form.text
        answer = finance.get("/staff/bills/file", params={"biller": "xianyang-water", "date": "2026-12-03"})
        assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/csv")
        assert "attachment" in answer.headers["content-disposition"] and "pi_test_2" in answer.text
        assert "王" not in answer.text  # no holder name in the biller's file
        bad = finance.get("/staff/bills/file", params={"biller": "xianyang-water", "date": "soon"})
        assert bad.status_code == 422
        with Session(engine) as session:
            lines = session.scalars(select(PortalAuditEntry).where(PortalAuditEntry.action == "bills_file")).all()
            seen = [(line.actor, line.target, line.outcome) for line in lines]
            assert ("staff:money1", "biller:xianyang-water", "ok") in seen  # the download
            assert any(a == "staff:clerk1" and o != "ok" for a, _, o in seen)  # the clerk's refusal
    finally:
        rig.terminal.journal.close()
        rig.terminal.denylist.close()
