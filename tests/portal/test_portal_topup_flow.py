"""The top-up money path end to end: the portal's routes, a real localstripe, clearing's tables.

localstripe plays the provider and the citizen's browser (``pay``); its signed webhooks are
captured by a small receiver and delivered to the application (FastAPI TestClient), so a test
can replay, forge and reorder them. After every flow: at most one pending load per top-up,
the ledger balanced (``clearing.ledger.trial_balance``), nothing left due in the outbox.
"""

from __future__ import annotations

import datetime as dt
import http.server
import json
import os
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from clearing import accounts, db, registry
from clearing.api import ApiDeps
from clearing.keystore import KeyStore
from clearing.ledger import TransferSpec, post_transfers, trial_balance
from clearing.models import Card, PendingLoad, TransferCode
from portal.errors import Code, PortalError
from portal.models import PortalOutbox, PortalTopup, PortalWebhookEvent
from portal.payments import PaymentsClient, PaymentsConfig
from portal.topup_service import TopupService
from portal.topups import RefundReason
from portal.webhooks import signature_header
from tests.portal.conftest import LOCALSTRIPE_KEY, account_service, bind_directly
from tests.portal.test_portal_payments import pay
from yikatong.app import assemble

ISSUER = "01007120ffffffff"
ASN = "71200000000000000042"
SECRET = "whsec_portal_flow_test"
HOOK_EVENTS = ("payment_intent.succeeded", "payment_intent.payment_failed", "payment_intent.canceled")
WEBHOOK_WAIT_S = 15.0
CITIZEN = {"mobile": "13800138000", "password": "correct horse battery", "real_name": "张三",
           "id_number": "11010519491231002X"}  # fmt: skip


# --- the provider's webhooks, captured ------------------------------------------------------


