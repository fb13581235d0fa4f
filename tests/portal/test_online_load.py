"""Online load on the reader page: reader agent → browser relay → portal ``/api/loads`` → ``clearing.loads``.

The chain is the real one but for the browser and PC/SC: the agent's ASGI app runs
``terminals.loading.load_card`` on an ``InProcessReader`` holding a ``cardos`` card issued from a
real key store; ``Browser.relay`` does what ``portal/static/reader.js`` does (fetch each host call
the agent shows, send it to the portal with the session cookie and CSRF token, hand the answer
back); the portal is the real app (``yikatong.app.assemble``) on SQLite.

The tear property: whatever APDU the card is pulled at (before or after that APDU's commit), and
whatever relayed answer is lost, a load is never applied twice and never lost: after any
sequence of failed presentations, the next clean one leaves the purse, the card's ledger
account and its shadow equal to the opening balance plus the load, exactly once.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from cardos.card import Card
from cardos.os import TearPlan
from clearing import db, loads, registry
from clearing.api import ApiDeps
from clearing.issuance import issue_card
from clearing.keystore import KeyStore
from clearing.ledger import account_balance, trial_balance
from clearing.models import Card as CardRow
from clearing.models import PendingLoad
from portal.online_load import OnlineLoadService
from portal.payments import PaymentsClient, PaymentsConfig
from portal.reader_agent import AgentConfig, FixedSource, create_app
from portal.topup_service import TopupService
from terminals.readers import InProcessReader
from tests.portal.conftest import ALICE, BOB, LOCALSTRIPE_KEY, account_service, bind_directly
from tests.portal.test_card_login import ORIGIN, register_and_login
from yikatong.app import assemble

AGENT = "http://127.0.0.1:8465"
TERMINAL = "0000fe000001"
OPENING_FEN = 1_000


@dataclass
class Clock:
    now: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))

    def __call__(self) -> dt.datetime:
        return self.now


def make_portal(engine: Engine, keystore: KeyStore) -> tuple[Any, OnlineLoadService]:
    clock = Clock()
    accounts = account_service(engine, clock=clock)
    payments = PaymentsClient.connect(PaymentsConfig("http://127.0.0.1:9", LOCALSTRIPE_KEY, timeout_s=0.5))
    topups = TopupService(sessions=db.session_factory(engine), payments=payments, webhook_secrets=["whsec_t"])
    online = OnlineLoadService(
        sessions=db.session_factory(engine), keystore=keystore, terminal_id=TERMINAL, clock=clock
    )
    app = assemble(
        ApiDeps(engine, keystore), topups, portal_enabled=True, accounts=accounts, portal_dev=True, online_load=online
    )
    return app, online


class Browser:
    """The reader page's script, in Python: start a load at the agent and relay its host calls."""

    def __init__(self, agent: TestClient, portal: TestClient) -> None:
        self.agent = agent
        self.portal = portal
        self.relayed: list[str] = []

    def start(self, card: dict[str, str] | None = None, terminal_id: str = TERMINAL) -> str:
        body: dict[str, Any] = {"terminal_id": terminal_id}
        if card is not None:
            body["card"] = card
        answer = self.agent.post("/load", json=body, headers={"Origin": ORIGIN})
        assert answer.status_code == 201, answer.text
        return str(answer.json()["request_id"])

    def relay(self, job: str, *, drop: str | None = None, steps_max: int = 40) -> dict[str, Any]:
        """Run the job to its end; ``drop``: the op whose portal answer is lost on the way back."""
        seen = -1
        for _ in range(steps_max):
            state = self.agent.get(f"/load/{job}?wait_ms=5000&seen={seen}", headers={"Origin": ORIGIN}).json()
            seen = state["version"]
            if state["state"] in ("done", "failed", "cancelled"):
                return dict(state)
            call = state["call"]
            if state["state"] != "host_call" or call is None:
                continue
            assert call["path"].startswith("/api/loads/")
            self.relayed.append(call["op"])
            answer = self.portal.request(call["method"], call["path"], json=call["body"])
            if call["op"] == drop:
                drop = None
                continue  # the page lost the answer (tab closed, network): the agent times out
            body = answer.json()
            posted = self.agent.post(
                f"/load/{job}/answer",
                json={"seq": call["seq"], "status": answer.status_code, "body": body},
                headers={"Origin": ORIGIN},
            )
            # 409: the agent stopped waiting for this call (its host timeout) before the answer came
            assert posted.status_code in (204, 409), posted.text
        raise AssertionError("the load job did not end")


