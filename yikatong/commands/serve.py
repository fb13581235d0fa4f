"""``yikatong serve [--host --port]``: the HTTP API under uvicorn.

The app is ``yikatong.app.create_app(settings)`` when the composition root provides it
(terminal API plus portal, interop and webhooks); until then, the clearing API alone.
"""

from __future__ import annotations

import importlib
from typing import Annotated, Any

import typer

from yikatong.settings import get_settings


def assemble_app(settings: Any) -> Any:
    try:
        composition = importlib.import_module("yikatong.app")
    except ModuleNotFoundError as exc:
        if exc.name != "yikatong.app":
            raise
        from clearing.api import create_app

        return create_app(settings)
    return composition.create_app(settings)


def serve(
    host: Annotated[str, typer.Option(help="interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port")] = 8400,
    log_level: Annotated[str, typer.Option(help="uvicorn log level")] = "info",
) -> None:
    """Serve the terminal API (and whatever the composition root adds) with uvicorn."""
    import uvicorn

    settings = get_settings()
    app = assemble_app(settings)
    mode = "Redis queue: run `yikatong clear` too" if settings.redis_url else "synchronous clearing (no Redis)"
    typer.echo(f"serving on http://{host}:{port} ({mode}); OpenAPI at /openapi.json")
    uvicorn.run(app, host=host, port=port, log_level=log_level)
