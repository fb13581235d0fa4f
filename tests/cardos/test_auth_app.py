"""Citizen authentication application: certificate read in chunks, PIN tries, ECDSA signature.

card-profile.md, "Citizen authentication application".
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from cardkit import ASN, PIN, apdu, auth_material, make_card, select_apdu
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from cardos.apdu import split_response
from cardos.card import Card
from cardos.image import CardImage
from cardos.profile import AID_AUTH, AID_PURSE, CardType


def send(card: Card, raw: bytes | str) -> tuple[bytes, int]:
    return split_response(card.transmit(apdu(raw) if isinstance(raw, str) else raw))


def auth_card(path: Path | None = None) -> Card:
    card = make_card(card_type=CardType.SOCIAL_SECURITY)
    if path is not None:
        card.image.save_atomic(path)
        card = Card.load(path)
        card.power_on()
    assert send(card, select_apdu(AID_AUTH))[1] == 0x9000
    return card


def verify(card: Card, pin: str) -> int:
    return send(card, apdu("0020000106") + pin.encode())[1]


CHALLENGE = hashlib.sha256(b"https://portal.yikatong.test").digest() + hashlib.sha256(b"nonce-1").digest()


def test_certificate_is_longer_than_one_short_read() -> None:
    assert len(auth_material().certificate_der) > 256


def test_certificate_read_in_chunks_by_sfi_then_offset() -> None:
    card = auth_card()
    der = b""
    chunk, sw = send(card, "00B0810000")  # SFI 0x01, offset 0, Le 256
    assert sw == 0x9000 and len(chunk) == 256
    der += chunk
    while True:
        offset = len(der)
        chunk, sw = send(card, bytes([0x00, 0xB0, offset >> 8, offset & 0xFF, 0x00]))
        assert sw == 0x9000
        der += chunk
        if len(chunk) < 256:
            break
    assert der == auth_material().certificate_der
    assert send(card, bytes([0x00, 0xB0, len(der) >> 8, len(der) & 0xFF, 0x00]))[1] == 0x6B00
    cert = x509.load_der_x509_certificate(der)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == ASN.hex().upper()


def test_certificate_in_one_extended_read_and_small_chunks() -> None:
    card = auth_card()
    der = auth_material().certificate_der
    assert send(card, "00B08100000000") == (der, 0x9000)  # extended Le 0000 = 65536
    assert send(card, "00B0810010") == (der[:16], 0x9000)
    assert send(card, "00B0810A10") == (der[10:26], 0x9000)


def test_purse_files_are_not_in_the_auth_app() -> None:
    card = auth_card()
    assert send(card, "00B095001E")[1] == 0x6A82
    assert send(card, "805C000204")[1] == 0x6985


def test_pin_tries_count_down_to_a_block() -> None:
    card = auth_card()
    assert send(card, "00200001")[1] == 0x63C3  # no data: tries left
    assert verify(card, "000000") == 0x63C2
    assert verify(card, "111111") == 0x63C1
    assert card.pin_tries_left == 1
    assert verify(card, PIN) == 0x9000
    assert card.pin_tries_left == 3  # a good PIN restores the tries
    for left in (2, 1, 0):
        assert verify(card, "999999") == 0x63C0 | left
    assert verify(card, PIN) == 0x6983
    assert send(card, "00200001")[1] == 0x6983
    assert send(card, apdu("0088000040") + CHALLENGE)[1] == 0x6983
    card.power_off()
    card.power_on()
    send(card, select_apdu(AID_AUTH))
    assert verify(card, PIN) == 0x6983


def test_malformed_pins_cost_no_try() -> None:
    card = auth_card()
    assert verify(card, "12345a") == 0x6A80
    assert send(card, apdu("0020000105") + b"12345")[1] == 0x6700
    assert send(card, apdu("0020000206") + PIN.encode())[1] == 0x6A86
    assert card.pin_tries_left == 3


def test_pin_tries_persist_across_a_reload(tmp_path: Path) -> None:
    path = tmp_path / "card.json"
    card = auth_card(path)
    assert verify(card, "000000") == 0x63C2
    assert CardImage.load(path).auth is not None
    assert CardImage.load(path).auth.pin_tries_left == 2  # type: ignore[union-attr]
    reloaded = Card.load(path)
    assert reloaded.pin_tries_left == 2


def test_internal_authenticate_signs_after_verify_only() -> None:
    card = auth_card()
    assert send(card, apdu("0088000040") + CHALLENGE + b"\x00")[1] == 0x6982
    assert verify(card, PIN) == 0x9000
    assert send(card, "00200001")[1] == 0x9000  # verified state
    signature, sw = send(card, apdu("0088000040") + CHALLENGE + b"\x00")
    assert sw == 0x9000
    public_key = x509.load_der_x509_certificate(auth_material().certificate_der).public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    public_key.verify(signature, CHALLENGE, ec.ECDSA(hashes.SHA256()))
    with pytest.raises(InvalidSignature):
        public_key.verify(signature, CHALLENGE[::-1], ec.ECDSA(hashes.SHA256()))
    # still verified for a second signature in the same power session
    assert send(card, apdu("0088000040") + CHALLENGE)[1] == 0x9000
    card.power_off()
    card.power_on()
    send(card, select_apdu(AID_AUTH))
    assert send(card, apdu("0088000040") + CHALLENGE)[1] == 0x6982


def test_selecting_another_application_drops_the_verified_state() -> None:
    card = auth_card()
    assert verify(card, PIN) == 0x9000
    send(card, select_apdu(AID_PURSE))
    assert verify(card, PIN) == 0x6985  # VERIFY belongs to the auth app
    send(card, select_apdu(AID_AUTH))
    assert send(card, apdu("0088000040") + CHALLENGE)[1] == 0x6982


def test_internal_authenticate_parameters() -> None:
    card = auth_card()
    assert verify(card, PIN) == 0x9000
    assert send(card, apdu("008800003F") + CHALLENGE[:63])[1] == 0x6700
    assert send(card, apdu("0088010040") + CHALLENGE)[1] == 0x6A86


def test_an_ordinary_card_with_auth_material_has_the_auth_app() -> None:
    card = make_card(with_auth=True)
    assert send(card, select_apdu(AID_AUTH))[1] == 0x9000
    assert verify(card, PIN) == 0x9000
