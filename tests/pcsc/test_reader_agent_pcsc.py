"""The whole chain for real: ``yikatong reader-agent`` (its own process) → pcscd → vpcd → emulated card.

The agent is started as a citizen would start it, with ``--origin`` and ``--reader "Virtual PCD
00 00"``; the card is a ``cardos`` card served into vpcd's first slot by this test process
(``vpcd_insert``), so the test can read its purse and pull it mid-load. The test plays the
browser: it asks the portal (the real app under TestClient) for a challenge, the agent for a
signature, fills in the agent's PIN page over HTTP, posts the token to the portal; then it
starts a load at the agent and relays its host calls to the portal, as ``reader.js`` does.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from cardos.card import Card
from cardos.os import TearPlan
from clearing import db, loads, registry
from clearing.api import ApiDeps
from clearing.issuance import issue_card
from clearing.keystore import KeyStore
from portal.card_login import CardLoginService, keystore_anchors
from portal.online_load import OnlineLoadService
from portal.payments import PaymentsClient, PaymentsConfig
from portal.topup_service import TopupService
from tests.pcsc_support import Insert, PcscEnv, reader_agent_process, wait_card_state
from tests.portal.conftest import ALICE, LOCALSTRIPE_KEY, account_service
from tests.portal.test_card_login import ORIGIN, PIN, register_and_login
from tests.portal.test_online_load import TERMINAL, Browser
from tests.portal.test_reader_agent import AgentRig
from yikatong.app import assemble

pytestmark = pytest.mark.pcsc


def free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        return int(probe.getsockname()[1])


@pytest.fixture
def agent_url(pcscd: PcscEnv) -> Iterator[str]:
    """``yikatong reader-agent`` on a free port for ORIGIN and the vpcd card reader, until the test ends."""
    with reader_agent_process(ORIGIN, free_port(), pcscd.card_reader) as url:
        yield url


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    eng = db.ensure_migrated(f"sqlite:///{tmp_path / 'agent_pcsc.db'}")
    yield eng
    eng.dispose()


def portal_app(engine: Engine, keystore: KeyStore) -> Any:
    accounts = account_service(engine)
    payments = PaymentsClient.connect(PaymentsConfig("http://127.0.0.1:9", LOCALSTRIPE_KEY, timeout_s=0.5))
    topups = TopupService(sessions=db.session_factory(engine), payments=payments, webhook_secrets=["whsec_t"])
    card_login = CardLoginService(accounts=accounts, origin=ORIGIN, anchors=keystore_anchors(keystore))
    online = OnlineLoadService(sessions=db.session_factory(engine), keystore=keystore, terminal_id=TERMINAL)
    return assemble(
        ApiDeps(engine, keystore), topups, portal_enabled=True, accounts=accounts, portal_dev=True,
        card_login=card_login, online_load=online,
    )  # fmt: skip


class RemoteAgent(AgentRig):
    """``AgentRig``'s helpers (PIN page, states) against the agent process over HTTP."""

    def __init__(self, url: str) -> None:
        self.client = httpx.Client(base_url=url, timeout=30)  # type: ignore[assignment]
        self.url = url

    def start_sign(self, nonce: str) -> tuple[str, str]:
        answer = self.portal("POST", "/sign", json={"nonce": nonce})
        assert answer.status_code == 201, answer.text
        return answer.json()["request_id"], answer.json()["pin_url"]

    def submit_pin(self, request_id: str, pin: str, *, action: str = "sign", origin: str | None = None) -> Any:
        return super().submit_pin(request_id, pin, action=action, origin=origin or self.url)


