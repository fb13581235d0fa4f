"""The reader agent in-process: card login end to end, its origin rules, its PIN page, its error words.

The card is issued by ``clearing.issuance`` from a real key store and emulated by ``cardos`` in
an ``InProcessReader`` (the same ``Reader`` protocol the agent drives pyscard through); the
agent is its real ASGI app under TestClient at ``http://127.0.0.1:8465`` (its Host check
takes nothing else); the portal is the real app (``yikatong.app.assemble``) of the card-login
tests. The token the agent returns is posted to ``POST /api/card-login`` as the reader page
posts it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from cardos.card import Card
from cardos.os import TearPlan
from clearing import db
from clearing.keystore import KeyStore
from portal.reader_agent import AgentConfig, FixedSource, create_app
from portal.reader_agent.card_ops import der_length, raw_signature
from portal.reader_agent.errors import CODES, AgentError, Code, from_terminal, pin_refused
from terminals.errors import CardRefused, CardRemoved, ReaderError
from terminals.readers import InProcessReader
from tests.portal.conftest import ALICE
from tests.portal.test_card_login import ORIGIN, PIN, Rig, challenge, make_rig, register_and_login

AGENT = "http://127.0.0.1:8465"
EVIL = "https://portal.yikatong.test.evil.example"


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    eng = db.ensure_migrated(f"sqlite:///{tmp_path / 'agent.db'}")
    yield eng
    eng.dispose()


@pytest.fixture(scope="module")
def keystore(tmp_path_factory: pytest.TempPathFactory) -> KeyStore:
    import os

    ks = KeyStore.open(tmp_path_factory.mktemp("ks") / "keystore.json", os.urandom(32))
    ks.init(["xianyang"])
    return ks


@pytest.fixture
def rig(engine: Engine, keystore: KeyStore, tmp_path: Path) -> Rig:
    return make_rig(engine, keystore, tmp_path)


class AgentRig:
    """The agent's app on an in-process reader; ``portal`` and ``pin`` speak as the two origins do."""

    def __init__(self, reader: InProcessReader | None) -> None:
        self.reader = reader
        self.app = create_app(AgentConfig(origin=ORIGIN), FixedSource(reader))
        self.client = TestClient(self.app, base_url=AGENT)

    def portal(self, method: str, path: str, **kw: Any) -> Any:
        headers = {"Origin": ORIGIN, **kw.pop("headers", {})}
        return self.client.request(method, path, headers=headers, **kw)

    def start_sign(self, nonce: str) -> tuple[str, str]:
        answer = self.portal("POST", "/sign", json={"nonce": nonce})
        assert answer.status_code == 201, answer.text
        body = answer.json()
        assert body["pin_url"] == f"{AGENT}/pin?request={body['request_id']}"
        return body["request_id"], body["pin_url"]

    def pin_page(self, request_id: str) -> Any:
        return self.client.get(f"/pin?request={request_id}")

    def submit_pin(self, request_id: str, pin: str, *, action: str = "sign", origin: str | None = AGENT) -> Any:
        page = self.pin_page(request_id)
        match = re.search(r'name="form_token" value="([^"]+)"', page.text)
        token = match.group(1) if match else ""
        headers = {"Origin": origin} if origin is not None else {}
        return self.client.post(
            "/pin",
            content=f"request={request_id}&form_token={token}&pin={pin}&action={action}",
            headers={"Content-Type": "application/x-www-form-urlencoded", **headers},
        )

    def state(self, request_id: str) -> Any:
        answer = self.portal("GET", f"/sign/{request_id}")
        assert answer.status_code == 200, answer.text
        return answer.json()


def login_through_agent(rig: Rig, agent: AgentRig, portal: TestClient, pin: str = PIN) -> Any:
    request_id, _ = agent.start_sign(challenge(portal))
    done = agent.submit_pin(request_id, pin)
    assert done.status_code == 200 and 'id="pin-done"' in done.text, done.text
    state = agent.state(request_id)
    assert state["state"] == "done"
    return portal.post("/api/card-login", json=state["token"])


# --- card login end to end ---------------------------------------------------------------------------