@dataclass
class LoadRig:
    engine: Engine
    keystore: KeyStore
    app: Any
    service: OnlineLoadService
    card: Card
    asn: str
    issuer_id: str
    reader: InProcessReader
    agent: TestClient
    browser: Browser

    def pending(self, load_id: str, amount_fen: int, asn: str | None = None) -> None:
        with Session(self.engine) as session, session.begin():
            loads.create_pending(
                session, load_id, self.issuer_id, asn or self.asn, amount_fen, payment_ref=f"pi_{load_id}"
            )

    def state(self, load_id: str) -> str:
        with Session(self.engine) as session:
            load = session.get(PendingLoad, load_id)
            assert load is not None
            return load.state

    def present(self, tear: TearPlan | None = None, drop: str | None = None) -> dict[str, Any]:
        """One presentation; ``drop``: that call's answer is lost, and the agent waits only briefly for it."""
        self.card.tear = tear
        agent = self.agent.app.state.agent  # type: ignore[attr-defined]
        agent.host_timeout_s = 0.2 if drop is not None else 10.0
        try:
            return self.browser.relay(self.browser.start(), drop=drop)
        finally:
            self.card.tear = None

    def agree(self) -> int:
        """Purse, ledger account and shadow agree (and the ledger balances); the purse's balance."""
        with Session(self.engine) as session:
            row = session.execute(select(CardRow).where(CardRow.card_asn == self.asn)).scalar_one()
            ledger = account_balance(session, row.account_id)
            assert ledger.credit_balance_fen == row.shadow_balance_fen == self.card.registers.balance_fen
            trial_balance(session)
        return self.card.registers.balance_fen


def issue(engine: Engine, keystore: KeyStore) -> tuple[Card, str, str]:
    with Session(engine) as session, session.begin():
        registry.ensure_issuers(session, own_city="xianyang")
        image, row = issue_card(
            session, keystore, issuer_id="xianyang", card_type="ordinary", balance_fen=OPENING_FEN,
            now=dt.datetime.now(dt.UTC),
        )  # fmt: skip
        return Card.from_image(image), row.card_asn, row.issuer_id


@pytest.fixture(scope="module")
def keystore(tmp_path_factory: pytest.TempPathFactory) -> KeyStore:
    ks = KeyStore.open(tmp_path_factory.mktemp("ks") / "keystore.json", os.urandom(32))
    ks.init(["xianyang"])
    return ks


def make_rig(engine: Engine, keystore: KeyStore, *, host_timeout_s: float = 10.0) -> LoadRig:
    app, service = make_portal(engine, keystore)
    card, asn, issuer_id = issue(engine, keystore)
    portal = TestClient(app)
    register_and_login(portal, ALICE)
    bind_directly(engine, ALICE["mobile"], issuer_id, asn)
    reader = InProcessReader("desk", card)
    agent_app = create_app(AgentConfig(origin=ORIGIN, host_timeout_s=host_timeout_s), FixedSource(reader))
    agent = TestClient(agent_app, base_url=AGENT)
    return LoadRig(engine, keystore, app, service, card, asn, issuer_id, reader, agent, Browser(agent, portal))


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    eng = db.ensure_migrated(f"sqlite:///{tmp_path / 'load.db'}")
    yield eng
    eng.dispose()


@pytest.fixture
def rig(engine: Engine, keystore: KeyStore) -> LoadRig:
    return make_rig(engine, keystore)


def outcomes(state: dict[str, Any]) -> list[tuple[str, str]]:
    assert state["report"] is not None, state
    return [(r["load_id"], r["outcome"]) for r in state["report"]["results"]]


# --- the flow ------------------------------------------------------------------------------------------


def test_a_paid_top_up_is_loaded_on_the_reader_page_once(rig: LoadRig) -> None:
    rig.pending("tu_one", 500)
    state = rig.present()
    assert state["state"] == "done" and outcomes(state) == [("tu_one", "loaded")]
    assert state["report"]["balance_fen"] == OPENING_FEN + 500 and state["report"]["loaded_fen"] == 500
    assert rig.browser.relayed == ["pending", "authorize", "complete"]
    assert rig.state("tu_one") == "posted" and rig.agree() == OPENING_FEN + 500
    with Session(rig.engine) as session:
        load = session.get(PendingLoad, "tu_one")
        assert load is not None and load.terminal_id == TERMINAL  # the portal's virtual terminal
    again = rig.present()
    assert outcomes(again) == [] and rig.agree() == OPENING_FEN + 500


