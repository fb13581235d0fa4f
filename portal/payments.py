"""A small client of the Stripe-compatible PaymentIntent API (create, retrieve, cancel, refund).

Form-encoded requests with a bearer key, as Stripe takes them; JSON answers decoded with
msgspec into the few fields the top-up flow reads, and checked against what was asked (an
intent for another amount or top-up is ``E_PAYMENTS_BAD_RESPONSE``, never trusted).

Idempotency: ``create_intent`` sends the top-up id as ``Idempotency-Key`` and ``refund`` the
effect's key (``refund:<intent>``), so a retry after a timeout cannot charge or refund twice at
Stripe. localstripe ignores the header (``docs/portal.md``, "Payments"): there a retried create
makes a second intent, which the state machine treats as unmatched and refunds if it is ever
paid, and ``refund_once`` looks for an earlier refund before making one.

Every failure is a ``PortalError``: the service unreachable, timing out, rate limiting or
failing (5xx) is ``E_PAYMENTS_UNAVAILABLE`` (retry with the same key); a refused key is
``E_PAYMENTS_AUTH``; a decline ``E_PAYMENT_DECLINED``. Messages carry the provider's error
type and code, not its message, which may echo what was sent.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, TypeVar

import httpx
import msgspec

from portal.errors import Code, PortalError
from portal.topups import CURRENCY
from portal.webhooks import METADATA_TOPUP_ID

METADATA_CARD_ID: Final = "card_id"
TIMEOUT_S_DEFAULT: Final = 10.0
TEST_PAYMENT_METHOD: Final = "pm_card_visa"  # Stripe's test Visa; test mode only
ID_CHARS_MAX: Final = 255

_INTENT_ID: Final = re.compile(rf"pi_[A-Za-z0-9_]{{1,{ID_CHARS_MAX}}}")

FormValue = str | int | bool | None | Mapping[str, "FormValue"] | Sequence["FormValue"]


def form_encode(params: Mapping[str, FormValue]) -> list[tuple[str, str]]:
    """Stripe's form encoding: ``metadata[topup_id]=…``, ``items[0][x]=…``; ``None`` is left out.

    Floats are refused: amounts are integer fen on the wire as everywhere else.
    """
    out: list[tuple[str, str]] = []

    def walk(key: str, value: FormValue) -> None:
        if value is None:
            return
        if isinstance(value, bool):
            out.append((key, "true" if value else "false"))
        elif isinstance(value, int):
            out.append((key, str(value)))
        elif isinstance(value, str):
            out.append((key, value))
        elif isinstance(value, Mapping):
            for k, v in value.items():
                walk(f"{key}[{k}]", v)
        elif isinstance(value, Sequence):
            for i, v in enumerate(value):
                walk(f"{key}[{i}]", v)
        else:
            raise TypeError(f"{key}: {type(value).__name__} is not form-encodable (amounts are integer fen)")

    for k, v in params.items():
        walk(k, v)
    return out


class PaymentIntent(msgspec.Struct, frozen=True):
    id: str
    amount: int
    currency: str
    status: str
    client_secret: str | None = None
    metadata: dict[str, str] = {}


class RefundObject(msgspec.Struct, frozen=True):
    id: str
    amount: int
    currency: str
    status: str
    payment_intent: str | None = None
    metadata: dict[str, str] = {}


@dataclass(frozen=True, slots=True)
class RefundTotal:
    """What ``refund_once`` found and made: the intent's succeeded and pending refunds, summed."""

    payment_intent_id: str
    succeeded_fen: int
    pending_fen: int
    refunds: tuple[RefundObject, ...]


class _RefundList(msgspec.Struct, frozen=True):
    data: list[RefundObject]
    has_more: bool = False


class _ErrorDetail(msgspec.Struct, frozen=True):
    type: str = ""
    code: str = ""


class _ErrorBody(msgspec.Struct, frozen=True):
    error: _ErrorDetail


@dataclass(frozen=True, slots=True)
class PaymentsConfig:
    """From the settings: ``YIKATONG_PAYMENTS_URL`` and ``YIKATONG_PAYMENTS_KEY``."""

    base_url: str
    api_key: str
    timeout_s: float = TIMEOUT_S_DEFAULT


T = TypeVar("T")


