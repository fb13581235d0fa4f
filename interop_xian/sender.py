"""Delivery of our batches to the peer over HTTPS (httpx), in sequence, retried with backoff.

Each round (``deliver_due``) walks the batches not yet acknowledged in sequence order and posts
each one's stored bytes (``interop_batches_out.body``, never rebuilt), signed with our current
key. The first one that fails stops the round (the ones after it would only be a gap at the
peer) and waits ``retry_delay_s(attempts)``: exponential from ``retry_base_s``, capped at
``retry_max_s``. What the answers mean:

* **200** — the acknowledgement is checked before anything is believed: signed by an accepted
  key of the peer, for this sequence, for this exact digest, one verdict per item in order;
  then it is stored with the verdicts on the items (state *acknowledged*), in one transaction;
  a check that fails is ``E_INTEROP_BAD_ACK`` and the batch is retried;
* **409 ``E_INTEROP_SEQUENCE_GAP``** with ``expected_sequence`` — the peer lost batches it had
  acknowledged (say, restored from a backup): ours from that sequence are resent, byte for
  byte, and their new answers are checked and ignored (ours are already applied); an
  expected sequence beyond any we built is ``E_INTEROP_PEER_AHEAD`` (our state was lost);
* **any other 4xx** — refused (key not imported yet, conflict): kept, retried with backoff,
  logged as an error: a person has to look;
* **5xx, timeout, connection or TLS failure** — the peer is down: retried with backoff.

A lost acknowledgement is just a failed attempt: the resend is a replay to the peer, which
answers with the original acknowledgement.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final, cast

import httpx
from sqlalchemy import Table, bindparam, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from clearing.db import on_postgres
from clearing.ledger import pg_int_array, pg_text_array
from interop_xian import batch as wire
from interop_xian.config import InteropConfig
from interop_xian.errors import InteropCode, InteropError
from interop_xian.items import ItemVerdict
from interop_xian.keys import PeerKeyRing, SigningKeys
from interop_xian.models import OutBatch, OutboxItem

log = logging.getLogger("interop_xian.sender")
BATCHES_PATH = "/interop/v1/batches"


LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1"})


def check_peer_url(url: str) -> None:
    """The peer is reached over HTTPS; plain ``http://`` only on this machine's loopback address.

    The one exception is for the demo (``make run`` runs Xi'an beside Xianyang on 127.0.0.1) and
    tests on one machine: the bytes never leave the host. Any other ``http://`` peer, or another
    scheme, is ``E_INTEROP_NOT_CONFIGURED``.
    """
    parsed = httpx.URL(url)
    if parsed.scheme == "https" or (parsed.scheme == "http" and parsed.host in LOOPBACK_HOSTS):
        return
    raise InteropError(
        InteropCode.E_INTEROP_NOT_CONFIGURED,
        "YIKATONG_PEER_URL must be https:// (plain http:// only to 127.0.0.1 or ::1, for a demo on one machine)",
    )


def peer_client(config: InteropConfig) -> httpx.Client:
    """An HTTPS client for the peer: its CA bundle when configured, a timeout, connection retries."""
    if not config.peer_url:
        raise InteropError(InteropCode.E_INTEROP_NOT_CONFIGURED, "YIKATONG_PEER_URL is not set: no peer to send to")
    check_peer_url(config.peer_url)
    verify = ssl.create_default_context(cafile=str(config.ca_file) if config.ca_file is not None else None)
    transport = httpx.HTTPTransport(retries=1, verify=verify)
    return httpx.Client(base_url=config.peer_url, transport=transport, timeout=config.timeout_s)


@dataclass(slots=True)
class Delivery:
    acknowledged: list[int] = field(default_factory=list)
    resent: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)


class Sender:
    """Delivers ``config.city``'s batches to the peer through ``client`` (an ``httpx.Client``)."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        config: InteropConfig,
        signing: SigningKeys,
        client: httpx.Client,
    ) -> None:
        self.sessions = sessions
        self.config = config
        self.signing = signing
        self.client = client

    def deliver_due(self, *, now: dt.datetime, batches_max: int = 1000) -> Delivery:
        """One round: post every due unacknowledged batch in order, stop at the first failure."""
        report = Delivery()
        for _ in range(batches_max):
            with self.sessions() as session:
                out = session.scalars(
                    select(OutBatch)
                    .where(OutBatch.peer_city == self.config.peer_city, OutBatch.state == "sent")
                    .order_by(OutBatch.sequence)
                    .limit(1)
                ).one_or_none()
            if out is None or out.next_attempt_at > now:
                break
            try:
                self._deliver(out, now=now, report=report)
            except InteropError as exc:
                self._failed(out, exc, now)
                report.failed[out.sequence] = str(exc)
                break
            report.acknowledged.append(out.sequence)
        return report

    # one batch

    def _post(self, out: OutBatch) -> httpx.Response:
        key_id, private = self.signing.current()
        headers = {
            "Content-Type": "application/json",
            wire.KEY_ID_HEADER: key_id,
            wire.SIGNATURE_HEADER: wire.sign("batch", out.body, private),
        }
        try:
            return self.client.post(BATCHES_PATH, content=out.body, headers=headers)
        except httpx.HTTPError as exc:
            raise InteropError(
                InteropCode.E_INTEROP_PEER_UNREACHABLE, f"batch {out.sequence}: {type(exc).__name__}: {exc}"[:500]
            ) from None

    def _deliver(
        self, out: OutBatch, *, now: dt.datetime, report: Delivery, resending: bool = False, after_gap: bool = False
    ) -> None:
        response = self._post(out)
        if response.status_code == 200:
            ack_key, ack = self._checked_ack(out, response, now)
            if not resending:
                self._store_ack(out, ack_key, response.content, ack, now)
            return
        code, message, expected = _error_of(response)
        gap = response.status_code == 409 and code == InteropCode.E_INTEROP_SEQUENCE_GAP.value
        if gap and not resending and not after_gap:
            self._resend_from(expected, out, now=now, report=report)
            self._deliver(out, now=now, report=report, after_gap=True)
            return
        if response.status_code >= 500:
            raise InteropError(
                InteropCode.E_INTEROP_PEER_UNREACHABLE,
                f"batch {out.sequence}: {response.status_code} {code}: {message}",
            )
        log.error("interop: %s refused batch %s: %s %s", self.config.peer_city, out.sequence, code, message)
        raise InteropError(
            InteropCode.E_INTEROP_PEER_REFUSED, f"batch {out.sequence}: {response.status_code} {code}: {message}"
        )

    def _resend_from(self, expected: int | None, out: OutBatch, *, now: dt.datetime, report: Delivery) -> None:
        """The peer expects ``expected`` < ``out.sequence``: resend ours from there, byte for byte."""
        if expected is None or expected > out.sequence:
            raise InteropError(
                InteropCode.E_INTEROP_PEER_AHEAD,
                f"the peer expects batch {expected} but the next one never acknowledged is {out.sequence}",
            )
        with self.sessions() as session:
            earlier = session.scalars(
                select(OutBatch)
                .where(OutBatch.peer_city == self.config.peer_city, OutBatch.sequence >= expected,
                       OutBatch.sequence < out.sequence)
                .order_by(OutBatch.sequence)
            ).all()  # fmt: skip
        if [b.sequence for b in earlier] != list(range(expected, out.sequence)):
            raise InteropError(
                InteropCode.E_INTEROP_PEER_AHEAD, f"batches {expected}..{out.sequence - 1} are not all kept here"
            )
        log.warning(
            "interop: %s lost batches %d..%d; resending them", self.config.peer_city, expected, out.sequence - 1
        )
        for old in earlier:
            self._deliver(old, now=now, report=report, resending=True)
            report.resent.append(old.sequence)

    def _checked_ack(self, out: OutBatch, response: httpx.Response, now: dt.datetime) -> tuple[str, wire.Ack]:
        def bad(why: str) -> InteropError:
            return InteropError(InteropCode.E_INTEROP_BAD_ACK, f"batch {out.sequence}: {why}")

        key_id = response.headers.get(wire.KEY_ID_HEADER)
        signature = response.headers.get(wire.SIGNATURE_HEADER)
        if not key_id or not signature:
            raise bad("the acknowledgement is not signed")
        try:
            with self.sessions() as session:
                ring = self._ring(session)
            _, public = ring.key(key_id, now=now, city=self.config.peer_city)
            wire.verify("ack", response.content, signature, public)
            ack = wire.decode_ack(response.content)
        except InteropError as exc:
            raise bad(str(exc)) from None
        if (ack.from_city, ack.to_city, ack.sequence) != (self.config.peer_city, self.config.city, out.sequence):
            raise bad(f"the acknowledgement is for {ack.from_city}→{ack.to_city} batch {ack.sequence}")
        if ack.batch_digest != out.digest:
            raise bad("the acknowledgement is for other content (digest differs)")
        items = _sent_item_ids(out.body)  # what was sent, whatever the items became since
        try:
            wire.check_verdicts(items, ack.verdicts)
        except InteropError as exc:
            raise bad(exc.message) from None
        return key_id, ack

    def _ring(self, session: Session) -> PeerKeyRing:
        configured = [(self.config.peer_city, self.config.peer_public_key)] if self.config.peer_public_key else []
        return PeerKeyRing.load(session, configured=configured)

    def _store_ack(self, out: OutBatch, key_id: str, body: bytes, ack: wire.Ack, now: dt.datetime) -> None:
        with self.sessions() as session, session.begin():
            done = session.execute(
                update(OutBatch)
                .where(OutBatch.id == out.id, OutBatch.state == "sent")
                .values(state="acknowledged", ack_body=body, ack_key_id=key_id, acknowledged_at=now, last_error=None,
                        attempts=OutBatch.attempts + 1)
            ).rowcount  # type: ignore[attr-defined]  # fmt: skip
            if not done:
                return  # another sender stored it first
            if on_postgres(session):
                _store_verdicts_pg(session, ack.verdicts, now)
            else:
                _store_verdicts(session, ack.verdicts, now)
        log.info("interop: batch %s acknowledged by %s", out.sequence, self.config.peer_city)

    def _failed(self, out: OutBatch, exc: InteropError, now: dt.datetime) -> None:
        attempts = out.attempts + 1
        wait = dt.timedelta(seconds=self.config.retry_delay_s(attempts))
        with self.sessions() as session, session.begin():
            session.execute(
                update(OutBatch)
                .where(OutBatch.id == out.id, OutBatch.state == "sent")
                .values(attempts=attempts, next_attempt_at=now + wait, last_error=str(exc)[:2000])
            )
        log.warning("interop: batch %s not delivered (attempt %d, next in %s): %s", out.sequence, attempts, wait, exc)


