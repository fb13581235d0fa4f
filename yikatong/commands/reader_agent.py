"""``yikatong reader-agent``: the local card reader service the portal's reader page talks to.

It serves ``portal.reader_agent`` with uvicorn on 127.0.0.1 only (never another interface:
the agent drives the citizen's card), for one portal origin (``--origin``, else
``YIKATONG_PORTAL_ORIGIN``), with the PC/SC reader ``--reader`` (else the first pcscd lists).
``--list-readers`` prints the readers and exits. The access log is off: the PIN page's URL
carries a request id. ``docs/portal.md``, "Reader agent", says how tests start it against an
emulated card (``yikatong card emulate`` into vpcd, then this with ``--reader "Virtual PCD 00 00"``).
"""

from __future__ import annotations

import errno
import socket
from typing import Annotated

import typer

from yikatong.settings import get_settings

LOOPBACK = "127.0.0.1"


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code=1)


def reader_agent(
    origin: Annotated[
        str | None,
        typer.Option(help="the portal's origin (scheme://host[:port]) it answers; default YIKATONG_PORTAL_ORIGIN"),
    ] = None,
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port on 127.0.0.1")] = 8465,
    reader: Annotated[
        str | None, typer.Option(help="PC/SC reader name (default: the first reader pcscd lists)")
    ] = None,
    list_readers: Annotated[bool, typer.Option("--list-readers", help="print the PC/SC readers and exit")] = False,
    log_level: Annotated[str, typer.Option(help="uvicorn log level")] = "info",
) -> None:
    """Serve the reader agent on 127.0.0.1 for one portal origin (card login and online load)."""
    from portal.reader_agent import AgentConfig, PcscSource, create_app

    source = PcscSource(reader)
    if list_readers:
        names = source.names()
        if not names:
            raise _fail("E_AGENT_NO_READER: no PC/SC reader (is pcscd running and the reader plugged in?)")
        for name in names:
            typer.echo(name)
        return
    chosen = origin or get_settings().portal_origin
    if chosen is None:
        raise _fail("E_AGENT_ORIGIN: give --origin https://portal.example (or set YIKATONG_PORTAL_ORIGIN)")
    try:
        config = AgentConfig(origin=chosen, port=port)
    except ValueError as exc:
        raise _fail(f"E_AGENT_ORIGIN: {exc}") from None
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # As uvicorn binds: a port whose last connections linger in TIME_WAIT is free to reuse.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((LOOPBACK, port))
        except OSError as exc:
            why = "is in use (another agent running?)" if exc.errno == errno.EADDRINUSE else exc.strerror
            raise _fail(f"E_AGENT_PORT: {LOOPBACK}:{port} {why}") from None
    names = source.names()
    if reader is not None and reader not in names:
        typer.echo(f"warning: reader {reader!r} is not connected now (readers: {', '.join(names) or 'none'})", err=True)
    import uvicorn

    typer.echo(
        f"reader agent on http://{LOOPBACK}:{port} for {config.origin}; "
        f"reader: {reader or (names[0] if names else 'none yet')}"
    )
    uvicorn.run(create_app(config, source), host=LOOPBACK, port=port, log_level=log_level, access_log=False)
