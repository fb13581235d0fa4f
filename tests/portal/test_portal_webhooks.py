"""Stripe-Signature verification: a correctly signed, fresh body passes; any tampering does not."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from portal import topups
from portal.errors import Code, PortalError
from portal.webhooks import (
    BODY_BYTES_MAX,
    decode_event,
    parse_signature_header,
    signature,
    signature_header,
    topup_event,
    verify,
    verify_and_decode,
)

SECRET = "whsec_test_0123456789abcdef"
OLD_SECRET = "whsec_old_fedcba9876543210"
NOW = 1_780_000_000
TOPUP = "tu_" + "0123456789abcdef" * 2  # the shape new_topup_id makes


def event_body(
    event_type: str = "payment_intent.succeeded", *, amount: int = 5000, metadata: dict[str, str] | None = None
) -> bytes:
    intent = {
        "id": "pi_123",
        "object": "payment_intent",
        "amount": amount,
        "currency": "cny",
        "status": "succeeded",
        "metadata": {"topup_id": TOPUP, "card_id": "01007120FFFFFFFF:0000000000000001"}
        if metadata is None
        else metadata,
        "latest_charge": "ch_1",
    }
    event = {"id": "evt_1", "object": "event", "type": event_type, "created": NOW, "data": {"object": intent}}
    return json.dumps(event, indent=2, sort_keys=True).encode()


def code_of(call: object) -> Code:
    assert callable(call)
    with pytest.raises(PortalError) as info:
        call()
    return info.value.code


def test_the_signature_is_hmac_sha256_over_timestamp_dot_body() -> None:
    """Written out by hand, as localstripe's webhooks.py computes it (``b'%d.%s' % (created, payload)``)."""
    body = b'{"id": "evt_1"}'
    expected = hmac.new(SECRET.encode(), b"%d.%s" % (NOW, body), hashlib.sha256).hexdigest()
    assert signature(SECRET, NOW, body) == expected
    assert verify(body, f"t={NOW},v1={expected}", [SECRET], now_s=NOW) == NOW


def test_a_correctly_signed_event_decodes_to_its_typed_fields() -> None:
    body = event_body()
    event = verify_and_decode(body, signature_header([SECRET], NOW, body), [SECRET], now_s=NOW)
    assert (event.id, event.type, event.created) == ("evt_1", "payment_intent.succeeded", NOW)
    assert topup_event(event) == (TOPUP, topups.PaymentSucceeded("pi_123", 5000, "cny"))


def test_other_schemes_are_ignored_and_any_v1_may_match() -> None:
    body = event_body()
    good = signature(SECRET, NOW, body)
    header = f"t={NOW},v0={'0' * 64},v1={'a' * 64},v1={good},scheme2=whatever"
    assert verify(body, header, [SECRET], now_s=NOW) == NOW


def test_a_v0_signature_alone_is_not_enough() -> None:
    body = event_body()
    v0 = signature(SECRET, NOW, body)  # even a "correct" digest under another scheme name
    assert code_of(lambda: verify(body, f"t={NOW},v0={v0}", [SECRET], now_s=NOW)) is Code.E_WEBHOOK_SIGNATURE_MISMATCH


def test_secret_rotation_accepts_either_secret() -> None:
    body = event_body()
    signed_by_old = signature_header([OLD_SECRET], NOW, body)
    signed_by_both = signature_header([SECRET, OLD_SECRET], NOW, body)
    verify(body, signed_by_old, [SECRET, OLD_SECRET], now_s=NOW)
    verify(body, signed_by_both, [SECRET], now_s=NOW)
    assert code_of(lambda: verify(body, signed_by_old, [SECRET], now_s=NOW)) is Code.E_WEBHOOK_SIGNATURE_MISMATCH


@pytest.mark.parametrize(
    ("offset_s", "code"),
    [
        (-301, Code.E_WEBHOOK_TIMESTAMP_STALE),
        (301, Code.E_WEBHOOK_TIMESTAMP_FUTURE),
        (-(10**6), Code.E_WEBHOOK_TIMESTAMP_STALE),
    ],
)
def test_stale_and_future_timestamps_are_refused(offset_s: int, code: Code) -> None:
    body = event_body()
    header = signature_header([SECRET], NOW + offset_s, body)
    assert code_of(lambda: verify(body, header, [SECRET], now_s=NOW)) is code


@pytest.mark.parametrize("offset_s", [-300, 0, 300])
def test_the_tolerance_boundary_is_inclusive(offset_s: int) -> None:
    body = event_body()
    verify(body, signature_header([SECRET], NOW + offset_s, body), [SECRET], now_s=NOW)


@pytest.mark.parametrize(
    ("header", "code"),
    [
        (None, Code.E_WEBHOOK_SIGNATURE_MISSING),
        ("", Code.E_WEBHOOK_SIGNATURE_MISSING),
        ("   ", Code.E_WEBHOOK_SIGNATURE_MISSING),
        (f"v1={'a' * 64}", Code.E_WEBHOOK_SIGNATURE_MALFORMED),  # no t
        (f"t={NOW},t={NOW},v1={'a' * 64}", Code.E_WEBHOOK_SIGNATURE_MALFORMED),  # t twice
        (f"t=-{NOW},v1={'a' * 64}", Code.E_WEBHOOK_SIGNATURE_MALFORMED),
        (f"t={NOW}.5,v1={'a' * 64}", Code.E_WEBHOOK_SIGNATURE_MALFORMED),
        (f"t=١٧٨٠٠٠٠٠٠٠,v1={'a' * 64}", Code.E_WEBHOOK_SIGNATURE_MALFORMED),  # non-ASCII digits
        (f"t={'9' * 13},v1={'a' * 64}", Code.E_WEBHOOK_SIGNATURE_MALFORMED),
        (f"t={NOW},v1", Code.E_WEBHOOK_SIGNATURE_MALFORMED),
        (f"t={NOW},,v1={'a' * 64}", Code.E_WEBHOOK_SIGNATURE_MALFORMED),
        (f"t={NOW}", Code.E_WEBHOOK_SIGNATURE_MISMATCH),  # no v1 at all
        (f"t={NOW},v1=xyz", Code.E_WEBHOOK_SIGNATURE_MISMATCH),  # no well-formed v1
        ("t=1," + "v1=" + "a" * 5000, Code.E_WEBHOOK_SIGNATURE_MALFORMED),  # too long
    ],
)
def test_missing_and_malformed_headers_are_refused(header: str | None, code: Code) -> None:
    assert code_of(lambda: verify(event_body(), header, [SECRET], now_s=NOW)) is code


