"""``yikatong reconcile --date D [--statement FILE]``: ledger, window totals and payout files agree, or why not."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Annotated

import typer

from yikatong.commands.init import err, fail, out
from yikatong.commands.settle import parse_day, settlement_errors


def reconcile(
    date: Annotated[str, typer.Option("--date", help="Business day whose close to reconcile (YYYY-MM-DD).")],
    statement: Annotated[
        Path | None,
        typer.Option("--statement", help="Bank statement to import first: ISO 20022 camt.053 (XML) or CSV."),
    ] = None,
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Directory of the close's files (default YIKATONG_SETTLEMENT_DIR).")
    ] = None,
) -> None:
    """Compare the ledger, the window's running totals and the payout files, list every difference
    with its cause, and exit 1 if there is any. With --statement, cleared payouts are imported and
    matched first; unmatched and returned payouts become exception items."""
    from rich.table import Table

    from clearing.db import open_migrated, session_factory
    from settlement.bank_statements import import_entries, parse_statement
    from settlement.reconcile import differences
    from yikatong.settings import get_settings

    day = parse_day(date)
    settings = get_settings()
    with settlement_errors():
        engine = open_migrated(settings.database_url)
        try:
            factory = session_factory(engine)
            if statement is not None:
                data = statement.read_bytes()
                entries = parse_statement(data)
                with factory() as session, session.begin():
                    report = import_entries(
                        session, entries, statement_ref=statement.name, now=dt.datetime.now(dt.UTC), day=day
                    )
                out.print(
                    f"statement {statement.name}: {report.cleared} cleared, {report.returned} returned, "
                    f"{report.already_known} already imported, {report.unknown} not ours; "
                    f"{len(report.unmatched)} payout(s) of {day} not on any statement"
                )
            with factory() as session:
                found = differences(session, day, out_dir or settings.settlement_dir)
        finally:
            engine.dispose()
    if not found:
        out.print(f"window {day}: ledger, running totals, statements and payout files agree")
        return
    table = Table(title=f"{len(found)} difference(s) in window {day}")
    for column in ("what", "subject", "expected", "found", "cause"):
        table.add_column(column, overflow="fold")
    for d in found:
        table.add_row(d.what, d.subject, d.expected, d.found, d.cause)
    err.print(table)
    raise typer.Exit(code=1)


__all__ = ["fail", "reconcile"]
