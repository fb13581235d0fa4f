"""The session and CSRF dependencies of the portal's routes: ``CurrentCitizen`` and ``CsrfCitizen``.

``docs/portal.md``, "Sessions and CSRF". The session is the ``yk_session`` cookie (HttpOnly,
SameSite=Lax, Secure outside local development); a route that changes state with a session
also needs the header ``X-CSRF-Token`` equal to the session's CSRF token, which the login
answer and ``GET /api/me`` carry. SameSite=Lax already keeps the cookie off cross-site POSTs
in current browsers; the token covers older browsers and same-site attackers (a service on a
sibling subdomain), and JSON-only bodies keep plain HTML forms out.

The ``AccountService`` is the one ``portal.api_accounts.mount_accounts`` put on
``app.state.portal_accounts``, so these are module-level names a route can annotate with.
"""

from __future__ import annotations

import hmac
from typing import Annotated, Final

from fastapi import Cookie, Depends, Header, Request

from portal.accounts import AccountService, CurrentSession
from portal.errors import Code, PortalError

SESSION_COOKIE: Final = "yk_session"
CSRF_HEADER: Final = "X-CSRF-Token"
CSRF_CHARS_MAX: Final = 128
STATE_KEY: Final = "portal_accounts"


def client_ip(request: Request) -> str:
    """The peer address as the server sees it (behind a proxy: uvicorn's ``--proxy-headers``)."""
    return request.client.host if request.client is not None else "unknown"


def accounts_of(request: Request) -> AccountService:
    service = getattr(request.app.state, STATE_KEY, None)
    assert isinstance(service, AccountService), "portal routes need mount_accounts first"
    return service


def current_session(request: Request, yk_session: Annotated[str | None, Cookie()] = None) -> CurrentSession:
    """The live session of the cookie, or ``401 E_SESSION_REQUIRED``."""
    return accounts_of(request).current(yk_session)


CurrentCitizen = Annotated[CurrentSession, Depends(current_session)]


def csrf_session(current: CurrentCitizen, x_csrf_token: Annotated[str | None, Header()] = None) -> CurrentSession:
    """The live session, and the request carries its CSRF token (``403 E_CSRF`` otherwise)."""
    sent = (x_csrf_token or "")[:CSRF_CHARS_MAX].encode("utf-8", "replace")
    if not sent or not hmac.compare_digest(sent, current.csrf_token.encode("ascii")):
        raise PortalError(Code.E_CSRF, f"send the session's CSRF token in {CSRF_HEADER}")
    return current


CsrfCitizen = Annotated[CurrentSession, Depends(csrf_session)]

__all__ = [
    "CSRF_HEADER",
    "SESSION_COOKIE",
    "STATE_KEY",
    "CsrfCitizen",
    "CurrentCitizen",
    "accounts_of",
    "client_ip",
    "csrf_session",
    "current_session",
]
