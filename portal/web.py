"""The machinery every server-rendered portal page shares: templates, locale, money and time, CSRF, headers.

``docs/portal.md``, "Pages". Other page modules (the citizen pages, the lost-card pages, the
staff console, the reader page) build on these names and nothing else of each other:

- **Templates.** Jinja2 from ``portal/templates`` with autoescape on for every template and
  ``StrictUndefined`` (a misspelt variable is an error in the tests, not an empty cell). One
  environment per locale, each with its own gettext installed, so requests in different
  languages never share translation state. ``render(request, name, context)`` is the one way
  a page answers.
- **Locale.** ``zh_CN`` (default) and ``en``. The ``lang`` cookie (set by ``GET /lang/{code}``,
  a plain link in every page's header), else the best ``Accept-Language`` match, else
  ``zh_CN``. Messages are the ``messages.po`` catalogs in ``portal/locale``, read with Babel's
  ``read_po`` and compiled in memory at import: no build step that a checkout could miss.
- **Money and time.** ``yuan(fen)`` formats integer fen through ``divmod`` and Babel's grouping
  (never a float); ``parse_yuan`` is the one reading of a typed amount. Times are shown in
  Asia/Shanghai with the offset written out, as the terminals' console shows them.
- **CSRF on forms.** Every POST form carries ``csrf_token``. With a session it is the session's
  own token (``portal.accounts.CurrentSession.csrf_token``); without one (login, register) it is
  a signed double-submit token: a random value in the HttpOnly cookie ``yk_form`` and, in the
  form, its HMAC under the portal's key, so a value planted in the cookie by a sibling site is
  worth nothing without the key. Compared in constant time; a refusal is ``CsrfRefused`` (a 403
  page, nothing changed).
- **Security headers** (``SecurityHeaders``, ASGI middleware) on pages and static files only,
  never on the terminal, interop, webhook or JSON routes: a strict Content-Security-Policy (no
  inline script or style, no eval; ``connect-src`` adds the reader agent's origin),
  ``X-Content-Type-Options: nosniff``, ``Referrer-Policy: same-origin``, and ``Cache-Control:
  no-store`` on HTML (pages show balances; a shared computer's back button should not).
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import hmac
import io
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.numbers import format_decimal, get_decimal_symbol
from babel.support import Translations
from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from portal.errors import CODES, Code, PortalError

PACKAGE_DIR: Final = Path(__file__).resolve().parent
TEMPLATES_DIR: Final = PACKAGE_DIR / "templates"
STATIC_DIR: Final = PACKAGE_DIR / "static"
LOCALE_DIR: Final = PACKAGE_DIR / "locale"

LOCALES: Final = ("zh_CN", "en")
DEFAULT_LOCALE: Final = "zh_CN"
HTML_LANG: Final = {"zh_CN": "zh-CN", "en": "en"}
LANG_COOKIE: Final = "lang"
LANG_COOKIE_MAX_AGE_S: Final = 365 * 24 * 3600
FORM_COOKIE: Final = "yk_form"
CSRF_FIELD: Final = "csrf_token"
CSRF_CHARS_MAX: Final = 128
SHANGHAI: Final = ZoneInfo("Asia/Shanghai")
READER_AGENT_URL_DEFAULT: Final = "http://127.0.0.1:8465"
_FORM_KEY_LABEL: Final = b"yikatong/portal/form-csrf/v1"
_ACCEPT_ITEMS_MAX: Final = 16

# Paths that are APIs, not pages: no page headers there (the terminal contract's answers are its own).
NOT_PAGE_PREFIXES: Final = (
    "/v1/",
    "/api/",
    "/staff/api/",
    "/interop/",
    "/webhooks/",
    "/openapi.json",
    "/docs",
    "/redoc",
)


# --- locale ------------------------------------------------------------------------------


def _catalog(locale: str) -> Translations:
    """The locale's messages.po, compiled in memory (Babel's read_po + write_mo)."""
    path = LOCALE_DIR / locale / "LC_MESSAGES" / "messages.po"
    with path.open("rb") as f:
        catalog = read_po(f, locale=locale)
    buffer = io.BytesIO()
    write_mo(buffer, catalog)
    buffer.seek(0)
    return Translations(buffer)


def _accept_language(header: str) -> list[str]:
    """The languages of an ``Accept-Language`` header, best first (q=0 dropped; bounded)."""
    ranked: list[tuple[float, int, str]] = []
    for i, item in enumerate(header.split(",")[:_ACCEPT_ITEMS_MAX]):
        tag, _, params = item.strip().partition(";")
        q = 1.0
        params = params.strip()
        if params.startswith("q="):
            try:
                q = float(params[2:])
            except ValueError:
                q = 0.0
        if tag and q > 0:
            ranked.append((-q, i, tag.strip().lower()))
    return [tag for _, _, tag in sorted(ranked)]


def locale_of_tag(tag: str) -> str | None:
    """The supported locale for a language tag: ``zh``, ``zh-CN``, ``zh-Hans-CN`` → zh_CN; ``en-GB`` → en."""
    primary = tag.lower().replace("_", "-").split("-", 1)[0]
    return {"zh": "zh_CN", "en": "en"}.get(primary)


def choose_locale(cookie: str | None, accept_language: str | None) -> str:
    """The ``lang`` cookie if it names a locale we have, else the best Accept-Language match, else zh_CN."""
    if cookie in LOCALES:
        return cookie
    for tag in _accept_language(accept_language or "")[:_ACCEPT_ITEMS_MAX]:
        found = locale_of_tag(tag)
        if found is not None:
            return found
    return DEFAULT_LOCALE


def locale_of(request: Request) -> str:
    return choose_locale(request.cookies.get(LANG_COOKIE), request.headers.get("accept-language"))


# --- money and time ----------------------------------------------------------------------

_YUAN_TEXT: Final = re.compile(r"[0-9]{1,9}(?:\.[0-9]{1,2})?")  # ASCII digits only: str.isdigit takes "١٢"


def yuan(fen: int, locale: str = DEFAULT_LOCALE) -> str:
    """``¥1,234.50`` for 123450 fen: grouping by Babel, the fen by ``divmod`` (never a float)."""
    if type(fen) is not int:
        raise TypeError(f"money is integer fen, got {type(fen).__name__}")
    sign = "-" if fen < 0 else ""
    whole, cents = divmod(abs(fen), 100)
    return f"{sign}¥{_grouped(whole, locale)}{get_decimal_symbol(locale)}{cents:02d}"


@functools.lru_cache(maxsize=8192)
def _grouped(whole: int, locale: str) -> str:
    """Babel's grouping of whole yuan; cached, because a history page formats dozens of amounts."""
    return str(format_decimal(whole, format="#,##0", locale=locale))