def test_the_agents_token_logs_the_citizen_in_and_the_portal_never_sees_the_pin(rig: Rig) -> None:
    card, asn = rig.issue()
    agent = AgentRig(InProcessReader("desk", card))
    portal = rig.client()
    register_and_login(portal, ALICE)
    request_id, _ = agent.start_sign(challenge(portal))
    assert agent.state(request_id)["state"] == "waiting_pin"
    page = agent.pin_page(request_id)
    assert page.status_code == 200
    assert ORIGIN in page.text and '<label for="pin">' in page.text and 'id="pin-submit"' in page.text
    assert page.headers["content-security-policy"].startswith("default-src 'none'")
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY" and "<script" not in page.text
    done = agent.submit_pin(request_id, PIN)
    assert 'id="pin-done"' in done.text
    state = agent.state(request_id)
    token = state["token"]
    assert state["state"] == "done" and token["format"] == "web-eid:1.0" and token["algorithm"] == "ES256"
    assert PIN not in str(token)
    answer = portal.post("/api/card-login", json=token)
    assert answer.status_code == 201, answer.text
    assert answer.json()["card"]["card_asn"] == asn and answer.json()["assurance"] == "card"
    # the token is handed out once
    again = agent.portal("GET", f"/sign/{request_id}")
    assert (again.status_code, again.json()["code"]) == (404, "E_AGENT_REQUEST_UNKNOWN")


def test_a_wrong_pin_says_how_many_tries_are_left_and_the_third_blocks_the_pin(rig: Rig) -> None:
    card, _ = rig.issue()
    agent = AgentRig(InProcessReader("desk", card))
    portal = rig.client()
    register_and_login(portal, ALICE)
    request_id, _ = agent.start_sign(challenge(portal))
    first = agent.submit_pin(request_id, "000000")
    assert "2 tries left" in first.text and "还可以再试 2 次" in first.text and 'id="pin"' in first.text
    state = agent.state(request_id)
    assert state["state"] == "waiting_pin"
    assert state["error"]["code"] == "E_AGENT_PIN_WRONG" and "2 tries left" in state["error"]["message"]
    second = agent.submit_pin(request_id, "111111")
    assert "1 try left" in second.text
    third = agent.submit_pin(request_id, "222222")
    assert 'data-code="E_AGENT_PIN_BLOCKED"' in third.text and 'id="pin"' not in third.text
    state = agent.state(request_id)
    assert state["state"] == "failed" and state["error"]["code"] == "E_AGENT_PIN_BLOCKED"
    assert card.auth is not None and card.auth.pin_tries_left == 0
    # a blocked card cannot sign even with the right PIN
    request_id, _ = agent.start_sign(challenge(portal))
    blocked = agent.submit_pin(request_id, PIN)
    assert 'data-code="E_AGENT_PIN_BLOCKED"' in blocked.text


def test_a_pin_of_the_wrong_shape_costs_no_try(rig: Rig) -> None:
    card, _ = rig.issue()
    agent = AgentRig(InProcessReader("desk", card))
    portal = rig.client()
    register_and_login(portal, ALICE)
    request_id, _ = agent.start_sign(challenge(portal))
    for pin in ("12345", "1234567", "12a456", "１２３４５６"):
        page = agent.submit_pin(request_id, pin)
        assert 'data-code="E_AGENT_PIN_FORMAT"' in page.text
    assert card.auth is not None and card.auth.pin_tries_left == 3
    assert login_through_agent(rig, agent, portal).status_code == 201


def test_cancel_on_the_pin_page_ends_the_request(rig: Rig) -> None:
    card, _ = rig.issue()
    agent = AgentRig(InProcessReader("desk", card))
    request_id, _ = agent.start_sign("A" * 43 + "=")
    page = agent.submit_pin(request_id, "", action="cancel")
    assert 'data-code="E_AGENT_CANCELLED"' in page.text
    assert agent.state(request_id)["state"] == "cancelled"


def test_a_new_sign_request_replaces_the_open_one(rig: Rig) -> None:
    card, _ = rig.issue()
    agent = AgentRig(InProcessReader("desk", card))
    first, _ = agent.start_sign("A" * 43 + "=")
    second, _ = agent.start_sign("B" * 43 + "=")
    assert agent.state(first)["state"] == "cancelled"
    assert agent.state(second)["state"] == "waiting_pin"


# --- reader and card errors, in words ----------------------------------------------------------------


