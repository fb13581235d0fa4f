"""Status words (``epurse-public-sources.md`` section 11) and the one exception that carries them.

Handlers raise ``StatusError(SW_...)``; the dispatcher turns it into SW1 SW2 in one place.
"""

from __future__ import annotations

from typing import Final

SW_OK: Final = 0x9000
SW_WARN_FILE_INVALID: Final = 0x6283  # selected application locked (denylisted)
SW_EEPROM_FAIL: Final = 0x6581
SW_WRONG_LENGTH: Final = 0x6700
SW_INVALID_STATE: Final = 0x6901
SW_INCOMPATIBLE_FILE: Final = 0x6981
SW_SECURITY_NOT_SATISFIED: Final = 0x6982
SW_AUTH_BLOCKED: Final = 0x6983
SW_CONDITIONS_NOT_SATISFIED: Final = 0x6985
SW_SM_MISSING: Final = 0x6987
SW_SM_WRONG: Final = 0x6988
SW_BAD_DATA: Final = 0x6A80
SW_FUNC_NOT_SUPPORTED: Final = 0x6A81
SW_FILE_NOT_FOUND: Final = 0x6A82
SW_RECORD_NOT_FOUND: Final = 0x6A83
SW_NO_SPACE: Final = 0x6A84
SW_BAD_P1P2: Final = 0x6A86
SW_OFFSET_ERROR: Final = 0x6B00
SW_INS_NOT_SUPPORTED: Final = 0x6D00
SW_CLA_NOT_SUPPORTED: Final = 0x6E00
SW_MAC_ERROR: Final = 0x9302
SW_APP_LOCKED: Final = 0x9303
SW_INSUFFICIENT_BALANCE: Final = 0x9401
SW_KEY_NOT_FOUND: Final = 0x9403
SW_MAC_UNAVAILABLE: Final = 0x9406


def sw_wrong_le(correct_le: int) -> int:
    """6Cxx: resend with Le = xx."""
    return 0x6C00 | (correct_le & 0xFF)


def sw_tries_left(tries: int) -> int:
    """63Cx: verification failed, x tries left."""
    return 0x63C0 | (tries & 0x0F)


class StatusError(Exception):
    """A command refused by the card, carried as its status word."""

    def __init__(self, sw: int, reason: str = "", data: bytes = b"") -> None:
        super().__init__(f"SW {sw:04X}" + (f": {reason}" if reason else ""))
        self.sw = sw
        self.reason = reason
        # Warnings such as 6283 (application blocked) still return response data.
        self.data = data
