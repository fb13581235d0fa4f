"""A utility bill paid from the purse: the portal runs the tap session, the browser relays the card.

The chain is the real one but for the browser and PC/SC: the portal app (``yikatong.app.assemble``
with the bills API) runs ``terminals.session.pos_flow`` with its own emulated PSAM; ``Page.pay``
does what ``portal/static/bills.js`` does (each card command the portal answers goes to the
reader agent's purse relay, whose answer goes back to the portal); the agent's ASGI app holds an
``InProcessReader`` with a ``cardos`` card issued from a real key store. The record is cleared
in-process as a batch of the biller's virtual terminal. SQLite and PostgreSQL (the portal
tests' ``engine``).
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from cardos.card import Card
from cardos.os import TearPlan
from clearing import accounts, db, registry
from clearing.api import ApiDeps
from clearing.ingest import make_ingestor
from clearing.issuance import issue_card
from clearing.keystore import KeyStore
from clearing.ledger import account_balance, trial_balance
from clearing.models import Card as CardRow
from clearing.models import Tap
from portal.modules.utility_bills import bills
from portal.modules.utility_bills.api import mount_bills_api
from portal.modules.utility_bills.demo import seed_demo_bills
from portal.modules.utility_bills.models import UtilityBill, UtilityPurseTap
from portal.modules.utility_bills.purse import PurseRuns
from portal.payments import PaymentsClient, PaymentsConfig
from portal.reader_agent import AgentConfig, FixedSource, create_app
from portal.reader_agent.apdu_relay import purse_command
from portal.topup_service import TopupService
from terminals.readers import InProcessReader
from tests.portal.conftest import ALICE, BOB, LOCALSTRIPE_KEY, account_service, bind_directly
from tests.portal.test_card_login import ORIGIN, register_and_login
from yikatong.app import assemble

AGENT = "http://127.0.0.1:8465"
OPENING_FEN = 20_000


@pytest.fixture(scope="module")
def keystore(tmp_path_factory: pytest.TempPathFactory) -> KeyStore:
    ks = KeyStore.open(tmp_path_factory.mktemp("ks") / "keystore.json", os.urandom(32))
    ks.init(["xianyang"])
    return ks


class Page:
    """The bill page's script, in Python: start a purse run and relay each card command."""

    def __init__(self, agent: TestClient, portal: TestClient) -> None:
        self.agent = agent
        self.portal = portal
        self.commands: list[str] = []

    def pay(
        self, bill_id: int, *, forge: str | None = None, drop: str | None = None, steps_max: int = 60
    ) -> dict[str, Any]:
        """One presentation; ``drop``: the card answers that command, and the page never posts it (tab closed)."""
        relay = self.agent.post("/apdu", json={}, headers={"Origin": ORIGIN})
        assert relay.status_code == 201, relay.text
        rid = relay.json()["request_id"]
        answer = self.portal.post(f"/api/bills/{bill_id}/purse")
        try:
            for _ in range(steps_max):
                if answer.status_code == 409:  # refused before the card: the bill paid, or in payment
                    return {"state": "refused", **answer.json()}
                if answer.status_code == 503:  # the portal failed mid-run (the test breaks its clearing)
                    return {"state": "unavailable", **answer.json()}
                assert answer.status_code in (200, 201), answer.text
                view = answer.json()
                if view["state"] != "card":
                    return dict(view)
                self.commands.append(view["what"])
                sent = self.agent.post(f"/apdu/{rid}/transmit", json={"apdu": view["apdu"]}, headers={"Origin": ORIGIN})
                if drop is not None and view["what"].startswith(drop):
                    return {"state": "abandoned", "what": view["what"]}
                if sent.status_code == 200:
                    card = sent.json()
                    if forge is not None and view["what"].startswith("DEBIT"):
                        card["data"] = forge + card["data"][len(forge) :]  # a forged TAC
                    body = {"seq": view["seq"], "sw": card["sw"], "data": card["data"]}
                else:
                    code = sent.json()["code"]
                    body = {"seq": view["seq"], "error": "card_removed" if code == "E_AGENT_CARD_REMOVED" else "agent"}
                answer = self.portal.post(f"/api/bills/purse/{view['run_id']}", json=body)
            raise AssertionError("the purse run did not end")
        finally:
            self.agent.delete(f"/apdu/{rid}", headers={"Origin": ORIGIN})


