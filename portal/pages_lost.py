"""The citizen's lost-card pages: report a bound card lost (a confirmation form), and the reports.

``docs/portal.md``, "Lost cards and replacement". Built on ``portal.web`` (render, form CSRF,
headers) and the citizen pages' session handling (``portal.pages.Pages``); the same service
as ``/api/lost-cards``. No JavaScript; POST-redirect-GET.

| page | what it does |
| --- | --- |
| ``GET /cards/{issuer}/{asn}/lost`` | what a report does, and the button that makes it |
| ``POST /cards/{issuer}/{asn}/lost`` | the report (CSRF); 303 to ``/lost-cards`` |
| ``GET /lost-cards`` | the citizen's reports: state, when reported, from when the replacement can be collected |
"""

from __future__ import annotations

import re
from typing import Annotated, Final

from fastapi import APIRouter, FastAPI, Form, Request
from fastapi.responses import HTMLResponse, Response

from portal.api_auth import client_ip
from portal.errors import Code, PortalError
from portal.lost_cards import LostCardService
from portal.pages import STATE_KEY as PAGES_STATE_KEY
from portal.pages import PageRoute, Pages
from portal.web import redirect

_CARD: Final = re.compile(r"[0-9a-f]{16}/[0-9a-f]{20}")


def _pages(request: Request) -> Pages:
    pages = getattr(request.app.state, PAGES_STATE_KEY, None)
    assert isinstance(pages, Pages), "the citizen pages must be mounted first"
    return pages


def _card(issuer_id: str, card_asn: str) -> tuple[str, str]:
    issuer, asn = issuer_id.lower(), card_asn.lower()
    if _CARD.fullmatch(f"{issuer}/{asn}") is None:
        raise PortalError(Code.E_CARD_NOT_FOUND, "no such card")
    return issuer, asn


def lost_pages_router(service: LostCardService) -> APIRouter:
    router = APIRouter(route_class=PageRoute, include_in_schema=False)

    @router.get("/cards/{issuer_id}/{card_asn}/lost", response_class=HTMLResponse)
    def confirm(issuer_id: str, card_asn: str, request: Request) -> HTMLResponse:
        p = _pages(request)
        current = p.require(request)
        issuer, asn = _card(issuer_id, card_asn)
        try:
            service.accounts.require_bound(current, issuer, asn)
        except PortalError:
            raise PortalError(Code.E_CARD_NOT_FOUND, "no such card among yours") from None
        context = {"issuer_id": issuer, "card_asn": asn, "wait_days": service.wait_s // 86400}
        return p.page(request, "lost.html", context, current)

    @router.post("/cards/{issuer_id}/{card_asn}/lost")
    def report(
        issuer_id: str, card_asn: str, request: Request, csrf_token: Annotated[str | None, Form()] = None
    ) -> Response:
        p = _pages(request)
        current = p.require(request)
        p.csrf(request, csrf_token, current)
        issuer, asn = _card(issuer_id, card_asn)
        service.report(current, issuer, asn, client_ip=client_ip(request))
        return redirect("/lost-cards")

    @router.get("/lost-cards", response_class=HTMLResponse)
    def reports(request: Request) -> HTMLResponse:
        p = _pages(request)
        current = p.require(request)
        return p.page(request, "lost_cards.html", {"reports": service.reports(current)}, current)

    return router


def mount_lost_pages(app: FastAPI, service: LostCardService) -> None:
    """The lost-card pages (after ``portal.pages.mount_pages``: they use its session handling)."""
    app.include_router(lost_pages_router(service))


__all__ = ["lost_pages_router", "mount_lost_pages"]
