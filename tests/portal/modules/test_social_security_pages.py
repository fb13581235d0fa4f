"""The social security pages, the staff routes and the CLI: card login required, masked data, CSRF, audit.

SQLite and PostgreSQL, the real app (``yikatong.app.assemble`` with the pages and a staff
console) under FastAPI's TestClient, as a browser without JavaScript drives it. The card
session is made directly in the table (``card_session``): card login itself is tested in
``tests/portal/test_card_login.py`` and, end to end, in the browser journey
``tests/portal/browser/test_browser_social_security.py``.
"""

from __future__ import annotations

import html
import os
import re
from pathlib import Path
from typing import Any

import pyotp
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from clearing import db
from clearing.api import ApiDeps
from clearing.keystore import KeyStore
from portal.api_staff import StaffConsole
from portal.audit import AuditLog
from portal.lost_cards import DirectoryCardWriter, LostCardService
from portal.models import PortalAuditEntry, PortalSession
from portal.modules.social_security.models import SsEntry, SsStatement
from portal.payments import PaymentsClient, PaymentsConfig
from portal.staff import StaffService
from portal.topup_service import TopupService
from portal.web import PageConfig, form_key_of
from tests.portal.conftest import ALICE, BOB, LOCALSTRIPE_KEY, TEST_LOOKUP_KEY, account_service, fast_passwords
from tests.portal.modules.test_social_security import csv_file, good_file, row, service
from yikatong.app import assemble

CLERK_PASSWORD = "counter clerk at Weicheng"  # a test password


def make_app(engine: Engine, tmp_path: Path) -> Any:
    sessions = db.session_factory(engine)
    accounts = account_service(engine)
    audit = AuditLog(sessions)
    keystore = KeyStore.open(tmp_path / "keystore.json", os.urandom(32))
    lost = LostCardService(sessions=sessions, accounts=accounts, audit=audit, keystore=keystore,
                           writer=DirectoryCardWriter(tmp_path / "cards"))  # fmt: skip
    staff = StaffService(sessions=sessions, lookup_key=TEST_LOOKUP_KEY, audit=audit, passwords=fast_passwords())
    payments = PaymentsClient.connect(PaymentsConfig("http://127.0.0.1:9", LOCALSTRIPE_KEY, timeout_s=0.5))
    topups = TopupService(sessions=sessions, payments=payments, webhook_secrets=["whsec_t"])
    config = PageConfig(form_key=form_key_of(TEST_LOOKUP_KEY), secure_cookies=False)
    console = StaffConsole(staff=staff, lost=lost, audit=audit, topups=topups, secure_cookies=False)
    return assemble(ApiDeps(engine, keystore), topups, portal_enabled=True, accounts=accounts, portal_dev=True,
                    pages=config, lost_cards=lost, staff_console=console)  # fmt: skip


@pytest.fixture
def app(engine: Engine, tmp_path: Path) -> Any:
    service(engine).import_file(good_file(), file_name="employer.csv", actor="cli")
    return make_app(engine, tmp_path)


def hidden(page: str, name: str) -> str:
    found = re.search(rf'name="{name}" value="([^"]*)"', page)
    assert found, f"no hidden {name} in the page"
    return html.unescape(found.group(1))


def logged_in(app: Any, who: dict[str, str] = ALICE) -> TestClient:
    client = TestClient(app, follow_redirects=False)
    assert client.post("/api/citizens", json=who).status_code == 201
    form = client.get("/login")
    answer = client.post("/login", data={"csrf_token": hidden(form.text, "csrf_token"), "mobile": who["mobile"],
                                         "password": who["password"]})  # fmt: skip
    assert answer.status_code == 303, answer.text
    return client


def card_session(engine: Engine, client: TestClient) -> None:
    """Raise the browser's session to assurance ``card``, as a card login would have made it."""
    from portal.accounts import session_id_of

    with Session(engine) as session, session.begin():
        session.execute(
            update(PortalSession)
            .where(PortalSession.id == session_id_of(client.cookies["yk_session"]))
            .values(assurance="card")
        )


def test_the_record_needs_a_session_then_card_login(app: Any, engine: Engine) -> None:
    anonymous = TestClient(app, follow_redirects=False)
    answer = anonymous.get("/social-security")
    assert answer.status_code == 303 and answer.headers["location"].startswith("/login?next=/social-security")
    client = logged_in(app)
    for path in ("/social-security", "/social-security/statements/SS0123456789ABCDEF0123",
                 "/social-security/statements/SS0123456789ABCDEF0123.pdf"):  # fmt: skip
        refused = client.get(path)
        assert refused.status_code == 403 and 'id="ss-card-required"' in refused.text, path
        assert 'href="/reader"' in refused.text
    form = client.get("/")
    refused = client.post("/social-security/statements", data={"csrf_token": hidden(form.text, "csrf_token"),
                                                               "year": "2026"})  # fmt: skip
    assert refused.status_code == 403
    with Session(engine) as session:
        assert session.scalar(select(SsStatement.number)) is None
    as_json = client.get("/api/social-security/record")
    assert as_json.status_code == 403 and as_json.json()["code"] == "E_SS_CARD_LOGIN_REQUIRED"
    assert anonymous.get("/api/social-security/record").json()["code"] == "E_SESSION_REQUIRED"


