"""The staff console's payee pages under ``/staff/parties``: merchants and bus operators, and their statements.

Issue 11, "Parties" and "Operator console and reports"; ``docs/settlement.md``, "Console: parties
and statements". The pages change payees only through the functions ``yikatong merchant|operator``
uses (``settlement.parties``), so a change made here is the change the CLI makes: the same checks,
the same ``settlement_audit`` row (actor ``staff:<username>``), and, in the same transaction, a
line of the portal's audit log (``portal.audit``). Built on ``portal.pages_staff`` (the staff
session, CSRF, role checks, the error page) and ``portal.web``; no JavaScript.

- **Roles** (``portal.staff.ROLE_ACTIONS``): ``parties_view`` (finance, administrator),
  ``parties_edit`` and ``statement_download`` (finance).
- **A replayed form changes nothing.** Each change compares the form with what is stored first;
  the same values again write no audit row and move nothing (a second "add" of the same payee
  with the same terms is the payee's page, another one ``E_PAYEE_EXISTS``).
- **Bad input is the form again** with a sentence per field (status 4xx), never a 500; a
  settlement refusal elsewhere is the console's error page with its code.
- **The close can always run:** a category must have a schedule (a merchant in a category
  without one and without an override would stop every close with ``E_UNKNOWN_FEE_CATEGORY``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import unicodedata
from collections.abc import Callable
from typing import Annotated, Any, Final
from urllib.parse import quote

from fastapi import APIRouter, FastAPI, Form, Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from clearing.business_day import BusinessDayClock
from clearing.models import Operator, Terminal
from portal.audit import check_clean
from portal.pages_staff import STATE_KEY as STAFF_STATE_KEY
from portal.pages_staff import StaffPageRoute, StaffPages
from portal.staff import StaffSession, may
from portal.web import parse_yuan, redirect, yuan_plain
from settlement import parties
from settlement.bank import BankAccount, bank_account_problems, cnaps_parts, text_problem
from settlement.errors import SettlementCode, SettlementError, mask_account_number
from settlement.fees import FeeSchedule, Rounding
from settlement.models import PAYEE_STATUSES, PayeeRow, RouteAssignment, TerminalAssignment
from settlement.statement_pdf import closed_days, statement_document, statement_pdf

STATE_KEY: Final = "portal_party_pages"
FIELD_CHARS_MAX: Final = 256
KINDS: Final = ("merchant", "bus_operator")
ASSIGNABLE: Final = ("route", "terminal")
AUDIT_ROWS_MAX: Final = 50
ASSIGNMENTS_MAX: Final = 500
DAYS_SHOWN: Final = 31
_ROUTE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._:-]{0,63}$")  # settlement.parties' route rule
_TERMINAL: Final = re.compile(r"^[0-9A-Fa-f]{12}$")
_PAYEE_ID: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,63}$")  # clearing's operator id rule
_BPS: Final = re.compile(r"^[0-9]{1,5}$")
_DIGIT_RUN: Final = re.compile(r"[0-9]{11,}")
_HEX_RUN: Final = re.compile(r"[0-9A-Fa-f]{20,}")
_FIELD_OF: Final = {
    SettlementCode.E_BAD_ACCOUNT_NAME: "account_name",
    SettlementCode.E_BAD_ACCOUNT_NUMBER: "account_number",
    SettlementCode.E_BAD_CNAPS_CODE: "cnaps",
}


@dataclasses.dataclass(frozen=True)
class PartyPages:
    """What the payee pages add to the staff pages: the business-day clock (assignments start on a day)."""

    days: BusinessDayClock
    clock: Callable[[], dt.datetime]

    def today(self) -> dt.date:
        return self.days.day_of(self.clock())


class FormRefused(Exception):
    """A form with bad fields: shown again with a sentence per field (``errors``) or for the form."""

    def __init__(self, status: int, code: str, errors: dict[str, str], form_error: str | None = None) -> None:
        super().__init__(code)
        self.status, self.code, self.errors, self.form_error = status, code, errors, form_error


class PartiesPageRoute(StaffPageRoute):
    """The console's error page, with settlement's refusals shown by their code and status."""

    def answer(self, request: Request, exc: Exception) -> Response:
        if isinstance(exc, SettlementError):
            staff = _staff_pages(request)
            text = exc.message
            context = {"text": text, "code": exc.code.value}
            return staff.page(request, "staff/error.html", context, staff.session_of(request), exc.status)
        return super().answer(request, exc)


def _staff_pages(request: Request) -> StaffPages:
    pages = getattr(request.app.state, STAFF_STATE_KEY, None)
    assert isinstance(pages, StaffPages), "mount_staff_pages before mount_party_pages"
    return pages


def _party_pages(request: Request) -> PartyPages:
    pages = getattr(request.app.state, STATE_KEY, None)
    assert isinstance(pages, PartyPages), "mount_party_pages first"
    return pages


def _text(value: str | None) -> str:
    return (value or "")[:FIELD_CHARS_MAX].strip()


def clean(text: str) -> str:
    """``text`` as the portal's audit log takes it: long digit or hex runs (ids that read as numbers) masked."""
    text = "".join("?" if unicodedata.category(ch)[0] == "C" else ch for ch in text)  # NUL and other controls
    masked = _DIGIT_RUN.sub(lambda m: m.group(0)[:3] + "*" * (len(m.group(0)) - 7) + m.group(0)[-4:], text)
    masked = _HEX_RUN.sub(lambda m: m.group(0)[:4] + "*" * (len(m.group(0)) - 8) + m.group(0)[-4:], masked)
    return check_clean(masked, "text")