def test_an_upper_case_hex_signature_does_not_match() -> None:
    """Stripe sends lower-case hex; an upper-cased copy is not a signature we produced."""
    body = event_body()
    header = f"t={NOW},v1={signature(SECRET, NOW, body).upper()}"
    assert code_of(lambda: verify(body, header, [SECRET], now_s=NOW)) is Code.E_WEBHOOK_SIGNATURE_MISMATCH


def test_a_body_too_large_is_refused_before_any_hmac() -> None:
    body = b" " * (BODY_BYTES_MAX + 1)
    header = signature_header([SECRET], NOW, body)
    assert code_of(lambda: verify(body, header, [SECRET], now_s=NOW)) is Code.E_WEBHOOK_TOO_LARGE


def test_no_secret_is_a_configuration_error_not_an_open_door() -> None:
    body = event_body()
    for secrets in ([], [""]):
        with pytest.raises(ValueError, match="secret"):
            verify(body, signature_header([SECRET], NOW, body), secrets, now_s=NOW)


def test_a_signed_body_of_another_shape_is_refused_cleanly() -> None:
    for body in (b"not json", b"{}", b'{"id": "evt_1", "type": "x", "created": 1.5, "data": {"object": {}}}', b"[]"):
        header = signature_header([SECRET], NOW, body)
        assert (
            code_of(lambda b=body, h=header: verify_and_decode(b, h, [SECRET], now_s=NOW)) is Code.E_WEBHOOK_MALFORMED
        )


def test_events_that_are_not_ours_are_ignored() -> None:
    assert topup_event(decode_event(event_body("charge.succeeded"))) is None
    assert topup_event(decode_event(event_body(metadata={}))) is None
    assert topup_event(decode_event(event_body("payment_intent.created"))) is None


def test_failed_and_canceled_intents_map_to_their_events() -> None:
    assert topup_event(decode_event(event_body("payment_intent.payment_failed"))) == (
        TOPUP,
        topups.PaymentFailed("pi_123"),
    )
    assert topup_event(decode_event(event_body("payment_intent.canceled"))) == (
        TOPUP,
        topups.PaymentCanceled("pi_123"),
    )


# --- properties ---------------------------------------------------------------------------

bodies = st.binary(min_size=0, max_size=512)
timestamps = st.integers(NOW - 300, NOW + 300)


@given(bodies, timestamps, st.lists(st.sampled_from([SECRET, OLD_SECRET]), min_size=1, max_size=2))
def test_any_correctly_signed_fresh_body_is_accepted(body: bytes, t: int, signers: list[str]) -> None:
    assert verify(body, signature_header(signers, t, body), [SECRET, OLD_SECRET], now_s=NOW) == t


@given(bodies, bodies, timestamps)
def test_a_tampered_body_is_refused(body: bytes, other: bytes, t: int) -> None:
    assume(body != other)
    header = signature_header([SECRET], t, body)
    assert code_of(lambda: verify(other, header, [SECRET], now_s=NOW)) is Code.E_WEBHOOK_SIGNATURE_MISMATCH


@given(bodies, timestamps, st.integers(-(10**6), 10**6).filter(lambda d: d != 0))
def test_a_tampered_timestamp_is_refused(body: bytes, t: int, delta: int) -> None:
    sig = signature(SECRET, t, body)
    forged_t = t + delta
    assume(forged_t >= 0)
    with pytest.raises(PortalError):
        verify(body, f"t={forged_t},v1={sig}", [SECRET], now_s=NOW)


@given(bodies, timestamps, st.integers(0, 63), st.sampled_from("0123456789abcdef"))
def test_a_tampered_signature_is_refused(body: bytes, t: int, position: int, char: str) -> None:
    sig = signature(SECRET, t, body)
    assume(sig[position] != char)
    forged = sig[:position] + char + sig[position + 1 :]
    assert code_of(lambda: verify(body, f"t={t},v1={forged}", [SECRET], now_s=NOW)) is Code.E_WEBHOOK_SIGNATURE_MISMATCH


@given(bodies, timestamps, st.text(min_size=1, max_size=40))
def test_a_body_signed_with_another_secret_is_refused(body: bytes, t: int, secret: str) -> None:
    assume(secret not in (SECRET, OLD_SECRET))
    header = signature_header([secret], t, body)
    assert code_of(lambda: verify(body, header, [SECRET, OLD_SECRET], now_s=NOW)) is Code.E_WEBHOOK_SIGNATURE_MISMATCH


@given(st.text(max_size=200))
def test_any_header_text_is_answered_with_a_portal_error_never_a_crash(header: str) -> None:
    with contextlib.suppress(PortalError):
        parse_signature_header(header)
