"""Redis, when configured: the ingest stream that spreads batches over clearing workers, and the
denylist version and set that terminals poll (``ARCHITECTURE.md``, "Redis").

The database stays the source of truth. A stream entry is only a *reference*
(``terminal_id``, ``batch_seq``): the body waits in ``batches`` (status ``queued``), so a
lost entry is recovered by the terminal's retry (which enqueues again) and a duplicate
entry finds the batch ``done`` and is acknowledged without work.

Every key is ``<prefix>:<name>``, the prefix being ``Settings.redis_prefix`` (default
``yikatong``), so several deployments or test runs can share one Redis: the stream
``<prefix>:ingest`` and its consumer group ``<prefix>:clearing``, the "done" lists
``<prefix>:done:<terminal_id>:<batch_seq>``, the denylist mirror ``<prefix>:denylist:version``
and ``<prefix>:denylist:cards``.

Stream protocol: ``XADD <prefix>:ingest``; workers of the consumer group ``XREADGROUP``
new entries, process, ``XACK``. An entry whose consumer died stays pending; any live
worker takes it over with ``XAUTOCLAIM`` once it has been idle longer than the claim
timeout, and the batch transaction (which never committed) runs again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import redis

GROUP: Final = "clearing"
STREAM_MAXLEN: Final = 1_000_000  # approximate trim; an entry is tiny, pending entries are never trimmed first
DONE_TTL_S: Final = 120
PREFIX_DEFAULT: Final = "yikatong"


@dataclass(frozen=True, slots=True)
class Entry:
    entry_id: str
    terminal_id: str
    batch_seq: int
    deliveries: int = 1  # how many times the group has handed this entry out, this time included


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisBus:
    """The Redis side of clearing, under one key prefix (tests use a random one per session)."""

    def __init__(self, client: redis.Redis, prefix: str = PREFIX_DEFAULT) -> None:
        prefix = prefix.rstrip(":")
        if not prefix:
            raise ValueError("the Redis key prefix must not be empty")
        self.client = client
        self.prefix = prefix
        self.stream = self.key("ingest")
        self.dead_letters = self.key("ingest", "dead")
        self.group = self.key(GROUP)

    def key(self, *parts: object) -> str:
        """``<prefix>:<part>:<part>…``: every Redis name clearing uses is built here."""
        return ":".join([self.prefix, *(str(p) for p in parts)])

    @classmethod
    def from_url(cls, url: str, prefix: str = PREFIX_DEFAULT) -> RedisBus:
        return cls(redis.Redis.from_url(url, socket_connect_timeout=5, health_check_interval=30), prefix)

    def close(self) -> None:
        self.client.close()

    # --- ingest stream ------------------------------------------------------------------

    def ensure_group(self) -> None:
        try:
            self.client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def enqueue(self, terminal_id: str, batch_seq: int) -> str:
        entry_id = self.client.xadd(
            self.stream, {"terminal_id": terminal_id, "batch_seq": str(batch_seq)}, maxlen=STREAM_MAXLEN
        )
        return _text(entry_id)

    def _entries(self, raw: Any) -> list[Entry]:
        out = []
        for entry_id, fields in raw or []:
            if fields is None:  # deleted while pending
                continue
            data = {_text(k): _text(v) for k, v in fields.items()}
            out.append(Entry(_text(entry_id), data["terminal_id"], int(data["batch_seq"])))
        return out

    def read(self, consumer: str, *, count: int = 4, block_ms: int = 1000) -> list[Entry]:
        """New entries for this consumer (blocks up to ``block_ms``)."""
        reply = self.client.xreadgroup(self.group, consumer, {self.stream: ">"}, count=count, block=block_ms)
        entries: list[Entry] = []
        for item in reply or []:
            entries.extend(self._entries(item[1]))
        return entries

    def claim_stale(self, consumer: str, *, idle_ms: int, count: int = 4) -> list[Entry]:
        """Entries of dead consumers, idle longer than ``idle_ms``, now this consumer's, with
        how often each has been handed out (so a batch that kills every worker that takes it
        can be set aside, ``dead_letter``)."""
        stale = self.client.xpending_range(self.stream, self.group, min="-", max="+", count=count, idle=idle_ms)
        if not stale:
            return []
        deliveries = {_text(p["message_id"]): int(p["times_delivered"]) + 1 for p in stale}
        claimed = self.client.xclaim(self.stream, self.group, consumer, idle_ms, list(deliveries))
        return [
            Entry(e.entry_id, e.terminal_id, e.batch_seq, deliveries.get(e.entry_id, 1)) for e in self._entries(claimed)
        ]

    def dead_letter(self, entry: Entry, reason: str) -> str:
        """Move an entry that keeps failing to the dead-letter stream ``<prefix>:ingest:dead``."""
        fields = {
            "terminal_id": entry.terminal_id, "batch_seq": str(entry.batch_seq), "entry_id": entry.entry_id,
            "deliveries": str(entry.deliveries), "reason": reason[:500],
        }  # fmt: skip
        dead_id = _text(self.client.xadd(self.dead_letters, fields, maxlen=STREAM_MAXLEN))  # type: ignore[arg-type]
        self.ack(entry.entry_id)
        return dead_id

    def ack(self, entry_id: str) -> None:
        self.client.xack(self.stream, self.group, entry_id)

    def pending_count(self) -> int:
        info = self.client.xpending(self.stream, self.group)
        return int(info["pending"])

    # --- "your batch is done" for the API request that waits -------------------------------

    def _done_key(self, terminal_id: str, batch_seq: int) -> str:
        return self.key("done", terminal_id, batch_seq)

    def notify_done(self, terminal_id: str, batch_seq: int) -> None:
        key = self._done_key(terminal_id, batch_seq)
        pipe = self.client.pipeline()
        pipe.lpush(key, "1")
        pipe.expire(key, DONE_TTL_S)
        pipe.execute()

    def wait_done(self, terminal_id: str, batch_seq: int, timeout_s: float) -> bool:
        """Block until a worker says the batch is done (or the timeout passes)."""
        reply = self.client.blpop([self._done_key(terminal_id, batch_seq)], timeout=max(timeout_s, 0.01))
        return reply is not None

    # --- denylist mirror --------------------------------------------------------------------

    @property
    def _denylist_key(self) -> str:
        return self.key("denylist", "cards")

    @property
    def _version_key(self) -> str:
        return self.key("denylist", "version")

    def denylist_version(self) -> int | None:
        value = self.client.get(self._version_key)
        return None if value is None else int(_text(value))

    def publish_denylist(self, version: int, cards: list[tuple[str, str]]) -> None:
        """Replace the mirrored set (``issuer:asn``) and version, atomically for readers."""
        staging = self.key("denylist", "cards", "next")
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(staging)
        if cards:
            pipe.sadd(staging, *[f"{i}:{a}" for i, a in cards])
            pipe.rename(staging, self._denylist_key)
        else:
            pipe.delete(self._denylist_key)
        pipe.set(self._version_key, version)
        pipe.execute()

    def denylisted(self, issuer_id: str, card_asn: str) -> bool:
        return bool(self.client.sismember(self._denylist_key, f"{issuer_id}:{card_asn}"))


__all__ = ["GROUP", "PREFIX_DEFAULT", "Entry", "RedisBus"]
