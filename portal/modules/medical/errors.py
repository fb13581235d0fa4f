"""The medical module's one error and its registry of stable codes.

Follows ``settlement.errors``: a ``MedicalError`` carries a code from ``MedicalCode`` and a
sentence; the same string appears in API bodies, the clinic terminal's console and logs. No
code repeats another registry's string. Messages never carry a name or an ID number; a card
is named by its masked ASN at most.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from clearing.errors import CodedError


class MedicalCode(StrEnum):
    # --- rules (portal.modules.medical.rules) -----------------------------------------------
    E_MED_RULES_FILE = "E_MED_RULES_FILE"
    E_MED_NO_RULE = "E_MED_NO_RULE"
    E_MED_BAD_BILL = "E_MED_BAD_BILL"
    # --- members and visits (portal.modules.medical.visits) ---------------------------------
    E_MED_NOT_ENROLLED = "E_MED_NOT_ENROLLED"
    E_MED_CARD_INACTIVE = "E_MED_CARD_INACTIVE"
    E_MED_HOLDER_NOT_AUTHENTICATED = "E_MED_HOLDER_NOT_AUTHENTICATED"
    E_MED_NOT_A_CLINIC = "E_MED_NOT_A_CLINIC"
    E_MED_VISIT_CONFLICT = "E_MED_VISIT_CONFLICT"
    E_MED_VISIT_OPEN = "E_MED_VISIT_OPEN"
    E_MED_VISIT_NOT_FOUND = "E_MED_VISIT_NOT_FOUND"
    E_MED_VISIT_STATE = "E_MED_VISIT_STATE"
    E_MED_PURSE_RECORD = "E_MED_PURSE_RECORD"
    E_MED_PURSE_TAC = "E_MED_PURSE_TAC"
    # --- claims (portal.modules.medical.claims) ---------------------------------------------
    E_MED_CLAIM_NOT_FOUND = "E_MED_CLAIM_NOT_FOUND"
    E_MED_CLAIM_STATE = "E_MED_CLAIM_STATE"
    E_MED_CLAIM_REASON = "E_MED_CLAIM_REASON"
    E_MED_CLAIM_DOCUMENT = "E_MED_CLAIM_DOCUMENT"
    E_MED_CLAIM_MALFORMED = "E_MED_CLAIM_MALFORMED"


@dataclass(frozen=True, slots=True)
class CodeInfo:
    status: int
    meaning: str


C = MedicalCode
CODES: Final[dict[MedicalCode, CodeInfo]] = {
    C.E_MED_RULES_FILE: CodeInfo(500, "the rule table file cannot be read or breaks a rule of its form"),
    C.E_MED_NO_RULE: CodeInfo(422, "no rule table for this year, region and hospital level"),
    C.E_MED_BAD_BILL: CodeInfo(422, "a bill that is negative, above the limit, or covers more than its total"),
    C.E_MED_NOT_ENROLLED: CodeInfo(404, "the card's holder is not enrolled in the scheme for that year"),
    C.E_MED_CARD_INACTIVE: CodeInfo(409, "the card is not registered or not active"),
    C.E_MED_HOLDER_NOT_AUTHENTICATED: CodeInfo(401, "the holder's PIN-gated signature does not verify for this card"),
    C.E_MED_NOT_A_CLINIC: CodeInfo(403, "the terminal is not registered as a clinic"),
    C.E_MED_VISIT_CONFLICT: CodeInfo(409, "the same visit reference with other contents"),
    C.E_MED_VISIT_OPEN: CodeInfo(409, "the card has an unsettled visit at this clinic: settle or cancel it first"),
    C.E_MED_VISIT_NOT_FOUND: CodeInfo(404, "no such visit at this terminal"),
    C.E_MED_VISIT_STATE: CodeInfo(409, "the visit is not in a state that allows this step"),
    C.E_MED_PURSE_RECORD: CodeInfo(422, "the purse record is not the patient's share of this visit"),
    C.E_MED_PURSE_TAC: CodeInfo(422, "the purse record's TAC does not verify: the card did not sign it"),
    C.E_MED_CLAIM_NOT_FOUND: CodeInfo(404, "no such claim for this citizen"),
    C.E_MED_CLAIM_STATE: CodeInfo(409, "the claim is not in a state that allows this step"),
    C.E_MED_CLAIM_REASON: CodeInfo(422, "a rejection without a known reason code"),
    C.E_MED_CLAIM_DOCUMENT: CodeInfo(422, "a document of a type or size the claim does not take"),
    C.E_MED_CLAIM_MALFORMED: CodeInfo(422, "a claim form with a missing or malformed field"),
}
del C


class MedicalError(CodedError[MedicalCode]):
    """A refused medical-insurance operation: ``code`` (stable) and ``message`` (a sentence)."""

    code_type = MedicalCode
    statuses = CODES


__all__ = ["CODES", "CodeInfo", "MedicalCode", "MedicalError"]
