"""``yikatong serve [--host --port]``: the HTTP API under uvicorn, as ``yikatong.app`` assembles it.

It refuses to start (exit 1, one line naming what to fix) without the database, the key
store, or the keys of an issuer it clears (``init.ready_to_clear``).
"""

from __future__ import annotations

from typing import Annotated

import typer

from yikatong.app import create_app
from yikatong.commands.init import cli_errors, ready_to_clear
from yikatong.settings import get_settings


def serve(
    host: Annotated[str, typer.Option(help="interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port")] = 8400,
    log_level: Annotated[str, typer.Option(help="uvicorn log level")] = "info",
) -> None:
    """Serve the terminal API (and whatever the composition root adds) with uvicorn."""
    import uvicorn

    settings = get_settings()
    with cli_errors():
        ready_to_clear(settings)
        app = create_app(settings)
    mode = "Redis queue: run `yikatong clear` too" if settings.redis_url else "synchronous clearing (no Redis)"
    typer.echo(f"serving on http://{host}:{port} ({mode}); OpenAPI at /openapi.json")
    uvicorn.run(app, host=host, port=port, log_level=log_level)
