"""What the key store's parts share: the error, the file format's name, issuer ids and ASNs."""

from __future__ import annotations

import datetime as dt
from typing import Final

from cardos.profile import ISSUERS
from clearing.contract.codes import Code
from clearing.errors import ClearingError

FORMAT: Final = "yikatong-keystore"
FORMAT_VERSION: Final = 1


def issuer_bytes(issuer: str | bytes) -> bytes:
    """Issuer id from bytes, 16 hex chars, or a built-in city name (``xianyang``, ``xian``)."""
    if isinstance(issuer, bytes):
        raw = issuer
    elif issuer.lower() in ISSUERS:
        raw = ISSUERS[issuer.lower()]
    else:
        try:
            raw = bytes.fromhex(issuer)
        except ValueError:
            raise ClearingError(
                Code.E_BAD_ISSUER, f"issuer {issuer!r} is neither a city name nor 16 hex chars"
            ) from None
    if len(raw) != 8:
        raise ClearingError(Code.E_BAD_ISSUER, f"issuer id must be 8 bytes, got {len(raw)}")
    return raw


def asn_bytes(asn: str | bytes) -> bytes:
    """The 8 bytes of a card ASN that diversification uses (its last 8 of 10)."""
    if isinstance(asn, str):
        try:
            asn = bytes.fromhex(asn)
        except ValueError:
            raise ClearingError(Code.E_BAD_ASN, "card ASN is not hex") from None
    if len(asn) not in (8, 10):
        raise ClearingError(Code.E_BAD_ASN, f"card ASN must be 10 bytes (or its last 8), got {len(asn)}")
    return asn[-8:]


def associated_data(issuer_hex: str, version: str, name: str) -> bytes:
    """AES-GCM associated data of one slot: a ciphertext moved to another slot does not decrypt."""
    return f"{FORMAT}/{FORMAT_VERSION}|{issuer_hex}|{version}|{name}".encode()


def city_of(issuer_hex: str) -> str | None:
    """The built-in city of an issuer id, if it is one (informational, stored in the file)."""
    for city, iid in ISSUERS.items():
        if iid.hex() == issuer_hex:
            return city
    return None


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "ClearingError",
    "asn_bytes",
    "associated_data",
    "city_of",
    "issuer_bytes",
    "utc_now",
]
