"""The staff console's pages under ``/staff``: the same services and role checks as ``/staff/api``.

``docs/portal.md``, "Staff console". Built on ``portal.web`` (render, form CSRF, the security
headers), with the staff session (cookie ``yk_staff``, ``Path=/staff``) instead of the citizens'.
Forms carry the staff session's CSRF token (the login form an anonymous one). No JavaScript.
Pages that show a secret once (a replacement card's PIN, a TOTP provisioning URI) are the
answer of their POST, not a redirect: a reload re-posts, and the replay shows no secret.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Annotated, Any, Final

from fastapi import APIRouter, FastAPI, Form, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from clearing.api import AnsweringRoute
from portal.api_auth import client_ip
from portal.api_staff import AUDIT_ID_MAX, STAFF_COOKIE, STAFF_COOKIE_PATH, StaffConsole, mask_topup, staff_notices
from portal.errors import Code, PortalError
from portal.staff import StaffSession
from portal.topups import RefundReason
from portal.web import CsrfRefused, PageConfig, check_csrf, error_text, gettext, locale_of, redirect, render

log = logging.getLogger(__name__)

STATE_KEY: Final = "portal_staff_pages"
FIELD_CHARS_MAX: Final = 256
_CSRF_TEXT: Final = (
    "The form was sent without its security token, or with an old one. Nothing was changed. "
    "Go back, reload the page and send it again."
)


class StaffLoginRequired(Exception):
    """A console page asked for without a staff session: to the staff login page."""


@dataclasses.dataclass(frozen=True)
class StaffPages:
    console: StaffConsole
    config: PageConfig

    def session_of(self, request: Request) -> StaffSession | None:
        try:
            return self.console.staff.current(request.cookies.get(STAFF_COOKIE))
        except PortalError:
            return None

    def require(self, request: Request, action: str | None = None) -> StaffSession:
        current = self.session_of(request)
        if current is None:
            raise StaffLoginRequired
        if action is not None:
            self.console.staff.require(current, action)
        return current

    def csrf(self, request: Request, sent: str | None, current: StaffSession | None) -> None:
        check_csrf(request, sent, session_token=current.csrf_token if current else None, config=self.config)

    def page(
        self, request: Request, name: str, context: dict[str, Any], current: StaffSession | None, status_code: int = 200
    ) -> HTMLResponse:
        return render(
            request, name, {"staff": current, **context}, config=self.config, status_code=status_code,
            session_csrf=current.csrf_token if current else None, signed_in=False,
        )  # fmt: skip


def _pages(request: Request) -> StaffPages:
    pages = getattr(request.app.state, STATE_KEY, None)
    assert isinstance(pages, StaffPages), "mount_staff_pages first"
    return pages


def staff_error_page(request: Request, exc: Exception) -> Response:
    pages = _pages(request)
    locale = locale_of(request)
    if isinstance(exc, StaffLoginRequired):
        return redirect("/staff/login")
    code = None
    if isinstance(exc, CsrfRefused):
        status, text = 403, gettext(locale, _CSRF_TEXT)
    elif isinstance(exc, PortalError):
        status, text, code = exc.status, error_text(locale, exc), exc.code.value
    elif isinstance(exc, RequestValidationError | StarletteHTTPException):
        status = exc.status_code if isinstance(exc, StarletteHTTPException) and exc.status_code < 500 else 422
        text = gettext(locale, "The request could not be read. Go back and check what you entered.")
    else:
        log.error("unexpected fault in a staff page", exc_info=exc)
        status = 503
        text = gettext(locale, "Something went wrong on our side. Nothing was changed. Try again in a moment.")
    return pages.page(request, "staff/error.html", {"text": text, "code": code}, pages.session_of(request), status)


class StaffPageRoute(AnsweringRoute):
    """Every failure of a console page is a console page (never JSON, never a 500)."""

    def answer(self, request: Request, exc: Exception) -> Response:
        return staff_error_page(request, exc)


def _text(value: str | None) -> str:
    return (value or "")[:FIELD_CHARS_MAX].strip()


def staff_pages_router() -> APIRouter:
    router = APIRouter(prefix="/staff", route_class=StaffPageRoute, include_in_schema=False)

    # --- login ------------------------------------------------------------------------------

    @router.get("/login", response_class=HTMLResponse)
    def login_form(request: Request) -> HTMLResponse:
        return _pages(request).page(request, "staff/login.html", {"username": "", "form_error": None}, None)

    @router.post("/login", response_class=HTMLResponse)
    def login(
        request: Request,
        csrf_token: Annotated[str | None, Form()] = None,
        username: Annotated[str | None, Form()] = None,
        password: Annotated[str | None, Form()] = None,
        totp: Annotated[str | None, Form()] = None,
    ) -> Response:
        p = _pages(request)
        p.csrf(request, csrf_token, None)
        try:
            new = p.console.staff.login(
                _text(username), (password or "")[:FIELD_CHARS_MAX], _text(totp), client_ip=client_ip(request),
                previous_token=request.cookies.get(STAFF_COOKIE),
            )  # fmt: skip
        except PortalError as exc:
            context = {"username": _text(username), "form_error": error_text(locale_of(request), exc)}
            return p.page(request, "staff/login.html", context, None, exc.status)
        response = redirect("/staff")
        response.set_cookie(
            STAFF_COOKIE, new.token, max_age=p.console.staff.session_ttl_s, path=STAFF_COOKIE_PATH, httponly=True,
            samesite="strict", secure=p.console.secure_cookies,
        )  # fmt: skip
        return response

    @router.post("/logout")
    def logout(request: Request, csrf_token: Annotated[str | None, Form()] = None) -> Response:
        p = _pages(request)
        current = p.session_of(request)
        if current is not None:
            p.csrf(request, csrf_token, current)
            p.console.staff.logout(current)
        response = redirect("/staff/login")
        response.delete_cookie(
            STAFF_COOKIE, path=STAFF_COOKIE_PATH, httponly=True, samesite="strict", secure=p.console.secure_cookies
        )
        return response

    # --- home and the counter -----------------------------------------------------------------

    @router.get("", response_class=HTMLResponse)
    def home(request: Request) -> HTMLResponse:
        p = _pages(request)
        current = p.require(request)
        return p.page(request, "staff/home.html", {}, current)

    @router.get("/cards", response_class=HTMLResponse)
    def search(request: Request, q: str | None = None) -> HTMLResponse:
        p = _pages(request)
        current = p.require(request, "card_search")
        query = _text(q)
        cards = p.console.lost.search(current, query) if query else []
        return p.page(request, "staff/cards.html", {"q": query, "cards": cards, "searched": bool(query)}, current)

    @router.get("/cards/{issuer_id}/{card_asn}", response_class=HTMLResponse)
    def card(issuer_id: str, card_asn: str, request: Request) -> HTMLResponse:
        p = _pages(request)
        current = p.require(request, "card_view")
        summary = p.console.lost.view(current, issuer_id[:16], card_asn[:20])
        return p.page(request, "staff/card.html", {"card": summary}, current)

    @router.post("/cards/{issuer_id}/{card_asn}/replace", response_class=HTMLResponse)
    def replace(
        issuer_id: str, card_asn: str, request: Request, csrf_token: Annotated[str | None, Form()] = None
    ) -> HTMLResponse:
        p = _pages(request)
        current = p.require(request, "replacement")
        p.csrf(request, csrf_token, current)
        done = p.console.lost.replace(current, issuer_id[:16], card_asn[:20])
        return p.page(request, "staff/replaced.html", {"r": done}, current, 200 if done.replayed else 201)

    @router.post("/cards/{issuer_id}/{card_asn}/unblock")
    def unblock(
        issuer_id: str, card_asn: str, request: Request, csrf_token: Annotated[str | None, Form()] = None
    ) -> Response:
        p = _pages(request)
        current = p.require(request, "unblock")
        p.csrf(request, csrf_token, current)
        summary = p.console.lost.unblock(current, issuer_id[:16], card_asn[:20])
        return redirect(f"/staff/cards/{summary.issuer_id}/{summary.card_asn}")

    # --- finance ------------------------------------------------------------------------------

    @router.get("/notices", response_class=HTMLResponse)
    def notices(request: Request) -> HTMLResponse:
        p = _pages(request)
        current = p.require(request, "notices_view")
        items = staff_notices(p.console)
        p.console.audit.record_now(actor=current.actor, action="notices_view", detail=f"{len(items)} notices")
        return p.page(request, "staff/notices.html", {"notices": items}, current)

    @router.post("/refunds", response_class=HTMLResponse)
    def refund(
        request: Request,
        csrf_token: Annotated[str | None, Form()] = None,
        topup_id: Annotated[str | None, Form()] = None,
    ) -> HTMLResponse:
        p = _pages(request)
        current = p.require(request, "refund")
        p.csrf(request, csrf_token, current)
        tid = _text(topup_id).lower()
        if p.console.topups is None:
            raise PortalError(Code.E_PORTAL_UNAVAILABLE, "this server has no top-up service")
        target = f"topup:{mask_topup(tid)}"
        try:
            view = p.console.topups.request_refund(tid, RefundReason.STAFF)
        except PortalError as exc:
            p.console.audit.record_now(actor=current.actor, action="refund", target=target, outcome=exc.code.value)
            raise
        detail = f"state {view.state}, refunded {view.refunded_fen} fen of {view.paid_fen}"
        p.console.audit.record_now(actor=current.actor, action="refund", target=target, detail=detail)
        return p.page(request, "staff/refunded.html", {"t": view}, current)

    # --- administrator --------------------------------------------------------------------------

    @router.get("/accounts", response_class=HTMLResponse)
    def accounts(request: Request) -> HTMLResponse:
        p = _pages(request)
        current = p.require(request, "staff_list")
        rows = p.console.staff.accounts(actor=current.actor)
        return p.page(request, "staff/accounts.html", {"accounts": rows, "form_error": None}, current)

    @router.post("/accounts", response_class=HTMLResponse)
    def add_account(
        request: Request,
        csrf_token: Annotated[str | None, Form()] = None,
        username: Annotated[str | None, Form()] = None,
        role: Annotated[str | None, Form()] = None,
        password: Annotated[str | None, Form()] = None,
    ) -> HTMLResponse:
        p = _pages(request)
        current = p.require(request, "staff_add")
        p.csrf(request, csrf_token, current)
        try:
            new = p.console.staff.add(_text(username), _text(role), (password or "")[:FIELD_CHARS_MAX],
                                      actor=current.actor)  # fmt: skip
        except PortalError as exc:
            rows = p.console.staff.accounts()
            context = {"accounts": rows, "form_error": error_text(locale_of(request), exc)}
            return p.page(request, "staff/accounts.html", context, current, exc.status)
        return p.page(request, "staff/uri.html", {"new": new}, current, 201)

    @router.post("/accounts/{username}/totp", response_class=HTMLResponse)
    def reset_totp(username: str, request: Request, csrf_token: Annotated[str | None, Form()] = None) -> HTMLResponse:
        p = _pages(request)
        current = p.require(request, "staff_reset_totp")
        p.csrf(request, csrf_token, current)
        new = p.console.staff.reset_totp(username[:64], actor=current.actor)
        return p.page(request, "staff/uri.html", {"new": new}, current)

    @router.get("/audit", response_class=HTMLResponse)
    def audit(request: Request, before_id: int | None = None) -> HTMLResponse:
        p = _pages(request)
        current = p.require(request, "audit_view")
        cursor = before_id if before_id and 0 < before_id <= AUDIT_ID_MAX else None
        lines = p.console.audit.lines(limit=100, before_id=cursor)
        p.console.audit.record_now(actor=current.actor, action="audit_view", detail=f"{len(lines)} lines")
        older = lines[-1].id if len(lines) == 100 else None
        return p.page(request, "staff/audit.html", {"lines": lines, "older": older}, current)

    return router


def mount_staff_pages(app: FastAPI, console: StaffConsole, config: PageConfig) -> None:
    """The console's pages (the page headers come from ``portal.pages.mount_pages``'s middleware)."""
    setattr(app.state, STATE_KEY, StaffPages(console, config))
    app.include_router(staff_pages_router())


__all__ = ["StaffPageRoute", "StaffPages", "mount_staff_pages", "staff_pages_router"]
