"""A permit application from submission to certificate, in Chromium, against the whole demo city.

The citizen logs in with the account, then with the card on the reader page (the agent, pcscd,
vpcd and the emulated social-security card, as in ``test_browser_reader``); the permits link on
the start page, the form with a PDF; a counter clerk (made with ``yikatong staff add``) accepts,
reviews, grants and issues the certificate in the console; the citizen sees the certificate and
the notices. The permits' day is pinned (``YIKATONG_PERMITS_TODAY``) so the deadlines are known
whatever day the test runs. axe-core on every page.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyotp
import pytest

from cardos.card import Card
from portal.modules.permits.service import TODAY_ENV
from tests.pcsc_support import Insert, PcscEnv
from tests.portal.browser.conftest import City, axe_check, login
from tests.portal.browser.test_browser_lost import CLERK_PASSWORD, _clerk
from tests.portal.browser.test_browser_reader import _enter_pin, _pin_tab, reader_agent

pytestmark = pytest.mark.pcsc
PDF = b"%PDF-1.4\n% a site plan\n%%EOF\n"


def _staff_step(console: Any, step: str) -> None:
    with console.expect_navigation():
        console.click(f"#step-{step}-submit")
    console.wait_for_selector("#permit-state")


def test_a_permit_from_submission_to_certificate(
    page: Any, browser: Any, city: City, pcscd: PcscEnv, vpcd_insert: Insert, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setenv(TODAY_ENV, "2026-09-29")  # the server runs in this process: the permits' today
    vpcd_insert(Card.load(city.live.card_image))
    with reader_agent(city, pcscd.card_reader):
        login(page)
        page.goto("/permits")
        assert page.locator("#card-login-needed").count() == 1  # an account login is not enough
        page.goto("/reader")
        page.wait_for_function("document.querySelector('#agent-status').textContent.includes('Virtual PCD')")
        pin_page = _pin_tab(page)
        _enter_pin(pin_page, city.live.card_pin)
        pin_page.wait_for_selector("#pin-done")
        page.wait_for_function("!document.querySelector('#login-status').textContent.includes('…')", timeout=15_000)
    page.goto("/")
    page.click("#home-permits")
    page.wait_for_selector("#permit-new")
    axe_check(page)
    page.click("#permit-new")
    page.wait_for_selector("#permit-form")
    axe_check(page)
    page.select_option("#kind", "outdoor_sign")
    page.fill("#title", "店招：人民路 12 号")
    plan = tmp_path / "site-plan.pdf"
    plan.write_bytes(PDF)
    page.set_input_files("#documents", str(plan))
    with page.expect_navigation():
        page.click("#permit-submit")
    assert page.get_attribute("#permit-state", "data-state") == "submitted"
    app_id = page.inner_text("#permit-id").strip()
    assert "site-plan.pdf" in page.inner_text("#permit-documents")
    axe_check(page)

    secret = _clerk(city)
    staff = browser.new_context(locale="zh-CN", base_url=city.url)
    try:
        console = staff.new_page()
        console.goto("/staff/login")
        console.fill("#username", "clerk.wang")
        console.fill("#password", CLERK_PASSWORD)
        console.fill("#totp", pyotp.TOTP(secret).now())
        with console.expect_navigation():
            console.click("#staff-login-submit")
        console.click("#nav-permits")
        console.wait_for_selector("#staff-permits")
        axe_check(console)
        console.click(f"#staff-permits a[href='/staff/permits/{app_id}']")
        console.wait_for_selector("#step-accept")
        axe_check(console)
        _staff_step(console, "accept")
        # Sep 29 + 20 working days: Sep 30 1, Oct 1-7 off, Oct 8-10 (Saturday a make-up day) 2-4, ... Nov 2 20
        assert "2026-11-02" in console.inner_text("#decision-due")
        _staff_step(console, "start_review")
        _staff_step(console, "grant")
        assert "2026-10-19" in console.inner_text("#certificate-due")
        _staff_step(console, "issue_certificate")
        assert console.get_attribute("#permit-state", "data-state") == "certificate_issued"
        certificate_no = console.inner_text("#certificate-no").strip()
        console.goto("/staff/permits/dashboard")
        console.wait_for_selector("#permit-dashboard")
        axe_check(console)
    finally:
        staff.close()

    page.goto(f"/permits/{app_id}")
    assert page.get_attribute("#permit-state", "data-state") == "certificate_issued"
    assert certificate_no in page.inner_text("#certificate")
    axe_check(page)
    page.goto("/permits")
    notices = page.inner_text("#permit-notices")
    assert "证件已发放" in notices and "准予许可" in notices, notices
