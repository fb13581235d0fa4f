"""The batch format on the wire: canonical encoding, SHA-256 digest, Ed25519 signature (``docs/interop.md``).

Pure: bytes in, bytes or dataclasses out; keys are passed in. Two documents travel:

* a **batch** (acquirer → issuer): ``{"format", "from", "to", "sequence", "created_at", "items"}``,
  each item an ``InteropItem`` (``interop_xian.items``);
* an **acknowledgement** (issuer → acquirer): ``{"format", "from", "to", "sequence",
  "batch_digest", "received_at", "verdicts"}``, one ``ItemVerdict`` per item, in item order.

The canonical encoding is JSON with keys sorted, no whitespace, ASCII only (``\\uXXXX``
escapes), integers only (a float anywhere is refused, as money is integer fen). A receiver
re-encodes what it parsed and refuses a body that is not byte for byte that encoding, so one
document has exactly one encoding and one digest. The digest is SHA-256 of the body; the
signature is Ed25519 over ``SIGNATURE_DOMAIN || kind || "\\n" || digest`` (``kind`` is
``batch`` or ``ack``), so a batch's signature can never pass for an acknowledgement's.

The signature and the key id travel in headers, not in the body: the body of a batch is
built once, stored, and resent byte for byte; it is signed at each send with the sender's
current key, so a key rotated between two attempts changes no content.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from interop_xian.config import CITIES
from interop_xian.errors import InteropCode, InteropError
from interop_xian.items import ITEM_ID_LEN_MAX, InteropItem, ItemOutcome, ItemVerdict

BATCH_FORMAT: Final = "yikatong-interop-batch/1"
ACK_FORMAT: Final = "yikatong-interop-ack/1"
SIGNATURE_DOMAIN: Final = b"yikatong-interop/1 signature\n"
KEY_ID_HEADER: Final = "X-Yikatong-Key-Id"
SIGNATURE_HEADER: Final = "X-Yikatong-Signature"
ITEMS_MAX: Final = 100_000
CODE_LEN_MAX: Final = 40
MESSAGE_LEN_MAX: Final = 500
_HEX64: Final = re.compile(r"^[0-9a-f]{64}$")
_TERMINAL_ID: Final = re.compile(r"^[0-9a-f]{12}$")
_KEY_ID: Final = re.compile(r"^[0-9a-f]{32}$")
_BATCH_KEYS: Final = frozenset({"format", "from", "to", "sequence", "created_at", "items"})
_ITEM_KEYS: Final = frozenset({"item_id", "terminal_id", "terminal_seq", "record_digest", "record"})
_ACK_KEYS: Final = frozenset({"format", "from", "to", "sequence", "batch_digest", "received_at", "verdicts"})
_VERDICT_KEYS: Final = frozenset({"item_id", "outcome", "code", "amount_fen", "message", "window_day"})


# --- the encoding -----------------------------------------------------------------------


def canonical(document: Any) -> bytes:
    """The one encoding of a document: sorted keys, no whitespace, ASCII, no floats."""
    _no_floats(document)
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode(
        "ascii"
    )


def _no_floats(value: Any, depth: int = 0) -> None:
    """Refuse floats, non-string keys and nesting past 32 levels, depth first in document order.

    A call per container only: a member's checks (depth, then float) are made in the loop; an
    object's keys are checked before its members.
    """
    if depth > 32:
        raise _too_deep()
    if isinstance(value, float):
        raise _a_float()
    inner = depth + 1
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise InteropError(InteropCode.E_INTEROP_MALFORMED, "an object key that is not a string")
        members: Any = value.values()
    elif isinstance(value, list):
        members = value
    else:
        return
    for v in members:
        if inner > 32:
            raise _too_deep()
        if isinstance(v, dict | list):
            _no_floats(v, inner)
        elif isinstance(v, float):
            raise _a_float()


def _too_deep() -> InteropError:
    return InteropError(InteropCode.E_INTEROP_MALFORMED, "the document nests deeper than 32 levels")


def _a_float() -> InteropError:
    return InteropError(InteropCode.E_INTEROP_MALFORMED, "a number with a fraction: amounts are integer fen")


def digest(body: bytes) -> str:
    """SHA-256 of a body, hex: what is signed, stored and compared on a replay."""
    return hashlib.sha256(body).hexdigest()


def key_id_of(public_key: Ed25519PublicKey | bytes) -> str:
    """A key's id: the first 16 bytes of SHA-256 of its raw 32 bytes, hex (also its fingerprint)."""
    raw = public_key if isinstance(public_key, bytes) else raw_public(public_key)
    return hashlib.sha256(raw).hexdigest()[:32]


