"""The staff console's core: accounts, roles per route, password + TOTP, its own session cookie.

Through the real routes (``/staff/api``) on SQLite and PostgreSQL, with the rig of
``test_lost_cards`` (clearing, key store, the lost-card service).
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyotp
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from clearing.keystore import KeyStore
from portal.errors import PortalError
from portal.models import PortalAuditEntry, PortalStaff, PortalStaffSession
from portal.staff import ROLE_ACTIONS, may, parse_username, totp_step
from tests.portal.conftest import ALICE
from tests.portal.test_lost_cards import CLERK_PASSWORD, OWN, Rig, citizen, make_rig, report

LOGIN = "/staff/api/sessions"


@pytest.fixture(scope="module")
def keystore(tmp_path_factory: pytest.TempPathFactory) -> KeyStore:
    ks = KeyStore.open(tmp_path_factory.mktemp("ks") / "keystore.json", os.urandom(32))
    ks.init(["xianyang"])
    return ks


@pytest.fixture
def rig(engine: Engine, keystore: KeyStore, tmp_path: Path) -> Iterator[Rig]:
    made = make_rig(engine, keystore, tmp_path)
    yield made
    made.terminal.journal.close()
    made.terminal.denylist.close()


def add(rig: Rig, username: str, role: str) -> pyotp.TOTP:
    new = rig.staff.add(username, role, CLERK_PASSWORD, actor="cli")
    otp = pyotp.parse_uri(new.provisioning_uri)
    assert isinstance(otp, pyotp.TOTP)
    assert new.provisioning_uri.startswith("otpauth://totp/") and "issuer=Yikatong" in new.provisioning_uri
    return otp


def login(rig: Rig, username: str, otp: pyotp.TOTP, *, at: dt.datetime | None = None, password: str = CLERK_PASSWORD,
          client: TestClient | None = None) -> Any:  # fmt: skip
    client = client or rig.client()
    code = otp.at(at or rig.clock.now)
    return client, client.post(LOGIN, json={"username": username, "password": password, "totp": code})


def logged_in(rig: Rig, username: str, role: str) -> TestClient:
    client, answer = login(rig, username, add(rig, username, role))
    assert answer.status_code == 201, answer.text
    client.headers["X-CSRF-Token"] = answer.json()["csrf_token"]
    return client


def audit(rig: Rig) -> list[tuple[str, str, str]]:
    with Session(rig.engine) as session:
        rows = session.execute(select(PortalAuditEntry).order_by(PortalAuditEntry.id)).scalars().all()
        return [(r.actor, r.action, r.outcome) for r in rows]


# --- pure -----------------------------------------------------------------------------------------------


def test_totp_steps_accept_one_either_side_and_nothing_further() -> None:
    secret = pyotp.random_base32()
    otp = pyotp.TOTP(secret)
    now = 1_800_000_000.0
    step = int(now // 30)
    assert totp_step(secret, otp.at(now), now) == step
    assert totp_step(secret, otp.at(now - 30), now) == step - 1
    assert totp_step(secret, otp.at(now + 30), now) == step + 1
    assert totp_step(secret, otp.at(now - 60), now) is None
    assert totp_step(secret, otp.at(now + 60), now) is None
    for bad in ("", "12345", "1234567", "abcdef", "١٢٣٤٥٦"):
        assert totp_step(secret, bad, now) is None


def test_each_role_does_only_its_own_actions() -> None:
    assert may("counter_clerk", "replacement") and may("counter_clerk", "unblock")
    assert not may("counter_clerk", "refund") and not may("counter_clerk", "staff_add")
    assert may("finance", "refund") and not may("finance", "replacement")
    assert may("administrator", "staff_add") and not may("administrator", "card_search")
    assert not may("nobody", "card_search")
    assert set().union(*ROLE_ACTIONS.values()) >= {"card_search", "replacement", "refund", "unblock", "staff_add"}


@pytest.mark.parametrize("bad", ["ab", "1clerk", "Clerk Wang", "a" * 33, "clerk13912345678", "clerk;drop", ""])
def test_usernames_of_the_wrong_shape_are_refused(bad: str) -> None:
    with pytest.raises(PortalError) as refused:
        parse_username(bad)
    assert refused.value.code.value == "E_STAFF_USERNAME"


# --- login -------------------------------------------------------------------------------------------------


def test_a_staff_login_needs_password_and_an_unused_totp_code(rig: Rig) -> None:
    otp = add(rig, "clerk1", "counter_clerk")
    client, answer = login(rig, "clerk1", otp)
    assert answer.status_code == 201, answer.text
    cookie = answer.headers["set-cookie"]
    assert cookie.startswith("yk_staff=") and "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert "Path=/staff" in cookie and "Max-Age=1800" in cookie
    assert client.get("/staff/api/me").json()["role"] == "counter_clerk"
    # the same code again (another browser): refused, even though it is still in its window
    _, replayed = login(rig, "clerk1", otp)
    assert replayed.status_code == 401 and replayed.json()["code"] == "E_STAFF_LOGIN_FAILED"
    # the next step's code is good (the clock moved on)
    rig.clock.advance(30)
    assert login(rig, "clerk1", otp)[1].status_code == 201
    # an older step than the last used one is refused too
    _, older = login(rig, "clerk1", otp, at=rig.clock.now - dt.timedelta(seconds=30))
    assert older.status_code == 401
    # wrong password, unknown user, wrong code: the same answer (after the 5-per-15-min limit's window)
    rig.clock.advance(15 * 60)
    answers = [
        login(rig, "clerk1", otp, password="not the password")[1],
        login(rig, "nobody", otp)[1],
        rig.client().post(LOGIN, json={"username": "clerk1", "password": CLERK_PASSWORD, "totp": "000000"}),
    ]
    assert {(a.status_code, a.json()["code"], a.json()["message"]) for a in answers} == {
        (401, "E_STAFF_LOGIN_FAILED", "the username, the password or the one-time code is wrong")
    }
    outcomes = [o for _, a, o in audit(rig) if a == "staff_login"]
    assert outcomes.count("ok") == 2 and outcomes.count("E_STAFF_LOGIN_FAILED") == 5


def test_a_login_rotates_the_session_and_sessions_are_short(rig: Rig) -> None:
    otp = add(rig, "clerk1", "counter_clerk")
    client, _ = login(rig, "clerk1", otp)
    old = client.cookies["yk_staff"]
    rig.clock.advance(30)
    _, second = login(rig, "clerk1", otp, client=client)
    assert second.status_code == 201 and client.cookies["yk_staff"] != old
    stale = rig.client()
    stale.cookies.set("yk_staff", old, path="/staff")
    assert stale.get("/staff/api/me").json()["code"] == "E_STAFF_SESSION_REQUIRED"
    assert client.get("/staff/api/me").status_code == 200
    rig.clock.advance(30 * 60)
    ended = client.get("/staff/api/me")
    assert ended.status_code == 401 and ended.json()["code"] == "E_STAFF_SESSION_REQUIRED"
    # the citizens' cookie is not a staff session
    alice = citizen(rig, ALICE)
    assert alice.get("/staff/api/me").json()["code"] == "E_STAFF_SESSION_REQUIRED"


def test_staff_logins_are_rate_limited_per_username(rig: Rig) -> None:
    otp = add(rig, "clerk1", "counter_clerk")
    for _ in range(5):
        assert login(rig, "clerk1", otp, password="wrong password")[1].status_code == 401
    _, limited = login(rig, "clerk1", otp)
    assert limited.status_code == 429 and limited.json()["code"] == "E_RATE_LIMITED"
    assert ("anonymous", "staff_login", "E_RATE_LIMITED") in audit(rig)


def test_a_disabled_account_cannot_log_in_and_its_sessions_end(rig: Rig) -> None:
    otp = add(rig, "clerk1", "counter_clerk")
    client, _ = login(rig, "clerk1", otp)
    with Session(rig.engine) as session, session.begin():
        session.execute(update(PortalStaff).values(active=False))
    assert client.get("/staff/api/me").status_code == 401
    rig.clock.advance(30)
    assert login(rig, "clerk1", otp)[1].status_code == 401


def test_the_totp_secret_is_not_stored_in_clear(rig: Rig) -> None:
    new = rig.staff.add("clerk1", "counter_clerk", CLERK_PASSWORD, actor="cli")
    secret = pyotp.parse_uri(new.provisioning_uri).secret
    with Session(rig.engine) as session:
        row = session.execute(select(PortalStaff)).scalar_one()
        assert secret not in row.totp_secret_enc and row.password_hash.startswith("$argon2id$")
        assert CLERK_PASSWORD not in row.password_hash


def test_a_reset_totp_ends_the_old_codes_and_sessions(rig: Rig) -> None:
    otp = add(rig, "clerk1", "counter_clerk")
    client, _ = login(rig, "clerk1", otp)
    new = rig.staff.reset_totp("clerk1", actor="cli")
    assert client.get("/staff/api/me").status_code == 401
    rig.clock.advance(30)
    assert login(rig, "clerk1", otp)[1].status_code == 401
    fresh = pyotp.parse_uri(new.provisioning_uri)
    assert isinstance(fresh, pyotp.TOTP)
    rig.clock.advance(30)
    assert login(rig, "clerk1", fresh)[1].status_code == 201


# --- roles per route -----------------------------------------------------------------------------------------


def test_every_route_checks_the_role(rig: Rig) -> None:
    _, asn = rig.issue()
    card = {"issuer_id": OWN, "card_asn": asn}
    refund = {"topup_id": "tu_" + "0" * 32}
    clerk = logged_in(rig, "clerk1", "counter_clerk")
    finance = logged_in(rig, "money1", "finance")
    admin = logged_in(rig, "admin1", "administrator")
    calls = {
        "search": lambda c: c.get("/staff/api/cards", params={"q": asn}),
        "view": lambda c: c.get(f"/staff/api/cards/{OWN}/{asn}"),
        "replace": lambda c: c.post("/staff/api/replacements", json=card),
        "unblock": lambda c: c.post("/staff/api/unblocks", json=card),
        "refund": lambda c: c.post("/staff/api/refunds", json=refund),
        "notices": lambda c: c.get("/staff/api/notices"),
        "staff list": lambda c: c.get("/staff/api/staff"),
        "staff add": lambda c: c.post(
            "/staff/api/staff", json={"username": "new1", "role": "finance", "password": CLERK_PASSWORD}
        ),
        "audit": lambda c: c.get("/staff/api/audit"),
    }
    allowed = {
        "search": clerk, "view": clerk, "replace": clerk, "unblock": clerk, "refund": finance, "notices": finance,
        "staff list": admin, "staff add": admin, "audit": admin,
    }  # fmt: skip
    for name, call in calls.items():
        for who in (clerk, finance, admin):
            answer = call(who)
            if who is allowed[name]:
                assert answer.status_code != 403, (name, answer.text)
            else:
                assert answer.status_code == 403 and answer.json()["code"] == "E_STAFF_FORBIDDEN", (name, answer.text)
    assert ("staff:clerk1", "refund", "E_STAFF_FORBIDDEN") in audit(rig)


def test_state_changing_staff_routes_need_the_csrf_token(rig: Rig) -> None:
    _, asn = rig.issue()
    clerk = logged_in(rig, "clerk1", "counter_clerk")
    del clerk.headers["X-CSRF-Token"]
    answer = clerk.post("/staff/api/replacements", json={"issuer_id": OWN, "card_asn": asn})
    assert answer.status_code == 403 and answer.json()["code"] == "E_CSRF"
    assert clerk.delete("/staff/api/sessions/current").json()["code"] == "E_CSRF"
    anonymous = rig.client()
    assert anonymous.post("/staff/api/unblocks", json={"issuer_id": OWN, "card_asn": asn}).status_code == 401


def test_the_counter_finds_cards_by_number_id_or_mobile_with_masked_personal_data(rig: Rig) -> None:
    _, asn = rig.issue()
    alice = citizen(rig, ALICE, asn)
    report(alice, asn)
    clerk = logged_in(rig, "clerk1", "counter_clerk")
    for q in (asn, ALICE["id_number"], ALICE["mobile"], asn.upper()):
        found = clerk.get("/staff/api/cards", params={"q": q})
        assert found.status_code == 200, found.text
        [card] = found.json()["cards"]
        assert card["card_asn"] == asn and card["status"] == "lost" and card["lost_report"]["state"] == "lost"
        assert card["citizen_mobile_masked"] == "139****5678" and card["citizen_name_masked"] == "欧阳**"
        assert ALICE["id_number"] not in found.text and ALICE["mobile"] not in found.text
    for bad in ("hello", "1234", "61040219900101123Y"):
        answer = clerk.get("/staff/api/cards", params={"q": bad})
        assert answer.status_code == 422 and answer.json()["code"] == "E_STAFF_SEARCH"
    assert clerk.get("/staff/api/cards", params={"q": "7120" + "1" * 16}).json()["cards"] == []


def test_finance_refunds_go_to_the_topup_service_and_are_audited(rig: Rig) -> None:
    finance = logged_in(rig, "money1", "finance")
    answer = finance.post("/staff/api/refunds", json={"topup_id": "tu_" + "ab" * 16})
    assert answer.status_code == 404 and answer.json()["code"] == "E_TOPUP_NOT_FOUND"
    assert finance.post("/staff/api/refunds", json={"topup_id": "not-an-id"}).status_code == 422
    assert ("staff:money1", "refund", "E_TOPUP_NOT_FOUND") in audit(rig)
    assert finance.get("/staff/api/notices").json() == {"notices": []}


def test_an_administrator_adds_staff_and_reads_the_audit_log(rig: Rig) -> None:
    admin = logged_in(rig, "admin1", "administrator")
    made = admin.post("/staff/api/staff", json={"username": "clerk9", "role": "counter_clerk",
                                                 "password": CLERK_PASSWORD})  # fmt: skip
    assert made.status_code == 201 and made.json()["provisioning_uri"].startswith("otpauth://totp/")
    taken = admin.post("/staff/api/staff", json={"username": "clerk9", "role": "finance", "password": CLERK_PASSWORD})
    assert taken.status_code == 409 and taken.json()["code"] == "E_STAFF_EXISTS"
    bad_role = admin.post("/staff/api/staff", json={"username": "x123", "role": "root", "password": CLERK_PASSWORD})
    assert bad_role.json()["code"] == "E_STAFF_ROLE"
    listed = admin.get("/staff/api/staff").json()["staff"]
    assert [s["username"] for s in listed] == ["admin1", "clerk9"]
    reset = admin.post("/staff/api/staff/clerk9/totp")
    assert reset.status_code == 200 and reset.json()["provisioning_uri"] != made.json()["provisioning_uri"]
    assert admin.post("/staff/api/staff/nobody/totp").json()["code"] == "E_STAFF_NOT_FOUND"
    lines = admin.get("/staff/api/audit", params={"limit": 50}).json()["lines"]
    actions = [line["action"] for line in lines]
    assert "staff_add" in actions and "staff_reset_totp" in actions and "staff_login" in actions
    assert admin.get("/staff/api/audit", params={"limit": 0}).status_code == 422


def test_the_cli_makes_the_first_administrator_and_prints_the_uri_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from clearing import db
    from yikatong.cli import app
    from yikatong.settings import get_settings

    url = f"sqlite:///{tmp_path / 'cli.db'}"
    db.upgrade(url)
    monkeypatch.setenv("YIKATONG_DATABASE_URL", url)
    monkeypatch.setenv("YIKATONG_PORTAL_LOOKUP_KEY", "ab" * 32)
    get_settings.cache_clear()
    try:
        runner = CliRunner()
        made = runner.invoke(
            app, ["staff", "add", "--username", "root1", "--role", "administrator", "--password-stdin"],
            input=CLERK_PASSWORD + "\n",
        )  # fmt: skip
        assert made.exit_code == 0, made.output
        assert made.output.count("otpauth://totp/") == 1
        again = runner.invoke(
            app, ["staff", "add", "--username", "root1", "--role", "finance", "--password-stdin"],
            input=CLERK_PASSWORD + "\n",
        )  # fmt: skip
        assert again.exit_code == 1 and "E_STAFF_EXISTS" in again.output
        weak = runner.invoke(
            app, ["staff", "add", "--username", "root2", "--role", "finance", "--password-stdin"], input="1234\n"
        )
        assert weak.exit_code == 1 and "E_PASSWORD_POLICY" in weak.output
        listed = runner.invoke(app, ["staff", "list"])
        assert listed.exit_code == 0 and "root1" in listed.output and "otpauth" not in listed.output
        reset = runner.invoke(app, ["staff", "reset-totp", "--username", "root1"])
        assert reset.exit_code == 0 and reset.output.count("otpauth://totp/") == 1
        engine = db.make_engine(url)
        with Session(engine) as session:
            assert [r.actor for r in session.execute(select(PortalAuditEntry)).scalars()] == ["cli"] * 4
            assert session.execute(select(PortalStaffSession)).first() is None
        engine.dispose()
    finally:
        get_settings.cache_clear()


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
_fields = st.fixed_dictionaries(
    {},
    optional={"issuer_id": _json | st.just(OWN), "card_asn": _json | st.just("7120" + "0" * 16), "topup_id": _json,
              "username": _json, "password": _json, "totp": _json, "role": _json},
)  # fmt: skip


def test_any_body_to_the_staff_and_lost_card_routes_is_a_4xx_with_a_code(rig: Rig) -> None:
    clerk = logged_in(rig, "clerk1", "counter_clerk")
    finance = logged_in(rig, "money1", "finance")
    admin = logged_in(rig, "admin1", "administrator")
    alice = citizen(rig, ALICE)
    routes = [
        (clerk, "/staff/api/replacements"), (clerk, "/staff/api/unblocks"), (finance, "/staff/api/refunds"),
        (admin, "/staff/api/staff"), (rig.client(), "/staff/api/sessions"), (alice, "/api/lost-cards"),
    ]  # fmt: skip

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.sampled_from(range(len(routes))), _fields | _json, st.booleans())
    def check(which: int, body: Any, as_text: bool) -> None:
        client, path = routes[which]
        if as_text:
            answer = client.post(path, content=str(body).encode(), headers={"content-type": "text/plain"})
        else:
            answer = client.post(path, json=body)
        assert 400 <= answer.status_code < 500 or answer.status_code in (200, 201), (path, body, answer.text)
        if answer.status_code >= 400:
            assert re.fullmatch(r"E_[A-Z_]+", answer.json()["code"]), answer.text

    check()
