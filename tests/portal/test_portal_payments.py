"""The PaymentIntent client: against a real localstripe, and against scripted answers for the faults.

localstripe plays the citizen's browser too (``pay``): Stripe.js would attach the card and
confirm the intent; here the test does it with the same API.
"""

from __future__ import annotations

import http.server
import json
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from typing import ClassVar

import httpx
import pytest

from portal import topups
from portal.errors import Code, PortalError
from portal.payments import FormValue, PaymentsClient, PaymentsConfig, RefundTotal, form_encode
from portal.webhooks import topup_event, verify_and_decode
from tests.portal.conftest import LOCALSTRIPE_KEY

CARD = "01007120FFFFFFFF:0000000000000001"
VISA_OK = "4242424242424242"
VISA_DECLINED = "4000000000000341"  # localstripe: attaches, then the charge is declined


@pytest.fixture
def client(localstripe_url: str) -> Iterator[PaymentsClient]:
    c = PaymentsClient.connect(PaymentsConfig(localstripe_url, LOCALSTRIPE_KEY, timeout_s=5))
    yield c
    c.close()


def code_of(call: Callable[[], object]) -> Code:
    with pytest.raises(PortalError) as info:
        call()
    return info.value.code


def pay(url: str, intent_id: str, card_number: str = VISA_OK) -> httpx.Response:
    """What Stripe.js does in the browser: a card payment method, attached, then confirm."""
    auth = {"Authorization": f"Bearer {LOCALSTRIPE_KEY}"}
    card = {"type": "card", "card[number]": card_number, "card[exp_month]": "12", "card[exp_year]": "2030"}
    pm = httpx.post(f"{url}/v1/payment_methods", data={**card, "card[cvc]": "123"}, headers=auth)
    pm.raise_for_status()
    httpx.post(
        f"{url}/v1/payment_intents/{intent_id}", data={"payment_method": pm.json()["id"]}, headers=auth
    ).raise_for_status()
    return httpx.post(f"{url}/v1/payment_intents/{intent_id}/confirm", headers=auth)


# --- form encoding -----------------------------------------------------------------------


def test_form_encoding_is_stripes_bracket_form() -> None:
    params: dict[str, FormValue] = {
        "amount": 5000,
        "currency": "cny",
        "metadata": {"topup_id": "tu_1"},
        "x": [1, {"y": True}],
        "n": None,
    }
    assert form_encode(params) == [
        ("amount", "5000"),
        ("currency", "cny"),
        ("metadata[topup_id]", "tu_1"),
        ("x[0]", "1"),
        ("x[1][y]", "true"),
    ]


def test_form_encoding_refuses_floats() -> None:
    with pytest.raises(TypeError, match="integer fen"):
        form_encode({"amount": 50.0})  # type: ignore[dict-item]


# --- against localstripe -----------------------------------------------------------------


def test_an_intent_is_created_in_cny_fen_tagged_with_card_and_topup(client: PaymentsClient) -> None:
    intent = client.create_intent(topup_id="tu_create", card_id=CARD, amount_fen=5000)
    assert intent.id.startswith("pi_") and intent.client_secret
    assert (intent.amount, intent.currency, intent.status) == (5000, "cny", "requires_payment_method")
    assert intent.metadata == {"topup_id": "tu_create", "card_id": CARD}
    assert client.retrieve_intent(intent.id) == intent


def test_a_paid_intent_is_succeeded_and_refunds_once(client: PaymentsClient, localstripe_url: str) -> None:
    intent = client.create_intent(topup_id="tu_paid", card_id=CARD, amount_fen=12_345)
    assert pay(localstripe_url, intent.id).status_code == 200
    assert client.retrieve_intent(intent.id).status == "succeeded"
    effect = topups.Refund(intent.id, 12_345)

    def refund_once() -> RefundTotal:
        return client.refund_once(
            payment_intent_id=intent.id, amount_fen=12_345, idempotency_key=effect.idempotency_key, topup_id="tu_paid"
        )

    total = refund_once()
    (refund,) = total.refunds
    assert (total.succeeded_fen, total.pending_fen) == (12_345, 0)
    assert (refund.status, refund.amount, refund.currency, refund.payment_intent) == (
        "succeeded",
        12_345,
        "cny",
        intent.id,
    )
    again = refund_once()
    assert [r.id for r in again.refunds] == [refund.id] and again.succeeded_fen == 12_345
    assert [r.id for r in client.refunds_of(intent.id)] == [refund.id]


