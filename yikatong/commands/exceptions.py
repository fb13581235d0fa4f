"""``yikatong exceptions``: list, accept and write off queued records (each decision is a new transfer)."""

from __future__ import annotations

import datetime as dt
import getpass
from typing import Annotated

import typer
from rich.table import Table

from yikatong.commands.init import cli_errors, open_database, out

app = typer.Typer(help="The exception queue: rejected and suspect records awaiting a decision.", no_args_is_help=True)


@app.command("list")
def list_command(
    state: Annotated[str, typer.Option("--state", help="open, accepted, written_off or all.")] = "open",
    limit: Annotated[int, typer.Option("--limit", min=1, max=10_000, help="At most this many items.")] = 100,
) -> None:
    """List queued records, oldest first."""
    from clearing.exceptions_queue import list_items

    with cli_errors():
        factory = open_database()
        with factory() as session:
            items = list_items(session, state=None if state == "all" else state, limit=limit)
    if not items:
        out.print(f"no {state} exceptions")
        return
    table = Table(title=f"exceptions ({state})")
    for column in ("id", "code", "terminal", "seq", "card", "amount (fen)", "state", "created", "decision"):
        table.add_column(column)
    for i in items:
        table.add_row(
            str(i.id), i.code, i.terminal_id or "", "" if i.terminal_seq is None else str(i.terminal_seq),
            i.card_asn or "", "" if i.amount_fen is None else str(i.amount_fen), i.state,
            i.created_at.isoformat()[:19], i.decision_transfer_id or "",
        )  # fmt: skip
    out.print(table)


def _decider() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


@app.command("accept")
def accept_command(
    item_id: Annotated[int, typer.Argument(help="Exception item id.")],
    note: Annotated[str | None, typer.Option("--note", help="Why it is accepted.")] = None,
) -> None:
    """Accept a record: post it as the tap it is (card → operator payable, id tap:<terminal>:<seq>)."""
    from clearing.exceptions_queue import accept

    with cli_errors():
        factory = open_database()
        with factory() as session, session.begin():
            item = accept(session, item_id, now=dt.datetime.now(dt.UTC), note=note, decided_by=_decider())
            transfer = item.decision_transfer_id
    out.print(f"exception {item_id} accepted" + (f"; posted transfer {transfer}" if transfer else "; nothing to post"))


@app.command("write-off")
def write_off_command(
    item_id: Annotated[int, typer.Argument(help="Exception item id.")],
    note: Annotated[str, typer.Option("--note", help="Why it is written off (required).")],
    amount_fen: Annotated[
        int | None,
        typer.Option("--amount-fen", min=0, help="Card value to release (default: the record's amount; 0: none)."),
    ] = None,
) -> None:
    """Write a record off: release card value to write-off income (or close it with --amount-fen 0)."""
    from clearing.exceptions_queue import write_off

    with cli_errors():
        factory = open_database()
        with factory() as session, session.begin():
            item = write_off(
                session, item_id, now=dt.datetime.now(dt.UTC), note=note, amount_fen=amount_fen,
                decided_by=_decider(),
            )  # fmt: skip
            transfer = item.decision_transfer_id
    out.print(f"exception {item_id} written off" + (f"; posted transfer {transfer}" if transfer else "; no transfer"))