class _Receiver(http.server.BaseHTTPRequestHandler):
    received: ClassVar[list[tuple[bytes, str]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((body, self.headers.get("Stripe-Signature", "")))
        self.send_response(200)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def hooks(localstripe_url: str) -> Iterator[type[_Receiver]]:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    form = {"url": f"http://127.0.0.1:{server.server_port}/webhooks/payments", "secret": SECRET}
    form.update({f"events[{i}]": e for i, e in enumerate(HOOK_EVENTS)})
    httpx.post(
        f"{localstripe_url}/_config/webhooks/portal_flow",
        content=urllib.parse.urlencode(form),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    ).raise_for_status()
    try:
        yield _Receiver
    finally:
        server.shutdown()
        server.server_close()


def webhook_of(hooks: type[_Receiver], intent_id: str, event_type: str) -> tuple[bytes, str]:
    deadline = time.monotonic() + WEBHOOK_WAIT_S
    while time.monotonic() < deadline:
        for body, header in hooks.received:
            event = json.loads(body)
            if event["type"] == event_type and event["data"]["object"]["id"] == intent_id:
                return body, header
        time.sleep(0.1)
    raise AssertionError(f"localstripe sent no {event_type} for {intent_id} within {WEBHOOK_WAIT_S} s")


def signed(event: dict[str, Any], secret: str = SECRET) -> tuple[bytes, str]:
    body = json.dumps(event).encode()
    return body, signature_header([secret], int(time.time()), body)


def event_for(intent: dict[str, Any], event_type: str, event_id: str) -> dict[str, Any]:
    return {
        "id": event_id,
        "object": "event",
        "type": event_type,
        "created": int(time.time()),
        "data": {"object": intent},
    }


def register_card(engine: Engine, *, balance_fen: int, holder_name: str | None = None, asn: str = ASN) -> None:
    """A card as issuance leaves it: registered, its liability account, its opening balance sold."""
    with Session(engine) as session, session.begin():
        registry.ensure_issuers(session, own_city="xianyang")
        account = accounts.card_liability(session, ISSUER, asn)
        session.add(
            Card(
                issuer_id=ISSUER,
                card_asn=asn,
                card_type="ordinary",
                issued_at=dt.datetime(2026, 11, 1, tzinfo=dt.UTC),
                start_date=dt.date(2026, 1, 1),
                expiry_date=dt.date(2036, 1, 1),
                key_version=1,
                alg_id=0,
                account_id=account,
                shadow_balance_fen=balance_fen,
                holder_name=holder_name,
            )
        )
        session.flush()
        if balance_fen:
            sale = TransferSpec.single(
                f"issue:{asn}",
                accounts.issuer_float(session, ISSUER),
                account,
                balance_fen,
                int(TransferCode.CARD_SALE),
            )
            post_transfers(session, [sale])


@dataclass
class Rig:
    engine: Engine
    service: TopupService
    client: TestClient
    payments: PaymentsClient
    url: str

    def topup(self, amount_fen: object, asn: str = ASN) -> httpx.Response:
        """A top-up by the rig's logged-in citizen, the card bound to them first (the proof is tested elsewhere)."""
        bind_directly(self.engine, CITIZEN["mobile"], ISSUER, asn)
        body = {"card": {"issuer_id": ISSUER, "card_asn": asn}, "amount_fen": amount_fen}
        answer: httpx.Response = self.client.post("/api/topups", json=body)
        return answer

    def deliver(self, body: bytes, header: str | None) -> httpx.Response:
        headers = {"Content-Type": "application/json"} | ({"Stripe-Signature": header} if header is not None else {})
        answer: httpx.Response = self.client.post("/webhooks/payments", content=body, headers=headers)
        return answer

    def loads(self) -> list[PendingLoad]:
        with Session(self.engine) as session:
            return list(session.execute(select(PendingLoad).order_by(PendingLoad.id)).scalars())

    def snapshot(self) -> tuple[Any, ...]:
        with Session(self.engine) as session:
            topups = session.execute(
                select(PortalTopup.topup_id, PortalTopup.state, PortalTopup.paid_fen).order_by(PortalTopup.topup_id)
            ).all()
            outbox = session.execute(select(PortalOutbox.id, PortalOutbox.kind, PortalOutbox.done_at)).all()
            events = session.execute(select(func.count()).select_from(PortalWebhookEvent)).scalar_one()
            loads = session.execute(select(PendingLoad.id, PendingLoad.state)).all()
        return tuple(topups), tuple(outbox), events, tuple(loads)

    def balanced(self) -> None:
        with Session(self.engine) as session:
            trial_balance(session)
            due = session.execute(select(PortalOutbox.kind).where(PortalOutbox.done_at.is_(None))).scalars().all()
            assert due == [], due


@pytest.fixture
def rig(engine: Engine, localstripe_url: str, hooks: type[_Receiver], tmp_path: Path) -> Iterator[Rig]:
    payments = PaymentsClient.connect(PaymentsConfig(localstripe_url, LOCALSTRIPE_KEY, timeout_s=5))
    service = TopupService(sessions=db.session_factory(engine), payments=payments, webhook_secrets=[SECRET])
    keystore = KeyStore.open(tmp_path / "keystore.json", os.urandom(32))
    app = assemble(
        ApiDeps(engine, keystore), service, portal_enabled=True, accounts=account_service(engine), portal_dev=True
    )
    with TestClient(app) as client:
        assert client.post("/api/citizens", json=CITIZEN).status_code == 201
        login = client.post("/api/sessions", json={"mobile": CITIZEN["mobile"], "password": CITIZEN["password"]})
        client.headers["X-CSRF-Token"] = login.json()["csrf_token"]
        yield Rig(engine, service, client, payments, localstripe_url)
    payments.close()


def paid_topup(rig: Rig, hooks: type[_Receiver], amount_fen: int = 5000) -> tuple[dict[str, Any], bytes, str]:
    """A top-up created on the API, paid at localstripe; its signed succeeded webhook (not yet delivered)."""
    created = rig.topup(amount_fen)
    assert created.status_code == 201, created.text
    topup = created.json()
    assert topup["state"] == "payment_pending" and topup["client_secret"] and topup["amount_fen"] == amount_fen
    assert pay(rig.url, topup["payment_intent_id"]).status_code == 200
    body, header = webhook_of(hooks, topup["payment_intent_id"], "payment_intent.succeeded")
    return topup, body, header


# --- the tests -----------------------------------------------------------------------------


def test_a_paid_topup_becomes_one_pending_load_and_a_replay_changes_nothing(rig: Rig, hooks: type[_Receiver]) -> None:
    register_card(rig.engine, balance_fen=2000)
    topup, body, header = paid_topup(rig, hooks)
    answer = rig.deliver(body, header)
    assert answer.status_code == 200 and answer.json() == {"status": "applied"}
    got = rig.client.get(f"/api/topups/{topup['topup_id']}").json()
    assert (got["state"], got["paid_fen"], got["client_secret"]) == ("load_pending", 5000, None)
    (load,) = rig.loads()
    assert (load.id, load.issuer_id, load.card_asn, load.amount_fen, load.state, load.kind) == (
        topup["topup_id"], ISSUER, ASN, 5000, "pending", "topup",
    )  # fmt: skip
    assert load.payment_ref == topup["payment_intent_id"]
    with Session(rig.engine) as session:
        assert load.payer_account_id == accounts.gateway_receivable(session)
    rig.balanced()

    before = rig.snapshot()
    again = rig.deliver(body, header)
    assert again.status_code == 200 and again.json() == {"status": "duplicate"}
    assert rig.snapshot() == before


def test_a_forged_webhook_is_refused_and_changes_nothing(rig: Rig, hooks: type[_Receiver]) -> None:
    register_card(rig.engine, balance_fen=0)
    topup, body, header = paid_topup(rig, hooks)
    before = rig.snapshot()
    forgeries = [
        (body.replace(b'"amount": 5000', b'"amount": 50000') + b" ", header),  # tampered body, real header
        signed(json.loads(body), secret="whsec_not_ours"),  # signed with another secret
        (body, None),  # no signature at all
        (body, "t=1,v1=zz"),  # unreadable signature
    ]
    for forged_body, forged_header in forgeries:
        answer = rig.deliver(forged_body, forged_header)
        assert answer.status_code == 400, answer.text
        assert set(answer.json()) == {"code", "message"} and answer.json()["code"].startswith("E_WEBHOOK_")
    assert rig.snapshot() == before
    assert rig.loads() == [] and rig.client.get(f"/api/topups/{topup['topup_id']}").json()["state"] == "payment_pending"


def test_failure_and_cancel_events_arriving_after_the_success_move_nothing(rig: Rig, hooks: type[_Receiver]) -> None:
    register_card(rig.engine, balance_fen=0)
    topup, body, header = paid_topup(rig, hooks)
    assert rig.deliver(body, header).json() == {"status": "applied"}
    before = rig.snapshot()
    intent = json.loads(body)["data"]["object"]
    # Out of order: an earlier attempt's failure and a cancel, delivered after the success.
    for n, (kind, status) in enumerate(
        [("payment_intent.payment_failed", "requires_payment_method"), ("payment_intent.canceled", "canceled")]
    ):
        late = event_for({**intent, "status": status}, kind, f"evt_late_{n}")
        assert rig.deliver(*signed(late)).json() == {"status": "applied"}
    topups_, outbox, events, loads = rig.snapshot()
    assert (topups_, outbox, loads) == (before[0], before[1], before[3]) and events == before[2] + 2
    assert rig.client.get(f"/api/topups/{topup['topup_id']}").json()["state"] == "load_pending"
    assert [(load.id, load.state) for load in rig.loads()] == [(topup["topup_id"], "pending")]
    rig.balanced()


def test_a_success_that_overtakes_our_own_create_answer_creates_no_second_intent(
    rig: Rig, hooks: type[_Receiver]
) -> None:
    """The create call reached the provider but its answer was lost; the success webhook comes first."""
    register_card(rig.engine, balance_fen=0)
    real = rig.service.payments
    rig.service.payments = PaymentsClient.connect(PaymentsConfig("http://127.0.0.1:9", LOCALSTRIPE_KEY, timeout_s=1))
    created = rig.topup(3000)
    assert created.status_code == 201 and created.json()["state"] == "created"  # the intent is still due
    topup_id = created.json()["topup_id"]
    intent = real.create_intent(topup_id=topup_id, card_id=f"{ISSUER}:{ASN}", amount_fen=3000)  # the lost one
    pay(rig.url, intent.id)
    calls: list[str] = []

    class Counting:
        def __getattr__(self, name: str) -> Any:
            calls.append(name)
            return getattr(real, name)

    rig.service.payments = Counting()  # type: ignore[assignment]
    assert rig.deliver(*webhook_of(hooks, intent.id, "payment_intent.succeeded")).json() == {"status": "applied"}
    assert rig.client.get(f"/api/topups/{topup_id}").json()["state"] == "load_pending"
    assert "create_intent" not in calls  # the create effect was overtaken, not run again
    assert [(load.id, load.payment_ref) for load in rig.loads()] == [(topup_id, intent.id)]
    rig.balanced()


def test_a_second_payment_for_the_same_topup_is_refunded_never_loaded(rig: Rig, hooks: type[_Receiver]) -> None:
    register_card(rig.engine, balance_fen=0)
    topup, body, header = paid_topup(rig, hooks, amount_fen=1200)
    assert rig.deliver(body, header).json() == {"status": "applied"}
    stranger = rig.payments.create_intent(topup_id=topup["topup_id"], card_id=f"{ISSUER}:{ASN}", amount_fen=1200)
    pay(rig.url, stranger.id)
    assert rig.deliver(*webhook_of(hooks, stranger.id, "payment_intent.succeeded")).json() == {"status": "applied"}
    assert [r.status for r in rig.payments.refunds_of(stranger.id)] == ["succeeded"]
    assert rig.payments.refunds_of(topup["payment_intent_id"]) == []
    with Session(rig.engine) as session:
        row = session.get(PortalTopup, topup["topup_id"])
        assert row is not None and row.state == "load_pending"
        assert row.unmatched == [
            {"payment_intent_id": stranger.id, "amount_fen": 1200, "refunded": True, "refunded_fen": 1200}
        ]
    assert len(rig.loads()) == 1
    rig.balanced()


def test_amounts_over_the_card_cap_are_refused_with_the_code(rig: Rig) -> None:
    register_card(rig.engine, balance_fen=95_000)  # anonymous: at most 100,000 fen
    refused = rig.topup(6000)
    assert refused.status_code == 422 and refused.json()["code"] == "E_CARD_BALANCE_LIMIT"
    assert rig.topup(3000).status_code == 201
    # the open top-up counts: 95,000 + 3,000 + 3,000 is over the cap
    assert rig.topup(3000).json()["code"] == "E_CARD_BALANCE_LIMIT"
    assert rig.topup(2000).status_code == 201
    for amount, code in [(50.0, "E_TOPUP_AMOUNT_TYPE"), ("100", "E_TOPUP_AMOUNT_TYPE"), (True, "E_TOPUP_AMOUNT_TYPE"),
                         (99, "E_TOPUP_BELOW_MIN"), (100_001, "E_TOPUP_ABOVE_MAX")]:  # fmt: skip
        answer = rig.topup(amount)
        assert (answer.status_code, answer.json()["code"]) == (422, code), amount
    assert rig.topup(1000, asn="7120" + "0" * 16).json()["code"] == "E_CARD_NOT_FOUND"
    assert rig.client.post("/api/topups", json={"amount_fen": 100}).json()["code"] == "E_PORTAL_MALFORMED"
    assert rig.client.get("/api/topups/tu_nope").json()["code"] == "E_TOPUP_NOT_FOUND"
    assert len(rig.snapshot()[0]) == 2


def test_events_not_ours_are_answered_200_and_ignored(rig: Rig) -> None:
    foreign = {"id": "pi_foreign", "amount": 100, "currency": "cny", "status": "succeeded", "metadata": {}}
    answer = rig.deliver(*signed(event_for(foreign, "payment_intent.succeeded", "evt_foreign")))
    assert answer.json() == {"status": "ignored"}
    other_type = rig.deliver(*signed({"id": "evt_c", "type": "charge.captured", "created": 1, "data": {"object": {}}}))
    assert other_type.json() == {"status": "ignored"}
    for i, topup_id in enumerate(["tu_not_here", "tu_" + "0" * 32]):  # not our shape; our shape, not ours
        unknown_topup = {**foreign, "id": f"pi_unknown{i}", "metadata": {"topup_id": topup_id}}
        assert rig.deliver(*signed(event_for(unknown_topup, "payment_intent.succeeded", f"evt_u{i}"))).json() == {
            "status": "ignored"
        }
    assert rig.loads() == []


def test_the_topup_api_is_off_unless_enabled(engine: Engine, tmp_path: Path) -> None:
    payments = PaymentsClient.connect(PaymentsConfig("http://127.0.0.1:9", LOCALSTRIPE_KEY))
    service = TopupService(sessions=db.session_factory(engine), payments=payments, webhook_secrets=[SECRET])
    app = assemble(ApiDeps(engine, KeyStore.open(tmp_path / "k.json", os.urandom(32))), service)
    client = TestClient(app)
    assert client.post("/api/topups", json={}).status_code == 404
    assert client.post("/webhooks/payments", content=b"{}").json()["code"] == "E_WEBHOOK_SIGNATURE_MISSING"


def test_a_refund_voids_the_load_then_pays_back_once(rig: Rig, hooks: type[_Receiver]) -> None:
    register_card(rig.engine, balance_fen=0)
    topup, body, header = paid_topup(rig, hooks, amount_fen=2500)
    assert rig.deliver(body, header).json() == {"status": "applied"}
    done = rig.service.request_refund(topup["topup_id"], RefundReason.CITIZEN)
    assert (done.state, done.refunded_fen, done.loaded_fen) == ("refunded", 2500, 0)
    assert [(load.id, load.state) for load in rig.loads()] == [(topup["topup_id"], "refunded")]
    refunds = rig.payments.refunds_of(topup["payment_intent_id"])
    assert [(r.status, r.amount) for r in refunds] == [("succeeded", 2500)]
    with pytest.raises(PortalError) as refused:
        rig.service.request_refund(topup["topup_id"], RefundReason.CITIZEN)
    assert refused.value.code is Code.E_TOPUP_NOT_REFUNDABLE
    assert len(rig.payments.refunds_of(topup["payment_intent_id"])) == 1
    rig.balanced()
