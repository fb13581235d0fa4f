"""The one registry of stable codes: the same strings in API answers, logs, the CLI and the exception queue.

Every refusal anywhere in clearing is a ``clearing.errors.ClearingError`` carrying one of
these codes and a human sentence; every record verdict carries one too. ``CODES`` says, for
each, what it means and the HTTP status an API answers when the code refuses a request
(verdict codes travel inside a ``200`` batch answer; their status is used only where the
same check refuses a single request, such as a load's TAC). ``docs/clearing.md`` prints the
table of the record codes with what already moved and what each decision does.

Prefixes: ``E_`` refused, ``S_`` suspect (stored and posted or held, a person looks),
``I_`` information (forwarded, queued), ``OK``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final


class Code(StrEnum):
    OK = "OK"
    # --- record verdicts (spec/terminal-api.md "Reason codes") -------------------------------
    E_TAC_MISMATCH = "E_TAC_MISMATCH"
    E_DUPLICATE_TERMINAL_SEQ = "E_DUPLICATE_TERMINAL_SEQ"
    E_DUPLICATE_CARD_COUNTER = "E_DUPLICATE_CARD_COUNTER"
    E_UNKNOWN_ISSUER = "E_UNKNOWN_ISSUER"
    E_UNKNOWN_TERMINAL = "E_UNKNOWN_TERMINAL"
    E_UNKNOWN_CARD = "E_UNKNOWN_CARD"
    E_DENYLISTED = "E_DENYLISTED"
    E_AMOUNT_LIMIT = "E_AMOUNT_LIMIT"
    E_BAD_TIME = "E_BAD_TIME"
    E_KEY_UNAVAILABLE = "E_KEY_UNAVAILABLE"
    E_UNJUDGEABLE = "E_UNJUDGEABLE"
    S_BALANCE_DISCONTINUITY = "S_BALANCE_DISCONTINUITY"
    S_COUNTER_GAP = "S_COUNTER_GAP"
    S_TAPOFF_NO_ENTRY = "S_TAPOFF_NO_ENTRY"
    S_REFUND_MISMATCH = "S_REFUND_MISMATCH"
    I_FORWARDED_INTEROP = "I_FORWARDED_INTEROP"
    # --- request level: the terminal API -----------------------------------------------------
    E_BATCH_CONFLICT = "E_BATCH_CONFLICT"
    E_MALFORMED = "E_MALFORMED"
    E_TOO_LARGE = "E_TOO_LARGE"
    E_UNAUTHORIZED = "E_UNAUTHORIZED"
    E_FORBIDDEN = "E_FORBIDDEN"
    E_NOT_FOUND = "E_NOT_FOUND"
    E_METHOD_NOT_ALLOWED = "E_METHOD_NOT_ALLOWED"
    E_INTERNAL = "E_INTERNAL"
    E_UNAVAILABLE = "E_UNAVAILABLE"
    I_QUEUED = "I_QUEUED"
    # --- online loads ------------------------------------------------------------------------
    E_UNKNOWN_LOAD = "E_UNKNOWN_LOAD"
    E_BAD_LOAD_ID = "E_BAD_LOAD_ID"
    E_LOAD_CONFLICT = "E_LOAD_CONFLICT"
    E_LOAD_STATE = "E_LOAD_STATE"
    E_LOAD_IN_DOUBT = "E_LOAD_IN_DOUBT"
    E_WRONG_CARD = "E_WRONG_CARD"
    E_WRONG_AMOUNT = "E_WRONG_AMOUNT"
    E_MAC1_MISMATCH = "E_MAC1_MISMATCH"
    E_BAD_ALGORITHM = "E_BAD_ALGORITHM"
    E_UNKNOWN_KEY = "E_UNKNOWN_KEY"
    E_CARD_NOT_ACTIVE = "E_CARD_NOT_ACTIVE"
    E_BAD_AMOUNT = "E_BAD_AMOUNT"
    # --- ledger --------------------------------------------------------------------------
    E_TRANSFER_CONFLICT = "E_TRANSFER_CONFLICT"
    E_INVALID_TRANSFER = "E_INVALID_TRANSFER"
    E_ACCOUNT_NOT_FOUND = "E_ACCOUNT_NOT_FOUND"
    E_LEDGER_MISMATCH = "E_LEDGER_MISMATCH"
    E_DEBITS_EXCEED_CREDITS = "E_DEBITS_EXCEED_CREDITS"
    E_CREDITS_EXCEED_DEBITS = "E_CREDITS_EXCEED_DEBITS"
    E_PENDING_NOT_FOUND = "E_PENDING_NOT_FOUND"
    E_PENDING_ALREADY_RESOLVED = "E_PENDING_ALREADY_RESOLVED"
    E_PENDING_AMOUNT = "E_PENDING_AMOUNT"
    E_LEDGER_INVARIANT = "E_LEDGER_INVARIANT"
    # --- exception queue -------------------------------------------------------------------
    E_NO_SUCH_EXCEPTION = "E_NO_SUCH_EXCEPTION"
    E_ALREADY_DECIDED = "E_ALREADY_DECIDED"
    E_UNVERIFIED_RECORD = "E_UNVERIFIED_RECORD"
    E_DUPLICATE_TAP = "E_DUPLICATE_TAP"
    E_NOTE_REQUIRED = "E_NOTE_REQUIRED"
    E_NOTE_TOO_LONG = "E_NOTE_TOO_LONG"
    E_NO_RECORD = "E_NO_RECORD"
    E_BAD_RECORD = "E_BAD_RECORD"
    E_BAD_STATE = "E_BAD_STATE"
    E_DECISION_NOT_ALLOWED = "E_DECISION_NOT_ALLOWED"
    # --- denylist ----------------------------------------------------------------------------
    E_BAD_REASON = "E_BAD_REASON"
    E_BAD_CARD_ID = "E_BAD_CARD_ID"
    E_NOT_LISTED = "E_NOT_LISTED"
    # --- lost-card replacement (clearing.replacement) -----------------------------------------
    E_CARD_NOT_LOST = "E_CARD_NOT_LOST"
    E_REPLACEMENT_TOO_EARLY = "E_REPLACEMENT_TOO_EARLY"
    E_REPLACEMENT_LOADS_OPEN = "E_REPLACEMENT_LOADS_OPEN"
    # --- registry and issuance ---------------------------------------------------------------
    E_BAD_TERMINAL_ID = "E_BAD_TERMINAL_ID"
    E_BAD_OPERATOR = "E_BAD_OPERATOR"
    E_BAD_ROUTE = "E_BAD_ROUTE"
    E_TERMINAL_EXISTS = "E_TERMINAL_EXISTS"
    E_NOT_OUR_ISSUER = "E_NOT_OUR_ISSUER"
    E_BAD_ISSUER = "E_BAD_ISSUER"
    E_ISSUER_EXISTS = "E_ISSUER_EXISTS"
    E_BAD_ASN = "E_BAD_ASN"
    E_ASN_EXHAUSTED = "E_ASN_EXHAUSTED"
    E_CARD_EXISTS = "E_CARD_EXISTS"
    E_BAD_CARD_TYPE = "E_BAD_CARD_TYPE"
    E_BAD_BALANCE = "E_BAD_BALANCE"
    E_BAD_HOLDER = "E_BAD_HOLDER"
    E_BAD_PIN = "E_BAD_PIN"
    # --- key store -------------------------------------------------------------------------
    E_BAD_KEK = "E_BAD_KEK"
    E_KEK_PERMISSIONS = "E_KEK_PERMISSIONS"
    E_KEK_MISMATCH = "E_KEK_MISMATCH"
    E_KEYSTORE_FORMAT = "E_KEYSTORE_FORMAT"
    E_KEY_DECRYPT = "E_KEY_DECRYPT"
    E_KEY_MISSING = "E_KEY_MISSING"
    E_KEYS_EXIST = "E_KEYS_EXIST"
    E_UNKNOWN_KEY_VERSION = "E_UNKNOWN_KEY_VERSION"
    E_BAD_KEY_VERSION = "E_BAD_KEY_VERSION"
    E_KEY_VERSION_EXHAUSTED = "E_KEY_VERSION_EXHAUSTED"
    E_BAD_KEY = "E_BAD_KEY"
    E_BAD_ALG = "E_BAD_ALG"
    E_NO_CA = "E_NO_CA"
    E_NO_ISSUERS = "E_NO_ISSUERS"
    E_CEREMONY_FILE = "E_CEREMONY_FILE"
    E_CEREMONY_FORMAT = "E_CEREMONY_FORMAT"
    # --- operations (CLI) --------------------------------------------------------------------
    E_DATABASE = "E_DATABASE"
    E_NO_DATABASE = "E_NO_DATABASE"
    E_DB_NOT_MIGRATED = "E_DB_NOT_MIGRATED"
    E_NO_KEYSTORE = "E_NO_KEYSTORE"
    E_NO_KEK = "E_NO_KEK"
    E_IO = "E_IO"
    E_ABORTED = "E_ABORTED"


@dataclass(frozen=True, slots=True)
class CodeInfo:
    status: int  # the HTTP status when this code refuses a request
    meaning: str


def _i(status: int, meaning: str) -> CodeInfo:
    return CodeInfo(status, meaning)


C = Code
CODES: Final[dict[Code, CodeInfo]] = {
    C.OK: _i(200, "accepted and cleared"),
    C.E_TAC_MISMATCH: _i(409, "the TAC does not verify with the card's key: the record proves no debit"),
    C.E_DUPLICATE_TERMINAL_SEQ: _i(409, "this terminal sequence was already received"),
    C.E_DUPLICATE_CARD_COUNTER: _i(409, "this card's offline counter was already used"),
    C.E_UNKNOWN_ISSUER: _i(404, "the card's issuer is not known here"),
    C.E_UNKNOWN_TERMINAL: _i(403, "the terminal is not registered, not active, or not the uploader"),
    C.E_UNKNOWN_CARD: _i(404, "an own-issuer card that is not registered"),
    C.E_DENYLISTED: _i(409, "the card was on the denylist at the tap time"),
    C.E_AMOUNT_LIMIT: _i(422, "an amount above the configured limit"),
    C.E_BAD_TIME: _i(422, "a time that is unreadable, out of range, in the future or before the card's start"),
    C.E_KEY_UNAVAILABLE: _i(503, "the key to judge the record is missing here: kept for re-judging, not a forgery"),
    C.E_UNJUDGEABLE: _i(500, "the batch could not be judged; its records are kept in the exception queue"),
    C.S_BALANCE_DISCONTINUITY: _i(409, "the balance before does not follow the card's cleared history"),
    C.S_COUNTER_GAP: _i(409, "counters between the last cleared and this one have not arrived yet"),
    C.S_TAPOFF_NO_ENTRY: _i(409, "a tap-off whose entry leg has not been cleared: no refund until it is"),
    C.S_REFUND_MISMATCH: _i(409, "the terminal's refund claim differs from the refund clearing computed"),
    C.I_FORWARDED_INTEROP: _i(200, "another issuer's card: forwarded to its issuer, who decides"),
    C.E_BATCH_CONFLICT: _i(409, "the batch sequence was already received with other content"),
    C.E_MALFORMED: _i(422, "the body does not match the contract; nothing was stored"),
    C.E_TOO_LARGE: _i(413, "the body is larger than the contract allows; nothing was read"),
    C.E_UNAUTHORIZED: _i(401, "missing or wrong bearer token"),
    C.E_FORBIDDEN: _i(403, "another terminal's token"),
    C.E_NOT_FOUND: _i(404, "no such path"),
    C.E_METHOD_NOT_ALLOWED: _i(405, "the path does not take this method"),
    C.E_INTERNAL: _i(500, "an unexpected fault; nothing of the request was committed"),
    C.E_UNAVAILABLE: _i(503, "a store is unreachable; retry later"),
    C.I_QUEUED: _i(503, "queued for a clearing worker; ask again after Retry-After"),
    C.E_UNKNOWN_LOAD: _i(404, "no such load"),
    C.E_BAD_LOAD_ID: _i(422, "a load id outside the allowed form"),
    C.E_LOAD_CONFLICT: _i(409, "the load id exists for another card or amount"),
    C.E_LOAD_STATE: _i(409, "the load is not in a state that allows this step"),
    C.E_LOAD_IN_DOUBT: _i(409, "the card may already hold the load: resolve it from the card, never by a new MAC2"),
    C.E_WRONG_CARD: _i(409, "the load belongs to another card"),
    C.E_WRONG_AMOUNT: _i(409, "the load is for another amount"),
    C.E_MAC1_MISMATCH: _i(409, "MAC1 does not verify: not the card the load is for"),
    C.E_BAD_ALGORITHM: _i(409, "an algorithm id the card profile does not define"),
    C.E_UNKNOWN_KEY: _i(409, "no key of that version for the card's issuer"),
    C.E_CARD_NOT_ACTIVE: _i(409, "the card is lost, blocked, replaced or denylisted"),
    C.E_BAD_AMOUNT: _i(422, "an amount outside what the operation allows"),
    C.E_TRANSFER_CONFLICT: _i(409, "the transfer id was already used with other fields"),
    C.E_INVALID_TRANSFER: _i(422, "a transfer that breaks the ledger's shape rules"),
    C.E_ACCOUNT_NOT_FOUND: _i(404, "no such ledger account"),
    C.E_LEDGER_MISMATCH: _i(409, "the accounts are on different ledgers"),
    C.E_DEBITS_EXCEED_CREDITS: _i(409, "the account cannot be debited that much"),
    C.E_CREDITS_EXCEED_DEBITS: _i(409, "the account cannot be credited that much"),
    C.E_PENDING_NOT_FOUND: _i(404, "no such pending transfer"),
    C.E_PENDING_ALREADY_RESOLVED: _i(409, "the pending transfer was already posted or voided"),
    C.E_PENDING_AMOUNT: _i(409, "more than the pending transfer reserved"),
    C.E_LEDGER_INVARIANT: _i(500, "the ledger's totals disagree"),
    C.E_NO_SUCH_EXCEPTION: _i(404, "no such exception item"),
    C.E_ALREADY_DECIDED: _i(409, "the item was already decided"),
    C.E_UNVERIFIED_RECORD: _i(409, "the record's TAC does not verify: it proves no debit and cannot be paid"),
    C.E_DUPLICATE_TAP: _i(409, "another tap already holds the record's natural key"),
    C.E_NOTE_REQUIRED: _i(422, "this decision needs a note saying why"),
    C.E_NOTE_TOO_LONG: _i(422, "the note is too long"),
    C.E_NO_RECORD: _i(409, "the item carries no record"),
    C.E_BAD_RECORD: _i(409, "the item's record is unusable"),
    C.E_BAD_STATE: _i(422, "an unknown exception state"),
    C.E_DECISION_NOT_ALLOWED: _i(409, "this decision is not allowed for this item"),
    C.E_BAD_REASON: _i(422, "a denylist reason outside the allowed length"),
    C.E_BAD_CARD_ID: _i(422, "an issuer id or ASN of the wrong form"),
    C.E_NOT_LISTED: _i(404, "the card is not on the denylist"),
    C.E_CARD_NOT_LOST: _i(409, "only a card reported lost (on the denylist, not replaced) is replaced"),
    C.E_REPLACEMENT_TOO_EARLY: _i(409, "the waiting period after the lost-card report is not over"),
    C.E_REPLACEMENT_LOADS_OPEN: _i(409, "the lost card has loads pending or authorized: refund or resolve them first"),
    C.E_BAD_TERMINAL_ID: _i(422, "a terminal id that is not 12 hex digits"),
    C.E_BAD_OPERATOR: _i(422, "an operator id of the wrong form"),
    C.E_BAD_ROUTE: _i(422, "a route id of the wrong form, or one the tariff does not have"),
    C.E_TERMINAL_EXISTS: _i(409, "the terminal is already registered"),
    C.E_NOT_OUR_ISSUER: _i(409, "the issuer is registered but not ours to issue for"),
    C.E_BAD_ISSUER: _i(422, "an issuer id of the wrong form"),
    C.E_ISSUER_EXISTS: _i(409, "the issuer is already registered with other details"),
    C.E_BAD_ASN: _i(422, "an ASN of the wrong form"),
    C.E_ASN_EXHAUSTED: _i(409, "no free ASN left"),
    C.E_CARD_EXISTS: _i(409, "the card is already registered"),
    C.E_BAD_CARD_TYPE: _i(422, "an unknown card type"),
    C.E_BAD_BALANCE: _i(422, "an opening balance outside the purse's range"),
    C.E_BAD_HOLDER: _i(422, "holder data that does not fit the holder file"),
    C.E_BAD_PIN: _i(422, "a PIN that is not 6 digits"),
    C.E_BAD_KEK: _i(500, "the KEK is not 32 bytes of hex"),
    C.E_KEK_PERMISSIONS: _i(500, "the dev KEK file is readable by others"),
    C.E_KEK_MISMATCH: _i(500, "the KEK does not open the key store"),
    C.E_KEYSTORE_FORMAT: _i(500, "the key store file is not a key store"),
    C.E_KEY_DECRYPT: _i(500, "a key does not decrypt under the KEK"),
    C.E_KEY_MISSING: _i(409, "the key store lacks a key"),
    C.E_KEYS_EXIST: _i(409, "keys already exist for that issuer and version"),
    C.E_UNKNOWN_KEY_VERSION: _i(409, "no such key version"),
    C.E_BAD_KEY_VERSION: _i(422, "a key version outside 0..255"),
    C.E_KEY_VERSION_EXHAUSTED: _i(409, "no key version left"),
    C.E_BAD_KEY: _i(422, "a key of the wrong length or form"),
    C.E_BAD_ALG: _i(422, "an unknown algorithm id"),
    C.E_NO_CA: _i(409, "the issuer has no CA yet"),
    C.E_NO_ISSUERS: _i(409, "the key store holds no issuers"),
    C.E_CEREMONY_FILE: _i(422, "the key ceremony file cannot be read"),
    C.E_CEREMONY_FORMAT: _i(422, "the key ceremony file is not in the documented form"),
    C.E_DATABASE: _i(503, "the database refused or is unreachable"),
    C.E_NO_DATABASE: _i(503, "the configured SQLite database does not exist (only `yikatong init` creates one)"),
    C.E_DB_NOT_MIGRATED: _i(503, "the database is not at this version's schema (`yikatong init` migrates it)"),
    C.E_NO_KEYSTORE: _i(503, "the configured key store does not exist (only `yikatong init` creates one)"),
    C.E_NO_KEK: _i(503, "no KEK: YIKATONG_KEK is unset and the dev KEK file does not exist"),
    C.E_IO: _i(500, "a file could not be read or written"),
    C.E_ABORTED: _i(409, "the operator answered no; nothing was done"),
}
del C

REASON_CODES: Final = frozenset(Code)
# The codes a record's verdict may carry (spec/terminal-api.md, "Reason codes", and the codes
# added since: docs/clearing.md has the table of what moved and what each decision does).
RECORD_CODES: Final = frozenset(
    {
        Code.OK,
        Code.E_TAC_MISMATCH,
        Code.E_DUPLICATE_TERMINAL_SEQ,
        Code.E_DUPLICATE_CARD_COUNTER,
        Code.E_UNKNOWN_ISSUER,
        Code.E_UNKNOWN_TERMINAL,
        Code.E_UNKNOWN_CARD,
        Code.E_DENYLISTED,
        Code.E_AMOUNT_LIMIT,
        Code.E_BAD_TIME,
        Code.E_KEY_UNAVAILABLE,
        Code.E_UNJUDGEABLE,
        Code.S_BALANCE_DISCONTINUITY,
        Code.S_COUNTER_GAP,
        Code.S_TAPOFF_NO_ENTRY,
        Code.S_REFUND_MISMATCH,
        Code.I_FORWARDED_INTEROP,
    }
)

ACCEPTED: Final = "accepted"
REJECTED: Final = "rejected"
SUSPECT: Final = "suspect"
FORWARDED: Final = "forwarded"
VERDICTS: Final = (ACCEPTED, REJECTED, SUSPECT, FORWARDED)


def status_of(code: Code) -> int:
    return CODES[code].status