def yuan_plain(fen: int) -> str:
    """``-2.00``, ``1234.50``: a machine-readable yuan amount (CSV, form values)."""
    sign = "-" if fen < 0 else ""
    whole, cents = divmod(abs(fen), 100)
    return f"{sign}{whole}.{cents:02d}"


class AmountTextError(ValueError):
    """A typed amount that is not yuan and fen; ``message`` says what to type instead."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def parse_yuan(text: str) -> int:
    """A typed amount in yuan (``50``, ``12.5``, ``12.50``, full-width digits folded) as integer fen.

    Yuan because that is what a citizen thinks in; at most two decimals because the fen is the
    smallest unit (``12.505`` is a typo, not a rounding question). Only the form is checked
    here; the limits are ``portal.limits``'s.
    """
    entered = text.strip().translate(_FULLWIDTH).replace(",", "")
    if not entered:
        raise AmountTextError("enter an amount in yuan, e.g. 50 or 12.50")
    if entered.startswith("-"):
        raise AmountTextError("the amount is negative: enter a positive amount in yuan, e.g. 50")
    if _YUAN_TEXT.fullmatch(entered) is None:
        if re.fullmatch(r"[0-9]+\.[0-9]{3,}", entered):
            raise AmountTextError("at most two decimals: yuan and fen, e.g. 12.50")
        raise AmountTextError("not an amount: enter yuan with a point, e.g. 12.50")
    whole, _, decimals = entered.partition(".")
    fen = int(whole) * 100 + int((decimals + "00")[:2])
    if fen <= 0:
        raise AmountTextError("the amount must be more than 0.00")
    return fen


_FULLWIDTH: Final = str.maketrans("０１２３４５６７８９．，", "0123456789.,")


def shanghai_stamp(moment: dt.datetime) -> str:
    """``2026-12-02 08:15:02 +08:00``, as ``terminals.display.shanghai_stamp`` shows it."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"naive datetime {moment!r}: stored times are aware UTC")
    local = moment.astimezone(SHANGHAI)
    return f"{local:%Y-%m-%d %H:%M:%S} {local.isoformat()[-6:]}"