def test_the_record_as_json_with_card_login(app: Any, engine: Engine) -> None:
    client = logged_in(app)
    card_session(engine, client)
    answer = client.get("/api/social-security/record", params={"year": "2026"})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["person"] == "6104**********" + ALICE["id_number"][-4:] and body["years"] == [2026]
    assert [m["month"] for m in body["months"]] == ["2026-02", "2026-01"]
    assert body["months"][1]["insurances"]["pension"]["personal_fen"] == 48_000
    assert body["balances_fen"] == {"pension": 96_000, "medical": 12_000}
    assert client.get("/api/social-security/record", params={"year": "20x6"}).json()["code"] == "E_SS_YEAR"


def test_with_card_login_the_record_shows_masked_data_months_and_balances(app: Any, engine: Engine) -> None:
    client = logged_in(app)
    card_session(engine, client)
    home = client.get("/")
    assert 'id="home-social-security"' in home.text
    client.cookies.set("lang", "en")
    page = client.get("/social-security")
    assert page.status_code == 200, page.text
    assert "content-security-policy" in page.headers and "script" not in page.text.lower().replace("noscript", "")
    assert re.search(r'id="ss-person">6104\*{10}' + ALICE["id_number"][-4:] + "<", page.text)
    assert ALICE["id_number"] not in page.text and ALICE["id_number"][6:14] not in page.text
    assert 'data-month="2026-02"' in page.text and 'data-month="2026-01"' in page.text
    assert re.search(r'id="ss-balance-pension">¥960\.00<', page.text)
    assert re.search(r'id="ss-balance-medical">¥120\.00<', page.text)
    client.cookies.set("lang", "zh_CN")
    chinese = client.get("/social-security")
    assert "缴费记录" in chinese.text and "养老保险" in chinese.text
    assert client.get("/social-security?year=2019").status_code == 422
    assert client.get("/social-security?year=abcd").status_code == 422


def test_a_statement_is_issued_by_form_downloaded_as_pdf_and_checked_on_the_public_page(
    app: Any, engine: Engine
) -> None:
    client = logged_in(app)
    card_session(engine, client)
    page = client.get("/social-security")
    no_token = client.post("/social-security/statements", data={"year": "2026"})
    assert no_token.status_code == 403
    issued = client.post("/social-security/statements", data={"csrf_token": hidden(page.text, "csrf_token"),
                                                              "year": "2026"})  # fmt: skip
    assert issued.status_code == 303
    location = issued.headers["location"]
    number = location.rsplit("/", 1)[1]
    shown = client.get(location)
    code = re.search(r'id="ss-code">([A-Z2-7-]{19})<', shown.text)
    assert shown.status_code == 200 and code is not None
    first = client.get(f"{location}.pdf")
    second = client.get(f"{location}.pdf")
    assert first.status_code == 200 and first.headers["content-type"] == "application/pdf"
    assert first.content == second.content and first.content.startswith(b"%PDF-")
    public = TestClient(app, follow_redirects=False)  # no session at all
    valid = public.get("/social-security/verify", params={"number": number, "code": code.group(1).lower()})
    assert valid.status_code == 200 and 'data-valid="yes"' in valid.text
    assert "6104**********" + ALICE["id_number"][-4:] in valid.text and ALICE["id_number"] not in valid.text
    tampered = code.group(1)[:-1] + ("A" if code.group(1)[-1] != "A" else "B")
    invalid = public.get("/social-security/verify", params={"number": number, "code": tampered})
    assert invalid.status_code == 200 and 'data-valid="no"' in invalid.text and "6104**" not in invalid.text
    form = public.get("/social-security/verify")
    assert form.status_code == 200 and 'for="number"' in form.text and 'for="code"' in form.text
    other = logged_in(app, BOB)
    card_session(engine, other)
    assert other.get(location).status_code == 404
    assert other.get(f"{location}.pdf").status_code == 404


def staff_client(app: Any, username: str, role: str) -> tuple[TestClient, str]:
    staff: StaffService = app.state.portal_staff_console.staff
    new = staff.add(username, role, CLERK_PASSWORD, actor="cli")
    otp = pyotp.parse_uri(new.provisioning_uri)
    assert isinstance(otp, pyotp.TOTP)
    client = TestClient(app)
    answer = client.post("/staff/api/sessions", json={"username": username, "password": CLERK_PASSWORD,
                                                      "totp": otp.now()})  # fmt: skip
    assert answer.status_code == 201, answer.text
    return client, answer.json()["csrf_token"]