def test_no_reader_no_card_and_a_card_removed_leave_the_request_open_to_try_again(rig: Rig) -> None:
    card, _ = rig.issue()
    unplugged = AgentRig(None)
    request_id, _ = unplugged.start_sign("A" * 43 + "=")
    page = unplugged.submit_pin(request_id, PIN)
    assert 'data-code="E_AGENT_NO_READER"' in page.text and "No card reader found" in page.text
    assert unplugged.state(request_id)["state"] == "waiting_pin"

    reader = InProcessReader("desk")
    agent = AgentRig(reader)
    portal = rig.client()
    register_and_login(portal, ALICE)
    request_id, _ = agent.start_sign(challenge(portal))
    page = agent.submit_pin(request_id, PIN)
    assert 'data-code="E_AGENT_NO_CARD"' in page.text and "no card on the reader" in page.text
    reader.insert(card)
    card.tear = TearPlan(at_apdu=3)  # SELECT, READ BINARY, READ BINARY: pulled off while reading the certificate
    page = agent.submit_pin(request_id, PIN)
    card.tear = None
    assert 'data-code="E_AGENT_CARD_REMOVED"' in page.text and "taken off the reader" in page.text
    state = agent.state(request_id)
    assert (state["state"], state["error"]["code"]) == ("waiting_pin", "E_AGENT_CARD_REMOVED")
    assert card.auth is not None and card.auth.pin_tries_left == 3
    page = agent.submit_pin(request_id, PIN)  # put back: it works
    assert 'id="pin-done"' in page.text
    assert portal.post("/api/card-login", json=agent.state(request_id)["token"]).status_code == 201


def test_a_transit_only_card_is_told_it_cannot_log_in(rig: Rig) -> None:
    from sqlalchemy.orm import Session

    from clearing import registry
    from clearing.issuance import issue_card

    with Session(rig.engine) as session, session.begin():
        registry.ensure_issuers(session, own_city="xianyang")
        image, _ = issue_card(session, rig.keystore, issuer_id="xianyang", card_type="ordinary", now=rig.clock.now)
    agent = AgentRig(InProcessReader("desk", Card.from_image(image)))
    request_id, _ = agent.start_sign("A" * 43 + "=")
    page = agent.submit_pin(request_id, PIN)
    assert 'data-code="E_AGENT_NOT_AUTH_CARD"' in page.text
    assert agent.state(request_id)["state"] == "failed"


def test_pin_status_words_become_sentences_with_the_tries_left() -> None:
    assert pin_refused(0x63C2).message.endswith("2 tries left.")
    assert pin_refused(0x63C1).message.endswith("1 try left.")
    assert pin_refused(0x63C0).code is Code.E_AGENT_PIN_BLOCKED
    assert pin_refused(0x6983).code is Code.E_AGENT_PIN_BLOCKED
    assert from_terminal(CardRefused(0x6983, "INTERNAL AUTHENTICATE")).code is Code.E_AGENT_PIN_BLOCKED
    assert from_terminal(CardRefused(0x63C2, "VERIFY")).code is Code.E_AGENT_PIN_WRONG
    assert from_terminal(CardRemoved("gone")).code is Code.E_AGENT_CARD_REMOVED
    assert from_terminal(ReaderError("stuck")).code is Code.E_AGENT_READER_FAILED
    refused = from_terminal(CardRefused(0x6A80, "INTERNAL AUTHENTICATE"))
    assert refused.code is Code.E_AGENT_CARD_REFUSED and "6A80" in refused.message
    for code, info in CODES.items():  # every code has both sentences and an error status
        assert info.zh and info.en and 400 <= info.status < 600, code
        assert AgentError(code).body()["code"] == code.value


def test_der_helpers_refuse_what_is_not_der() -> None:
    assert der_length(bytes.fromhex("3082012a")) == 4 + 0x12A
    assert der_length(bytes.fromhex("3010")) == 0x12
    assert der_length(b"\x04\x10") is None and der_length(b"\x30") is None
    with pytest.raises(AgentError):
        raw_signature(b"\x30\x00")


# --- who may talk to the agent -------------------------------------------------------------------------