def test_the_overview_lists_the_citizens_cards_and_what_waits_for_them(rig: LoadRig) -> None:
    rig.pending("tu_two", 300)
    answer = rig.browser.portal.get("/api/loads")
    assert answer.status_code == 200
    body = answer.json()
    assert body["terminal_id"] == TERMINAL
    assert body["cards"] == [
        {"issuer_id": rig.issuer_id, "card_asn": rig.asn,
         "loads": [{"load_id": "tu_two", "amount_fen": 300, "state": "pending", "online_counter": None}]}
    ]  # fmt: skip


def test_a_load_torn_after_credit_is_proved_from_the_card_at_the_next_presentation(rig: LoadRig) -> None:
    rig.pending("tu_torn", 500)
    first = rig.present(TearPlan(at_apdu=4, phase="after_commit"))  # SELECT, READ, INIT, CREDIT
    assert outcomes(first) == [("tu_torn", "in_doubt")]
    assert rig.card.registers.balance_fen == OPENING_FEN + 500 and rig.state("tu_torn") == "authorized"
    second = rig.present()
    assert outcomes(second) == [("tu_torn", "recovered")]
    assert rig.browser.relayed[-2:] == ["pending", "resolve"]
    assert rig.state("tu_torn") == "posted" and rig.agree() == OPENING_FEN + 500


def test_a_load_whose_tac_never_reached_the_portal_is_proved_next_time(rig: LoadRig) -> None:
    rig.pending("tu_lost", 200)
    first = rig.present(drop="complete")  # the card credited; the page lost the portal's answer
    assert outcomes(first) == [("tu_lost", "in_doubt")] or rig.state("tu_lost") == "posted"
    second = rig.present()
    assert rig.state("tu_lost") == "posted" and rig.agree() == OPENING_FEN + 200
    assert outcomes(second) in ([("tu_lost", "recovered")], [])


def test_the_agent_loads_only_the_card_the_page_chose(rig: LoadRig) -> None:
    rig.pending("tu_mine", 100)
    job = rig.browser.start(card={"issuer_id": rig.issuer_id, "card_asn": "0" * 20})
    state = rig.browser.relay(job)
    assert (state["state"], state["error"]["code"]) == ("failed", "E_AGENT_WRONG_CARD")
    assert rig.browser.relayed == [] and rig.state("tu_mine") == "pending"
    job = rig.browser.start(card={"issuer_id": rig.issuer_id, "card_asn": rig.asn})
    assert outcomes(rig.browser.relay(job)) == [("tu_mine", "loaded")]


def test_a_load_job_without_a_card_or_a_reader_says_so(engine: Engine, keystore: KeyStore) -> None:
    rig = make_rig(engine, keystore)
    rig.reader.remove()
    state = rig.browser.relay(rig.browser.start())
    assert (state["state"], state["error"]["code"]) == ("failed", "E_AGENT_NO_CARD")
    assert state["error"]["message_zh"]


# --- what the portal refuses ---------------------------------------------------------------------------


def test_the_portal_serves_loads_only_of_the_citizens_own_cards(engine: Engine, keystore: KeyStore) -> None:
    rig = make_rig(engine, keystore)
    rig.pending("tu_alice", 100)
    bob = TestClient(rig.app)
    register_and_login(bob, BOB)
    path = f"/api/loads/cards/{rig.issuer_id}/{rig.asn}"
    assert bob.get(path).json()["code"] == "E_CARD_NOT_BOUND"
    assert bob.get("/api/loads").json()["cards"] == []
    complete = bob.post("/api/loads/tu_alice/complete", json={"tac": "00" * 4})
    assert (complete.status_code, complete.json()["code"]) == (404, "E_LOAD_NOT_FOUND")
    missing = bob.post("/api/loads/tu_nothing/complete", json={"tac": "00" * 4})
    assert (missing.status_code, missing.json()["code"]) == (404, "E_LOAD_NOT_FOUND")
    nobody = TestClient(rig.app)
    assert nobody.get(path).json()["code"] == "E_SESSION_REQUIRED"
    no_csrf = TestClient(rig.app, cookies=dict(rig.browser.portal.cookies))
    assert no_csrf.post("/api/loads/tu_alice/complete", json={"tac": "00" * 4}).json()["code"] == "E_CSRF"


