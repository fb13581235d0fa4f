"""The citizen portal's server-rendered pages under ``/``: account, cards, balance and history, top-up.

``docs/portal.md``, "Pages". Issue 10: "server-rendered pages under ``/`` and the same as JSON
under ``/api``". No page needs JavaScript. The services are the ones the JSON API uses
(``AccountService``, ``TopupService``, ``portal.api_cards.CardViews``), so a page can do
nothing the API cannot, and the two answer the same refusals (a page shows the code's
sentence next to the field it is about).

The flow rules every handler keeps:

- **CSRF**: every POST checks the form's ``csrf_token`` first (``portal.web.check_csrf``); a
  refusal is a 403 page and nothing changes.
- **POST-redirect-GET**: a state change answers 303 to the page that shows its result, so a
  reload re-posts nothing. A failed POST re-renders its form with the error (4xx), never a 500.
- **Replays change nothing**: registration twice is ``E_MOBILE_TAKEN``; binding twice answers
  the same binding; a top-up form carries a nonce and the top-up id is derived from it
  (``topup_id_of``), so the same form posted twice names one top-up, which the second post
  finds and shows (a race loses on the primary key and is shown the winner).
- **Only the citizen a card is bound to** sees the card, its history and its top-ups; anyone
  else gets the same 404 as for a card that does not exist.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import hmac
import logging
import re
import secrets
from typing import Annotated, Any, Final
from urllib.parse import quote

from fastapi import APIRouter, FastAPI, Form, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy.exc import IntegrityError
from starlette.exceptions import HTTPException as StarletteHTTPException

from clearing.api import AnsweringRoute
from portal import history, topups
from portal.accounts import AccountService, CurrentSession
from portal.api_auth import SESSION_COOKIE, client_ip
from portal.api_cards import CardViews, card_ref, mount_cards_api, not_found
from portal.errors import Code, PortalError
from portal.topup_service import TopupService, TopupView
from portal.web import (
    LOCALES,
    STATIC_DIR,
    AmountTextError,
    CsrfRefused,
    PageConfig,
    SecurityHeaders,
    check_csrf,
    error_text,
    gettext,
    locale_of,
    parse_yuan,
    redirect,
    render,
    safe_next,
    set_lang_cookie,
)

log = logging.getLogger(__name__)

STATE_KEY: Final = "portal_pages"
FIELD_CHARS_MAX: Final = 256
_NONCE: Final = re.compile(r"[A-Za-z0-9_-]{16,64}")
_TOPUP_ID_LABEL: Final = b"yikatong/portal/topup-form/v1\x00"

# Which form field a refusal is about (the message is shown next to it, tied by aria-describedby).
REGISTER_FIELD_OF: Final = {
    Code.E_MOBILE_FORMAT: "mobile",
    Code.E_MOBILE_TAKEN: "mobile",
    Code.E_PASSWORD_POLICY: "password",
    Code.E_REAL_NAME_EMPTY: "real_name",
    Code.E_REAL_NAME_TOO_LONG: "real_name",
    Code.E_REAL_NAME_CHARACTERS: "real_name",
    Code.E_ID_NUMBER_LENGTH: "id_number",
    Code.E_ID_NUMBER_FORMAT: "id_number",
    Code.E_ID_NUMBER_REGION: "id_number",
    Code.E_ID_NUMBER_BIRTH_DATE: "id_number",
    Code.E_ID_NUMBER_CHECK_DIGIT: "id_number",
    Code.E_ID_NUMBER_TAKEN: "id_number",
}
TOPUP_FIELD_OF: Final = {
    Code.E_TOPUP_AMOUNT_TYPE: "amount",
    Code.E_TOPUP_BELOW_MIN: "amount",
    Code.E_TOPUP_ABOVE_MAX: "amount",
    Code.E_CARD_BALANCE_LIMIT: "amount",
}

# A top-up's state in words (translated in the catalogs), and whether it still waits for payment.
STATE_WORDS: Final = {
    topups.State.CREATED: "Waiting for the payment to be set up. Reload this page in a moment.",
    topups.State.PAYMENT_PENDING: "Waiting for your payment.",
    topups.State.FAILED: "The payment did not go through. You may try to pay again.",
    topups.State.CANCELED: "Canceled: nothing was paid.",
    topups.State.PAID: "Paid: tap the card on a reader or use the reader page to load it.",
    topups.State.LOAD_PENDING: "Paid: tap the card on a reader or use the reader page to load it.",
    topups.State.LOADED: "Loaded onto the card.",
    topups.State.REFUND_REQUESTED: "Being refunded: the load is being withdrawn, then the payment paid back.",
    topups.State.REFUNDED: "Refunded.",
}


class LoginRequired(Exception):
    """A page that needs a session was asked for without one: redirect to the login page."""


def topup_id_of(form_key: bytes, session_id: str, issuer_id: str, card_asn: str, nonce: str) -> str:
    """The top-up id a top-up form names: ``tu_`` + HMAC(form key, session, card, nonce), 128 bits in hex.

    Deterministic, so a form posted twice names one top-up; keyed, so nobody can make (or
    guess) the id of another session's form.
    """
    text = f"{session_id}:{issuer_id}:{card_asn}:{nonce}".encode()
    topup_id = "tu_" + hmac.new(form_key, _TOPUP_ID_LABEL + text, hashlib.sha256).hexdigest()[:32]
    assert topups.is_topup_id(topup_id)
    return topup_id


def _bounded(value: str | None) -> str:
    return (value or "")[:FIELD_CHARS_MAX]


class PageRoute(AnsweringRoute):
    """Every failure of a page is a page (never the JSON shape, never a 500)."""

    def answer(self, request: Request, exc: Exception) -> Response:
        return error_page(request, exc)


def _pages_of(request: Request) -> Pages:
    pages = getattr(request.app.state, STATE_KEY, None)
    assert isinstance(pages, Pages), "mount_pages first"
    return pages


def error_page(request: Request, exc: Exception) -> Response:
    pages = _pages_of(request)
    locale = locale_of(request)
    if isinstance(exc, LoginRequired):
        return redirect("/login?next=" + _quote(safe_next(request.url.path)))
    if isinstance(exc, CsrfRefused):
        status, title = 403, "This form could not be accepted"
        text = gettext(
            locale,
            "The form was sent without its security token, or with an old one. Nothing was changed. "
            "Go back, reload the page and send it again.",
        )
    elif isinstance(exc, PortalError):
        status, title, text = exc.status, "That did not work", error_text(locale, exc)
    elif isinstance(exc, RequestValidationError):
        status, title = 422, "That did not work"
        text = gettext(locale, "The request could not be read. Go back and check what you entered.")
    elif isinstance(exc, StarletteHTTPException) and 400 <= exc.status_code < 500:
        status, title = exc.status_code, "That did not work"
        text = gettext(locale, "The request could not be read. Go back and check what you entered.")
    else:
        log.error("unexpected fault in a portal page", exc_info=exc)
        status, title = 503, "The portal could not finish"
        text = gettext(locale, "Something went wrong on our side. Nothing was changed. Try again in a moment.")
    current = pages.session_of(request)
    code = exc.code.value if isinstance(exc, PortalError) else None
    return pages.page(request, "error.html", {"title": title, "text": text, "code": code}, current, status)


def _quote(path: str) -> str:
    return quote(path, safe="/")


@dataclasses.dataclass
class Pages:
    """The page handlers' shared parts (built by ``mount_pages``)."""

    accounts: AccountService
    topups: TopupService
    views: CardViews
    config: PageConfig

    def session_of(self, request: Request) -> CurrentSession | None:
        try:
            return self.accounts.current(request.cookies.get(SESSION_COOKIE))
        except PortalError:
            return None

    def require(self, request: Request) -> CurrentSession:
        current = self.session_of(request)
        if current is None:
            raise LoginRequired
        return current

    def csrf(self, request: Request, sent: str | None, current: CurrentSession | None) -> None:
        check_csrf(request, sent, session_token=current.csrf_token if current else None, config=self.config)

    def page(
        self,
        request: Request,
        name: str,
        context: dict[str, Any],
        current: CurrentSession | None,
        status_code: int = 200,
    ) -> HTMLResponse:
        return render(
            request,
            name,
            {"test_mode": self.config.payments_test_mode, **context},
            config=self.config,
            status_code=status_code,
            session_csrf=current.csrf_token if current else None,
            signed_in=current is not None,
        )

    def topup_of(self, current: CurrentSession, topup_id: str) -> TopupView:
        """The top-up if its card is bound to this citizen; else ``E_TOPUP_NOT_FOUND`` (as if none)."""
        view = self.topups.view(topup_id)
        try:
            self.accounts.require_bound(current, view.issuer_id, view.card_asn)
        except PortalError:
            raise PortalError(Code.E_TOPUP_NOT_FOUND, "no top-up with this id") from None
        return view


