"""``yikatong exceptions``: the queue of rejected and suspect records, and their decisions.

Every listing shows, per item, its age in business days, its amount, what the ledger already
holds for it and what each decision would do; ``accept`` and ``write-off`` say it again and
ask before they do it (``--yes`` skips the question). ``docs/clearing.md`` has the table.
"""

from __future__ import annotations

import datetime as dt
import getpass
from typing import Annotated

import typer
from rich.table import Table

from yikatong.commands.init import cli_errors, fail, open_database, out

app = typer.Typer(help="The exception queue: rejected and suspect records awaiting a decision.", no_args_is_help=True)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _decider() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _days() -> object:
    from clearing.business_day import clock_from_settings
    from yikatong.settings import get_settings

    return clock_from_settings(get_settings())


def _sweep(gap_age_days: int | None) -> tuple[int, int]:
    """Queue the gaps still open after their age, resolve queued gaps that filled (one transaction)."""
    from clearing.business_day import BusinessDayClock
    from clearing.exceptions_queue import sweep_gaps
    from yikatong.settings import get_settings

    days = _days()
    assert isinstance(days, BusinessDayClock)
    age = get_settings().gap_age_days if gap_age_days is None else gap_age_days
    factory = open_database()
    with factory() as session, session.begin():
        done = sweep_gaps(session, now=_now(), age_days=age, days=days)
    return done.queued, done.resolved


GapAge = Annotated[
    int | None,
    typer.Option(
        "--gap-age-days",
        min=0,
        help="Queue counter gaps open this many business days (default: the setting, 3).",
    ),
]


@app.command("sweep")
def sweep_command(gap_age_days: GapAge = None) -> None:
    """Queue the counter gaps still open after their age; resolve queued gaps whose counters arrived."""
    with cli_errors():
        queued, resolved = _sweep(gap_age_days)
    out.print(f"gaps: {queued} queued, {resolved} resolved")


@app.command("list")
def list_command(
    state: Annotated[str, typer.Option("--state", help="open, accepted, written_off, resolved or all.")] = "open",
    limit: Annotated[int, typer.Option("--limit", min=1, max=10_000, help="At most this many items.")] = 100,
    gap_age_days: GapAge = None,
) -> None:
    """List queued records, oldest first, with what already moved and what each decision would do.

    Counter gaps are swept first: the ones still open after their age join the queue, queued
    ones whose counters arrived since resolve themselves.
    """
    from clearing.business_day import BusinessDayClock
    from clearing.exceptions_queue import list_items, open_counts, view

    days = _days()
    assert isinstance(days, BusinessDayClock)
    now = _now()
    with cli_errors():
        queued, resolved = _sweep(gap_age_days)
        factory = open_database()
        with factory() as session:
            items = list_items(session, state=None if state == "all" else state, limit=limit)
            views = [view(session, i, now, days) for i in items]
            counts = open_counts(session)
    if queued or resolved:
        out.print(f"gaps: {queued} newly queued, {resolved} resolved")
    if not views:
        out.print(f"no {state} exceptions")
    else:
        table = Table(title=f"exceptions ({state})", show_lines=True)
        for column in ("id", "code", "age (days)", "card / terminal·seq", "amount (fen)", "already moved",
                       "accept would", "write-off would", "state"):  # fmt: skip
            table.add_column(column)
        for v in views:
            i = v.item
            where = f"{i.card_asn or '-'}\n{i.terminal_id or '-'}·{'' if i.terminal_seq is None else i.terminal_seq}"
            decided = i.state if i.state == "open" else f"{i.state}\n{i.decision_transfer_id or 'no transfer'}"
            table.add_row(
                str(i.id), i.code, str(v.age_days), where, str(v.amount_fen), v.moved,
                v.accept.sentence if v.accept.allowed else f"[red]{v.accept.sentence}[/]", v.write_off.sentence,
                decided,
            )  # fmt: skip
        out.print(table)
    if counts:
        out.print("open per code: " + ", ".join(f"{code} {n}" for code, n in sorted(counts.items())))


