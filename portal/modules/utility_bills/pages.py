"""The utility bill pages: look-up, the bill, pay from the purse (the bills' reader page), pay online,
the receipt; the staff download of a biller's daily file.

``docs/utility-bills.md``, "Pages". Built on ``portal.web`` and the citizen and staff pages' session
handling (``portal.pages.Pages``, ``portal.pages_staff.StaffPages``); POST-redirect-GET; every POST
checks its CSRF token first. A bill shows no personal data beyond the masked holder name and the
masked account number. The purse page is the one page here with a script (``/static/bills.js``):
it relays the portal's card commands to the reader agent, and decides nothing.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Final

from fastapi import APIRouter, FastAPI, Form, Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy.orm import Session, sessionmaker

from clearing.api import AnsweringRoute
from portal.audit import AuditLog
from portal.errors import PortalError
from portal.modules.routes import pages_of, refusal_text, staff_pages_of
from portal.modules.utility_bills import bills
from portal.modules.utility_bills.errors import CODES, BillCode, BillError
from portal.modules.utility_bills.online import OnlineBills
from portal.pages import error_page
from portal.pages_staff import staff_error_page
from portal.payments import PaymentsClient
from portal.web import gettext, locale_of, redirect

STAFF_ACTION: Final = "bills_file"  # portal.staff.ROLE_ACTIONS: finance's
KIND_WORDS: Final = {"water": "Water", "electricity": "Electricity", "gas": "Gas"}
STATE_WORDS: Final = {"open": "Open: not paid yet", "paid": "Paid"}
VIA_WORDS: Final = {"purse": "From the card purse", "online": "Online payment"}


class BillsDeps:
    """What the pages need besides the citizen pages: the database, the online payments, the audit log."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        online: OnlineBills | None,
        payments: PaymentsClient | None,
        audit: AuditLog,
        agent_url: str,
    ) -> None:
        self.sessions = sessions
        self.online = online
        self.payments = payments
        self.audit = audit
        self.agent_url = agent_url


DEPS_KEY: Final = "utility_bills_deps"


def _deps(request: Request) -> BillsDeps:
    deps = getattr(request.app.state, DEPS_KEY, None)
    assert isinstance(deps, BillsDeps), "mount_bills_pages first"
    return deps


def bill_text(locale: str, exc: BillError) -> str:
    """The refusal in the reader's language (``portal.modules.routes.refusal_text``)."""
    return refusal_text(locale, exc.message, CODES[exc.code].meaning)


class BillPageRoute(AnsweringRoute):
    def answer(self, request: Request, exc: Exception) -> Response:
        if not isinstance(exc, BillError):
            return error_page(request, exc)
        p = pages_of(request)
        context = {"title": "That did not work", "text": bill_text(locale_of(request), exc), "code": exc.code.value}
        return p.page(request, "error.html", context, p.session_of(request), exc.status)


class StaffBillPageRoute(AnsweringRoute):
    def answer(self, request: Request, exc: Exception) -> Response:
        if not isinstance(exc, BillError):
            return staff_error_page(request, exc)
        p = staff_pages_of(request)
        context = {"text": bill_text(locale_of(request), exc), "code": exc.code.value}
        return p.page(request, "staff/error.html", context, p.session_of(request), exc.status)


def _words(locale: str) -> dict[str, Any]:
    return {
        "kind_words": {k: gettext(locale, v) for k, v in KIND_WORDS.items()},
        "state_words": {k: gettext(locale, v) for k, v in STATE_WORDS.items()},
        "via_words": {k: gettext(locale, v) for k, v in VIA_WORDS.items()},
    }


def _bill_id(value: str) -> int:
    if not (value.isascii() and value.isdigit()) or len(value) > 18 or int(value) < 1:
        raise BillError(BillCode.E_BILL_NOT_FOUND, "no such bill")
    return int(value)


