"""Citizen authentication application (``card-profile.md``, project-defined, after Web eID).

VERIFY checks the 6-digit PIN against a persistent try counter; INTERNAL AUTHENTICATE
then signs the portal's 64-byte challenge (``SHA-256(origin) || SHA-256(nonce)``) with
the card's ECDSA P-256 key. The certificate itself is EF SFI 0x01 of the auth DF and is
read through the file system (``cardos.filesystem``), not here.

A failed VERIFY costs a try even though it is refused: the decrement is staged with
``even_if_refused=True`` so it commits atomically with the 63Cx answer, and a tear
before the commit point costs nothing but also reveals nothing.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Final

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from cardos.apdu import Command
from cardos.image import PIN_LEN, AuthState
from cardos.profile import PIN_TRIES_MAX
from cardos.sw import (
    SW_AUTH_BLOCKED,
    SW_BAD_DATA,
    SW_BAD_P1P2,
    SW_SECURITY_NOT_SATISFIED,
    SW_WRONG_LENGTH,
    StatusError,
    sw_tries_left,
)

PIN_REFERENCE: Final = 0x01  # P2 of VERIFY
CHALLENGE_LEN: Final = 64  # SHA-256(origin) || SHA-256(nonce)


class AuthMaterialError(ValueError):
    """E_AUTH_MATERIAL: the auth key is not an EC P-256 private key."""


def load_signing_key(private_key_pem: bytes) -> ec.EllipticCurvePrivateKey:
    key = load_pem_private_key(private_key_pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise AuthMaterialError("E_AUTH_MATERIAL: the card's auth key must be an EC P-256 private key")
    return key


class CitizenAuth:
    """PIN state and signing key of one card."""

    def __init__(self, state: AuthState, stage: Callable[..., None]) -> None:
        self.private_key_pem = state.private_key_pem
        self.certificate_der = state.certificate_der
        self._key = load_signing_key(state.private_key_pem)
        self._pin = state.pin.encode("ascii")
        self.pin_tries_left = state.pin_tries_left
        self._stage = stage
        self.verified = False  # volatile: this power session only

    def reset_volatile(self) -> None:
        self.verified = False

    def snapshot(self) -> AuthState:
        return AuthState(self.private_key_pem, self.certificate_der, self._pin.decode("ascii"), self.pin_tries_left)

    def _set_tries(self, tries: int, *, even_if_refused: bool = False) -> None:
        def commit() -> None:
            self.pin_tries_left = tries

        self._stage(commit, even_if_refused=even_if_refused)

    def verify(self, cmd: Command) -> bytes:
        """00 20 00 01 06 <PIN>; without data it reports the state (9000 or 63Cx)."""
        if cmd.p1 != 0x00 or cmd.p2 != PIN_REFERENCE:
            raise StatusError(SW_BAD_P1P2, "VERIFY needs P1 00 and P2 01")
        tries = self.pin_tries_left
        if tries == 0:
            raise StatusError(SW_AUTH_BLOCKED, "PIN blocked")
        pin = cmd.data
        if not pin:
            if self.verified:
                return b""
            raise StatusError(sw_tries_left(tries), f"{tries} PIN tries left")
        if len(pin) != PIN_LEN:
            raise StatusError(SW_WRONG_LENGTH, f"PIN must be {PIN_LEN} bytes")
        if not pin.isdigit():
            raise StatusError(SW_BAD_DATA, "PIN must be ASCII digits")
        if hmac.compare_digest(pin, self._pin):
            if tries != PIN_TRIES_MAX:
                self._set_tries(PIN_TRIES_MAX)
            self.verified = True
            return b""
        self.verified = False
        self._set_tries(tries - 1, even_if_refused=True)
        raise StatusError(sw_tries_left(tries - 1), f"wrong PIN, {tries - 1} tries left")

    def internal_authenticate(self, cmd: Command) -> bytes:
        """00 88 00 00 40 <64 bytes> -> DER ECDSA-SHA256 signature, after VERIFY."""
        if cmd.p1 != 0x00 or cmd.p2 != 0x00:
            raise StatusError(SW_BAD_P1P2, "INTERNAL AUTHENTICATE needs P1 00 and P2 00")
        if len(cmd.data) != CHALLENGE_LEN:
            raise StatusError(SW_WRONG_LENGTH, f"challenge must be {CHALLENGE_LEN} bytes")
        if self.pin_tries_left == 0:
            raise StatusError(SW_AUTH_BLOCKED, "PIN blocked")
        if not self.verified:
            raise StatusError(SW_SECURITY_NOT_SATISFIED, "VERIFY the PIN first")
        return self._key.sign(bytes(cmd.data), ec.ECDSA(hashes.SHA256()))
