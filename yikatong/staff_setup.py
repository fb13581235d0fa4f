"""Building the lost-card service and the staff console from the settings (used by ``yikatong.app``, the CLI).

Kept apart from ``yikatong.app`` so the composition root only mounts what these build.
Rate limits are in Redis when ``YIKATONG_REDIS_URL`` is set (shared by all workers), the
denylist mirror is clearing's ``RedisBus``, and replacement card images go to
``YIKATONG_PORTAL_CARD_IMAGES`` (the counter's card writer).
"""

from __future__ import annotations

from clearing import api as clearing_api
from clearing.db import session_factory
from portal.accounts import AccountService
from portal.api_staff import StaffConsole
from portal.audit import AuditLog
from portal.lost_cards import DirectoryCardWriter, LostCardService, LostLimits
from portal.ratelimit import MemoryLimiter, RateLimiter, RedisLimiter, Rule
from portal.staff import StaffLimits, StaffService
from portal.topup_service import TopupService
from yikatong.settings import Settings


def _limiter(settings: Settings) -> RateLimiter:
    if settings.redis_url:
        return RedisLimiter.from_url(settings.redis_url, prefix=settings.redis_prefix)
    return MemoryLimiter()


def audit_log(clearing: clearing_api.ApiDeps) -> AuditLog:
    return AuditLog(session_factory(clearing.engine))


def staff_service(
    settings: Settings, clearing: clearing_api.ApiDeps, lookup_key: bytes, audit: AuditLog
) -> StaffService:
    s = settings
    return StaffService(
        sessions=session_factory(clearing.engine),
        lookup_key=lookup_key,
        audit=audit,
        limiter=_limiter(settings),
        limits=StaffLimits(
            login_per_username=Rule(s.portal_staff_login_per_user_max, s.portal_staff_login_window_s),
            login_per_ip=Rule(s.portal_staff_login_per_ip_max, s.portal_staff_login_window_s),
        ),
        session_ttl_s=s.portal_staff_session_ttl_s,
    )


def lost_card_service(
    settings: Settings, clearing: clearing_api.ApiDeps, accounts: AccountService, audit: AuditLog
) -> LostCardService:
    s = settings
    return LostCardService(
        sessions=session_factory(clearing.engine),
        accounts=accounts,
        audit=audit,
        keystore=clearing.keystore,
        writer=DirectoryCardWriter(s.portal_card_images),
        bus=clearing.bus,
        limiter=_limiter(settings),
        limits=LostLimits(
            report_per_citizen=Rule(s.portal_lost_per_citizen_max, s.portal_lost_window_s),
            report_per_ip=Rule(s.portal_lost_per_ip_max, s.portal_lost_window_s),
        ),
        wait_s=s.portal_replacement_wait_s,
    )


def staff_console(
    settings: Settings, clearing: clearing_api.ApiDeps, accounts: AccountService, topups: TopupService | None
) -> tuple[LostCardService, StaffConsole]:
    """The citizens' lost-card service and the staff console on the same audit log."""
    audit = audit_log(clearing)
    lost = lost_card_service(settings, clearing, accounts, audit)
    staff = staff_service(settings, clearing, accounts.lookup_key, audit)
    return lost, StaffConsole(
        staff=staff, lost=lost, audit=audit, topups=topups, secure_cookies=not settings.portal_dev
    )


__all__ = ["audit_log", "lost_card_service", "staff_console", "staff_service"]
