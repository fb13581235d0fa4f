"""The reader page for real: Chromium → ``yikatong reader-agent`` → pcscd → vpcd → the emulated card.

The agent is its own process, started as a citizen starts it (``--origin`` the portal,
``--reader "Virtual PCD 00 00"``), on the port the portal's CSP names. The card is the demo
city's social-security card (PIN 123456), served into vpcd's first slot by this process so
the test reads its purse. Flows: card login with a wrong PIN first; a replayed login token
refused; a paid top-up loaded on the reader page onto the card (purse, shadow balance and
ledger agree); a card whose PIN gets blocked.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from typing import Any

import pytest
from sqlalchemy import select

from cardos.card import Card
from clearing import db
from clearing.issuance import issue_card
from clearing.keystore import KeyStore
from clearing.models import Card as CardRow
from clearing.models import PendingLoad
from portal.models import PortalCardBinding, PortalCitizen
from tests.pcsc_support import Insert, PcscEnv, reader_agent_process
from tests.portal.browser.conftest import City, axe_check, login, pay_topup
from yikatong import live_demo

pytestmark = pytest.mark.pcsc
WRONG_PIN = "000000"


def reader_agent(city: City, reader: str) -> contextlib.AbstractContextManager[str]:
    return reader_agent_process(city.url, city.agent_port, reader)


def _pin_tab(page: Any) -> Any:
    """Start card login on the reader page; the agent's PIN page, opened from ``#pin-link``."""
    page.click("#card-login")
    page.wait_for_selector("#pin-link", state="visible")
    with page.context.expect_page() as opened:
        page.click("#pin-link")
    pin = opened.value
    pin.wait_for_selector("#pin")
    return pin


def _enter_pin(pin_page: Any, pin: str) -> None:
    pin_page.fill("#pin", pin)
    with pin_page.expect_navigation():
        pin_page.click("#pin-submit")


def test_card_login_on_the_reader_page_with_a_wrong_pin_first_and_a_replayed_token_refused(
    page: Any, city: City, pcscd: PcscEnv, vpcd_insert: Insert
) -> None:
    card = Card.load(city.live.card_image)
    vpcd_insert(card)
    tokens: list[str] = []
    page.on("request", lambda r: tokens.append(r.post_data or "") if r.url.endswith("/api/card-login") else None)
    with reader_agent(city, pcscd.card_reader):
        login(page)
        page.goto("/reader")
        page.wait_for_function("document.querySelector('#agent-status').textContent.includes('Virtual PCD')")
        axe_check(page)
        pin_page = _pin_tab(page)
        axe_check(pin_page)
        _enter_pin(pin_page, WRONG_PIN)
        assert pin_page.locator("#pin-error").count() == 1, pin_page.content()[-1500:]
        assert pin_page.get_attribute("#pin-error", "data-code") == "E_AGENT_PIN_WRONG"
        assert "2" in pin_page.inner_text("#pin-error")  # "2 tries left"
        assert card.pin_tries_left == 2
        _enter_pin(pin_page, city.live.card_pin)
        pin_page.wait_for_selector("#pin-done")
        page.wait_for_function("document.querySelector('#login-status').textContent.length > 0")
        page.wait_for_function("!document.querySelector('#login-status').textContent.includes('…')", timeout=15_000)
        status = page.inner_text("#login-status")
        assert "卡" in status or "card" in status, status
        assert card.pin_tries_left == 3  # a good PIN resets the counter
    assert len(tokens) == 1 and json.loads(tokens[0])["format"] == "web-eid:1.0"
    replay = page.request.post("/api/card-login", data=tokens[0], headers={"Content-Type": "application/json"})
    assert replay.status in (400, 401, 403), replay.text()
    assert replay.json()["code"].startswith("E_")


def test_a_paid_top_up_is_loaded_onto_the_card_on_the_reader_page(
    page: Any, city: City, pcscd: PcscEnv, vpcd_insert: Insert
) -> None:
    asn = city.live.card_asn
    login(page)
    topup_id = pay_topup(page, city, asn, "15")
    card = Card.load(city.live.card_image)
    purse_before = card.balance_fen
    vpcd_insert(card)
    with reader_agent(city, pcscd.card_reader):
        page.goto("/reader")
        page.wait_for_function("document.querySelector('#agent-status').textContent.includes('Virtual PCD')")
        page.click("#load-start")
        page.wait_for_selector("#load-results li[data-outcome]", timeout=30_000)
        outcomes = page.eval_on_selector_all("#load-results li[data-outcome]", "els => els.map(e => e.dataset.outcome)")
        axe_check(page)
    assert "loaded" in outcomes, outcomes
    engine = db.make_engine(city.settings.database_url)
    with db.session_factory(engine)() as session:
        load = session.get(PendingLoad, topup_id)
        shadow = session.scalar(select(CardRow.shadow_balance_fen).where(CardRow.card_asn == asn))
    engine.dispose()
    assert load is not None and load.state == "posted"
    loaded_fen = sum(row.amount_fen for row in _loads_of(city, asn) if row.state == "posted" and row.id == topup_id)
    assert loaded_fen == 1500
    assert card.balance_fen >= purse_before + 1500 - 0  # every posted load of the card is on its purse
    assert shadow == card.balance_fen


def _loads_of(city: City, asn: str) -> list[PendingLoad]:
    engine = db.make_engine(city.settings.database_url)
    with db.session_factory(engine)() as session:
        rows = list(session.scalars(select(PendingLoad).where(PendingLoad.card_asn == asn)))
    engine.dispose()
    return rows


def test_three_wrong_pins_block_the_card_and_the_page_says_so(
    page: Any, city: City, pcscd: PcscEnv, vpcd_insert: Insert
) -> None:
    engine = db.make_engine(city.settings.database_url)
    keystore = KeyStore.from_settings(city.settings)
    with db.session_factory(engine)() as session, session.begin():
        image, row = issue_card(
            session, keystore, issuer_id="xianyang", card_type="social_security", pin="654321", balance_fen=100,
            now=dt.datetime.now(dt.UTC) - dt.timedelta(days=1),
        )  # fmt: skip
        citizen = session.scalar(select(PortalCitizen.id).where(PortalCitizen.mobile == live_demo.DEMO_MOBILE))
        session.add(
            PortalCardBinding(citizen_id=citizen, issuer_id=row.issuer_id, card_asn=row.card_asn, how="transaction")
        )
    engine.dispose()
    card = Card.from_image(image)
    vpcd_insert(card)
    with reader_agent(city, pcscd.card_reader):
        login(page)
        page.goto("/reader")
        page.wait_for_function("document.querySelector('#agent-status').textContent.includes('Virtual PCD')")
        pin_page = _pin_tab(page)
        codes = []
        for _ in range(3):
            _enter_pin(pin_page, WRONG_PIN)
            codes.append(pin_page.get_attribute("#pin-error", "data-code"))
        assert codes == ["E_AGENT_PIN_WRONG", "E_AGENT_PIN_WRONG", "E_AGENT_PIN_BLOCKED"], codes
        assert card.pin_tries_left == 0
        axe_check(pin_page)
        page.wait_for_function("document.querySelector('#login-status').textContent.length > 0")
        assert "E_AGENT_PIN_BLOCKED" in page.inner_text("#login-status") or "锁" in page.inner_text("#login-status")
