"""``yikatong terminal register``: register a validator and print its bearer token once."""

from __future__ import annotations

from typing import Annotated

import typer

from yikatong.commands.init import cli_errors, fail, open_database, out


def register(
    terminal_id: Annotated[str, typer.Option("--terminal-id", help="PSAM terminal number, 12 hex chars.")],
    operator: Annotated[str, typer.Option("--operator", help="Bus operator or merchant (created if new).")],
    route: Annotated[str | None, typer.Option("--route", help="Route the terminal serves (GTFS route id).")] = None,
    replace_token: Annotated[
        bool, typer.Option("--replace-token", help="Re-register an existing terminal with a new token.")
    ] = False,
) -> None:
    """Register a terminal with its operator and print its token (shown once, stored only hashed)."""
    from clearing.errors import ClearingError
    from clearing.registry import register_terminal

    with cli_errors():
        try:
            factory = open_database()
            with factory() as session, session.begin():
                token = register_terminal(session, terminal_id, operator, route, replace_token=replace_token)
        except ClearingError as exc:
            fail(str(exc))
    out.print(
        f"terminal {terminal_id.lower()} registered for operator {operator!r}" + (f", route {route}" if route else "")
    )
    out.print("token (shown once; configure it on the terminal now):")
    typer.echo(token)
