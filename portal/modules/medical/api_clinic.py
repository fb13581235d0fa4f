"""The clinic terminal's API: ``/medical/v1/clinics/{terminal_id}/visits`` (bearer token of the terminal).

Not under ``/v1``: that prefix is the terminal contract's, whose catch-all answers every unknown
path there. The token is checked as for batches (``clearing.registry.check_terminal_token``:
401 / 403). Every failure is ``{code, message}`` with a code of ``MedicalCode`` or
``E_MED_MALFORMED``-like 422s; nothing answers 500 (``AnsweringRoute``).

| method and path | answers |
| --- | --- |
| ``POST …/visits`` | the visit, ``reserved`` (``settled`` when the purse owes nothing); 401/403; 404
  ``E_MED_NOT_ENROLLED``; 409 ``E_MED_VISIT_OPEN``/``_CONFLICT``; 422 ``E_MED_BAD_BILL``/``_NO_RULE`` |
| ``GET …/visits?issuer_id=&card_asn=`` | ``{"visits": [...]}``: the card's reserved visit here, if any |
| ``GET …/visits/{ref}`` | the visit |
| ``POST …/visits/{ref}/confirm`` ``{record}`` | ``settled``; 422 ``E_MED_PURSE_RECORD``/``_TAC`` |
| ``POST …/visits/{ref}/cancel`` | ``cancelled``; 409 ``E_MED_VISIT_STATE`` when settled |
"""

from __future__ import annotations

import logging
import re
from typing import Annotated, Any, Literal, TypeVar

import msgspec
from fastapi import APIRouter, FastAPI, Header, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from clearing import registry
from clearing.api import AnsweringRoute
from clearing.contract import TapRecord
from portal.modules.medical.errors import MedicalError
from portal.modules.medical.rules import VisitKind
from portal.modules.medical.visits import VisitQuote, VisitRequest, VisitService

log = logging.getLogger(__name__)
PREFIX = "/medical/v1/clinics/{terminal_id}/visits"
_Auth = Annotated[str | None, Header()]
_M = TypeVar("_M", bound=BaseModel)
BODY_BYTES_MAX = 64 * 1024
_HEX16 = re.compile(r"[0-9A-Fa-f]{16}")
_HEX20 = re.compile(r"[0-9A-Fa-f]{20}")


def _body(code: str, message: str, status: int) -> JSONResponse:
    return JSONResponse({"code": code, "message": message}, status_code=status)


def medical_error(exc: Exception) -> JSONResponse:
    if isinstance(exc, MedicalError):
        return _body(exc.code.value, exc.message, exc.status)
    if isinstance(exc, _Refusal):
        return _body(exc.code, exc.message, exc.status)
    if isinstance(exc, RequestValidationError):
        where = ", ".join(".".join(str(p) for p in e.get("loc", ())) for e in exc.errors()[:5])
        return _body("E_MED_MALFORMED", f"the request does not read: {where}", 422)
    if isinstance(exc, StarletteHTTPException) and 400 <= exc.status_code < 500:
        return _body("E_MED_MALFORMED", "the request body does not read", 422)
    log.exception("unexpected fault in the clinic API", exc_info=exc)
    return _body("E_MED_UNAVAILABLE", "the clinic host could not finish; retry", 503)


class MedicalRoute(AnsweringRoute):
    def answer(self, request: Request, exc: Exception) -> Response:
        return medical_error(exc)


class _Refusal(Exception):
    def __init__(self, code: str, message: str, status: int) -> None:
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


class OpenBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    visit_ref: str = Field(pattern=r"^[A-Za-z0-9_-]{8,64}$")
    issuer_id: str = Field(pattern=r"^[0-9A-Fa-f]{16}$")
    card_asn: str = Field(pattern=r"^[0-9A-Fa-f]{20}$")
    kind: Literal["outpatient", "inpatient"]
    total_fen: int = Field(ge=0, le=100_000_000, strict=True)
    covered_fen: int = Field(ge=0, le=100_000_000, strict=True)
    certificate_b64: str = Field(min_length=1, max_length=8192)
    signature_b64: str = Field(min_length=1, max_length=256)


class ConfirmBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    record: dict[str, Any]


def visit_json(quote: VisitQuote) -> dict[str, Any]:
    """The visit as the terminal reads it (``terminals.clinic.VisitAnswer``)."""
    return {
        "visit_ref": quote.visit_ref,
        "state": quote.state,
        "kind": quote.kind,
        "rule_version": quote.rule_version,
        "hospital_level": quote.hospital_level,
        "total_fen": quote.total_fen,
        "covered_fen": quote.covered_fen,
        "deductible_fen": quote.deductible_fen,
        "fund_fen": quote.fund_fen,
        "patient_fen": quote.patient_fen,
        "limited_by": quote.limited_by,
    }