def citizen_router() -> APIRouter:
    router = APIRouter(route_class=BillPageRoute, include_in_schema=False)

    @router.get("/bills", response_class=HTMLResponse)
    def lookup(request: Request, biller: str | None = None, account: str | None = None) -> HTMLResponse:
        p = pages_of(request)
        current = p.require(request)
        deps = _deps(request)
        found: list[bills.BillView] | None = None
        problem: str | None = None
        with deps.sessions() as session:
            billers = bills.billers(session)
            if biller is not None and account is not None:
                try:
                    found = bills.lookup(session, biller[:64], account[:64])
                except BillError as exc:
                    problem = bill_text(locale_of(request), exc)
        context = {"billers": billers, "biller": biller or "", "account": (account or "")[:64], "found": found,
                   "problem": problem, **_words(locale_of(request))}  # fmt: skip
        return p.page(request, "utility_bills/lookup.html", context, current, 200 if problem is None else 404)

    @router.get("/bills/{bill_id}", response_class=HTMLResponse)
    def bill(bill_id: str, request: Request) -> HTMLResponse:
        p = pages_of(request)
        current = p.require(request)
        deps = _deps(request)
        with deps.sessions() as session:
            row, biller = bills.bill_of(session, _bill_id(bill_id))
            view = bills.bill_view(row, biller)
        context = {"b": view, "online": deps.online is not None, **_words(locale_of(request))}
        return p.page(request, "utility_bills/bill.html", context, current)

    @router.get("/bills/{bill_id}/purse", response_class=HTMLResponse)
    def purse(bill_id: str, request: Request) -> HTMLResponse:
        p = pages_of(request)
        current = p.require(request)
        deps = _deps(request)
        with deps.sessions() as session:
            row, biller = bills.bill_of(session, _bill_id(bill_id))
            view = bills.bill_view(row, biller)
        context = {"b": view, "agent_url": deps.agent_url, **_words(locale_of(request))}
        return p.page(request, "utility_bills/purse.html", context, current)

    @router.post("/bills/{bill_id}/online")
    def pay_online(bill_id: str, request: Request, csrf_token: Annotated[str | None, Form()] = None) -> Response:
        p = pages_of(request)
        current = p.require(request)
        p.csrf(request, csrf_token, current)
        deps = _deps(request)
        if deps.online is None:
            raise BillError(BillCode.E_BILL_PAYMENTS, "online payment is not configured here")
        started = deps.online.start(current.citizen_id, _bill_id(bill_id))
        if p.config.payments_test_mode and deps.payments is not None and started.intent_id is not None:
            # the stand-in for Stripe.js (docs/portal.md, "Test-mode payment"): the webhook marks it paid
            try:
                deps.payments.confirm_test_payment(started.intent_id)
            except PortalError as exc:
                raise BillError(BillCode.E_BILL_PAYMENTS, exc.message) from None
        return redirect(f"/bills/{started.bill_id}?payment={started.payment_id}")

    @router.get("/bills/{bill_id}/receipt", response_class=HTMLResponse)
    def receipt(bill_id: str, request: Request) -> HTMLResponse:
        p = pages_of(request)
        current = p.require(request)
        deps = _deps(request)
        with deps.sessions() as session:
            row, biller = bills.bill_of(session, _bill_id(bill_id))
            view = bills.bill_view(row, biller)
        if view.state != "paid":
            raise BillError(BillCode.E_BILL_NOT_FOUND, "this bill is not paid yet: there is no receipt")
        return p.page(request, "utility_bills/receipt.html", {"b": view, **_words(locale_of(request))}, current)

    return router


def staff_router() -> APIRouter:
    router = APIRouter(prefix="/staff/bills", route_class=StaffBillPageRoute, include_in_schema=False)

    @router.get("", response_class=HTMLResponse)
    def files(request: Request) -> HTMLResponse:
        p = staff_pages_of(request)
        current = p.require(request, STAFF_ACTION)
        with _deps(request).sessions() as session:
            billers = bills.billers(session)
        context = {"billers": billers, "today": dt.date.today().isoformat()}
        return p.page(request, "utility_bills/staff_files.html", context, current)

    @router.get("/file")
    def file(request: Request, biller: str = "", date: str = "") -> Response:
        p = staff_pages_of(request)
        current = p.require(request, STAFF_ACTION)
        deps = _deps(request)
        try:
            day = dt.date.fromisoformat(date[:10])
        except ValueError:
            raise BillError(BillCode.E_BILL_MALFORMED, "the business day is YYYY-MM-DD") from None
        with deps.sessions() as session, session.begin():
            text = bills.daily_file(session, biller[:64], day)
            deps.audit.record(session, actor=current.actor, action=STAFF_ACTION,
                              target=f"biller:{biller[:64]}", detail=f"day {day.isoformat()}")  # fmt: skip
        name = f"{biller[:64]}-{day:%Y%m%d}.csv"
        return Response(
            text.encode("utf-8"),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{name}"', "Cache-Control": "no-store"},
        )

    return router


def mount_bills_pages(app: FastAPI, deps: BillsDeps, *, staff: bool) -> None:
    setattr(app.state, DEPS_KEY, deps)
    app.include_router(citizen_router())
    if staff:
        app.include_router(staff_router())


__all__ = ["BillPageRoute", "BillsDeps", "StaffBillPageRoute", "bill_text", "mount_bills_pages"]
