"""A citizen in Chromium: register, log in, bind a card, top up through localstripe; axe on every page.

The real parts of ``conftest.py``: Debian's Chromium (Playwright), the demo city served with
the portal on, localstripe delivering its signed webhooks to the portal. Selectors are the
pages' element ids; the assertions read what a person reads (state words, balances) and
what the database holds.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import time
from typing import Any

from sqlalchemy import select

from clearing import db
from clearing.models import PendingLoad
from portal.identity import check_char
from portal.models import PortalCardBinding, PortalTopup
from portal.webhooks import signature_header
from tests.portal.browser.conftest import City, axe_check, login, pay_topup
from yikatong import live_demo

WEBHOOK_WAIT_S = 20.0


def _card_of(city: City, label: str) -> str:
    return next(asn for name, asn, _purse, _shadow in city.report.balances if name == label)


def _last_fare(city: City, label: str) -> tuple[int, dt.date]:
    """The amount and the card's date of the label's last charged tap of the morning."""
    for line in reversed(city.report.taps):
        record = line.result.record
        if line.card == label and record is not None and record.amount_fen > 0:
            return record.amount_fen, line.time.date()
    raise AssertionError(f"{label} paid no fare in the demo morning")


def test_a_citizen_registers_logs_in_and_binds_a_card_by_a_transaction(page: Any, city: City) -> None:
    page.goto("/")
    axe_check(page)
    page.goto("/register")
    axe_check(page)
    first17 = "61040419800202345"
    page.fill("#mobile", "13700001111")
    page.fill("#password", "the Wei river at dusk")
    page.fill("#real_name", "刘备")
    page.fill("#id_number", first17 + check_char(first17))
    page.click("#register-submit")
    page.wait_for_selector("#registered-notice")
    axe_check(page)
    login(page, "13700001111", "the Wei river at dusk")
    page.goto("/cards")
    page.wait_for_selector("#no-cards")
    axe_check(page)
    label = "Zhang (student)"
    asn = _card_of(city, label)
    amount_fen, day = _last_fare(city, label)
    page.fill("#card_asn", "0000" + asn[4:])  # a wrong card number first: refused, nothing bound
    page.fill("#amount", f"{amount_fen // 100}.{amount_fen % 100:02d}")
    page.fill("#date", day.isoformat())
    page.click("#bind-submit")
    page.wait_for_selector("#error-summary")
    axe_check(page)
    page.fill("#card_asn", asn)
    page.fill("#amount", f"{amount_fen // 100}.{amount_fen % 100:02d}")
    page.fill("#date", day.isoformat())
    page.click("#bind-submit")
    page.wait_for_selector("#balance")  # bound: the card's own page
    axe_check(page)
    page.goto("/cards")
    assert asn in page.inner_text("#cards-table")
    engine = db.make_engine(city.settings.database_url)
    with db.session_factory(engine)() as session:
        bound = session.scalars(select(PortalCardBinding.card_asn).where(PortalCardBinding.card_asn == asn)).all()
    engine.dispose()
    assert bound == [asn]


def test_a_top_up_is_paid_at_localstripe_and_waits_for_the_card(page: Any, city: City) -> None:
    login(page)
    asn = city.live.card_asn
    page.goto("/cards/zz/not-a-card")  # a nonsense card path: a page, not a 500
    assert page.locator("h1").count() == 1
    page.goto("/cards")
    page.click(f"#cards-table a[href$='{asn}']")
    page.click("#topup-link")
    axe_check(page)
    page.fill("#amount", "abc")  # not an amount: the form says so
    page.click("#topup-submit")
    page.wait_for_selector("#error-summary")
    page.fill("#amount", "20")
    page.click("#topup-submit")
    page.wait_for_selector("#topup-state")
    axe_check(page)
    topup_id = page.inner_text("#topup-id").strip()
    assert re.fullmatch(r"tu_[0-9a-f]{32}", topup_id)
    page.click("#pay-link")
    axe_check(page)
    page.click("#pay-submit")
    deadline = time.monotonic() + WEBHOOK_WAIT_S
    while page.get_attribute("#topup-state", "data-state") not in ("paid", "load_pending"):
        assert time.monotonic() < deadline, f"still {page.get_attribute('#topup-state', 'data-state')}"
        time.sleep(0.5)
        page.goto(f"/topups/{topup_id}")
    page.wait_for_selector("#reader-link")
    engine = db.make_engine(city.settings.database_url)
    with db.session_factory(engine)() as session:
        topup = session.get(PortalTopup, topup_id)
        load = session.get(PendingLoad, topup_id)
    engine.dispose()
    assert topup is not None and topup.paid_fen == 2000
    assert load is not None and load.amount_fen == 2000 and load.card_asn == asn


def test_a_form_posted_without_its_csrf_token_is_refused(page: Any, city: City) -> None:
    login(page)
    page.goto("/cards")
    page.evaluate("document.querySelector('#bind-form input[name=csrf_token]').value = 'forged'")
    page.fill("#card_asn", city.live.card_asn)
    page.fill("#amount", "1")
    page.fill("#date", "2026-01-01")
    page.click("#bind-submit")
    assert page.locator("h1").count() == 1
    assert page.evaluate("document.readyState") == "complete"
    response = page.request.post("/cards/bind", form={"card_asn": city.live.card_asn, "amount": "1"})
    assert response.status == 403


def test_the_portal_works_in_english_with_the_keyboard_alone(browser: Any, city: City) -> None:
    context = browser.new_context(locale="en-GB", base_url=city.url)
    try:
        page = context.new_page()
        page.goto("/login")
        assert page.locator("html").get_attribute("lang", timeout=5000) in ("en", "en-GB", "en_GB")
        page.keyboard.press("Tab")  # the skip link comes first
        page.focus("#mobile")
        page.keyboard.type(live_demo.DEMO_MOBILE)
        page.keyboard.press("Tab")
        page.keyboard.type(live_demo.DEMO_PASSWORD)
        with page.expect_navigation():
            page.keyboard.press("Enter")
        page.goto("/cards")
        assert page.locator("#cards-table").count() == 1, page.inner_text("main")
        assert city.live.card_asn in page.inner_text("#cards-table")
        axe_check(page)
    finally:
        context.close()


def test_forged_stale_and_replayed_webhooks_are_refused_and_move_nothing(page: Any, city: City) -> None:
    """Against the served portal: a paid top-up, then webhooks a forger or a replayer would send."""
    login(page)
    topup_id = pay_topup(page, city, city.live.card_asn, "3")
    engine = db.make_engine(city.settings.database_url)
    with db.session_factory(engine)() as session:
        before = session.get(PortalTopup, topup_id)
        assert before is not None
        intent, state, paid = before.payment_intent_id, before.state, before.paid_fen
    event = {
        "id": f"evt_browser_{topup_id[3:15]}",
        "object": "event",
        "type": "payment_intent.succeeded",
        "created": int(time.time()),
        "data": {"object": {"id": intent, "object": "payment_intent", "amount": 300, "amount_received": 300,
                            "currency": "cny", "status": "succeeded", "metadata": {"topup_id": topup_id}}},
    }  # fmt: skip
    body = json.dumps(event).encode()
    secret = city.settings.payments_webhook_secrets[0].get_secret_value()
    now = int(time.time())

    def deliver(header: str, content: bytes = body) -> Any:
        return page.request.post(
            "/webhooks/payments", data=content, headers={"Stripe-Signature": header, "Content-Type": "application/json"}
        )

    forged = deliver(signature_header(["whsec_not_ours"], now, body))
    assert forged.status == 400 and forged.json()["code"] == "E_WEBHOOK_SIGNATURE_MISMATCH"
    tampered = deliver(signature_header([secret], now, body), body.replace(b'"amount": 300', b'"amount": 900'))
    assert tampered.status == 400
    stale = deliver(signature_header([secret], now - 3600, body))
    assert stale.status == 400 and stale.json()["code"] == "E_WEBHOOK_TIMESTAMP_STALE"
    first = deliver(signature_header([secret], now, body))
    assert first.status == 200, first.text()
    replayed = deliver(signature_header([secret], now, body))
    assert replayed.status == 200 and replayed.json() == {"status": "duplicate"}
    with db.session_factory(engine)() as session:
        after = session.get(PortalTopup, topup_id)
        loads = session.scalars(select(PendingLoad).where(PendingLoad.id == topup_id)).all()
    engine.dispose()
    assert after is not None and (after.state, after.paid_fen) == (state, paid)
    assert len(loads) == 1 and loads[0].amount_fen == 300


def test_the_pages_fit_a_phone_screen(browser: Any, city: City) -> None:
    """360 CSS px wide (a small Android phone): no page scrolls sideways, axe still passes."""
    context = browser.new_context(locale="zh-CN", base_url=city.url, viewport={"width": 360, "height": 740})
    try:
        page = context.new_page()
        login(page)
        asn = city.live.card_asn
        for path in (
            "/",
            "/cards",
            f"/cards/01007120ffffffff/{asn}",
            f"/cards/01007120ffffffff/{asn}/topup",
            "/reader",
        ):
            page.goto(path)
            overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
            wide = page.evaluate(
                "[...document.querySelectorAll('body *')].filter(e => e.getBoundingClientRect().right > "
                "document.documentElement.clientWidth || e.scrollWidth > e.clientWidth + 1)"
                ".map(e => e.tagName + '#' + e.id + '.' + e.className + ':' + e.scrollWidth + '/' + e.clientWidth)"
                ".slice(0, 6)"
            )
            assert overflow <= 0, f"{path} is {overflow} px wider than the phone: {wide}"
            axe_check(page)
    finally:
        context.close()
