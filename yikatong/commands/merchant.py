"""``yikatong merchant|operator|fees``: register and change payees; every change is audited.

``merchant add|list|set-fee|set-account|set-status``, ``operator add|assign-route|assign-terminal|
set-account|assignments``, ``fees set|list``, ``merchant audit``. The actor recorded in the audit
log is ``--actor`` (default: the login name).
"""

from __future__ import annotations

import datetime as dt
import getpass
from typing import Annotated

import typer

from yikatong.commands.init import fail, open_database, out
from yikatong.commands.settle import parse_day, settlement_errors

merchant_app = typer.Typer(help="Merchants: register, fees, payout account, status, audit log.", no_args_is_help=True)
operator_app = typer.Typer(help="Bus operators: register, route and terminal assignments (dated).",
                           no_args_is_help=True)  # fmt: skip
fees_app = typer.Typer(help="Fee schedules per merchant category.", no_args_is_help=True)

Actor = Annotated[str | None, typer.Option("--actor", help="Who makes the change (audit log; default: login name).")]
Bps = Annotated[int, typer.Option("--bps", min=0, max=10_000, help="Basis points of net sales (38 = 0.38 %).")]
MinFen = Annotated[int, typer.Option("--min-fen", min=0, help="Minimum fee per window, fen.")]
CapFen = Annotated[int | None, typer.Option("--cap-fen", min=0, help="Maximum fee per window, fen (none: no cap).")]
RoundingOpt = Annotated[str, typer.Option("--rounding", help="half_up (default), half_even or down.")]


def _actor(actor: str | None) -> str:
    if actor:
        return actor
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _schedule(bps: int, min_fen: int, cap_fen: int | None, rounding: str) -> object:
    from settlement.fees import FeeSchedule, Rounding

    try:
        mode = Rounding(rounding)
    except ValueError:
        fail(f"E_BAD_FEE_SCHEDULE: rounding {rounding!r} is not half_up, half_even or down")
    return FeeSchedule(bps, min_fen, cap_fen, mode)


def _today() -> dt.date:
    from clearing.business_day import clock_from_settings
    from yikatong.settings import get_settings

    return clock_from_settings(get_settings()).day_of(dt.datetime.now(dt.UTC))


def _yuan(fen: int) -> str:
    return f"{fen // 100}.{fen % 100:02d}"


# --- fees ---------------------------------------------------------------------------------------


@fees_app.command("set")
def fees_set(
    category: Annotated[str, typer.Option("--category", help="Merchant category (1-32 ASCII characters).")],
    bps: Bps,
    min_fen: MinFen = 0,
    cap_fen: CapFen = None,
    rounding: RoundingOpt = "half_up",
    actor: Actor = None,
) -> None:
    """Create or change the fee schedule of a category."""
    from settlement.fees import FeeSchedule
    from settlement.parties import set_fee_schedule

    with settlement_errors():
        schedule = _schedule(bps, min_fen, cap_fen, rounding)
        assert isinstance(schedule, FeeSchedule)
        with open_database()() as session, session.begin():
            set_fee_schedule(session, category, schedule, actor=_actor(actor))
    out.print(f"fee schedule {category}: {bps} bps, min {_yuan(min_fen)}, cap "
              f"{'none' if cap_fen is None else _yuan(cap_fen)}, {rounding}")  # fmt: skip


@fees_app.command("list")
def fees_list() -> None:
    """The fee schedules in force (built-in: transit, 0 bps)."""
    from rich.table import Table

    from settlement.parties import fee_book

    with settlement_errors(), open_database()() as session:
        book = fee_book(session)
    table = Table(title="Fee schedules")
    for column in ("category", "bps", "min", "cap", "rounding"):
        table.add_column(column)
    for category, s in sorted(book.categories.items()):
        table.add_row(category, str(s.bps), _yuan(s.min_fen), "-" if s.cap_fen is None else _yuan(s.cap_fen),
                      s.rounding.value)  # fmt: skip
    out.print(table)


# --- merchants ----------------------------------------------------------------------------------


def _known_category(session: object, category: str) -> None:
    """A category without a fee schedule would stop every close (E_UNKNOWN_FEE_CATEGORY): refuse it now."""
    from sqlalchemy.orm import Session

    from settlement.parties import fee_book

    assert isinstance(session, Session)
    if category not in fee_book(session).categories:
        fail(f"E_UNKNOWN_FEE_CATEGORY: category {category!r} has no fee schedule; set one with `yikatong fees set`")


