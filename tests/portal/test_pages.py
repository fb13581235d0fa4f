"""The citizen pages: every page in zh_CN and en, CSRF on every form, replays, bad input, ownership, headers.

SQLite and PostgreSQL, the real app (``yikatong.app.assemble`` with ``pages=``) under FastAPI's
TestClient, driven the way a browser without JavaScript drives it: GET a form, read its hidden
fields, POST it, follow the 303. The payment server is absent (port 9) except in the one test
that pays through a real localstripe: a top-up is then ``created`` with its intent still due.
"""

from __future__ import annotations

import datetime as dt
import html
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from clearing import db, loads, registry
from clearing.api import ApiDeps
from clearing.keystore import KeyStore
from clearing.ledger import TransferSpec, post_transfers
from clearing.models import Card, TransferCode
from portal.models import PortalCardBinding, PortalCitizen, PortalSession, PortalTopup
from portal.payments import PaymentsClient, PaymentsConfig
from portal.topup_service import TopupService
from portal.web import PageConfig, form_key_of
from tests.portal.conftest import ALICE, BOB, LOCALSTRIPE_KEY, TEST_LOOKUP_KEY, account_service, bind_directly
from tests.portal.test_accounts import ASN, ISSUER, TERMINAL, card_with_taps
from yikatong.app import assemble

CARD = f"/cards/{ISSUER}/{ASN}"
TEMPLATES = Path(__file__).resolve().parents[2] / "portal" / "templates"


@dataclass
class Site:
    engine: Engine
    app: Any
    topups: TopupService

    def client(self, lang: str | None = None) -> TestClient:
        client = TestClient(self.app, follow_redirects=False)
        if lang is not None:
            client.cookies.set("lang", lang)
        return client

    def count(self, table: Any) -> int:
        with Session(self.engine) as session:
            return int(session.scalar(select(func.count()).select_from(table)) or 0)


def make_site(engine: Engine, tmp_path: Path, *, payments_url: str = "http://127.0.0.1:9", test_mode: bool = False,
              webhook_secret: str = "whsec_t") -> Site:  # fmt: skip
    payments = PaymentsClient.connect(PaymentsConfig(payments_url, LOCALSTRIPE_KEY, timeout_s=2))
    topups = TopupService(sessions=db.session_factory(engine), payments=payments, webhook_secrets=[webhook_secret])
    keystore = KeyStore.open(tmp_path / "keystore.json", os.urandom(32))
    config = PageConfig(form_key=form_key_of(TEST_LOOKUP_KEY), secure_cookies=False, payments_test_mode=test_mode)
    app = assemble(ApiDeps(engine, keystore), topups, portal_enabled=True, accounts=account_service(engine),
                   portal_dev=True, pages=config)  # fmt: skip
    return Site(engine, app, topups)


@pytest.fixture
def site(engine: Engine, tmp_path: Path) -> Site:
    return make_site(engine, tmp_path)


def hidden(page: str, name: str) -> str:
    found = re.search(rf'name="{name}" value="([^"]*)"', page)
    assert found, f"no hidden {name} in the page"
    return html.unescape(found.group(1))


def post_form(client: TestClient, form_url: str, action: str, data: dict[str, str]) -> httpx.Response:
    """GET the form, POST it with its hidden fields (as a browser does)."""
    page = client.get(form_url)
    assert page.status_code == 200, page.text
    fields = {"csrf_token": hidden(page.text, "csrf_token")}
    if 'name="nonce"' in page.text:
        fields["nonce"] = hidden(page.text, "nonce")
    answer: httpx.Response = client.post(action, data={**fields, **data})
    return answer


def register(client: TestClient, who: dict[str, str]) -> httpx.Response:
    return post_form(client, "/register", "/register", who)


def login(client: TestClient, who: dict[str, str]) -> None:
    answer = post_form(client, "/login", "/login", {"mobile": who["mobile"], "password": who["password"]})
    assert answer.status_code == 303, answer.text
    assert client.cookies.get("yk_session")


