"""The one implementation of Yikatong card cryptography.

Diversification, session keys, MACs and TACs for the transit e-purse, in the two
algorithm families a card can be personalised for (``card-profile.md``):

* ``ALG_3DES`` (00): formulas of ``epurse-public-sources.md`` section 6, checked
  against its [V] vectors in ``tests/vectors/``.
* ``ALG_SM4`` (04): the project-defined SM4 variant of ``card-profile.md``.

The key diversification function is project-defined for both families; it is kept
here so a real deployment can swap it in one place. The PSAM, terminals, the key
store and clearing all call these functions; nothing else may reimplement them.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Final

from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

ALG_3DES: Final = 0x00
ALG_SM4: Final = 0x04
ALGORITHMS: Final = frozenset({ALG_3DES, ALG_SM4})

TX_ED_LOAD: Final = 0x01
TX_EP_LOAD: Final = 0x02
TX_EP_PURCHASE: Final = 0x06
TX_CAPP_PURCHASE: Final = 0x09

KEY_LEN: Final = 16
MAC_LEN: Final = 4
_INVERT: Final = bytes(range(255, -1, -1))  # translation table: byte b -> b XOR FF


class CryptoInputError(ValueError):
    """A key, factor or field has the wrong length or value."""


def _check_alg(alg: int) -> None:
    if alg not in ALGORITHMS:
        raise CryptoInputError(f"unknown algorithm id {alg:#04x}")


def _check_len(name: str, value: bytes, length: int) -> None:
    if len(value) != length:
        raise CryptoInputError(f"{name} must be {length} bytes, got {len(value)}")


@lru_cache(maxsize=65536)
def _ecb(key: bytes, alg: int) -> Cipher[modes.ECB]:
    """A reusable ECB cipher object; 8-byte keys mean single DES (K,K,K)."""
    if alg == ALG_SM4:
        return Cipher(algorithms.SM4(key), modes.ECB())
    if len(key) == 8:
        key = key * 3
    elif len(key) == 16:
        key = key + key[:8]
    return Cipher(TripleDES(key), modes.ECB())


def _encrypt_ecb(key: bytes, data: bytes, alg: int) -> bytes:
    enc = _ecb(key, alg).encryptor()
    return enc.update(data) + enc.finalize()


def _decrypt_ecb(key: bytes, data: bytes, alg: int) -> bytes:
    dec = _ecb(key, alg).decryptor()
    return dec.update(data) + dec.finalize()


class BlockCipher:
    """Raw single-block ECB encryption under one key: the primitive under every formula here.

    Public so that the ciphers' own published known-answer vectors (GB/T 32907-2016 for
    SM4) pin what this module computes with; a wrong cipher, key layout or byte order
    would otherwise show only as every project-defined value being different. Keys as
    everywhere in this module: SM4 16 bytes; 3DES 16 bytes two-key (K1 K2 K1) or 8 bytes
    single DES. One encryptor per instance, because creating an OpenSSL context costs
    more than the block (the 1,000,000-iteration vector). Not thread-safe.
    """

    __slots__ = ("_block", "_encryptor")

    def __init__(self, key: bytes, alg: int = ALG_3DES) -> None:
        self._block = block_size(alg)
        if alg == ALG_SM4:
            _check_len("SM4 key", key, KEY_LEN)
        elif len(key) not in (8, KEY_LEN):
            raise CryptoInputError(f"3DES key must be 8 or {KEY_LEN} bytes, got {len(key)}")
        self._encryptor = _ecb(key, alg).encryptor()

    def encrypt(self, block: bytes) -> bytes:
        """E(K, block) for one block (8 bytes 3DES, 16 bytes SM4); ECB keeps no state between calls."""
        _check_len("block", block, self._block)
        return self._encryptor.update(block)


def block_size(alg: int) -> int:
    _check_alg(alg)
    return 16 if alg == ALG_SM4 else 8


def pad_iso9797_m2(data: bytes, block: int) -> bytes:
    """ISO 9797-1 padding method 2: 80 then 00s; a full block is added when aligned."""
    padded = data + b"\x80"
    return padded + b"\x00" * (-len(padded) % block)


def _not(data: bytes) -> bytes:
    return data.translate(_INVERT)


def diversify(key: bytes, factor: bytes, alg: int = ALG_3DES) -> bytes:
    """Project-defined one-level diversification (``card-profile.md``).

    3DES: ``E(K, F) || E(K, NOT F)``; SM4: ``SM4_ECB(K, F || NOT F)``.
    """
    _check_alg(alg)
    _check_len("key", key, KEY_LEN)
    _check_len("diversification factor", factor, 8)
    # ECB enciphers each block on its own, so one call gives both 3DES halves (one cipher
    # context instead of two: a cold TAC key cache derives a key per card) and the SM4 block.
    return _encrypt_ecb(key, factor + _not(factor), alg)


def derive_card_key(master_key: bytes, issuer_id: bytes, asn: bytes, alg: int = ALG_3DES) -> bytes:
    """Two-level card key: ``div(div(MK, issuer_id), ASN[last 8 bytes])``.

    ``asn`` may be the full 10-byte ASN or its last 8 bytes (what the PSAM receives).
    """
    _check_len("issuer id", issuer_id, 8)
    if len(asn) == 10:
        asn = asn[2:]
    _check_len("ASN (last 8 bytes)", asn, 8)
    return diversify(diversify(master_key, issuer_id, alg), asn, alg)


def _session_key(card_key: bytes, data8: bytes, alg: int) -> bytes:
    _check_alg(alg)
    _check_len("card key", card_key, KEY_LEN)
    if alg == ALG_SM4:
        return _encrypt_ecb(card_key, data8 + b"\x80" + b"\x00" * 7, alg)
    return _encrypt_ecb(card_key, data8, alg)


def purchase_session_key(
    dpk: bytes, card_random: bytes, offline_counter: int, terminal_seq: int, alg: int = ALG_3DES
) -> bytes:
    """SESPK from random || CTC || low two bytes of the PSAM's terminal sequence."""
    _check_len("card random", card_random, 4)
    data = card_random + offline_counter.to_bytes(2, "big") + (terminal_seq & 0xFFFF).to_bytes(2, "big")
    return _session_key(dpk, data, alg)


