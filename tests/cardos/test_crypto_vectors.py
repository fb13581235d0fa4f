"""The [V] vectors and the two derived TAC vectors of epurse-public-sources.md, from data files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cardos import crypto

V = json.loads((Path(__file__).parents[1] / "vectors" / "epurse_3des.json").read_text())
KEY = bytes.fromhex(V["key"])


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
