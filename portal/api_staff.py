"""The staff console's JSON routes under ``/staff/api``: login, cards, replacement, unblock, refunds, staff.

``docs/portal.md``, "Staff console". The session is the ``yk_staff`` cookie (HttpOnly,
``SameSite=Strict``, ``Path=/staff``, Secure outside development), apart from the citizens'
``yk_session``; every state-changing route also needs ``X-CSRF-Token`` equal to the session's
token. Each route asks ``StaffService.require`` whether the session's role may do its action
(``portal.staff.ROLE_ACTIONS``), and every action is an audit line. Errors are the portal's
``{"code", "message"}`` (``portal.api.PortalRoute``); nothing answers 500.
"""

from __future__ import annotations

import datetime as dt
import hmac
from dataclasses import dataclass
from typing import Annotated, Any, Final

from fastapi import APIRouter, Cookie, Depends, FastAPI, Header, Path, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from clearing import replacement
from portal.api import ErrorOut, PortalRoute
from portal.api_auth import CSRF_CHARS_MAX, CSRF_HEADER, client_ip
from portal.audit import AuditLog
from portal.errors import Code, PortalError
from portal.lost_cards import CardSummary, LostCardService, ReplacementView
from portal.models import PortalOutbox
from portal.staff import StaffService, StaffSession, StaffView
from portal.topup_service import TopupService
from portal.topups import RefundReason

STAFF_COOKIE: Final = "yk_staff"
STAFF_COOKIE_PATH: Final = "/staff"
STATE_KEY: Final = "portal_staff_console"
TEXT_CHARS_MAX: Final = 256
NOTICES_MAX: Final = 200
AUDIT_ID_MAX: Final = 2**63 - 1  # a BIGINT: a larger cursor is no row id (the database would refuse it)
_ERRORS: dict[int | str, dict[str, Any]] = {s: {"model": ErrorOut} for s in (401, 403, 404, 409, 422, 429, 503)}


@dataclass(frozen=True, slots=True)
class StaffConsole:
    """What the staff routes need, put on ``app.state`` by ``mount_staff``."""

    staff: StaffService
    lost: LostCardService
    audit: AuditLog
    topups: TopupService | None = None
    secure_cookies: bool = True


def console_of(request: Request) -> StaffConsole:
    console = getattr(request.app.state, STATE_KEY, None)
    assert isinstance(console, StaffConsole), "staff routes need mount_staff first"
    return console


def current_staff(request: Request, yk_staff: Annotated[str | None, Cookie()] = None) -> StaffSession:
    return console_of(request).staff.current(yk_staff)


CurrentStaff = Annotated[StaffSession, Depends(current_staff)]


def csrf_staff(current: CurrentStaff, x_csrf_token: Annotated[str | None, Header()] = None) -> StaffSession:
    sent = (x_csrf_token or "")[:CSRF_CHARS_MAX].encode("utf-8", "replace")
    if not sent or not hmac.compare_digest(sent, current.csrf_token.encode("ascii")):
        raise PortalError(Code.E_CSRF, f"send the staff session's CSRF token in {CSRF_HEADER}")
    return current


CsrfStaff = Annotated[StaffSession, Depends(csrf_staff)]


def mask_topup(topup_id: str) -> str:
    """A top-up id as the audit log holds it (hex ids can hold long digit runs)."""
    return f"{topup_id[:11]}…{topup_id[-4:]}" if len(topup_id) > 15 else topup_id


def staff_notices(console: StaffConsole) -> list[tuple[str, str, dt.datetime | None]]:
    """(code, message, when) of what staff should look at: replacement shortfalls, then top-up notices."""
    out: list[tuple[str, str, dt.datetime | None]] = []
    with console.lost.sessions() as session:
        for s in replacement.shortfalls(session):
            out.append((
                Code.N_LATE_AFTER_REPLACEMENT.value,
                f"replaced card {s.card_asn} (issuer {s.issuer_id}): late records hold {s.held_fen} fen, "
                f"its account {s.available_fen} fen; {s.shortfall_fen} fen to recover",
                None,
            ))  # fmt: skip
        rows = session.scalars(
            select(PortalOutbox)
            .where(PortalOutbox.kind == "notice")
            .order_by(PortalOutbox.id.desc())
            .limit(NOTICES_MAX)
        )
        for row in rows:
            out.append((str(row.payload.get("code", "")), str(row.payload.get("message", "")), row.created_at))
    return out


