"""The ``yikatong`` command line: one typer app, a sub-app per area in ``yikatong/commands``."""

from __future__ import annotations

import typer

from yikatong.commands import (
    bills,
    card,
    clear,
    demo,
    denylist,
    exceptions,
    init,
    interop,
    issuer,
    keys,
    merchant,
    portal,
    reader_agent,
    reconcile,
    serve,
    settle,
    social_security,
    staff,
    terminal,
)

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
app.add_typer(portal.app, name="portal")
app.add_typer(staff.app, name="staff")
app.add_typer(interop.app, name="interop")
app.add_typer(social_security.app, name="social-security")
app.add_typer(bills.app, name="bills")
app.command("serve")(serve.serve)
app.command("clear")(clear.clear)
app.command("demo")(demo.demo)
app.command("settle")(settle.settle)
app.command("reconcile")(reconcile.reconcile)
app.add_typer(merchant.merchant_app, name="merchant")
app.add_typer(merchant.operator_app, name="operator")
app.add_typer(merchant.fees_app, name="fees")
app.command("reader-agent")(reader_agent.reader_agent)


if __name__ == "__main__":
    app()
