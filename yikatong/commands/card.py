"""``yikatong card``: issue, show and emulate cards."""

from __future__ import annotations

import typer

from yikatong.commands.card_emulate import emulate
from yikatong.commands.card_issue import issue, show

app = typer.Typer(help="Issue, show and emulate cards.", no_args_is_help=True)
app.command("issue")(issue)
app.command("show")(show)
app.command("emulate")(emulate)
