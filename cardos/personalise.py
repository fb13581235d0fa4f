"""Personalisation: the first card image of a new card (ARCHITECTURE.md, flow 1 "Issue").

Pure: it receives the card's already-diversified keys (the key store derives them with
``crypto.derive_card_key``; master keys never come here), the public and management
files, and for social security cards the holder file and citizen-auth material. It
checks what the card profile requires (``card-profile.md``, "Applications") and
returns a ``CardImage``; the caller decides where to store it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from cardos.auth import load_signing_key
from cardos.image import HOLDER_LEN, AuthState, CardImage, CardKeys, PurseState
from cardos.profile import PURSE_MAX_FEN, CardType
from cardos.records import ManagementInfo, PublicInfo


class PersonaliseError(ValueError):
    """E_PERSONALISE: the inputs do not make a valid Yikatong card."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"E_PERSONALISE: {reason}")


@dataclass(frozen=True, slots=True)
class AuthMaterial:
    """The citizen-auth key pair and certificate the issuer CA made for this card, and its PIN."""

    private_key_pem: bytes = field(repr=False)
    certificate_der: bytes
    pin: str = field(repr=False)


def personalise(
    *,
    keys: CardKeys,
    public: PublicInfo,
    management: ManagementInfo,
    holder: bytes | None = None,
    balance_fen: int = 0,
    auth: AuthMaterial | None = None,
) -> CardImage:
    """The image of a fresh card: counters 0, empty records, full PIN tries."""
    if public.card_type is not management.card_type:
        raise PersonaliseError(f"card type {public.card_type} in 0x15 but {management.card_type} in 0x17")
    if public.card_type is CardType.SOCIAL_SECURITY and (holder is None or auth is None):
        raise PersonaliseError("a social security card needs the holder file 0x16 and citizen-auth material")
    if holder is not None and len(holder) != HOLDER_LEN:
        raise PersonaliseError(f"holder file 0x16 must be {HOLDER_LEN} bytes, got {len(holder)}")
    if not 0 <= balance_fen <= PURSE_MAX_FEN:
        raise PersonaliseError(f"opening balance {balance_fen} fen outside 0..{PURSE_MAX_FEN}")
    auth_state = None
    if auth is not None:
        _check_auth(auth)
        auth_state = AuthState(auth.private_key_pem, auth.certificate_der, auth.pin)
    return CardImage(
        public=public.encode(),
        management=management.encode(),
        keys=keys,
        purse=PurseState(balance_fen=balance_fen),
        holder=holder,
        auth=auth_state,
    )


def _check_auth(auth: AuthMaterial) -> None:
    """The certificate must be DER and certify the public half of the card's key."""
    if not (len(auth.pin) == 6 and auth.pin.isascii() and auth.pin.isdigit()):
        raise PersonaliseError("the PIN must be 6 ASCII digits")
    try:
        key = load_signing_key(auth.private_key_pem)
        cert = x509.load_der_x509_certificate(auth.certificate_der)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise PersonaliseError(f"unusable auth material: {exc}") from exc
    raw = PublicFormat.SubjectPublicKeyInfo
    if cert.public_key().public_bytes(Encoding.DER, raw) != key.public_key().public_bytes(Encoding.DER, raw):
        raise PersonaliseError("the certificate does not certify the card's auth key")