def _form_error(locale: str, exc: PortalError, field_of: dict[Code, str]) -> tuple[dict[str, str], str | None]:
    """(errors by field, the form's own error) of a refusal."""
    text = error_text(locale, exc)
    field = field_of.get(exc.code)
    return ({field: text}, None) if field else ({}, text)


def pages_router(pages: Pages) -> APIRouter:
    router = APIRouter(route_class=PageRoute, include_in_schema=False)
    p = pages

    # --- home, language --------------------------------------------------------------------

    @router.get("/", response_class=HTMLResponse)
    def home(request: Request) -> HTMLResponse:
        current = p.session_of(request)
        cards = p.views.cards(current) if current else []
        return p.page(request, "home.html", {"cards": cards}, current)

    @router.get("/lang/{code}")
    def switch_language(code: str, request: Request, next: str | None = None) -> Response:
        response = redirect(safe_next(next))
        if code in LOCALES:
            set_lang_cookie(response, code, secure=p.config.secure_cookies)
        return response

    # --- register, login, logout -------------------------------------------------------------

    @router.get("/register", response_class=HTMLResponse)
    def register_form(request: Request) -> HTMLResponse:
        return p.page(request, "register.html", {"values": {}, "errors": {}, "form_error": None},
                      p.session_of(request))  # fmt: skip

    @router.post("/register", response_class=HTMLResponse)
    def register(
        request: Request,
        csrf_token: Annotated[str | None, Form()] = None,
        mobile: Annotated[str | None, Form()] = None,
        password: Annotated[str | None, Form()] = None,
        real_name: Annotated[str | None, Form()] = None,
        id_number: Annotated[str | None, Form()] = None,
    ) -> Response:
        current = p.session_of(request)
        p.csrf(request, csrf_token, current)
        values = {"mobile": _bounded(mobile), "real_name": _bounded(real_name)}
        try:
            p.accounts.register(
                values["mobile"],
                _bounded(password),
                values["real_name"],
                _bounded(id_number),
                client_ip=client_ip(request),
            )
        except PortalError as exc:
            errors, form_error = _form_error(locale_of(request), exc, REGISTER_FIELD_OF)
            context = {"values": values, "errors": errors, "form_error": form_error}
            return p.page(request, "register.html", context, current, exc.status)
        return redirect("/login?registered=1")

    @router.get("/login", response_class=HTMLResponse)
    def login_form(request: Request, next: str | None = None, registered: str | None = None) -> HTMLResponse:
        context: dict[str, Any] = {"values": {}, "next": safe_next(next, "/cards"), "form_error": None}
        context["registered"] = bool(registered)
        return p.page(request, "login.html", context, p.session_of(request))

    @router.post("/login", response_class=HTMLResponse)
    def login(
        request: Request,
        csrf_token: Annotated[str | None, Form()] = None,
        mobile: Annotated[str | None, Form()] = None,
        password: Annotated[str | None, Form()] = None,
        next: Annotated[str | None, Form()] = None,
    ) -> Response:
        current = p.session_of(request)
        p.csrf(request, csrf_token, current)
        target = safe_next(next, "/cards")
        try:
            new = p.accounts.login(
                _bounded(mobile),
                _bounded(password),
                client_ip=client_ip(request),
                previous_token=request.cookies.get(SESSION_COOKIE),
            )
        except PortalError as exc:
            context = {"values": {"mobile": _bounded(mobile)}, "next": target,
                       "form_error": error_text(locale_of(request), exc), "registered": False}  # fmt: skip
            return p.page(request, "login.html", context, current, exc.status)
        response = redirect(target)
        response.set_cookie(
            SESSION_COOKIE,
            new.token,
            max_age=p.accounts.session_ttl_s,
            path="/",
            httponly=True,
            samesite="lax",
            secure=p.config.secure_cookies,
        )
        return response

    @router.post("/logout")
    def logout(request: Request, csrf_token: Annotated[str | None, Form()] = None) -> Response:
        current = p.session_of(request)
        if current is None:
            return redirect("/")  # nothing to end; a replayed logout lands here
        p.csrf(request, csrf_token, current)
        p.accounts.logout(current)
        response = redirect("/")
        response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="lax", secure=p.config.secure_cookies)
        return response

    # --- cards ---------------------------------------------------------------------------------

    def cards_page(
        request: Request, current: CurrentSession, values: dict[str, str], errors: dict[str, str],
        form_error: str | None, status_code: int = 200,
    ) -> HTMLResponse:  # fmt: skip
        context = {"cards": p.views.cards(current), "values": values, "errors": errors, "form_error": form_error}
        return p.page(request, "cards.html", context, current, status_code)

    @router.get("/cards", response_class=HTMLResponse)
    def cards(request: Request) -> HTMLResponse:
        return cards_page(request, p.require(request), {}, {}, None)

    @router.post("/cards/bind", response_class=HTMLResponse)
    def bind(
        request: Request,
        csrf_token: Annotated[str | None, Form()] = None,
        card_asn: Annotated[str | None, Form()] = None,
        issuer_id: Annotated[str | None, Form()] = None,
        amount: Annotated[str | None, Form()] = None,
        date: Annotated[str | None, Form()] = None,
    ) -> Response:
        current = p.require(request)
        p.csrf(request, csrf_token, current)
        locale = locale_of(request)
        values = {"card_asn": _bounded(card_asn).strip(), "issuer_id": _bounded(issuer_id).strip(),
                  "amount": _bounded(amount).strip(), "date": _bounded(date).strip()}  # fmt: skip
        errors: dict[str, str] = {}
        if re.fullmatch(r"[0-9A-Fa-f]{20}", values["card_asn"]) is None:
            errors["card_asn"] = gettext(locale, "A card number is the 20 digits and letters A-F printed on the card.")
        if values["issuer_id"] and re.fullmatch(r"[0-9A-Fa-f]{16}", values["issuer_id"]) is None:
            errors["issuer_id"] = gettext(
                locale, "An issuer id is 16 digits and letters A-F; leave it empty if unsure."
            )
        amount_fen = 0
        try:
            amount_fen = parse_yuan(values["amount"])
        except AmountTextError as exc:
            errors["amount"] = gettext(locale, exc.message)
        on: dt.date | None = None
        try:
            on = dt.date.fromisoformat(values["date"]) if re.fullmatch(r"\d{4}-\d{2}-\d{2}", values["date"]) else None
        except ValueError:
            on = None
        if on is None:
            errors["date"] = gettext(locale, "Enter the date as YYYY-MM-DD, e.g. 2026-12-02.")
        if errors or on is None:
            return cards_page(request, current, values, errors, None, 422)
        try:
            binding = p.accounts.bind_card(
                current,
                values["card_asn"].lower(),
                issuer_id=values["issuer_id"].lower() or None,
                amount_fen=amount_fen,
                on=on,
                client_ip=client_ip(request),
            )
        except PortalError as exc:
            return cards_page(request, current, values, {}, error_text(locale, exc), exc.status)
        return redirect(f"/cards/{binding.issuer_id}/{binding.card_asn}")

    @router.get("/cards/{issuer_id}/{card_asn}", response_class=HTMLResponse)
    def card(issuer_id: str, card_asn: str, request: Request) -> HTMLResponse:
        current = p.require(request)
        detail = p.views.card(current, issuer_id, card_asn)
        params = dict(request.query_params)
        filter_error: str | None = None
        try:
            f = history.parse_filter(params)
            cursor = history.decode_cursor(params.get("cursor"))
        except PortalError as exc:
            f, cursor, filter_error = history.HistoryFilter(), None, error_text(locale_of(request), exc)
        page = p.views.history(current, issuer_id, card_asn, f, cursor=cursor)
        context = {
            "detail": detail,
            "card": detail.card,
            "entries": page.entries,
            "next_query": {**f.query(), "cursor": page.next_cursor} if page.next_cursor else None,
            "filter": f,
            "filter_values": {k: _bounded(params.get(k)) for k in ("from", "to", "kind", "terminal", "merchant")},
            "filter_error": filter_error,
            "kinds": list(history.KINDS),
            "csv_query": f.query(),
            "first_page": cursor is None,
        }
        return p.page(request, "card.html", context, current, 422 if filter_error else 200)

    @router.get("/cards/{issuer_id}/{card_asn}/history.csv")
    def history_csv(issuer_id: str, card_asn: str, request: Request) -> Response:
        current = p.require(request)
        issuer, asn = card_ref(issuer_id, card_asn)
        f = history.parse_filter(dict(request.query_params))
        page = p.views.history(current, issuer, asn, f, limit=history.CSV_ROWS_MAX)
        body = "\ufeff" + history.to_csv(page.entries)
        name = f"yikatong-{asn}-history.csv"
        return Response(
            body.encode("utf-8"),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{name}"', "Cache-Control": "no-store"},
        )

    # --- top-up --------------------------------------------------------------------------------

    def topup_page(
        request: Request, current: CurrentSession, issuer_id: str, card_asn: str, *, values: dict[str, str],
        errors: dict[str, str], form_error: str | None, nonce: str | None = None, status_code: int = 200,
    ) -> HTMLResponse:  # fmt: skip
        summary, room = p.views.headroom(current, issuer_id, card_asn)
        context = {
            "card": summary,
            "headroom_fen": room,
            "min_fen": p.topups.limits.topup_fen_min,
            "max_fen": p.topups.limits.topup_fen_max,
            "cap_fen": p.topups.limits.balance_fen_max(registered=summary.registered),
            "can_top_up": summary.status == "active" and room >= p.topups.limits.topup_fen_min,
            "values": values,
            "errors": errors,
            "form_error": form_error,
            "nonce": nonce or _new_nonce(),
        }
        return p.page(request, "topup.html", context, current, status_code)

    @router.get("/cards/{issuer_id}/{card_asn}/topup", response_class=HTMLResponse)
    def topup_form(issuer_id: str, card_asn: str, request: Request) -> HTMLResponse:
        current = p.require(request)
        return topup_page(request, current, issuer_id, card_asn, values={}, errors={}, form_error=None)

    @router.post("/cards/{issuer_id}/{card_asn}/topup", response_class=HTMLResponse)
    def topup(
        issuer_id: str,
        card_asn: str,
        request: Request,
        csrf_token: Annotated[str | None, Form()] = None,
        amount: Annotated[str | None, Form()] = None,
        nonce: Annotated[str | None, Form()] = None,
    ) -> Response:
        current = p.require(request)
        p.csrf(request, csrf_token, current)
        issuer, asn = card_ref(issuer_id, card_asn)
        locale = locale_of(request)
        values = {"amount": _bounded(amount).strip()}
        if nonce is None or _NONCE.fullmatch(nonce) is None:
            raise PortalError(
                Code.E_PORTAL_MALFORMED, "the form is incomplete: reload the top-up page and send it again"
            )
        try:
            amount_fen = parse_yuan(values["amount"])
        except AmountTextError as exc:
            return topup_page(request, current, issuer, asn, values=values, errors={"amount": gettext(locale,
                              exc.message)}, form_error=None, nonce=nonce, status_code=422)  # fmt: skip
        try:
            p.accounts.require_bound(current, issuer, asn)  # before any top-up is looked up or made
        except PortalError:
            raise not_found() from None  # another citizen's card: as if it did not exist
        topup_id = topup_id_of(p.config.form_key, current.session_id, issuer, asn, nonce)
        if _exists(p.topups, topup_id):
            return redirect(f"/topups/{topup_id}")  # the same form again: its top-up, not a second one
        try:
            dataclasses.replace(p.topups, new_id=lambda: topup_id).create_topup(issuer, asn, amount_fen)
        except IntegrityError:
            if not _exists(p.topups, topup_id):
                raise
            return redirect(f"/topups/{topup_id}")  # a racing post of the same form made it first
        except PortalError as exc:
            errors, form_error = _form_error(locale, exc, TOPUP_FIELD_OF)
            return topup_page(request, current, issuer, asn, values=values, errors=errors, form_error=form_error,
                              nonce=nonce, status_code=exc.status)  # fmt: skip
        return redirect(f"/topups/{topup_id}")

    @router.get("/topups/{topup_id}", response_class=HTMLResponse)
    def topup_status(topup_id: str, request: Request) -> HTMLResponse:
        current = p.require(request)
        view = p.topup_of(current, topup_id)
        state = topups.State(view.state)
        context = {
            "topup": view,
            "state_words": STATE_WORDS[state],
            "awaiting_payment": state in topups.OPEN_FOR_PAYMENT,
            "paid": state in (topups.State.PAID, topups.State.LOAD_PENDING),
        }
        return p.page(request, "topup_status.html", context, current)

    @router.get("/topups/{topup_id}/pay", response_class=HTMLResponse)
    def pay_form(topup_id: str, request: Request) -> HTMLResponse:
        current = p.require(request)
        if not p.config.payments_test_mode:
            raise PortalError(Code.E_TOPUP_NOT_FOUND, "there is no test payment page outside test mode")
        view = p.topup_of(current, topup_id)
        state = topups.State(view.state)
        return p.page(request, "pay.html", {"topup": view, "payable": state in topups.OPEN_FOR_PAYMENT}, current)

    @router.post("/topups/{topup_id}/pay")
    def pay(topup_id: str, request: Request, csrf_token: Annotated[str | None, Form()] = None) -> Response:
        current = p.require(request)
        if not p.config.payments_test_mode:
            raise PortalError(Code.E_TOPUP_NOT_FOUND, "there is no test payment page outside test mode")
        p.csrf(request, csrf_token, current)
        view = p.topup_of(current, topup_id)
        if topups.State(view.state) in topups.OPEN_FOR_PAYMENT and view.payment_intent_id is not None:
            p.topups.payments.confirm_test_payment(view.payment_intent_id)  # the webhook then makes it paid
        return redirect(f"/topups/{topup_id}")

    return router


def _exists(service: TopupService, topup_id: str) -> bool:
    try:
        service.view(topup_id)
    except PortalError:
        return False
    return True


def _new_nonce() -> str:
    return secrets.token_urlsafe(24)


def mount_pages(app: FastAPI, *, accounts: AccountService, topups_service: TopupService, config: PageConfig) -> None:
    """The pages, ``/api/cards``, ``/static``, and the page security headers (not on the APIs)."""
    views = CardViews(sessions=accounts.sessions, topups=topups_service)
    setattr(app.state, STATE_KEY, Pages(accounts, topups_service, views, config))
    app.include_router(pages_router(getattr(app.state, STATE_KEY)))
    mount_cards_api(app, views)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.add_middleware(SecurityHeaders, reader_agent_url=config.reader_agent_url)


__all__ = [
    "STATE_WORDS",
    "PageRoute",
    "Pages",
    "error_page",
    "mount_pages",
    "pages_router",
    "topup_id_of",
]
