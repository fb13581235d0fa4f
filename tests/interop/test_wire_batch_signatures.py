"""The batch format: one canonical encoding, a digest, an Ed25519 signature that no altered byte survives."""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from interop_xian import batch
from interop_xian.errors import InteropCode, InteropError
from interop_xian.items import InteropItem, ItemOutcome, ItemVerdict
from interop_xian.keys import PeerKeyRing, SigningKeys

NOW = dt.datetime(2026, 12, 3, 8, 0, tzinfo=dt.UTC)
_PRIVATE = Ed25519PrivateKey.generate()


def _item(n: int, amount_fen: int = 200) -> InteropItem:
    record = {
        "terminal_id": "0a0000000001",
        "terminal_seq": n,
        "amount_fen": amount_fen,
        "card_asn": "3100" + "0" * 16,
        "fare": {"product": "p1", "discount_fen": 0, "note": None},
        "tx_time": "2026-12-03T08:00:00+08:00",
    }
    return InteropItem(f"xianyang:0a0000000001:{n}:{'ab' * 8}", "0a0000000001", n, "cd" * 32, record)


def _body(n_items: int = 3, sequence: int = 1) -> bytes:
    return batch.encode_batch(
        from_city="xianyang",
        to_city="xian",
        sequence=sequence,
        created_at=NOW,
        items=[_item(i) for i in range(n_items)],
    )


def _keys(tmp_path: Path, city: str = "xianyang") -> SigningKeys:
    return SigningKeys(tmp_path / f"{city}.interop.json", os.urandom(32), city)


def test_a_batch_round_trips_and_has_one_encoding() -> None:
    body = _body()
    decoded = batch.decode_batch(body)
    assert decoded.sequence == 1 and decoded.from_city == "xianyang" and len(decoded.items) == 3
    assert decoded.items[2] == _item(2)
    assert batch.encode_batch(from_city="xianyang", to_city="xian", sequence=1, created_at=NOW,
                              items=decoded.items) == body  # fmt: skip
    assert body.isascii() and b" " not in body


def test_a_non_canonical_body_is_refused_even_with_the_same_content() -> None:
    pretty = json.dumps(json.loads(_body()), indent=1).encode()
    with pytest.raises(InteropError) as refused:
        batch.decode_batch(pretty)
    assert refused.value.code is InteropCode.E_INTEROP_MALFORMED


def test_a_float_anywhere_is_refused() -> None:
    document = json.loads(_body())
    document["items"][0]["record"]["amount_fen"] = 2.0
    with pytest.raises(InteropError) as refused:
        batch.decode_batch(json.dumps(document, sort_keys=True, separators=(",", ":")).encode())
    assert refused.value.code is InteropCode.E_INTEROP_MALFORMED


@pytest.mark.parametrize(
    ("field", "value"),
    [("sequence", 0), ("sequence", True), ("from", "beijing"), ("to", "xianyang"), ("items", []), ("format", "v2")],
)
def test_a_batch_with_a_bad_field_is_refused_by_name(field: str, value: object) -> None:
    document = json.loads(_body())
    document[field] = value
    with pytest.raises(InteropError) as refused:
        batch.decode_batch(batch.canonical(document))
    assert refused.value.code is InteropCode.E_INTEROP_MALFORMED


def test_an_item_named_for_another_acquirer_is_refused() -> None:
    document = json.loads(_body())
    document["items"][0]["item_id"] = "xian:" + document["items"][0]["item_id"].split(":", 1)[1]
    with pytest.raises(InteropError, match="acquirer's city"):
        batch.decode_batch(batch.canonical(document))


def test_signature_verifies_with_the_signers_key_only(tmp_path: Path) -> None:
    ours, other = _keys(tmp_path), _keys(tmp_path / "o")
    ours.rotate(now=NOW, overlap=dt.timedelta(days=1))
    other.rotate(now=NOW, overlap=dt.timedelta(days=1))
    _, private = ours.current()
    body = _body()
    signature = batch.sign("batch", body, private)
    batch.verify("batch", body, signature, private.public_key())
    with pytest.raises(InteropError) as wrong_key:
        batch.verify("batch", body, signature, other.current()[1].public_key())
    assert wrong_key.value.code is InteropCode.E_INTEROP_BAD_SIGNATURE
    with pytest.raises(InteropError):  # a batch's signature never passes for an acknowledgement's
        batch.verify("ack", body, signature, private.public_key())


@settings(max_examples=60, deadline=None)
@given(position=st.integers(min_value=0), flip=st.integers(min_value=1, max_value=255))
def test_any_altered_byte_breaks_the_signature(position: int, flip: int) -> None:
    private = _PRIVATE
    body = _body(2)
    signature = batch.sign("batch", body, private)
    at = position % len(body)
    tampered = body[:at] + bytes([body[at] ^ flip]) + body[at + 1 :]
    with pytest.raises(InteropError) as refused:
        batch.verify("batch", tampered, signature, private.public_key())
    assert refused.value.code is InteropCode.E_INTEROP_BAD_SIGNATURE


@settings(max_examples=40, deadline=None)
@given(position=st.integers(min_value=0), flip=st.integers(min_value=1, max_value=255))
def test_any_altered_signature_byte_is_refused(position: int, flip: int) -> None:
    import base64

    body = _body(1)
    raw = bytearray(base64.b64decode(batch.sign("batch", body, _PRIVATE)))
    raw[position % 64] ^= flip
    with pytest.raises(InteropError):
        batch.verify("batch", body, base64.b64encode(bytes(raw)).decode(), _PRIVATE.public_key())


