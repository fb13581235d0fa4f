"""Project-defined constants of the Yikatong card profile (``card-profile.md``).

Everything a real deployment would replace with the issuer's own values lives here.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

AID_PURSE: Final = bytes.fromhex("A000000632010105")  # T-Union e-purse
AID_AUTH: Final = bytes.fromhex("F0594B5441555448")  # "YKTAUTH", project-defined
PSAM_DF_TUNION: Final = bytes.fromhex("8011")

PURSE_MAX_FEN: Final = 1_000_000  # 10,000 CNY
LOG_RECORDS: Final = 10  # SFI 0x18, cyclic, 23 bytes
TRANSIT_RECORDS: Final = 30  # SFI 0x1E, cyclic, 48 bytes
PIN_TRIES_MAX: Final = 3
PURSE_KEY_INDEX: Final = 0x01  # the one key index INITIALIZE accepts (SH sends 01); others get 9403
# Committed transactions a card can still prove (GET TRANSACTION PROVE): the newest 8
# purchases, and apart from them the newest 8 loads, so bus taps never evict a load's proof.
PROVE_ENTRIES_MAX: Final = 8

SFI_PUBLIC: Final = 0x15
SFI_HOLDER: Final = 0x16
SFI_MANAGEMENT: Final = 0x17
SFI_LOG: Final = 0x18
SFI_TRANSIT: Final = 0x1E
SFI_CERT: Final = 0x01  # auth application: X.509 certificate (DER)

# Issuer institution ids (file 0x15 bytes 0-7): issuer code, city code (from the
# postcode), industry code, RFU.
ISSUER_XIANYANG: Final = bytes.fromhex("01007120FFFFFFFF")
ISSUER_XIAN: Final = bytes.fromhex("01007100FFFFFFFF")
ISSUERS: Final = {"xianyang": ISSUER_XIANYANG, "xian": ISSUER_XIAN}
CITY_CODES: Final = {"xianyang": bytes.fromhex("7120"), "xian": bytes.fromhex("7100")}


class CardType(StrEnum):
    """Card types; the byte is file 0x15 offset 28 and file 0x17 offset 10."""

    ORDINARY = "ordinary"
    STUDENT = "student"
    SENIOR = "senior"
    SOCIAL_SECURITY = "social_security"

    @property
    def code(self) -> int:
        return _CARD_TYPE_CODES[self]

    @classmethod
    def from_code(cls, code: int) -> CardType:
        for card_type, value in _CARD_TYPE_CODES.items():
            if value == code:
                return card_type
        raise ValueError(f"unknown card type code {code:#04x}")


_CARD_TYPE_CODES: Final = {
    CardType.ORDINARY: 0x00,
    CardType.SENIOR: 0x01,
    CardType.STUDENT: 0x02,
    CardType.SOCIAL_SECURITY: 0x03,
}