def cnaps_text(cnaps: str) -> str:
    """``105-7910-0003-4``: bank class, region, branch, check digit (12 digits in a row read as a number)."""
    p = cnaps_parts(cnaps)
    return f"{p.bank_class}-{p.region}-{p.branch}-{p.check_digit}"


def account_text(account: BankAccount | None) -> str:
    return "-" if account is None else f"{account.name} {mask_account_number(account.number)} {account.cnaps}"


def parse_fen(text: str, *, blank_ok: bool = False) -> int | None:
    """A typed amount in yuan (``0``, ``1``, ``12.50``) as fen; blank: None when ``blank_ok``."""
    entered = text.strip()
    if not entered and blank_ok:
        return None
    if re.fullmatch(r"[0０]+(?:[.．][0０]{0,2})?", entered):
        return 0
    return parse_yuan(entered)  # AmountTextError (a ValueError with .message) when it is not yuan


@dataclasses.dataclass(frozen=True, slots=True)
class FeeForm:
    category: str
    mode: str  # "category" | "own"
    bps: str
    min_yuan: str
    cap_yuan: str
    rounding: str


def read_fee_form(form: FeeForm, categories: set[str]) -> tuple[str, FeeSchedule | None]:
    """(category, override or None), or ``FormRefused`` with a sentence per field (pure)."""
    errors: dict[str, str] = {}
    if form.category not in categories:
        errors["category"] = "choose a category that has a fee schedule (yikatong fees set)"
    if form.mode not in ("category", "own"):
        errors["mode"] = "choose the category's schedule or the payee's own"
    if form.mode != "own":
        if errors:
            raise FormRefused(422, SettlementCode.E_BAD_FEE_SCHEDULE.value, errors)
        return form.category, None
    bps = min_fen = cap_fen = None
    rounding = Rounding.HALF_UP
    if _BPS.fullmatch(form.bps) and int(form.bps) <= 10_000:
        bps = int(form.bps)
    else:
        errors["bps"] = "basis points are a whole number from 0 to 10000 (38 = 0.38 %)"
    try:
        min_fen = parse_fen(form.min_yuan)
    except ValueError as exc:
        errors["min_yuan"] = getattr(exc, "message", str(exc))
    try:
        cap_fen = parse_fen(form.cap_yuan, blank_ok=True)
    except ValueError as exc:
        errors["cap_yuan"] = getattr(exc, "message", str(exc))
    if cap_fen is not None and min_fen is not None and cap_fen < min_fen:
        errors["cap_yuan"] = "the cap is below the minimum"
    try:
        rounding = Rounding(form.rounding)
    except ValueError:
        errors["rounding"] = "half_up, half_even or down"
    if errors or bps is None or min_fen is None:
        raise FormRefused(422, SettlementCode.E_BAD_FEE_SCHEDULE.value, errors)
    try:
        return form.category, FeeSchedule(bps, min_fen, cap_fen, rounding)
    except SettlementError as exc:  # an amount above settlement's limit
        raise FormRefused(exc.status, exc.code.value, {}, exc.message) from exc