# --- bodies and answers ----------------------------------------------------------------------


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class LoginIn(_In):
    username: Annotated[str, Field(max_length=64)]
    password: Annotated[str, Field(max_length=TEXT_CHARS_MAX)]
    totp: Annotated[str, Field(max_length=16)]


class CardIn(_In):
    issuer_id: Annotated[str, Field(pattern=r"^[0-9A-Fa-f]{16}$")]
    card_asn: Annotated[str, Field(pattern=r"^[0-9A-Fa-f]{20}$")]


class RefundIn(_In):
    topup_id: Annotated[str, Field(pattern=r"^tu_[0-9a-f]{32}$")]


class StaffIn(_In):
    username: Annotated[str, Field(max_length=64)]
    role: Annotated[str, Field(max_length=32)]
    password: Annotated[str, Field(max_length=TEXT_CHARS_MAX)]


class StaffSessionOut(BaseModel):
    username: str
    role: str
    csrf_token: str
    expires_at: dt.datetime


class ReportOut(BaseModel):
    state: str
    reported_at: dt.datetime
    replacement_due_at: dt.datetime


class CardOut(BaseModel):
    issuer_id: str
    card_asn: str
    card_type: str
    status: str
    expiry_date: dt.date
    shadow_balance_fen: int
    ledger_balance_fen: int
    holder_name_masked: str | None
    citizen_mobile_masked: str | None
    citizen_name_masked: str | None
    citizen_id_number_masked: str | None
    lost_report: ReportOut | None
    replaced_by_asn: str | None
    open_loads: int
    held_fen: int

    @classmethod
    def of(cls, s: CardSummary) -> CardOut:
        report = (
            ReportOut(state=s.report.state, reported_at=s.report.reported_at,
                      replacement_due_at=s.report.replacement_due_at)
            if s.report is not None else None
        )  # fmt: skip
        return cls(
            issuer_id=s.issuer_id, card_asn=s.card_asn, card_type=s.card_type, status=s.status,
            expiry_date=s.expiry_date, shadow_balance_fen=s.shadow_balance_fen,
            ledger_balance_fen=s.ledger_balance_fen, holder_name_masked=s.holder_name_masked,
            citizen_mobile_masked=s.citizen_mobile_masked, citizen_name_masked=s.citizen_name_masked,
            citizen_id_number_masked=s.citizen_id_number_masked, lost_report=report,
            replaced_by_asn=s.replaced_by_asn, open_loads=s.open_loads, held_fen=s.held_fen,
        )  # fmt: skip


class CardsOut(BaseModel):
    cards: list[CardOut]


class ReplacementOut(BaseModel):
    issuer_id: str
    old_card_asn: str
    new_card_asn: str
    moved_fen: int
    retained_fen: int
    held_fen: int
    liability_fen: int
    shadow_fen: int
    transfer_id: str | None
    replaced_at: dt.datetime
    replayed: bool
    pin: str | None  # the new card's PIN, in this answer only
    image_ref: str | None

    @classmethod
    def of(cls, v: ReplacementView) -> ReplacementOut:
        return cls(
            issuer_id=v.issuer_id, old_card_asn=v.old_card_asn, new_card_asn=v.new_card_asn, moved_fen=v.moved_fen,
            retained_fen=v.retained_fen, held_fen=v.held_fen, liability_fen=v.liability_fen, shadow_fen=v.shadow_fen,
            transfer_id=v.transfer_id, replaced_at=v.replaced_at, replayed=v.replayed, pin=v.pin,
            image_ref=v.image_ref,
        )  # fmt: skip


class RefundOut(BaseModel):
    topup_id: str
    state: str
    paid_fen: int
    loaded_fen: int
    refunded_fen: int


class NoticeOut(BaseModel):
    code: str
    message: str
    at: dt.datetime | None


class NoticesOut(BaseModel):
    notices: list[NoticeOut]