def _add(payee_id: str, name: str, kind: str, category: str, actor: str | None) -> None:
    from settlement.parties import add_payee

    with settlement_errors(), open_database()() as session, session.begin():
        _known_category(session, category)
        add_payee(session, payee_id, name=name, kind=kind, category=category, actor=_actor(actor))
    out.print(f"{kind.replace('_', ' ')} {payee_id!r} registered ({category})")


@merchant_app.command("add")
def merchant_add(
    merchant_id: Annotated[str, typer.Option("--id", help="Merchant id (1-64 letters, digits, space, '._-').")],
    name: Annotated[str, typer.Option("--name", help="Name on statements.")],
    category: Annotated[str, typer.Option("--category", help="Fee category (see `yikatong fees list`).")],
    actor: Actor = None,
) -> None:
    """Register a merchant (payable account created; fees from its category until overridden)."""
    _add(merchant_id, name, "merchant", category, actor)


@merchant_app.command("list")
def merchant_list() -> None:
    """Every payee (merchants and operators): category, fee, account (masked), status."""
    from rich.table import Table

    from settlement.errors import mask_account_number
    from settlement.parties import list_payees

    with settlement_errors(), open_database()() as session:
        payees = list_payees(session)
    table = Table(title="Payees")
    for column in ("id", "name", "kind", "category", "fee override", "account", "status"):
        table.add_column(column)
    for p in payees:
        fee = "-" if p.override is None else f"{p.override.bps} bps, min {_yuan(p.override.min_fen)}"
        account = (
            "-" if p.account is None else f"{p.account.name} {mask_account_number(p.account.number)} {p.account.cnaps}"
        )
        table.add_row(p.payee_id, p.name, p.kind, p.category, fee, account, p.status)
    out.print(table)


@merchant_app.command("set-fee")
def merchant_set_fee(
    merchant_id: Annotated[str, typer.Option("--id", help="Merchant or operator id.")],
    bps: Annotated[int | None, typer.Option("--bps", min=0, max=10_000, help="Override: basis points.")] = None,
    min_fen: MinFen = 0,
    cap_fen: CapFen = None,
    rounding: RoundingOpt = "half_up",
    category: Annotated[str | None, typer.Option("--category", help="Move to another fee category.")] = None,
    clear: Annotated[bool, typer.Option("--clear", help="Drop the override: the category's schedule applies.")] = False,
    actor: Actor = None,
) -> None:
    """Give a merchant its own fee schedule (replaces the category's whole), change its category, or --clear."""
    from settlement.fees import FeeSchedule
    from settlement.parties import set_category, set_fee_override

    if (bps is None) == (not clear) and category is None:
        fail("E_BAD_FEE_SCHEDULE: give --bps (with --min-fen/--cap-fen/--rounding), --clear, or --category")
    with settlement_errors(), open_database()() as session, session.begin():
        if category is not None:
            _known_category(session, category)
            set_category(session, merchant_id, category, actor=_actor(actor))
        if clear:
            set_fee_override(session, merchant_id, None, actor=_actor(actor))
        elif bps is not None:
            schedule = _schedule(bps, min_fen, cap_fen, rounding)
            assert isinstance(schedule, FeeSchedule)
            set_fee_override(session, merchant_id, schedule, actor=_actor(actor))
    out.print(f"fees of {merchant_id!r} changed")


def set_account_command(
    payee_id: Annotated[str, typer.Option("--id", help="Merchant or operator id.")],
    name: Annotated[str, typer.Option("--name", help="Account name (1-70 characters).")],
    number: Annotated[str, typer.Option("--number", help="Account number (8-30 digits).")],
    cnaps: Annotated[str, typer.Option("--cnaps", help="The bank's 12-digit CNAPS code (联行号).")],
    actor: Actor = None,
) -> None:
    """Set the payout bank account (every field checked; the audit log keeps the number masked)."""
    from settlement.bank import BankAccount, bank_account_problems
    from settlement.errors import mask_account_number
    from settlement.parties import set_account

    problems = bank_account_problems(name, number, cnaps)
    if problems:
        fail("; ".join(str(p) for p in problems))
    with settlement_errors(), open_database()() as session, session.begin():
        set_account(session, payee_id, BankAccount(name, number, cnaps), actor=_actor(actor))
    out.print(f"payout account of {payee_id!r}: {name} {mask_account_number(number)} (CNAPS {cnaps})")