def assignment_problems(what: str, ident: str, payee_kind: str, day: dt.date | None) -> dict[str, str]:
    """The assignment form's field errors (pure; whether the terminal is registered is asked apart)."""
    errors: dict[str, str] = {}
    if day is None:
        errors["valid_from"] = "a business day as YYYY-MM-DD"
    if what not in ASSIGNABLE:
        errors["what"] = "a route or a terminal"
    elif what == "route":
        if payee_kind != "bus_operator":
            errors["what"] = "routes are run by bus operators; a merchant is assigned terminals"
        elif not _ROUTE.fullmatch(ident):
            errors["ident"] = "a route id: 1-64 letters, digits, ' ._:-'"
    elif not _TERMINAL.fullmatch(ident):
        errors["ident"] = "a registered terminal's id (12 hex digits)"
    return errors


def _same_assignment(session: Session, what: str, key: str, operator_id: str, day: dt.date) -> bool:
    """The open assignment the form asks for exists already (a replayed form)."""
    if what == "route":
        found = session.scalar(
            select(RouteAssignment.id).where(
                RouteAssignment.route_id == key,
                RouteAssignment.valid_from == day,
                RouteAssignment.operator_id == operator_id,
                RouteAssignment.valid_to.is_(None),
            )
        )
    else:
        found = session.scalar(
            select(TerminalAssignment.id).where(
                TerminalAssignment.terminal_id == key,
                TerminalAssignment.valid_from == day,
                TerminalAssignment.operator_id == operator_id,
                TerminalAssignment.valid_to.is_(None),
            )
        )
    return found is not None


def parse_day(text: str) -> dt.date | None:
    try:
        return dt.date.fromisoformat(text) if re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", text) else None
    except ValueError:
        return None


# --- reading --------------------------------------------------------------------------------------


def _categories(session: Session) -> dict[str, FeeSchedule]:
    return dict(parties.fee_book(session).categories)


def _operator(session: Session, payee_id: str) -> Operator | None:
    """The payee's operator row; an id of another form is no payee (and never reaches the database)."""
    return session.get(Operator, payee_id) if _PAYEE_ID.fullmatch(payee_id) else None


def _terms(session: Session, payee_id: str) -> parties.PayeeTerms:
    operator = _operator(session, payee_id)
    if operator is None:
        raise SettlementError(SettlementCode.E_UNKNOWN_PAYEE, f"no merchant or operator {payee_id!r}")
    terms = parties.payee_terms(session, [operator.payable_account_id])
    return terms[operator.payable_account_id]


def _assignments(session: Session, operator_id: str | None) -> list[dict[str, Any]]:
    routes = select(RouteAssignment).order_by(RouteAssignment.route_id, RouteAssignment.valid_from)
    terminals = select(TerminalAssignment).order_by(TerminalAssignment.terminal_id, TerminalAssignment.valid_from)
    if operator_id is not None:
        routes = routes.where(RouteAssignment.operator_id == operator_id)
        terminals = terminals.where(TerminalAssignment.operator_id == operator_id)
    out: list[dict[str, Any]] = [
        {"what": "route", "ident": r.route_id, "operator": r.operator_id, "from": r.valid_from, "to": r.valid_to}
        for r in session.scalars(routes.limit(ASSIGNMENTS_MAX))
    ]
    out += [
        {"what": "terminal", "ident": t.terminal_id, "operator": t.operator_id, "from": t.valid_from, "to": t.valid_to}
        for t in session.scalars(terminals.limit(ASSIGNMENTS_MAX))
    ]
    return out


def _history(session: Session, payee_id: str) -> list[dict[str, Any]]:
    rows = parties.audit_log(session, target=f"payee:{payee_id}", limit=AUDIT_ROWS_MAX)
    return [{"at": r.at, "actor": r.actor, "action": r.action, "detail": r.detail} for r in rows]


