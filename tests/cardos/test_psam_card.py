"""The PSAM and the user card together, in process: what one computes the other accepts."""

from __future__ import annotations

import dataclasses

import pytest

from cardos import crypto
from cardos.card import Card
from cardos.personalise import personalise
from cardos.profile import ISSUER_XIAN, ISSUER_XIANYANG
from cardos.psam import Psam
from tests.cardos.cardkit import management_info, public_info
from tests.pcsc_support import (
    SELECT_PSAM_DF,
    SELECT_PURSE,
    application_block,
    composite_purchase,
    derived_keys,
    expect_ok,
    field_psam_image,
)

ASN = bytes.fromhex("03104000000000012345")
STAMP = bytes.fromhex("20250301083015")


def city_card(issuer: bytes = ISSUER_XIANYANG, alg: int = crypto.ALG_3DES, key_version: int = 1) -> Card:
    public = dataclasses.replace(public_info(asn=ASN), issuer_id=issuer)
    keys = derived_keys(issuer, ASN, alg, key_version)
    card = Card.from_image(personalise(keys=keys, public=public, management=management_info(), balance_fen=5_000))
    card.power_on()
    return card


def field_psam(issuers: dict[bytes, int]) -> Psam:
    psam = Psam(field_psam_image(issuers))
    psam.power_on()
    expect_ok(psam.transmit, SELECT_PSAM_DF)
    return psam


@pytest.mark.parametrize("alg", [crypto.ALG_3DES, crypto.ALG_SM4])
def test_psam_mac1_is_accepted_and_card_mac2_verifies_in_the_psam(alg: int) -> None:
    card, psam = city_card(alg=alg), field_psam({ISSUER_XIANYANG: alg})
    for n in range(3):
        p = composite_purchase(card.transmit, psam.transmit, 150, STAMP)
        assert p.credit_sam_sw == 0x9000
        assert p.ttc == n + 1 and p.ctc == n
        dtk = card.keys.dtk
        assert p.tac == crypto.purchase_tac(dtk, 150, 0x09, psam.image.terminal_id, p.ttc, p.date4, p.time3, alg)
    assert card.balance_fen == 5_000 - 3 * 150


def test_one_psam_serves_xianyang_and_xian_cards() -> None:
    psam = field_psam({ISSUER_XIANYANG: crypto.ALG_3DES, ISSUER_XIAN: crypto.ALG_3DES})
    for issuer in (ISSUER_XIANYANG, ISSUER_XIAN):
        assert composite_purchase(city_card(issuer).transmit, psam.transmit, 100, STAMP).credit_sam_sw == 0x9000


def test_card_of_an_issuer_the_psam_lacks_stops_at_init_sam_with_9403() -> None:
    card, psam = city_card(ISSUER_XIAN), field_psam({ISSUER_XIANYANG: crypto.ALG_3DES})
    with pytest.raises(AssertionError, match="9403"):
        composite_purchase(card.transmit, psam.transmit, 100, STAMP)
    assert card.balance_fen == 5_000


def test_card_with_a_newer_key_version_gets_9403() -> None:
    card, psam = city_card(key_version=2), field_psam({ISSUER_XIANYANG: crypto.ALG_3DES})
    with pytest.raises(AssertionError, match="9403"):
        composite_purchase(card.transmit, psam.transmit, 100, STAMP)


@pytest.mark.parametrize("alg", [crypto.ALG_3DES, crypto.ALG_SM4])
def test_application_block_mac_from_the_psam_blocks_the_card(alg: int) -> None:
    card, psam = city_card(alg=alg), field_psam({ISSUER_XIANYANG: alg})
    public = expect_ok(card.transmit, SELECT_PURSE)
    public = public[public.index(b"\x9f\x0c\x1e") + 3 :][:30]
    assert application_block(card.transmit, psam.transmit, public) == 0x9000
    assert card.blocked
    assert card.transmit(SELECT_PURSE)[-2:] == b"\x62\x83"
