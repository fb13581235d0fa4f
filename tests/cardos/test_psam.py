"""The emulated PSAM against cardos.crypto: MAC1, TTC custody, MAC2, key services, image."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from cardos import crypto
from cardos.os import CardTorn, TearPlan
from cardos.psam import IssuerKeys, Psam, PsamImage, PsamImageError, psam_image_for_terminal

ISSUER = bytes.fromhex("01007120FFFFFFFF")
OTHER_ISSUER = bytes.fromhex("01007100FFFFFFFF")
MPK = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")
MAMK = bytes.fromhex("00112233445566778899AABBCCDDEEFF")
MTK = bytes.fromhex("A1A2A3A4A5A6A7A8B1B2B3B4B5B6B7B8")
TERMINAL = bytes.fromhex("360486600002")
SERIAL = bytes.fromhex("00000000000000000042")
ASN8 = bytes.fromhex("2016122100001003")
KEY_VERSION = 0x02
DATE, TIME = bytes.fromhex("20240301"), bytes.fromhex("081500")


def make_image(alg: int = crypto.ALG_3DES, *, mtk: bytes | None = None) -> PsamImage:
    image = psam_image_for_terminal(TERMINAL, SERIAL, {ISSUER: (MPK, MAMK, KEY_VERSION, alg)})
    if mtk is not None:
        keys = image.issuers[0]
        image.issuers = (IssuerKeys(keys.issuer_id, keys.key_version, keys.alg_id, keys.mpk, keys.mamk, mtk),)
    return image


def powered(image: PsamImage, path: Path | None = None) -> Psam:
    psam = Psam(image, path=path)
    psam.power_on()
    assert ok(psam, "00A40000028011") == b""
    return psam


def ok(psam: Psam, apdu: str | bytes) -> bytes:
    raw = bytes.fromhex(apdu) if isinstance(apdu, str) else apdu
    resp = psam.transmit(raw)
    assert resp[-2:] == b"\x90\x00", f"{raw.hex()} -> {resp.hex()}"
    return resp[:-2]


def sw(psam: Psam, apdu: bytes) -> int:
    return int.from_bytes(psam.transmit(apdu)[-2:], "big")


def init_sam(
    amount_fen: int = 200,
    *,
    ctc: int = 7,
    random: bytes = b"\x11\x22\x33\x44",
    tx_type: int = crypto.TX_CAPP_PURCHASE,
    key_version: int = KEY_VERSION,
    alg: int = crypto.ALG_3DES,
    issuer: bytes = ISSUER,
) -> bytes:
    data = (
        random
        + ctc.to_bytes(2, "big")
        + amount_fen.to_bytes(4, "big")
        + bytes([tx_type])
        + DATE
        + TIME
        + bytes([key_version, alg])
        + ASN8
        + issuer
    )
    assert len(data) == 36
    return bytes.fromhex("80700000") + bytes([len(data)]) + data + b"\x08"


def expected_mac1(ttc: int, amount_fen: int = 200, alg: int = crypto.ALG_3DES, ctc: int = 7) -> tuple[bytes, bytes]:
    """What the card computes: (SESPK, MAC1) from its own DPK."""
    dpk = crypto.derive_card_key(MPK, ISSUER, ASN8, alg)
    sespk = crypto.purchase_session_key(dpk, b"\x11\x22\x33\x44", ctc, ttc, alg)
    data = crypto.purchase_mac1_data(amount_fen, crypto.TX_CAPP_PURCHASE, TERMINAL, DATE, TIME)
    return sespk, crypto.mac(sespk, data, alg)


@pytest.mark.parametrize("alg", [crypto.ALG_3DES, crypto.ALG_SM4])
def test_init_sam_gives_pre_increment_ttc_and_the_mac1_the_card_checks(alg: int) -> None:
    psam = powered(make_image(alg))
    for ttc in (1, 2, 3):
        out = ok(psam, init_sam(alg=alg))
        assert out[:4] == ttc.to_bytes(4, "big")
        assert out[4:] == expected_mac1(ttc, alg=alg)[1]
    assert psam.image.ttc_next == 4


def test_credit_sam_accepts_the_cards_mac2_once_and_refuses_a_wrong_one() -> None:
    psam = powered(make_image())
    ok(psam, init_sam(amount_fen=350))
    sespk, _ = expected_mac1(1, amount_fen=350)
    mac2 = crypto.mac(sespk, crypto.purchase_mac2_data(350))
    bad = bytes(b ^ 0x01 for b in mac2)
    assert sw(psam, bytes.fromhex("8072000004") + bad) == 0x9302
    ok(psam, bytes.fromhex("8072000004") + mac2)  # a wrong MAC2 does not end the session
    assert sw(psam, bytes.fromhex("8072000004") + mac2) == 0x9302  # consumed


def test_purchase_session_dies_with_power() -> None:
    psam = powered(make_image())
    ok(psam, init_sam())
    sespk, _ = expected_mac1(1)
    mac2 = crypto.mac(sespk, crypto.purchase_mac2_data(200))
    psam.power_off()
    psam.power_on()
    assert sw(psam, bytes.fromhex("8072000004") + mac2) == 0x9302


@pytest.mark.parametrize(
    ("kwargs", "why"),
    [
        ({"issuer": OTHER_ISSUER}, "unknown issuer"),
        ({"key_version": 0x03}, "unknown key version"),
        ({"alg": crypto.ALG_SM4}, "issuer held for another algorithm"),
    ],
)
def test_init_sam_without_the_key_answers_9403_and_spends_no_ttc(kwargs: dict[str, object], why: str) -> None:
    psam = powered(make_image())
    assert sw(psam, init_sam(**kwargs)) == 0x9403, why  # type: ignore[arg-type]
    assert psam.image.ttc_next == 1


def test_init_sam_needs_the_application_selected_and_36_bytes() -> None:
    psam = Psam(make_image())
    psam.power_on()
    assert sw(psam, init_sam()) == 0x6985
    ok(psam, "00A40000028011")
    assert sw(psam, init_sam()[:-3] + b"\x08") == 0x6700
    assert sw(psam, init_sam(tx_type=0x02)) == 0x6A80


def test_ttc_persists_across_reload(tmp_path: Path) -> None:
    path = tmp_path / "psam.json"
    make_image().save(path)
    psam = powered(PsamImage.load(path), path)
    assert ok(psam, init_sam())[:4] == (1).to_bytes(4, "big")
    assert ok(psam, init_sam())[:4] == (2).to_bytes(4, "big")
    reloaded = powered(PsamImage.load(path), path)
    assert ok(reloaded, init_sam())[:4] == (3).to_bytes(4, "big")
    assert PsamImage.load(path).ttc_next == 4


def test_no_ttc_is_given_out_twice_across_tears_and_restarts(tmp_path: Path) -> None:
    """Every TTC a terminal ever saw is distinct, whichever side of the commit the tear falls."""
    path = tmp_path / "psam.json"
    make_image().save(path)
    seen: list[int] = []
    for phase in ("before_commit", "after_commit", None):
        psam = powered(PsamImage.load(path), path)  # a restart each round
        ok(psam, init_sam())  # one normal purchase
        seen.append(psam.image.ttc_next - 1)
        if phase is not None:
            psam.tear = TearPlan(at_apdu=psam.apdu_index + 1, phase=phase)
            with pytest.raises(CardTorn):
                psam.transmit(init_sam())
        psam.power_on()
        ok(psam, "00A40000028011")
        seen.append(int.from_bytes(ok(psam, init_sam())[:4], "big"))
    assert len(seen) == len(set(seen)), seen
    assert PsamImage.load(path).ttc_next == max(seen) + 1


def test_failed_image_write_cuts_power_before_the_ttc_leaves(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "psam.json"
    make_image().save(path)
    psam = powered(PsamImage.load(path), path)

    def failing_save(self: PsamImage, target: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(PsamImage, "save", failing_save)
    with pytest.raises(CardTorn):
        psam.transmit(init_sam())
    assert not psam.powered
    monkeypatch.undo()
    # The in-memory sequence moved on, so this process never reuses it either.
    psam.power_on()
    ok(psam, "00A40000028011")
    assert ok(psam, init_sam())[:4] == (2).to_bytes(4, "big")


def test_application_block_mac_is_what_the_card_expects() -> None:
    """Section 9: DELIVERY KEY 45, then CIPHER DATA over the padded 84 1E 00 00 04 header."""
    psam = powered(make_image())
    challenge = bytes.fromhex("A1B2C3D4")
    ok(psam, bytes.fromhex("801A4502 10") + ASN8 + ISSUER)
    mac = ok(psam, bytes.fromhex("80FA0500 10") + challenge + bytes(4) + bytes.fromhex("841E000004800000"))
    damk = crypto.derive_card_key(MAMK, ISSUER, ASN8)
    assert mac == crypto.secure_messaging_mac(damk, challenge, bytes.fromhex("841E000004"))


def test_application_block_mac_for_an_sm4_card() -> None:
    psam = powered(make_image(crypto.ALG_SM4))
    challenge = bytes.fromhex("01020304")
    ok(psam, bytes.fromhex("801A4500 10") + ASN8 + ISSUER)  # P2 00: newest version held
    mac = ok(psam, bytes.fromhex("80FA0500 10") + challenge + bytes(4) + bytes.fromhex("841E000004800000"))
    damk = crypto.derive_card_key(MAMK, ISSUER, ASN8, crypto.ALG_SM4)
    assert mac == crypto.secure_messaging_mac(damk, challenge, bytes.fromhex("841E000004"), crypto.ALG_SM4)


def test_cipher_data_refuses_unpadded_input_and_needs_a_delivered_key() -> None:
    psam = powered(make_image())
    assert sw(psam, bytes.fromhex("80FA0500 10") + bytes(8) + bytes.fromhex("841E000004800000")) == 0x6985
    ok(psam, bytes.fromhex("801A4502 10") + ASN8 + ISSUER)
    assert sw(psam, bytes.fromhex("80FA0500 0D") + bytes(8) + bytes.fromhex("841E000004")) == 0x6700
    assert sw(psam, bytes.fromhex("80FA0500 10") + bytes(8) + bytes.fromhex("841E000004000000")) == 0x6A80


def test_field_psam_holds_no_tac_key() -> None:
    psam = powered(make_image())
    assert sw(psam, bytes.fromhex("801A4402 10") + ASN8 + ISSUER) == 0x9403
    assert sw(psam, bytes.fromhex("801A4502 10") + ASN8 + OTHER_ISSUER) == 0x9403


def test_issuer_side_sam_recomputes_the_purchase_tac() -> None:
    """Section 8 step 5: 80 1A 44 then 80 FA 05 with a zero IV over the padded TAC data."""
    psam = powered(make_image(mtk=MTK))
    ok(psam, bytes.fromhex("801A4402 10") + ASN8 + ISSUER)
    tac_data = crypto.purchase_tac_data(1, crypto.TX_CAPP_PURCHASE, TERMINAL, 5, DATE, TIME)
    padded = crypto.pad_iso9797_m2(tac_data, 8)
    tac = ok(psam, bytes.fromhex("80FA0500") + bytes([8 + len(padded)]) + bytes(8) + padded)
    dtk = crypto.derive_card_key(MTK, ISSUER, ASN8)
    assert tac == crypto.purchase_tac(dtk, 1, crypto.TX_CAPP_PURCHASE, TERMINAL, 5, DATE, TIME)


def test_read_binary_files_and_wrong_le() -> None:
    psam = powered(make_image())
    assert ok(psam, "00B0950000") == SERIAL + bytes([1, 6, 1, 0])
    assert ok(psam, "00B0960000") == TERMINAL
    assert ok(psam, "00B0970001") == b"\x01"
    assert psam.transmit(bytes.fromhex("00B096000E")) == bytes.fromhex("6C06")
    assert sw(psam, bytes.fromhex("00B0980001")) == 0x6A82
    assert sw(psam, bytes.fromhex("00A40000021001")) == 0x6A82


def test_get_challenge_gives_fresh_bytes() -> None:
    psam = powered(make_image())
    a, b = ok(psam, "0084000004"), ok(psam, "0084000004")
    assert len(a) == 4 and a != b
    assert len(ok(psam, "0084000008")) == 8


def test_image_round_trips_and_is_private(tmp_path: Path) -> None:
    path = tmp_path / "psam.json"
    image = make_image(mtk=MTK)
    image.save(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    again = PsamImage.load(path)
    assert again.to_json() == image.to_json()
    assert json.loads(path.read_text())["kind"] == "psam"


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.update(schema_version=2),
        lambda d: d.update(kind="card"),
        lambda d: d.update(terminal_id="1122"),
        lambda d: d["issuers"][0].update(mpk="zz"),
        lambda d: d["issuers"][0].update(alg_id=7),
        lambda d: d.pop("ttc_next"),
    ],
)
def test_malformed_image_is_refused_with_e_psam_image(mutate: object) -> None:
    doc = make_image().to_json()
    mutate(doc)  # type: ignore[operator]
    with pytest.raises(PsamImageError, match="E_PSAM_IMAGE"):
        PsamImage.from_json(doc)


def test_missing_image_file_is_a_psam_image_error(tmp_path: Path) -> None:
    with pytest.raises(PsamImageError, match="cannot read"):
        PsamImage.load(tmp_path / "absent.json")


def test_repr_never_shows_master_keys() -> None:
    image = make_image(mtk=MTK)
    psam = Psam(image)
    text = repr(image) + repr(psam) + repr(image.issuers)
    for key in (MPK, MAMK, MTK):
        assert key.hex() not in text.lower()
        assert key.hex().upper() not in text
        assert repr(key) not in text
