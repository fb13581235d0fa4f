"""Payees and their terms: merchants, bus operators, fee schedules, bank accounts, dated assignments.

A payee is clearing's ``operators`` row (its id, name, kind and payable account) plus
settlement's terms in ``settlement_payees`` (category, fee override, payout account, status).
A bus operator with no terms row is settled as category ``transit`` (``DEFAULT_SCHEDULES``:
0 bps) with no payout account: its money is carried until an account is registered.

Route → operator and terminal → operator assignments are valid for business days
``[valid_from, valid_to)``. Assigning from a day ends the current assignment on that day and
starts the new one; a day already sealed by a close (its money is paid) or already begun
cannot be reassigned: the taps of a day that has started were credited as they cleared, and
re-crediting them would move money a statement has shown (``docs/decisions.md``). Every change
writes one row of the append-only ``settlement_audit``, in the change's own transaction.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import select
from sqlalchemy.orm import Session

from clearing import registry
from clearing.ingest_totals import sealed_through
from clearing.models import Operator, Terminal, utcnow
from settlement.bank import BankAccount
from settlement.errors import SettlementCode, SettlementError, mask_account_number
from settlement.fees import FeeBook, FeeSchedule, Rounding
from settlement.models import (
    PAYEE_STATUSES,
    FeeScheduleRow,
    PayeeRow,
    RouteAssignment,
    SettlementAuditRow,
    TerminalAssignment,
)
from settlement.payouts import PAYEE_ID_RE

TRANSIT: Final = "transit"
DEFAULT_SCHEDULES: Final[Mapping[str, FeeSchedule]] = {TRANSIT: FeeSchedule(0)}
ACTOR_LEN_MAX: Final = 64
_ROUTE_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._:-]{0,63}$")


@dataclass(frozen=True, slots=True)
class PayeeTerms:
    """What a close needs to know about one payee."""

    payee_id: str
    name: str
    kind: str
    payable_account_id: int
    category: str
    override: FeeSchedule | None
    account: BankAccount | None
    status: str


# --- audit ------------------------------------------------------------------------------------


def audit(session: Session, *, actor: str, action: str, target: str, detail: Mapping[str, Any]) -> None:
    """One line of the append-only audit log, in the caller's transaction (never a bank account in clear)."""
    actor = actor.strip() or "unknown"
    session.add(
        SettlementAuditRow(
            at=utcnow(), actor=actor[:ACTOR_LEN_MAX], action=action, target=target[:120],
            detail=json.dumps(dict(detail), sort_keys=True, ensure_ascii=False, default=str),
        )
    )  # fmt: skip


def audit_log(session: Session, *, target: str | None = None, limit: int = 100) -> list[SettlementAuditRow]:
    assert 0 < limit <= 10_000
    stmt = select(SettlementAuditRow).order_by(SettlementAuditRow.id.desc()).limit(limit)
    if target is not None:
        stmt = stmt.where(SettlementAuditRow.target == target)
    return list(session.scalars(stmt))


# --- fee schedules ----------------------------------------------------------------------------


def _schedule_detail(schedule: FeeSchedule | None) -> dict[str, object] | None:
    if schedule is None:
        return None
    return {"bps": schedule.bps, "min_fen": schedule.min_fen, "cap_fen": schedule.cap_fen,
            "rounding": schedule.rounding.value}  # fmt: skip


def set_fee_schedule(session: Session, category: str, schedule: FeeSchedule, *, actor: str) -> None:
    """Create or change a category's schedule (``FeeBook`` checks the category's form)."""
    FeeBook({category: schedule})
    row = session.get(FeeScheduleRow, category)
    before = None if row is None else _schedule_detail(_row_schedule(row))
    if row is None:
        row = FeeScheduleRow(category=category)
        session.add(row)
    row.bps, row.min_fen, row.cap_fen, row.rounding = (
        schedule.bps, schedule.min_fen, schedule.cap_fen, schedule.rounding.value,
    )  # fmt: skip
    row.updated_at = utcnow()
    audit(session, actor=actor, action="fee_schedule", target=f"category:{category}",
          detail={"before": before, "after": _schedule_detail(schedule)})  # fmt: skip
    session.flush()


