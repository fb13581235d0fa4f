"""Sliding-window rate limits for login and card binding: in-process, or in Redis when configured.

Issue 10, "Security": rate limits on login and card binding (Redis when configured). A rule
allows at most ``limit`` attempts in any ``window_s`` seconds (a sliding log, not fixed
buckets, so an attacker gets no double burst at a bucket edge). An attempt over the limit
is refused and not counted, so a caller who waits gets in again after the window.

- ``MemoryLimiter``: one process (the default without ``YIKATONG_REDIS_URL``). Bounded:
  ``keys_max`` keys at most; past it, expired keys are pruned, then the oldest dropped.
- ``RedisLimiter``: one sorted set per key (score = time in ms), checked and added in one
  Lua script, so workers behind a load balancer share the count. If Redis cannot be
  reached it falls back to its in-process limiter (logged): logins keep working, limited per
  process, as the architecture's "without Redis everything still works" asks.

Keys are built by the caller and must carry no personal data in clear (``portal.accounts``
hashes the mobile number into them).
"""

from __future__ import annotations

import logging
import math
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

log = logging.getLogger(__name__)

KEYS_MAX_DEFAULT: Final = 100_000


@dataclass(frozen=True, slots=True)
class Rule:
    limit: int
    window_s: float

    def __post_init__(self) -> None:
        assert self.limit > 0 and self.window_s > 0


class RateLimiter(Protocol):
    def hit(self, key: str, rule: Rule) -> bool:
        """Record an attempt under ``key`` and answer True, or answer False (over the limit, not recorded)."""
        ...


@dataclass
class MemoryLimiter:
    clock: Callable[[], float] = time.monotonic
    keys_max: int = KEYS_MAX_DEFAULT
    _log: dict[str, deque[float]] = field(default_factory=dict, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def hit(self, key: str, rule: Rule) -> bool:
        now = self.clock()
        with self._lock:
            times = self._log.get(key)
            if times is None:
                self._make_room(now, rule.window_s)
                times = self._log[key] = deque()
            while times and times[0] <= now - rule.window_s:
                times.popleft()
            if len(times) >= rule.limit:
                return False
            times.append(now)
            return True

    def _make_room(self, now: float, window_s: float) -> None:
        if len(self._log) < self.keys_max:
            return
        for k in [k for k, t in self._log.items() if not t or t[-1] <= now - window_s]:
            del self._log[k]
        while len(self._log) >= self.keys_max:
            del self._log[next(iter(self._log))]


_SCRIPT: Final = """
local key = KEYS[1]
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
if redis.call('ZCARD', key) >= limit then
  return 0
end
redis.call('ZADD', key, now, ARGV[4])
redis.call('PEXPIRE', key, window)
return 1
"""


@dataclass
class RedisLimiter:
    """Shared limits in Redis; keys are ``<prefix>:ratelimit:<key>``."""

    client: Any  # redis.Redis; typed loosely because redis-py's stubs are partial
    prefix: str
    fallback: MemoryLimiter = field(default_factory=MemoryLimiter)
    clock_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000
    _script: Any = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._script = self.client.register_script(_SCRIPT)

    @classmethod
    def from_url(cls, url: str, *, prefix: str) -> RedisLimiter:
        import redis

        return cls(redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1), prefix)

    def hit(self, key: str, rule: Rule) -> bool:
        import redis

        window_ms = math.ceil(rule.window_s * 1000)
        member = f"{self.clock_ms()}:{secrets.token_hex(6)}"
        try:
            allowed = self._script(
                keys=[f"{self.prefix}:ratelimit:{key}"], args=[self.clock_ms(), window_ms, rule.limit, member]
            )
        except redis.RedisError as exc:
            log.warning("rate limit store unreachable, limiting in this process: %s", type(exc).__name__)
            return self.fallback.hit(key, rule)
        return bool(int(allowed))


__all__ = ["MemoryLimiter", "RateLimiter", "RedisLimiter", "Rule"]
