"""Payment webhooks: verify ``Stripe-Signature`` over the raw body, then decode the event.

The rule (``docs/portal.md``, "Webhook verification"), as Stripe documents it and as
localstripe and stripe-python implement it, with two refusals of our own:

- the header is ``t=<unix seconds>,v1=<hex>[,v1=<hex>…]``; other schemes (``v0``, test
  schemes) are ignored; ``t`` appears exactly once;
- the signature is HMAC-SHA256, keyed with the endpoint secret, over ``f"{t}.".encode() +
  raw_body``, lower-case hex; any ``v1`` may match under any of the configured secrets (during
  a rotation the provider signs with the old and the new, and we may hold both);
- digests are compared with ``hmac.compare_digest``;
- ``t`` must lie within ``tolerance_s`` of our clock **both ways**: stripe-python refuses only
  stale timestamps, but a timestamp from the future is a replay waiting to happen;
- a missing or unreadable header is refused, and so is anything larger than we would read.

Only a verified body is decoded (msgspec, strictly). Verification says the provider sent these
bytes once; it does not make the event new: the shell dedupes by event id, and the top-up
state machine (``portal.topups``) is idempotent under repeats and any order.

Pure: the clock (``now_s``) and the secrets are passed in.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Sequence
from typing import Final, TypeVar

import msgspec

from portal import topups
from portal.errors import Code, PortalError

TOLERANCE_S_DEFAULT: Final = 300
BODY_BYTES_MAX: Final = 256 * 1024  # Stripe events are a few kB; a body this large is not one of ours
HEADER_CHARS_MAX: Final = 4096
SIGNATURES_MAX: Final = 16  # v1 entries considered; more is not a rotation, it is a guess list
TIMESTAMP_DIGITS_MAX: Final = 12  # unix seconds until the year 33658

T = TypeVar("T")

_HEX64: Final = re.compile(r"[0-9a-f]{64}")
_DIGITS: Final = re.compile(r"[0-9]+")


class SignatureHeader(msgspec.Struct, frozen=True):
    timestamp_s: int
    v1: tuple[str, ...]  # well-formed v1 signatures, at most SIGNATURES_MAX


def parse_signature_header(header: str | None) -> SignatureHeader:
    """Read ``t`` and the ``v1`` entries; other schemes are skipped, duplicates of ``t`` refused."""
    if header is None or not header.strip():
        raise PortalError(Code.E_WEBHOOK_SIGNATURE_MISSING, "the request carries no Stripe-Signature header")
    if len(header) > HEADER_CHARS_MAX:
        raise PortalError(
            Code.E_WEBHOOK_SIGNATURE_MALFORMED, f"the header is longer than {HEADER_CHARS_MAX} characters"
        )
    timestamps: list[str] = []
    v1: list[str] = []
    for item in header.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep or not key:
            raise PortalError(Code.E_WEBHOOK_SIGNATURE_MALFORMED, "every header item is key=value")
        if key == "t":
            timestamps.append(value)
        elif key == "v1" and _HEX64.fullmatch(value) and len(v1) < SIGNATURES_MAX:
            v1.append(value)
    if len(timestamps) != 1:
        raise PortalError(Code.E_WEBHOOK_SIGNATURE_MALFORMED, "the header names its timestamp t exactly once")
    t = timestamps[0]
    if not (_DIGITS.fullmatch(t) and len(t) <= TIMESTAMP_DIGITS_MAX):
        raise PortalError(Code.E_WEBHOOK_SIGNATURE_MALFORMED, "the timestamp t is not unix seconds")
    if not v1:
        raise PortalError(Code.E_WEBHOOK_SIGNATURE_MISMATCH, "the header carries no v1 signature")
    return SignatureHeader(int(t), tuple(v1))


def signature(secret: str | bytes, timestamp_s: int, body: bytes) -> str:
    """The v1 signature of ``body`` at ``timestamp_s``: what the provider puts in the header."""
    key = secret.encode() if isinstance(secret, str) else secret
    return hmac.new(key, f"{timestamp_s}.".encode() + body, hashlib.sha256).hexdigest()


def signature_header(secrets: Sequence[str | bytes], timestamp_s: int, body: bytes) -> str:
    """A header as the provider sends it (for tests and for the demo's own payment server)."""
    return ",".join([f"t={timestamp_s}", *(f"v1={signature(s, timestamp_s, body)}" for s in secrets)])


def verify(
    body: bytes,
    header: str | None,
    secrets: Sequence[str | bytes],
    *,
    now_s: int,
    tolerance_s: int = TOLERANCE_S_DEFAULT,
) -> int:
    """Verify a webhook's signature and freshness; answer its signed timestamp or raise ``PortalError``."""
    if not secrets or any(not s for s in secrets):
        raise ValueError("at least one non-empty endpoint secret is needed")
    assert tolerance_s >= 0
    if len(body) > BODY_BYTES_MAX:
        raise PortalError(Code.E_WEBHOOK_TOO_LARGE, f"the body is larger than {BODY_BYTES_MAX} bytes")
    parsed = parse_signature_header(header)
    expected = [signature(s, parsed.timestamp_s, body) for s in secrets]
    # Every pair is compared, so the time taken says nothing about which secret or entry matched.
    matched = False
    for want in expected:
        for got in parsed.v1:
            matched |= hmac.compare_digest(want, got)
    if not matched:
        raise PortalError(Code.E_WEBHOOK_SIGNATURE_MISMATCH, "no v1 signature matches the body")
    if parsed.timestamp_s < now_s - tolerance_s:
        raise PortalError(Code.E_WEBHOOK_TIMESTAMP_STALE, f"signed more than {tolerance_s} s ago")
    if parsed.timestamp_s > now_s + tolerance_s:
        raise PortalError(Code.E_WEBHOOK_TIMESTAMP_FUTURE, f"signed more than {tolerance_s} s ahead of our clock")
    return parsed.timestamp_s


# --- the event ---------------------------------------------------------------------------


class PaymentIntentObject(msgspec.Struct, frozen=True):
    """The fields of a PaymentIntent the top-up flow reads; the rest of the object is ignored.

    ``amount_received`` is what Stripe says was captured (always present there); localstripe
    1.15 does not send it, and sends ``payment_intent.succeeded`` only once the whole amount is
    captured, so its absence falls back to ``amount``.
    """

    id: str
    amount: int
    currency: str
    status: str
    metadata: dict[str, str] = {}
    amount_received: int | None = None


class ChargeObject(msgspec.Struct, frozen=True):
    """A Charge (``charge.refunded``): its intent and the total refunded of it so far."""

    id: str
    currency: str
    amount_refunded: int
    payment_intent: str | None = None
    metadata: dict[str, str] = {}


class RefundEventObject(msgspec.Struct, frozen=True):
    """A Refund (``refund.created``, ``refund.updated``, ``charge.refund.updated``): one refund's part."""

    id: str
    amount: int
    currency: str
    status: str | None = None
    payment_intent: str | None = None
    metadata: dict[str, str] = {}


class EventData(msgspec.Struct, frozen=True):
    object: msgspec.Raw  # decoded by type once the event type is known (``payment_intent_of``)


class Event(msgspec.Struct, frozen=True):
    id: str
    type: str
    created: int
    data: EventData


_EVENT_DECODER: Final = msgspec.json.Decoder(Event)
_INTENT_DECODER: Final = msgspec.json.Decoder(PaymentIntentObject)
_CHARGE_DECODER: Final = msgspec.json.Decoder(ChargeObject)
_REFUND_DECODER: Final = msgspec.json.Decoder(RefundEventObject)
EVENT_ID_CHARS_MAX: Final = 255
_PLAIN_ID: Final = re.compile(rf"[\x21-\x7e]{{1,{EVENT_ID_CHARS_MAX}}}")  # printable ASCII, no space, no NUL
_INTENT_ID: Final = re.compile(rf"pi_[A-Za-z0-9_]{{1,{EVENT_ID_CHARS_MAX}}}")  # as portal.payments checks it


def decode_event(body: bytes) -> Event:
    """Decode a verified body; a body of another shape is refused with a sentence, never a 500."""
    try:
        event = _EVENT_DECODER.decode(body)
    except msgspec.DecodeError as exc:  # ValidationError is a DecodeError
        raise PortalError(Code.E_WEBHOOK_MALFORMED, f"the event does not decode: {exc}") from None
    if not event.id or not event.type:
        raise PortalError(Code.E_WEBHOOK_MALFORMED, "an event has an id and a type")
    return event


def payment_intent_of(event: Event) -> PaymentIntentObject:
    """The event's object as a PaymentIntent (for ``payment_intent.*`` events)."""
    if not event.type.startswith("payment_intent."):
        raise PortalError(Code.E_WEBHOOK_MALFORMED, f"a {event.type} event carries no payment intent")
    try:
        return _INTENT_DECODER.decode(event.data.object)
    except msgspec.DecodeError as exc:
        raise PortalError(Code.E_WEBHOOK_MALFORMED, f"the payment intent does not decode: {exc}") from None


def verify_and_decode(
    body: bytes,
    header: str | None,
    secrets: Sequence[str | bytes],
    *,
    now_s: int,
    tolerance_s: int = TOLERANCE_S_DEFAULT,
) -> Event:
    """What the webhook route calls with the raw body: verify first, decode only what verified."""
    verify(body, header, secrets, now_s=now_s, tolerance_s=tolerance_s)
    return decode_event(body)


METADATA_TOPUP_ID: Final = "topup_id"  # set by portal.payments on every intent it creates


def is_plain_id(value: str) -> bool:
    """An event id or type we can store: 1..255 printable ASCII characters (no NUL, no space)."""
    return _PLAIN_ID.fullmatch(value) is not None


def topup_event(event: Event) -> tuple[str | None, topups.Event] | None:
    """The top-up and state-machine event a verified webhook means, or None if it is not ours to read.

    The top-up is named by ``metadata.topup_id``; a refund event whose object carries none
    (a refund made in the provider's dashboard) answers ``None`` for it, and the shell finds
    the top-up by the intent id the event names. Events of other types, intents without our
    ``topup_id`` metadata (made by someone else on the same account), a ``topup_id`` that is
    not of our shape (``tu_`` + 32 hex), an intent id that is not ``pi_…``, and a
    ``payment_intent.succeeded`` whose intent is not ``succeeded`` are answered 200 and
    ignored, so the provider stops retrying.
    """
    if event.type in _INTENT_EVENTS:
        return _intent_event(event)
    if event.type == "charge.refunded":
        charge = _decoded(_CHARGE_DECODER, event, "charge")
        if charge.currency != topups.CURRENCY or charge.amount_refunded <= 0:
            return None
        return _refund_of(charge.metadata, charge.payment_intent, charge.amount_refunded)
    if event.type in _REFUND_EVENTS:
        refund = _decoded(_REFUND_DECODER, event, "refund")
        if refund.status != "succeeded" or refund.currency != topups.CURRENCY or refund.amount <= 0:
            return None
        # One refund's amount: a lower bound of the intent's total refunded (applied as a maximum).
        return _refund_of(refund.metadata, refund.payment_intent, refund.amount)
    return None


def _intent_event(event: Event) -> tuple[str | None, topups.Event] | None:
    intent = payment_intent_of(event)
    topup_id = intent.metadata.get(METADATA_TOPUP_ID)
    if not topups.is_topup_id(topup_id) or _INTENT_ID.fullmatch(intent.id) is None:
        return None
    if event.type == "payment_intent.succeeded":
        if intent.status != "succeeded":
            return None
        received = intent.amount_received if intent.amount_received is not None else intent.amount
        return topup_id, topups.PaymentSucceeded(intent.id, received, intent.currency)
    if event.type == "payment_intent.payment_failed":
        return topup_id, topups.PaymentFailed(intent.id)
    return topup_id, topups.PaymentCanceled(intent.id)


def _refund_of(
    metadata: dict[str, str], payment_intent: str | None, total_fen: int
) -> tuple[str | None, topups.Event] | None:
    if payment_intent is None or _INTENT_ID.fullmatch(payment_intent) is None:
        return None
    topup_id = metadata.get(METADATA_TOPUP_ID)
    if topup_id is not None and not topups.is_topup_id(topup_id):
        return None  # tagged by another integration
    return topup_id, topups.RefundSucceeded(payment_intent, total_fen)


def _decoded(decoder: msgspec.json.Decoder[T], event: Event, what: str) -> T:
    try:
        return decoder.decode(event.data.object)
    except msgspec.DecodeError as exc:
        raise PortalError(Code.E_WEBHOOK_MALFORMED, f"the {what} does not decode: {exc}") from None


_INTENT_EVENTS: Final = frozenset(
    {"payment_intent.succeeded", "payment_intent.payment_failed", "payment_intent.canceled"}
)
_REFUND_EVENTS: Final = frozenset({"refund.created", "refund.updated", "charge.refund.updated"})


__all__ = [
    "BODY_BYTES_MAX",
    "EVENT_ID_CHARS_MAX",
    "METADATA_TOPUP_ID",
    "TOLERANCE_S_DEFAULT",
    "ChargeObject",
    "Event",
    "EventData",
    "PaymentIntentObject",
    "RefundEventObject",
    "SignatureHeader",
    "decode_event",
    "is_plain_id",
    "parse_signature_header",
    "payment_intent_of",
    "signature",
    "signature_header",
    "topup_event",
    "verify",
    "verify_and_decode",
]