class PaymentsClient:
    """One client per process; pass an ``httpx.Client`` to choose transport, pool and timeouts."""

    def __init__(self, http: httpx.Client, api_key: str) -> None:
        if not api_key:
            raise ValueError("the payment API key is empty")
        self._http = http
        self._auth = {"Authorization": f"Bearer {api_key}"}

    @classmethod
    def connect(cls, config: PaymentsConfig) -> PaymentsClient:
        return cls(httpx.Client(base_url=config.base_url, timeout=config.timeout_s), config.api_key)

    def close(self) -> None:
        self._http.close()

    # --- the calls ---------------------------------------------------------------------

    def create_intent(self, *, topup_id: str, card_id: str, amount_fen: int) -> PaymentIntent:
        """An intent for ``amount_fen`` CNY fen, tagged with the top-up and card; the top-up id is the key."""
        if type(amount_fen) is not int or amount_fen <= 0:
            raise ValueError("an intent is for a positive whole number of fen")
        params: dict[str, FormValue] = {
            "amount": amount_fen,
            "currency": CURRENCY,
            "metadata": {METADATA_TOPUP_ID: topup_id, METADATA_CARD_ID: card_id},
        }
        intent = self._call("POST", "/v1/payment_intents", PaymentIntent, params, idempotency_key=topup_id)
        if (intent.amount, intent.currency, intent.metadata.get(METADATA_TOPUP_ID)) != (amount_fen, CURRENCY, topup_id):
            raise PortalError(Code.E_PAYMENTS_BAD_RESPONSE, f"intent {intent.id} is not the one asked for {topup_id}")
        return intent

    def retrieve_intent(self, payment_intent_id: str) -> PaymentIntent:
        return self._checked(self._call("GET", f"/v1/payment_intents/{_intent_id(payment_intent_id)}", PaymentIntent))

    def cancel_intent(self, payment_intent_id: str) -> PaymentIntent:
        path = f"/v1/payment_intents/{_intent_id(payment_intent_id)}/cancel"
        return self._checked(self._call("POST", path, PaymentIntent, {}))

    def refund(self, *, payment_intent_id: str, amount_fen: int, idempotency_key: str, topup_id: str) -> RefundObject:
        """Refund ``amount_fen`` of an intent; the key makes a retry return the same refund (at Stripe)."""
        if type(amount_fen) is not int or amount_fen <= 0:
            raise ValueError("a refund is a positive whole number of fen")
        params: dict[str, FormValue] = {
            "payment_intent": _intent_id(payment_intent_id),
            "amount": amount_fen,
            "metadata": {METADATA_TOPUP_ID: topup_id},
        }
        refund = self._call("POST", "/v1/refunds", RefundObject, params, idempotency_key=idempotency_key)
        if (refund.payment_intent, refund.amount) != (payment_intent_id, amount_fen):
            raise PortalError(Code.E_PAYMENTS_BAD_RESPONSE, f"refund {refund.id} is not the one asked for")
        return refund

    def confirm_test_payment(
        self, payment_intent_id: str, *, payment_method: str = TEST_PAYMENT_METHOD
    ) -> PaymentIntent:
        """Test mode only: pay an intent server-side with a Stripe test payment method, as Stripe.js would.

        The stand-in for the payer's browser in development (``YIKATONG_PORTAL_PAYMENTS_TEST_MODE``,
        ``docs/portal.md``, "Pages"): attach the method, then confirm. localstripe refuses a
        ``payment_method`` on the confirm call itself, so it is attached by an update first (Stripe
        takes both). An intent that no longer waits for a payment is answered as it is, so a
        replayed "pay" confirms nothing twice.
        """
        if not payment_method.startswith("pm_card_"):
            raise ValueError("only Stripe's test payment methods (pm_card_…) are used here")
        intent = self.retrieve_intent(payment_intent_id)
        if intent.status not in ("requires_payment_method", "requires_confirmation"):
            return intent
        path = f"/v1/payment_intents/{_intent_id(payment_intent_id)}"
        if intent.status == "requires_payment_method":
            self._call("POST", path, PaymentIntent, {"payment_method": payment_method})
        return self._checked(self._call("POST", f"{path}/confirm", PaymentIntent, {}))

    def refunds_of(self, payment_intent_id: str) -> list[RefundObject]:
        query = {"payment_intent": _intent_id(payment_intent_id), "limit": "100"}
        return self._call("GET", "/v1/refunds", _RefundList, query=query).data

    def refund_once(
        self, *, payment_intent_id: str, amount_fen: int, idempotency_key: str, topup_id: str
    ) -> RefundTotal:
        """Have the intent refunded ``amount_fen`` **in total**; refund only what earlier refunds leave.

        The intent's succeeded and pending refunds (ours, or made at the provider's dashboard)
        count against ``amount_fen``: a 1-fen goodwill refund leaves ``amount_fen - 1`` to
        refund, a full one leaves nothing. For servers without idempotency (localstripe) this
        is what stops a retry refunding twice. The key is the effect's for a full refund, and
        ``<key>:rest:<fen>`` for a remainder (so Stripe never sees one key with two amounts).
        """
        if type(amount_fen) is not int or amount_fen <= 0:
            raise ValueError("a refund is a positive whole number of fen")
        earlier = [r for r in self.refunds_of(payment_intent_id) if r.status in ("succeeded", "pending")]
        covered = sum(r.amount for r in earlier)
        if covered < amount_fen:
            rest = amount_fen - covered
            key = idempotency_key if rest == amount_fen else f"{idempotency_key}:rest:{rest}"
            made = self.refund(
                payment_intent_id=payment_intent_id, amount_fen=rest, idempotency_key=key, topup_id=topup_id
            )
            earlier.append(made)
        return RefundTotal(
            payment_intent_id,
            succeeded_fen=sum(r.amount for r in earlier if r.status == "succeeded"),
            pending_fen=sum(r.amount for r in earlier if r.status == "pending"),
            refunds=tuple(earlier),
        )

    # --- plumbing ----------------------------------------------------------------------

    def _checked(self, intent: PaymentIntent) -> PaymentIntent:
        if intent.currency != CURRENCY:
            raise PortalError(
                Code.E_PAYMENTS_BAD_RESPONSE, f"intent {intent.id} is in {intent.currency}, not {CURRENCY}"
            )
        return intent

    def _call(
        self,
        method: str,
        path: str,
        into: type[T],
        form: Mapping[str, FormValue] | None = None,
        *,
        query: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
    ) -> T:
        headers = dict(self._auth)
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        body = None
        if form is not None:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            body = urllib.parse.urlencode(form_encode(form)).encode("ascii")
        try:
            response = self._http.request(
                method,
                path,
                headers=headers,
                params=query,
                content=body,
            )
        except httpx.TimeoutException:
            raise PortalError(Code.E_PAYMENTS_UNAVAILABLE, f"{method} {path}: the payment service timed out") from None
        except httpx.TransportError as exc:
            raise PortalError(
                Code.E_PAYMENTS_UNAVAILABLE,
                f"{method} {path}: the payment service is unreachable ({type(exc).__name__})",
            ) from None
        if response.status_code >= 300:
            raise _error_of(method, path, response)
        try:
            return msgspec.json.decode(response.content, type=into)
        except msgspec.DecodeError as exc:
            raise PortalError(Code.E_PAYMENTS_BAD_RESPONSE, f"{method} {path}: unreadable answer: {exc}") from None


