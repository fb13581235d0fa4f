"""The permit pages: the citizen's (``/permits``, card login required) and the clerks' (``/staff/permits``).

``docs/permits.md``, "Pages". Built on ``portal.web`` and the citizen and staff pages' session
handling (``portal.pages.Pages``, ``portal.pages_staff.StaffPages``); no JavaScript;
POST-redirect-GET; every POST checks its CSRF token first.

- **Card login** (assurance ``card``) for every page that shows a personal record: an account
  login alone gets a page that says so, with the way to the reader page's card login.
- **Replays**: the submission form's nonce names the application (``application_id_of``), a
  step's form the version it was shown at (``service.PermitService._step``).
- **Documents** are served as attachments with their sniffed type and ``nosniff``.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from typing import Annotated, Any, Final

from fastapi import APIRouter, FastAPI, File, Form, Request, UploadFile
from fastapi.responses import HTMLResponse, Response

from clearing.api import AnsweringRoute
from portal.accounts import CurrentSession
from portal.modules.permits import rules
from portal.modules.permits.errors import CODES, PermitCode, PermitError
from portal.modules.permits.models import PermitDocument
from portal.modules.permits.service import (
    DOCUMENT_BYTES_MAX,
    KINDS,
    PermitService,
    Upload,
    is_application_id,
)
from portal.modules.routes import pages_of, refusal_text, staff_pages_of
from portal.pages import Pages, error_page
from portal.pages_staff import staff_error_page
from portal.web import gettext, locale_of, redirect

SERVICE_KEY: Final = "permits_service"
STAFF_ACTION: Final = "permit_review"  # portal.staff.ROLE_ACTIONS: the counter clerk's
FIELD_CHARS_MAX: Final = 600
_NONCE: Final = re.compile(r"[A-Za-z0-9_-]{16,64}")
_ID_LABEL: Final = b"yikatong/permits/application-form/v1\x00"
STATE_WORDS: Final = {
    rules.State.SUBMITTED: "Submitted: waiting for the clerk to check the materials.",
    rules.State.MATERIALS_REQUESTED: "Materials missing: upload them, then tell us.",
    rules.State.NOT_ACCEPTED: "Not accepted.",
    rules.State.ACCEPTED: "Accepted: the decision deadline runs.",
    rules.State.UNDER_REVIEW: "Under review.",
    rules.State.GRANTED: "Granted: the certificate is being made.",
    rules.State.DENIED: "Refused.",
    rules.State.CERTIFICATE_ISSUED: "Certificate issued.",
}
STEP_WORDS: Final = {
    "submit": "Application received",
    "request_materials": "Missing materials asked for",
    "supplement": "Missing materials supplied",
    "accept": "Accepted",
    "refuse": "Not accepted",
    "start_review": "Review started",
    "extend": "Decision deadline extended by 10 working days",
    "grant": "Granted",
    "deny": "Refused",
    "issue_certificate": "Certificate issued",
}


def application_id_of(form_key: bytes, citizen_id: int, nonce: str) -> str:
    """``pa_`` + HMAC(form key, citizen, nonce), 96 bits: one form names one application, unguessably."""
    digest = hmac.new(form_key, _ID_LABEL + f"{citizen_id}:{nonce}".encode(), hashlib.sha256).hexdigest()
    return "pa_" + digest[:24]


def _text(value: str | None) -> str:
    return (value or "")[:FIELD_CHARS_MAX]


def _version(value: str | None) -> int:
    if value is None or not value.isascii() or not value.isdigit() or len(value) > 6:
        raise PermitError(PermitCode.E_PERMIT_FORM, "the form is incomplete: reload the page and send it again")
    return int(value)


def _service(request: Request) -> PermitService:
    service = getattr(request.app.state, SERVICE_KEY, None)
    assert isinstance(service, PermitService), "mount_permits first"
    return service


def permit_text(locale: str, exc: PermitError) -> str:
    """The refusal in the reader's language (``portal.modules.routes.refusal_text``)."""
    return refusal_text(locale, exc.message, CODES[exc.code].meaning)


def _words(locale: str) -> dict[str, Any]:
    return {
        "state_words": {str(k): gettext(locale, v) for k, v in STATE_WORDS.items()},
        "step_words": {k: gettext(locale, v) for k, v in STEP_WORDS.items()},
        "kinds": {k: gettext(locale, v) for k, v in KINDS.items()},
    }


