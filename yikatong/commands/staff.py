"""``yikatong staff add|list|reset-totp``: staff accounts of the console, made by the operator.

The first administrator cannot be made in the console (nobody could log in to make it), so
the operator makes it here, on the server's command line. ``add`` and ``reset-totp`` print
the TOTP provisioning URI once (scan it into an authenticator app); the secret is stored
encrypted and is never shown again. Passwords are asked for without echo (or read from
``--password-stdin``). Each command is a line in the audit log (actor ``cli``).
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.table import Table

from yikatong.commands.init import cli_errors, fail, open_database, out

app = typer.Typer(help="Staff accounts of the staff console: add, list, reset-totp.", no_args_is_help=True)

CLI_ACTOR = "cli"


def _service() -> object:
    from portal.audit import AuditLog
    from portal.staff import StaffService
    from yikatong.app import portal_lookup_key
    from yikatong.settings import get_settings

    sessions = open_database()
    return StaffService(sessions=sessions, lookup_key=portal_lookup_key(get_settings()), audit=AuditLog(sessions))


def _run(action: str, **kwargs: object) -> object:
    from portal.errors import PortalError
    from portal.staff import StaffService

    with cli_errors():
        service = _service()
        assert isinstance(service, StaffService)
        try:
            return getattr(service, action)(**kwargs)
        except PortalError as exc:
            fail(str(exc))


@app.command("add")
def add(
    username: Annotated[str, typer.Option("--username", help="Login name: 3-32 of a-z 0-9 . _ - (a letter first).")],
    role: Annotated[str, typer.Option("--role", help="counter_clerk, finance or administrator.")],
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from the first line of stdin.")
    ] = False,
) -> None:
    """Make a staff account and print its TOTP provisioning URI (shown once)."""
    from portal.staff import NewStaff

    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = typer.prompt("password", hide_input=True, confirmation_prompt=True)
    new = _run("add", username=username, role=role, password=password, actor=CLI_ACTOR)
    assert isinstance(new, NewStaff)
    out.print(f"staff account [bold]{new.staff.username}[/] ({new.staff.role}) added")
    out.print("TOTP provisioning URI (shown once; scan it into an authenticator app):", highlight=False)
    typer.echo(new.provisioning_uri)


@app.command("list")
def list_staff() -> None:
    """The staff accounts, their roles and whether they are active."""
    rows = _run("accounts", actor=CLI_ACTOR)
    assert isinstance(rows, list)
    table = Table(title="staff accounts")
    for column in ("username", "role", "active", "created"):
        table.add_column(column)
    for v in rows:
        table.add_row(v.username, v.role, "yes" if v.active else "no", v.created_at.isoformat(timespec="seconds"))
    out.print(table)


@app.command("reset-totp")
def reset_totp(
    username: Annotated[str, typer.Option("--username", help="The staff account whose TOTP secret to replace.")],
) -> None:
    """Give an account a new TOTP secret (a lost phone); its sessions end. Prints the new URI once."""
    from portal.staff import NewStaff

    new = _run("reset_totp", username=username, actor=CLI_ACTOR)
    assert isinstance(new, NewStaff)
    out.print(f"TOTP of [bold]{new.staff.username}[/] reset; the old codes no longer work")
    out.print("TOTP provisioning URI (shown once):", highlight=False)
    typer.echo(new.provisioning_uri)
