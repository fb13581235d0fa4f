"""The social security pages and routes, on ``portal.web``'s machinery and the citizen pages' sessions.

``docs/social-security.md``, "Pages". Every personal page needs a session with assurance
``card`` (card login, ``docs/portal.md`` "Card login"): no session is the login redirect, an
account login is a 403 page that says to log in with the card on the reader page. No page
needs JavaScript; the one state change (issuing a statement) is a CSRF form answered 303.

| route | what it does |
| --- | --- |
| ``GET /social-security?year=`` | the record: contributions by month and insurance, balances, corrections, statements |
| ``POST /social-security/statements`` | issue the year's statement (CSRF); 303 to it |
| ``GET /social-security/statements/{number}`` | the statement, its verification code, the PDF link |
| ``GET /social-security/statements/{number}.pdf`` | the PDF (the same bytes every time) |
| ``GET /social-security/verify?number=&code=`` | public: valid or invalid, and only masked data |
| ``GET /api/social-security/record?year=`` | the record as JSON (card login) |
| ``POST /staff/api/social-security/searches`` | clerk: a person's entries by ID number (in the body, not the URL) |
| ``POST /staff/api/social-security/corrections`` | counter clerk: a correction entry with its reason (audited) |
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Final

from fastapi import APIRouter, FastAPI, Form, Request, Response
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, ConfigDict, Field

from portal.accounts import AccountService
from portal.api import ErrorOut
from portal.api_auth import CurrentCitizen
from portal.api_staff import CsrfStaff, console_of
from portal.modules.routes import api_route, page_route, pages_of
from portal.web import PageConfig, redirect

from .errors import SS_CODES, SocialSecurityError, SsCode
from .rules import ACCOUNT_INSURANCES, INSURANCES, Amounts
from .service import Cell, SocialSecurityService
from .statement import normalise_code

STATE_KEY: Final = "social_security"
VERIFY_PATH: Final = "/social-security/verify"
_YEAR: Final = re.compile(r"[0-9]{4}")
_FIELD_CHARS_MAX: Final = 64
_ERRORS: Final[dict[int | str, dict[str, Any]]] = {
    s: {"model": ErrorOut} for s in (401, 403, 404, 409, 413, 422, 429, 503)
}


def _service(request: Request) -> SocialSecurityService:
    service = getattr(request.app.state, STATE_KEY, None)
    assert isinstance(service, SocialSecurityService), "mount_social_security first"
    return service


SsPageRoute = page_route(
    SocialSecurityError, lambda code: SS_CODES[code].meaning,  # type: ignore[index]
    SsCode.E_SS_CARD_LOGIN_REQUIRED, "social_security/card_required.html",
)  # fmt: skip
SsApiRoute = api_route(SocialSecurityError)


def _year(text: str | None) -> int | None:
    if text is None or text == "":
        return None
    if _YEAR.fullmatch(text) is None:
        raise SocialSecurityError(SsCode.E_SS_YEAR, "a year is four digits, e.g. 2026")
    return int(text)


def _verify_url(request: Request) -> str:
    return f"{request.url.scheme}://{request.url.netloc}{VERIFY_PATH}"


def pages_router() -> APIRouter:
    router = APIRouter(route_class=SsPageRoute, include_in_schema=False)

    @router.get("/social-security", response_class=HTMLResponse)
    def record(request: Request, year: str | None = None) -> HTMLResponse:
        p, service = pages_of(request), _service(request)
        current = p.require(request)
        person = service.person_of(current)
        view = service.record(person, _year(year))
        context: dict[str, Any] = {
            "record": view,
            "insurances": INSURANCES,
            "account_insurances": ACCOUNT_INSURANCES,
        }
        return p.page(request, "social_security/record.html", context, current)

    @router.post("/social-security/statements")
    def issue(
        request: Request,
        csrf_token: Annotated[str | None, Form()] = None,
        year: Annotated[str | None, Form()] = None,
    ) -> Response:
        p, service = pages_of(request), _service(request)
        current = p.require(request)
        p.csrf(request, csrf_token, current)
        person = service.person_of(current)
        chosen = _year((year or "")[:_FIELD_CHARS_MAX])
        if chosen is None:
            raise SocialSecurityError(SsCode.E_SS_YEAR, "choose the year of the statement")
        number = service.issue_statement(person, chosen)
        return redirect(f"/social-security/statements/{number}")

    @router.get("/social-security/statements/{number}.pdf")
    def statement_pdf(number: str, request: Request) -> Response:
        p, service = pages_of(request), _service(request)
        current = p.require(request)
        view = service.statement_of(service.person_of(current), number)
        body = service.pdf(view, verify_url=_verify_url(request))
        return Response(
            body,
            media_type="application/pdf",
            headers={
                "Content-Disposition": f'attachment; filename="yikatong-{view.number}.pdf"',
                "Cache-Control": "no-store",
            },
        )

    @router.get("/social-security/statements/{number}", response_class=HTMLResponse)
    def statement_page(number: str, request: Request) -> HTMLResponse:
        p, service = pages_of(request), _service(request)
        current = p.require(request)
        view = service.statement_of(service.person_of(current), number)
        context = {
            "statement": view,
            "content": view.content,
            "insurances": INSURANCES,
            "verify_url": _verify_url(request),
        }
        return p.page(request, "social_security/statement.html", context, current)

    @router.get(VERIFY_PATH, response_class=HTMLResponse)
    def verify(request: Request, number: str | None = None, code: str | None = None) -> HTMLResponse:
        p, service = pages_of(request), _service(request)
        current = p.session_of(request)
        values = {"number": (number or "").strip()[:_FIELD_CHARS_MAX], "code": (code or "").strip()[:_FIELD_CHARS_MAX]}
        result = None
        if values["number"] or values["code"]:
            result = service.verify(values["number"], values["code"])
            values["code"] = normalise_code(values["code"])
        context = {"values": values, "result": result, "insurances": INSURANCES}
        return p.page(request, "social_security/verify.html", context, current)

    return router


# --- staff -----------------------------------------------------------------------------------


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class SearchIn(_In):
    id_number: Annotated[str, Field(max_length=64)]


class CorrectionIn(_In):
    entry_id: Annotated[int, Field(ge=1, le=2**63 - 1)]
    base_fen: Annotated[int, Field(ge=0, le=1_000_000_000)]
    employer_fen: Annotated[int, Field(ge=0, le=1_000_000_000)]
    personal_fen: Annotated[int, Field(ge=0, le=1_000_000_000)]
    reason: Annotated[str, Field(max_length=2000)]


class AmountsOut(BaseModel):
    base_fen: int
    employer_fen: int
    personal_fen: int

    @classmethod
    def of(cls, a: Amounts) -> AmountsOut:
        return cls(base_fen=a.base_fen, employer_fen=a.employer_fen, personal_fen=a.personal_fen)


class EntryOut(BaseModel):
    entry_id: int
    person: str
    month: str
    insurance: str
    payer_id: str
    imported: AmountsOut
    on_record: AmountsOut
    corrections: int


class EntriesOut(BaseModel):
    entries: list[EntryOut]


class CorrectionOut(BaseModel):
    correction_id: int
    entry_id: int
    delta: AmountsOut
    on_record: AmountsOut
    replayed: bool


def staff_router() -> APIRouter:
    router = APIRouter(prefix="/staff/api/social-security", route_class=SsApiRoute, tags=["staff"])

    @router.post("/searches", response_model=EntriesOut, responses=_ERRORS)
    def search(body: SearchIn, current: CsrfStaff, request: Request) -> EntriesOut:
        console_of(request).staff.require(current, "ss_entries_view")
        entries = _service(request).entries_for_staff(body.id_number, actor=current.actor)
        return EntriesOut(
            entries=[
                EntryOut(
                    entry_id=e.entry_id,
                    person=e.person_masked,
                    month=e.month,
                    insurance=e.insurance,
                    payer_id=e.payer_id,
                    imported=AmountsOut.of(e.imported),
                    on_record=AmountsOut.of(e.on_record),
                    corrections=e.corrections,
                )
                for e in entries
            ]
        )

    @router.post(
        "/corrections",
        status_code=201,
        response_model=CorrectionOut,
        responses={200: {"model": CorrectionOut}, **_ERRORS},
    )
    def correct(body: CorrectionIn, current: CsrfStaff, request: Request, response: Response) -> CorrectionOut:
        console_of(request).staff.require(current, "ss_correction")
        target = Amounts(body.base_fen, body.employer_fen, body.personal_fen)
        result = _service(request).correct(body.entry_id, target, body.reason, actor=current.actor)
        if result.replayed:
            response.status_code = 200
        return CorrectionOut(
            correction_id=result.correction_id,
            entry_id=result.entry_id,
            delta=AmountsOut.of(result.delta),
            on_record=AmountsOut.of(result.on_record),
            replayed=result.replayed,
        )

    return router


# --- the citizen's JSON ----------------------------------------------------------------------


class CellOut(BaseModel):
    base_fen: int
    employer_fen: int
    personal_fen: int
    account_fen: int
    corrected: bool


class MonthOut(BaseModel):
    month: str
    insurances: dict[str, CellOut]


class RecordOut(BaseModel):
    person: str
    years: list[int]
    year: int | None
    months: list[MonthOut]
    balances_fen: dict[str, int]
    statements: list[str]


def _cell(c: Cell) -> CellOut:
    return CellOut(
        base_fen=c.base_fen,
        employer_fen=c.employer_fen,
        personal_fen=c.personal_fen,
        account_fen=c.account_fen,
        corrected=c.corrected,
    )


def api_router() -> APIRouter:
    """``GET /api/social-security/record?year=``: the record page as JSON (card login, as the page)."""
    router = APIRouter(prefix="/api/social-security", route_class=SsApiRoute, tags=["social security"])

    @router.get("/record", response_model=RecordOut, responses=_ERRORS)
    def record(current: CurrentCitizen, request: Request, year: str | None = None) -> RecordOut:
        service = _service(request)
        view = service.record(service.person_of(current), _year(year[:_FIELD_CHARS_MAX] if year else None))
        return RecordOut(
            person=view.person.id_masked,
            years=list(view.years),
            year=view.year,
            months=[MonthOut(month=m, insurances={k: _cell(c) for k, c in cells.items()}) for m, cells in view.months],
            balances_fen=view.balances_fen,
            statements=[s.number for s in view.statements],
        )

    return router


def mount_social_security(
    app: FastAPI, accounts: AccountService, config: PageConfig, *, staff: object | None = None
) -> SocialSecurityService:
    """The module's pages (after ``portal.pages.mount_pages``) and, with a staff console, its staff routes."""
    del config  # the pages render with the citizen pages' config (``portal.pages.Pages``)
    service = SocialSecurityService(sessions=accounts.sessions, lookup_key=accounts.lookup_key)
    setattr(app.state, STATE_KEY, service)
    app.include_router(pages_router())
    app.include_router(api_router())
    if staff is not None:
        app.include_router(staff_router())
    return service


__all__ = ["STATE_KEY", "VERIFY_PATH", "api_router", "mount_social_security", "pages_router", "staff_router"]
