"""Interop's settings: the city, the peer, and the channel's bounds, from ``YIKATONG_*``.

The city, ``YIKATONG_PEER_URL`` and ``YIKATONG_PEER_PUBLIC_KEY`` are ``yikatong.settings.Settings``'
(ARCHITECTURE.md, "Interfaces"); the channel's own knobs are read here under the prefix
``YIKATONG_INTEROP_`` so the composition root's settings stay as they are. ``InteropConfig`` is
the plain value the rest of interop is given (tests build one directly).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from pydantic_settings import BaseSettings, SettingsConfigDict

CITIES: Final = ("xianyang", "xian")


def peer_of(city: str) -> str:
    """The other city of the pair (Xianyang ↔ Xi'an)."""
    assert city in CITIES, city
    return "xian" if city == "xianyang" else "xianyang"


class InteropSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="YIKATONG_INTEROP_", env_file=".env", extra="ignore")

    # How often `serve` runs an exchange round (0: never; run `yikatong interop exchange` from cron).
    exchange_interval_s: float = 60.0
    # Items per batch, and the largest body the receiving endpoint reads.
    batch_items_max: int = 1000
    body_bytes_max: int = 16 * 1024 * 1024
    # After a peer's (or our own) key is replaced, the old one is still accepted this long.
    key_overlap_s: int = 7 * 24 * 3600
    # Retries: the delay after the n-th failed attempt is min(base * 2**(n-1), max).
    retry_base_s: float = 5.0
    retry_max_s: float = 600.0
    timeout_s: float = 10.0
    # An item the issuer could not judge for want of a key (E_KEY_UNAVAILABLE) is sent again after this.
    unavailable_resend_s: float = 3600.0
    # A window is closed with the peer this long after its business day ended (late uploads join it).
    window_close_delay_s: float = 3600.0
    # The CA bundle the peer's HTTPS certificate is checked against (unset: the system's).
    ca_file: Path | None = None


@dataclass(frozen=True, slots=True)
class InteropConfig:
    city: str
    peer_url: str | None = None
    peer_public_key: str | None = None  # hex of a raw Ed25519 public key, accepted as the peer's current key
    exchange_interval_s: float = 60.0
    batch_items_max: int = 1000
    body_bytes_max: int = 16 * 1024 * 1024
    key_overlap_s: int = 7 * 24 * 3600
    retry_base_s: float = 5.0
    retry_max_s: float = 600.0
    timeout_s: float = 10.0
    unavailable_resend_s: float = 3600.0
    window_close_delay_s: float = 3600.0
    ca_file: Path | None = None

    def __post_init__(self) -> None:
        assert self.city in CITIES, self.city
        assert 0 < self.batch_items_max <= 100_000 and self.body_bytes_max > 0
        assert self.retry_base_s > 0 and self.retry_max_s >= self.retry_base_s and self.key_overlap_s >= 0

    @property
    def peer_city(self) -> str:
        return peer_of(self.city)

    @property
    def key_overlap(self) -> dt.timedelta:
        return dt.timedelta(seconds=self.key_overlap_s)

    def retry_delay_s(self, attempts: int) -> float:
        """The wait after ``attempts`` failed attempts (exponential, capped)."""
        assert attempts >= 1
        return float(min(self.retry_base_s * 2 ** min(attempts - 1, 30), self.retry_max_s))

    @classmethod
    def from_settings(cls, settings: Any, interop: InteropSettings | None = None) -> InteropConfig:
        knobs = interop or InteropSettings()
        return cls(
            city=settings.city,
            peer_url=settings.peer_url,
            peer_public_key=settings.peer_public_key,
            exchange_interval_s=knobs.exchange_interval_s,
            batch_items_max=knobs.batch_items_max,
            body_bytes_max=knobs.body_bytes_max,
            key_overlap_s=knobs.key_overlap_s,
            retry_base_s=knobs.retry_base_s,
            retry_max_s=knobs.retry_max_s,
            timeout_s=knobs.timeout_s,
            unavailable_resend_s=knobs.unavailable_resend_s,
            window_close_delay_s=knobs.window_close_delay_s,
            ca_file=knobs.ca_file,
        )


__all__ = ["CITIES", "InteropConfig", "InteropSettings", "peer_of"]
