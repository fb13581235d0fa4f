"""The issuer's side of the channel: a delivered batch checked, put in sequence, judged, acknowledged.

``Receiver.receive`` is the whole of ``POST /interop/v1/batches`` without HTTP, each check a
named step with its own code (``docs/interop.md``, "Delivery"):

1. signed at all: the key id and signature headers (``E_INTEROP_UNSIGNED``);
2. the key is one of the peer's, and not retired (``E_INTEROP_UNKNOWN_KEY``, ``E_INTEROP_KEY_RETIRED``);
3. the signature verifies over the exact body (``E_INTEROP_BAD_SIGNATURE``) — before the body is parsed;
4. the body is a batch in the canonical encoding (``E_INTEROP_MALFORMED``), from the key's city
   to ours (``E_INTEROP_WRONG_PEER``);
5. its sequence: an earlier one with the same digest is a replay and gets the stored
   acknowledgement byte for byte; with another digest ``E_INTEROP_BATCH_CONFLICT``; a later
   one than expected ``E_INTEROP_SEQUENCE_GAP`` naming ``expected_sequence``;
6. the next one is judged (``IssuerJudge``: its own transaction, idempotent per item), and
   the batch with its acknowledgement is stored as the direction's new last sequence.

A refusal at steps 1–5 posts nothing; it is logged and kept in ``interop_refusals`` (the
digest and size of the body, never the body). Deliveries from one peer are judged one at a
time: the channel row is locked around the judge on PostgreSQL (and a process lock on
SQLite, where a crash or a second process at worst judges twice, which the judge's
per-item idempotency absorbs, and the unique (peer, sequence) stores one answer).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from clearing.db import on_postgres
from interop_xian import batch as wire
from interop_xian.config import InteropConfig
from interop_xian.errors import InteropCode, InteropError
from interop_xian.items import IssuerJudge, ItemOutcome
from interop_xian.keys import PeerKeyRing, SigningKeys
from interop_xian.messages import Message, decode_message, encode_reply
from interop_xian.models import InBatch, InMessage, Refusal
from interop_xian.outbox import channel

log = logging.getLogger("interop_xian.inbox")
REPLAY_HEADER: Final = "X-Yikatong-Replay"
EARLIEST_MESSAGE: Final = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
MESSAGE_CLOCK_SKEW: Final = dt.timedelta(days=1)  # a peer's clock ahead of ours by more is refused
STORED_KINDS: Final = frozenset({"dispute"})  # acted on once; a window message is handled afresh

# A message's handler, in the transaction that stores its answer: the reply's content, or InteropError.
MessageHandler = Callable[[Session, str, Message, dt.datetime], dict[str, Any]]


@dataclass(frozen=True, slots=True)
class Answer:
    """What the endpoint answers: a status, a body, and headers (the signature of an acknowledgement)."""

    status: int
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)


def error_body(code: InteropCode, message: str, **extra: Any) -> bytes:
    return wire.canonical({"code": code.value, "message": message, **extra})


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Receiver:
    """Receives the peer's batches for ``config.city``; ``judge`` is the issuer side."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        config: InteropConfig,
        signing: SigningKeys,
        judge: IssuerJudge,
        *,
        clock: Callable[[], dt.datetime] = _utcnow,
        handlers: Mapping[str, MessageHandler] | None = None,
    ) -> None:
        self.sessions = sessions
        self.config = config
        self.signing = signing
        self.judge = judge
        self.clock = clock
        self.handlers: dict[str, MessageHandler] = dict(handlers or {})
        self._lock = threading.Lock()

    def receive(self, body: bytes, key_id: str | None, signature: str | None) -> Answer:
        now = self.clock()
        claimed: dict[str, Any] = {"key_id": key_id if key_id and len(key_id) <= 32 else None}
        try:
            return self._receive(body, key_id, signature, now, claimed)
        except InteropError as exc:
            extra = {"expected_sequence": claimed["expected"]} if "expected" in claimed else {}
            self._refused(exc, body, now, claimed)
            return Answer(exc.status, error_body(exc.code, exc.message, **extra))

    def _receive(
        self, body: bytes, key_id: str | None, signature: str | None, now: dt.datetime, claimed: dict[str, Any]
    ) -> Answer:
        peer = self._verified("batch", body, key_id, signature, now)
        assert key_id is not None
        parsed = wire.decode_batch(body)  # at most ITEMS_MAX, within the body limit
        claimed.update(peer_city=parsed.from_city, sequence=parsed.sequence)
        if parsed.from_city != peer or parsed.to_city != self.config.city:
            raise InteropError(
                InteropCode.E_INTEROP_WRONG_PEER,
                f"a batch from {parsed.from_city} to {parsed.to_city} signed by {peer}'s key; "
                f"this is {self.config.city}",
            )
        body_digest = wire.digest(body)
        with self._lock, self.sessions() as session:
            postgres = on_postgres(session)
            row = channel(session, peer, "in", lock=postgres)
            if not postgres:
                session.commit()  # SQLite: hold no write lock while the judge writes
            stored = self._known(session, peer, parsed.sequence, body_digest, row.last_sequence, claimed)
            if stored is not None:
                return stored
            try:
                verdicts = self.judge.judge(
                    peer_city=peer, batch_id=parsed.batch_id, items=parsed.items, received_at=now
                )
                wire.check_verdicts(parsed.items, verdicts)
            except Exception as exc:  # any fault of the judge: not judged, resend
                log.exception("interop: batch %s from %s could not be judged", parsed.sequence, peer)
                why = exc.message if isinstance(exc, InteropError) else type(exc).__name__
                raise InteropError(
                    InteropCode.E_INTEROP_JUDGE_FAILED, f"batch {parsed.sequence} was not judged ({why}); resend it"
                ) from None
            ack = wire.encode_ack(from_city=self.config.city, to_city=peer, sequence=parsed.sequence,
                                  batch_digest=body_digest, received_at=now, verdicts=verdicts)  # fmt: skip
            accepted = sum(1 for v in verdicts if v.outcome is ItemOutcome.ACCEPTED)
            try:
                if not postgres:
                    row = channel(session, peer, "in", lock=True)
                    again = self._known(session, peer, parsed.sequence, body_digest, row.last_sequence, claimed)
                    if again is not None:
                        session.rollback()
                        return again
                session.add(
                    InBatch(peer_city=peer, sequence=parsed.sequence, digest=body_digest, key_id=key_id, body=body,
                            item_count=len(parsed.items), accepted_count=accepted, ack_body=ack, received_at=now)
                )  # fmt: skip
                row.last_sequence = parsed.sequence
                row.updated_at = now
                session.commit()
            except IntegrityError:
                session.rollback()
                with self.sessions() as fresh:
                    again = self._known(fresh, peer, parsed.sequence, body_digest, parsed.sequence, claimed)
                assert again is not None, "a unique (peer, sequence) conflict means the sequence is stored"
                return again
        log.info("interop: batch %s from %s judged: %d of %d accepted", parsed.sequence, peer, accepted,
                 len(verdicts))  # fmt: skip
        return self._signed(ack)

    def _verified(self, kind: str, body: bytes, key_id: str | None, signature: str | None, now: dt.datetime) -> str:
        """Steps 1–3 for a body of ``kind``: size, signed, a current key of the peer, a good signature."""
        if len(body) > self.config.body_bytes_max:
            raise InteropError(
                InteropCode.E_INTEROP_TOO_LARGE, f"a {kind} is at most {self.config.body_bytes_max} bytes"
            )
        if not key_id or not signature:
            raise InteropError(
                InteropCode.E_INTEROP_UNSIGNED,
                f"a {kind} comes with {wire.KEY_ID_HEADER} and {wire.SIGNATURE_HEADER}; nothing was read",
            )
        wire.check_key_id(key_id)
        with self.sessions() as session:
            ring = self._ring(session)
        peer, public = ring.key(key_id, now=now, city=self.config.peer_city)
        wire.verify(kind, body, signature, public)
        return peer

    # --- messages (``interop_xian.messages``) ------------------------------------------

    def receive_message(self, body: bytes, key_id: str | None, signature: str | None) -> Answer:
        """``POST /interop/v1/messages``: a window digest or a dispute move, checked as a batch is, then handled.

        A dispute message acts once: its answer is stored with what it did, in one transaction,
        and a replay (same id, same digest) gets that answer; the same id with other content is
        ``E_INTEROP_BATCH_CONFLICT``. A window message is handled afresh each time (its handler
        is idempotent, and a repeated proposal may agree now where it did not before).
        """
        now = self.clock()
        claimed: dict[str, Any] = {"key_id": key_id if key_id and len(key_id) <= 32 else None}
        try:
            peer = self._verified("message", body, key_id, signature, now)
            message = decode_message(body)
            claimed["peer_city"] = message.from_city
            if message.from_city != peer or message.to_city != self.config.city:
                raise InteropError(
                    InteropCode.E_INTEROP_WRONG_PEER,
                    f"a message from {message.from_city} to {message.to_city} signed by {peer}'s key; "
                    f"this is {self.config.city}",
                )
            if not EARLIEST_MESSAGE <= message.created_at <= now + MESSAGE_CLOCK_SKEW:
                raise InteropError(
                    InteropCode.E_INTEROP_MALFORMED,
                    f"created_at {message.created_at:%Y-%m-%dT%H:%M:%SZ} is not a time this message can have been made",
                )
            handler = self.handlers.get(message.kind)
            if handler is None:
                raise InteropError(InteropCode.E_INTEROP_NOT_CONFIGURED, f"{message.kind} messages are not taken here")
            body_digest = wire.digest(body)
            try:
                with self.sessions() as session, session.begin():
                    stored = self._stored_reply(session, peer, message, body_digest)
                    if stored is not None:
                        return self._signed(stored, kind="reply", replay=True)
                    content = handler(session, peer, message, now)
                    reply = encode_reply(from_city=self.config.city, to_city=peer, message_digest=body_digest,
                                         answered_at=now, kind=message.kind, content=content)  # fmt: skip
                    if message.kind in STORED_KINDS:
                        session.add(InMessage(peer_city=peer, message_id=message.message_id, kind=message.kind,
                                              digest=body_digest, reply_body=reply, received_at=now))  # fmt: skip
            except InteropError:
                # Refused by the rules, or the same message acted meanwhile (two deliveries at once):
                # then its stored answer is the answer.
                with self.sessions() as fresh:
                    again = self._stored_reply(fresh, peer, message, body_digest)
                if again is not None:
                    return self._signed(again, kind="reply", replay=True)
                raise
            return self._signed(reply, kind="reply")
        except InteropError as exc:
            self._refused(exc, body, now, claimed)
            return Answer(exc.status, error_body(exc.code, exc.message))
        except IntegrityError:  # the same message delivered twice at once: the other one acted
            with self.sessions() as session:
                again = self._stored_reply(session, peer, message, body_digest)
            if again is None:
                failed = InteropError(InteropCode.E_INTEROP_JUDGE_FAILED, "the message could not be stored; resend it")
                return Answer(failed.status, error_body(failed.code, failed.message))
            return self._signed(again, kind="reply", replay=True)

    def _stored_reply(self, session: Session, peer: str, message: Message, body_digest: str) -> bytes | None:
        if message.kind not in STORED_KINDS:
            return None
        stored = session.scalars(
            select(InMessage).where(InMessage.peer_city == peer, InMessage.message_id == message.message_id)
        ).one_or_none()
        if stored is None:
            return None
        if stored.digest != body_digest:
            raise InteropError(
                InteropCode.E_INTEROP_BATCH_CONFLICT,
                f"message {message.message_id} was received with digest {stored.digest[:16]}…, this one is "
                f"{body_digest[:16]}…",
            )
        return bytes(stored.reply_body)

    def _known(
        self, session: Session, peer: str, sequence: int, body_digest: str, last: int, claimed: dict[str, Any]
    ) -> Answer | None:
        """The answer to a sequence already received (replay or conflict) or beyond the next (gap); else None."""
        if sequence > last + 1:
            claimed["expected"] = last + 1
            raise InteropError(
                InteropCode.E_INTEROP_SEQUENCE_GAP,
                f"batch {sequence} arrived before {last + 1}: resend from sequence {last + 1}",
            )
        if sequence <= last:
            stored = session.scalars(
                select(InBatch).where(InBatch.peer_city == peer, InBatch.sequence == sequence)
            ).one_or_none()
            if stored is None:
                raise InteropError(
                    InteropCode.E_INTEROP_BATCH_CONFLICT, f"batch {sequence} is before this side's kept history"
                )
            if stored.digest != body_digest:
                raise InteropError(
                    InteropCode.E_INTEROP_BATCH_CONFLICT,
                    f"batch {sequence} was received with digest {stored.digest[:16]}…, this one is {body_digest[:16]}…",
                )
            log.info("interop: batch %s from %s is a replay; answered with the stored acknowledgement", sequence, peer)
            return self._signed(stored.ack_body, replay=True)
        return None

    def _ring(self, session: Session) -> PeerKeyRing:
        configured = [(self.config.peer_city, self.config.peer_public_key)] if self.config.peer_public_key else []
        return PeerKeyRing.load(session, configured=configured)

    def _signed(self, ack: bytes, *, kind: str = "ack", replay: bool = False) -> Answer:
        key_id, private = self.signing.current()
        headers = {wire.KEY_ID_HEADER: key_id, wire.SIGNATURE_HEADER: wire.sign(kind, ack, private)}
        if replay:
            headers[REPLAY_HEADER] = "original"
        return Answer(200, ack, headers)

    def _refused(self, exc: InteropError, body: bytes, now: dt.datetime, claimed: Mapping[str, Any]) -> None:
        """Log a refused delivery and keep its trace (the body itself is never kept)."""
        log.warning(
            "interop: delivery refused: %s (key %s, city %s, sequence %s, %d bytes)",
            exc, claimed.get("key_id"), claimed.get("peer_city"), claimed.get("sequence"), len(body),
        )  # fmt: skip
        try:
            with self.sessions() as session, session.begin():
                session.add(
                    Refusal(received_at=now, code=exc.code.value, message=exc.message[:2000],
                            key_id=claimed.get("key_id"), peer_city=claimed.get("peer_city"),
                            sequence=claimed.get("sequence"), digest=wire.digest(body), body_bytes=len(body))
                )  # fmt: skip
        except Exception:  # the answer must still go out
            log.exception("interop: could not store the refusal")


__all__ = ["REPLAY_HEADER", "STORED_KINDS", "Answer", "MessageHandler", "Receiver", "error_body"]
