"""The composition root of the HTTP server: one FastAPI app, each package's routers mounted on it.

This is the one place that decides what the server carries and builds what the routers need
from the settings (ARCHITECTURE.md, "Interfaces"): today the terminal and online-load API of
``clearing`` (``/v1``), the portal's payment webhooks (``/webhooks/payments``) and, when
``portal_enabled`` is set, its JSON API (``/api``: citizen accounts and sessions, top-ups for
cards bound to the logged-in citizen; off by default); the portal pages (``/``) and interop
(``/interop/v1``) join here as their issues land. Each API answers errors in its own shape:
the clearing routes carry their handler on the route class (``clearing.api.ContractRoute``),
the portal's on ``portal.api.PortalRoute``, so nothing mounted beside them inherits the
terminal contract's error body. What no API owns
(an unknown path outside every prefix, a fault in the server itself) gets the plain
``{code, message}`` shape below, never an HTML or text 500.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy import Engine
from starlette.exceptions import HTTPException as StarletteHTTPException

from clearing import api as clearing_api
from clearing.contract.codes import Code
from clearing.db import session_factory
from clearing.keystore import kek_from_settings
from portal import api as portal_api
from portal.accounts import AccountLimits, AccountService
from portal.api_card_login import mount_card_login
from portal.api_loads import mount_online_load
from portal.card_login import CardLoginService, MemoryNonceStore, NonceStore, RedisNonceStore, keystore_anchors
from portal.limits import TopupLimits
from portal.online_load import OnlineLoadService
from portal.payments import PaymentsClient, PaymentsConfig
from portal.ratelimit import MemoryLimiter, RateLimiter, RedisLimiter, Rule
from portal.sweep import SweepConfig, Sweeper
from portal.topup_service import TopupRateLimits, TopupService
from yikatong.jobs import Job, jobs_lifespan
from yikatong.settings import Settings

if TYPE_CHECKING:
    from portal.api_staff import StaffConsole
    from portal.lost_cards import LostCardService
    from portal.web import PageConfig

log = logging.getLogger(__name__)


def _install_fallback_errors(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: Code.E_NOT_FOUND, 405: Code.E_METHOD_NOT_ALLOWED}.get(exc.status_code, Code.E_MALFORMED)
        return JSONResponse({"code": code.value, "message": str(exc.detail)}, status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _internal(_: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected fault outside every API", exc_info=exc)
        return JSONResponse({"code": Code.E_INTERNAL.value, "message": "unexpected fault"}, status_code=500)


def assemble(
    clearing: clearing_api.ApiDeps,
    portal: TopupService | None = None,
    *,
    portal_enabled: bool = False,
    accounts: AccountService | None = None,
    portal_dev: bool = False,
    card_login: CardLoginService | None = None,
    online_load: OnlineLoadService | None = None,
    reader_page: PageConfig | None = None,
    pages: PageConfig | None = None,
    sweeper: Sweeper | None = None,
    sweep_interval_s: float = 60.0,
    lost_cards: LostCardService | None = None,
    staff_console: StaffConsole | None = None,
    jobs: Sequence[Job] = (),
) -> FastAPI:
    """The application from ready-made parts (tests pass their own); no portal routes without a ``portal``.

    ``portal_enabled`` needs ``accounts``: the top-up routes are for logged-in citizens.
    ``portal_dev`` drops the cookie's Secure flag (plain http on a developer's machine).
    ``card_login`` adds ``/api/card-login`` (with the portal's ``/api`` only); ``online_load`` adds
    ``/api/loads`` and, given ``reader_page`` (the pages' config), the reader page ``GET /reader``.
    ``pages`` (with ``portal_enabled``) adds the citizen pages under ``/``, ``/api/cards``, ``/static``
    and the pages' security headers (``portal.pages.mount_pages``).
    ``sweeper`` (with a ``portal``) runs the top-up sweep every ``sweep_interval_s`` while the app is up.
    ``lost_cards`` (with ``portal_enabled``) adds ``/api/lost-cards``; ``staff_console`` adds ``/staff/api``;
    with ``pages`` too, their pages (``/cards/…/lost``, ``/lost-cards``, ``/staff``).
    ``jobs`` run in the background while the app is up (``yikatong.jobs``), with the sweep.
    """
    background = list(jobs)
    if portal is not None and sweeper is not None and sweep_interval_s > 0:
        background.append(Job("top-up sweep", sweep_interval_s, _sweep_run(sweeper)))
    app = FastAPI(
        title="Yikatong",
        version="1",
        description="Xianyang city card system: terminal contract (spec/terminal-api.md) and online loads.",
        lifespan=jobs_lifespan(background) if background else None,
    )
    _install_fallback_errors(app)
    clearing_api.mount(app, clearing)
    from portal.modules import medical  # issue 13: 新农合 clinic terminals (/medical/v1/clinics)

    medical_visits = medical.clinic_service(clearing.engine, clearing.keystore)
    medical.mount_clinic_api(app, medical_visits)
    if portal is not None:
        portal_api.mount(app, portal, topups_enabled=portal_enabled, accounts=accounts, secure_cookies=not portal_dev)
        if portal_enabled and card_login is not None:
            mount_card_login(app, card_login, secure_cookies=not portal_dev)
        if portal_enabled and online_load is not None:
            mount_online_load(
                app, online_load, accounts=accounts, page_config=reader_page, card_login=card_login is not None
            )
        if portal_enabled and pages is not None and accounts is not None:
            from portal.modules import permits
            from portal.pages import mount_pages  # templates and catalogs load with the pages only

            mount_pages(app, accounts=accounts, topups_service=portal, config=pages)
            permits.mount(app, clearing.engine, staff_console)  # issue 13: 政务服务
            from portal.modules.social_security.pages import mount_social_security  # issue 13: 社会保障

            mount_social_security(app, accounts, pages, staff=staff_console)
            medical.mount_medical(app, accounts, visits=medical_visits, staff=staff_console)  # issue 13: 新农合
            from portal.modules import utility_bills  # issue 13: 公用事业缴费

            utility_bills.mount(app, clearing, portal, pages, staff_console)
            if lost_cards is not None:
                from portal.pages_lost import mount_lost_pages

                mount_lost_pages(app, lost_cards)
            if staff_console is not None:
                from portal.pages_staff import mount_staff_pages

                mount_staff_pages(app, staff_console, pages)
                from portal.pages_parties import mount_party_pages  # finance: merchants, operators, statements

                mount_party_pages(app, days=clearing.days, clock=clearing.clock)
                from portal.pages_finance import mount_finance_pages  # finance: the day's figures and charts

                mount_finance_pages(app, session_factory(clearing.engine), clearing.days)
                from portal.pages_disputes import mount_dispute_pages  # finance: interop disputes (issue 12)

                mount_dispute_pages(app, days=clearing.days, clock=clearing.clock)
        if portal_enabled and lost_cards is not None:
            from portal.api_lost import mount_lost_cards

            mount_lost_cards(app, lost_cards)
    if staff_console is not None:
        from portal.api_staff import mount_staff

        mount_staff(app, staff_console)
    clearing_api.install_openapi(app)
    return app


def _sweep_run(sweeper: Sweeper) -> Callable[[], None]:
    """The top-up sweep as a background job: its per-top-up errors are logged, not raised."""

    def run() -> None:
        report = sweeper.run()
        if report.errors:
            log.warning("sweep: %d top-up(s) could not be swept this run", len(report.errors))

    return run


def sweeper_of(settings: Settings, service: TopupService) -> Sweeper:
    """The top-up sweep with the windows and bounds the settings name."""
    config = SweepConfig(
        payment_window_s=settings.portal_payment_window_s,
        load_window_s=settings.portal_load_window_s,
        stale_after_s=settings.portal_sweep_stale_after_s,
        batch_max=settings.portal_sweep_batch_max,
    )
    return Sweeper(service, config)


def portal_service(settings: Settings, clearing: clearing_api.ApiDeps) -> TopupService:
    """The top-up service on clearing's database (``topup_service``)."""
    return topup_service(settings, clearing.engine)


def topup_service(settings: Settings, engine: Engine) -> TopupService:
    """The top-up service on this database, with the payment API, limits and windows the settings name."""
    payments = PaymentsClient.connect(PaymentsConfig(settings.payments_url, settings.payments_key.get_secret_value()))
    limits = TopupLimits(
        registered_card_balance_fen_max=settings.registered_card_balance_fen_max,
        anonymous_card_balance_fen_max=settings.anonymous_card_balance_fen_max,
        topup_fen_min=settings.topup_fen_min,
        topup_fen_max=settings.topup_fen_max,
    )
    return TopupService(
        sessions=session_factory(engine),
        payments=payments,
        webhook_secrets=[s.get_secret_value() for s in settings.payments_webhook_secrets],
        limits=limits,
        webhook_tolerance_s=settings.payments_webhook_tolerance_s,
        load_window_s=settings.portal_load_window_s,
        limiter=_limiter(settings),
        rate_limits=TopupRateLimits(
            per_citizen=Rule(settings.portal_topup_per_citizen_max, settings.portal_topup_window_s),
            per_ip=Rule(settings.portal_topup_per_ip_max, settings.portal_topup_window_s),
        ),
    )


def _limiter(settings: Settings) -> RateLimiter:
    if settings.redis_url:
        return RedisLimiter.from_url(settings.redis_url, prefix=settings.redis_prefix)
    return MemoryLimiter()


def portal_lookup_key(settings: Settings) -> bytes:
    """``YIKATONG_PORTAL_LOOKUP_KEY`` (hex), else a key derived from the KEK for this one use."""
    if settings.portal_lookup_key is not None:
        return bytes.fromhex(settings.portal_lookup_key.get_secret_value())
    return hmac.new(kek_from_settings(settings), b"yikatong/portal/lookup-key/v1", hashlib.sha256).digest()


def account_service(settings: Settings, clearing: clearing_api.ApiDeps) -> AccountService:
    """Citizen accounts on clearing's database; rate limits in Redis when configured."""
    limiter: RateLimiter = (
        RedisLimiter.from_url(settings.redis_url, prefix=settings.redis_prefix)
        if settings.redis_url
        else MemoryLimiter()
    )
    s = settings
    limits = AccountLimits(
        login_per_mobile=Rule(s.portal_login_per_mobile_max, s.portal_login_window_s),
        login_per_ip=Rule(s.portal_login_per_ip_max, s.portal_login_window_s),
        register_per_ip=Rule(s.portal_register_per_ip_max, s.portal_register_window_s),
        bind_per_citizen=Rule(s.portal_bind_per_citizen_max, s.portal_bind_window_s),
        bind_per_ip=Rule(s.portal_bind_per_ip_max, s.portal_bind_window_s),
        bind_per_card=Rule(s.portal_bind_per_card_max, s.portal_bind_card_window_s),
    )
    return AccountService(
        sessions=session_factory(clearing.engine),
        lookup_key=portal_lookup_key(settings),
        limiter=limiter,
        limits=limits,
        session_ttl_s=settings.portal_session_ttl_s,
    )


def card_login_service(
    settings: Settings, clearing: clearing_api.ApiDeps, accounts: AccountService
) -> CardLoginService | None:
    """Card login when ``YIKATONG_PORTAL_ORIGIN`` is set; nonces in Redis when configured."""
    if settings.portal_origin is None:
        return None
    store: NonceStore = (
        RedisNonceStore.from_url(settings.redis_url, prefix=settings.redis_prefix)
        if settings.redis_url
        else MemoryNonceStore()
    )
    return CardLoginService(
        accounts=accounts,
        origin=settings.portal_origin,
        anchors=keystore_anchors(clearing.keystore),
        store=store,
        challenge_ttl_s=settings.portal_card_challenge_ttl_s,
    )


def online_load_service(settings: Settings, clearing: clearing_api.ApiDeps) -> OnlineLoadService:
    """The reader page's load host: clearing's loads as the portal's virtual load terminal."""
    return OnlineLoadService(
        sessions=session_factory(clearing.engine),
        keystore=clearing.keystore,
        terminal_id=settings.portal_load_terminal_id,
        clock=clearing.clock,
    )


def create_app(settings: Settings) -> FastAPI:
    """The server's application for these settings (``yikatong serve``, ``yikatong demo --serve``)."""
    clearing = clearing_api.ApiDeps.from_settings(settings)
    accounts = account_service(settings, clearing) if settings.portal_enabled else None
    from portal.web import PageConfig, form_key_of  # the pages' machinery (templates, catalogs) loads here

    page_config = PageConfig(
        form_key=form_key_of(portal_lookup_key(settings)),
        secure_cookies=not settings.portal_dev,
        reader_agent_url=settings.portal_reader_agent_url,
        payments_test_mode=settings.portal_payments_test_mode,
    )

    topups = portal_service(settings, clearing)
    lost_cards, console = None, None
    if accounts is not None:
        from yikatong.staff_setup import staff_console  # the lost-card service and the staff console

        lost_cards, console = staff_console(settings, clearing, accounts, topups)
    from interop_xian import api as interop_api
    from interop_xian.exchange import node_from_settings

    interop = node_from_settings(settings, clearing.engine, clearing.keystore, days=clearing.days)
    every = interop.schedule_interval_s  # None: no peer URL, or no schedule
    app = assemble(
        clearing,
        topups,
        portal_enabled=settings.portal_enabled,
        accounts=accounts,
        portal_dev=settings.portal_dev,
        card_login=card_login_service(settings, clearing, accounts) if accounts is not None else None,
        online_load=online_load_service(settings, clearing),
        reader_page=page_config,
        pages=page_config,
        sweeper=sweeper_of(settings, topups) if settings.portal_enabled else None,
        sweep_interval_s=settings.portal_sweep_interval_s,
        lost_cards=lost_cards,
        staff_console=console,
        jobs=[
            *background_jobs(settings, clearing),
            *([Job("interop exchange", every, interop.run_scheduled)] if every else []),
        ],
    )
    interop_api.mount(app, interop)  # /interop/v1: the peer's batches
    return app


def background_jobs(settings: Settings, clearing: clearing_api.ApiDeps) -> list[Job]:
    """The server's schedules from the settings: the nightly close (``settlement.schedule``)."""
    jobs: list[Job] = []
    if settings.settlement_close_interval_s > 0:
        import datetime as dt

        from settlement.schedule import ScheduledClose
        from yikatong.commands.settle import payer_of
        from yikatong.fare_lookup import fare_lookup_of

        closes = ScheduledClose(
            engine=clearing.engine,
            payer=payer_of(settings),
            out_dir=settings.settlement_dir,
            clock=clearing.days,
            grace=dt.timedelta(seconds=settings.settlement_close_grace_s),
            fares=fare_lookup_of(settings),
        )
        # the first look one interval after start: a server started to inspect a day is not closing it
        jobs.append(Job("nightly close", settings.settlement_close_interval_s, closes.run, wait_first=True))
    return jobs


def app_from_environment() -> FastAPI:
    """``uvicorn --factory yikatong.app:app_from_environment``: the app for ``YIKATONG_*`` (benchmarks, workers)."""
    from yikatong.settings import get_settings

    return create_app(get_settings())


__all__ = [
    "account_service",
    "app_from_environment",
    "assemble",
    "background_jobs",
    "card_login_service",
    "create_app",
    "online_load_service",
    "portal_lookup_key",
    "portal_service",
    "sweeper_of",
    "topup_service",
]