def test_refund_once_refunds_only_what_earlier_refunds_leave(client: PaymentsClient, localstripe_url: str) -> None:
    """A 1-fen goodwill refund at the dashboard is not the refund: the remainder is refunded, once."""
    intent = client.create_intent(topup_id="tu_partial", card_id=CARD, amount_fen=5000)
    assert pay(localstripe_url, intent.id).status_code == 200
    client.refund(payment_intent_id=intent.id, amount_fen=1, idempotency_key="goodwill", topup_id="tu_partial")
    key = topups.Refund(intent.id, 5000).idempotency_key
    total = client.refund_once(payment_intent_id=intent.id, amount_fen=5000, idempotency_key=key, topup_id="tu_partial")
    assert (total.succeeded_fen, sorted(r.amount for r in total.refunds)) == (5000, [1, 4999])
    again = client.refund_once(payment_intent_id=intent.id, amount_fen=5000, idempotency_key=key, topup_id="tu_partial")
    assert again.succeeded_fen == 5000
    assert sorted(r.amount for r in client.refunds_of(intent.id)) == [1, 4999]


def test_localstripe_ignores_idempotency_keys(client: PaymentsClient) -> None:
    """Pinned because the design relies on it being handled elsewhere (docs/portal.md, "Payments").

    Stripe answers the second create with the first intent; localstripe makes a second one.
    The state machine refunds whichever of them is not the top-up's payment.
    """
    first = client.create_intent(topup_id="tu_twice", card_id=CARD, amount_fen=100)
    second = client.create_intent(topup_id="tu_twice", card_id=CARD, amount_fen=100)
    assert first.id != second.id


def test_a_declined_card_leaves_the_intent_unpaid_and_unrefundable(
    client: PaymentsClient, localstripe_url: str
) -> None:
    intent = client.create_intent(topup_id="tu_declined", card_id=CARD, amount_fen=5000)
    assert pay(localstripe_url, intent.id, VISA_DECLINED).status_code == 402
    assert client.retrieve_intent(intent.id).status == "requires_payment_method"
    call = lambda: client.refund(  # noqa: E731
        payment_intent_id=intent.id, amount_fen=5000, idempotency_key=f"refund:{intent.id}", topup_id="tu_declined"
    )
    assert code_of(call) is Code.E_PAYMENTS_REFUSED


def test_an_unpaid_intent_can_be_canceled(client: PaymentsClient) -> None:
    intent = client.create_intent(topup_id="tu_cancel", card_id=CARD, amount_fen=5000)
    assert client.cancel_intent(intent.id).status == "canceled"


def test_an_unknown_intent_is_not_found(client: PaymentsClient) -> None:
    assert code_of(lambda: client.retrieve_intent("pi_doesnotexist")) is Code.E_PAYMENT_NOT_FOUND


def test_a_refused_key_is_an_auth_error(localstripe_url: str) -> None:
    bad = PaymentsClient.connect(PaymentsConfig(localstripe_url, "pk_not_a_secret_key"))
    assert code_of(lambda: bad.create_intent(topup_id="tu_x", card_id=CARD, amount_fen=100)) is Code.E_PAYMENTS_AUTH


@pytest.mark.parametrize("bad_id", ["pi_../v1/balance", "ch_123", "pi_", "pi_1?x=2", "pi_1/cancel"])
def test_an_intent_id_of_the_wrong_form_never_reaches_a_url(client: PaymentsClient, bad_id: str) -> None:
    assert code_of(lambda: client.retrieve_intent(bad_id)) is Code.E_PAYMENTS_BAD_ID