def _intent_id(payment_intent_id: str) -> str:
    """An intent id as it may appear in a path: no slash, no dot, no query."""
    if _INTENT_ID.fullmatch(payment_intent_id) is None:
        raise PortalError(Code.E_PAYMENTS_BAD_ID, "a payment intent id is pi_ and letters, digits or _")
    return payment_intent_id


def _error_of(method: str, path: str, response: httpx.Response) -> PortalError:
    status = response.status_code
    try:
        detail = msgspec.json.decode(response.content, type=_ErrorBody).error
    except msgspec.DecodeError:
        detail = _ErrorDetail()
    said = f"{method} {path}: HTTP {status}" + (f" {detail.type}" if detail.type else "")
    said += f" ({detail.code})" if detail.code else ""
    if status in (401, 403):
        return PortalError(Code.E_PAYMENTS_AUTH, said)
    if status == 402:
        return PortalError(Code.E_PAYMENT_DECLINED, said)
    if status == 404:
        return PortalError(Code.E_PAYMENT_NOT_FOUND, said)
    if detail.type == "idempotency_error":
        return PortalError(Code.E_PAYMENTS_IDEMPOTENCY, said)
    if status in (409, 429) or status >= 500:  # 409: a concurrent request holds the same key; retry
        return PortalError(Code.E_PAYMENTS_UNAVAILABLE, said)
    return PortalError(Code.E_PAYMENTS_REFUSED, said)


__all__ = [
    "METADATA_CARD_ID",
    "TEST_PAYMENT_METHOD",
    "PaymentIntent",
    "PaymentsClient",
    "PaymentsConfig",
    "RefundObject",
    "RefundTotal",
    "form_encode",
]