def test_a_clerk_finds_a_persons_entries_and_corrects_one_with_a_reason(app: Any, engine: Engine) -> None:
    clerk, csrf = staff_client(app, "clerk1", "counter_clerk")
    headers = {"X-CSRF-Token": csrf}
    found = clerk.post("/staff/api/social-security/searches", json={"id_number": ALICE["id_number"]}, headers=headers)
    assert found.status_code == 200, found.text
    entries = found.json()["entries"]
    assert len(entries) == 4 and all(e["person"].startswith("6104**********") for e in entries)
    entry = next(e for e in entries if e["month"] == "2026-01" and e["insurance"] == "pension")
    body = {"entry_id": entry["entry_id"], "base_fen": 620_000, "employer_fen": 99_200, "personal_fen": 49_600,
            "reason": "base keyed short by the employer"}  # fmt: skip
    assert clerk.post("/staff/api/social-security/corrections", json=body).status_code == 403  # no CSRF token
    made = clerk.post("/staff/api/social-security/corrections", json=body, headers=headers)
    assert made.status_code == 201, made.text
    assert made.json()["delta"] == {"base_fen": 20_000, "employer_fen": 3_200, "personal_fen": 1_600}
    replay = clerk.post("/staff/api/social-security/corrections", json=body, headers=headers)
    assert replay.status_code == 200 and replay.json()["replayed"] is True
    bad = clerk.post("/staff/api/social-security/corrections", json={**body, "reason": "x"}, headers=headers)
    assert bad.status_code == 422 and bad.json()["code"] == "E_SS_CORRECTION_REASON"
    malformed = clerk.post("/staff/api/social-security/corrections", json={**body, "base_fen": 1.5}, headers=headers)
    assert malformed.status_code == 422 and malformed.json()["code"] == "E_PORTAL_MALFORMED"
    finance, fcsrf = staff_client(app, "money1", "finance")
    refused = finance.post("/staff/api/social-security/corrections", json=body, headers={"X-CSRF-Token": fcsrf})
    assert refused.status_code == 403 and refused.json()["code"] == "E_STAFF_FORBIDDEN"
    anonymous = TestClient(app).post("/staff/api/social-security/searches", json={"id_number": ALICE["id_number"]})
    assert anonymous.status_code == 401
    with Session(engine) as session:
        lines = session.scalars(
            select(PortalAuditEntry).where(PortalAuditEntry.action.in_(("ss_correction", "ss_entries_view")))
        ).all()
        kinds = session.scalars(select(SsEntry.kind).order_by(SsEntry.id)).all()
    outcomes = sorted((x.actor, x.action, x.outcome) for x in lines)
    assert ("staff:clerk1", "ss_correction", "ok") in outcomes
    assert ("staff:clerk1", "ss_correction", "E_SS_CORRECTION_REASON") in outcomes
    assert ("staff:money1", "ss_correction", "E_STAFF_FORBIDDEN") in outcomes
    assert all(ALICE["id_number"] not in f"{x.target} {x.detail}" for x in lines)
    assert kinds.count("correction") == 1  # the replay made nothing


def test_the_cli_imports_all_or_nothing_and_a_second_time_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from yikatong.cli import app as cli
    from yikatong.settings import get_settings

    url = f"sqlite:///{tmp_path / 'cli.db'}"
    db.upgrade(url)
    monkeypatch.setenv("YIKATONG_DATABASE_URL", url)
    monkeypatch.setenv("YIKATONG_PORTAL_LOOKUP_KEY", TEST_LOOKUP_KEY.hex())
    get_settings.cache_clear()
    good, bad = tmp_path / "good.csv", tmp_path / "bad.csv"
    good.write_bytes(good_file())
    bad.write_bytes(csv_file(row(month="2026-05"), row(month="2026-13", insurance="housing")))
    try:
        runner = CliRunner()
        refused = runner.invoke(cli, ["social-security", "import", str(bad)])
        assert refused.exit_code == 1 and "nothing imported" in refused.output
        assert "E_SS_ROW_MONTH" in refused.output and "E_SS_ROW_INSURANCE" in refused.output
        assert ALICE["id_number"] not in refused.output
        made = runner.invoke(cli, ["social-security", "import", str(good), "--json"])
        assert made.exit_code == 0, made.output
        assert '"rows_new": 5' in made.output
        again = runner.invoke(cli, ["social-security", "import", str(good)])
        assert again.exit_code == 0 and "imported before" in again.output
        missing = runner.invoke(cli, ["social-security", "import", str(tmp_path / "none.csv")])
        assert missing.exit_code == 1
        empty = tmp_path / "empty.csv"
        empty.write_bytes(b"")
        header_only = runner.invoke(cli, ["social-security", "import", str(empty)])
        assert header_only.exit_code == 1 and "E_SS_FILE_HEADER" in header_only.output
        engine = db.make_engine(url)
        with Session(engine) as session:
            assert len(session.scalars(select(SsEntry.id)).all()) == 5
        engine.dispose()
    finally:
        get_settings.cache_clear()
