"""Fixed vectors kept as data in tests/vectors/, checked through cardos.crypto.

* ``epurse_3des.json``: the [V] vectors and the two derived TAC vectors of
  epurse-public-sources.md.
* ``sm4_gbt32907.json``: the published SM4 known-answer vectors of GB/T 32907-2016.
* ``key_diversification.json``: the project-defined ``div`` and two-level card keys for
  3DES and SM4. Not published anywhere, so they were computed once by ``independent_div``
  below, straight from the ``cryptography`` primitives; a test re-derives the file with it,
  so the file cannot drift from the formula of card-profile.md, and cardos.crypto is
  checked against the file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given
from hypothesis import strategies as st

from cardos import crypto

VECTORS = Path(__file__).parents[1] / "vectors"
V = json.loads((VECTORS / "epurse_3des.json").read_text())
KEY = bytes.fromhex(V["key"])
SM4_KAT = json.loads((VECTORS / "sm4_gbt32907.json").read_text())
DIV = json.loads((VECTORS / "key_diversification.json").read_text())
DIV_FAMILIES = [DIV["3des"], DIV["sm4"]]


def h(text: str) -> bytes:
    return bytes.fromhex(text)


def test_load_session_key_and_macs_match_published_vectors() -> None:
    load = V["load"]
    sk = crypto.load_session_key(KEY, h(load["card_random"]), load["online_counter"])
    assert sk.hex() == load["session_key"]
    m1 = load["mac1"]
    data1 = crypto.load_mac1_data(
        int(m1["balance_before"], 16), int(m1["amount"], 16), m1["tx_type"], h(m1["terminal_id"])
    )
    assert crypto.mac(sk, data1).hex() == m1["mac"]
    m2 = load["mac2"]
    data2 = crypto.load_mac2_data(
        int(m2["amount"], 16), m2["tx_type"], h(m2["terminal_id"]), h(m2["date"]), h(m2["time"])
    )
    assert crypto.mac(sk, data2).hex() == m2["mac"]


def test_purchase_session_key_and_macs_match_published_vectors() -> None:
    pur = V["purchase"]
    sk = crypto.purchase_session_key(KEY, h(pur["card_random"]), pur["offline_counter"], int(pur["terminal_seq"], 16))
    assert sk.hex() == pur["session_key"]
    m1 = pur["mac1"]
    data1 = crypto.purchase_mac1_data(
        int(m1["amount"], 16), m1["tx_type"], h(m1["terminal_id"]), h(m1["date"]), h(m1["time"])
    )
    assert crypto.mac(sk, data1).hex() == m1["mac"]
    assert crypto.mac(sk, crypto.purchase_mac2_data(int(pur["mac2"]["amount"], 16))).hex() == pur["mac2"]["mac"]


def test_derived_tac_vectors() -> None:
    d = V["derived_tac"]
    dtk = h(d["dtk"])
    assert crypto.tac_key(dtk).hex() == d["tac_key"]
    p = d["purchase"]
    tac = crypto.purchase_tac(
        dtk,
        int(p["amount"], 16),
        p["tx_type"],
        h(p["terminal_id"]),
        int(p["terminal_seq"], 16),
        h(p["date"]),
        h(p["time"]),
    )
    assert tac.hex() == p["tac"]
    ld = d["load"]
    tac = crypto.load_tac(
        dtk,
        int(ld["balance_after"], 16),
        ld["online_counter"],
        int(ld["amount"], 16),
        ld["tx_type"],
        h(ld["terminal_id"]),
        h(ld["date"]),
        h(ld["time"]),
    )
    assert tac.hex() == ld["tac"]


def test_mac_padding_adds_a_full_block_when_aligned() -> None:
    assert crypto.pad_iso9797_m2(bytes(8), 8) == bytes(8) + b"\x80" + bytes(7)
    assert crypto.pad_iso9797_m2(bytes(7), 8) == bytes(7) + b"\x80"


@pytest.mark.parametrize("alg", [crypto.ALG_3DES, crypto.ALG_SM4])
def test_diversification_is_deterministic_and_factor_sensitive(alg: int) -> None:
    a = crypto.derive_card_key(KEY, h("01007120ffffffff"), h("03104712000000000001"), alg)
    b = crypto.derive_card_key(KEY, h("01007120ffffffff"), h("03104712000000000002"), alg)
    assert len(a) == 16 and a != b
    # the PSAM receives only the last 8 ASN bytes
    assert a == crypto.derive_card_key(KEY, h("01007120ffffffff"), h("4712000000000001"), alg)


# --- SM4: GB/T 32907-2016 known-answer vectors ----------------------------------------------


def test_sm4_encrypts_the_published_gbt32907_block() -> None:
    key, plain = h(SM4_KAT["key"]), h(SM4_KAT["plaintext"])
    assert crypto.BlockCipher(key, crypto.ALG_SM4).encrypt(plain).hex() == SM4_KAT["ciphertext"]
    # the plaintext is F || NOT F for F = its first half, so the project's SM4 diversification
    # of that F under that key is the published block too
    assert crypto.diversify(key, plain[:8], crypto.ALG_SM4).hex() == SM4_KAT["ciphertext"]


def test_sm4_encrypts_the_published_gbt32907_block_a_million_times() -> None:
    """Example 2: catches an error example 1 can hide (about 0.3 s with one reusable encryptor)."""
    iterated = SM4_KAT["iterated"]
    cipher = crypto.BlockCipher(h(SM4_KAT["key"]), crypto.ALG_SM4)
    block = h(SM4_KAT["plaintext"])
    for _ in range(iterated["iterations"]):
        block = cipher.encrypt(block)
    assert block.hex() == iterated["ciphertext"]


def test_block_cipher_refuses_wrong_lengths() -> None:
    with pytest.raises(crypto.CryptoInputError):
        crypto.BlockCipher(bytes(8), crypto.ALG_SM4)
    with pytest.raises(crypto.CryptoInputError):
        crypto.BlockCipher(bytes(24), crypto.ALG_3DES)
    with pytest.raises(crypto.CryptoInputError):
        crypto.BlockCipher(bytes(16), crypto.ALG_SM4).encrypt(bytes(8))
    with pytest.raises(crypto.CryptoInputError):
        crypto.BlockCipher(bytes(16), 0x07)


# --- key diversification: fixed vectors, made by an independent implementation -----------------


def _ecb_encrypt(alg: int, key: bytes, data: bytes) -> bytes:
    """Straight from ``cryptography``: SM4, or 3DES keyed K1 K2 K1 (keying option 2)."""
    cipher = algorithms.SM4(key) if alg == crypto.ALG_SM4 else TripleDES(key + key[:8])
    enc = Cipher(cipher, modes.ECB()).encryptor()
    return enc.update(data) + enc.finalize()


def independent_div(key: bytes, factor: bytes, alg: int) -> bytes:
    """card-profile.md's ``div(K, F)`` written from the spec, sharing no code with cardos.crypto.

    3DES: ``3DES_ECB(K, F) || 3DES_ECB(K, NOT F)``, two separate encryptions as written;
    SM4: ``SM4_ECB(K, F || NOT F)``, one block.
    """
    inverted = bytes(b ^ 0xFF for b in factor)
    if alg == crypto.ALG_SM4:
        return _ecb_encrypt(alg, key, factor + inverted)
    return _ecb_encrypt(alg, key, factor) + _ecb_encrypt(alg, key, inverted)


def test_the_diversification_file_is_what_the_spec_formula_gives() -> None:
    """Guards the data: re-deriving every recorded value independently gives the file back."""
    for family in DIV_FAMILIES:
        alg = family["alg_id"]
        for v in family["div"]:
            assert independent_div(h(v["key"]), h(v["factor"]), alg).hex() == v["result"]
        for v in family["card_keys"]:
            k1 = independent_div(h(v["master_key"]), h(v["issuer_id"]), alg)
            assert k1.hex() == v["k1"]
            assert independent_div(k1, h(v["asn"])[2:], alg).hex() == v["card_key"]


@pytest.mark.parametrize("family", DIV_FAMILIES, ids=["3des", "sm4"])
def test_diversify_matches_the_fixed_vectors(family: dict[str, Any]) -> None:
    alg = family["alg_id"]
    for v in family["div"]:
        assert crypto.diversify(h(v["key"]), h(v["factor"]), alg).hex() == v["result"], v


@pytest.mark.parametrize("family", DIV_FAMILIES, ids=["3des", "sm4"])
def test_derive_card_key_matches_the_fixed_vectors(family: dict[str, Any]) -> None:
    """The key store, the PSAM and personalisation all derive card keys with this call."""
    alg = family["alg_id"]
    for v in family["card_keys"]:
        mk, issuer_id, asn = h(v["master_key"]), h(v["issuer_id"]), h(v["asn"])
        assert crypto.diversify(mk, issuer_id, alg).hex() == v["k1"]
        assert crypto.derive_card_key(mk, issuer_id, asn, alg).hex() == v["card_key"], v
        # the PSAM receives only the last 8 ASN bytes
        assert crypto.derive_card_key(mk, issuer_id, asn[2:], alg).hex() == v["card_key"]


def test_sm4_session_key_and_mac_shapes() -> None:
    sk = crypto.purchase_session_key(KEY, h("11223344"), 1, 2, crypto.ALG_SM4)
    assert len(sk) == 16
    assert len(crypto.mac(sk, b"abc", crypto.ALG_SM4)) == 4
    assert crypto.tac_key(KEY, crypto.ALG_SM4) == KEY


def test_wrong_lengths_are_refused() -> None:
    with pytest.raises(crypto.CryptoInputError):
        crypto.diversify(bytes(8), bytes(8))
    with pytest.raises(crypto.CryptoInputError):
        crypto.mac(bytes(16), b"", crypto.ALG_3DES)
    with pytest.raises(crypto.CryptoInputError):
        crypto.diversify(KEY, bytes(8), 0x07)


@given(st.binary(min_size=0, max_size=64), st.binary(min_size=8, max_size=8))
def test_mac_changes_when_a_bit_of_the_data_flips(data: bytes, key: bytes) -> None:
    # a 4-byte MAC collides with probability 2**-32 per pair: never in practice
    flipped = bytes([data[0] ^ 0x01]) + data[1:] if data else b"\x00"
    assert crypto.mac(key, data) != crypto.mac(key, flipped)
