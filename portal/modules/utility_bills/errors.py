"""The utility bills module's one error and its registry of stable codes (``docs/utility-bills.md``).

As the other modules: a ``BillError`` carries a code from ``BillCode`` and a sentence; JSON
bodies, pages and logs show the same string. No code repeats another registry's. Messages never
carry a name or a card number (account numbers are the biller's, shown masked).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from clearing.errors import CodedError


class BillCode(StrEnum):
    E_BILL_NOT_FOUND = "E_BILL_NOT_FOUND"
    E_BILL_BILLER_UNKNOWN = "E_BILL_BILLER_UNKNOWN"
    E_BILL_PAID = "E_BILL_PAID"
    E_BILL_IN_PAYMENT = "E_BILL_IN_PAYMENT"
    E_BILL_MALFORMED = "E_BILL_MALFORMED"
    E_BILL_IMPORT = "E_BILL_IMPORT"
    E_BILL_SESSION_UNKNOWN = "E_BILL_SESSION_UNKNOWN"
    E_BILL_SESSION_STEP = "E_BILL_SESSION_STEP"
    E_BILL_CARD_NOT_BOUND = "E_BILL_CARD_NOT_BOUND"
    E_BILL_CARD_REFUSED = "E_BILL_CARD_REFUSED"
    E_BILL_CLEARING_REFUSED = "E_BILL_CLEARING_REFUSED"
    E_BILL_SESSION_REQUIRED = "E_BILL_SESSION_REQUIRED"
    E_BILL_PAYMENTS = "E_BILL_PAYMENTS"


@dataclass(frozen=True, slots=True)
class CodeInfo:
    status: int
    meaning: str


C = BillCode
CODES: Final[dict[BillCode, CodeInfo]] = {
    C.E_BILL_NOT_FOUND: CodeInfo(404, "no open or paid bill with that biller and account number"),
    C.E_BILL_BILLER_UNKNOWN: CodeInfo(404, "no such biller"),
    C.E_BILL_PAID: CodeInfo(409, "the bill is already paid"),
    C.E_BILL_IN_PAYMENT: CodeInfo(409, "a payment of this bill is under way: finish it or wait for it"),
    C.E_BILL_MALFORMED: CodeInfo(422, "the request is incomplete or malformed"),
    C.E_BILL_IMPORT: CodeInfo(422, "the biller's file has bad rows: nothing was imported"),
    C.E_BILL_SESSION_UNKNOWN: CodeInfo(404, "this purse payment has ended or never existed: start again"),
    C.E_BILL_SESSION_STEP: CodeInfo(409, "this answer is not for the step the purse payment waits for"),
    C.E_BILL_CARD_NOT_BOUND: CodeInfo(403, "the card on the reader is not bound to your account"),
    C.E_BILL_CARD_REFUSED: CodeInfo(409, "the card refused the payment"),
    C.E_BILL_CLEARING_REFUSED: CodeInfo(409, "clearing refused the purse record: the bill stays open"),
    C.E_BILL_SESSION_REQUIRED: CodeInfo(401, "log in first"),
    C.E_BILL_PAYMENTS: CodeInfo(503, "the payment service is unavailable: try again"),
}
del C


class BillError(CodedError[BillCode]):
    """A refused bill operation: ``code`` (stable) and ``message`` (a sentence)."""

    code_type = BillCode
    statuses = CODES


__all__ = ["CODES", "BillCode", "BillError", "CodeInfo"]