def shanghai_date(moment: dt.datetime) -> dt.date:
    return moment.astimezone(SHANGHAI).date()


# --- templates -----------------------------------------------------------------------------


def _environment(locale: str) -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES_DIR),
        # Templates ship with the code: no stat() of every template and macro file per render.
        auto_reload=False,
        autoescape=True,
        undefined=StrictUndefined,
        extensions=["jinja2.ext.i18n"],
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.install_gettext_translations(_catalog(locale), newstyle=True)  # type: ignore[attr-defined]
    env.filters["yuan"] = lambda fen: yuan(fen, locale)
    env.filters["yuan_plain"] = yuan_plain
    env.filters["stamp"] = shanghai_stamp
    env.globals["locale"] = locale
    env.globals["html_lang"] = HTML_LANG[locale]
    return env


_ENVS: Final = {locale: _environment(locale) for locale in LOCALES}
_TRANSLATIONS: Final = {locale: _catalog(locale) for locale in LOCALES}


def environment(locale: str) -> Environment:
    """The template environment of a locale (pages of other modules may render with it)."""
    return _ENVS[locale]


def gettext(locale: str, message: str) -> str:
    return str(_TRANSLATIONS[locale].gettext(message))


def error_text(locale: str, error: PortalError) -> str:
    """What a person reads for a refusal: the code's meaning in their language when the catalog has it.

    English shows the service's own sentence (it names the limit or field); another locale the
    sentence's translation, else the code's meaning translated, else the sentence itself.
    """
    if locale == "en":
        return error.message
    for text in (error.message, CODES[error.code].meaning):
        translated = gettext(locale, text)
        if translated != text:
            return translated
    return error.message


@dataclass(frozen=True, slots=True)
class PageConfig:
    """What the pages need from the settings; the composition root builds one."""

    form_key: bytes  # the anonymous forms' CSRF key (derived from the portal's lookup key)
    secure_cookies: bool = True
    reader_agent_url: str = READER_AGENT_URL_DEFAULT
    payments_test_mode: bool = False

    def __post_init__(self) -> None:
        if len(self.form_key) < 32:
            raise ValueError("the form key must be at least 32 bytes")
        check_origin(self.reader_agent_url)


def form_key_of(lookup_key: bytes) -> bytes:
    """The anonymous-form CSRF key: HMAC of the portal's lookup key for this one use."""
    return hmac.new(lookup_key, _FORM_KEY_LABEL, hashlib.sha256).digest()


def check_origin(url: str) -> str:
    """An origin fit for a CSP source: ``scheme://host[:port]`` and nothing else (no ``;``, no path)."""
    parts = urlsplit(url)
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
        or parts.username
        or re.fullmatch(r"[A-Za-z0-9.:\[\]/-]+", url) is None
    ):
        raise ValueError(f"not an origin (scheme://host[:port]): {url!r}")
    return f"{parts.scheme}://{parts.netloc}"


# --- CSRF ----------------------------------------------------------------------------------


class CsrfRefused(Exception):
    """A form posted without its token, or with another one: answered 403, nothing changed."""


def _form_token(key: bytes, cookie_value: str) -> str:
    return hmac.new(key, cookie_value.encode("ascii", "replace"), hashlib.sha256).hexdigest()


def anonymous_csrf(request: Request, config: PageConfig) -> str:
    """The token an anonymous form carries; makes the browser's ``yk_form`` cookie if it has none."""
    value = request.cookies.get(FORM_COOKIE)
    if value is None or re.fullmatch(r"[A-Za-z0-9_-]{32,64}", value) is None:
        value = getattr(request.state, "new_form_cookie", None) or secrets.token_urlsafe(32)
        request.state.new_form_cookie = value
    return _form_token(config.form_key, value)


def check_csrf(request: Request, sent: object, *, session_token: str | None, config: PageConfig) -> None:
    """Raise ``CsrfRefused`` unless ``sent`` is this session's token (or, without a session, the form's)."""
    text = sent if isinstance(sent, str) else ""
    given = text[:CSRF_CHARS_MAX].encode("utf-8", "replace")
    if session_token is not None:
        expected = session_token.encode("ascii")
    else:
        cookie = request.cookies.get(FORM_COOKIE)
        if cookie is None:
            raise CsrfRefused("no form cookie")
        expected = _form_token(config.form_key, cookie).encode("ascii")
    if not given or not hmac.compare_digest(given, expected):
        raise CsrfRefused("the form's token is not this browser's")


