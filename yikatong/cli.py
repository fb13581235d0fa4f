"""The ``yikatong`` command line: one typer app, a sub-app per area in ``yikatong/commands``."""

from __future__ import annotations

import typer

from yikatong.commands import card, clear, demo, denylist, exceptions, init, issuer, keys, serve, terminal

app = typer.Typer(
    name="yikatong",
    help="Yikatong (一卡通), the Xianyang city card system.",
    no_args_is_help=True,
    add_completion=False,
)
app.command("init")(init.init)
app.add_typer(keys.app, name="keys")
app.add_typer(issuer.app, name="issuer")
app.add_typer(card.app, name="card")
app.add_typer(terminal.app, name="terminal")
app.add_typer(exceptions.app, name="exceptions")
app.add_typer(denylist.app, name="denylist")
app.command("serve")(serve.serve)
app.command("clear")(clear.clear)
app.command("demo")(demo.demo)


if __name__ == "__main__":
    app()