@dataclass
class Rig:
    engine: Engine
    card: Card
    asn: str
    issuer_id: str
    portal: TestClient
    page: Page
    bill_ids: list[int]
    runs: PurseRuns

    def bill(self, bill_id: int) -> UtilityBill:
        with Session(self.engine) as session:
            bill = session.get(UtilityBill, bill_id)
            assert bill is not None
            session.expunge(bill)
            return bill

    def agree(self) -> int:
        """Purse == card liability == shadow, the ledger balances; the purse's balance."""
        with Session(self.engine) as session:
            row = session.execute(select(CardRow).where(CardRow.card_asn == self.asn)).scalar_one()
            assert account_balance(session, row.account_id).credit_balance_fen == row.shadow_balance_fen
            assert row.shadow_balance_fen == self.card.registers.balance_fen
            trial_balance(session)
        return self.card.registers.balance_fen

    def payable_fen(self, biller_id: str) -> int:
        with Session(self.engine) as session:
            return account_balance(session, accounts.operator_payable(session, biller_id)).credit_balance_fen


def make_rig(engine: Engine, keystore: KeyStore) -> Rig:
    sessions = db.session_factory(engine)
    with Session(engine) as session, session.begin():
        registry.ensure_issuers(session, own_city="xianyang")
        image, row = issue_card(session, keystore, issuer_id="xianyang", card_type="ordinary",
                                balance_fen=OPENING_FEN, now=dt.datetime.now(dt.UTC))  # fmt: skip
        card, asn, issuer_id = Card.from_image(image), row.card_asn, row.issuer_id
        bill_ids = seed_demo_bills(session, holder_name="欧阳娜娜", today=dt.date.today())
    payments = PaymentsClient.connect(PaymentsConfig("http://127.0.0.1:9", LOCALSTRIPE_KEY, timeout_s=0.5))
    topups = TopupService(sessions=sessions, payments=payments, webhook_secrets=["whsec_t"])
    app = assemble(ApiDeps(engine, keystore), topups, portal_enabled=True, accounts=account_service(engine),
                   portal_dev=True)  # fmt: skip
    runs = PurseRuns(sessions, keystore, make_ingestor(engine))
    mount_bills_api(app, sessions, runs, None)
    portal = TestClient(app)
    register_and_login(portal, ALICE)
    bind_directly(engine, ALICE["mobile"], issuer_id, asn)
    agent = TestClient(
        create_app(AgentConfig(origin=ORIGIN), FixedSource(InProcessReader("desk", card))), base_url=AGENT
    )
    return Rig(engine, card, asn, issuer_id, portal, Page(agent, portal), bill_ids, runs)


@pytest.fixture
def rig(engine: Engine, keystore: KeyStore) -> Rig:
    return make_rig(engine, keystore)


def test_a_bill_paid_from_the_purse_is_cleared_as_the_billers_terminal_and_paid_once(rig: Rig) -> None:
    bill_id = rig.bill_ids[0]
    amount = rig.bill(bill_id).amount_fen
    done = rig.page.pay(bill_id)
    assert done["state"] == "done" and done["outcome"] == "T_PAID", done
    assert done["paid_bill_id"] == bill_id and done["verdict"]["state"] == "cleared"
    paid = rig.bill(bill_id)
    assert paid.state == "paid" and paid.paid_via == "purse" and paid.receipt_no is not None
    assert paid.paid_ref == f"tap:0000fe010001:{1}"
    assert rig.agree() == OPENING_FEN - amount
    assert rig.payable_fen("xianyang-water") == amount
    with Session(rig.engine) as session:
        tap = session.execute(select(Tap).where(Tap.terminal_id == "0000fe010001")).scalar_one()
        assert tap.amount_fen == amount
    # the same bill again: refused before anything reaches the card
    again = rig.page.pay(bill_id)
    assert again["state"] == "refused" and again["code"] == "E_BILL_PAID"
    assert rig.agree() == OPENING_FEN - amount
    assert rig.page.commands == ["SELECT purse", "READ BINARY 17", "INITIALIZE FOR PURCHASE", "DEBIT FOR PURCHASE"]


