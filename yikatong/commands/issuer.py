"""``yikatong issuer add|list``: the card issuers this installation knows, ours and peers.

Issuers are data (``clearing.registry.register_issuer``): an issuer registered ``--own``
whose keys are in the key store (``yikatong keys init --issuer ID`` or ``keys import``) can
issue cards with ``yikatong card issue --issuer-id ID``; a peer issuer's cards are only
accepted as acquirer. ``yikatong init`` registers the built-in cities (Xianyang, Xi'an),
ours being ``YIKATONG_CITY``.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from yikatong.commands.init import cli_errors, fail, open_database, out

app = typer.Typer(help="Card issuers: register one (ours or a peer), list them.", no_args_is_help=True)


@app.command("add")
def add(
    issuer_id: Annotated[str, typer.Option("--issuer-id", help="Issuer id, 16 hex chars (file 0x15 bytes 0-7).")],
    city: Annotated[str, typer.Option("--city", help="Short city name: lower-case letters, digits, '_', '-'.")],
    name: Annotated[str, typer.Option("--name", help="The issuer's name (1-64 characters).")],
    city_code: Annotated[
        str | None,
        typer.Option(
            "--city-code", help="4 hex digits: file 0x17 city code and ASN prefix; default: hex digits 5-8 of the id."
        ),
    ] = None,
    own: Annotated[
        bool, typer.Option("--own/--peer", help="Ours to issue cards for, or a peer whose cards we accept.")
    ] = False,
) -> None:
    """Register a card issuer. Again with the same details is a no-op; with others it is refused."""
    from clearing.errors import ClearingError
    from clearing.registry import register_issuer

    with cli_errors():
        try:
            factory = open_database()
            with factory() as session, session.begin():
                issuer = register_issuer(session, issuer_id, city=city, name=name, city_code=city_code, own=own)
                shown = (issuer.issuer_id, issuer.city, issuer.city_code, issuer.own)
        except ClearingError as exc:
            fail(str(exc))
    issuer_hex, city_name, code, is_own = shown
    role = "ours (issues cards)" if is_own else "peer (cards accepted as acquirer)"
    out.print(f"issuer {issuer_hex} ({city_name}, city code {code}) registered: {role}")
    if is_own:
        out.print(f"its cards need its keys: `yikatong keys init --issuer {issuer_hex}` (or `keys import`) if not done")


@app.command("list")
def list_issuers() -> None:
    """List the registered issuers."""
    from clearing.registry import list_issuers as registered

    with cli_errors():
        factory = open_database()
        with factory() as session:
            rows = [(i.issuer_id, i.city, i.city_code, i.name, i.own) for i in registered(session)]
    if not rows:
        out.print("no issuers registered yet (run `yikatong init` or `yikatong issuer add`)")
        return
    table = Table(title="issuers")
    table.add_column("issuer", no_wrap=True, min_width=16)
    for column in ("city", "city code", "name", "role"):
        table.add_column(column)
    for issuer_hex, city, code, name, own in rows:
        table.add_row(issuer_hex, city, code, name, "own" if own else "peer")
    out.print(table)
