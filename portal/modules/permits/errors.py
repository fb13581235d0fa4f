"""The permits module's one error and its registry of stable codes (``docs/permits.md``).

As ``settlement.errors`` and the medical module: a ``PermitError`` carries a code from
``PermitCode`` and a sentence; API bodies, pages and logs show the same string. No code repeats
another registry's. Messages never carry a name, an ID number or a card number.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from clearing.errors import CodedError


class PermitCode(StrEnum):
    E_PERMIT_NOT_FOUND = "E_PERMIT_NOT_FOUND"
    E_PERMIT_STATE = "E_PERMIT_STATE"
    E_PERMIT_STALE = "E_PERMIT_STALE"
    E_PERMIT_MATERIALS_ONCE = "E_PERMIT_MATERIALS_ONCE"
    E_PERMIT_NOTICE_TOO_LATE = "E_PERMIT_NOTICE_TOO_LATE"
    E_PERMIT_EXTENSION_USED = "E_PERMIT_EXTENSION_USED"
    E_PERMIT_DEADLINE_PASSED = "E_PERMIT_DEADLINE_PASSED"
    E_PERMIT_REASON_REQUIRED = "E_PERMIT_REASON_REQUIRED"
    E_PERMIT_CALENDAR = "E_PERMIT_CALENDAR"
    E_PERMIT_FORM = "E_PERMIT_FORM"
    E_PERMIT_DOCUMENT_TYPE = "E_PERMIT_DOCUMENT_TYPE"
    E_PERMIT_DOCUMENT_SIZE = "E_PERMIT_DOCUMENT_SIZE"
    E_PERMIT_DOCUMENTS_MAX = "E_PERMIT_DOCUMENTS_MAX"
    E_PERMIT_CARD_LOGIN_REQUIRED = "E_PERMIT_CARD_LOGIN_REQUIRED"


@dataclass(frozen=True, slots=True)
class CodeInfo:
    status: int
    meaning: str


C = PermitCode
CODES: Final[dict[PermitCode, CodeInfo]] = {
    C.E_PERMIT_NOT_FOUND: CodeInfo(404, "no such permit application among yours"),
    C.E_PERMIT_STATE: CodeInfo(409, "the application is not in a state that allows this step"),
    C.E_PERMIT_STALE: CodeInfo(409, "the application changed since this page was loaded: reload it"),
    C.E_PERMIT_MATERIALS_ONCE: CodeInfo(409, "missing materials may be asked for once only"),
    C.E_PERMIT_NOTICE_TOO_LATE: CodeInfo(409, "the 5 working days for asking for missing materials are over"),
    C.E_PERMIT_EXTENSION_USED: CodeInfo(409, "the decision deadline may be extended once only"),
    C.E_PERMIT_DEADLINE_PASSED: CodeInfo(409, "the decision deadline has passed: it can no longer be extended"),
    C.E_PERMIT_REASON_REQUIRED: CodeInfo(422, "this step needs a reason (1 to 500 characters)"),
    C.E_PERMIT_CALENDAR: CodeInfo(409, "the official holiday calendar does not cover the deadline's year yet"),
    C.E_PERMIT_FORM: CodeInfo(422, "the form is incomplete or malformed: reload it and send it again"),
    C.E_PERMIT_DOCUMENT_TYPE: CodeInfo(422, "a document is a PDF, PNG or JPEG file"),
    C.E_PERMIT_DOCUMENT_SIZE: CodeInfo(413, "a document is at most 2 MiB and not empty"),
    C.E_PERMIT_DOCUMENTS_MAX: CodeInfo(409, "an application holds at most 10 documents"),
    C.E_PERMIT_CARD_LOGIN_REQUIRED: CodeInfo(403, "permit records need a card login (log in with your city card)"),
}
del C


class PermitError(CodedError[PermitCode]):
    """A refused permit operation: ``code`` (stable) and ``message`` (a sentence)."""

    code_type = PermitCode
    statuses = CODES


__all__ = ["CODES", "CodeInfo", "PermitCode", "PermitError"]
