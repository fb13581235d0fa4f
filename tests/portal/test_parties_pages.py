"""The console's payee pages: each form through settlement's own functions, its refusals, both audit logs, roles.

The app is the one ``yikatong.app.assemble`` builds (``tests.portal.test_lost_cards.make_rig``: a
real validator, clearing, the staff console with its pages); staff log in with password and TOTP.
SQLite and PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from clearing.business_day import DEFAULT_CLOCK
from clearing.keystore import KeyStore
from clearing.models import Operator
from portal.models import PortalAuditEntry
from portal.pages_parties import (
    FeeForm,
    FormRefused,
    assignment_problems,
    clean,
    cnaps_text,
    parse_fen,
    read_fee_form,
)
from settlement.bank import BankAccount
from settlement.close import close_window
from settlement.fees import FeeSchedule, Rounding
from settlement.models import PayeeRow, PostingRow, RouteAssignment, SettlementAuditRow, TerminalAssignment
from settlement.parties import set_fee_schedule
from settlement.payouts import Payer
from tests.portal.test_lost_cards import TERMINAL, Rig, make_rig
from tests.portal.test_staff_pages import staff_login

PAYER = Payer(
    "Xianyang Yikatong Co., Ltd.", BankAccount("Xianyang Yikatong Settlement", "6222020000000000001", "102791000013")
)
NUMBER = "6222020000000000202"


@pytest.fixture(scope="module")
def keystore(tmp_path_factory: pytest.TempPathFactory) -> KeyStore:
    ks = KeyStore.open(tmp_path_factory.mktemp("ks") / "keystore.json", os.urandom(32))
    ks.init(["xianyang"])
    return ks


@pytest.fixture
def rig(engine: Engine, keystore: KeyStore, tmp_path: Path) -> Iterator[Rig]:
    made = make_rig(engine, keystore, tmp_path, pages=True)
    with Session(engine) as session, session.begin():
        set_fee_schedule(session, "catering", FeeSchedule(38, 100, 5000), actor="test")
    yield made
    made.terminal.journal.close()
    made.terminal.denylist.close()


def finance(rig: Rig) -> tuple[TestClient, str]:
    return staff_login(rig, "money1", "finance")


def add(client: TestClient, csrf: str, **fields: str) -> httpx.Response:
    data = {"csrf_token": csrf, "payee_id": "shop-1", "name": "渭城茶馆", "kind": "merchant", "category": "catering"}
    answer: httpx.Response = client.post("/staff/parties", data={**data, **fields}, follow_redirects=False)
    return answer


def settlement_audit(rig: Rig, *where: object) -> list[SettlementAuditRow]:
    with Session(rig.engine) as session:
        return list(session.scalars(select(SettlementAuditRow).where(*where).order_by(SettlementAuditRow.id)))  # type: ignore[arg-type]


def portal_audit(rig: Rig, action: str) -> list[PortalAuditEntry]:
    with Session(rig.engine) as session:
        stmt = select(PortalAuditEntry).where(PortalAuditEntry.action == action).order_by(PortalAuditEntry.id)
        return list(session.scalars(stmt))


def field_error(page: str, name: str) -> str:
    found = re.search(rf'<p class="error" id="{name}-error">([^<]*)</p>', page)
    assert found, f"no error shown for {name}"
    return found.group(1)


# --- the pure parts -----------------------------------------------------------------------------------


def test_a_fee_form_is_read_field_by_field() -> None:
    categories = {"catering", "transit"}
    own = read_fee_form(FeeForm("catering", "own", "38", "1", "50.00", "half_even"), categories)
    assert own == ("catering", FeeSchedule(38, 100, 5000, Rounding.HALF_EVEN))
    assert read_fee_form(FeeForm("transit", "category", "", "", "", ""), categories) == ("transit", None)
    assert read_fee_form(FeeForm("catering", "own", "0", "0", "", "down"), categories)[1] == FeeSchedule(
        0, 0, None, Rounding.DOWN
    )
    with pytest.raises(FormRefused) as refused:
        read_fee_form(FeeForm("nope", "own", "10001", "1.234", "0.50", "sideways"), categories)
    assert set(refused.value.errors) == {"category", "bps", "min_yuan", "rounding"}
    with pytest.raises(FormRefused) as refused:
        read_fee_form(FeeForm("catering", "own", "38", "2.00", "1.00", "half_up"), categories)
    assert refused.value.errors == {"cap_yuan": "the cap is below the minimum"}
    assert parse_fen("0") == 0 and parse_fen("12.5") == 1250 and parse_fen("", blank_ok=True) is None


def test_audit_texts_never_hold_a_number_in_clear() -> None:
    assert cnaps_text("105791000034") == "105-7910-0003-4"
    assert clean("payee:m12345678901234") == "payee:m123*******1234"
    assert clean("payee:shop-1") == "payee:shop-1"
    assert assignment_problems("route", "K26", "merchant", dt.date(2026, 12, 3)) == {
        "what": "routes are run by bus operators; a merchant is assigned terminals"
    }
    assert set(assignment_problems("terminal", "zz", "bus_operator", None)) == {"ident", "valid_from"}


# --- registering ---------------------------------------------------------------------------------------


def test_finance_registers_a_merchant_and_the_replayed_form_changes_nothing(rig: Rig) -> None:
    client, csrf = finance(rig)
    assert 'id="nav-parties"' in client.get("/staff").text
    made = add(client, csrf)
    assert made.status_code == 303 and made.headers["location"] == "/staff/parties/shop-1?done=added"
    page = client.get("/staff/parties")
    assert page.status_code == 200 and 'data-payee="shop-1"' in page.text and "渭城茶馆" in page.text
    rows = settlement_audit(rig, SettlementAuditRow.target == "payee:shop-1")
    assert [(r.actor, r.action) for r in rows] == [("staff:money1", "merchant_add")]
    assert [(a.actor, a.target, a.outcome) for a in portal_audit(rig, "payee_add")] == [
        ("staff:money1", "payee:shop-1", "ok")
    ]
    again = add(client, csrf)
    assert again.headers["location"] == "/staff/parties/shop-1?done=unchanged"
    assert len(settlement_audit(rig, SettlementAuditRow.target == "payee:shop-1")) == 1
    other = add(client, csrf, name="Another Tea House")
    assert other.status_code == 409 and "already registered" in field_error(other.text, "payee_id")
    with Session(rig.engine) as session:
        assert session.get(Operator, "shop-1").name == "渭城茶馆"  # type: ignore[union-attr]
    spaced = add(client, csrf, payee_id="tea house 2")
    assert spaced.headers["location"] == "/staff/parties/tea%20house%202?done=added"
    assert 'id="payee-id">tea house 2<' in client.get(spaced.headers["location"]).text


def test_a_bad_registration_names_each_field_and_registers_nothing(rig: Rig) -> None:
    client, csrf = finance(rig)
    bad = add(client, csrf, payee_id="-shop", name="=HYPERLINK(1)", kind="bank", category="nope")
    assert bad.status_code == 422
    for name in ("name", "kind", "category"):
        assert field_error(bad.text, name)
    worse = add(client, csrf, payee_id="-shop")
    assert worse.status_code == 422 and "starting with a letter" in field_error(worse.text, "payee_id")
    with Session(rig.engine) as session:
        assert session.scalar(select(func.count()).select_from(PayeeRow)) == 0
    assert {a.outcome for a in portal_audit(rig, "payee_add")} == {"E_BAD_PAYEE"}


# --- changing ------------------------------------------------------------------------------------------


def test_the_bank_account_is_checked_per_field_and_shown_masked(rig: Rig) -> None:
    client, csrf = finance(rig)
    add(client, csrf)
    wide = "６２２２０２０００"
    bad = client.post(
        "/staff/parties/shop-1/account",
        data={"csrf_token": csrf, "account_name": " Tea", "account_number": wide, "cnaps": "10579100003"},
    )
    assert bad.status_code == 422
    assert "starts or ends with a space" in field_error(bad.text, "account_name")
    assert "full-width" in field_error(bad.text, "account_number")
    assert "12 digits" in field_error(bad.text, "cnaps")
    assert "６２２２" not in bad.text  # the number typed is never shown back
    good = client.post(
        "/staff/parties/shop-1/account",
        data={"csrf_token": csrf, "account_name": "渭城茶馆", "account_number": NUMBER, "cnaps": "105791000034"},
        follow_redirects=False,
    )
    assert good.status_code == 303
    page = client.get("/staff/parties/shop-1")
    assert "…0202" in page.text and NUMBER not in page.text
    assert NUMBER not in client.get("/staff/parties").text
    with Session(rig.engine) as session:
        row = session.get(PayeeRow, "shop-1")
        assert row is not None and row.account_number == NUMBER and row.cnaps_code == "105791000034"
    (change,) = settlement_audit(rig, SettlementAuditRow.action == "payee_account")
    assert change.actor == "staff:money1" and NUMBER not in change.detail and "…0202" in change.detail
    lines = portal_audit(rig, "payee_account")
    assert [a.outcome for a in lines] == ["E_BAD_ACCOUNT_NAME", "ok"]
    assert lines[1].detail == "…0202, bank 105-7910-0003-4"
    replay = client.post(
        "/staff/parties/shop-1/account",
        data={"csrf_token": csrf, "account_name": "渭城茶馆", "account_number": NUMBER, "cnaps": "105791000034"},
        follow_redirects=False,
    )
    assert replay.headers["location"].endswith("done=unchanged")
    assert len(settlement_audit(rig, SettlementAuditRow.action == "payee_account")) == 1


def test_fees_change_the_category_or_the_whole_schedule(rig: Rig) -> None:
    client, csrf = finance(rig)
    add(client, csrf, category="transit")
    form = {
        "csrf_token": csrf,
        "category": "catering",
        "mode": "own",
        "bps": "25",
        "min_yuan": "0.50",
        "cap_yuan": "",
        "rounding": "half_even",
    }
    assert client.post("/staff/parties/shop-1/fee", data=form, follow_redirects=False).status_code == 303
    with Session(rig.engine) as session:
        row = session.get(PayeeRow, "shop-1")
        assert row is not None and row.category == "catering"
        assert (row.override_bps, row.override_min_fen, row.override_cap_fen, row.override_rounding) == (
            25,
            50,
            None,
            "half_even",
        )
    assert [r.action for r in settlement_audit(rig, SettlementAuditRow.target == "payee:shop-1")] == [
        "merchant_add",
        "payee_category",
        "payee_fee_override",
    ]
    replay = client.post("/staff/parties/shop-1/fee", data=form, follow_redirects=False)
    assert replay.headers["location"].endswith("done=unchanged")
    bad = client.post("/staff/parties/shop-1/fee", data={**form, "bps": "abc", "cap_yuan": "0.10"})
    assert bad.status_code == 422 and field_error(bad.text, "bps") and field_error(bad.text, "cap_yuan")
    back = client.post("/staff/parties/shop-1/fee", data={**form, "mode": "category"}, follow_redirects=False)
    assert back.status_code == 303
    with Session(rig.engine) as session:
        row = session.get(PayeeRow, "shop-1")
        assert row is not None and row.override_bps is None
    assert "38 bps" in client.get("/staff/parties/shop-1").text  # the category's schedule again
    assert [a.outcome for a in portal_audit(rig, "payee_fee")] == ["ok", "E_BAD_FEE_SCHEDULE", "ok"]


def test_status_is_one_of_three(rig: Rig) -> None:
    client, csrf = finance(rig)
    add(client, csrf)
    done = client.post(
        "/staff/parties/shop-1/status", data={"csrf_token": csrf, "status": "suspended"}, follow_redirects=False
    )
    assert done.status_code == 303
    assert 'data-status="suspended"' in client.get("/staff/parties/shop-1").text
    bad = client.post("/staff/parties/shop-1/status", data={"csrf_token": csrf, "status": "deleted"})
    assert bad.status_code == 422 and field_error(bad.text, "status")
    assert [r.detail for r in settlement_audit(rig, SettlementAuditRow.action == "payee_status")] == [
        json.dumps({"after": "suspended", "before": "active"})
    ]
    unknown = client.post("/staff/parties/nobody/status", data={"csrf_token": csrf, "status": "active"})
    assert unknown.status_code == 404 and "E_UNKNOWN_PAYEE" in unknown.text


def test_a_route_or_terminal_is_assigned_from_a_day_and_its_history_shown(rig: Rig) -> None:
    client, csrf = finance(rig)
    add(client, csrf, payee_id="bus-2", name="兴平公交", kind="bus_operator", category="transit")
    add(client, csrf)
    today = DEFAULT_CLOCK.day_of(dt.datetime.now(dt.UTC))
    tomorrow = (today + dt.timedelta(days=1)).isoformat()
    form = {"csrf_token": csrf, "what": "route", "ident": "K26", "valid_from": tomorrow}
    assert client.post("/staff/parties/bus-2/assignments", data=form, follow_redirects=False).status_code == 303
    replay = client.post("/staff/parties/bus-2/assignments", data=form, follow_redirects=False)
    assert replay.headers["location"].endswith("done=unchanged")
    terminal = {**form, "what": "terminal", "ident": TERMINAL.upper()}
    assert client.post("/staff/parties/bus-2/assignments", data=terminal, follow_redirects=False).status_code == 303
    with Session(rig.engine) as session:
        assert [
            (r.route_id, r.operator_id, r.valid_from.isoformat()) for r in session.scalars(select(RouteAssignment))
        ] == [("K26", "bus-2", tomorrow)]
        assert session.scalar(select(TerminalAssignment.terminal_id)) == TERMINAL
    history = client.get("/staff/parties/bus-2").text
    assert history.count("<code>K26</code>") == 1 and f"<code>{TERMINAL}</code>" in history
    assert "<code>K26</code>" in client.get("/staff/parties").text
    past = client.post("/staff/parties/bus-2/assignments", data={**form, "valid_from": "2020-01-01"})
    assert past.status_code == 422 and "has passed" in field_error(past.text, "valid_from")
    merchant_route = client.post("/staff/parties/shop-1/assignments", data=form)
    assert merchant_route.status_code == 422 and field_error(merchant_route.text, "what")
    unknown = client.post("/staff/parties/bus-2/assignments", data={**terminal, "ident": "ffffffffffff"})
    assert unknown.status_code == 422 and field_error(unknown.text, "ident")
    assert len(settlement_audit(rig, SettlementAuditRow.action.in_(("assign_route", "assign_terminal")))) == 2
    lines = portal_audit(rig, "assign_route") + portal_audit(rig, "assign_terminal")
    assert sorted(a.outcome for a in lines) == ["E_BAD_ASSIGNMENT"] * 3 + ["ok", "ok"]


# --- who may ---------------------------------------------------------------------------------------------


def test_only_finance_changes_payees_and_every_form_needs_its_token(rig: Rig) -> None:
    money, csrf = finance(rig)
    add(money, csrf)
    forged = add(money, "forged", payee_id="shop-2")
    assert forged.status_code == 403
    clerk, clerk_csrf = staff_login(rig, "clerk1", "counter_clerk")
    assert clerk.get("/staff/parties").status_code == 403
    admin, admin_csrf = staff_login(rig, "admin1", "administrator")
    listing = admin.get("/staff/parties")
    assert listing.status_code == 200 and 'id="add-payee-form"' not in listing.text
    page = admin.get("/staff/parties/shop-1")
    assert page.status_code == 200 and 'id="account-form"' not in page.text
    refused = admin.post("/staff/parties/shop-1/status", data={"csrf_token": admin_csrf, "status": "closed"})
    assert refused.status_code == 403 and "E_STAFF_FORBIDDEN" in refused.text
    assert admin.get("/staff/parties/shop-1/statement?day=2026-11-24").status_code == 403
    assert add(clerk, clerk_csrf, payee_id="shop-3").status_code == 403
    anonymous = rig.client().get("/staff/parties", follow_redirects=False)
    assert anonymous.status_code == 303 and anonymous.headers["location"] == "/staff/login"
    with Session(rig.engine) as session:
        assert session.scalar(select(func.count()).select_from(PayeeRow)) == 1
        assert session.get(PayeeRow, "shop-1").status == "active"  # type: ignore[union-attr]
    assert {a.actor for a in portal_audit(rig, "parties_edit")} == {"staff:admin1", "staff:clerk1"}


def test_every_input_of_the_payee_pages_has_a_label(rig: Rig) -> None:
    client, csrf = finance(rig)
    add(client, csrf)
    for page in (client.get("/staff/parties").text, client.get("/staff/parties/shop-1").text):
        for found in re.finditer(r"<(input|select)\b([^>]*)>", page):
            attrs = found.group(2)
            if 'type="hidden"' in attrs:
                continue
            ident = re.search(r'id="([^"]+)"', attrs)
            assert ident and f'for="{ident.group(1)}"' in page, attrs


# --- statements -------------------------------------------------------------------------------------------


def test_finance_downloads_a_closed_days_statement_as_the_same_pdf_every_time(rig: Rig, tmp_path: Path) -> None:
    card, _asn = rig.issue(5_000)
    rig.uploader.pull_denylist(TERMINAL)
    assert rig.tap(card, 0).name == "PAID"
    assert rig.uploader.upload_pending().records == 1
    with Session(rig.engine) as session:
        day = session.execute(select(func.min(PostingRow.window_day))).scalar_one()
    client, csrf = finance(rig)
    still_open = client.get("/staff/parties/bus-1/statement", params={"day": day.isoformat()})
    assert still_open.status_code == 404 and "E_WINDOW_NOT_CLOSED" in still_open.text
    close_window(rig.engine, day, now=dt.datetime.now(dt.UTC), payer=PAYER, out_dir=tmp_path, early=True)

    page = client.get("/staff/parties/bus-1")
    assert f"statement?day={day.isoformat()}" in page.text
    first = client.get("/staff/parties/bus-1/statement", params={"day": day.isoformat()})
    assert first.status_code == 200 and first.headers["content-type"] == "application/pdf"
    assert first.headers["content-disposition"] == f'attachment; filename="statement-bus-1-{day.isoformat()}.pdf"'
    assert first.content.startswith(b"%PDF-") and b"(2.00) Tj" in first.content  # gross, net, carried
    second = client.get("/staff/parties/bus-1/statement", params={"day": day.isoformat()})
    assert hashlib.sha256(second.content).digest() == hashlib.sha256(first.content).digest()
    add(client, csrf)  # a payee with nothing that day still has its (empty) statement
    empty = client.get("/staff/parties/shop-1/statement", params={"day": day.isoformat()})
    assert empty.status_code == 200 and b"Nothing in this window" in empty.content

    unknown = client.get("/staff/parties/nobody/statement", params={"day": day.isoformat()})
    assert unknown.status_code == 404 and "E_UNKNOWN_PAYEE" in unknown.text
    later = (day + dt.timedelta(days=1)).isoformat()
    assert client.get("/staff/parties/bus-1/statement", params={"day": later}).status_code == 404
    garbled = client.get("/staff/parties/bus-1/statement", params={"day": "2026-13-99"})
    assert garbled.status_code == 404 and "E_WINDOW_NOT_CLOSED" in garbled.text
    assert client.get("/staff/parties/bus-1/statement").status_code == 404
    outcomes = [a.outcome for a in portal_audit(rig, "statement_download")]
    assert outcomes.count("ok") == 3 and outcomes.count("E_WINDOW_NOT_CLOSED") == 4 and "E_UNKNOWN_PAYEE" in outcomes


def test_hostile_input_is_a_4xx_never_a_5xx(rig: Rig) -> None:
    client, csrf = finance(rig)
    add(client, csrf)
    nasty = ["\x00", "a\x00b", "' OR 1=1 --", "x" * 300, "１２３", "\u202e", "%00", "../../etc"]
    for value in nasty:
        answers = [
            add(client, csrf, payee_id=value),
            add(client, csrf, payee_id=f"n{len(value)}", name=value, category=value, kind=value),
            client.post(
                "/staff/parties/shop-1/fee",
                data={
                    "csrf_token": csrf,
                    "category": value,
                    "mode": "own",
                    "bps": value,
                    "min_yuan": value,
                    "cap_yuan": value,
                    "rounding": value,
                },
            ),
            client.post(
                "/staff/parties/shop-1/account",
                data={"csrf_token": csrf, "account_name": value, "account_number": value, "cnaps": value},
            ),
            client.post("/staff/parties/shop-1/status", data={"csrf_token": csrf, "status": value}),
            client.post(
                "/staff/parties/shop-1/assignments",
                data={"csrf_token": csrf, "what": value, "ident": value, "valid_from": value},
            ),
            client.get("/staff/parties/shop-1/statement", params={"day": value}),
            client.get(f"/staff/parties/{quote(value, safe='')}"),
            client.get(f"/staff/parties/{quote(value, safe='')}/statement", params={"day": "2026-11-24"}),
        ]
        for answer in answers:
            assert 400 <= answer.status_code < 500, (value, answer.request.url, answer.status_code)
    with Session(rig.engine) as session:
        assert session.scalar(select(func.count()).select_from(PayeeRow)) == 1