# --- answering ------------------------------------------------------------------------------


def safe_next(target: str | None, default: str = "/") -> str:
    """A redirect target of our own: a path starting with one ``/`` (no ``//host``, no scheme, no ``\\``)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return default
    if any(c in target for c in "\r\n\t") or len(target) > 512:
        return default
    return target


def redirect(url: str) -> RedirectResponse:
    """POST-redirect-GET: 303 so the browser fetches the result and a reload re-posts nothing."""
    return RedirectResponse(url, status_code=303)


def render(
    request: Request,
    name: str,
    context: Mapping[str, Any],
    *,
    config: PageConfig,
    status_code: int = 200,
    session_csrf: str | None = None,
    signed_in: bool = False,
) -> HTMLResponse:
    """Render a page in the request's locale. The template gets ``csrf_token`` for its forms.

    ``session_csrf`` is the logged-in citizen's token; without it an anonymous form token is
    made (and its cookie set on this response).
    """
    locale = locale_of(request)
    token = session_csrf if session_csrf is not None else anonymous_csrf(request, config)
    here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    page = (
        environment(locale)
        .get_template(name)
        .render(
            {
                "csrf_token": token,
                "signed_in": signed_in,
                "here": safe_next(here),
                "other_locales": [loc for loc in LOCALES if loc != locale],
                **context,
            }
        )
    )
    response = HTMLResponse(page, status_code=status_code)
    new_cookie = getattr(request.state, "new_form_cookie", None)
    if new_cookie is not None:
        response.set_cookie(
            FORM_COOKIE, new_cookie, path="/", httponly=True, samesite="strict", secure=config.secure_cookies
        )
    return response


def set_lang_cookie(response: RedirectResponse, locale: str, *, secure: bool) -> None:
    assert locale in LOCALES
    response.set_cookie(
        LANG_COOKIE, locale, max_age=LANG_COOKIE_MAX_AGE_S, path="/", httponly=True, samesite="lax", secure=secure
    )


# --- security headers ------------------------------------------------------------------------


def content_security_policy(reader_agent_url: str) -> str:
    """The pages' CSP: same-origin everything, no inline script or style, the reader agent reachable."""
    agent = check_origin(reader_agent_url)
    return "; ".join(
        (
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self' data:",
            f"connect-src 'self' {agent}",
            "frame-ancestors 'none'",
            "form-action 'self'",
            "base-uri 'none'",
            "object-src 'none'",
        )
    )


def is_page_path(path: str) -> bool:
    return not any(path == p.rstrip("/") or path.startswith(p) for p in NOT_PAGE_PREFIXES)


class SecurityHeaders:
    """ASGI middleware: the page headers on every page and static response, nothing on the APIs."""

    def __init__(self, app: ASGIApp, *, reader_agent_url: str, is_page: Callable[[str], bool] = is_page_path) -> None:
        self.app = app
        self.is_page = is_page
        self.headers: list[tuple[bytes, bytes]] = [
            (b"content-security-policy", content_security_policy(reader_agent_url).encode("ascii")),
            (b"x-content-type-options", b"nosniff"),
            (b"referrer-policy", b"same-origin"),
            (b"x-frame-options", b"DENY"),
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.is_page(scope["path"]):
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() not in dict(self.headers)]
                headers.extend(self.headers)
                content_type = next((v for k, v in headers if k.lower() == b"content-type"), b"")
                if content_type.startswith(b"text/html"):
                    headers = [(k, v) for k, v in headers if k.lower() != b"cache-control"]
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


__all__ = [
    "CSRF_FIELD",
    "DEFAULT_LOCALE",
    "FORM_COOKIE",
    "LANG_COOKIE",
    "LOCALES",
    "STATIC_DIR",
    "TEMPLATES_DIR",
    "AmountTextError",
    "Code",
    "CsrfRefused",
    "PageConfig",
    "SecurityHeaders",
    "anonymous_csrf",
    "check_csrf",
    "check_origin",
    "choose_locale",
    "content_security_policy",
    "environment",
    "error_text",
    "form_key_of",
    "gettext",
    "is_page_path",
    "locale_of",
    "parse_yuan",
    "redirect",
    "render",
    "safe_next",
    "set_lang_cookie",
    "shanghai_date",
    "shanghai_stamp",
    "yuan",
    "yuan_plain",
]
