"""A lost card in Chromium: reported on the portal, refused by a validator at its next poll, replaced at the counter.

One story, every part real: the demo citizen's second card (Liu's senior card, bound here)
pays a fare on a bus validator (in-process reader, the real terminal code, uploading over
HTTP to the served clearing API); the citizen reports it lost on the card's page; the bus
still takes it until its next denylist poll (that tap is real spending), then blocks it; the
journal uploads; a counter clerk made with ``yikatong staff add`` logs in to the staff
console with password and TOTP, finds the card and issues the replacement. The money rule:
what moves to the new card is exactly what is left in the lost card's purse (the oracle),
as one ``BALANCE_MOVE`` transfer, and the ledger balances.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
import sys
import urllib.parse
from typing import Any

import pyotp
from sqlalchemy import select

from cardos.card import Card
from cardos.records import SHANGHAI_TZ
from clearing import db
from clearing.ledger import trial_balance
from clearing.models import Card as CardRow
from clearing.models import Transfer, TransferCode
from fares import load_example_tariff
from portal.models import PortalCardBinding, PortalCitizen
from terminals.config import UploadConfig
from terminals.session import Outcome
from terminals.uploader import Uploader
from tests.portal.browser.conftest import City, axe_check, login
from yikatong import live_demo
from yikatong.demo import make_bus, open_keystore, present

LABEL = "Liu (senior)"
CLERK_PASSWORD = "counter by the drum tower"


def _bind_to_demo_citizen(city: City, asn: str) -> None:
    engine = db.make_engine(city.settings.database_url)
    with db.session_factory(engine)() as session, session.begin():
        citizen = session.scalar(select(PortalCitizen.id).where(PortalCitizen.mobile == live_demo.DEMO_MOBILE))
        session.add(
            PortalCardBinding(citizen_id=citizen, issuer_id="01007120ffffffff", card_asn=asn, how="transaction")
        )
    engine.dispose()


def _now() -> dt.datetime:
    return dt.datetime.now(SHANGHAI_TZ).replace(microsecond=0)


def _clerk(city: City) -> str:
    """``yikatong staff add`` as an operator runs it; the TOTP secret read off the printed URI."""
    s = city.settings
    env = dict(os.environ, YIKATONG_DATABASE_URL=s.database_url, YIKATONG_KEYSTORE=str(s.keystore))
    env["YIKATONG_KEK"] = s.kek.get_secret_value() if s.kek is not None else ""
    done = subprocess.run(
        [sys.executable, "-m", "yikatong.cli", "staff", "add", "--username", "clerk.wang", "--role", "counter_clerk",
         "--password-stdin"],
        input=CLERK_PASSWORD + "\n", capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    uri = re.search(r"otpauth://\S+", done.stdout)
    assert uri is not None, done.stdout
    return urllib.parse.parse_qs(urllib.parse.urlsplit(uri.group(0)).query)["secret"][0]


def test_lost_card_is_blocked_at_the_next_poll_and_replaced_with_its_balance(
    browser: Any, page: Any, city: City
) -> None:
    asn = next(a for name, a, _p, _s in city.report.balances if name == LABEL)
    _bind_to_demo_citizen(city, asn)
    card = Card.load(city.report.workdir / "cards" / f"{asn}.json")
    factory = db.session_factory(db.make_engine(city.settings.database_url))
    stops = ["u_railway_station", "u_bus_station", "u_city_hall"]
    bus = make_bus("bus 9", "1", stops, "712000000109", factory, open_keystore(city.settings), load_example_tariff(),
                   city.workdir, use_pcsc=False)  # fmt: skip
    uploader = Uploader(bus.terminal.journal, UploadConfig(city.url, bus.token), denylist=bus.terminal.denylist)
    try:
        uploader.pull_denylist(bus.terminal_id)
        assert present(bus, card, _now() - dt.timedelta(minutes=20)).outcome is Outcome.PAID

        login(page)
        page.goto(f"/cards/01007120ffffffff/{asn}")
        page.click("#lost-link")
        axe_check(page)
        page.click("#lost-submit")
        page.wait_for_load_state()
        axe_check(page)
        assert asn in page.content()

        # the bus has not polled yet: the card still pays (real spending, cleared later)
        assert present(bus, card, _now()).outcome is Outcome.PAID
        uploader.pull_denylist(bus.terminal_id)  # its next poll
        assert present(bus, card, _now()).outcome is Outcome.BLOCKED
        uploader.upload_pending()
    finally:
        uploader.close()
        bus.terminal.journal.close()
        bus.terminal.denylist.close()
    purse_left = card.balance_fen

    secret = _clerk(city)
    staff = browser.new_context(locale="zh-CN", base_url=city.url)
    try:
        console = staff.new_page()
        console.goto("/staff/login")
        axe_check(console)
        console.fill("#username", "clerk.wang")
        console.fill("#password", CLERK_PASSWORD)
        console.fill("#totp", pyotp.TOTP(secret).now())
        with console.expect_navigation():
            console.click("#staff-login-submit")
        console.goto(f"/staff/cards?q={asn}")
        axe_check(console)
        console.click(f"#card-results a[href*='{asn}']")
        console.wait_for_selector("#staff-card")
        axe_check(console)
        console.click("#replace-submit")
        console.wait_for_selector("#new-card")
        axe_check(console)
        new_asn = console.inner_text("#new-card").strip()
        moved_text = console.inner_text("#moved")
    finally:
        staff.close()

    with factory() as session:
        old = session.scalar(select(CardRow).where(CardRow.card_asn == asn))
        new = session.scalar(select(CardRow).where(CardRow.card_asn == new_asn))
        move = session.get(Transfer, f"move:01007120ffffffff:{asn}")
        assert old is not None and new is not None and move is not None
        assert move.code == int(TransferCode.BALANCE_MOVE) and move.amount_fen == purse_left
        assert new.shadow_balance_fen == purse_left  # to the fen: what the lost purse still held
        assert old.status == "replaced"
        trial_balance(session)
    assert f"{purse_left // 100}.{purse_left % 100:02d}" in moved_text