def test_ack_round_trips_and_verdicts_must_match_items() -> None:
    items = [_item(1), _item(2)]
    verdicts = [
        ItemVerdict(items[0].item_id, ItemOutcome.ACCEPTED, "OK", 200, window_day=dt.date(2026, 12, 3)),
        ItemVerdict(items[1].item_id, ItemOutcome.REJECTED, "E_TAC_MISMATCH", 0, "TAC does not verify"),
    ]
    body = batch.encode_ack(from_city="xian", to_city="xianyang", sequence=4, batch_digest="ab" * 32,
                            received_at=NOW, verdicts=verdicts)  # fmt: skip
    ack = batch.decode_ack(body)
    assert ack.verdicts == tuple(verdicts) and ack.sequence == 4
    batch.check_verdicts(items, ack.verdicts)
    with pytest.raises(InteropError):
        batch.check_verdicts(items[::-1], ack.verdicts)
    with pytest.raises(InteropError):
        batch.check_verdicts(items, [verdicts[0], ItemVerdict(items[1].item_id, ItemOutcome.REJECTED, "E_X", 5)])


# --- key ring ------------------------------------------------------------------------------------


def test_signing_keys_are_sealed_at_rest_and_need_the_kek(tmp_path: Path) -> None:
    kek = os.urandom(32)
    keys = SigningKeys(tmp_path / "ks.json.interop.json", kek, "xianyang")
    info = keys.rotate(now=NOW, overlap=dt.timedelta(days=7))
    key_id, private = keys.current()
    assert key_id == info.key_id
    raw = private.private_bytes_raw()
    text = (tmp_path / "ks.json.interop.json").read_bytes()
    assert raw.hex().encode() not in text and raw not in text
    assert (tmp_path / "ks.json.interop.json").stat().st_mode & 0o077 == 0
    with pytest.raises(InteropError) as wrong:
        SigningKeys(tmp_path / "ks.json.interop.json", os.urandom(32), "xianyang").current()
    assert wrong.value.code is InteropCode.E_INTEROP_KEY_STORE
    reopened = SigningKeys(tmp_path / "ks.json.interop.json", kek, "xianyang")
    assert reopened.current()[1].private_bytes_raw() == raw
    assert "private" not in repr(reopened) and raw.hex() not in repr(reopened)


def test_a_sealed_key_moved_to_another_slot_does_not_decrypt(tmp_path: Path) -> None:
    kek = os.urandom(32)
    path = tmp_path / "k.interop.json"
    keys = SigningKeys(path, kek, "xianyang")
    keys.rotate(now=NOW, overlap=dt.timedelta(days=7))
    keys.rotate(now=NOW + dt.timedelta(hours=1), overlap=dt.timedelta(days=7))
    doc = json.loads(path.read_text())
    doc["keys"][0]["sealed"], doc["keys"][1]["sealed"] = doc["keys"][1]["sealed"], doc["keys"][0]["sealed"]
    path.write_text(json.dumps(doc))
    with pytest.raises(InteropError) as refused:
        SigningKeys(path, kek, "xianyang").current()
    assert refused.value.code is InteropCode.E_INTEROP_KEY_STORE


def test_without_a_key_signing_is_refused_with_the_fix(tmp_path: Path) -> None:
    with pytest.raises(InteropError, match="interop keys rotate") as refused:
        _keys(tmp_path).current()
    assert refused.value.code is InteropCode.E_INTEROP_NO_SIGNING_KEY


def test_rotation_signs_with_the_new_key_and_exports_the_old_until_its_overlap(tmp_path: Path) -> None:
    keys = _keys(tmp_path)
    first = keys.rotate(now=NOW, overlap=dt.timedelta(days=7))
    second = keys.rotate(now=NOW + dt.timedelta(days=1), overlap=dt.timedelta(days=7))
    assert keys.current()[0] == second.key_id
    exported = keys.export(now=NOW + dt.timedelta(days=2))
    listed = {k["key_id"]: k["retire_at"] for k in exported["keys"]}
    assert listed == {first.key_id: "2026-12-11T08:00:00+00:00", second.key_id: None}
    assert [k["key_id"] for k in keys.export(now=NOW + dt.timedelta(days=9))["keys"]] == [second.key_id]


def test_peer_key_ring_accepts_a_rotated_key_within_the_overlap_and_not_after() -> None:
    old, new = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    retire = NOW + dt.timedelta(days=7)
    old_id, new_id = batch.key_id_of(old.public_key()), batch.key_id_of(new.public_key())
    ring = PeerKeyRing({old_id: ("xianyang", old.public_key(), retire), new_id: ("xianyang", new.public_key(), None)})
    assert ring.key(old_id, now=retire - dt.timedelta(seconds=1))[0] == "xianyang"
    with pytest.raises(InteropError) as late:
        ring.key(old_id, now=retire)
    assert late.value.code is InteropCode.E_INTEROP_KEY_RETIRED
    assert ring.key(new_id, now=retire + dt.timedelta(days=365))[0] == "xianyang"
    with pytest.raises(InteropError) as unknown:
        ring.key("00" * 16, now=NOW)
    assert unknown.value.code is InteropCode.E_INTEROP_UNKNOWN_KEY
    with pytest.raises(InteropError) as other_city:
        ring.key(new_id, now=NOW, city="xian")
    assert other_city.value.code is InteropCode.E_INTEROP_UNKNOWN_KEY