def _show(item_id: int) -> tuple[object, object]:
    from clearing.business_day import BusinessDayClock
    from clearing.errors import ClearingError
    from clearing.exceptions_queue import view
    from clearing.models import ExceptionItem

    days = _days()
    assert isinstance(days, BusinessDayClock)
    factory = open_database()
    with factory() as session:
        item = session.get(ExceptionItem, item_id)
        if item is None:
            from clearing.contract.codes import Code

            raise ClearingError(Code.E_NO_SUCH_EXCEPTION, f"no exception item {item_id}")
        seen = view(session, item, _now(), days)
        session.expunge_all()
    return item, seen


@app.command("show")
def show_command(item_id: Annotated[int, typer.Argument(help="Exception item id.")]) -> None:
    """Show one item: its message, age, amount, what moved, and what each decision would do."""
    from clearing.exceptions_queue import ItemView

    with cli_errors():
        _, seen = _show(item_id)
    assert isinstance(seen, ItemView)
    i = seen.item
    out.print(f"exception {i.id}: {i.code} ({seen.kind.value}), {i.state}, {seen.age_days} business days old")
    out.print(f"  {i.message}")
    out.print(f"  amount: {seen.amount_fen} fen; already moved: {seen.moved}")
    out.print(f"  accept would: {seen.accept.sentence}")
    out.print(f"  write-off would: {seen.write_off.sentence}")
    if i.state != "open":
        out.print(
            f"  decided by {i.decided_by} at {i.decided_at}: {i.note or ''} ({i.decision_transfer_id or 'no transfer'})"
        )


def _confirm(sentence: str, yes: bool) -> None:
    out.print(sentence)
    if not yes and not typer.confirm("go ahead?", default=False):
        fail("E_ABORTED: nothing was decided")


@app.command("accept")
def accept_command(
    item_id: Annotated[int, typer.Argument(help="Exception item id.")],
    note: Annotated[str | None, typer.Option("--note", help="Why it is accepted.")] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask before deciding.")] = False,
) -> None:
    """Accept a record: what that moves depends on what the ledger already holds (see `exceptions show`)."""
    from clearing.business_day import BusinessDayClock
    from clearing.exceptions_queue import ItemView, accept
    from yikatong.commands.init import open_keystore

    with cli_errors():
        _, seen = _show(item_id)
        assert isinstance(seen, ItemView)
        _confirm(f"accept {item_id} ({seen.item.code}): {seen.accept.sentence}", yes)
        keystore = open_keystore()
        days = _days()
        assert isinstance(days, BusinessDayClock)
        factory = open_database()
        with factory() as session, session.begin():
            item = accept(session, keystore, item_id, now=_now(), note=note, decided_by=_decider(), days=days)
            transfer = item.decision_transfer_id
    out.print(f"exception {item_id} accepted" + (f"; posted transfer {transfer}" if transfer else "; nothing moved"))


@app.command("write-off")
def write_off_command(
    item_id: Annotated[int, typer.Argument(help="Exception item id.")],
    note: Annotated[str, typer.Option("--note", help="Why it is written off (required).")],
    amount_fen: Annotated[
        int | None,
        typer.Option(
            "--amount-fen",
            min=0,
            help="Posted record: fen to withhold from the operator (default 0). Held record: card value to "
            "release (default the record's amount). Others: 0 only.",
        ),
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask before deciding.")] = False,
) -> None:
    """Write a record off: what that moves depends on what the ledger already holds (see `exceptions show`)."""
    from clearing.exceptions_queue import ItemView, write_off

    with cli_errors():
        _, seen = _show(item_id)
        assert isinstance(seen, ItemView)
        amount = "" if amount_fen is None else f" with --amount-fen {amount_fen}"
        _confirm(f"write off {item_id} ({seen.item.code}){amount}: {seen.write_off.sentence}", yes)
        factory = open_database()
        with factory() as session, session.begin():
            item = write_off(
                session, item_id, now=_now(), note=note, amount_fen=amount_fen, decided_by=_decider()
            )  # fmt: skip
            transfer, moved = item.decision_transfer_id, item.decision_amount_fen
    out.print(
        f"exception {item_id} written off"
        + (f"; posted transfer {transfer} ({moved} fen)" if transfer else "; nothing moved")
    )