class PermitPageRoute(AnsweringRoute):
    """A citizen page's refusal is a page; the card-login refusal says where to log in with the card."""

    def answer(self, request: Request, exc: Exception) -> Response:
        if not isinstance(exc, PermitError):
            return error_page(request, exc)
        p = pages_of(request)
        current = p.session_of(request)
        locale = locale_of(request)
        if exc.code is PermitCode.E_PERMIT_CARD_LOGIN_REQUIRED:
            return p.page(request, "permits/card_login.html", {}, current, exc.status)
        context = {"title": "That did not work", "text": permit_text(locale, exc), "code": exc.code.value}
        return p.page(request, "error.html", context, current, exc.status)


class StaffPermitPageRoute(AnsweringRoute):
    def answer(self, request: Request, exc: Exception) -> Response:
        if not isinstance(exc, PermitError):
            return staff_error_page(request, exc)
        p = staff_pages_of(request)
        context = {"text": permit_text(locale_of(request), exc), "code": exc.code.value}
        return p.page(request, "staff/error.html", context, p.session_of(request), exc.status)


def require_card(p: Pages, request: Request) -> CurrentSession:
    """The session, which must come from a card login: permit records are personal (issue 13)."""
    current = p.require(request)
    if current.assurance != "card":
        raise PermitError(PermitCode.E_PERMIT_CARD_LOGIN_REQUIRED, "log in with your city card to see permits")
    return current


def _uploads(files: list[UploadFile] | None) -> list[Upload]:
    """The files a form sent (an empty file input sends one nameless empty part: skipped), read bounded."""
    out = []
    for f in files or []:
        if not f.filename:
            continue
        content = f.file.read(DOCUMENT_BYTES_MAX + 1)
        out.append(Upload(f.filename, content))
    return out


def _document_response(doc: PermitDocument) -> Response:
    ascii_name = re.sub(r"[^A-Za-z0-9._-]", "_", doc.filename)[:100] or "document"
    return Response(
        doc.content,
        media_type=doc.content_type,
        headers={
            "Content-Disposition": f'attachment; filename="{ascii_name}"',
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
        },
    )