def _row_schedule(row: FeeScheduleRow) -> FeeSchedule:
    return FeeSchedule(row.bps, row.min_fen, row.cap_fen, Rounding(row.rounding))


def fee_book(session: Session) -> FeeBook:
    """The stored schedules over the built-in defaults (``transit``: 0 bps)."""
    categories = dict(DEFAULT_SCHEDULES)
    for row in session.scalars(select(FeeScheduleRow)):
        categories[row.category] = _row_schedule(row)
    return FeeBook(categories)


# --- payees -----------------------------------------------------------------------------------


def _payee(session: Session, payee_id: str) -> tuple[Operator, PayeeRow]:
    operator = session.get(Operator, payee_id)
    if operator is None:
        raise SettlementError(SettlementCode.E_UNKNOWN_PAYEE, f"no merchant or operator {payee_id!r}")
    row = session.get(PayeeRow, payee_id)
    if row is None:  # an operator registered by clearing alone (``terminal register``): default terms
        row = PayeeRow(payee_id=payee_id, category=TRANSIT, status="active")
        session.add(row)
        session.flush()
    return operator, row


def add_payee(session: Session, payee_id: str, *, name: str, kind: str, category: str, actor: str) -> PayeeRow:
    """Register a merchant or bus operator (clearing's operator with its payable, and its terms)."""
    if kind not in ("merchant", "bus_operator"):
        raise SettlementError(SettlementCode.E_BAD_PAYEE, f"kind {kind!r} is not merchant or bus_operator")
    from settlement.bank import text_problem

    problem = text_problem("payee name", name, 128)
    if problem is not None:
        raise SettlementError(SettlementCode.E_BAD_PAYEE, problem)
    FeeBook({category: FeeSchedule(0)})  # the category's form
    if not isinstance(payee_id, str) or PAYEE_ID_RE.fullmatch(payee_id) is None:
        # whole-string: clearing's ``^…$`` with ``re.match`` lets a trailing newline through, and a
        # payee the payout files refuse (``payouts.PAYEE_ID_RE``) would stop every close
        raise SettlementError(
            SettlementCode.E_BAD_PAYEE,
            "a payee id is 1-64 letters, digits, space, '.', '_' or '-', not starting with '-'",
        )
    if session.get(Operator, payee_id) is not None:
        raise SettlementError(SettlementCode.E_PAYEE_EXISTS, f"{payee_id!r} is already registered")
    try:
        registry.ensure_operator(session, payee_id, name=name, kind=kind)
    except Exception as exc:  # clearing's E_BAD_OPERATOR: the id's form
        from clearing.errors import ClearingError

        if isinstance(exc, ClearingError):
            raise SettlementError(SettlementCode.E_BAD_PAYEE, exc.message) from exc
        raise
    row = PayeeRow(payee_id=payee_id, category=category, status="active")
    session.add(row)
    audit(session, actor=actor, action=f"{kind}_add", target=f"payee:{payee_id}",
          detail={"name": name, "category": category})  # fmt: skip
    session.flush()
    return row


def set_category(session: Session, payee_id: str, category: str, *, actor: str) -> None:
    FeeBook({category: FeeSchedule(0)})
    _, row = _payee(session, payee_id)
    before, row.category, row.updated_at = row.category, category, utcnow()
    audit(session, actor=actor, action="payee_category", target=f"payee:{payee_id}",
          detail={"before": before, "after": category})  # fmt: skip
    session.flush()