def test_a_replayed_card_answer_runs_nothing_again(rig: Rig) -> None:
    bill_id = rig.bill_ids[1]
    first = rig.portal.post(f"/api/bills/{bill_id}/purse").json()
    body = {"seq": first["seq"], "sw": 0x6A82, "data": ""}  # not a transit card
    end = rig.portal.post(f"/api/bills/purse/{first['run_id']}", json=body)
    replay = rig.portal.post(f"/api/bills/purse/{first['run_id']}", json=body)
    assert end.json() == replay.json() and end.json()["outcome"] == "T_CARD_INVALID"
    wrong = rig.portal.post(f"/api/bills/purse/{first['run_id']}", json={"seq": 7, "sw": 0x9000})
    assert wrong.status_code == 409 and wrong.json()["code"] == "E_BILL_SESSION_STEP"
    assert rig.bill(bill_id).state == "open"


def test_a_forged_tac_fails_at_clearing_and_the_bill_stays_open(rig: Rig) -> None:
    bill_id = rig.bill_ids[2]
    done = rig.page.pay(bill_id, forge="00000000")
    assert done["state"] == "done" and done["verdict"]["state"] == "rejected", done
    assert done["paid_bill_id"] is None
    assert rig.bill(bill_id).state == "open"
    with Session(rig.engine) as session:
        row = session.scalars(select(UtilityPurseTap).where(UtilityPurseTap.bill_id == bill_id)).one()
        assert row.state == "rejected" and row.verdict_code


def test_a_debit_torn_at_the_card_is_proved_at_the_next_presentation_and_charged_once(rig: Rig) -> None:
    bill_id = rig.bill_ids[0]
    amount = rig.bill(bill_id).amount_fen
    # SELECT, READ 17, INITIALIZE, DEBIT: the card commits the debit, its answer is lost
    rig.card.tear = TearPlan(at_apdu=4, phase="after_commit")
    first = rig.page.pay(bill_id)
    rig.card.tear = None
    assert first["state"] == "done" and first["outcome"] == "T_TAP_AGAIN", first
    assert rig.card.registers.balance_fen == OPENING_FEN - amount and rig.bill(bill_id).state == "open"
    # the bill cannot be paid online or otherwise while the debit is in doubt
    with Session(rig.engine) as session:
        assert (
            session.scalars(select(UtilityPurseTap.state).where(UtilityPurseTap.bill_id == bill_id)).one() == "pending"
        )
    second = rig.page.pay(bill_id)
    assert second["outcome"] == "T_RECOVERED" and second["paid_bill_id"] == bill_id, second
    assert "GET TRANSACTION PROVE" in rig.page.commands
    assert rig.bill(bill_id).state == "paid"
    assert rig.agree() == OPENING_FEN - amount  # charged once


def test_a_debit_refused_before_it_happened_leaves_the_bill_open_and_the_next_pays(rig: Rig) -> None:
    bill_id = rig.bill_ids[3]
    amount = rig.bill(bill_id).amount_fen
    rig.card.tear = TearPlan(at_apdu=4, phase="before_commit")  # the card left before DEBIT committed
    first = rig.page.pay(bill_id)
    rig.card.tear = None
    assert first["outcome"] == "T_TAP_AGAIN"
    assert rig.card.registers.balance_fen == OPENING_FEN
    second = rig.page.pay(bill_id)
    assert second["outcome"] == "T_PAID" and rig.bill(bill_id).state == "paid"
    assert rig.agree() == OPENING_FEN - amount