def test_card_login_and_an_online_load_through_the_agent_process_pcscd_and_vpcd(
    pcscd: PcscEnv, vpcd_insert: Insert, agent_url: str, engine: Engine, tmp_path: Path
) -> None:
    keystore = KeyStore.open(tmp_path / "keystore.json", os.urandom(32))
    keystore.init(["xianyang"])
    with Session(engine) as session, session.begin():
        registry.ensure_issuers(session, own_city="xianyang")
        image, row = issue_card(
            session, keystore, issuer_id="xianyang", card_type="social_security", pin=PIN, balance_fen=1_000,
            now=dt.datetime.now(dt.UTC),
        )  # fmt: skip
        issuer_id, asn = row.issuer_id, row.card_asn
    card = Card.from_image(image)
    handle = vpcd_insert(card)
    portal = TestClient(portal_app(engine, keystore))
    register_and_login(portal, ALICE)
    agent = RemoteAgent(agent_url)
    assert pcscd.card_reader in agent.portal("GET", "/status").json()["readers"]

    # card login: a wrong PIN first (the page says how many tries are left), then the right one
    nonce = portal.get("/api/card-login/challenge").json()["nonce"]
    request_id, pin_url = agent.start_sign(nonce)
    assert pin_url == f"{agent_url}/pin?request={request_id}"
    wrong = agent.submit_pin(request_id, "000000")
    assert "2 tries left" in wrong.text, wrong.text
    done = agent.submit_pin(request_id, PIN)
    assert 'id="pin-done"' in done.text, done.text
    token = agent.state(request_id)["token"]
    login = portal.post("/api/card-login", json=token)
    assert login.status_code == 201, login.text
    assert login.json()["card"] == {"issuer_id": issuer_id, "card_asn": asn} and login.json()["newly_bound"]
    portal.headers["X-CSRF-Token"] = login.json()["csrf_token"]

    # an online load of a paid top-up, torn after CREDIT FOR LOAD, then settled from the card
    with Session(engine) as session, session.begin():
        loads.create_pending(session, "tu_pcsc", issuer_id, asn, 500, payment_ref="pi_pcsc")
    browser = Browser(agent.client, portal)  # type: ignore[arg-type]
    card.tear = TearPlan(at_apdu=4, phase="after_commit")  # SELECT, READ BINARY, INITIALIZE, CREDIT
    torn = browser.relay(browser.start(card={"issuer_id": issuer_id, "card_asn": asn}))
    card.tear = None
    assert [r["outcome"] for r in torn["report"]["results"]] == ["in_doubt"], torn
    assert card.registers.balance_fen == 1_500
    handle.stop()  # the citizen takes the card off the reader and puts it back
    assert wait_card_state(pcscd.card_reader, present=False)
    again = vpcd_insert(card)
    settled = browser.relay(browser.start(card={"issuer_id": issuer_id, "card_asn": asn}))
    assert settled["state"] == "done", settled
    assert [r["outcome"] for r in settled["report"]["results"]] == ["recovered"]
    assert settled["report"]["balance_fen"] == 1_500 == card.registers.balance_fen  # credited once
    with Session(engine) as session:
        from clearing.models import PendingLoad

        load = session.get(PendingLoad, "tu_pcsc")
        assert load is not None and load.state == "posted"
    # and a second paid top-up loads in one go
    with Session(engine) as session, session.begin():
        loads.create_pending(session, "tu_pcsc2", issuer_id, asn, 250, payment_ref="pi_pcsc2")
    second = browser.relay(browser.start())
    assert [r["outcome"] for r in second["report"]["results"]] == ["loaded"]
    assert card.registers.balance_fen == 1_750
    again.stop()  # leave the slot empty for the fixture's teardown of the first insertion
    assert wait_card_state(pcscd.card_reader, present=False)


def test_the_agent_process_says_there_is_no_card_on_the_reader(pcscd: PcscEnv, agent_url: str) -> None:
    agent = RemoteAgent(agent_url)
    request_id, _ = agent.start_sign("A" * 43 + "=")
    page = agent.submit_pin(request_id, PIN)
    assert 'data-code="E_AGENT_NO_CARD"' in page.text, page.text
    refused = httpx.post(f"{agent_url}/sign", json={"nonce": "A" * 44}, headers={"Origin": "https://evil.example"})
    assert refused.status_code == 403 and "access-control-allow-origin" not in refused.headers