def load_session_key(dlk: bytes, card_random: bytes, online_counter: int, alg: int = ALG_3DES) -> bytes:
    """SESLK from random || online counter || 80 00."""
    _check_len("card random", card_random, 4)
    return _session_key(dlk, card_random + online_counter.to_bytes(2, "big") + b"\x80\x00", alg)


def _cbc_last_block(key: bytes, data: bytes, iv: bytes, alg: int) -> bytes:
    bs = block_size(alg)
    _check_len("IV", iv, bs)
    if alg == ALG_SM4:
        enc = Cipher(algorithms.SM4(key), modes.CBC(iv)).encryptor()
    else:
        enc = Cipher(TripleDES(key * 3 if len(key) == 8 else key + key[:8]), modes.CBC(iv)).encryptor()
    out = enc.update(data) + enc.finalize()
    return out[-bs:]


def mac(key: bytes, data: bytes, alg: int = ALG_3DES, iv: bytes | None = None) -> bytes:
    """Purse MAC: CBC-MAC, zero IV unless given, ISO 9797-1 m2 padding, leftmost 4 bytes.

    3DES family: single DES under an 8-byte key (ISO 9797-1 MAC algorithm 1, not the
    retail MAC), as section 6 and its vectors show. SM4: SM4 CBC-MAC under 16 bytes.
    """
    bs = block_size(alg)
    _check_len("MAC key", key, bs if alg == ALG_SM4 else 8)
    return _cbc_last_block(key, pad_iso9797_m2(data, bs), iv or bytes(bs), alg)[:MAC_LEN]


def secure_messaging_mac(key: bytes, iv: bytes, data: bytes, alg: int = ALG_3DES) -> bytes:
    """MAC for secure-messaging commands such as APPLICATION BLOCK (section 9).

    Project-defined where the sources are silent: 3DES family uses the ISO 9797-1 MAC
    algorithm 3 (retail MAC) under the 16-byte maintenance key with IV = challenge ||
    00 00 00 00; SM4 uses SM4 CBC-MAC with IV = challenge || 00 * 12.
    """
    _check_alg(alg)
    _check_len("maintenance key", key, KEY_LEN)
    bs = block_size(alg)
    iv = iv + bytes(bs - len(iv)) if len(iv) < bs else iv
    padded = pad_iso9797_m2(data, bs)
    if alg == ALG_SM4:
        return _cbc_last_block(key, padded, iv, alg)[:MAC_LEN]
    k_left, k_right = key[:8], key[8:]
    last = _cbc_last_block(k_left, padded, iv, alg)
    last = _decrypt_ecb(k_right, last, alg)
    return _encrypt_ecb(k_left, last, alg)[:MAC_LEN]


def tac_key(dtk: bytes, alg: int = ALG_3DES) -> bytes:
    """TAC key: DTK left XOR right (single DES) for 3DES; DTK itself for SM4."""
    _check_alg(alg)
    _check_len("DTK", dtk, KEY_LEN)
    if alg == ALG_SM4:
        return dtk
    return (int.from_bytes(dtk[:8], "big") ^ int.from_bytes(dtk[8:], "big")).to_bytes(8, "big")


# --- MAC and TAC inputs (section 6, "MAC inputs") --------------------------------


