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
    # The pages (docs/portal.md, "Pages"): the reader agent's origin, allowed in the pages'
    # Content-Security-Policy connect-src so the reader page can reach it.
    portal_reader_agent_url: str = "http://127.0.0.1:8465"
    # Online load on the reader page (docs/portal.md, "Online load on the reader page"): the
    # virtual load terminal the portal is to the card (12 hex; in INITIALIZE FOR LOAD, MAC1/2, TAC).
    portal_load_terminal_id: str = "0000fe000001"
    # Development only (make run): /topups/{id}/pay confirms the PaymentIntent server-side with
    # Stripe's test card pm_card_visa, standing in for Stripe.js. Never on in production.
    portal_payments_test_mode: bool = False
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
    # Lost cards (docs/portal.md, "Lost cards and replacement"): reports per citizen and per client IP
    # per window; the waiting period between the report and the replacement (the card's late
    # records arrive meanwhile); where the counter's card writer puts replacement card images.
    portal_lost_per_citizen_max: int = 10
    portal_lost_per_ip_max: int = 30
    portal_lost_window_s: int = 3600
    portal_replacement_wait_s: int = 7 * 24 * 3600
    portal_card_images: Path = Path("./var/cards")
    # The staff console (docs/portal.md, "Staff console"): session life (absolute), login attempts
    # per username and per client IP in the window.
    portal_staff_session_ttl_s: int = 30 * 60
    portal_staff_login_per_user_max: int = 5
    portal_staff_login_per_ip_max: int = 50
    portal_staff_login_window_s: int = 15 * 60
    # Top-up limits (portal.limits), integer fen: per top-up, and what a card may come to hold.
    topup_fen_min: int = 100
    topup_fen_max: int = 100_000
    registered_card_balance_fen_max: int = 500_000
    anonymous_card_balance_fen_max: int = 100_000
    # Top-up creation attempts per citizen and per client IP (sliding window).
    portal_topup_per_citizen_max: int = 20
    portal_topup_per_ip_max: int = 100
    portal_topup_window_s: int = 3600
    # The top-up sweep (portal.sweep, docs/portal.md "Sweep"): a top-up not paid this long after it
    # was made is canceled; a paid one not loaded within the load window (clearing's expires_at of
    # its load) is refunded through the payment API. The server sweeps every interval (0: never;
    # then run `yikatong portal sweep` from cron), at most batch_max top-ups per step.
    portal_payment_window_s: int = 3600
    portal_load_window_s: int = 30 * 24 * 3600
    portal_sweep_interval_s: int = 60
    portal_sweep_stale_after_s: int = 300
    portal_sweep_batch_max: int = 100
    # Tariffs clearing prices tap-off refunds with: a tariff directory, or a directory with one
    # tariff version per subdirectory. Unset: the example Xianyang tariff (the demo city's).
    tariffs: Path | None = None
    # Settlement (docs/settlement.md): where the closes write their files, and the account the
    # payouts are paid from (named in every pain.001). The defaults are a development payer only.
    settlement_dir: Path = Path("./var/settlement")
    settlement_payer_name: str = "Xianyang Yikatong Co., Ltd."
    settlement_payer_account_name: str = "Xianyang Yikatong Settlement"
    settlement_payer_account_number: str = "6222020000000000001"
    settlement_payer_cnaps: str = "102791000013"
    # The nightly close inside ``serve`` (settlement/schedule.py): how often it looks for ended
    # days (0: never; close by hand with ``yikatong settle``), and how long after a day's end it
    # waits for the last uploads before closing it.
    settlement_close_interval_s: int = 300
    settlement_close_grace_s: int = 1800
    peer_url: str | None = None
    peer_public_key: str | None = None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