_STORE_VERDICTS_PG: Final = text("""
UPDATE interop_outbox AS o SET state = 'acknowledged', code = v.c, verdict_amount_fen = v.a, window_day = v.w,
       message = v.m, updated_at = :now
FROM unnest(CAST(:i AS text[]), CAST(:c AS text[]), CAST(:a AS bigint[]), CAST(:w AS date[]), CAST(:m AS text[]))
     AS v(i, c, a, w, m)
WHERE o.item_id = v.i AND o.state = 'sent'
""")


def _store_verdicts(session: Session, verdicts: Sequence[ItemVerdict], now: dt.datetime) -> None:
    """The acknowledgement's verdicts on their items, one ``UPDATE`` each (executemany)."""
    items = cast(Table, OutboxItem.__table__)
    session.execute(
        update(items)
        .where(items.c.item_id == bindparam("b_item_id"), items.c.state == "sent")
        .values(state="acknowledged", code=bindparam("b_code"), verdict_amount_fen=bindparam("b_amount"),
                window_day=bindparam("b_window"), message=bindparam("b_message"), updated_at=now),
        [
            {"b_item_id": v.item_id, "b_code": v.code, "b_amount": v.amount_fen, "b_window": v.window_day,
             "b_message": v.message or None}
            for v in verdicts
        ],
    )  # fmt: skip


