"""All runtime settings in one class (prefix ``YIKATONG_``), as ARCHITECTURE.md lists them."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="YIKATONG_", env_file=".env", extra="ignore")

    # Only `yikatong init` creates the database, the key store and the dev KEK file (and their
    # directories); every other command refuses a path that does not exist, naming it.
    database_url: str = "sqlite:///./yikatong.db"
    redis_url: str | None = None
    # Every Redis key, stream and consumer group clearing uses is "<redis_prefix>:<name>",
    # so several deployments (or test runs) can share one Redis.
    redis_prefix: str = "yikatong"
    keystore: Path = Path("./var/keystore.json")
    # Key-encryption key (hex, 32 bytes). Unset: a KEK file next to the key store, created
    # with it by `yikatong init` (development only; production injects it from a secret store).
    kek: SecretStr | None = None
    city: Literal["xianyang", "xian"] = "xianyang"
    # The business-day clock (clearing.business_day): days start at this Asia/Shanghai time.
    business_day_cutoff: str = "00:00"
    # A counter gap still open this many business days after its tap is queued (most fill within the day).
    gap_age_days: int = 3
    payments_url: str = "http://127.0.0.1:8420"
    payments_key: SecretStr = SecretStr("sk_test_yikatong")
    # Endpoint secrets the payment webhooks are signed with (a JSON list in the environment);
    # during a rotation hold the old and the new. The default is a development secret only.
    payments_webhook_secrets: list[SecretStr] = [SecretStr("whsec_yikatong_dev")]
    payments_webhook_tolerance_s: int = 300
    # The portal's JSON API (`/api`: accounts, sessions, top-ups for bound cards): off by default
    # until the portal's pages and card login land; the payment webhooks are mounted either way.
    portal_enabled: bool = False
    # Local development: the session cookie is sent over plain http (no Secure flag).
    portal_dev: bool = False
    # The key of the ID-number lookup hash and of the rate-limit keys (hex, >= 32 bytes).
    # Unset: derived from the KEK (HMAC-SHA256, label "yikatong/portal/lookup-key/v1").
    portal_lookup_key: SecretStr | None = None
    portal_session_ttl_s: int = 12 * 3600
    # Card login (docs/portal.md, "Card login"): the portal's origin exactly as the browser shows it
    # (scheme://host[:port]); the card signs it. Unset: the card-login routes are not mounted.
    portal_origin: str | None = None
    portal_card_challenge_ttl_s: int = 300
    # Rate limits (attempts per window, sliding): login per mobile number and per client IP,
    # card binding per citizen and per client IP, registration per client IP.
    portal_login_per_mobile_max: int = 10
    portal_login_per_ip_max: int = 100
    portal_login_window_s: int = 15 * 60
    portal_bind_per_citizen_max: int = 5
    portal_bind_per_ip_max: int = 30
    # Binding guesses against one card, whoever makes them (throwaway accounts are cheap).
    portal_bind_per_card_max: int = 5
    portal_bind_card_window_s: int = 24 * 60 * 60
    portal_bind_window_s: int = 3600
    portal_register_per_ip_max: int = 20
    portal_register_window_s: int = 3600
    # Top-up limits (portal.limits), integer fen: per top-up, and what a card may come to hold.
    topup_fen_min: int = 100
    topup_fen_max: int = 100_000
    registered_card_balance_fen_max: int = 500_000
    anonymous_card_balance_fen_max: int = 100_000
    # Tariffs clearing prices tap-off refunds with: a tariff directory, or a directory with one
    # tariff version per subdirectory. Unset: the example Xianyang tariff (the demo city's).
    tariffs: Path | None = None
    peer_url: str | None = None
    peer_public_key: str | None = None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
