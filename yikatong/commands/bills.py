"""``yikatong bills``: utility billers' files (``docs/utility-bills.md``).

* ``bills file --biller ID --date YYYY-MM-DD [--out FILE]``: the biller's file of one business day's
  payments (CSV: a header line, one line per paid bill, a total line); stdout unless ``--out``.
* ``bills sweep``: clear purse records committed but not cleared (a crash between the card's TAC
  and clearing's verdict) and retry online refunds still due; safe to run at any time (cron).
* ``bills import --biller ID FILE``: a biller's bills (CSV ``account_no,holder_name,period,amount_fen,
  due_date``), all or nothing; the same file again adds nothing.

The output names no person: the holder's name is stored masked and never printed.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Annotated

import typer

from yikatong.commands.init import cli_errors, fail, open_database, out

app = typer.Typer(help="Utility bills: billers' daily files and bill imports.", no_args_is_help=True)


@app.command("file")
def daily_file(
    biller: Annotated[str, typer.Option("--biller", help="The biller's payee id, e.g. xianyang-water.")],
    date: Annotated[str, typer.Option("--date", help="The business day (Asia/Shanghai), YYYY-MM-DD.")],
    out_file: Annotated[Path | None, typer.Option("--out", help="Write the CSV here instead of stdout.")] = None,
) -> None:
    """Print (or write) the biller's file of the bills paid on one business day."""
    from portal.modules.utility_bills import bills
    from portal.modules.utility_bills.errors import BillError

    try:
        day = dt.date.fromisoformat(date)
    except ValueError:
        fail(f"E_BILL_MALFORMED: --date must be YYYY-MM-DD, got {date!r}")
    with cli_errors():
        sessions = open_database()
        try:
            with sessions() as session:
                text = bills.daily_file(session, biller, day)
        except BillError as exc:
            fail(str(exc))
    if out_file is None:
        typer.echo(text, nl=False)
        return
    try:
        out_file.write_text(text, encoding="utf-8")
    except OSError as exc:
        fail(f"cannot write {out_file}: {exc.strerror}")
    out.print(f"wrote {out_file}")


@app.command("import")
def import_file(
    biller: Annotated[str, typer.Option("--biller", help="The biller's payee id.")],
    file: Annotated[Path, typer.Argument(help="The biller's CSV (UTF-8).")],
) -> None:
    """Import a biller's bills, all or nothing; rows already imported unchanged are skipped."""
    from portal.modules.utility_bills import bills
    from portal.modules.utility_bills.errors import BillError

    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"cannot read {file}: {exc}")
    with cli_errors():
        sessions = open_database()
        try:
            with sessions() as session, session.begin():
                result = bills.import_bills(session, biller, text)
        except BillError as exc:
            fail(str(exc))
    out.print(f"imported {file.name}: {result.added} new bill(s), {result.unchanged} already on record")


@app.command("sweep")
def sweep() -> None:
    """Clear committed purse records and retry due refunds of online payments (idempotent)."""
    from clearing.db import open_migrated, session_factory
    from clearing.ingest import make_ingestor
    from clearing.keystore import KeyStore
    from portal.modules.utility_bills.online import OnlineBills
    from portal.modules.utility_bills.purse import PurseRuns
    from portal.payments import PaymentsClient, PaymentsConfig
    from yikatong.settings import get_settings

    settings = get_settings()
    with cli_errors():
        engine = open_migrated(settings.database_url)
        sessions = session_factory(engine)
        runs = PurseRuns(sessions, KeyStore.from_settings(settings), make_ingestor(engine))
        cleared = runs.settle_committed()
        payments = PaymentsClient.connect(
            PaymentsConfig(settings.payments_url, settings.payments_key.get_secret_value())
        )
        try:
            secrets = [s.get_secret_value() for s in settings.payments_webhook_secrets]
            refunds = OnlineBills(sessions, payments, secrets).refund_due()
        finally:
            payments.close()
    out.print(f"cleared {cleared} committed purse record(s); tried {refunds} due refund(s)")