def _store_verdicts_pg(session: Session, verdicts: Sequence[ItemVerdict], now: dt.datetime) -> None:
    """The acknowledgement's verdicts on their items in one statement over arrays (PostgreSQL)."""
    session.execute(
        _STORE_VERDICTS_PG,
        {"now": now, "i": pg_text_array(v.item_id for v in verdicts), "c": pg_text_array(v.code for v in verdicts),
         "a": pg_int_array(v.amount_fen for v in verdicts),
         "w": pg_text_array(None if v.window_day is None else v.window_day.isoformat() for v in verdicts),
         "m": pg_text_array(v.message or None for v in verdicts)},
    )  # fmt: skip


def _error_of(response: httpx.Response) -> tuple[str, str, int | None]:
    """The code, message and expected sequence of an error answer (whatever shape it has)."""
    try:
        body = json.loads(response.content)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return f"HTTP_{response.status_code}", response.text[:200], None
    if not isinstance(body, dict):
        return f"HTTP_{response.status_code}", response.text[:200], None
    expected = body.get("expected_sequence")
    return (
        str(body.get("code", f"HTTP_{response.status_code}")),
        str(body.get("message", ""))[:500],
        expected if isinstance(expected, int) and not isinstance(expected, bool) else None,
    )


@dataclass(frozen=True, slots=True)
class _SentItem:
    item_id: str


def _sent_item_ids(body: bytes) -> list[_SentItem]:
    """The item ids of a batch we built and stored (checked when built: no need to decode it again)."""
    return [_SentItem(str(item["item_id"])) for item in json.loads(body)["items"]]


ClientFactory = Callable[[InteropConfig], httpx.Client]

__all__ = ["BATCHES_PATH", "ClientFactory", "Delivery", "Sender", "check_peer_url", "peer_client"]