def _u32(value: int) -> bytes:
    if not 0 <= value <= 0xFFFFFFFF:
        raise CryptoInputError(f"amount {value} out of the unsigned 32-bit range")
    return value.to_bytes(4, "big")


def purchase_mac1_data(amount_fen: int, tx_type: int, terminal_id: bytes, date4: bytes, time3: bytes) -> bytes:
    _check_len("terminal id", terminal_id, 6)
    return _u32(amount_fen) + bytes([tx_type]) + terminal_id + date4 + time3


def purchase_mac2_data(amount_fen: int) -> bytes:
    return _u32(amount_fen)


def purchase_tac_data(
    amount_fen: int, tx_type: int, terminal_id: bytes, terminal_seq: int, date4: bytes, time3: bytes
) -> bytes:
    _check_len("terminal id", terminal_id, 6)
    return _u32(amount_fen) + bytes([tx_type]) + terminal_id + _u32(terminal_seq) + date4 + time3


def load_mac1_data(balance_before_fen: int, amount_fen: int, tx_type: int, terminal_id: bytes) -> bytes:
    _check_len("terminal id", terminal_id, 6)
    return _u32(balance_before_fen) + _u32(amount_fen) + bytes([tx_type]) + terminal_id


def load_mac2_data(amount_fen: int, tx_type: int, terminal_id: bytes, date4: bytes, time3: bytes) -> bytes:
    _check_len("terminal id", terminal_id, 6)
    return _u32(amount_fen) + bytes([tx_type]) + terminal_id + date4 + time3


def load_tac_data(
    balance_after_fen: int,
    online_counter: int,
    amount_fen: int,
    tx_type: int,
    terminal_id: bytes,
    date4: bytes,
    time3: bytes,
) -> bytes:
    """Load TAC input; the online counter is the value before the load (JC)."""
    _check_len("terminal id", terminal_id, 6)
    return (
        _u32(balance_after_fen)
        + online_counter.to_bytes(2, "big")
        + _u32(amount_fen)
        + bytes([tx_type])
        + terminal_id
        + date4
        + time3
    )


def purchase_tac(
    dtk: bytes,
    amount_fen: int,
    tx_type: int,
    terminal_id: bytes,
    terminal_seq: int,
    date4: bytes,
    time3: bytes,
    alg: int = ALG_3DES,
) -> bytes:
    return mac(tac_key(dtk, alg), purchase_tac_data(amount_fen, tx_type, terminal_id, terminal_seq, date4, time3), alg)


def load_tac(
    dtk: bytes,
    balance_after_fen: int,
    online_counter: int,
    amount_fen: int,
    tx_type: int,
    terminal_id: bytes,
    date4: bytes,
    time3: bytes,
    alg: int = ALG_3DES,
) -> bytes:
    data = load_tac_data(balance_after_fen, online_counter, amount_fen, tx_type, terminal_id, date4, time3)
    return mac(tac_key(dtk, alg), data, alg)


# --- reusable per-key MAC (clearing's bulk TAC verification) ------------------------------


class MacKey:
    """``mac(key, data)`` with zero IV, for many messages under one key, at a fraction of the cost.

    Creating an OpenSSL cipher context costs several microseconds, more than the MAC itself;
    clearing verifies a TAC per record under a few keys per card. One CBC encryptor is kept
    per key and its chaining is cancelled by XORing the previous output block into the
    first block of the next message, which gives exactly the zero-IV CBC-MAC of ``mac``
    (tests check the two agree). Not thread-safe: one instance per thread or process.
    """

    __slots__ = ("_block", "_encryptor", "_previous")

    def __init__(self, key: bytes, alg: int = ALG_3DES) -> None:
        self._block = block_size(alg)
        _check_len("MAC key", key, self._block if alg == ALG_SM4 else 8)
        if alg == ALG_SM4:
            cipher = Cipher(algorithms.SM4(key), modes.CBC(bytes(self._block)))
        else:
            cipher = Cipher(TripleDES(key * 3), modes.CBC(bytes(self._block)))
        self._encryptor = cipher.encryptor()
        self._previous = 0

    def mac(self, data: bytes) -> bytes:
        block = self._block
        padded = pad_iso9797_m2(data, block)
        first = int.from_bytes(padded[:block], "big") ^ self._previous
        out = self._encryptor.update(first.to_bytes(block, "big") + padded[block:])
        last = out[-block:]
        self._previous = int.from_bytes(last, "big")
        return last[:MAC_LEN]


def tac_mac_key(dtk: bytes, alg: int = ALG_3DES) -> MacKey:
    """The reusable TAC MAC of a card: ``tac_mac_key(dtk).mac(data) == mac(tac_key(dtk), data)``."""
    return MacKey(tac_key(dtk, alg), alg)
