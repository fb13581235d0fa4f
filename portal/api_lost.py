"""The citizen's lost-card routes under ``/api``: report a bound card lost, list the reports.

``docs/portal.md``, "Lost cards and replacement". A report needs a session (account or card
login) and its CSRF token, and a card bound to the session's citizen; reporting twice answers
the same report (``200``) where the first made it (``201``). Errors are the portal's
``{"code", "message"}`` (``portal.api.PortalRoute``).
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Final

from fastapi import APIRouter, FastAPI, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from portal.api import ErrorOut, PortalRoute
from portal.api_auth import CsrfCitizen, CurrentCitizen, client_ip
from portal.lost_cards import LostCardService, ReportView

STATE_KEY: Final = "portal_lost_cards"
_ERRORS: dict[int | str, dict[str, Any]] = {s: {"model": ErrorOut} for s in (401, 403, 404, 409, 422, 429, 503)}


class LostIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    issuer_id: Annotated[str, Field(pattern=r"^[0-9A-Fa-f]{16}$")]
    card_asn: Annotated[str, Field(pattern=r"^[0-9A-Fa-f]{20}$")]


class ReportOut(BaseModel):
    report_id: int
    issuer_id: str
    card_asn: str
    state: str
    reported_at: dt.datetime
    replacement_due_at: dt.datetime

    @classmethod
    def of(cls, v: ReportView) -> ReportOut:
        return cls(
            report_id=v.report_id, issuer_id=v.issuer_id, card_asn=v.card_asn, state=v.state,
            reported_at=v.reported_at, replacement_due_at=v.replacement_due_at,
        )  # fmt: skip


class ReportsOut(BaseModel):
    reports: list[ReportOut]


def lost_service_of(request: Request) -> LostCardService:
    service = getattr(request.app.state, STATE_KEY, None)
    assert isinstance(service, LostCardService), "lost-card routes need mount_lost_cards first"
    return service


def lost_router() -> APIRouter:
    router = APIRouter(prefix="/api", route_class=PortalRoute, tags=["portal lost cards"])

    @router.post(
        "/lost-cards", status_code=201, response_model=ReportOut, responses={200: {"model": ReportOut}, **_ERRORS}
    )
    def report_lost(body: LostIn, current: CsrfCitizen, request: Request, response: Response) -> ReportOut:
        view = lost_service_of(request).report(current, body.issuer_id, body.card_asn, client_ip=client_ip(request))
        if not view.new:
            response.status_code = 200
        return ReportOut.of(view)

    @router.get("/lost-cards", response_model=ReportsOut, responses=_ERRORS)
    def my_reports(current: CurrentCitizen, request: Request) -> ReportsOut:
        return ReportsOut(reports=[ReportOut.of(v) for v in lost_service_of(request).reports(current)])

    return router


def mount_lost_cards(app: FastAPI, service: LostCardService) -> None:
    setattr(app.state, STATE_KEY, service)
    app.include_router(lost_router())


__all__ = ["STATE_KEY", "lost_router", "lost_service_of", "mount_lost_cards"]