def raw_public(public_key: Ed25519PublicKey) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def public_key_from_hex(hex_key: str) -> Ed25519PublicKey:
    try:
        raw = bytes.fromhex(hex_key.strip())
        if len(raw) != 32:
            raise ValueError
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError:
        raise InteropError(
            InteropCode.E_INTEROP_BAD_KEY_FILE, "a public key must be 32 bytes of Ed25519, 64 hex chars"
        ) from None


# --- signatures -------------------------------------------------------------------------


SIGNED_KINDS: Final = frozenset({"batch", "ack", "message", "reply"})  # ``interop_xian.messages``: the last two


def _message(kind: str, body: bytes) -> bytes:
    assert kind in SIGNED_KINDS
    return SIGNATURE_DOMAIN + kind.encode() + b"\n" + hashlib.sha256(body).digest()


def sign(kind: str, body: bytes, private_key: Ed25519PrivateKey) -> str:
    """The base64 Ed25519 signature of a body of ``kind`` (``batch`` or ``ack``)."""
    return base64.b64encode(private_key.sign(_message(kind, body))).decode("ascii")


def verify(kind: str, body: bytes, signature_b64: str, public_key: Ed25519PublicKey) -> None:
    """Refuse (``E_INTEROP_BAD_SIGNATURE``) a signature that does not verify over this body."""
    try:
        signature = base64.b64decode(signature_b64.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise InteropError(InteropCode.E_INTEROP_BAD_SIGNATURE, "the signature is not base64") from None
    if len(signature) != 64:
        raise InteropError(InteropCode.E_INTEROP_BAD_SIGNATURE, "an Ed25519 signature is 64 bytes")
    try:
        public_key.verify(signature, _message(kind, body))
    except InvalidSignature:
        raise InteropError(
            InteropCode.E_INTEROP_BAD_SIGNATURE,
            f"the {kind}'s signature does not verify with key {key_id_of(public_key)}: altered, or another key",
        ) from None


def check_key_id(key_id: str | None) -> str:
    if key_id is None or not _KEY_ID.match(key_id):
        raise InteropError(InteropCode.E_INTEROP_UNSIGNED, f"{KEY_ID_HEADER} must be a key id (32 hex)")
    return key_id


# --- documents --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Batch:
    from_city: str
    to_city: str
    sequence: int
    created_at: str
    items: tuple[InteropItem, ...]

    @property
    def batch_id(self) -> str:
        """The name the issuer's judge gets: ``<from>:<to>:<sequence>``."""
        return f"{self.from_city}:{self.to_city}:{self.sequence}"


@dataclass(frozen=True, slots=True)
class Ack:
    from_city: str
    to_city: str
    sequence: int
    batch_digest: str
    received_at: str
    verdicts: tuple[ItemVerdict, ...]


def iso_utc(moment: dt.datetime) -> str:
    assert moment.tzinfo is not None, "times on the wire are aware"
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def encode_batch(
    *, from_city: str, to_city: str, sequence: int, created_at: dt.datetime, items: Sequence[InteropItem]
) -> bytes:
    """A batch's canonical body (built once; stored; resent byte for byte)."""
    assert from_city in CITIES and to_city in CITIES and from_city != to_city
    assert sequence > 0 and 0 < len(items) <= ITEMS_MAX
    document = {
        "format": BATCH_FORMAT,
        "from": from_city,
        "to": to_city,
        "sequence": sequence,
        "created_at": iso_utc(created_at),
        "items": [
            {
                "item_id": i.item_id,
                "terminal_id": i.terminal_id,
                "terminal_seq": i.terminal_seq,
                "record_digest": i.record_digest,
                "record": dict(i.record),
            }
            for i in items
        ],
    }
    return canonical(document)


def encode_ack(
    *, from_city: str, to_city: str, sequence: int, batch_digest: str, received_at: dt.datetime,
    verdicts: Sequence[ItemVerdict],
) -> bytes:  # fmt: skip
    """An acknowledgement's canonical body."""
    document = {
        "format": ACK_FORMAT,
        "from": from_city,
        "to": to_city,
        "sequence": sequence,
        "batch_digest": batch_digest,
        "received_at": iso_utc(received_at),
        "verdicts": [
            {
                "item_id": v.item_id,
                "outcome": v.outcome.value,
                "code": v.code,
                "amount_fen": v.amount_fen,
                "message": v.message[:MESSAGE_LEN_MAX],
                "window_day": None if v.window_day is None else v.window_day.isoformat(),
            }
            for v in verdicts
        ],
    }
    return canonical(document)


def _malformed(why: str) -> InteropError:
    return InteropError(InteropCode.E_INTEROP_MALFORMED, why)


def _parse(body: bytes, what: str) -> dict[str, Any]:
    try:
        document = json.loads(body.decode("ascii"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise _malformed(f"the {what} is not ASCII JSON") from None
    if not isinstance(document, dict):
        raise _malformed(f"the {what} is not a JSON object")
    if canonical(document) != body:
        raise _malformed(f"the {what} is not in the canonical encoding (sorted keys, no whitespace, ASCII)")
    return document


def _exact_keys(obj: Any, keys: frozenset[str], what: str) -> Mapping[str, Any]:
    if not isinstance(obj, dict) or set(obj) != keys:
        raise _malformed(f"{what} must have exactly the fields {', '.join(sorted(keys))}")
    return obj


def _int(value: Any, what: str, low: int = 0, high: int = 2**63 - 1) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise _malformed(f"{what} must be an integer in {low}..{high}")
    return value


def _str(value: Any, what: str, max_len: int) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= max_len:
        raise _malformed(f"{what} must be a string of 1..{max_len} characters")
    return value


def _time(value: Any, what: str) -> str:
    text = _str(value, what, 20)
    try:
        dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        raise _malformed(f"{what} must be a UTC time YYYY-MM-DDTHH:MM:SSZ") from None
    return text


def _day(value: Any, what: str) -> dt.date | None:
    if value is None:
        return None
    try:
        return dt.date.fromisoformat(_str(value, what, 10))
    except ValueError:
        raise _malformed(f"{what} must be a date YYYY-MM-DD or null") from None


def _cities(document: Mapping[str, Any]) -> tuple[str, str]:
    from_city, to_city = document["from"], document["to"]
    if from_city not in CITIES or to_city not in CITIES or from_city == to_city:
        raise _malformed(f"from/to must be two different cities of {', '.join(CITIES)}")
    return str(from_city), str(to_city)


def decode_batch(body: bytes, *, items_max: int = ITEMS_MAX) -> Batch:
    """A received batch body, checked field by field; ``E_INTEROP_MALFORMED`` says what is wrong."""
    document = _exact_keys(_parse(body, "batch"), _BATCH_KEYS, "a batch")
    if document["format"] != BATCH_FORMAT:
        raise _malformed(f"format must be {BATCH_FORMAT!r}")
    from_city, to_city = _cities(document)
    sequence = _int(document["sequence"], "sequence", 1)
    created_at = _time(document["created_at"], "created_at")
    raw_items = document["items"]
    if not isinstance(raw_items, list) or not 0 < len(raw_items) <= items_max:
        raise _malformed(f"items must be a list of 1..{items_max} items")
    items = []
    seen: set[str] = set()
    for n, raw in enumerate(raw_items):
        item = _exact_keys(raw, _ITEM_KEYS, f"item {n}")
        item_id = _str(item["item_id"], f"item {n}: item_id", ITEM_ID_LEN_MAX)
        if not item_id.startswith(f"{from_city}:"):
            raise _malformed(f"item {n}: item_id must start with the acquirer's city {from_city!r}")
        if item_id in seen:
            raise _malformed(f"item {n}: item_id {item_id} twice in one batch")
        seen.add(item_id)
        terminal_id = _str(item["terminal_id"], f"item {n}: terminal_id", 12)
        if not _TERMINAL_ID.match(terminal_id):
            raise _malformed(f"item {n}: terminal_id must be 12 lower-case hex")
        record_digest = _str(item["record_digest"], f"item {n}: record_digest", 64)
        if not _HEX64.match(record_digest):
            raise _malformed(f"item {n}: record_digest must be 64 lower-case hex")
        if not isinstance(item["record"], dict):
            raise _malformed(f"item {n}: record must be an object")
        items.append(
            InteropItem(
                item_id=item_id,
                terminal_id=terminal_id,
                terminal_seq=_int(item["terminal_seq"], f"item {n}: terminal_seq", 0, 2**32 - 1),
                record_digest=record_digest,
                record=item["record"],
            )
        )
    return Batch(from_city, to_city, sequence, created_at, tuple(items))


def decode_ack(body: bytes) -> Ack:
    """A received acknowledgement, checked field by field (the sender checks it against its batch)."""
    document = _exact_keys(_parse(body, "acknowledgement"), _ACK_KEYS, "an acknowledgement")
    if document["format"] != ACK_FORMAT:
        raise _malformed(f"format must be {ACK_FORMAT!r}")
    from_city, to_city = _cities(document)
    batch_digest = _str(document["batch_digest"], "batch_digest", 64)
    if not _HEX64.match(batch_digest):
        raise _malformed("batch_digest must be 64 lower-case hex")
    raw_verdicts = document["verdicts"]
    if not isinstance(raw_verdicts, list) or not raw_verdicts:
        raise _malformed("verdicts must be a non-empty list")
    verdicts = []
    for n, raw in enumerate(raw_verdicts):
        v = _exact_keys(raw, _VERDICT_KEYS, f"verdict {n}")
        try:
            outcome = ItemOutcome(v["outcome"])
        except ValueError:
            raise _malformed(f"verdict {n}: outcome must be accepted or rejected") from None
        message = v["message"]
        if not isinstance(message, str) or len(message) > MESSAGE_LEN_MAX:
            raise _malformed(f"verdict {n}: message must be a string of at most {MESSAGE_LEN_MAX}")
        verdicts.append(
            ItemVerdict(
                item_id=_str(v["item_id"], f"verdict {n}: item_id", ITEM_ID_LEN_MAX),
                outcome=outcome,
                code=_str(v["code"], f"verdict {n}: code", CODE_LEN_MAX),
                amount_fen=_int(v["amount_fen"], f"verdict {n}: amount_fen"),
                message=message,
                window_day=_day(v["window_day"], f"verdict {n}: window_day"),
            )
        )
    return Ack(
        from_city, to_city, _int(document["sequence"], "sequence", 1), batch_digest,
        _time(document["received_at"], "received_at"), tuple(verdicts),
    )  # fmt: skip


class Identified(Protocol):
    """What ``check_verdicts`` reads of an item: its id (an ``InteropItem``, or the id of one sent)."""

    @property
    def item_id(self) -> str: ...


def check_verdicts(items: Sequence[Identified], verdicts: Sequence[ItemVerdict]) -> None:
    """One verdict per item, in item order; an acceptance with an amount, a rejection with 0 and a code.

    Asserted on both sides of the boundary: the issuer before it stores its answer, the
    acquirer before it applies one.
    """
    if len(verdicts) != len(items):
        raise _malformed(f"{len(verdicts)} verdicts for {len(items)} items")
    for n, (item, verdict) in enumerate(zip(items, verdicts, strict=True)):
        if verdict.item_id != item.item_id:
            raise _malformed(f"verdict {n} is for {verdict.item_id}, item {n} is {item.item_id}")
        if verdict.outcome is ItemOutcome.ACCEPTED and verdict.code != "OK":
            raise _malformed(f"verdict {n}: an acceptance has code OK")
        if verdict.outcome is ItemOutcome.REJECTED and (verdict.code == "OK" or verdict.amount_fen != 0):
            raise _malformed(f"verdict {n}: a rejection has a reason code and amount 0")
        if verdict.amount_fen < 0:
            raise _malformed(f"verdict {n}: a negative amount")


__all__ = [
    "ACK_FORMAT",
    "BATCH_FORMAT",
    "KEY_ID_HEADER",
    "SIGNATURE_DOMAIN",
    "SIGNATURE_HEADER",
    "Ack",
    "Batch",
    "canonical",
    "check_key_id",
    "check_verdicts",
    "decode_ack",
    "decode_batch",
    "digest",
    "encode_ack",
    "encode_batch",
    "iso_utc",
    "key_id_of",
    "public_key_from_hex",
    "raw_public",
    "sign",
    "verify",
]
