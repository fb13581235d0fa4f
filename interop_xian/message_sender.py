"""Our messages to the peer (``interop_xian.messages``): posted signed, their replies checked before use.

Two users: the window close posts its proposal and reads the peer's own from the reply
(``interop_xian.window_close.close_due``); dispute moves are put in ``interop_messages_out``
by the transaction that made them (``enqueue``) and delivered here in id order
(``deliver_pending``), so a dispute's moves reach the peer in the order they were made. What
an answer means, as for batches (``interop_xian.sender``): 200 with a reply signed by a key of
the peer, for this message's digest, is believed; a 5xx, timeout or connection failure is
retried with backoff and stops the walk (the later moves must not overtake it); any other 4xx
is a refusal: the message is marked refused, an alarm names it, and the walk goes on.
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
from dataclasses import dataclass, field
from typing import Any, Final

import httpx
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from interop_xian import batch as wire
from interop_xian import messages, netting
from interop_xian.config import InteropConfig
from interop_xian.errors import InteropCode, InteropError
from interop_xian.keys import PeerKeyRing, SigningKeys
from interop_xian.models import OutMessage
from interop_xian.sender import _error_of

log = logging.getLogger("interop_xian.message_sender")
MESSAGES_PATH: Final = "/interop/v1/messages"


@dataclass(frozen=True, slots=True)
class Answered:
    """The peer's answer to one message: its checked reply, or why there is none."""

    status: int
    reply: messages.Reply | None = None
    code: str = ""
    message: str = ""
    body: bytes = b""  # the reply's bytes, kept with the message

    @property
    def transient(self) -> bool:
        """No answer worth keeping (down, 5xx, a reply that does not check): try again later."""
        return self.reply is None and (self.status == 0 or self.status >= 500 or self.code == "E_INTEROP_BAD_ACK")


def post_message(
    client: httpx.Client, config: InteropConfig, signing: SigningKeys, ring: PeerKeyRing, body: bytes, kind: str,
    now: dt.datetime,
) -> Answered:  # fmt: skip
    """Post one message of ``kind`` (as built) and check the reply: signed by the peer, for this digest, that kind."""
    key_id, private = signing.current()
    headers = {"Content-Type": "application/json", wire.KEY_ID_HEADER: key_id,
               wire.SIGNATURE_HEADER: wire.sign("message", body, private)}  # fmt: skip
    try:
        response = client.post(MESSAGES_PATH, content=body, headers=headers)
    except httpx.HTTPError as exc:
        return Answered(0, code=InteropCode.E_INTEROP_PEER_UNREACHABLE.value, message=f"{type(exc).__name__}: {exc}")
    if response.status_code != 200:
        code, text, _ = _error_of(response)
        return Answered(response.status_code, code=code, message=text)
    try:
        reply_key = response.headers.get(wire.KEY_ID_HEADER)
        signature = response.headers.get(wire.SIGNATURE_HEADER)
        if not reply_key or not signature:
            raise InteropError(InteropCode.E_INTEROP_BAD_ACK, "the reply is not signed")
        _, public = ring.key(reply_key, now=now, city=config.peer_city)
        wire.verify("reply", response.content, signature, public)
        reply = messages.decode_reply(response.content)
        if (reply.from_city, reply.to_city, reply.kind) != (config.peer_city, config.city, kind):
            raise InteropError(InteropCode.E_INTEROP_BAD_ACK, "the reply is not the peer's to this message")
        if reply.message_digest != wire.digest(body):
            raise InteropError(InteropCode.E_INTEROP_BAD_ACK, "the reply is for other content (digest differs)")
    except InteropError as exc:
        return Answered(200, code=InteropCode.E_INTEROP_BAD_ACK.value, message=exc.message)
    return Answered(200, reply, body=response.content)


def peer_ring(session: Session, config: InteropConfig) -> PeerKeyRing:
    configured = [(config.peer_city, config.peer_public_key)] if config.peer_public_key else []
    return PeerKeyRing.load(session, configured=configured)


# --- the dispute outbox ----------------------------------------------------------------------


def enqueue(
    session: Session, *, own_city: str, peer_city: str, kind: str, content: dict[str, Any], now: dt.datetime
) -> str:
    """Keep a message for the peer in the caller's transaction (it is sent when that commits); its id."""
    message_id = f"{own_city}:{kind}:{secrets.token_hex(16)}"  # unique without a counter to race for
    body = messages.encode_message(from_city=own_city, to_city=peer_city, message_id=message_id, created_at=now,
                                   kind=kind, content=content)  # fmt: skip
    session.add(
        OutMessage(
            peer_city=peer_city, message_id=message_id, kind=kind, digest=wire.digest(body), body=body,
            state="pending", attempts=0, next_attempt_at=now, created_at=now, updated_at=now,
        )
    )  # fmt: skip
    session.flush()
    return message_id


@dataclass(slots=True)
class Delivered:
    delivered: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)


def deliver_pending(
    sessions: sessionmaker[Session], config: InteropConfig, signing: SigningKeys, client: httpx.Client, *,
    now: dt.datetime, limit: int = 1000,
) -> Delivered:  # fmt: skip
    """Post the pending messages in id order; stop at the first the peer could not take now."""
    report = Delivered()
    with sessions() as session:
        ring = peer_ring(session, config)
        pending = session.execute(
            select(OutMessage.id, OutMessage.message_id, OutMessage.kind, OutMessage.body, OutMessage.attempts,
                   OutMessage.next_attempt_at)
            .where(OutMessage.peer_city == config.peer_city, OutMessage.state == "pending")
            .order_by(OutMessage.id)
            .limit(limit)
        ).all()  # fmt: skip
    for row_id, message_id, kind, body, attempts, next_at in pending:
        if next_at > now:
            break
        answer = post_message(client, config, signing, ring, bytes(body), kind, now)
        with sessions() as session, session.begin():
            if answer.reply is not None:
                done = {"state": "delivered", "reply_body": answer.body, "last_error": None}
                session.execute(
                    update(OutMessage)
                    .where(OutMessage.id == row_id)
                    .values(attempts=attempts + 1, updated_at=now, **done)
                )
                report.delivered.append(message_id)
                continue
            why = f"{answer.status} {answer.code}: {answer.message}"[:2000]
            if answer.transient:
                wait = dt.timedelta(seconds=config.retry_delay_s(attempts + 1))
                session.execute(
                    update(OutMessage)
                    .where(OutMessage.id == row_id)
                    .values(attempts=attempts + 1, next_attempt_at=now + wait, last_error=why, updated_at=now)
                )
                report.failed[message_id] = why
                log.warning("interop: message %s not delivered (attempt %d): %s", message_id, attempts + 1, why)
                break
            session.execute(
                update(OutMessage)
                .where(OutMessage.id == row_id)
                .values(state="refused", attempts=attempts + 1, last_error=why, updated_at=now)
            )
            netting.raise_alarm(
                session, peer_city=config.peer_city, kind="message_refused", now=now,
                message=f"{config.peer_city} refused our message {message_id}: {why}"[:500],
                details={"message_id": message_id, "status": answer.status, "code": answer.code,
                         "message": answer.message[:500]},
            )  # fmt: skip
            report.refused[message_id] = why
    return report


__all__ = ["MESSAGES_PATH", "Answered", "Delivered", "deliver_pending", "enqueue", "peer_ring", "post_message"]