def citizen(site: Site, who: dict[str, str] = ALICE, *, card: bool = True, lang: str | None = None) -> TestClient:
    """A registered, logged-in citizen (the card with taps bound to them, unless ``card`` is False)."""
    client = site.client(lang)
    assert register(client, who).status_code == 303
    login(client, who)
    if card:
        bind_directly(site.engine, who["mobile"], ISSUER, ASN)
    return client


def text_of(page: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", " ", page))


# --- every page, both languages -----------------------------------------------------------------


@pytest.mark.parametrize(("lang", "html_lang", "words"), [("zh_CN", "zh-CN", "我的卡片"), ("en", "en", "My cards")])
def test_every_page_renders_in_both_languages(site: Site, lang: str, html_lang: str, words: str) -> None:
    card_with_taps(site.engine)
    anonymous = site.client(lang)
    for url in ("/", "/register", "/login"):
        page = anonymous.get(url)
        assert page.status_code == 200 and f'<html lang="{html_lang}">' in page.text, url
        assert 'href="#main"' in page.text and 'id="main"' in page.text
    client = citizen(site, lang=lang)
    topup = post_form(client, f"{CARD}/topup", f"{CARD}/topup", {"amount": "20"})
    assert topup.status_code == 303
    urls = ["/", "/cards", CARD, f"{CARD}/topup", topup.headers["location"]]
    for url in urls:
        page = client.get(url)
        assert page.status_code == 200, (url, page.text)
        assert f'<html lang="{html_lang}">' in page.text and words in page.text, url
    assert "¥100.00" in client.get("/cards").text and 'id="balance">¥100.00<' in client.get(CARD).text


def test_the_language_follows_the_cookie_then_accept_language_then_chinese(site: Site) -> None:
    client = site.client()
    assert '<html lang="zh-CN">' in client.get("/login").text
    assert '<html lang="en">' in client.get("/login", headers={"Accept-Language": "en-GB,en;q=0.8"}).text
    assert '<html lang="zh-CN">' in client.get("/login", headers={"Accept-Language": "fr, zh-Hans;q=0.5"}).text
    switched = client.get("/lang/en", params={"next": "/register"})
    assert (switched.status_code, switched.headers["location"]) == (303, "/register")
    assert client.cookies.get("lang") == "en"
    assert '<html lang="en">' in client.get("/login", headers={"Accept-Language": "zh-CN"}).text
    assert 'href="/lang/zh_CN?next=/login"' in client.get("/login").text
    for evil in ("//evil.example/", "https://evil.example/", "/\\evil.example"):
        assert client.get("/lang/zh_CN", params={"next": evil}).headers["location"] == "/"
    assert client.get("/lang/xx").status_code == 303 and client.cookies.get("lang") == "zh_CN"


# --- security headers, templates -----------------------------------------------------------------


def test_pages_and_static_carry_a_strict_csp_and_the_apis_do_not(site: Site) -> None:
    client = site.client()
    page = client.get("/")
    csp = page.headers["content-security-policy"]
    for directive in ("default-src 'self'", "script-src 'self'", "style-src 'self'", "img-src 'self' data:",
                      "connect-src 'self' http://127.0.0.1:8465", "frame-ancestors 'none'", "form-action 'self'",
                      "base-uri 'none'"):  # fmt: skip
        assert directive in csp.split("; "), directive
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["referrer-policy"] == "same-origin"
    assert page.headers["cache-control"] == "no-store"
    css = client.get("/static/portal.css")
    assert css.status_code == 200 and css.headers["x-content-type-options"] == "nosniff"
    assert "content-security-policy" in css.headers
    for api in ("/api/cards", f"/v1/terminals/{TERMINAL}/denylist", "/openapi.json"):
        assert "content-security-policy" not in client.get(api).headers, api


def test_no_template_has_an_inline_script_a_style_attribute_or_an_inline_handler() -> None:
    templates = sorted(TEMPLATES.rglob("*.html"))
    assert len(templates) >= 10
    for path in templates:
        text = path.read_text(encoding="utf-8")
        for script in re.finditer(r"<script\b([^>]*)>(.*?)</script>", text, re.S | re.I):
            assert re.search(r"\bsrc=", script.group(1)), f"{path.name}: inline <script>"
            assert not script.group(2).strip(), f"{path.name}: a <script src> with a body"
        assert not re.search(r"\sstyle\s*=", text, re.I), f"{path.name}: a style= attribute"
        assert "<style" not in text.lower(), f"{path.name}: a <style> element"
        assert not re.search(r"\son[a-z]+\s*=", text, re.I), f"{path.name}: an inline event handler"
        assert not re.search(r"""(href|src|action|formaction)\s*=\s*["']?\s*javascript:""", text, re.I), path.name


def test_every_input_has_a_label(site: Site) -> None:
    card_with_taps(site.engine)
    client = citizen(site)
    anonymous = site.client()
    pages = [anonymous.get(u).text for u in ("/register", "/login")]
    pages += [client.get(u).text for u in ("/cards", CARD, f"{CARD}/topup")]
    for page in pages:
        for field in re.finditer(r"<(input|select)\b([^>]*)>", page):
            attrs = field.group(2)
            if 'type="hidden"' in attrs:
                continue
            ident = re.search(r'id="([^"]+)"', attrs)
            assert ident and f'for="{ident.group(1)}"' in page, attrs


# --- CSRF -----------------------------------------------------------------------------------------


def test_every_form_refuses_a_missing_or_wrong_token_and_changes_nothing(site: Site) -> None:
    card_with_taps(site.engine)
    anonymous = site.client()
    anonymous.get("/register")  # has its form cookie; sends no token / another token
    for data in ({}, {"csrf_token": "x" * 64}):
        refused = anonymous.post("/register", data={**ALICE, **data})
        assert refused.status_code == 403 and "没有做任何更改" in refused.text
        assert anonymous.post("/login", data={"mobile": ALICE["mobile"], "password": "x", **data}).status_code == 403
    assert site.count(PortalCitizen) == 0
    no_cookie = site.client()  # a token from another browser, without its cookie
    token = hidden(anonymous.get("/register").text, "csrf_token")
    assert no_cookie.post("/register", data={**ALICE, "csrf_token": token}).status_code == 403
    assert site.count(PortalCitizen) == 0

    client = citizen(site)
    sessions = site.count(PortalSession)
    anon_token = hidden(anonymous.get("/login").text, "csrf_token")
    for data in ({}, {"csrf_token": "wrong"}, {"csrf_token": anon_token}):
        assert client.post("/logout", data=data).status_code == 403
        assert client.post("/cards/bind", data={"card_asn": ASN, "amount": "2.50", "date": "2026-11-29",
                                                **data}).status_code == 403  # fmt: skip
        nonce = hidden(client.get(f"{CARD}/topup").text, "nonce")
        assert client.post(f"{CARD}/topup", data={"amount": "20", "nonce": nonce, **data}).status_code == 403
    assert site.count(PortalSession) == sessions and site.count(PortalTopup) == 0
    assert client.get("/cards").status_code == 200  # still logged in


def test_a_cross_site_token_for_another_session_is_refused(site: Site) -> None:
    card_with_taps(site.engine)
    alice = citizen(site)
    bob = citizen(site, BOB, card=False)
    bobs_token = hidden(bob.get("/cards").text, "csrf_token")
    nonce = hidden(alice.get(f"{CARD}/topup").text, "nonce")
    answer = alice.post(f"{CARD}/topup", data={"amount": "20", "nonce": nonce, "csrf_token": bobs_token})
    assert answer.status_code == 403 and site.count(PortalTopup) == 0


# --- accounts through the pages --------------------------------------------------------------------


def test_register_then_log_in_then_log_out(site: Site) -> None:
    client = site.client("en")
    answer = register(client, ALICE)
    assert (answer.status_code, answer.headers["location"]) == (303, "/login?registered=1")
    assert "Your account is registered" in client.get("/login?registered=1").text
    answer = post_form(client, "/login?next=/cards", "/login",
                       {"mobile": ALICE["mobile"], "password": ALICE["password"], "next": CARD})  # fmt: skip
    assert (answer.status_code, answer.headers["location"]) == (303, CARD)
    cookie = answer.headers["set-cookie"]
    assert "yk_session=" in cookie and "HttpOnly" in cookie and "SameSite=lax" in cookie.replace("Lax", "lax")
    home = client.get("/")
    assert 'id="nav-logout"' in home.text
    out = client.post("/logout", data={"csrf_token": hidden(home.text, "csrf_token")})
    assert (out.status_code, out.headers["location"]) == (303, "/")
    assert site.count(PortalSession) == 0
    assert client.get("/cards").headers["location"] == "/login?next=/cards"
    again = client.post("/logout", data={})  # replayed after the session ended: nothing to end
    assert again.status_code == 303


def test_a_login_redirect_goes_only_to_our_own_pages(site: Site) -> None:
    client = site.client()
    register(client, ALICE)
    data = {"mobile": ALICE["mobile"], "password": ALICE["password"], "next": "//evil.example"}
    answer = post_form(client, "/login", "/login", data)
    assert answer.headers["location"] == "/cards"


def test_a_replayed_register_form_creates_one_citizen_and_says_so(site: Site) -> None:
    client = site.client("en")
    page = client.get("/register")
    data = {"csrf_token": hidden(page.text, "csrf_token"), **ALICE}
    assert client.post("/register", data=data).status_code == 303
    replay = client.post("/register", data=data)
    assert replay.status_code == 409
    assert 'id="mobile-error"' in replay.text and 'aria-describedby="mobile-hint mobile-error"' in replay.text
    assert "an account with this mobile number exists" in replay.text
    assert site.count(PortalCitizen) == 1
    assert ALICE["id_number"] not in replay.text and ALICE["password"] not in replay.text


@pytest.mark.parametrize(
    ("field", "value", "zh"),
    [("mobile", "12345", "手机号码为 11 位数字"), ("password", "1234567890", "密码为 8 到 128 个字符"),
     ("id_number", ALICE["id_number"][:17] + ("0" if ALICE["id_number"][17] != "0" else "1"), "校验码"),
     ("real_name", "", "请填写真实姓名")],
)  # fmt: skip
def test_bad_registration_input_is_a_4xx_message_next_to_its_field(site: Site, field: str, value: str, zh: str) -> None:
    client = site.client()
    answer = register(client, {**ALICE, field: value})
    assert answer.status_code == 422
    assert f'id="{field}-error"' in answer.text and 'aria-invalid="true"' in answer.text
    assert zh in answer.text and 'role="alert"' in answer.text
    assert site.count(PortalCitizen) == 0


def test_a_wrong_password_is_a_401_page_that_does_not_say_which_part(site: Site) -> None:
    client = site.client("en")
    register(client, ALICE)
    answer = post_form(client, "/login", "/login", {"mobile": ALICE["mobile"], "password": "not the password"})
    assert answer.status_code == 401 and "the mobile number or the password is wrong" in answer.text
    assert 'value="13912345678"' in answer.text and "not the password" not in answer.text
    assert not client.cookies.get("yk_session")


# --- cards, binding ------------------------------------------------------------------------------------


def test_binding_a_card_by_its_transaction_then_a_replay_answers_the_same(site: Site) -> None:
    card_with_taps(site.engine)
    client = citizen(site, card=False, lang="en")
    assert 'id="no-cards"' in client.get("/cards").text
    answer = post_form(client, "/cards", "/cards/bind", {"card_asn": ASN.upper(), "amount": "2.50",
                                                          "date": "2026-11-29"})  # fmt: skip
    assert (answer.status_code, answer.headers["location"]) == (303, CARD)
    replay = post_form(client, "/cards", "/cards/bind", {"card_asn": ASN, "amount": "2.5", "date": "2026-11-29"})
    assert (replay.status_code, replay.headers["location"]) == (303, CARD)
    assert site.count(PortalCardBinding) == 1
    assert ASN in client.get("/cards").text


@pytest.mark.parametrize(
    ("data", "field", "status"),
    [({"card_asn": "123"}, "card_asn", 422), ({"amount": "abc"}, "amount", 422), ({"amount": "2.505"}, "amount", 422),
     ({"amount": "-2"}, "amount", 422), ({"date": "29/11/2026"}, "date", 422), ({"date": "2026-02-30"}, "date", 422),
     ({"issuer_id": "zz"}, "issuer_id", 422), ({"amount": "9.99"}, None, 422)],
)  # fmt: skip
def test_bad_binding_input_is_a_clear_4xx(site: Site, data: dict[str, str], field: str | None, status: int) -> None:
    card_with_taps(site.engine)
    client = citizen(site, card=False, lang="en")
    form = {"card_asn": ASN, "amount": "2.50", "date": "2026-11-29", **data}
    answer = post_form(client, "/cards", "/cards/bind", form)
    assert answer.status_code == status, answer.text
    if field is not None:
        assert f'id="{field}-error"' in answer.text
    else:  # a wrong proof: the form's own error, saying only that
        assert "match none of the card" in answer.text
    assert site.count(PortalCardBinding) == 0


# --- the card page: details, balance, pending loads, history ----------------------------------------------


def pending_load(engine: Engine, load_id: str = "counter-1", amount_fen: int = 700) -> None:
    with Session(engine) as session, session.begin():
        loads.create_pending(session, load_id, ISSUER, ASN, amount_fen, payment_ref=f"pi_{load_id.replace('-', '_')}")


def test_the_card_page_shows_details_the_cleared_balance_and_pending_loads_apart(site: Site) -> None:
    card_with_taps(site.engine)
    pending_load(site.engine)
    client = citizen(site, lang="en")
    page = client.get(CARD)
    assert page.status_code == 200
    text = text_of(page.text)
    assert "Ordinary" in text and "Active" in text and "2036-01-01" in text and ISSUER in text
    shadow = 10_000  # card_with_taps leaves the shadow there
    assert 'id="balance">¥100.00<' in page.text
    assert "Last cleared balance, as of the record cleared at" in text and "+08:00" in text
    assert re.search(r'id="pending-loads">\s*<li>¥7\.00', page.text)
    detail = client.get(f"/api{CARD}").json()
    assert detail["balance_fen"] == shadow and detail["pending_fen"] == 700
    assert [p["amount_fen"] for p in detail["pending_loads"]] == [700]
    assert detail["balance_cleared_at"] is not None and detail["card"]["card_type"] == "ordinary"
    assert client.get("/api/cards").json()["cards"][0]["card_asn"] == ASN


def test_history_filters_by_kind_terminal_merchant_and_dates(site: Site) -> None:
    card_with_taps(site.engine)
    client = citizen(site, lang="en")
    everything = client.get(f"/api{CARD}/history").json()["entries"]
    assert [e["kind"] for e in everything] == ["purchase"] * 4 + ["card_sale"]
    assert [e["amount_fen"] for e in everything] == [-250, -300, -150, -200, 10_900]
    assert everything[0]["terminal_id"] == TERMINAL and everything[0]["merchant"] == "op-1"
    assert everything[0]["tap_time"].startswith("2026-11-29T00:30:00+08:00")

    def amounts(**params: str) -> list[int]:
        answer = client.get(f"/api{CARD}/history", params=params)
        assert answer.status_code == 200, answer.text
        return [e["amount_fen"] for e in answer.json()["entries"]]

    assert amounts(kind="card_sale") == [10_900]
    assert amounts(kind="load") == []
    assert amounts(terminal=TERMINAL.upper()) == [-250, -300, -150, -200]
    assert amounts(terminal="000000000000") == []
    assert amounts(merchant="op-1") == [-250, -300, -150, -200]
    assert amounts(merchant="nobody") == []
    today = dt.datetime.now(dt.timezone(dt.timedelta(hours=8))).date()
    assert len(amounts(**{"from": today.isoformat(), "to": today.isoformat()})) == 5
    assert amounts(**{"to": (today - dt.timedelta(days=1)).isoformat()}) == []
    page = client.get(CARD, params={"kind": "card_sale"})
    assert page.status_code == 200 and "Card sale" in page.text and "¥109.00" in page.text
    assert 'href="/cards/' + ISSUER + "/" + ASN + '/history.csv?kind=card_sale"' in page.text


def test_history_pages_by_keyset_visit_every_entry_once(site: Site) -> None:
    card_with_taps(site.engine)
    client = citizen(site)
    seen: list[str] = []
    cursor: str | None = None
    for _ in range(10):
        params = {"limit": "2"} | ({"cursor": cursor} if cursor else {})
        body = client.get(f"/api{CARD}/history", params=params).json()
        assert len(body["entries"]) <= 2
        seen += [e["transfer_id"] for e in body["entries"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == 5 == len(set(seen))
    page = client.get(CARD, params={"kind": "purchase"})
    assert 'id="history-next"' not in page.text  # 4 rows, a page of 50


@pytest.mark.parametrize(
    "params",
    [{"from": "2026-13-01"}, {"from": "yesterday"}, {"from": "2026-12-02", "to": "2026-12-01"}, {"kind": "gift"},
     {"terminal": "t1"}, {"merchant": "=1+1"}, {"limit": "0"}, {"limit": "201"}, {"limit": "ten"},
     {"cursor": "!!"}, {"cursor": "bm90IGEgY3Vyc29y"}, {"from": "2020-01-01", "to": "2026-01-01"}],
)  # fmt: skip
def test_bad_history_parameters_are_a_422_with_a_sentence(site: Site, params: dict[str, str]) -> None:
    card_with_taps(site.engine)
    client = citizen(site, lang="en")
    answer = client.get(f"/api{CARD}/history", params=params)
    assert answer.status_code == 422 and answer.json()["code"] == "E_PORTAL_MALFORMED", answer.text
    assert answer.json()["message"]
    if "limit" not in params:
        page = client.get(CARD, params=params)
        assert page.status_code == 422 and 'role="alert"' in page.text and "There is a problem" in page.text


def test_history_csv_is_every_filtered_row_and_defuses_formulas(site: Site) -> None:
    card_with_taps(site.engine)
    with Session(site.engine) as session, session.begin():
        evil = registry.ensure_operator(session, "evil-shop", name='=HYPERLINK("http://x","go")', kind="merchant")
        card = session.execute(select(Card).where(Card.card_asn == ASN)).scalar_one()
        spec = TransferSpec.single("pos:evil:1", card.account_id, evil.payable_account_id, 100,
                                   int(TransferCode.PURCHASE))  # fmt: skip
        post_transfers(session, [spec])
    client = citizen(site)
    answer = client.get(f"{CARD}/history.csv")
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/csv")
    assert "attachment" in answer.headers["content-disposition"]
    body = answer.content.decode("utf-8")
    assert body.startswith("\ufeffcleared_at,")
    lines = body.lstrip("\ufeff").strip().split("\r\n")
    assert len(lines) == 1 + 6
    assert any("'=HYPERLINK" in line for line in lines) and not any(",=HYPERLINK" in line for line in lines)
    assert any(",-2.50," in line for line in lines) and any(",109.00," in line for line in lines)
    only = client.get(f"{CARD}/history.csv", params={"merchant": "evil-shop"}).content.decode("utf-8")
    assert len(only.strip().split("\r\n")) == 2
    assert client.get(f"{CARD}/history.csv", params={"from": "nope"}).status_code == 422


# --- ownership -------------------------------------------------------------------------------------------------


def test_another_citizens_card_and_top_up_are_not_found(site: Site) -> None:
    card_with_taps(site.engine)
    alice = citizen(site)
    made = post_form(alice, f"{CARD}/topup", f"{CARD}/topup", {"amount": "20"})
    topup_url = made.headers["location"]
    bob = citizen(site, BOB, card=False, lang="en")
    for url in (CARD, f"{CARD}/topup", f"{CARD}/history.csv", topup_url, f"/api{CARD}", f"/api{CARD}/history"):
        answer = bob.get(url)
        assert answer.status_code == 404, url
    assert "no card of yours" in bob.get(CARD).text
    nonce = hidden(alice.get(f"{CARD}/topup").text, "nonce")
    token = hidden(bob.get("/cards").text, "csrf_token")
    assert bob.post(f"{CARD}/topup", data={"amount": "20", "nonce": nonce, "csrf_token": token}).status_code == 404
    assert site.count(PortalTopup) == 1
    assert bob.get("/api/cards").json() == {"cards": []}


@pytest.mark.parametrize("url", ["/cards/xyz/abc", f"/cards/{ISSUER}/{ASN[:-1]}", f"/cards/{ISSUER}/{ASN}g/topup",
                                 "/topups/nope", "/topups/tu_" + "0" * 32, "/api/cards/1/2"])  # fmt: skip
def test_malformed_or_unknown_addresses_are_a_404_with_a_sentence(site: Site, url: str) -> None:
    client = citizen(site, card=False, lang="en")
    answer = client.get(url)
    assert answer.status_code == 404, answer.text
    if not url.startswith("/api"):
        assert 'id="error-text"' in answer.text and "<html" in answer.text


def test_pages_that_need_a_session_redirect_to_login(site: Site) -> None:
    client = site.client()
    for url in ("/cards", CARD, f"{CARD}/topup", "/topups/tu_" + "0" * 32):
        answer = client.get(url)
        assert answer.status_code == 303 and answer.headers["location"].startswith("/login?next=/"), url
    assert client.get("/api/cards").status_code == 401


# --- top-up ------------------------------------------------------------------------------------------------------


def test_the_top_up_form_shows_the_headroom_and_a_double_submit_makes_one_top_up(site: Site) -> None:
    card_with_taps(site.engine)
    client = citizen(site, lang="en")
    form = client.get(f"{CARD}/topup")
    assert 'id="topup-headroom">¥900.00<' in form.text  # anonymous card: 1,000 CNY cap less 100 held
    data = {"csrf_token": hidden(form.text, "csrf_token"), "nonce": hidden(form.text, "nonce"), "amount": "12.5"}
    first = client.post(f"{CARD}/topup", data=data)
    second = client.post(f"{CARD}/topup", data=data)
    assert first.status_code == second.status_code == 303
    assert first.headers["location"] == second.headers["location"]
    with Session(site.engine) as session:
        (row,) = session.execute(select(PortalTopup)).scalars().all()
    assert row.amount_fen == 1250 and first.headers["location"] == f"/topups/{row.topup_id}"
    status = client.get(first.headers["location"])
    assert status.status_code == 200 and 'data-state="created"' in status.text and "¥12.50" in status.text
    again = post_form(client, f"{CARD}/topup", f"{CARD}/topup", {"amount": "12.5"})  # a new form: a new top-up
    assert again.headers["location"] != first.headers["location"] and site.count(PortalTopup) == 2
    assert 'id="topup-headroom">¥875.00<' in client.get(f"{CARD}/topup").text


@pytest.mark.parametrize(
    ("amount", "message"),
    [("abc", "not an amount"), ("", "enter an amount"), ("12.505", "at most two decimals"), ("-5", "negative"),
     ("0", "more than 0.00"), ("0.5", "smallest top-up"), ("1000.01", "largest top-up"), ("950", "may hold at most"),
     ("1e3", "not an amount"), ("٣", "not an amount")],
)  # fmt: skip
def test_bad_top_up_amounts_are_a_clear_4xx_and_make_nothing(site: Site, amount: str, message: str) -> None:
    card_with_taps(site.engine)
    client = citizen(site, lang="en")
    answer = post_form(client, f"{CARD}/topup", f"{CARD}/topup", {"amount": amount})
    assert answer.status_code == 422, answer.text
    assert message in answer.text and 'id="amount-error"' in answer.text
    assert site.count(PortalTopup) == 0


def test_a_top_up_without_its_nonce_is_refused(site: Site) -> None:
    card_with_taps(site.engine)
    client = citizen(site, lang="en")
    token = hidden(client.get(f"{CARD}/topup").text, "csrf_token")
    for nonce in ({}, {"nonce": "short"}, {"nonce": "x" * 65}):
        answer = client.post(f"{CARD}/topup", data={"csrf_token": token, "amount": "20", **nonce})
        assert answer.status_code == 422 and "reload the top-up page" in answer.text
    assert site.count(PortalTopup) == 0


def test_the_test_payment_page_exists_only_in_test_mode(site: Site) -> None:
    card_with_taps(site.engine)
    client = citizen(site)
    made = post_form(client, f"{CARD}/topup", f"{CARD}/topup", {"amount": "20"})
    url = made.headers["location"]
    assert 'id="pay-link"' not in client.get(url).text
    assert client.get(f"{url}/pay").status_code == 404
    token = hidden(client.get("/cards").text, "csrf_token")
    assert client.post(f"{url}/pay", data={"csrf_token": token}).status_code == 404


def test_in_test_mode_pay_confirms_the_intent_at_localstripe_once(
    engine: Engine, tmp_path: Path, localstripe_url: str
) -> None:
    site = make_site(engine, tmp_path, payments_url=localstripe_url, test_mode=True)
    card_with_taps(site.engine)
    client = citizen(site, lang="en")
    made = post_form(client, f"{CARD}/topup", f"{CARD}/topup", {"amount": "20"})
    url = made.headers["location"]
    status = client.get(url)
    assert 'data-state="payment_pending"' in status.text and 'href="' + url + '/pay"' in status.text
    pay_page = client.get(f"{url}/pay")
    assert pay_page.status_code == 200 and "Test mode" in pay_page.text
    token = hidden(pay_page.text, "csrf_token")
    assert client.post(f"{url}/pay", data={}).status_code == 403
    paid = client.post(f"{url}/pay", data={"csrf_token": token})
    assert (paid.status_code, paid.headers["location"]) == (303, url)
    with Session(site.engine) as session:
        intent_id = session.execute(select(PortalTopup.payment_intent_id)).scalar_one()
    assert intent_id is not None
    intent = site.topups.payments.retrieve_intent(intent_id)
    assert intent.status == "succeeded" and intent.amount == 2000
    replay = client.post(f"{url}/pay", data={"csrf_token": token})  # the intent no longer waits: nothing more
    assert replay.status_code == 303
    assert site.topups.payments.retrieve_intent(intent_id).status == "succeeded"


def test_a_fault_behind_a_page_is_a_503_page_never_a_500(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    client = citizen(site, card=False, lang="en")
    pages = site.app.state.portal_pages

    def broken(*_: object) -> None:
        raise RuntimeError("the database went away")

    monkeypatch.setattr(pages.views, "cards", broken)
    answer = client.get("/cards")
    assert answer.status_code == 503 and "Nothing was changed" in answer.text and "went away" not in answer.text
    assert answer.headers["content-type"].startswith("text/html")
