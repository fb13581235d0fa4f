"""``yikatong terminal``: register terminals, personalise their PSAMs, run validators and POS."""

from __future__ import annotations

import typer

from yikatong.commands.terminal_admin import register
from yikatong.commands.terminal_psam import psam
from yikatong.commands.terminal_run import run

app = typer.Typer(help="Register terminals; personalise their PSAMs; run a validator or POS.", no_args_is_help=True)
app.command("register")(register)
app.command("psam")(psam)
app.command("run")(run)
