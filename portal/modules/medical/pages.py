"""The medical insurance pages (card login) and the staff review API (``docs/medical.md``, "Pages").

Every page needs a session with assurance ``card``: none is the login redirect, an account login
is a 403 page that says to log in with the card. The state changes are CSRF forms answered 303.

| route | what it does |
| --- | --- |
| ``GET /medical`` | this year's deductible used and fund paid, the card's clinic visits, the claims |
| ``GET /medical/claims/new`` | the claim form (treatment elsewhere) |
| ``POST /medical/claims`` | file a claim with its documents (multipart, CSRF, nonce); 303 to it |
| ``GET /medical/claims/{id}`` | the claim, its documents and every state it went through, with reasons |
| ``POST /medical/claims/{id}/documents`` | add a document while submitted |
| ``GET /staff/api/medical/claims?state=`` | staff: the review queue |
| ``POST /staff/api/medical/claims/{id}/review`` | staff: check, valuate, pay or reject (audited) |
| ``POST /staff/api/medical/visits/{id}/reversal`` | staff (finance): reverse a settled visit (audited) |
"""

from __future__ import annotations

import datetime as dt
import re
import secrets
from typing import Annotated, Any, Final, Literal

from fastapi import APIRouter, FastAPI, File, Form, Request, Response, UploadFile
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from cardos.records import SHANGHAI_TZ
from portal.accounts import AccountService, CurrentSession
from portal.api import ErrorOut
from portal.api_staff import CsrfStaff, console_of
from portal.audit import AuditLog
from portal.modules.routes import api_route, page_route, pages_of
from portal.pages import Pages
from portal.web import parse_yuan, redirect

from .claims import DOC_BYTES_MAX, DOC_TYPES, REJECTION_REASONS, ClaimAction, ClaimState, Document
from .claims_service import ClaimForm, ClaimService, ClaimView
from .errors import CODES, MedicalCode, MedicalError
from .models import MedicalVisit
from .rules import RuleBook, VisitKind, load_example_rules
from .visits import VisitService

STATE_KEY: Final = "medical"
# every refusal of the staff API, documented (the schemathesis run checks answers against the schema)
_ERRORS: Final[dict[int | str, dict[str, Any]]] = {s: {"model": ErrorOut} for s in (401, 403, 404, 409, 422, 429, 503)}
_NONCE: Final = re.compile(r"[A-Za-z0-9_-]{16,64}")
_FIELD_CHARS_MAX: Final = 100


class MedicalModule:
    """What the routes need, kept on ``app.state.medical``."""

    def __init__(self, claims: ClaimService, visits: VisitService | None) -> None:
        self.claims = claims
        self.visits = visits


def _module(request: Request) -> MedicalModule:
    module = getattr(request.app.state, STATE_KEY, None)
    assert isinstance(module, MedicalModule), "mount_medical first"
    return module


MedicalPageRoute = page_route(
    MedicalError, lambda code: CODES[code].meaning,  # type: ignore[index]
    MedicalCode.E_MED_HOLDER_NOT_AUTHENTICATED, "medical/card_required.html",
)  # fmt: skip
MedicalApiRoute = api_route(MedicalError)


def require_card(p: Pages, request: Request) -> CurrentSession:
    current = p.require(request)
    if current.assurance != "card":
        raise MedicalError(MedicalCode.E_MED_HOLDER_NOT_AUTHENTICATED, "log in with the card to see this page")
    return current


def _text(value: str | None) -> str:
    return (value or "").strip()[:_FIELD_CHARS_MAX]


def _documents(doc_type: str | None, files: list[UploadFile] | None) -> list[Document]:
    """The files a form sent (an empty file input sends one nameless empty part: skipped), read bounded."""
    out = []
    for f in files or []:
        if not f.filename:
            continue
        content = f.file.read(DOC_BYTES_MAX + 1)
        out.append(Document(_text(doc_type) or "invoice", (f.content_type or "")[:40], content))
    return out


