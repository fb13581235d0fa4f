"""A citizen logs in with the card and opens the social security record, in Chromium, against the real parts.

The demo city of ``conftest.py`` (its demo citizen's contributions seeded by
``yikatong.live_demo.prepare``, as ``make run`` does), the reader agent as its own process,
pcscd + vpcd serving the demo's social security card (PIN 123456). The journey: with an
account login the record is refused and points to the reader page; card login there; then
from the home page to the record, a statement, its PDF and the public verify page. axe on
every page.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from cardos.card import Card
from tests.pcsc_support import Insert, PcscEnv, reader_agent_process
from tests.portal.browser.conftest import City, axe_check, login

pytestmark = pytest.mark.pcsc


def test_a_citizen_logs_in_with_the_card_and_opens_the_contribution_record(
    page: Any, city: City, pcscd: PcscEnv, vpcd_insert: Insert
) -> None:
    login(page)
    page.goto("/social-security")  # an account login is not enough for a personal record
    page.wait_for_selector("#ss-card-required")
    axe_check(page)
    card = Card.load(city.live.card_image)
    vpcd_insert(card)
    with reader_agent_process(city.url, city.agent_port, pcscd.card_reader):
        page.click("#ss-reader-link")
        page.wait_for_function("document.querySelector('#agent-status').textContent.includes('Virtual PCD')")
        page.click("#card-login")
        page.wait_for_selector("#pin-link", state="visible")
        with page.context.expect_page() as opened:
            page.click("#pin-link")
        pin = opened.value
        pin.wait_for_selector("#pin")
        pin.fill("#pin", city.live.card_pin)
        with pin.expect_navigation():
            pin.click("#pin-submit")
        pin.wait_for_selector("#pin-done")
        page.wait_for_function("document.querySelector('#login-status').textContent.length > 0")
        page.wait_for_function("!document.querySelector('#login-status').textContent.includes('…')", timeout=15_000)
    page.goto("/")
    page.click("#home-social-security")
    page.wait_for_selector("#ss-contributions")
    axe_check(page)
    person = page.inner_text("#ss-person")
    assert re.fullmatch(r"6104\*{10}[0-9X]{4}", person), person
    assert page.locator("#ss-contributions tbody tr").count() == 11  # 2026-01 .. 2026-11 of the demo file
    assert page.inner_text("#ss-balance-pension").startswith("¥")
    assert page.locator("#ss-corrections li").count() == 1  # the demo's correction, with its reason
    page.click("#ss-statement-submit")
    page.wait_for_selector("#ss-code")
    axe_check(page)
    number, code = page.inner_text("#ss-number").strip(), page.inner_text("#ss-code").strip()
    pdf = page.request.get(page.get_attribute("#ss-pdf-link", "href"))
    assert pdf.status == 200 and pdf.body().startswith(b"%PDF-")
    page.goto("/social-security/verify")
    page.fill("#number", number)
    page.fill("#code", code)
    page.click("#ss-verify-submit")
    page.wait_for_selector("#ss-verify-result[data-valid='yes']")
    axe_check(page)