def test_a_record_committed_when_clearing_failed_is_cleared_before_the_bill_is_paid_again(rig: Rig) -> None:
    bill_id = rig.bill_ids[4]
    amount = rig.bill(bill_id).amount_fen
    working = rig.runs.ingest

    def down(record: object) -> tuple[str, str]:
        raise OSError("the clearing database went away")

    rig.runs.ingest = down
    try:
        broken = rig.page.pay(bill_id)
    finally:
        rig.runs.ingest = working
    assert broken["state"] == "unavailable" and rig.card.registers.balance_fen == OPENING_FEN - amount
    with Session(rig.engine) as session:
        assert session.scalars(select(UtilityPurseTap.state).where(UtilityPurseTap.bill_id == bill_id)).one() == (
            "committed")  # fmt: skip
    again = rig.page.pay(bill_id)  # the next start clears the committed record first: paid, nothing more taken
    assert again["state"] == "refused" and again["code"] == "E_BILL_PAID"
    assert rig.bill(bill_id).state == "paid" and rig.agree() == OPENING_FEN - amount
    assert rig.runs.settle_committed() == 0


def test_a_card_bound_to_someone_else_pays_nothing(engine: Engine, keystore: KeyStore) -> None:
    rig = make_rig(engine, keystore)
    other = TestClient(rig.portal.app)
    register_and_login(other, BOB)
    rig.page.portal = other
    done = rig.page.pay(rig.bill_ids[0])
    assert done["state"] == "failed" and done["code"] == "E_BILL_CARD_NOT_BOUND"
    assert rig.card.registers.balance_fen == OPENING_FEN and rig.bill(rig.bill_ids[0]).state == "open"


@pytest.mark.parametrize(
    ("apdu", "allowed"),
    [
        ("00A4040008A00000063201010500", True),
        ("00B095001E", True),
        ("00B201C417", True),
        ("805C000204", True),
        ("805000020B0100000064112233445566" + "10", False),  # INITIALIZE FOR LOAD
        ("80520000" + "0B" + "00" * 11 + "04", False),  # CREDIT FOR LOAD
        ("0020000006313233343536", False),  # VERIFY
        ("841E000004" + "00" * 4, False),  # APPLICATION BLOCK
        ("00A4040008A00000063201010600", False),  # another AID
        ("00D6950004" + "00" * 4, False),  # UPDATE BINARY
    ],
)
def test_the_agent_relays_purse_commands_only(apdu: str, allowed: bool) -> None:
    assert (purse_command(bytes.fromhex(apdu)) is not None) is allowed


def test_the_agent_refuses_a_command_off_the_whitelist_before_the_card_sees_it(rig: Rig) -> None:
    relay = rig.page.agent.post("/apdu", json={}, headers={"Origin": ORIGIN}).json()["request_id"]
    refused = rig.page.agent.post(f"/apdu/{relay}/transmit", json={"apdu": "0020000006313233343536"},
                                  headers={"Origin": ORIGIN})  # fmt: skip
    assert refused.status_code == 403 and refused.json()["code"] == "E_AGENT_APDU_REFUSED"
    other = rig.page.agent.post(f"/apdu/{relay}/transmit", json={"apdu": "00B095001E"},
                                headers={"Origin": "https://evil.example"})  # fmt: skip
    assert other.status_code == 403 and other.json()["code"] == "E_AGENT_ORIGIN"
    selected = rig.page.agent.post(f"/apdu/{relay}/transmit", json={"apdu": "00A4040008A00000063201010500"},
                                   headers={"Origin": ORIGIN})  # fmt: skip
    assert selected.status_code == 200 and selected.json()["sw"] == 0x9000  # the relay stays open
    assert rig.page.agent.delete(f"/apdu/{relay}", headers={"Origin": ORIGIN}).status_code == 204
    assert rig.page.agent.post("/apdu", json={}, headers={"Origin": ORIGIN}).status_code == 201  # reader released