def _view(session: Session, payee_id: str, pages: PartyPages) -> dict[str, Any]:
    terms = _terms(session, payee_id)
    categories = _categories(session)
    own = terms.override
    schedule = own or categories.get(terms.category)
    return {
        "p": terms,
        "account": account_text(terms.account),
        "schedule": schedule,
        "own": own,
        "categories": sorted(categories),
        "assignments": _assignments(session, payee_id),
        "history": _history(session, payee_id),
        "days": closed_days(session, DAYS_SHOWN),
        "today": pages.today(),
        "statuses": PAYEE_STATUSES,
        "fee_form": {
            "category": terms.category,
            "mode": "own" if own else "category",
            "bps": str(own.bps) if own else "",
            "min_yuan": yuan_plain(own.min_fen) if own else "0.00",
            "cap_yuan": yuan_plain(own.cap_fen) if own and own.cap_fen is not None else "",
            "rounding": own.rounding.value if own else "half_up",
        },
        "account_form": {
            "account_name": terms.account.name if terms.account else "",
            "cnaps": terms.account.cnaps if terms.account else "",
        },
        "assign_form": {
            "what": "route" if terms.kind == "bus_operator" else "terminal",
            "ident": "",
            "valid_from": pages.today().isoformat(),
        },
        "form": None,
        "done": None,
        "errors": {},
        "form_error": None,
    }


# --- the router -----------------------------------------------------------------------------------


