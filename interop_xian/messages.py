"""The signed messages beside the batches: window digests and dispute moves (``docs/interop.md``).

Pure, like ``interop_xian.batch``, whose canonical encoding, digest and Ed25519 signature they
share (signed as kind ``message`` and ``reply``, so neither passes for a batch or an
acknowledgement). Two documents travel on ``POST /interop/v1/messages``:

* a **message**: ``{"format", "from", "to", "message_id", "created_at", "kind", "content"}``;
* a **reply** to it: ``{"format", "from", "to", "message_digest", "answered_at", "kind", "content"}``.

``kind`` is ``window`` (our instruction for a window: its digest and itemised lines; the reply is
the peer's own, and its state) or ``dispute`` (a move of a dispute, made by the side it names; the
reply says where the peer's dispute stands). Each content is checked field by field here, so the
handlers get plain values.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from interop_xian import batch as wire
from interop_xian.config import CITIES
from interop_xian.errors import InteropCode, InteropError
from interop_xian.items import ITEM_ID_LEN_MAX

MESSAGE_FORMAT: Final = "yikatong-interop-message/1"
REPLY_FORMAT: Final = "yikatong-interop-reply/1"
KINDS: Final = ("window", "dispute")
MESSAGE_ID_LEN_MAX: Final = 128
TEXT_LEN_MAX: Final = 4000
LINES_MAX: Final = 2_000_000
_HEX64: Final = re.compile(r"^[0-9a-f]{64}$")
_MESSAGE_KEYS: Final = frozenset({"format", "from", "to", "message_id", "created_at", "kind", "content"})
_REPLY_KEYS: Final = frozenset({"format", "from", "to", "message_digest", "answered_at", "kind", "content"})
_WINDOW_KEYS: Final = frozenset({"window_day", "digest", "state", "instruction"})
_DISPUTE_KEYS: Final = frozenset(
    {"item_id", "action", "by", "to_state", "amount_fen", "reason_code", "note", "evidence", "window_day"}
)
_DISPUTE_REPLY_KEYS: Final = frozenset({"item_id", "state"})
WINDOW_STATES: Final = ("proposed", "mismatch", "final")
DISPUTE_ACTIONS: Final = ("open", "move")
SIDES: Final = ("issuer", "acquirer")
DISPUTE_STATES: Final = ("opened", "evidence_requested", "evidence_given", "accepted", "rejected", "written_off")


def _malformed(why: str) -> InteropError:
    return InteropError(InteropCode.E_INTEROP_MALFORMED, why)


@dataclass(frozen=True, slots=True)
class Message:
    from_city: str
    to_city: str
    message_id: str
    created_at: dt.datetime
    kind: str
    content: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Reply:
    from_city: str
    to_city: str
    message_digest: str
    kind: str
    content: Mapping[str, Any]


def encode_message(
    *, from_city: str, to_city: str, message_id: str, created_at: dt.datetime, kind: str, content: Mapping[str, Any]
) -> bytes:
    assert from_city in CITIES and to_city in CITIES and from_city != to_city and kind in KINDS
    assert 0 < len(message_id) <= MESSAGE_ID_LEN_MAX
    return wire.canonical(
        {
            "format": MESSAGE_FORMAT, "from": from_city, "to": to_city, "message_id": message_id,
            "created_at": wire.iso_utc(created_at), "kind": kind, "content": dict(content),
        }
    )  # fmt: skip


def encode_reply(
    *, from_city: str, to_city: str, message_digest: str, answered_at: dt.datetime, kind: str,
    content: Mapping[str, Any],
) -> bytes:  # fmt: skip
    return wire.canonical(
        {
            "format": REPLY_FORMAT, "from": from_city, "to": to_city, "message_digest": message_digest,
            "answered_at": wire.iso_utc(answered_at), "kind": kind, "content": dict(content),
        }
    )  # fmt: skip


def _document(body: bytes, keys: frozenset[str], fmt: str, what: str) -> Mapping[str, Any]:
    try:
        document = wire._parse(body, what)
    except RecursionError:
        raise _malformed(f"the {what} nests too deep") from None
    if set(document) != keys:
        raise _malformed(f"a {what} must have exactly the fields {', '.join(sorted(keys))}")
    if document["format"] != fmt:
        raise _malformed(f"format must be {fmt!r}")
    if document["kind"] not in KINDS:
        raise _malformed(f"kind must be one of {', '.join(KINDS)}")
    if not isinstance(document["content"], dict):
        raise _malformed("content must be an object")
    return document


def decode_message(body: bytes) -> Message:
    """A received message, its envelope checked (the content is checked by its kind's decoder)."""
    document = _document(body, _MESSAGE_KEYS, MESSAGE_FORMAT, "message")
    from_city, to_city = wire._cities(document)
    message_id = wire._str(document["message_id"], "message_id", MESSAGE_ID_LEN_MAX)
    if not message_id.startswith(f"{from_city}:"):
        raise _malformed(f"message_id must start with the sender's city {from_city!r}")
    created = dt.datetime.strptime(wire._time(document["created_at"], "created_at"), "%Y-%m-%dT%H:%M:%SZ")
    return Message(from_city, to_city, message_id, created.replace(tzinfo=dt.UTC), document["kind"],
                   document["content"])  # fmt: skip


def decode_reply(body: bytes) -> Reply:
    document = _document(body, _REPLY_KEYS, REPLY_FORMAT, "reply")
    from_city, to_city = wire._cities(document)
    message_digest = wire._str(document["message_digest"], "message_digest", 64)
    if not _HEX64.match(message_digest):
        raise _malformed("message_digest must be 64 lower-case hex")
    wire._time(document["answered_at"], "answered_at")
    return Reply(from_city, to_city, message_digest, document["kind"], document["content"])


# --- window content: ours in the message, the peer's in the reply -----------------------


@dataclass(frozen=True, slots=True)
class WindowContent:
    window_day: dt.date
    digest: str
    state: str
    instruction: Mapping[str, Any]


def window_content(*, window_day: dt.date, digest: str, state: str, instruction: Mapping[str, Any]) -> dict[str, Any]:
    return {"window_day": window_day.isoformat(), "digest": digest, "state": state, "instruction": dict(instruction)}


def decode_window(content: Mapping[str, Any]) -> WindowContent:
    """A window content; the instruction must be one whose digest is the one given (``window_close``)."""
    from interop_xian import window_close

    if set(content) != _WINDOW_KEYS:
        raise _malformed(f"a window content has exactly the fields {', '.join(sorted(_WINDOW_KEYS))}")
    day = wire._day(content["window_day"], "window_day")
    if day is None:
        raise _malformed("window_day must be a date")
    digest = wire._str(content["digest"], "digest", 64)
    if not _HEX64.match(digest):
        raise _malformed("digest must be 64 lower-case hex")
    if content["state"] not in WINDOW_STATES:
        raise _malformed(f"state must be one of {', '.join(WINDOW_STATES)}")
    document = content["instruction"]
    try:
        instruction = window_close.from_document(document)
        items = document["items"]
        if not isinstance(items, list) or len(items) > LINES_MAX:
            raise ValueError
    except (KeyError, TypeError, ValueError, IndexError):
        raise _malformed("instruction is not a window instruction") from None
    if instruction.window_day != day or window_close.instruction_digest(instruction) != digest:
        raise _malformed("the instruction's digest or day is not the one given")
    return WindowContent(day, digest, str(content["state"]), document)


# --- dispute content -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DisputeContent:
    """One dispute move: ``by`` is the sender's side (its own move); ``window_day`` for an acceptance."""

    item_id: str
    action: str
    by: str
    to_state: str
    amount_fen: int
    reason_code: str
    note: str
    evidence: str | None
    window_day: dt.date | None


def dispute_content(move: DisputeContent) -> dict[str, Any]:
    return {
        "item_id": move.item_id, "action": move.action, "by": move.by, "to_state": move.to_state,
        "amount_fen": move.amount_fen, "reason_code": move.reason_code, "note": move.note,
        "evidence": move.evidence, "window_day": None if move.window_day is None else move.window_day.isoformat(),
    }  # fmt: skip


def decode_dispute(content: Mapping[str, Any]) -> DisputeContent:
    if set(content) != _DISPUTE_KEYS:
        raise _malformed(f"a dispute content has exactly the fields {', '.join(sorted(_DISPUTE_KEYS))}")
    if content["action"] not in DISPUTE_ACTIONS or content["by"] not in SIDES:
        raise _malformed("action must be open or move, by issuer or acquirer")
    if content["to_state"] not in DISPUTE_STATES:
        raise _malformed(f"to_state must be one of {', '.join(DISPUTE_STATES)}")
    note = content["note"]
    evidence = content["evidence"]
    if not isinstance(note, str) or len(note) > TEXT_LEN_MAX:
        raise _malformed(f"note must be a string of at most {TEXT_LEN_MAX}")
    if evidence is not None and (not isinstance(evidence, str) or len(evidence) > TEXT_LEN_MAX):
        raise _malformed(f"evidence must be null or a string of at most {TEXT_LEN_MAX}")
    for name in ("item_id", "reason_code"):
        value = content[name]
        if isinstance(value, str) and not value.isprintable():
            raise _malformed(f"{name} must be printable text")
    if "\x00" in note or (evidence is not None and "\x00" in evidence):
        raise _malformed("note and evidence are text without NUL")
    return DisputeContent(
        item_id=wire._str(content["item_id"], "item_id", ITEM_ID_LEN_MAX),
        action=str(content["action"]),
        by=str(content["by"]),
        to_state=str(content["to_state"]),
        amount_fen=wire._int(content["amount_fen"], "amount_fen"),
        reason_code=wire._str(content["reason_code"], "reason_code", wire.CODE_LEN_MAX),
        note=note,
        evidence=evidence,
        window_day=wire._day(content["window_day"], "window_day"),
    )


def decode_dispute_reply(content: Mapping[str, Any]) -> tuple[str, str]:
    if set(content) != _DISPUTE_REPLY_KEYS or content["state"] not in DISPUTE_STATES:
        raise _malformed("a dispute reply has the item_id and the dispute's state")
    return wire._str(content["item_id"], "item_id", ITEM_ID_LEN_MAX), str(content["state"])


__all__ = [
    "KINDS",
    "MESSAGE_FORMAT",
    "REPLY_FORMAT",
    "DisputeContent",
    "Message",
    "Reply",
    "WindowContent",
    "decode_dispute",
    "decode_dispute_reply",
    "decode_message",
    "decode_reply",
    "decode_window",
    "dispute_content",
    "encode_message",
    "encode_reply",
    "window_content",
]