def test_bills_are_looked_up_by_biller_and_account_with_the_holder_masked(rig: Rig) -> None:
    found = rig.portal.get("/api/bills", params={"biller": "xianyang-water", "account": "W-61040001"})
    assert found.status_code == 200
    rows = found.json()["bills"]
    assert len(rows) == 2 and {r["holder"] for r in rows} == {"欧阳**"}
    assert all(r["account"].endswith("0001") and "W-6104" not in r["account"] for r in rows)
    missing = rig.portal.get("/api/bills", params={"biller": "xianyang-water", "account": "W-00000000"})
    assert missing.status_code == 404 and missing.json()["code"] == "E_BILL_NOT_FOUND"
    bad = rig.portal.get("/api/bills", params={"biller": "nobody", "account": "W-61040001"})
    assert bad.status_code == 404 and bad.json()["code"] == "E_BILL_BILLER_UNKNOWN"
    with Session(rig.engine) as session:
        assert bills.lookup(session, "xianyang-gas", "G-61040001")[0].state == "open"


# --- the tear property ------------------------------------------------------------------------------

_RIGS: dict[int, Rig] = {}
_ACCOUNTS = iter(range(10_000, 99_999))
Failure = tuple[str, int, str]
FAILURES = st.one_of(
    st.tuples(st.just("tear"), st.integers(1, 4), st.sampled_from(["before_commit", "after_commit"])),
    st.tuples(st.just("drop"), st.just(0), st.sampled_from(["INITIALIZE", "DEBIT"])),
)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(failures=st.lists(FAILURES, max_size=3))
def test_any_tears_and_lost_answers_then_a_clean_presentation_pay_the_bill_exactly_once(
    engine: Engine, keystore: KeyStore, failures: list[Failure]
) -> None:
    rig = _RIGS.get(id(engine)) or _RIGS.setdefault(id(engine), make_rig(engine, keystore))
    account = f"P-{next(_ACCOUNTS)}"
    with Session(rig.engine) as session, session.begin():
        bills.import_bills(
            session, "xianyang-gas", f"{','.join(bills.CSV_COLUMNS)}\n{account},王小明,2026-11,100,2026-12-20\n"
        )
        bill_id = session.scalars(select(UtilityBill.id).where(UtilityBill.account_no == account)).one()
    for kind, at_apdu, what in failures:
        if kind == "tear":
            rig.card.tear = TearPlan(at_apdu=at_apdu, phase=what)  # type: ignore[arg-type]
            try:
                rig.page.pay(bill_id)
            finally:
                rig.card.tear = None
        else:
            rig.page.pay(bill_id, drop=what)
        # after every failure: the ledger is what was paid; the purse at most one debit (in doubt) below it
        shadow = _shadow(rig)
        assert shadow == OPENING_FEN - _paid_fen(rig)
        assert rig.card.registers.balance_fen in (shadow, shadow - 100)
    done = rig.page.pay(bill_id)  # a failed presentation may have finished it already (a proved debit)
    assert (done["state"], done.get("outcome") or done.get("code")) in (
        ("done", "T_PAID"), ("done", "T_RECOVERED"), ("refused", "E_BILL_PAID")), done  # fmt: skip
    assert rig.bill(bill_id).state == "paid"
    assert rig.agree() == OPENING_FEN - _paid_fen(rig)
    with Session(rig.engine) as session:
        states = session.scalars(select(UtilityPurseTap.state).where(UtilityPurseTap.bill_id == bill_id)).all()
        assert states.count("cleared") == 1 and "pending" not in states and "committed" not in states


def _paid_fen(rig: Rig) -> int:
    with Session(rig.engine) as session:
        paid = session.scalars(select(UtilityBill.amount_fen).where(UtilityBill.state == "paid")).all()
        return sum(paid)


def _shadow(rig: Rig) -> int:
    with Session(rig.engine) as session:
        row = session.execute(select(CardRow).where(CardRow.card_asn == rig.asn)).scalar_one()
        assert account_balance(session, row.account_id).credit_balance_fen == row.shadow_balance_fen
        return row.shadow_balance_fen