def citizen_router() -> APIRouter:
    router = APIRouter(route_class=PermitPageRoute, include_in_schema=False)

    @router.get("/permits", response_class=HTMLResponse)
    def permits(request: Request) -> HTMLResponse:
        p = pages_of(request)
        current = require_card(p, request)
        s = _service(request)
        context = {
            "applications": s.applications_of(current.citizen_id),
            "notices": s.notices_of(current.citizen_id),
            **_words(locale_of(request)),
        }
        return p.page(request, "permits/list.html", context, current)

    @router.get("/permits/new", response_class=HTMLResponse)
    def new_form(request: Request) -> HTMLResponse:
        p = pages_of(request)
        current = require_card(p, request)
        context = {"nonce": secrets.token_urlsafe(24), "max_mib": DOCUMENT_BYTES_MAX // (1024 * 1024),
                   **_words(locale_of(request))}  # fmt: skip
        return p.page(request, "permits/new.html", context, current)

    @router.post("/permits")
    def submit(
        request: Request,
        csrf_token: Annotated[str | None, Form()] = None,
        nonce: Annotated[str | None, Form()] = None,
        kind: Annotated[str | None, Form()] = None,
        title: Annotated[str | None, Form()] = None,
        delivery: Annotated[str | None, Form()] = None,
        documents: Annotated[list[UploadFile] | None, File()] = None,
    ) -> Response:
        p = pages_of(request)
        current = require_card(p, request)
        p.csrf(request, csrf_token, current)
        if nonce is None or _NONCE.fullmatch(nonce) is None:
            raise PermitError(PermitCode.E_PERMIT_FORM, "the form is incomplete: reload it and send it again")
        application_id = application_id_of(p.config.form_key, current.citizen_id, nonce)
        done = _service(request).submit(
            current.citizen_id, application_id, kind=_text(kind), title=_text(title), delivery=_text(delivery),
            documents=_uploads(documents),
        )  # fmt: skip
        return redirect(f"/permits/{done.view.id}")

    @router.get("/permits/{application_id}", response_class=HTMLResponse)
    def detail(application_id: str, request: Request) -> HTMLResponse:
        p = pages_of(request)
        current = require_card(p, request)
        view = _service(request).application_of(current.citizen_id, application_id[:32])
        context = {"a": view, "max_mib": DOCUMENT_BYTES_MAX // (1024 * 1024), **_words(locale_of(request))}
        return p.page(request, "permits/detail.html", context, current)

    @router.post("/permits/{application_id}/documents")
    def upload(
        application_id: str,
        request: Request,
        csrf_token: Annotated[str | None, Form()] = None,
        documents: Annotated[list[UploadFile] | None, File()] = None,
    ) -> Response:
        p = pages_of(request)
        current = require_card(p, request)
        p.csrf(request, csrf_token, current)
        files = _uploads(documents)
        if not files:
            raise PermitError(PermitCode.E_PERMIT_FORM, "choose a file to upload")
        s = _service(request)
        for f in files:
            view = s.add_document(current.citizen_id, application_id[:32], f)
        return redirect(f"/permits/{view.id}")

    @router.post("/permits/{application_id}/supplement")
    def supplement(
        application_id: str,
        request: Request,
        csrf_token: Annotated[str | None, Form()] = None,
        version: Annotated[str | None, Form()] = None,
    ) -> Response:
        p = pages_of(request)
        current = require_card(p, request)
        p.csrf(request, csrf_token, current)
        done = _service(request).supplement(current.citizen_id, application_id[:32], _version(version))
        return redirect(f"/permits/{done.view.id}")

    @router.get("/permits/{application_id}/documents/{document_id}")
    def document(application_id: str, document_id: int, request: Request) -> Response:
        p = pages_of(request)
        current = require_card(p, request)
        doc, _ = _service(request).document_of(current.citizen_id, application_id[:32], document_id)
        return _document_response(doc)

    return router


def staff_router() -> APIRouter:
    router = APIRouter(prefix="/staff/permits", route_class=StaffPermitPageRoute, include_in_schema=False)

    @router.get("", response_class=HTMLResponse)
    def applications(request: Request, state: str | None = None) -> HTMLResponse:
        p = staff_pages_of(request)
        current = p.require(request, STAFF_ACTION)
        wanted = state if state in tuple(rules.State) else None
        rows = _service(request).staff_list(wanted)
        context = {"applications": rows, "state": wanted, "states": [str(s) for s in rules.State],
                   **_words(locale_of(request))}  # fmt: skip
        return p.page(request, "permits/staff_list.html", context, current)

    @router.get("/dashboard", response_class=HTMLResponse)
    def dashboard(request: Request) -> HTMLResponse:
        p = staff_pages_of(request)
        current = p.require(request, STAFF_ACTION)
        d = _service(request).dashboard()
        context = {
            "d": d,
            "online": rules.permille_text(d.online_permille),
            "target": rules.permille_text(d.online_target_permille),
            "decisions_kept": rules.permille_text(d.decisions_kept_permille),
            "certificates_kept": rules.permille_text(d.certificates_kept_permille),
        }
        return p.page(request, "permits/dashboard.html", context, current)

    @router.get("/{application_id}", response_class=HTMLResponse)
    def application(application_id: str, request: Request) -> HTMLResponse:
        p = staff_pages_of(request)
        current = p.require(request, STAFF_ACTION)
        view = _service(request).staff_view(current.actor, application_id[:32])
        context = {"a": view, "reason_steps": [str(s) for s in rules.REASON_STEPS], **_words(locale_of(request))}
        return p.page(request, "permits/staff_detail.html", context, current)

    @router.post("/{application_id}/steps/{step}")
    def act(
        application_id: str,
        step: str,
        request: Request,
        csrf_token: Annotated[str | None, Form()] = None,
        version: Annotated[str | None, Form()] = None,
        reason: Annotated[str | None, Form()] = None,
    ) -> Response:
        p = staff_pages_of(request)
        current = p.require(request, STAFF_ACTION)
        p.csrf(request, csrf_token, current)
        if not is_application_id(application_id):
            raise PermitError(PermitCode.E_PERMIT_NOT_FOUND, "no such permit application")
        done = _service(request).act(current.actor, application_id, step[:24], _version(version), _text(reason))
        return redirect(f"/staff/permits/{done.view.id}")

    @router.get("/{application_id}/documents/{document_id}")
    def document(application_id: str, document_id: int, request: Request) -> Response:
        p = staff_pages_of(request)
        current = p.require(request, STAFF_ACTION)
        return _document_response(_service(request).staff_document(current.actor, application_id[:32], document_id))

    return router


def mount_permits(app: FastAPI, service: PermitService, *, staff: bool) -> None:
    """The citizen's permit pages; with ``staff`` the clerks' too (they need the staff pages at request time)."""
    setattr(app.state, SERVICE_KEY, service)
    app.include_router(citizen_router())
    if staff:
        app.include_router(staff_router())


__all__ = [
    "SERVICE_KEY",
    "STATE_WORDS",
    "STEP_WORDS",
    "PermitPageRoute",
    "StaffPermitPageRoute",
    "application_id_of",
    "mount_permits",
    "require_card",
]