def test_the_portal_refuses_another_terminal_and_bodies_of_another_shape(rig: LoadRig) -> None:
    rig.pending("tu_shape", 100)
    portal = rig.browser.portal
    other = rig.browser.relay(rig.browser.start(terminal_id="0000aa0000f1"))
    assert outcomes(other)[0][1] == "refused" and "E_LOAD_TERMINAL" in other["report"]["results"][0]["reason"]
    assert rig.state("tu_shape") == "pending"
    for body in ({"tac": "zz"}, {"tac": "00000000", "extra": 1}, [], {"terminal_id": 7}):
        answer = portal.post("/api/loads/tu_shape/resolve", json=body)
        assert (answer.status_code, answer.json()["code"]) == (422, "E_PORTAL_MALFORMED"), body
    text = portal.post(
        "/api/loads/tu_shape/complete", content=b'{"tac":"00000000"}', headers={"Content-Type": "text/plain"}
    )
    assert text.status_code == 422
    never = portal.post("/api/loads/tu_shape/complete", json={"tac": "00000000"})
    assert (never.status_code, never.json()["code"]) == (409, "E_LOAD_REFUSED") and "never authorized" in never.text
    resolve = portal.post("/api/loads/tu_shape/resolve", json={"terminal_id": "0000aa0000f1", "online_counter": 0})
    assert resolve.json()["code"] == "E_LOAD_TERMINAL"


def test_clearings_refusal_comes_back_with_its_code_and_moves_nothing(rig: LoadRig) -> None:
    from clearing import denylist

    rig.pending("tu_denied", 100)
    with Session(rig.engine) as session, session.begin():
        denylist.add(session, rig.issuer_id, rig.asn, "lost")
    state = rig.present()
    [(load_id, outcome)] = outcomes(state)
    assert (load_id, outcome) == ("tu_denied", "refused")
    reason = state["report"]["results"][0]["reason"]
    assert "E_LOAD_REFUSED" in reason and "E_CARD_NOT_ACTIVE" in reason
    assert rig.state("tu_denied") == "pending" and rig.agree() == OPENING_FEN


# --- the tear property -----------------------------------------------------------------------------------

Failure = tuple[str, int, str]  # ("tear", apdu, phase) | ("drop", 0, op)
failures = st.one_of(
    st.tuples(st.just("tear"), st.integers(1, 7), st.sampled_from(["before_commit", "after_commit"])),
    st.tuples(st.just("drop"), st.just(0), st.sampled_from(["pending", "authorize", "complete", "resolve"])),
)


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(amount_fen=st.integers(1, 50_000), presentations=st.lists(failures, min_size=1, max_size=3))
def test_a_load_torn_anywhere_is_never_applied_twice_and_never_lost(
    amount_fen: int, presentations: list[Failure], tmp_path_factory: pytest.TempPathFactory, keystore: KeyStore
) -> None:
    path = tmp_path_factory.mktemp("tear")
    engine = db.ensure_migrated(f"sqlite:///{path / 'tear.db'}")
    try:
        rig = make_rig(engine, keystore)
        rig.pending("tu_prop", amount_fen)
        for kind, apdu, what in presentations:
            if kind == "tear":
                rig.present(TearPlan(at_apdu=apdu, phase=what))  # type: ignore[arg-type]
            else:
                rig.present(drop=what)
            balance = rig.card.registers.balance_fen
            assert balance in (OPENING_FEN, OPENING_FEN + amount_fen)  # never twice
            state = rig.state("tu_prop")
            assert state in ("pending", "authorized", "posted")
            if state == "posted":
                assert rig.agree() == OPENING_FEN + amount_fen
            elif balance == OPENING_FEN:
                rig.agree()  # nothing on the card, nothing posted (a reservation may wait)
        final = rig.present()
        assert final["state"] == "done", final
        assert rig.state("tu_prop") == "posted"  # never lost
        assert rig.agree() == OPENING_FEN + amount_fen
        assert outcomes(rig.present()) == []
    finally:
        engine.dispose()