def router(service: VisitService) -> APIRouter:
    api = APIRouter(route_class=MedicalRoute, tags=["medical clinic"])

    def authenticate(terminal_id: str, authorization: str | None) -> str:
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise _Refusal("E_UNAUTHORIZED", "a bearer token is required", 401)
        with service.sessions() as session:
            check, _ = registry.check_terminal_token(session, terminal_id, token)
        if check is registry.TokenCheck.OTHER_TERMINAL:
            raise _Refusal("E_FORBIDDEN", "this token is another terminal's", 403)
        if check is not registry.TokenCheck.OK:
            raise _Refusal("E_UNAUTHORIZED", "the token does not verify for this terminal", 401)
        return terminal_id.lower()

    async def read(request: Request, model: type[_M]) -> _M:
        """The body, once the token has passed: size-limited, then validated (422 ``E_MED_MALFORMED``)."""
        raw = await request.body()
        if len(raw) > BODY_BYTES_MAX:
            raise _Refusal("E_MED_MALFORMED", f"the body is longer than {BODY_BYTES_MAX} bytes", 413)
        try:
            return model.model_validate_json(raw)
        except ValidationError as exc:
            where = ", ".join(".".join(str(p) for p in e.get("loc", ())) or "body" for e in exc.errors()[:5])
            raise _Refusal("E_MED_MALFORMED", f"the request does not read: {where}", 422) from None

    @api.post(PREFIX)
    async def open_visit(terminal_id: str, request: Request, authorization: _Auth = None) -> dict[str, Any]:
        tid = await run_in_threadpool(authenticate, terminal_id, authorization)
        body = await read(request, OpenBody)
        req = VisitRequest(
            body.visit_ref, body.issuer_id, body.card_asn, VisitKind(body.kind), body.total_fen, body.covered_fen,
            body.certificate_b64, body.signature_b64,
        )  # fmt: skip
        return visit_json(await run_in_threadpool(service.open, tid, req))

    @api.get(PREFIX)
    async def reserved_visits(
        terminal_id: str, issuer_id: str = "", card_asn: str = "", authorization: _Auth = None
    ) -> dict[str, Any]:
        """The card's reserved visit at this clinic (``visits``: empty or one), for a restarted terminal."""
        tid = await run_in_threadpool(authenticate, terminal_id, authorization)
        if _HEX16.fullmatch(issuer_id) is None or _HEX20.fullmatch(card_asn) is None:
            raise _Refusal("E_MED_MALFORMED", "issuer_id is 16 hex digits and card_asn 20", 422)
        quote = await run_in_threadpool(service.reserved_for_card, tid, issuer_id, card_asn)
        return {"visits": [] if quote is None else [visit_json(quote)]}

    @api.get(PREFIX + "/{visit_ref}")
    async def get_visit(terminal_id: str, visit_ref: str, authorization: _Auth = None) -> dict[str, Any]:
        tid = await run_in_threadpool(authenticate, terminal_id, authorization)
        return visit_json(await run_in_threadpool(service.get, tid, visit_ref))

    @api.post(PREFIX + "/{visit_ref}/confirm")
    async def confirm_visit(
        terminal_id: str, visit_ref: str, request: Request, authorization: _Auth = None
    ) -> dict[str, Any]:
        tid = await run_in_threadpool(authenticate, terminal_id, authorization)
        body = await read(request, ConfirmBody)
        try:
            record = msgspec.convert(body.record, TapRecord)
        except msgspec.ValidationError as exc:
            raise _Refusal("E_MED_MALFORMED", f"the purse record does not read: {exc}", 422) from None
        return visit_json(await run_in_threadpool(service.confirm, tid, visit_ref, record))

    @api.post(PREFIX + "/{visit_ref}/cancel")
    async def cancel_visit(terminal_id: str, visit_ref: str, authorization: _Auth = None) -> dict[str, Any]:
        tid = await run_in_threadpool(authenticate, terminal_id, authorization)
        return visit_json(await run_in_threadpool(service.cancel, tid, visit_ref))

    return api


def mount_clinic_api(app: FastAPI, service: VisitService) -> None:
    """Add the clinic API to an application (``yikatong.app``, or a test's clearing app)."""
    app.include_router(router(service))


__all__ = ["PREFIX", "mount_clinic_api", "router", "visit_json"]