class StaffOut(BaseModel):
    username: str
    role: str
    active: bool
    created_at: dt.datetime

    @classmethod
    def of(cls, v: StaffView) -> StaffOut:
        return cls(username=v.username, role=v.role, active=v.active, created_at=v.created_at)


class StaffListOut(BaseModel):
    staff: list[StaffOut]


class NewStaffOut(BaseModel):
    staff: StaffOut
    provisioning_uri: str  # the TOTP secret, shown once


class AuditOut(BaseModel):
    id: int
    at: dt.datetime
    actor: str
    action: str
    target: str
    outcome: str
    detail: str


class AuditListOut(BaseModel):
    lines: list[AuditOut]


def _session_out(s: StaffSession) -> StaffSessionOut:
    return StaffSessionOut(username=s.username, role=s.role, csrf_token=s.csrf_token, expires_at=s.expires_at)


# --- the routes -------------------------------------------------------------------------------


def staff_router() -> APIRouter:
    router = APIRouter(prefix="/staff/api", route_class=PortalRoute, tags=["staff console"])

    @router.post("/sessions", status_code=201, response_model=StaffSessionOut, responses=_ERRORS)
    def login(body: LoginIn, request: Request, response: Response) -> StaffSessionOut:
        console = console_of(request)
        new = console.staff.login(
            body.username, body.password, body.totp, client_ip=client_ip(request),
            previous_token=request.cookies.get(STAFF_COOKIE),
        )  # fmt: skip
        response.set_cookie(
            STAFF_COOKIE, new.token, max_age=console.staff.session_ttl_s, path=STAFF_COOKIE_PATH, httponly=True,
            samesite="strict", secure=console.secure_cookies,
        )  # fmt: skip
        return _session_out(new.session)

    @router.delete("/sessions/current", status_code=204, responses=_ERRORS)
    def logout(current: CsrfStaff, request: Request, response: Response) -> Response:
        console = console_of(request)
        console.staff.logout(current)
        response.status_code = 204
        response.delete_cookie(
            STAFF_COOKIE, path=STAFF_COOKIE_PATH, httponly=True, samesite="strict", secure=console.secure_cookies
        )
        return response

    @router.get("/me", response_model=StaffSessionOut, responses=_ERRORS)
    def me(current: CurrentStaff) -> StaffSessionOut:
        return _session_out(current)

    # --- counter clerk ----------------------------------------------------------------------

    @router.get("/cards", response_model=CardsOut, responses=_ERRORS)
    def search_cards(
        current: CurrentStaff, request: Request, q: Annotated[str, Query(min_length=1, max_length=64)]
    ) -> CardsOut:
        console = console_of(request)
        console.staff.require(current, "card_search")
        return CardsOut(cards=[CardOut.of(c) for c in console.lost.search(current, q)])

    @router.get("/cards/{issuer_id}/{card_asn}", response_model=CardOut, responses=_ERRORS)
    def view_card(
        current: CurrentStaff,
        request: Request,
        issuer_id: Annotated[str, Path(pattern=r"^[0-9A-Fa-f]{16}$")],
        card_asn: Annotated[str, Path(pattern=r"^[0-9A-Fa-f]{20}$")],
    ) -> CardOut:
        console = console_of(request)
        console.staff.require(current, "card_view")
        return CardOut.of(console.lost.view(current, issuer_id, card_asn))

    @router.post(
        "/replacements", status_code=201, response_model=ReplacementOut, responses={200: {"model": ReplacementOut},
                                                                                     **_ERRORS}
    )  # fmt: skip
    def replace_card(body: CardIn, current: CsrfStaff, request: Request, response: Response) -> ReplacementOut:
        console = console_of(request)
        console.staff.require(current, "replacement")
        view = console.lost.replace(current, body.issuer_id, body.card_asn)
        if view.replayed:
            response.status_code = 200
        return ReplacementOut.of(view)

    @router.post("/unblocks", response_model=CardOut, responses=_ERRORS)
    def unblock_card(body: CardIn, current: CsrfStaff, request: Request) -> CardOut:
        console = console_of(request)
        console.staff.require(current, "unblock")
        return CardOut.of(console.lost.unblock(current, body.issuer_id, body.card_asn))

    # --- finance ----------------------------------------------------------------------------

    @router.post("/refunds", response_model=RefundOut, responses=_ERRORS)
    def refund_topup(body: RefundIn, current: CsrfStaff, request: Request) -> RefundOut:
        console = console_of(request)
        console.staff.require(current, "refund")
        target = f"topup:{mask_topup(body.topup_id)}"
        if console.topups is None:
            raise PortalError(Code.E_PORTAL_UNAVAILABLE, "this server has no top-up service")
        try:
            view = console.topups.request_refund(body.topup_id, RefundReason.STAFF)
        except PortalError as exc:
            console.audit.record_now(actor=current.actor, action="refund", target=target, outcome=exc.code.value)
            raise
        detail = f"state {view.state}, refunded {view.refunded_fen} fen of {view.paid_fen}"
        console.audit.record_now(actor=current.actor, action="refund", target=target, detail=detail)
        return RefundOut(topup_id=view.topup_id, state=view.state, paid_fen=view.paid_fen,
                         loaded_fen=view.loaded_fen, refunded_fen=view.refunded_fen)  # fmt: skip

    @router.get("/notices", response_model=NoticesOut, responses=_ERRORS)
    def notices(current: CurrentStaff, request: Request) -> NoticesOut:
        console = console_of(request)
        console.staff.require(current, "notices_view")
        out = [NoticeOut(code=c, message=m, at=at) for c, m, at in staff_notices(console)]
        console.audit.record_now(actor=current.actor, action="notices_view", detail=f"{len(out)} notices")
        return NoticesOut(notices=out)

    # --- administrator ----------------------------------------------------------------------

    @router.get("/staff", response_model=StaffListOut, responses=_ERRORS)
    def list_staff(current: CurrentStaff, request: Request) -> StaffListOut:
        console = console_of(request)
        console.staff.require(current, "staff_list")
        return StaffListOut(staff=[StaffOut.of(v) for v in console.staff.accounts(actor=current.actor)])

    @router.post("/staff", status_code=201, response_model=NewStaffOut, responses=_ERRORS)
    def add_staff(body: StaffIn, current: CsrfStaff, request: Request) -> NewStaffOut:
        console = console_of(request)
        console.staff.require(current, "staff_add")
        new = console.staff.add(body.username, body.role, body.password, actor=current.actor)
        return NewStaffOut(staff=StaffOut.of(new.staff), provisioning_uri=new.provisioning_uri)

    @router.post("/staff/{username}/totp", response_model=NewStaffOut, responses=_ERRORS)
    def reset_totp(username: Annotated[str, Path(max_length=64)], current: CsrfStaff, request: Request) -> NewStaffOut:
        console = console_of(request)
        console.staff.require(current, "staff_reset_totp")
        new = console.staff.reset_totp(username, actor=current.actor)
        return NewStaffOut(staff=StaffOut.of(new.staff), provisioning_uri=new.provisioning_uri)

    @router.get("/audit", response_model=AuditListOut, responses=_ERRORS)
    def audit_log(
        current: CurrentStaff,
        request: Request,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        before_id: Annotated[int | None, Query(ge=1, le=AUDIT_ID_MAX)] = None,
    ) -> AuditListOut:
        console = console_of(request)
        console.staff.require(current, "audit_view")
        lines = console.audit.lines(limit=limit, before_id=before_id)
        console.audit.record_now(actor=current.actor, action="audit_view", detail=f"{len(lines)} lines")
        return AuditListOut(lines=[AuditOut(id=x.id, at=x.at, actor=x.actor, action=x.action, target=x.target,
                                            outcome=x.outcome, detail=x.detail) for x in lines])  # fmt: skip

    return router


def mount_staff(app: FastAPI, console: StaffConsole) -> None:
    setattr(app.state, STATE_KEY, console)
    app.include_router(staff_router())


__all__ = [
    "STAFF_COOKIE",
    "STATE_KEY",
    "CsrfStaff",
    "CurrentStaff",
    "StaffConsole",
    "console_of",
    "mount_staff",
    "staff_notices",
]
