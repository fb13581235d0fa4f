"""``yikatong terminal register``: register a validator and print its bearer token once."""

from __future__ import annotations

from typing import Annotated

import typer

from yikatong.commands.init import cli_errors, fail, open_database, out


def _tariff_routes() -> frozenset[str]:
    """The routes of the tariffs clearing prices with (``YIKATONG_TARIFFS``, default the example tariff)."""
    from clearing.refunds import tariff_refunds
    from fares import TariffError
    from yikatong.settings import get_settings

    try:
        book = tariff_refunds(get_settings().tariffs).book
    except TariffError as exc:
        fail(f"E_BAD_ROUTE: cannot check the route: {str(exc).splitlines()[0]} (check YIKATONG_TARIFFS)")
    return frozenset(route for tariff in book.values() for route in tariff.route_codes)


def register(
    terminal_id: Annotated[str, typer.Option("--terminal-id", help="PSAM terminal number, 12 hex chars.")],
    operator: Annotated[str, typer.Option("--operator", help="Bus operator or merchant (created if new).")],
    route: Annotated[
        str | None, typer.Option("--route", help="Route the terminal serves (GTFS route id, one of the tariff's).")
    ] = None,
    replace_token: Annotated[
        bool,
        typer.Option(
            "--replace-token",
            help="Re-register an existing terminal with a new token (same operator; to move it to "
            "another operator use `yikatong operator assign-terminal`).",
        ),
    ] = False,
) -> None:
    """Register a terminal with its operator and print its token (shown once, stored only hashed)."""
    from clearing.errors import ClearingError
    from clearing.registry import register_terminal

    routes = _tariff_routes() if route is not None else None
    with cli_errors():
        try:
            factory = open_database()
            with factory() as session, session.begin():
                token = register_terminal(
                    session, terminal_id, operator, route, replace_token=replace_token, valid_routes=routes
                )
        except ClearingError as exc:
            fail(str(exc))
    out.print(
        f"terminal {terminal_id.lower()} registered for operator {operator!r}" + (f", route {route}" if route else "")
    )
    out.print("token (shown once; configure it on the terminal now):")
    typer.echo(token)
