"""The portal's one error and its own registry of stable codes.

The portal answers citizens and a payment provider, not terminals, so its codes and their
HTTP statuses are kept apart from the terminal contract's (``clearing.contract.codes``):
changing one API's error shape never moves the other's. The house style is the same: a
``PortalError`` carries a code from ``Code`` and a human sentence, and the same string
appears in API bodies, logs and the staff console
(``E_ID_NUMBER_CHECK_DIGIT: the check digit does not match the first 17 digits``).

Messages never carry an ID number, a mobile number, a name or a secret, masked or not: a
message may end up in a log line, and the logs hold no personal data (issue 10, "Security").
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

from clearing.contract.codes import CodeInfo
from clearing.errors import CodedError


class Code(StrEnum):
    # --- identity (portal.identity) --------------------------------------------------------
    E_ID_NUMBER_LENGTH = "E_ID_NUMBER_LENGTH"
    E_ID_NUMBER_FORMAT = "E_ID_NUMBER_FORMAT"
    E_ID_NUMBER_REGION = "E_ID_NUMBER_REGION"
    E_ID_NUMBER_BIRTH_DATE = "E_ID_NUMBER_BIRTH_DATE"
    E_ID_NUMBER_CHECK_DIGIT = "E_ID_NUMBER_CHECK_DIGIT"
    E_MOBILE_FORMAT = "E_MOBILE_FORMAT"
    E_REAL_NAME_EMPTY = "E_REAL_NAME_EMPTY"
    E_REAL_NAME_TOO_LONG = "E_REAL_NAME_TOO_LONG"
    E_REAL_NAME_CHARACTERS = "E_REAL_NAME_CHARACTERS"
    # --- payment webhooks (portal.webhooks) ------------------------------------------------
    E_WEBHOOK_SIGNATURE_MISSING = "E_WEBHOOK_SIGNATURE_MISSING"
    E_WEBHOOK_SIGNATURE_MALFORMED = "E_WEBHOOK_SIGNATURE_MALFORMED"
    E_WEBHOOK_SIGNATURE_MISMATCH = "E_WEBHOOK_SIGNATURE_MISMATCH"
    E_WEBHOOK_TIMESTAMP_STALE = "E_WEBHOOK_TIMESTAMP_STALE"
    E_WEBHOOK_TIMESTAMP_FUTURE = "E_WEBHOOK_TIMESTAMP_FUTURE"
    E_WEBHOOK_TOO_LARGE = "E_WEBHOOK_TOO_LARGE"
    E_WEBHOOK_MALFORMED = "E_WEBHOOK_MALFORMED"
    # --- top-up limits and states (portal.limits, portal.topups) ---------------------------
    E_TOPUP_AMOUNT_TYPE = "E_TOPUP_AMOUNT_TYPE"
    E_TOPUP_BELOW_MIN = "E_TOPUP_BELOW_MIN"
    E_TOPUP_ABOVE_MAX = "E_TOPUP_ABOVE_MAX"
    E_CARD_BALANCE_LIMIT = "E_CARD_BALANCE_LIMIT"
    E_TOPUP_NOT_REFUNDABLE = "E_TOPUP_NOT_REFUNDABLE"
    # --- the portal's JSON API and webhook route (portal.api, portal.topup_service) ---------
    E_PORTAL_MALFORMED = "E_PORTAL_MALFORMED"
    E_TOPUP_NOT_FOUND = "E_TOPUP_NOT_FOUND"
    E_CARD_NOT_FOUND = "E_CARD_NOT_FOUND"
    E_CARD_NOT_TOPPABLE = "E_CARD_NOT_TOPPABLE"
    E_PORTAL_UNAVAILABLE = "E_PORTAL_UNAVAILABLE"
    # --- citizen accounts, sessions, card binding (portal.accounts, portal.api_accounts) ----
    E_PASSWORD_POLICY = "E_PASSWORD_POLICY"  # noqa: S105 - a code, not a password
    E_MOBILE_TAKEN = "E_MOBILE_TAKEN"
    E_ID_NUMBER_TAKEN = "E_ID_NUMBER_TAKEN"
    E_LOGIN_FAILED = "E_LOGIN_FAILED"
    E_SESSION_REQUIRED = "E_SESSION_REQUIRED"
    E_CSRF = "E_CSRF"
    E_RATE_LIMITED = "E_RATE_LIMITED"
    E_BIND_PROOF_WRONG = "E_BIND_PROOF_WRONG"
    E_CARD_BOUND_ELSEWHERE = "E_CARD_BOUND_ELSEWHERE"
    E_CARD_NOT_BOUND = "E_CARD_NOT_BOUND"
    # --- card login (portal.card_login, portal.api_card_login) ------------------------------
    E_CARD_LOGIN_NO_CHALLENGE = "E_CARD_LOGIN_NO_CHALLENGE"
    E_CARD_LOGIN_CHALLENGE_EXPIRED = "E_CARD_LOGIN_CHALLENGE_EXPIRED"
    E_CARD_LOGIN_MALFORMED = "E_CARD_LOGIN_MALFORMED"
    E_CARD_LOGIN_CERT_UNTRUSTED = "E_CARD_LOGIN_CERT_UNTRUSTED"
    E_CARD_LOGIN_CERT_EXPIRED = "E_CARD_LOGIN_CERT_EXPIRED"
    E_CARD_LOGIN_ALGORITHM = "E_CARD_LOGIN_ALGORITHM"
    E_CARD_LOGIN_SIGNATURE = "E_CARD_LOGIN_SIGNATURE"
    E_CARD_LOGIN_CARD_INACTIVE = "E_CARD_LOGIN_CARD_INACTIVE"
    E_CARD_LOGIN_UNBOUND = "E_CARD_LOGIN_UNBOUND"
    # --- online load on the reader page (portal.online_load, portal.api_loads) --------------
    E_LOAD_NOT_FOUND = "E_LOAD_NOT_FOUND"
    E_LOAD_TERMINAL = "E_LOAD_TERMINAL"
    E_LOAD_REFUSED = "E_LOAD_REFUSED"
    # --- lost cards and replacement (portal.lost_cards) -----------------------------------
    E_LOST_CARD_REPLACED = "E_LOST_CARD_REPLACED"
    E_LOST_NOT_REPORTED = "E_LOST_NOT_REPORTED"
    E_LOST_TOO_EARLY = "E_LOST_TOO_EARLY"
    E_LOST_LOADS_OPEN = "E_LOST_LOADS_OPEN"
    E_LOST_REPLACEMENT_FAILED = "E_LOST_REPLACEMENT_FAILED"
    # --- the staff console (portal.staff, portal.api_staff) --------------------------------
    E_STAFF_LOGIN_FAILED = "E_STAFF_LOGIN_FAILED"
    E_STAFF_SESSION_REQUIRED = "E_STAFF_SESSION_REQUIRED"
    E_STAFF_FORBIDDEN = "E_STAFF_FORBIDDEN"
    E_STAFF_USERNAME = "E_STAFF_USERNAME"
    E_STAFF_ROLE = "E_STAFF_ROLE"
    E_STAFF_EXISTS = "E_STAFF_EXISTS"
    E_STAFF_NOT_FOUND = "E_STAFF_NOT_FOUND"
    E_STAFF_SEARCH = "E_STAFF_SEARCH"
    # --- notices: nothing refused, a person should look (staff console) --------------------
    N_LATE_AFTER_REPLACEMENT = "N_LATE_AFTER_REPLACEMENT"
    N_PAYMENT_UNMATCHED = "N_PAYMENT_UNMATCHED"
    N_LOADED_BEFORE_REFUND = "N_LOADED_BEFORE_REFUND"
    N_LOADED_AND_REFUNDED = "N_LOADED_AND_REFUNDED"
    N_UNEXPECTED_EVENT = "N_UNEXPECTED_EVENT"
    # --- the payment API (portal.payments) -------------------------------------------------
    E_PAYMENTS_UNAVAILABLE = "E_PAYMENTS_UNAVAILABLE"
    E_PAYMENTS_AUTH = "E_PAYMENTS_AUTH"
    E_PAYMENTS_REFUSED = "E_PAYMENTS_REFUSED"
    E_PAYMENTS_IDEMPOTENCY = "E_PAYMENTS_IDEMPOTENCY"
    E_PAYMENT_DECLINED = "E_PAYMENT_DECLINED"
    E_PAYMENT_NOT_FOUND = "E_PAYMENT_NOT_FOUND"
    E_PAYMENTS_BAD_RESPONSE = "E_PAYMENTS_BAD_RESPONSE"
    E_PAYMENTS_BAD_ID = "E_PAYMENTS_BAD_ID"


_i = CodeInfo  # (status, meaning): the shape clearing's registry uses


C = Code
CODES: Final[dict[Code, CodeInfo]] = {
    C.E_ID_NUMBER_LENGTH: _i(422, "a resident ID number has 18 characters"),
    C.E_ID_NUMBER_FORMAT: _i(422, "17 digits and a check character (a digit or X) are expected"),
    C.E_ID_NUMBER_REGION: _i(422, "the first two digits name no province-level region"),
    C.E_ID_NUMBER_BIRTH_DATE: _i(422, "digits 7-14 are not a plausible date of birth"),
    C.E_ID_NUMBER_CHECK_DIGIT: _i(422, "the check character does not match the first 17 digits (ISO 7064 MOD 11-2)"),
    C.E_MOBILE_FORMAT: _i(422, "a mainland mobile number has 11 digits and starts with 13-19"),
    C.E_REAL_NAME_EMPTY: _i(422, "the real name is empty"),
    C.E_REAL_NAME_TOO_LONG: _i(422, "the real name is longer than allowed"),
    C.E_REAL_NAME_CHARACTERS: _i(422, "the real name holds control or formatting characters"),
    C.E_WEBHOOK_SIGNATURE_MISSING: _i(400, "no Stripe-Signature header"),
    C.E_WEBHOOK_SIGNATURE_MALFORMED: _i(400, "the Stripe-Signature header cannot be read"),
    C.E_WEBHOOK_SIGNATURE_MISMATCH: _i(400, "no v1 signature matches the body under any endpoint secret"),
    C.E_WEBHOOK_TIMESTAMP_STALE: _i(400, "the signed timestamp is older than the tolerance"),
    C.E_WEBHOOK_TIMESTAMP_FUTURE: _i(400, "the signed timestamp is further ahead than the tolerance"),
    C.E_WEBHOOK_TOO_LARGE: _i(413, "the webhook body is larger than allowed"),
    C.E_WEBHOOK_MALFORMED: _i(400, "the signed body is not an event this endpoint reads"),
    C.E_TOPUP_AMOUNT_TYPE: _i(422, "a top-up amount is a whole number of fen"),
    C.E_TOPUP_BELOW_MIN: _i(422, "the amount is below the smallest top-up"),
    C.E_TOPUP_ABOVE_MAX: _i(422, "the amount is above the largest single top-up"),
    C.E_CARD_BALANCE_LIMIT: _i(422, "the card would hold more than its limit (balance plus pending loads)"),
    C.E_TOPUP_NOT_REFUNDABLE: _i(409, "the top-up is not paid, already loaded, or already refunded"),
    C.E_PORTAL_MALFORMED: _i(422, "the request is not of the shape this endpoint reads"),
    C.E_TOPUP_NOT_FOUND: _i(404, "no such top-up"),
    C.E_CARD_NOT_FOUND: _i(404, "no such card is registered"),
    C.E_CARD_NOT_TOPPABLE: _i(409, "the card is blocked, lost or replaced: it takes no top-up"),
    C.E_PORTAL_UNAVAILABLE: _i(503, "the portal could not reach its database or a service; retry later"),
    C.E_PASSWORD_POLICY: _i(422, "a password has 8 to 128 characters and is not only digits"),
    C.E_MOBILE_TAKEN: _i(409, "an account with this mobile number exists; log in instead"),
    C.E_ID_NUMBER_TAKEN: _i(409, "an account with this resident ID number exists; log in instead"),
    C.E_LOGIN_FAILED: _i(401, "the mobile number or the password is wrong"),
    C.E_SESSION_REQUIRED: _i(401, "log in first: no session, or the session has ended"),
    C.E_CSRF: _i(403, "the X-CSRF-Token header is missing or is not this session's token"),
    C.E_RATE_LIMITED: _i(429, "too many attempts; wait and try again"),
    C.E_BIND_PROOF_WRONG: _i(422, "card number, amount and date match none of the card's last three transactions"),
    C.E_CARD_BOUND_ELSEWHERE: _i(409, "the card is bound to another account"),
    C.E_CARD_NOT_BOUND: _i(403, "the card is not bound to this account"),
    C.E_CARD_LOGIN_NO_CHALLENGE: _i(401, "no card-login challenge for this browser, or it was used: ask for a new one"),
    C.E_CARD_LOGIN_CHALLENGE_EXPIRED: _i(401, "the card-login challenge is past its 5 minutes: ask for a new one"),
    C.E_CARD_LOGIN_MALFORMED: _i(422, "the card-login token is not a web-eid:1.0 token this portal reads"),
    C.E_CARD_LOGIN_CERT_UNTRUSTED: _i(401, "the certificate is not a card certificate of a registered issuer's CA"),
    C.E_CARD_LOGIN_CERT_EXPIRED: _i(401, "the card's certificate is not valid now (expired or not yet valid)"),
    C.E_CARD_LOGIN_ALGORITHM: _i(422, "the token's algorithm is not the one of the card's key (ES256)"),
    C.E_CARD_LOGIN_SIGNATURE: _i(401, "the card's signature does not verify over this portal's origin and challenge"),
    C.E_CARD_LOGIN_CARD_INACTIVE: _i(403, "the card is lost, denylisted, blocked, replaced, expired or unknown"),
    C.E_CARD_LOGIN_UNBOUND: _i(403, "the card is bound to no account: log in with the account, then with the card"),
    C.E_LOAD_NOT_FOUND: _i(404, "no such load for a card bound to this account"),
    C.E_LOAD_TERMINAL: _i(409, "the load step names another terminal than the portal's reader page"),
    C.E_LOAD_REFUSED: _i(409, "clearing refused the load step (its code and sentence say why)"),
    C.E_LOST_CARD_REPLACED: _i(409, "the card was replaced: the report and the denylist stay as they are"),
    C.E_LOST_NOT_REPORTED: _i(409, "the card is not reported lost (or no longer on the denylist)"),
    C.E_LOST_TOO_EARLY: _i(409, "the waiting period after the lost-card report is not over yet"),
    C.E_LOST_LOADS_OPEN: _i(409, "the lost card has loads pending or in doubt: refund or resolve them first"),
    C.E_LOST_REPLACEMENT_FAILED: _i(503, "the replacement card could not be issued (key store or card writer)"),
    C.E_STAFF_LOGIN_FAILED: _i(401, "the username, the password or the one-time code is wrong"),
    C.E_STAFF_SESSION_REQUIRED: _i(401, "log in to the staff console first: no session, or it has ended"),
    C.E_STAFF_FORBIDDEN: _i(403, "this staff role may not do this"),
    C.E_STAFF_USERNAME: _i(422, "a staff username has 3 to 32 characters: a-z first, then a-z, 0-9, '.', '_', '-'"),
    C.E_STAFF_ROLE: _i(422, "a staff role is counter_clerk, finance or administrator"),
    C.E_STAFF_EXISTS: _i(409, "a staff account with this username exists"),
    C.E_STAFF_NOT_FOUND: _i(404, "no such staff account"),
    C.E_STAFF_SEARCH: _i(422, "search by card number (20 hex digits), resident ID number or mobile number"),
    C.N_PAYMENT_UNMATCHED: _i(200, "a payment that does not match its top-up: it is refunded, never loaded"),
    C.N_LOADED_BEFORE_REFUND: _i(200, "the card took the load before the refund could cancel it: no refund"),
    C.N_LOADED_AND_REFUNDED: _i(
        200, "refunded at the provider and loaded on the card both: staff recover the difference"
    ),
    C.N_UNEXPECTED_EVENT: _i(200, "an event the top-up's state does not expect: recorded, nothing moved"),
    C.N_LATE_AFTER_REPLACEMENT: _i(
        200, "a replaced card's late records need more than it holds: the shortfall is a loss to recover"
    ),
    C.E_PAYMENTS_UNAVAILABLE: _i(503, "the payment service did not answer or failed; retry later"),
    C.E_PAYMENTS_AUTH: _i(502, "the payment service refused our API key"),
    C.E_PAYMENTS_REFUSED: _i(502, "the payment service refused the request"),
    C.E_PAYMENTS_IDEMPOTENCY: _i(409, "the idempotency key was used with other parameters"),
    C.E_PAYMENT_DECLINED: _i(402, "the payment was declined"),
    C.E_PAYMENT_NOT_FOUND: _i(404, "no such payment at the payment service"),
    C.E_PAYMENTS_BAD_RESPONSE: _i(502, "the payment service answered something we did not ask for"),
    C.E_PAYMENTS_BAD_ID: _i(422, "a payment id of the wrong form"),
}


def status_of(code: Code) -> int:
    return CODES[code].status


class PortalError(CodedError[Code]):
    """A refused portal operation: ``code`` (stable, from ``Code``) and ``message`` (a sentence)."""

    code_type = Code
    statuses = CODES


__all__ = ["CODES", "Code", "CodeInfo", "PortalError", "status_of"]