def set_fee_override(session: Session, payee_id: str, schedule: FeeSchedule | None, *, actor: str) -> None:
    """A merchant's own schedule (replaces its category's whole), or None to go back to the category's."""
    _, row = _payee(session, payee_id)
    before = _schedule_detail(_override(row))
    if schedule is None:
        row.override_bps = row.override_min_fen = row.override_cap_fen = None
        row.override_rounding = None
    else:
        row.override_bps, row.override_min_fen, row.override_cap_fen = schedule.bps, schedule.min_fen, schedule.cap_fen
        row.override_rounding = schedule.rounding.value
    row.updated_at = utcnow()
    audit(session, actor=actor, action="payee_fee_override", target=f"payee:{payee_id}",
          detail={"before": before, "after": _schedule_detail(schedule)})  # fmt: skip
    session.flush()


def _masked(account: BankAccount | None) -> dict[str, str] | None:
    if account is None:
        return None
    return {"name": account.name, "number": mask_account_number(account.number), "cnaps": account.cnaps}


def set_account(session: Session, payee_id: str, account: BankAccount, *, actor: str) -> None:
    """The payee's payout account (``BankAccount`` has checked every field); the audit masks the number."""
    _, row = _payee(session, payee_id)
    before = _masked(_account(row))
    row.account_name, row.account_number, row.cnaps_code = account.name, account.number, account.cnaps
    row.updated_at = utcnow()
    audit(session, actor=actor, action="payee_account", target=f"payee:{payee_id}",
          detail={"before": before, "after": _masked(account)})  # fmt: skip
    session.flush()


def set_status(session: Session, payee_id: str, status: str, *, actor: str) -> None:
    """``active`` is paid; ``suspended`` and ``closed`` keep accruing but are not paid (carried)."""
    if status not in PAYEE_STATUSES:
        raise SettlementError(
            SettlementCode.E_BAD_PAYEE, f"status {status!r} is not one of {', '.join(PAYEE_STATUSES)}"
        )
    _, row = _payee(session, payee_id)
    before, row.status, row.updated_at = row.status, status, utcnow()
    audit(session, actor=actor, action="payee_status", target=f"payee:{payee_id}",
          detail={"before": before, "after": status})  # fmt: skip
    session.flush()


def _override(row: PayeeRow) -> FeeSchedule | None:
    if row.override_bps is None:
        return None
    assert row.override_min_fen is not None and row.override_rounding is not None
    return FeeSchedule(row.override_bps, row.override_min_fen, row.override_cap_fen, Rounding(row.override_rounding))


def _account(row: PayeeRow | None) -> BankAccount | None:
    if row is None or row.account_name is None or row.account_number is None or row.cnaps_code is None:
        return None
    return BankAccount(row.account_name, row.account_number, row.cnaps_code)


def payee_terms(session: Session, payable_account_ids: list[int] | None = None) -> dict[int, PayeeTerms]:
    """Every payee's terms by payable account (or only those accounts')."""
    stmt = select(Operator, PayeeRow).outerjoin(PayeeRow, PayeeRow.payee_id == Operator.operator_id)
    if payable_account_ids is not None:
        out: dict[int, PayeeTerms] = {}
        for start in range(0, len(payable_account_ids), 1000):
            chunk = payable_account_ids[start : start + 1000]
            out.update(_terms(session, stmt.where(Operator.payable_account_id.in_(chunk))))
        return out
    return _terms(session, stmt)


def _terms(session: Session, stmt: Any) -> dict[int, PayeeTerms]:
    out: dict[int, PayeeTerms] = {}
    for operator, row in session.execute(stmt):
        out[operator.payable_account_id] = PayeeTerms(
            payee_id=operator.operator_id, name=operator.name, kind=operator.kind,
            payable_account_id=operator.payable_account_id, category=row.category if row else TRANSIT,
            override=_override(row) if row else None, account=_account(row), status=row.status if row else "active",
        )  # fmt: skip
    return out


def list_payees(session: Session) -> list[PayeeTerms]:
    return sorted(payee_terms(session).values(), key=lambda t: t.payee_id)


# --- dated assignments ------------------------------------------------------------------------


