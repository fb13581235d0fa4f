"""The browser tests' real parts: Debian's Chromium driven by Playwright, the whole app, localstripe.

* **Chromium** is ``/usr/bin/chromium`` (Debian's package, installed by
  ``scripts/install-system-deps``); Playwright only drives it (no browser download). It runs
  headless with the flags this machine's closed network needs.
* **The city** is ``yikatong.demo``'s (cards, two buses, a cleared morning), served by one
  uvicorn server in a thread with the portal on (``yikatong.live_demo.live_settings``), the
  demo citizen registered and its social-security card bound, localstripe's signed webhooks
  pointed at the portal.
* **axe-core** (npm, ``scripts/install-assets``, which copies it to
  ``portal/static/vendor/axe.min.js``) is evaluated in the page through the DevTools protocol
  (the agent's PIN page allows no script at all); ``axe_check`` fails on any serious or
  critical violation.

Missing Chromium, Playwright or the axe asset: the tests skip locally and fail under ``CI=true``.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from tests.conftest import require
from yikatong import live_demo
from yikatong.demo import DemoReport, clearing_server, free_port, run_demo
from yikatong.settings import Settings

CHROMIUM = os.environ.get("YIKATONG_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
AXE_ASSET = Path(__file__).resolve().parents[3] / "portal" / "static" / "vendor" / "axe.min.js"
BLOCKING_IMPACTS = ("serious", "critical")


@dataclass
class City:
    url: str
    settings: Settings
    report: DemoReport
    live: live_demo.LiveCity
    workdir: Path
    agent_port: int  # the reader agent's port, in the pages' CSP (a test that needs it starts it)


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    require(importlib.util.find_spec("playwright") is not None, "playwright is not installed")
    require(shutil.which(CHROMIUM) is not None or Path(CHROMIUM).exists(), f"no Chromium at {CHROMIUM}")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def city(tmp_path_factory: pytest.TempPathFactory, localstripe_url: str) -> Iterator[City]:
    workdir = tmp_path_factory.mktemp("city")
    base = Settings(
        database_url=f"sqlite:///{workdir / 'city.db'}",
        keystore=workdir / "keystore.json",
        kek=SecretStr("33" * 32),
        redis_url=None,
    )
    report = run_demo(base, seed=5, workdir=workdir / "demo", use_pcsc=False)
    port = free_port()
    agent_port = free_port()
    settings = live_demo.live_settings(base, port=port, payments_port=int(localstripe_url.rsplit(":", 1)[1]))
    (workdir / "counter-cards").mkdir()
    settings = settings.model_copy(
        update={
            "portal_reader_agent_url": f"http://127.0.0.1:{agent_port}",
            "portal_replacement_wait_s": 0,  # the waiting period is a setting; these tests do not wait 7 days
            "portal_card_images": workdir / "counter-cards",
        }
    )
    live, _riders = live_demo.prepare(settings, report)
    with clearing_server(settings, port) as url:
        live_demo.point_webhooks(localstripe_url, url, settings.payments_webhook_secrets[0].get_secret_value())
        yield City(url=url, settings=settings, report=report, live=live, workdir=workdir, agent_port=agent_port)


@pytest.fixture
def page(browser: Any, city: City) -> Iterator[Any]:
    context = browser.new_context(locale="zh-CN", base_url=city.url)
    context.set_default_timeout(30_000)  # a shared 2-core machine: generous, never a sleep
    tab = context.new_page()
    try:
        yield tab
    finally:
        context.close()


def axe_check(page: Any) -> None:
    """axe-core over the page as it is now: no serious or critical violation."""
    require(AXE_ASSET.exists(), f"{AXE_ASSET} is missing: run scripts/install-assets")
    if not page.evaluate("typeof window.axe !== 'undefined'"):
        # Through the DevTools protocol, not a <script>: the agent's PIN page allows no script at all.
        page.evaluate(AXE_ASSET.read_text(encoding="utf-8") + "\n;undefined")
    violations = page.evaluate("async () => (await axe.run(document, {resultTypes: ['violations']})).violations")
    blocking = [v for v in violations if v.get("impact") in BLOCKING_IMPACTS]
    summary = "; ".join(f"{v['id']} ({v['impact']}): {v['nodes'][0]['html'][:120]}" for v in blocking)
    assert not blocking, f"axe on {page.url}: {summary}"


def login(page: Any, mobile: str = live_demo.DEMO_MOBILE, password: str = live_demo.DEMO_PASSWORD) -> None:
    page.goto("/login")
    page.get_by_label(re_label("mobile")).fill(mobile)
    page.get_by_label(re_label("password")).fill(password)
    with page.expect_navigation():
        page.click("#login-submit")


def re_label(what: str) -> Any:
    import re

    return re.compile({"mobile": "手机|[Mm]obile", "password": "密码|[Pp]assword"}[what])


def pay_topup(page: Any, city: City, card_asn: str, amount: str, wait_s: float = 20.0) -> str:
    """Top up ``card_asn`` by ``amount`` yuan on the pages and pay it at localstripe; the top-up id once paid."""
    import time

    page.goto("/cards")
    page.click(f"#cards-table a[href$='{card_asn}']")
    page.click("#topup-link")
    page.fill("#amount", amount)
    page.click("#topup-submit")
    page.wait_for_selector("#topup-state")
    topup_id = str(page.inner_text("#topup-id")).strip()
    page.click("#pay-link")
    page.click("#pay-submit")
    deadline = time.monotonic() + wait_s
    while page.get_attribute("#topup-state", "data-state") not in ("paid", "load_pending"):
        assert time.monotonic() < deadline, f"still {page.get_attribute('#topup-state', 'data-state')}"
        time.sleep(0.5)
        page.goto(f"/topups/{topup_id}")
    return topup_id
