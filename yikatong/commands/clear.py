"""``yikatong clear [--workers N]``: run clearing workers on the Redis ingest stream.

Without ``YIKATONG_REDIS_URL`` there is no queue: ``yikatong serve`` clears every upload in
the request that brought it, so this command says so and exits 0.

With it, the command first refuses (exit 1, one line naming what to fix) a missing database
or key store, or a key store without the keys of an issuer it clears. Then it prints
``clearing with N worker(s) …`` once SIGTERM/SIGINT are handled (from that line on, a stop
is a clean stop), ``N worker(s) ready`` once every worker consumes the stream, and
``stopped`` when every worker ended cleanly after a stop.
A SIGTERM or Ctrl-C lets each worker finish the batch it is clearing (entries it has not
started stay pending for another worker) and exits 0. A worker that failed (its log says
why) makes it print ``error: E_INTERNAL: …`` on stderr and exit 1.
"""

from __future__ import annotations

from typing import Annotated

import typer

from yikatong.settings import get_settings


def clear(
    workers: Annotated[int, typer.Option("--workers", "-w", min=1, max=64, help="worker processes to run")] = 1,
    claim_idle_s: Annotated[
        float,
        typer.Option(
            "--claim-idle-s", min=1.0, help="take over a dead worker's batch after it has been pending this long"
        ),
    ] = 30.0,
) -> None:
    """Clear uploaded batches from the Redis stream with N workers (a consumer group)."""
    settings = get_settings()
    if not settings.redis_url:
        typer.echo(
            "No YIKATONG_REDIS_URL configured: nothing to do. Without Redis, `yikatong serve` clears "
            "each upload synchronously in the request."
        )
        raise typer.Exit(code=0)
    from clearing.contract.codes import Code
    from clearing.worker import run_workers
    from yikatong.commands.init import cli_errors, ready_to_clear

    with cli_errors():
        ready_to_clear(settings)

    code = run_workers(
        settings,
        workers,
        claim_idle_ms=int(claim_idle_s * 1000),
        on_start=lambda: typer.echo(f"clearing with {workers} worker(s) on {settings.redis_url}; Ctrl-C to stop"),
        on_ready=lambda: typer.echo(f"{workers} worker(s) ready"),
    )
    if code != 0:
        typer.echo(f"error: {Code.E_INTERNAL.value}: a clearing worker failed; its log is above", err=True)
        raise typer.Exit(code=1)
    typer.echo("stopped")
