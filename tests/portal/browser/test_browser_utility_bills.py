"""A utility bill paid from the purse on the bills' reader page, for real.

Chromium → the portal (which runs the purchase with its own PSAM as the biller's terminal) and
``yikatong reader-agent`` (its purse relay) → pcscd → vpcd → the demo city's social-security card,
served into vpcd's first slot by this process so the test reads its purse. The citizen logs in,
finds the water bill by its account number, pays it from the card on the reader, and opens the
receipt; the bill is paid once, the purse, the shadow balance and the ledger agree, and the
biller's payable holds the amount. axe-core on every page of the journey.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from cardos.card import Card
from clearing import accounts, db
from clearing.ledger import account_balance
from clearing.models import Card as CardRow
from portal.modules.utility_bills.demo import DEMO_ACCOUNTS
from portal.modules.utility_bills.models import UtilityBill
from tests.pcsc_support import Insert, PcscEnv, reader_agent_process
from tests.portal.browser.conftest import City, axe_check, login

pytestmark = pytest.mark.pcsc


def test_a_water_bill_is_found_by_account_and_paid_from_the_purse_on_the_reader(
    page: Any, city: City, pcscd: PcscEnv, vpcd_insert: Insert
) -> None:
    account, _ = DEMO_ACCOUNTS["xianyang-water"]
    card = Card.load(city.live.card_image)
    purse_before = card.balance_fen
    vpcd_insert(card)
    with reader_agent_process(city.url, city.agent_port, pcscd.card_reader):
        login(page)
        page.goto("/")
        page.click("#home-bills")
        page.wait_for_selector("#bills-lookup")
        axe_check(page)
        page.select_option("#biller", "xianyang-water")
        page.fill("#account", account)
        with page.expect_navigation():
            page.click("#bills-find")
        page.wait_for_selector("#bill-results")
        axe_check(page)
        page.click("#bill-results a[data-bill-id] >> nth=0")
        page.wait_for_selector("#bill[data-state='open']")
        bill_id = int(str(page.get_attribute("#bill", "data-bill-id")))
        axe_check(page)
        page.click("#pay-purse")
        page.wait_for_selector("#purse-pay")
        axe_check(page)
        page.click("#purse-pay")
        page.wait_for_selector("#purse-result:not([data-outcome=''])", state="attached", timeout=60_000)
        outcome = page.get_attribute("#purse-result", "data-outcome")
        status = page.inner_text("#purse-status")
        assert outcome == "T_PAID" and page.get_attribute("#purse-result", "data-paid") == "yes", status
        axe_check(page)
        page.click("#purse-receipt")
        page.wait_for_selector("#receipt-no")
        assert page.get_attribute("#receipt-via", "data-via") == "purse"
        axe_check(page)
    engine = db.make_engine(city.settings.database_url)
    with db.session_factory(engine)() as session:
        bill = session.get(UtilityBill, bill_id)
        assert bill is not None and bill.state == "paid" and bill.paid_via == "purse"
        row = session.execute(select(CardRow).where(CardRow.card_asn == city.live.card_asn)).scalar_one()
        ledger = account_balance(session, row.account_id).credit_balance_fen
        payable = account_balance(session, accounts.operator_payable(session, "xianyang-water")).credit_balance_fen
    engine.dispose()
    assert card.balance_fen == purse_before - bill.amount_fen  # charged once, the bill's amount
    assert row.shadow_balance_fen == card.balance_fen == ledger
    assert payable >= bill.amount_fen
