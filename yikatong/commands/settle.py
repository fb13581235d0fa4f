"""``yikatong settle --date D``: close a business day's window (statements, ledger, payout files)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from yikatong.commands.init import cli_errors, fail, out

if TYPE_CHECKING:
    from settlement.payouts import Payer
    from yikatong.settings import Settings


@contextmanager
def settlement_errors() -> Iterator[None]:
    """Settlement's and clearing's known failures become one line and exit 1."""
    from settlement.errors import SettlementError

    with cli_errors():
        try:
            yield
        except SettlementError as exc:
            fail(str(exc))


def parse_day(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        fail(f"E_BAD_DATE: {text!r} is not a date (YYYY-MM-DD)")


def payer_of(settings: Settings) -> Payer:
    """The account every payout is paid from (``YIKATONG_SETTLEMENT_PAYER_*``)."""
    from settlement.bank import BankAccount
    from settlement.payouts import Payer

    s = settings
    return Payer(
        s.settlement_payer_name,
        BankAccount(s.settlement_payer_account_name, s.settlement_payer_account_number, s.settlement_payer_cnaps),
    )


def payer_from_settings() -> Payer:
    from yikatong.settings import get_settings

    return payer_of(get_settings())


def _yuan(fen: int) -> str:
    sign = "-" if fen < 0 else ""
    return f"{sign}¥{abs(fen) // 100}.{abs(fen) % 100:02d}"


def settle(
    date: Annotated[str, typer.Option("--date", help="Business day to close (YYYY-MM-DD, Asia/Shanghai).")],
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Directory for the files (default YIKATONG_SETTLEMENT_DIR).")
    ] = None,
    before_cutoff: Annotated[
        bool,
        typer.Option(
            "--before-cutoff",
            help="Close a day that has not ended yet; its later transfers go to the next window, listed as late.",
        ),
    ] = False,
) -> None:
    """Close the window of a business day: per payee gross, refunds, fee and net; fee and payout
    transfers in the ledger; payout CSV and pain.001 under <out>/<date>/. Running it again
    changes nothing and writes nothing new."""
    from rich.progress import BarColumn, Progress, TextColumn

    from clearing.business_day import clock_from_settings
    from clearing.db import open_migrated
    from settlement.close import close_window
    from yikatong.fare_lookup import fare_lookup_of
    from yikatong.settings import get_settings

    day = parse_day(date)
    settings = get_settings()
    with settlement_errors():
        engine = open_migrated(settings.database_url)
        payer = payer_of(settings)
        try:
            with Progress(TextColumn("{task.description}"), BarColumn(), transient=True) as bar:
                task = bar.add_task(f"closing {day}", total=3)

                def report(step: str, done: int, total: int) -> None:
                    bar.update(task, completed=done, total=total, description=f"closing {day}: {step}")

                result = close_window(
                    engine, day, now=dt.datetime.now(dt.UTC), payer=payer,
                    out_dir=out_dir or settings.settlement_dir, clock=clock_from_settings(settings),
                    early=before_cutoff, progress=report, fares=fare_lookup_of(settings),
                )  # fmt: skip
        finally:
            engine.dispose()
    verb = "closed" if result.newly_closed else "already closed; nothing changed"
    out.print(
        f"window {day} {verb}: {result.payees} payee(s), gross {_yuan(result.gross_fen)}, refunds "
        f"{_yuan(result.refunds_fen)}, fees {_yuan(result.fee_fen)}, paid {_yuan(result.payout_fen)}, "
        f"carried {_yuan(result.carry_fen)}"
    )
    for name, path in sorted(result.files.items()):
        out.print(f"  {path}" + ("" if name in result.files_written else " (unchanged)"))