merchant_app.command("set-account")(set_account_command)


@merchant_app.command("set-status")
def merchant_set_status(
    payee_id: Annotated[str, typer.Option("--id", help="Merchant or operator id.")],
    status: Annotated[str, typer.Option("--status", help="active (paid), suspended or closed (carried, not paid).")],
    actor: Actor = None,
) -> None:
    """Suspend, close or reactivate a payee (suspended and closed payees accrue but are not paid)."""
    from settlement.parties import set_status

    with settlement_errors(), open_database()() as session, session.begin():
        set_status(session, payee_id, status, actor=_actor(actor))
    out.print(f"{payee_id!r} is {status}")


@merchant_app.command("audit")
def merchant_audit(
    target: Annotated[str | None, typer.Option("--target", help="Only this target (payee:ID, route:R, …).")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=10_000)] = 50,
) -> None:
    """The settlement audit log, newest first (append-only)."""
    from settlement.parties import audit_log

    with settlement_errors(), open_database()() as session:
        rows = audit_log(session, target=target, limit=limit)
        lines = [f"{r.at.isoformat(timespec='seconds')} {r.actor} {r.action} {r.target} {r.detail}" for r in rows]
    for line in lines:
        out.print(line, highlight=False)


# --- operators ----------------------------------------------------------------------------------


@operator_app.command("add")
def operator_add(
    operator_id: Annotated[str, typer.Option("--id", help="Operator id (1-64 letters, digits, space, '._-').")],
    name: Annotated[str, typer.Option("--name", help="Name on statements.")],
    category: Annotated[str, typer.Option("--category", help="Fee category (default transit: 0 bps).")] = "transit",
    actor: Actor = None,
) -> None:
    """Register a bus operator."""
    _add(operator_id, name, "bus_operator", category, actor)


operator_app.command("set-account")(set_account_command)


@operator_app.command("assign-route")
def operator_assign_route(
    route: Annotated[str, typer.Option("--route", help="Route id (as in the taps' route_id).")],
    operator_id: Annotated[str, typer.Option("--operator", help="Operator that runs it from --from.")],
    valid_from: Annotated[str, typer.Option("--from", help="First business day (YYYY-MM-DD; today or later).")],
    actor: Actor = None,
) -> None:
    """The route pays this operator from --from on (the previous assignment ends that day)."""
    from settlement.parties import assign_route

    day = parse_day(valid_from)
    with settlement_errors(), open_database()() as session, session.begin():
        assign_route(session, route, operator_id, valid_from=day, today=_today(), actor=_actor(actor))
    out.print(f"route {route} → {operator_id!r} from {day}")


@operator_app.command("assign-terminal")
def operator_assign_terminal(
    terminal_id: Annotated[str, typer.Option("--terminal", help="Terminal id (12 hex).")],
    operator_id: Annotated[str, typer.Option("--operator", help="Operator it pays from --from.")],
    valid_from: Annotated[str, typer.Option("--from", help="First business day (YYYY-MM-DD; today or later).")],
    actor: Actor = None,
) -> None:
    """The terminal pays this operator from --from on (a route's own assignment takes precedence)."""
    from settlement.parties import assign_terminal

    day = parse_day(valid_from)
    with settlement_errors(), open_database()() as session, session.begin():
        assign_terminal(session, terminal_id, operator_id, valid_from=day, today=_today(), actor=_actor(actor))
    out.print(f"terminal {terminal_id.lower()} → {operator_id!r} from {day}")


@operator_app.command("assignments")
def operator_assignments() -> None:
    """Every route and terminal assignment with its days."""
    from settlement.parties import assignments

    with settlement_errors(), open_database()() as session:
        routes, terminals = assignments(session)
        lines = [f"route {r.route_id}: {r.operator_id} [{r.valid_from}, {r.valid_to or '…'})" for r in routes]
        lines += [f"terminal {t.terminal_id}: {t.operator_id} [{t.valid_from}, {t.valid_to or '…'})" for t in terminals]
    for line in lines or ["no assignments: every tap pays its terminal's registered operator"]:
        out.print(line, highlight=False)