def test_another_origin_and_a_missing_origin_are_refused() -> None:
    agent = AgentRig(InProcessReader("desk"))
    for headers in ({"Origin": EVIL}, {}, {"Origin": "null"}, {"Origin": ORIGIN + ":443"}, {"Origin": AGENT}):
        for method, path, body in (
            ("POST", "/sign", {"nonce": "A" * 44}),
            ("POST", "/load", {"terminal_id": "0000fe000001"}),
            ("GET", "/sign/abc", None),
            ("GET", "/load/abc", None),
            ("DELETE", "/sign/abc", None),
        ):
            answer = agent.client.request(method, path, headers=headers, json=body)
            assert (answer.status_code, answer.json()["code"]) == (403, "E_AGENT_ORIGIN"), (headers, path)
            assert "access-control-allow-origin" not in answer.headers
    status = agent.client.get("/status")  # read-only, no Origin: a local tool; no CORS header
    assert status.status_code == 200 and "access-control-allow-origin" not in status.headers
    evil = agent.client.get("/status", headers={"Origin": EVIL})
    assert evil.status_code == 403
    ours = agent.portal("GET", "/status")
    assert ours.headers["access-control-allow-origin"] == ORIGIN and ours.headers["vary"] == "Origin"
    assert ours.json()["readers"] == ["desk"] and ours.json()["origin"] == ORIGIN


def test_a_preflight_from_the_portal_is_answered_with_private_network_access() -> None:
    agent = AgentRig(InProcessReader("desk"))
    asks = {
        "Origin": ORIGIN,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type",
        "Access-Control-Request-Private-Network": "true",
    }
    answer = agent.client.options("/sign", headers=asks)
    assert answer.status_code == 204
    assert answer.headers["access-control-allow-origin"] == ORIGIN
    assert answer.headers["access-control-allow-private-network"] == "true"
    assert "POST" in answer.headers["access-control-allow-methods"]
    assert answer.headers["access-control-allow-headers"].lower() == "content-type"
    refused = agent.client.options("/sign", headers={**asks, "Origin": EVIL})
    assert refused.status_code == 403 and "access-control-allow-origin" not in refused.headers
    assert "access-control-allow-private-network" not in refused.headers
    no_origin = agent.client.options("/sign", headers={k: v for k, v in asks.items() if k != "Origin"})
    assert no_origin.status_code == 403


def test_a_host_other_than_loopback_is_refused_against_dns_rebinding() -> None:
    agent = AgentRig(InProcessReader("desk"))
    for host in ("evil.example:8465", "127.0.0.1:8466", "localhost", "127.0.0.1.nip.io:8465"):
        answer = agent.client.get("/status", headers={"Host": host, "Origin": ORIGIN})
        assert (answer.status_code, answer.json()["code"]) == (421, "E_AGENT_HOST"), host
    assert agent.client.get("/status", headers={"Host": "localhost:8465"}).status_code == 200


def test_the_pin_form_takes_only_its_own_origin_and_its_form_token() -> None:
    agent = AgentRig(InProcessReader("desk"))
    request_id, _ = agent.start_sign("A" * 43 + "=")
    for origin in (ORIGIN, EVIL, None, "null"):
        answer = agent.submit_pin(request_id, PIN, origin=origin)
        assert answer.status_code == 403, origin
    forged = agent.client.post(
        "/pin",
        content=f"request={request_id}&form_token=guess&pin={PIN}&action=sign",
        headers={"Content-Type": "application/x-www-form-urlencoded", "Origin": AGENT},
    )
    assert forged.status_code == 403
    as_json = agent.client.post("/pin", json={"request": request_id}, headers={"Origin": AGENT})
    assert as_json.status_code == 422
    assert agent.state(request_id)["state"] == "waiting_pin"
    unknown = agent.client.get("/pin?request=nope")
    assert unknown.status_code == 404 and 'data-code="E_AGENT_REQUEST_UNKNOWN"' in unknown.text


def test_bodies_of_the_wrong_shape_are_refused_with_a_code() -> None:
    agent = AgentRig(InProcessReader("desk"))
    for body in ({"nonce": "short"}, {"nonce": "A" * 44, "extra": 1}, {"nonce": "<script>" * 4}, [], None):
        answer = agent.portal("POST", "/sign", json=body)
        assert (answer.status_code, answer.json()["code"]) == (422, "E_AGENT_MALFORMED"), body
    text = agent.portal("POST", "/sign", content="nonce=" + "A" * 44, headers={"Content-Type": "text/plain"})
    assert text.status_code == 422
    missing = agent.portal("GET", "/nowhere")
    assert (missing.status_code, missing.json()["code"]) == (404, "E_AGENT_NOT_FOUND")
