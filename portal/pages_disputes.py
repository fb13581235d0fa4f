"""The staff console's dispute pages under ``/staff/disputes``: interop disputes with the peer city.

Issue 12, "Disputes"; the rules are ``interop_xian.disputes`` (``docs/interop.md``, "Disputes"),
which these pages only call: a move made here is checked, recorded and posted exactly as anywhere
else, and a line of the portal's audit log (``portal.audit``) is written in the same transaction.
Built on ``portal.pages_staff`` (staff session, CSRF, role checks, error page); no JavaScript.

- **Roles** (``portal.staff.ROLE_ACTIONS``): ``disputes_view`` and ``dispute_move`` (finance).
- **Our side only.** A dispute's page offers the moves that belong to our side of it (its
  ``role``: the issuer's or the acquirer's); the peer's moves arrive over the channel.
- **Refusals** (a move the state machine does not allow, a deadline passed, bad text) are the
  console's error page with the interop code and its status, never a 500.
- **Personal data:** a dispute names an item (city, terminal, sequence, digest) and an amount;
  no card number, no name.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable
from typing import Annotated, Final

from fastapi import APIRouter, FastAPI, Form, Request
from fastapi.responses import HTMLResponse, Response

from clearing.business_day import BusinessDayClock
from interop_xian import disputes
from interop_xian.errors import InteropCode, InteropError
from portal.pages_staff import STATE_KEY as STAFF_STATE_KEY
from portal.pages_staff import StaffPageRoute, StaffPages
from portal.staff import may
from portal.web import redirect

STATE_KEY: Final = "portal_dispute_pages"
FIELD_CHARS_MAX: Final = 4000
LISTED_MAX: Final = 200


@dataclasses.dataclass(frozen=True)
class DisputePages:
    days: BusinessDayClock
    clock: Callable[[], dt.datetime]
    add_working_days: disputes.AddWorkingDays | None = None  # None: China's official calendar


class DisputesPageRoute(StaffPageRoute):
    """The console's error page, with interop's refusals shown by their code and status."""

    def answer(self, request: Request, exc: Exception) -> Response:
        if isinstance(exc, InteropError):
            staff = _staff_pages(request)
            context = {"text": exc.message, "code": exc.code.value}
            return staff.page(request, "staff/error.html", context, staff.session_of(request), exc.status)
        return super().answer(request, exc)


def _staff_pages(request: Request) -> StaffPages:
    pages = getattr(request.app.state, STAFF_STATE_KEY, None)
    assert isinstance(pages, StaffPages), "mount_staff_pages before mount_dispute_pages"
    return pages


def _dispute_pages(request: Request) -> DisputePages:
    pages = getattr(request.app.state, STATE_KEY, None)
    assert isinstance(pages, DisputePages), "mount_dispute_pages first"
    return pages


def own_moves(state: str, role: str) -> list[str]:
    """The states our side (``role``) may move a dispute in ``state`` to."""
    return sorted(to.value for (frm, to), side in disputes.MOVES.items() if frm.value == state and side.value == role)


def disputes_router() -> APIRouter:
    router = APIRouter(prefix="/staff/disputes", route_class=DisputesPageRoute, include_in_schema=False)

    @router.get("", response_class=HTMLResponse)
    def listing(request: Request, state: str | None = None) -> HTMLResponse:
        staff = _staff_pages(request)
        current = staff.require(request, "disputes_view")
        wanted = state if state in {s.value for s in disputes.State} else None
        with staff.console.audit.sessions() as session:
            rows = disputes.listing(session, state=wanted, limit=LISTED_MAX)
        staff.console.audit.record_now(actor=current.actor, action="disputes_view", detail=f"{len(rows)} disputes")
        context = {"disputes": rows, "state": wanted, "states": [s.value for s in disputes.State]}
        return staff.page(request, "staff/disputes.html", context, current)

    @router.get("/{dispute_id}", response_class=HTMLResponse)
    def detail(dispute_id: int, request: Request) -> HTMLResponse:
        staff = _staff_pages(request)
        current = staff.require(request, "disputes_view")
        with staff.console.audit.sessions() as session:
            dispute = disputes.get(session, dispute_id)
            events = disputes.events(session, dispute_id)
        moves = own_moves(dispute.state, dispute.role) if may(current.role, "dispute_move") else []
        context = {"d": dispute, "events": events, "moves": moves}
        return staff.page(request, "staff/disputes_detail.html", context, current)

    @router.post("/{dispute_id}/move")
    def move(
        dispute_id: int,
        request: Request,
        csrf_token: Annotated[str | None, Form()] = None,
        to: Annotated[str | None, Form()] = None,
        note: Annotated[str | None, Form()] = None,
        evidence: Annotated[str | None, Form()] = None,
    ) -> Response:
        staff, pages = _staff_pages(request), _dispute_pages(request)
        current = staff.require(request, "dispute_move")
        staff.csrf(request, csrf_token, current)
        target = (to or "").strip()
        if target not in {s.value for s in disputes.State}:
            raise InteropError(InteropCode.E_DISPUTE_TRANSITION, f"{target[:40]!r} is not a dispute state")
        kw = {} if pages.add_working_days is None else {"add_working_days": pages.add_working_days}
        try:
            _move(staff, pages, current.actor, dispute_id, target, note, evidence, kw)
        except InteropError as exc:
            staff.console.audit.record_now(actor=current.actor, action="dispute_move", target=_audit_target(dispute_id),
                                           outcome=exc.code.value, detail=f"to {target}")  # fmt: skip
            raise
        return redirect(f"/staff/disputes/{dispute_id}")

    return router


def _audit_target(dispute_id: int) -> str:
    """The audit line's target: an id from the URL too long for any dispute would read as an unmasked number."""
    return f"dispute:{dispute_id}" if 0 < dispute_id < 10**10 else "dispute:(no such id)"


def _move(
    staff: StaffPages, pages: DisputePages, actor: str, dispute_id: int, target: str, note: str | None,
    evidence: str | None, kw: dict[str, disputes.AddWorkingDays],
) -> disputes.Moved:  # fmt: skip
    """The move and its audit line, in one transaction."""
    with staff.console.audit.sessions() as session, session.begin():
        dispute = disputes.get(session, dispute_id)
        moved = disputes.move(
            session, dispute_id, disputes.State(target), by=disputes.Side(dispute.role), actor=actor,
            now=pages.clock(), note=(note or "")[:FIELD_CHARS_MAX], days=pages.days,
            evidence=(evidence or "")[:FIELD_CHARS_MAX] if evidence else None,
            add_working_days=kw.get("add_working_days", disputes.DEFAULT_ADD_WORKING_DAYS),
        )  # fmt: skip
        staff.console.audit.record(
            session, actor=actor, action="dispute_move", target=f"dispute:{dispute_id}",
            detail=f"{moved.from_state} -> {moved.to_state}",
        )  # fmt: skip
    return moved


def mount_dispute_pages(
    app: FastAPI, *, days: BusinessDayClock, clock: Callable[[], dt.datetime],
    add_working_days: disputes.AddWorkingDays | None = None,
) -> None:  # fmt: skip
    """The dispute pages (after ``portal.pages_staff.mount_staff_pages``, whose session and CSRF they use)."""
    assert isinstance(getattr(app.state, STAFF_STATE_KEY, None), StaffPages), "mount_staff_pages first"
    setattr(app.state, STATE_KEY, DisputePages(days, clock, add_working_days))
    app.include_router(disputes_router())


__all__ = ["DisputePages", "DisputesPageRoute", "disputes_router", "mount_dispute_pages", "own_moves"]
