"""``yikatong portal sweep``: one run of the top-up sweep (``portal.sweep``, ``docs/portal.md`` "Sweep").

The server sweeps by itself every ``YIKATONG_PORTAL_SWEEP_INTERVAL_S`` when the portal is
enabled; this command is the same run from a shell or cron (a deployment whose servers do not
sweep, or to see what one run does). It opens the existing database (creates nothing), shows
each step as it goes, then a summary (``--json``: the report as one JSON object on stdout).
It is safe beside running servers and other sweeps: every decision is taken under the
top-up's row lock, and payment calls are leased. Exit 1 when a top-up could not be swept (the
report names it, with the error's code), so cron notices; the rest of the run still happened.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Annotated

import typer
from rich.progress import Progress, SpinnerColumn, TextColumn
from rich.table import Table

from yikatong.commands.init import cli_errors, fail, out

app = typer.Typer(help="The citizen portal's upkeep: the top-up sweep.", no_args_is_help=True)

_LABELS = {
    "clearing": "learning loads taken or voided in clearing",
    "payment_window": "top-ups past the payment window",
    "load_window": "paid top-ups past the load window",
    "refunds": "refunds made at the payment provider",
    "effects": "effects still due",
    "sessions": "expired portal sessions",
}


@app.command("sweep")
def sweep(
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON, nothing else")] = False,
    batch_max: Annotated[
        int | None,
        typer.Option("--batch-max", min=1, max=10_000, help="top-ups per step (default: the settings')"),
    ] = None,
) -> None:
    """Run the top-up sweep once: expire windows, learn loads from clearing, run due effects."""
    from clearing.db import open_migrated
    from portal.sweep import Sweeper
    from yikatong.app import sweeper_of, topup_service
    from yikatong.settings import get_settings

    settings = get_settings()
    with cli_errors():
        engine = open_migrated(settings.database_url)
    service = topup_service(settings, engine)
    sweeper = sweeper_of(settings, service)
    if batch_max is not None:
        sweeper = Sweeper(service, dataclasses.replace(sweeper.config, batch_max=batch_max))
    try:
        with cli_errors():
            if as_json:
                report = sweeper.run()
            else:
                with Progress(SpinnerColumn(), TextColumn("{task.description}"), console=out, transient=True) as bar:
                    task = bar.add_task("sweeping", total=None)
                    report = sweeper.run(on_phase=lambda name: bar.update(task, description=_LABELS[name]))
    finally:
        service.payments.close()
        engine.dispose()
    if as_json:
        typer.echo(json.dumps(dataclasses.asdict(report), sort_keys=True))
    else:
        table = Table(title="portal sweep", show_header=False)
        for name, value in dataclasses.asdict(report).items():
            if name != "errors":
                table.add_row(name.replace("_", " "), str(value))
        out.print(table)
    if report.errors:
        if not as_json:
            for line in report.errors:
                out.print(f"[red]not swept:[/] {line}", highlight=False)
        fail(f"{len(report.errors)} top-up(s) could not be swept; the next run tries again")


__all__ = ["app"]