class _Receiver(http.server.BaseHTTPRequestHandler):
    received: ClassVar[list[tuple[bytes, str | None]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((body, self.headers.get("Stripe-Signature")))
        self.send_response(200)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass


def test_localstripes_signed_webhook_verifies_and_maps_to_the_topup(
    client: PaymentsClient, localstripe_url: str
) -> None:
    """The cross-check of the signature rule: a real localstripe webhook passes ``verify_and_decode``."""
    server = http.server.HTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        secret = "whsec_localstripe_test"
        hook = {"url": f"http://127.0.0.1:{server.server_port}/webhooks/payments", "secret": secret}
        httpx.post(
            f"{localstripe_url}/_config/webhooks/yikatong",
            content=urllib.parse.urlencode({**hook, "events[0]": "payment_intent.succeeded"}),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        ).raise_for_status()
        hook_id = "tu_" + "0123456789abcdef" * 2
        intent = client.create_intent(topup_id=hook_id, card_id=CARD, amount_fen=777)
        pay(localstripe_url, intent.id)
        deadline = time.monotonic() + 10
        while not any(hook_id.encode() in body for body, _ in _Receiver.received) and time.monotonic() < deadline:
            time.sleep(0.1)
        body, header = next(x for x in _Receiver.received if hook_id.encode() in x[0])
        event = verify_and_decode(body, header, [secret], now_s=int(time.time()))
        assert event.type == "payment_intent.succeeded" and json.loads(body)["id"] == event.id
        # localstripe 1.15 sends no amount_received (Stripe does): the webhook falls back to amount.
        sent = json.loads(body)["data"]["object"]
        assert sent["status"] == "succeeded" and "amount_received" not in sent
        assert topup_event(event) == (hook_id, topups.PaymentSucceeded(intent.id, 777, "cny"))
        with pytest.raises(PortalError):
            verify_and_decode(body + b" ", header, [secret], now_s=int(time.time()))
    finally:
        server.shutdown()
        server.server_close()


# --- faults, with scripted answers -------------------------------------------------------


def scripted(handler: Callable[[httpx.Request], httpx.Response]) -> PaymentsClient:
    return PaymentsClient(httpx.Client(base_url="http://payments.test", transport=httpx.MockTransport(handler)), "sk_x")


def intent_json(amount: int = 5000, currency: str = "cny", topup_id: str = "tu_1") -> dict[str, object]:
    return {
        "id": "pi_1",
        "amount": amount,
        "currency": currency,
        "status": "requires_payment_method",
        "metadata": {"topup_id": topup_id},
    }


def test_the_request_is_form_encoded_with_the_topup_id_as_idempotency_key() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=intent_json())

    scripted(handler).create_intent(topup_id="tu_1", card_id=CARD, amount_fen=5000)
    (request,) = seen
    assert request.headers["Idempotency-Key"] == "tu_1"
    assert request.headers["Authorization"] == "Bearer sk_x"
    assert request.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert urllib.parse.parse_qsl(request.content.decode()) == [
        ("amount", "5000"),
        ("currency", "cny"),
        ("metadata[topup_id]", "tu_1"),
        ("metadata[card_id]", CARD),
    ]


@pytest.mark.parametrize(
    ("status", "body", "code"),
    [
        (500, {"error": {"type": "api_error"}}, Code.E_PAYMENTS_UNAVAILABLE),
        (503, b"<html>", Code.E_PAYMENTS_UNAVAILABLE),
        (429, {"error": {"type": "rate_limit_error"}}, Code.E_PAYMENTS_UNAVAILABLE),
        (409, {"error": {"type": "idempotency_error", "code": "idempotency_key_in_use"}}, Code.E_PAYMENTS_IDEMPOTENCY),
        (400, {"error": {"type": "idempotency_error"}}, Code.E_PAYMENTS_IDEMPOTENCY),
        (400, {"error": {"type": "invalid_request_error", "code": "amount_too_small"}}, Code.E_PAYMENTS_REFUSED),
        (402, {"error": {"type": "card_error", "code": "card_declined"}}, Code.E_PAYMENT_DECLINED),
        (401, {"error": {"type": "invalid_request_error"}}, Code.E_PAYMENTS_AUTH),
        (200, b"not json", Code.E_PAYMENTS_BAD_RESPONSE),
        (200, intent_json(amount=4999), Code.E_PAYMENTS_BAD_RESPONSE),
        (200, intent_json(currency="usd"), Code.E_PAYMENTS_BAD_RESPONSE),
        (200, intent_json(topup_id="tu_other"), Code.E_PAYMENTS_BAD_RESPONSE),
    ],
)
def test_answers_map_to_portal_codes(status: int, body: object, code: Code) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=body) if isinstance(body, bytes) else httpx.Response(status, json=body)

    assert code_of(lambda: scripted(handler).create_intent(topup_id="tu_1", card_id=CARD, amount_fen=5000)) is code


def test_timeouts_and_unreachable_servers_are_unavailable() -> None:
    def times_out(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    def refuses(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    for handler in (times_out, refuses):
        with pytest.raises(PortalError) as info:
            scripted(handler).retrieve_intent("pi_1")
        assert info.value.code is Code.E_PAYMENTS_UNAVAILABLE


def test_provider_messages_stay_out_of_our_error_text() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json={"error": {"type": "invalid_request_error", "message": "card 4242 4242 …"}})

    with pytest.raises(PortalError) as info:
        scripted(handler).retrieve_intent("pi_1")
    assert "4242" not in str(info.value)