def _check_from(session: Session, what: str, valid_from: dt.date, today: dt.date) -> None:
    sealed = sealed_through(session)
    if sealed is not None and valid_from <= sealed:
        raise SettlementError(
            SettlementCode.E_BAD_ASSIGNMENT,
            f"{what} from {valid_from}: the windows up to {sealed} are closed and paid; "
            f"assign from {sealed + dt.timedelta(days=1)} or later",
        )
    if valid_from < today:
        raise SettlementError(
            SettlementCode.E_BAD_ASSIGNMENT,
            f"{what} from {valid_from}: that business day has passed and its taps were credited as they cleared; "
            f"assign from {today} or later",
        )


def assign_route(
    session: Session, route_id: str, operator_id: str, *, valid_from: dt.date, today: dt.date, actor: str
) -> RouteAssignment:
    """Route → operator from ``valid_from`` on (the current assignment ends that day)."""
    if not _ROUTE_RE.fullmatch(route_id):
        raise SettlementError(
            SettlementCode.E_BAD_ASSIGNMENT, f"route {route_id!r} is not 1-64 letters, digits, ' ._:-'"
        )
    _payee(session, operator_id)
    _check_from(session, f"route {route_id}", valid_from, today)
    rows = list(
        session.scalars(
            select(RouteAssignment).where(RouteAssignment.route_id == route_id).order_by(RouteAssignment.valid_from)
        )
    )
    new = RouteAssignment(route_id=route_id)
    _reassign(session, rows, valid_from, new, operator_id)
    audit(session, actor=actor, action="assign_route", target=f"route:{route_id}",
          detail={"operator": operator_id, "from": valid_from.isoformat()})  # fmt: skip
    session.flush()
    return new


def assign_terminal(
    session: Session, terminal_id: str, operator_id: str, *, valid_from: dt.date, today: dt.date, actor: str
) -> TerminalAssignment:
    """Terminal → operator from ``valid_from`` on (``terminal register --replace-token`` no longer moves it)."""
    terminal_id = terminal_id.lower()
    if session.get(Terminal, terminal_id) is None:
        raise SettlementError(SettlementCode.E_BAD_ASSIGNMENT, f"terminal {terminal_id} is not registered")
    _payee(session, operator_id)
    _check_from(session, f"terminal {terminal_id}", valid_from, today)
    rows = list(
        session.scalars(
            select(TerminalAssignment)
            .where(TerminalAssignment.terminal_id == terminal_id)
            .order_by(TerminalAssignment.valid_from)
        )
    )
    new = TerminalAssignment(terminal_id=terminal_id)
    _reassign(session, rows, valid_from, new, operator_id)
    audit(session, actor=actor, action="assign_terminal", target=f"terminal:{terminal_id}",
          detail={"operator": operator_id, "from": valid_from.isoformat()})  # fmt: skip
    session.flush()
    return new


def _reassign(session: Session, rows: list[Any], valid_from: dt.date, new: Any, operator_id: str) -> None:
    """End the assignment covering ``valid_from`` there; drop any that start later (not yet begun)."""
    for row in rows:
        if row.valid_from >= valid_from:
            session.delete(row)  # a future assignment replaced before it began (audited by the caller)
        elif row.valid_to is None or row.valid_to > valid_from:
            row.valid_to = valid_from
    session.flush()
    new.operator_id, new.valid_from, new.valid_to = operator_id, valid_from, None
    session.add(new)


def assignments(session: Session) -> tuple[list[RouteAssignment], list[TerminalAssignment]]:
    routes = list(
        session.scalars(select(RouteAssignment).order_by(RouteAssignment.route_id, RouteAssignment.valid_from))
    )
    terminals = list(
        session.scalars(
            select(TerminalAssignment).order_by(TerminalAssignment.terminal_id, TerminalAssignment.valid_from)
        )
    )
    return routes, terminals


__all__ = [
    "DEFAULT_SCHEDULES",
    "TRANSIT",
    "PayeeTerms",
    "add_payee",
    "assign_route",
    "assign_terminal",
    "assignments",
    "audit",
    "audit_log",
    "fee_book",
    "list_payees",
    "payee_terms",
    "set_account",
    "set_category",
    "set_fee_override",
    "set_fee_schedule",
    "set_status",
]