# A pending load's presentation: SELECT, READ BINARY 0x15, INITIALIZE FOR LOAD, CREDIT FOR LOAD, GET BALANCE.
@pytest.mark.parametrize("phase", ["before_commit", "after_commit"])
@pytest.mark.parametrize("apdu", [1, 2, 3, 4, 5])
def test_a_load_torn_at_each_apdu_is_settled_at_the_next_presentation(
    apdu: int, phase: str, engine: Engine, keystore: KeyStore
) -> None:
    rig = make_rig(engine, keystore)
    rig.pending("tu_each", 700)
    torn = rig.present(TearPlan(at_apdu=apdu, phase=phase))  # type: ignore[arg-type]
    credited = apdu > 4 or (apdu == 4 and phase == "after_commit")
    assert rig.card.registers.balance_fen == OPENING_FEN + (700 if credited else 0)
    if apdu == 4:
        assert outcomes(torn) == [("tu_each", "in_doubt")] and rig.state("tu_each") == "authorized"
    elif apdu == 5:  # the load posted; the card left before GET BALANCE answered
        assert torn["error"]["code"] == "E_AGENT_CARD_REMOVED" and rig.state("tu_each") == "posted"
    else:  # nothing authorized yet
        assert torn["error"]["code"] == "E_AGENT_CARD_REMOVED" and rig.state("tu_each") == "pending"
    rig.present()
    assert rig.state("tu_each") == "posted" and rig.agree() == OPENING_FEN + 700


@pytest.mark.parametrize("phase", ["before_commit", "after_commit"])
@pytest.mark.parametrize("apdu", [1, 2, 3, 4, 5, 6])
def test_a_load_in_doubt_torn_again_while_it_is_resolved_is_still_settled_once(
    apdu: int, phase: str, engine: Engine, keystore: KeyStore
) -> None:
    """In doubt first (torn at CREDIT), then torn at each APDU of the resolving presentation:
    SELECT, READ BINARY, GET TRANSACTION PROVE, (INITIALIZE, CREDIT when not credited), GET BALANCE."""
    rig = make_rig(engine, keystore)
    rig.pending("tu_twice", 300)
    credited_first = phase == "after_commit"
    rig.present(TearPlan(at_apdu=4, phase=phase))  # type: ignore[arg-type]
    assert rig.state("tu_twice") == "authorized"
    rig.present(TearPlan(at_apdu=apdu, phase=phase))  # type: ignore[arg-type]
    assert rig.card.registers.balance_fen in (OPENING_FEN, OPENING_FEN + 300)
    if credited_first:
        assert rig.card.registers.balance_fen == OPENING_FEN + 300
    rig.present()
    assert rig.state("tu_twice") == "posted" and rig.agree() == OPENING_FEN + 300


def test_the_reader_page_carries_the_agent_url_the_terminal_and_no_inline_script(
    engine: Engine, keystore: KeyStore
) -> None:
    import re

    from portal.web import PageConfig

    accounts = account_service(engine)
    payments = PaymentsClient.connect(PaymentsConfig("http://127.0.0.1:9", LOCALSTRIPE_KEY, timeout_s=0.5))
    topups = TopupService(sessions=db.session_factory(engine), payments=payments, webhook_secrets=["whsec_t"])
    online = OnlineLoadService(sessions=db.session_factory(engine), keystore=keystore, terminal_id=TERMINAL)
    config = PageConfig(form_key=bytes(32), secure_cookies=False, reader_agent_url=AGENT)
    app = assemble(ApiDeps(engine, keystore), topups, portal_enabled=True, accounts=accounts, portal_dev=True,
                   online_load=online, reader_page=config)  # fmt: skip
    client = TestClient(app)
    page = client.get("/reader")
    assert page.status_code == 200, page.text
    html = page.text
    assert f'data-agent-url="{AGENT}"' in html and f'data-terminal-id="{TERMINAL}"' in html
    assert 'data-signed-in="no"' in html and 'id="card-login"' not in html  # no card-login service mounted
    for element in ("agent-status", "load-start", "load-status", "load-results", "reader-words"):
        assert f'id="{element}"' in html, element
    scripts = re.findall(r"<script[^>]*>", html)
    assert scripts == ['<script src="/static/reader.js" defer>']
    assert " style=" not in html and "<style" not in html and "onclick" not in html
    register_and_login(client, ALICE)
    assert 'data-signed-in="yes"' in client.get("/reader").text
