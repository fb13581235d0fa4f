"""Claims for treatment elsewhere (异地就医报销): the state machine, reason codes and document rules, pure.

After openIMIS's claim life cycle (Entered → Checked → Valuated → Processed/Paid, or Rejected with
a numbered reason), reduced to what a citizen's online claim needs (``docs/medical.md``, "Claims"):

| from | action (who) | to |
| --- | --- | --- |
| — | ``submit`` (citizen, card login) | ``submitted`` |
| ``submitted`` | ``check`` (staff: documents read, the catalogue part set) | ``checked`` |
| ``checked`` | ``valuate`` (staff: priced by the rules, the accumulator moved) | ``valuated`` |
| ``valuated`` | ``pay`` (staff: a load of the fund's share to the purse) | ``paid`` |
| ``submitted``, ``checked``, ``valuated`` | ``reject`` (staff, with a reason code) | ``rejected`` |

``paid`` and ``rejected`` are final. Documents may be added while ``submitted`` only.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from portal.modules.medical.errors import MedicalCode, MedicalError


class ClaimState(StrEnum):
    SUBMITTED = "submitted"
    CHECKED = "checked"
    VALUATED = "valuated"
    PAID = "paid"
    REJECTED = "rejected"


class ClaimAction(StrEnum):
    CHECK = "check"
    VALUATE = "valuate"
    PAY = "pay"
    REJECT = "reject"


TRANSITIONS: Final[dict[tuple[ClaimState, ClaimAction], ClaimState]] = {
    (ClaimState.SUBMITTED, ClaimAction.CHECK): ClaimState.CHECKED,
    (ClaimState.CHECKED, ClaimAction.VALUATE): ClaimState.VALUATED,
    (ClaimState.VALUATED, ClaimAction.PAY): ClaimState.PAID,
    (ClaimState.SUBMITTED, ClaimAction.REJECT): ClaimState.REJECTED,
    (ClaimState.CHECKED, ClaimAction.REJECT): ClaimState.REJECTED,
    (ClaimState.VALUATED, ClaimAction.REJECT): ClaimState.REJECTED,
}
FINAL: Final = frozenset({ClaimState.PAID, ClaimState.REJECTED})

# openIMIS's rejection reasons (its claim processing, reasons -1 … 19), the ones that apply to a
# citizen's claim for treatment elsewhere, with their numbers kept; D1 is ours (documents).
REJECTION_REASONS: Final[dict[str, str]] = {
    "-1": "rejected by the reviewer",
    "1": "item or service not in the scheme's catalogue",
    "3": "not covered by an active enrolment of the patient",
    "6": "item or service duplicated (already claimed or settled at a clinic)",
    "7": "invalid insurance number",
    "9": "invalid date of treatment",
    "10": "type of care not consistent with the facility",
    "D1": "documents missing, unreadable or not matching the claim",
}

DOC_TYPES: Final = ("invoice", "itemised_bill", "discharge_summary", "referral", "other")
DOC_CONTENT_TYPES: Final[dict[str, bytes]] = {
    "application/pdf": b"%PDF-",
    "image/jpeg": b"\xff\xd8\xff",
    "image/png": b"\x89PNG\r\n\x1a\n",
}
DOC_BYTES_MAX: Final = 2 * 1024 * 1024
DOCS_PER_CLAIM_MAX: Final = 10
HOSPITAL_NAME_LEN_MAX: Final = 80
CLAIM_DAYS_MAX: Final = 365  # a treatment older than a year is not claimable (reason 9)


def next_state(state: ClaimState, action: ClaimAction) -> ClaimState:
    """The state ``action`` leads to from ``state``, or ``E_MED_CLAIM_STATE``."""
    to = TRANSITIONS.get((state, action))
    if to is None:
        raise MedicalError(MedicalCode.E_MED_CLAIM_STATE, f"a {state.value} claim cannot be {action.value}ed")
    return to


def check_reason(code: str) -> str:
    if code not in REJECTION_REASONS:
        known = ", ".join(REJECTION_REASONS)
        raise MedicalError(MedicalCode.E_MED_CLAIM_REASON, f"rejection reason {code[:8]!r} is not one of {known}")
    return code


@dataclass(frozen=True, slots=True)
class Document:
    doc_type: str
    content_type: str
    content: bytes


def check_document(doc: Document) -> Document:
    """Type, declared content type, size, and the file's own first bytes (a renamed file is refused)."""
    if doc.doc_type not in DOC_TYPES:
        raise MedicalError(MedicalCode.E_MED_CLAIM_DOCUMENT, f"a document is one of {', '.join(DOC_TYPES)}")
    magic = DOC_CONTENT_TYPES.get(doc.content_type)
    if magic is None:
        raise MedicalError(MedicalCode.E_MED_CLAIM_DOCUMENT, "a document is a PDF, JPEG or PNG file")
    if not 0 < len(doc.content) <= DOC_BYTES_MAX:
        raise MedicalError(MedicalCode.E_MED_CLAIM_DOCUMENT, f"a document is 1 byte to {DOC_BYTES_MAX // 1024} KiB")
    if not doc.content.startswith(magic):
        raise MedicalError(MedicalCode.E_MED_CLAIM_DOCUMENT, f"the file is not the {doc.content_type} it says it is")
    return doc


__all__ = [
    "DOCS_PER_CLAIM_MAX",
    "DOC_TYPES",
    "FINAL",
    "REJECTION_REASONS",
    "TRANSITIONS",
    "ClaimAction",
    "ClaimState",
    "Document",
    "check_document",
    "check_reason",
    "next_state",
]