def parties_router() -> APIRouter:
    router = APIRouter(prefix="/staff/parties", route_class=PartiesPageRoute, include_in_schema=False)

    def payee_page(
        request: Request, current: StaffSession, payee_id: str, status: int = 200, **changes: Any
    ) -> HTMLResponse:
        staff, pages = _staff_pages(request), _party_pages(request)
        with staff.console.audit.sessions() as session:
            context = _view(session, payee_id, pages)
        for key, value in changes.items():
            if isinstance(context.get(key), dict) and isinstance(value, dict):
                context[key] = {**context[key], **value}
            else:
                context[key] = value
        context["allowed"] = [a for a in ("parties_edit", "statement_download") if may(current.role, a)]
        return staff.page(request, "staff/parties_payee.html", context, current, status)

    def refused(
        request: Request,
        current: StaffSession,
        payee_id: str,
        form: str,
        values: dict[str, str],
        exc: FormRefused,
        action: str,
    ) -> HTMLResponse:
        staff = _staff_pages(request)
        staff.console.audit.record_now(
            actor=current.actor,
            action=action,
            target=clean(f"payee:{payee_id}"),
            outcome=exc.code[:64],
            detail=clean(", ".join(sorted(exc.errors))),
        )
        return payee_page(
            request,
            current,
            payee_id,
            exc.status,
            form=form,
            errors=exc.errors,
            form_error=exc.form_error,
            **{f"{form}_form": values},
        )

    def done(payee_id: str, what: str) -> Response:
        return redirect(f"/staff/parties/{quote(payee_id, safe='')}?done={what}")

    # --- the list and a new payee ---------------------------------------------------------------

    @router.get("", response_class=HTMLResponse)
    def listing(request: Request) -> HTMLResponse:
        staff = _staff_pages(request)
        current = staff.require(request, "parties_view")
        return _listing(request, staff, current, 200, {}, None, {})

    def _listing(
        request: Request,
        staff: StaffPages,
        current: StaffSession,
        status: int,
        errors: dict[str, str],
        form_error: str | None,
        values: dict[str, str],
    ) -> HTMLResponse:
        with staff.console.audit.sessions() as session:
            payees = parties.list_payees(session)
            categories = _categories(session)
            assignments = _assignments(session, None)
        rows = [
            {
                "p": p,
                "account": account_text(p.account),
                "schedule": p.override or categories.get(p.category),
                "own": p.override is not None,
            }
            for p in payees
        ]
        context = {
            "payees": rows,
            "categories": sorted(categories),
            "assignments": assignments,
            "errors": errors,
            "form_error": form_error,
            "add": {"payee_id": "", "name": "", "kind": "merchant", "category": "", **values},
        }
        return staff.page(request, "staff/parties.html", context, current, status)

    @router.post("", response_class=HTMLResponse)
    def add(
        request: Request,
        csrf_token: Annotated[str | None, Form()] = None,
        payee_id: Annotated[str | None, Form()] = None,
        name: Annotated[str | None, Form()] = None,
        kind: Annotated[str | None, Form()] = None,
        category: Annotated[str | None, Form()] = None,
    ) -> Response:
        staff = _staff_pages(request)
        current = staff.require(request, "parties_edit")
        staff.csrf(request, csrf_token, current)
        values = {"payee_id": _text(payee_id), "name": _text(name), "kind": _text(kind), "category": _text(category)}
        pid = values["payee_id"]
        try:
            with staff.console.audit.sessions() as session, session.begin():
                errors: dict[str, str] = {}
                if values["kind"] not in KINDS:
                    errors["kind"] = "a merchant or a bus operator"
                problem = text_problem("payee name", values["name"], 128)
                if problem is not None:
                    errors["name"] = problem
                if values["category"] not in _categories(session):
                    errors["category"] = "choose a category that has a fee schedule (yikatong fees set)"
                existing = _operator(session, pid)
                if existing is None and not _PAYEE_ID.fullmatch(pid):
                    errors["payee_id"] = (
                        "1 to 64 letters, digits, space, '.', '_' or '-', starting with a letter or digit"
                    )
                if existing is not None:
                    row = session.get(PayeeRow, pid)
                    stored = (existing.name, existing.kind, row.category if row else parties.TRANSIT)
                    if stored == (values["name"], values["kind"], values["category"]):
                        return done(pid, "unchanged")  # the same form again: its payee, nothing written
                    raise FormRefused(
                        409,
                        SettlementCode.E_PAYEE_EXISTS.value,
                        {**errors, "payee_id": f"{pid!r} is already registered"},
                    )
                if errors:
                    raise FormRefused(422, SettlementCode.E_BAD_PAYEE.value, errors)
                try:
                    parties.add_payee(
                        session,
                        pid,
                        name=values["name"],
                        kind=values["kind"],
                        category=values["category"],
                        actor=current.actor,
                    )
                except SettlementError as exc:  # the id's form (clearing's operator id rule)
                    raise FormRefused(exc.status, exc.code.value, {"payee_id": exc.message}) from exc
                except IntegrityError as exc:  # the same id registered by another request meanwhile
                    raise FormRefused(
                        409, SettlementCode.E_PAYEE_EXISTS.value, {"payee_id": f"{pid!r} is already registered"}
                    ) from exc
                staff.console.audit.record(
                    session,
                    actor=current.actor,
                    action="payee_add",
                    target=clean(f"payee:{pid}"),
                    detail=clean(f"{values['kind']}, category {values['category']}"),
                )
        except FormRefused as exc:
            staff.console.audit.record_now(
                actor=current.actor,
                action="payee_add",
                target=clean(f"payee:{pid[:64]}"),
                outcome=exc.code,
                detail=clean(", ".join(sorted(exc.errors))),
            )
            return _listing(request, staff, current, exc.status, exc.errors, exc.form_error, values)
        return done(pid, "added")

    # --- one payee ----------------------------------------------------------------------------------

    @router.get("/{payee_id}", response_class=HTMLResponse)
    def payee(payee_id: str, request: Request, done: str | None = None) -> HTMLResponse:
        current = _staff_pages(request).require(request, "parties_view")
        shown = done if done in ("added", "fee", "account", "status", "assignment", "unchanged") else None
        return payee_page(request, current, payee_id[:64], done=shown)

    @router.post("/{payee_id}/fee", response_class=HTMLResponse)
    def set_fee(
        payee_id: str,
        request: Request,
        csrf_token: Annotated[str | None, Form()] = None,
        category: Annotated[str | None, Form()] = None,
        mode: Annotated[str | None, Form()] = None,
        bps: Annotated[str | None, Form()] = None,
        min_yuan: Annotated[str | None, Form()] = None,
        cap_yuan: Annotated[str | None, Form()] = None,
        rounding: Annotated[str | None, Form()] = None,
    ) -> Response:
        staff = _staff_pages(request)
        current = staff.require(request, "parties_edit")
        staff.csrf(request, csrf_token, current)
        pid = payee_id[:64]
        form = FeeForm(_text(category), _text(mode), _text(bps), _text(min_yuan), _text(cap_yuan), _text(rounding))
        try:
            with staff.console.audit.sessions() as session, session.begin():
                terms = _terms(session, pid)
                new_category, override = read_fee_form(form, set(_categories(session)))
                changes = []
                if new_category != terms.category:
                    parties.set_category(session, pid, new_category, actor=current.actor)
                    changes.append(f"category {terms.category} -> {new_category}")
                if override != terms.override:
                    parties.set_fee_override(session, pid, override, actor=current.actor)
                    changes.append("own schedule" if override else "category's schedule")
                if not changes:
                    return done(pid, "unchanged")
                staff.console.audit.record(
                    session,
                    actor=current.actor,
                    action="payee_fee",
                    target=clean(f"payee:{pid}"),
                    detail=clean("; ".join(changes)),
                )
        except FormRefused as exc:
            return refused(request, current, pid, "fee", dataclasses.asdict(form), exc, "payee_fee")
        return done(pid, "fee")

    @router.post("/{payee_id}/account", response_class=HTMLResponse)
    def set_account(
        payee_id: str,
        request: Request,
        csrf_token: Annotated[str | None, Form()] = None,
        account_name: Annotated[str | None, Form()] = None,
        account_number: Annotated[str | None, Form()] = None,
        cnaps: Annotated[str | None, Form()] = None,
    ) -> Response:
        staff = _staff_pages(request)
        current = staff.require(request, "parties_edit")
        staff.csrf(request, csrf_token, current)
        pid = payee_id[:64]
        # the name as typed (a leading space is an error to show, not to fix); number and code trimmed
        name = (account_name or "")[:FIELD_CHARS_MAX]
        number, code = _text(account_number), _text(cnaps)
        values = {"account_name": name, "cnaps": code}  # the number is never shown back
        try:
            with staff.console.audit.sessions() as session, session.begin():
                terms = _terms(session, pid)
                problems = bank_account_problems(name, number, code)
                if problems:
                    errors = {_FIELD_OF[p.code]: p.message for p in problems}
                    raise FormRefused(problems[0].status, problems[0].code.value, errors)
                new = BankAccount(name, number, code)
                if new == terms.account:
                    return done(pid, "unchanged")
                parties.set_account(session, pid, new, actor=current.actor)
                detail = f"{mask_account_number(number)}, bank {cnaps_text(code)}"
                staff.console.audit.record(
                    session,
                    actor=current.actor,
                    action="payee_account",
                    target=clean(f"payee:{pid}"),
                    detail=clean(detail),
                )
        except FormRefused as exc:
            return refused(request, current, pid, "account", values, exc, "payee_account")
        return done(pid, "account")

    @router.post("/{payee_id}/status", response_class=HTMLResponse)
    def set_status(
        payee_id: str,
        request: Request,
        csrf_token: Annotated[str | None, Form()] = None,
        status: Annotated[str | None, Form()] = None,
    ) -> Response:
        staff = _staff_pages(request)
        current = staff.require(request, "parties_edit")
        staff.csrf(request, csrf_token, current)
        pid, wanted = payee_id[:64], _text(status)
        try:
            with staff.console.audit.sessions() as session, session.begin():
                terms = _terms(session, pid)
                if wanted not in PAYEE_STATUSES:
                    raise FormRefused(422, SettlementCode.E_BAD_PAYEE.value, {"status": "active, suspended or closed"})
                if wanted == terms.status:
                    return done(pid, "unchanged")
                parties.set_status(session, pid, wanted, actor=current.actor)
                staff.console.audit.record(
                    session,
                    actor=current.actor,
                    action="payee_status",
                    target=clean(f"payee:{pid}"),
                    detail=f"{terms.status} -> {wanted}",
                )
        except FormRefused as exc:
            return refused(request, current, pid, "status", {}, exc, "payee_status")
        return done(pid, "status")

    @router.post("/{payee_id}/assignments", response_class=HTMLResponse)
    def assign(
        payee_id: str,
        request: Request,
        csrf_token: Annotated[str | None, Form()] = None,
        what: Annotated[str | None, Form()] = None,
        ident: Annotated[str | None, Form()] = None,
        valid_from: Annotated[str | None, Form()] = None,
    ) -> Response:
        staff, pages = _staff_pages(request), _party_pages(request)
        current = staff.require(request, "parties_edit")
        staff.csrf(request, csrf_token, current)
        pid = payee_id[:64]
        values = {"what": _text(what), "ident": _text(ident), "valid_from": _text(valid_from)}
        kind = values["what"]
        key = values["ident"] if kind == "route" else values["ident"].lower()
        action = "assign_terminal" if kind == "terminal" else "assign_route"
        try:
            with staff.console.audit.sessions() as session, session.begin():
                terms = _terms(session, pid)
                day = parse_day(values["valid_from"])
                errors = assignment_problems(kind, key, terms.kind, day)
                if "ident" not in errors and kind == "terminal" and session.get(Terminal, key) is None:
                    errors["ident"] = "a registered terminal's id (12 hex digits)"
                if errors or day is None:
                    raise FormRefused(422, SettlementCode.E_BAD_ASSIGNMENT.value, errors)
                if _same_assignment(session, kind, key, pid, day):
                    return done(pid, "unchanged")
                try:
                    if kind == "route":
                        parties.assign_route(
                            session, key, pid, valid_from=day, today=pages.today(), actor=current.actor
                        )
                    else:
                        parties.assign_terminal(
                            session, key, pid, valid_from=day, today=pages.today(), actor=current.actor
                        )
                except SettlementError as exc:  # a sealed or begun day
                    raise FormRefused(exc.status, exc.code.value, {"valid_from": exc.message}) from exc
                staff.console.audit.record(
                    session,
                    actor=current.actor,
                    action=action,
                    target=clean(f"{kind}:{key}"),
                    detail=clean(f"to payee {pid} from {day.isoformat()}"),
                )
        except FormRefused as exc:
            return refused(request, current, pid, "assign", values, exc, action)
        return done(pid, "assignment")

    # --- statements ---------------------------------------------------------------------------------

    @router.get("/{payee_id}/statement")
    def statement(payee_id: str, request: Request, day: str | None = None) -> Response:
        staff = _staff_pages(request)
        current = staff.require(request, "statement_download")
        pid, text = payee_id[:64], _text(day)[:10]
        when = parse_day(text)
        target = clean(f"payee:{pid}")
        try:
            if not _PAYEE_ID.fullmatch(pid):
                raise SettlementError(SettlementCode.E_UNKNOWN_PAYEE, f"no merchant or operator {pid!r}")
            if when is None:
                raise SettlementError(
                    SettlementCode.E_WINDOW_NOT_CLOSED, f"{text!r} is no closed business day (YYYY-MM-DD)", status=404
                )
            with staff.console.audit.sessions() as session:
                document = statement_document(session, pid, when)
        except SettlementError as exc:
            staff.console.audit.record_now(
                actor=current.actor,
                action="statement_download",
                target=target,
                outcome=exc.code.value,
                detail=clean(text),
            )
            # no statement of this payee for this day: a resource that is not there
            raise SettlementError(exc.code, exc.message, status=404) from exc
        data = statement_pdf(document)
        staff.console.audit.record_now(
            actor=current.actor,
            action="statement_download",
            target=target,
            detail=f"{when.isoformat()}, {len(data)} bytes",
        )
        filename = re.sub(r"[^A-Za-z0-9._-]", "_", f"statement-{document.payee_id}-{when.isoformat()}.pdf")
        return Response(
            data,
            media_type="application/pdf",
            headers={"Content-Disposition": f'attachment; filename="{filename}"', "Cache-Control": "no-store"},
        )

    return router


def mount_party_pages(app: FastAPI, *, days: BusinessDayClock, clock: Callable[[], dt.datetime]) -> None:
    """The payee pages (after ``portal.pages_staff.mount_staff_pages``, whose session and CSRF they use)."""
    assert isinstance(getattr(app.state, STAFF_STATE_KEY, None), StaffPages), "mount_staff_pages first"
    setattr(app.state, STATE_KEY, PartyPages(days, clock))
    app.include_router(parties_router())


__all__ = [
    "FeeForm",
    "FormRefused",
    "PartiesPageRoute",
    "PartyPages",
    "account_text",
    "assignment_problems",
    "clean",
    "cnaps_text",
    "mount_party_pages",
    "parse_day",
    "parse_fen",
    "parties_router",
    "read_fee_form",
]