def _visits(module: MedicalModule, current: CurrentSession) -> list[MedicalVisit]:
    with module.claims.sessions() as session:
        member = module.claims.member_of(session, current)
        return list(
            session.scalars(
                select(MedicalVisit)
                .where(MedicalVisit.member_id == member.id)
                .order_by(MedicalVisit.id.desc())
                .limit(50)
            )
        )


def pages_router() -> APIRouter:
    router = APIRouter(route_class=MedicalPageRoute, include_in_schema=False)

    @router.get("/medical", response_class=HTMLResponse)
    def overview(request: Request) -> HTMLResponse:
        p, module = pages_of(request), _module(request)
        current = require_card(p, request)
        year = dt.datetime.now(SHANGHAI_TZ).year
        context: dict[str, Any] = {
            "year": year,
            "totals": module.claims.year_totals(current, year),
            "visits": _visits(module, current),
            "claims": module.claims.mine(current),
            "reasons": REJECTION_REASONS,
        }
        return p.page(request, "medical/overview.html", context, current)

    @router.get("/medical/claims/new", response_class=HTMLResponse)
    def new_claim(request: Request) -> HTMLResponse:
        p = pages_of(request)
        current = require_card(p, request)
        context = {"nonce": secrets.token_urlsafe(24), "doc_types": DOC_TYPES, "max_kib": DOC_BYTES_MAX // 1024}
        return p.page(request, "medical/new_claim.html", context, current)

    @router.post("/medical/claims")
    def submit(
        request: Request,
        csrf_token: Annotated[str | None, Form()] = None,
        nonce: Annotated[str | None, Form()] = None,
        hospital_name: Annotated[str | None, Form()] = None,
        hospital_level: Annotated[str | None, Form()] = None,
        kind: Annotated[str | None, Form()] = None,
        day: Annotated[str | None, Form()] = None,
        total_yuan: Annotated[str | None, Form()] = None,
        doc_type: Annotated[str | None, Form()] = None,
        documents: Annotated[list[UploadFile] | None, File()] = None,
    ) -> Response:
        p, module = pages_of(request), _module(request)
        current = require_card(p, request)
        p.csrf(request, csrf_token, current)
        if nonce is None or _NONCE.fullmatch(nonce) is None:
            raise MedicalError(MedicalCode.E_MED_CLAIM_MALFORMED, "the form is incomplete: reload it and send it again")
        try:
            when = dt.date.fromisoformat(_text(day))
            visit_kind = VisitKind(_text(kind))
            total_fen = parse_yuan(_text(total_yuan))
        except ValueError:
            raise MedicalError(
                MedicalCode.E_MED_CLAIM_MALFORMED, "give the date, the kind of care and the amount"
            ) from None
        form = ClaimForm(_text(hospital_name), _text(hospital_level), visit_kind, when, total_fen)
        view = module.claims.submit(current, form, _documents(doc_type, documents), submit_ref=nonce)
        return redirect(f"/medical/claims/{view.id}")

    @router.get("/medical/claims/{claim_id}", response_class=HTMLResponse)
    def claim(claim_id: int, request: Request) -> HTMLResponse:
        p, module = pages_of(request), _module(request)
        current = require_card(p, request)
        view = module.claims.one(current, claim_id)
        context = {"c": view, "reasons": REJECTION_REASONS, "doc_types": DOC_TYPES, "max_kib": DOC_BYTES_MAX // 1024}
        return p.page(request, "medical/claim.html", context, current)

    @router.post("/medical/claims/{claim_id}/documents")
    def add_document(
        claim_id: int,
        request: Request,
        csrf_token: Annotated[str | None, Form()] = None,
        doc_type: Annotated[str | None, Form()] = None,
        documents: Annotated[list[UploadFile] | None, File()] = None,
    ) -> Response:
        p, module = pages_of(request), _module(request)
        current = require_card(p, request)
        p.csrf(request, csrf_token, current)
        files = _documents(doc_type, documents)
        if not files:
            raise MedicalError(MedicalCode.E_MED_CLAIM_DOCUMENT, "choose a file to upload")
        for doc in files:
            module.claims.add_document(current, claim_id, doc)
        return redirect(f"/medical/claims/{claim_id}")

    return router


# --- staff ---------------------------------------------------------------------------------------


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class ReviewIn(_In):
    action: Literal["check", "valuate", "pay", "reject"]
    covered_fen: Annotated[int | None, Field(ge=0, le=100_000_000)] = None
    reason_code: Annotated[str | None, Field(max_length=8)] = None
    note: Annotated[str, Field(max_length=200)] = ""


class ReversalIn(_In):
    reason: Annotated[str, Field(min_length=1, max_length=200)]


def _claim_json(view: ClaimView) -> dict[str, Any]:
    return {
        "id": view.id,
        "state": view.state,
        "hospital_name": view.hospital_name,
        "kind": view.kind,
        "day": view.day.isoformat(),
        "total_fen": view.total_fen,
        "covered_fen": view.covered_fen,
        "fund_fen": view.fund_fen,
        "deductible_fen": view.deductible_fen,
        "rule_version": view.rule_version,
        "reason_code": view.reason_code,
        "payout_load_id": view.payout_load_id,
        "documents": [{"id": d[0], "type": d[1], "size_bytes": d[2]} for d in view.documents],
    }


def staff_router() -> APIRouter:
    router = APIRouter(prefix="/staff/api/medical", route_class=MedicalApiRoute, tags=["staff"])

    @router.get("/claims", responses=_ERRORS)
    def queue(current: CsrfStaff, request: Request, state: str | None = None) -> dict[str, Any]:
        console_of(request).staff.require(current, "medical_claim_review")
        try:
            wanted = ClaimState(state) if state else None
        except ValueError:
            raise MedicalError(MedicalCode.E_MED_CLAIM_MALFORMED, "state is one of " + ", ".join(ClaimState)) from None
        return {"claims": [_claim_json(v) for v in _module(request).claims.queue(wanted)]}

    @router.post("/claims/{claim_id}/review", responses=_ERRORS)
    def review(claim_id: int, body: ReviewIn, current: CsrfStaff, request: Request) -> dict[str, Any]:
        console_of(request).staff.require(current, "medical_claim_review")
        view = _module(request).claims.review(
            claim_id, ClaimAction(body.action), actor=current.actor, covered_fen=body.covered_fen,
            reason_code=body.reason_code, note=body.note,
        )  # fmt: skip
        return _claim_json(view)

    @router.post("/visits/{visit_id}/reversal", responses=_ERRORS)
    def reverse(visit_id: int, body: ReversalIn, current: CsrfStaff, request: Request) -> dict[str, Any]:
        console_of(request).staff.require(current, "medical_reversal")
        visits = _module(request).visits
        if visits is None:
            raise MedicalError(MedicalCode.E_MED_VISIT_NOT_FOUND, "clinic visits are not served here")
        quote = visits.reverse(visit_id, reason=body.reason, actor=current.actor)
        return {"visit_id": quote.visit_id, "state": quote.state, "refund_load_id": quote.refund_load_id}

    return router


def mount_medical(
    app: FastAPI,
    accounts: AccountService,
    *,
    visits: VisitService | None = None,
    rules: RuleBook | None = None,
    staff: object | None = None,
) -> MedicalModule:
    """The module's pages (after ``portal.pages.mount_pages``) and, with a staff console, its staff routes."""
    claims = ClaimService(accounts.sessions, rules or load_example_rules(), AuditLog(accounts.sessions))
    module = MedicalModule(claims, visits)
    setattr(app.state, STATE_KEY, module)
    app.include_router(pages_router())
    if staff is not None:
        app.include_router(staff_router())
    return module


__all__ = ["STATE_KEY", "MedicalModule", "mount_medical", "pages_router", "staff_router"]
