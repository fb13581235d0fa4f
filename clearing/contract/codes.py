"""Stable reason codes and verdicts; the same strings in API answers, logs and the exception queue."""

from __future__ import annotations

from enum import StrEnum
from typing import Final


class Code(StrEnum):
    OK = "OK"
    E_TAC_MISMATCH = "E_TAC_MISMATCH"
    E_DUPLICATE_TERMINAL_SEQ = "E_DUPLICATE_TERMINAL_SEQ"
    E_DUPLICATE_CARD_COUNTER = "E_DUPLICATE_CARD_COUNTER"
    E_UNKNOWN_ISSUER = "E_UNKNOWN_ISSUER"
    E_UNKNOWN_TERMINAL = "E_UNKNOWN_TERMINAL"
    E_UNKNOWN_CARD = "E_UNKNOWN_CARD"
    E_DENYLISTED = "E_DENYLISTED"
    E_AMOUNT_LIMIT = "E_AMOUNT_LIMIT"
    E_BAD_TIME = "E_BAD_TIME"
    S_BALANCE_DISCONTINUITY = "S_BALANCE_DISCONTINUITY"
    S_COUNTER_GAP = "S_COUNTER_GAP"
    I_FORWARDED_INTEROP = "I_FORWARDED_INTEROP"
    # request-level codes
    E_BATCH_CONFLICT = "E_BATCH_CONFLICT"
    E_MALFORMED = "E_MALFORMED"
    E_UNAUTHORIZED = "E_UNAUTHORIZED"
    E_FORBIDDEN = "E_FORBIDDEN"


REASON_CODES: Final = frozenset(Code)

ACCEPTED: Final = "accepted"
REJECTED: Final = "rejected"
SUSPECT: Final = "suspect"
FORWARDED: Final = "forwarded"
VERDICTS: Final = (ACCEPTED, REJECTED, SUSPECT, FORWARDED)
