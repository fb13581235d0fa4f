"""How a citizen-service module's routes answer its own refusals: one page route and one JSON route.

Every module has its error type (a stable code, a sentence, an HTTP status, and a registry with each
code's meaning) and one refusal that means "log in with your card first". Its pages answer a refusal
as the portal's error page in the reader's language (the sentence if the catalog has it, else the
code's meaning, else the English sentence), and the card refusal as the module's own page that
points to the reader page; its JSON routes answer ``{"code", "message"}``. Anything else is the
portal's to answer (``portal.pages.error_page``, ``portal.api.portal_error``).
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from typing import Protocol

from fastapi import Request, Response
from fastapi.responses import JSONResponse

from clearing.api import AnsweringRoute
from portal.api import portal_error
from portal.pages import STATE_KEY as PAGES_STATE_KEY
from portal.pages import Pages, error_page
from portal.pages_staff import STATE_KEY as STAFF_STATE_KEY
from portal.pages_staff import StaffPages
from portal.web import gettext, locale_of


class ModuleError(Protocol):
    @property
    def code(self) -> Enum: ...

    @property
    def message(self) -> str: ...

    @property
    def status(self) -> int: ...


def pages_of(request: Request) -> Pages:
    pages = getattr(request.app.state, PAGES_STATE_KEY, None)
    assert isinstance(pages, Pages), "the citizen pages must be mounted first"
    return pages


def staff_pages_of(request: Request) -> StaffPages:
    pages = getattr(request.app.state, STAFF_STATE_KEY, None)
    assert isinstance(pages, StaffPages), "the staff pages must be mounted first"
    return pages


def refusal_text(locale: str, message: str, meaning: str) -> str:
    """The refusal in the reader's language: the sentence, else the code's meaning, translated if we can."""
    if locale == "en":
        return message
    for text in (message, meaning):
        translated = gettext(locale, text)
        if translated != text:
            return translated
    return message


def page_route(
    error: type[Exception], meaning: Callable[[Enum], str], card_required: Enum, card_template: str
) -> type[AnsweringRoute]:
    """The route class of a module's pages (``error`` is its exception; ``meaning`` its code registry)."""

    class ModulePageRoute(AnsweringRoute):
        def answer(self, request: Request, exc: Exception) -> Response:
            if not isinstance(exc, error):
                return error_page(request, exc)
            refusal: ModuleError = exc  # type: ignore[assignment]
            pages = pages_of(request)
            current = pages.session_of(request)
            if refusal.code is card_required:
                return pages.page(request, card_template, {}, current, 403)
            text = refusal_text(locale_of(request), refusal.message, meaning(refusal.code))
            context = {"title": "That did not work", "text": text, "code": refusal.code.value}
            return pages.page(request, "error.html", context, current, refusal.status)

    return ModulePageRoute


def api_route(error: type[Exception]) -> type[AnsweringRoute]:
    """The route class of a module's JSON routes: its refusals as ``{"code", "message"}``."""

    class ModuleApiRoute(AnsweringRoute):
        def answer(self, request: Request, exc: Exception) -> Response:
            if isinstance(exc, error):
                refusal: ModuleError = exc  # type: ignore[assignment]
                return JSONResponse(
                    {"code": refusal.code.value, "message": refusal.message}, status_code=refusal.status
                )
            return portal_error(exc)

    return ModuleApiRoute


__all__ = ["ModuleError", "api_route", "page_route", "pages_of", "refusal_text", "staff_pages_of"]
