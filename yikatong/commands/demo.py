"""``yikatong demo``: issue demo cards, ride two buses, upload and clear, print what happened."""

from __future__ import annotations

import contextlib
import signal
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from yikatong.demo import DemoReport, run_demo
from yikatong.settings import Settings, get_settings


def _yuan(fen: int | None) -> str:
    if fen is None:
        return "-"
    return f"¥{fen // 100}.{fen % 100:02d}"


def render(report: DemoReport, console: Console) -> None:
    table = Table(title="Taps on the demo route (Asia/Shanghai)", show_lines=False)
    for column in ("time", "bus", "stop", "card", "result", "fare", "balance", "TAC", "via"):
        table.add_column(column, justify="right" if column in ("fare", "balance") else "left")
    for line in report.taps:
        result = line.result
        record = result.record
        table.add_row(
            line.time.strftime("%H:%M:%S"),
            line.bus,
            line.stop,
            line.card,
            f"{result.outcome.value} {result.message}",
            _yuan(result.amount_fen),
            _yuan(result.balance_after_fen),
            record.tac if record is not None else "",
            line.via,
        )
    console.print(table)
    console.print(f"clearing verdicts: {report.verdicts}")
    balances = Table(title="Card purse vs clearing's shadow balance")
    for column in ("card", "ASN", "purse", "shadow", "equal"):
        balances.add_column(column)
    for label, asn, purse, shadow in report.balances:
        same = "yes" if shadow == purse else ("foreign card (Xi'an clears it)" if shadow is None else "NO")
        balances.add_row(label, asn, _yuan(purse), _yuan(shadow), same)
    console.print(balances)
    console.print(f"ledger trial balance: {'debits == credits' if report.trial_balance_ok else 'UNBALANCED'}")
    for close in report.closes:
        console.print(
            f"settlement: window {close.business_day} closed, {close.payees} payee(s), paid {_yuan(close.payout_fen)},"
            f" fees {_yuan(close.fee_fen)}, carried {_yuan(close.carry_fen)}"
        )
        for path in sorted(close.files.values()):
            console.print(f"  {path}")


def demo(
    seed: Annotated[int, typer.Option(help="seed of the simulated morning (same seed, same taps)")] = 7,
    workdir: Annotated[Path, typer.Option(help="where card images, PSAMs and journals go")] = Path("var/demo"),
    pcsc: Annotated[
        bool | None, typer.Option("--pcsc/--no-pcsc", help="bus 1 through pcscd + vpcd (default: when running)")
    ] = None,
    serve: Annotated[bool, typer.Option(help="keep serving the clearing API afterwards")] = False,
    port: Annotated[int, typer.Option(help="port for --serve: clearing API and portal")] = 8400,
    payments_port: Annotated[int, typer.Option(help="port for --serve: localstripe")] = 8420,
    xian_port: Annotated[int, typer.Option(help="port for --serve: the Xi'an instance (docs/interop.md, Demo)")] = 8410,
) -> None:
    """Issue demo cards, tap them along a simulated bus route, upload and clear the taps."""
    console = Console(width=max(Console().width, 150))
    settings = get_settings()
    with console.status("building the demo city and riding the morning buses…"):
        report = run_demo(settings, seed=seed, workdir=workdir, use_pcsc=pcsc)
    render(report, console)
    console.print(
        "\n[bold]Where to look[/bold]\n"
        f"  database:     {settings.database_url}\n"
        f"  key store:    {settings.keystore} (encrypted; keys are never shown)\n"
        f"  card images:  {workdir / 'cards'}  (try: yikatong card emulate --image FILE)\n"
        f"  journals:     {workdir}/journal-*.db\n"
        "  a card:       yikatong card show --asn ASN\n"
        "  exceptions:   yikatong exceptions list"
    )
    if not report.trial_balance_ok or any(
        shadow is not None and shadow != purse for _label, _asn, purse, shadow in report.balances
    ):
        raise typer.Exit(1)
    if serve:
        serve_live(settings, report, console, port=port, payments_port=payments_port, xian_port=xian_port)


def serve_live(
    settings: Settings, report: DemoReport, console: Console, *, port: int, payments_port: int, xian_port: int = 8410
) -> None:
    """Keep the city running: clearing API and portal, localstripe, and bus 1 tapping (``yikatong.live_demo``)."""
    import time

    from yikatong import live_demo
    from yikatong.demo import clearing_server, open_keystore

    for what, number in (("--port", port), ("--payments-port", payments_port), ("--xian-port", xian_port)):
        if not live_demo.port_free(number):
            console.print(f"[red]port {number} is in use ({what}): stop what holds it or pick another port[/red]")
            raise typer.Exit(1)
    signal.signal(signal.SIGTERM, live_demo.interrupt)  # a `kill` stops localstripe and the bus too
    live = live_demo.live_settings(settings, port=port, payments_port=payments_port)
    from interop_xian.keys import SigningKeys
    from yikatong import live_interop  # issue 12: Xi'an beside the demo city
    from yikatong.demo import XIAN_CARD_BALANCE_FEN

    live_interop.exchange_settings_into_environment()
    live = live.model_copy(update={"peer_url": f"http://127.0.0.1:{xian_port}"})
    secret = live.payments_webhook_secrets[0].get_secret_value()
    # what started is stopped if a later part fails to start (Xi'an's child, localstripe)
    with (
        console.status("starting Xi'an, localstripe, the portal and the bus line…"),
        contextlib.ExitStack() as starting,
    ):
        stack = starting
        xian = live_interop.XianInstance().start(
            report.workdir, open_keystore(live), SigningKeys.from_settings(live), port=xian_port,
            card_asn=live_interop.xian_card_asn(report.balances), opening_fen=XIAN_CARD_BALANCE_FEN,
            xianyang_url=f"http://127.0.0.1:{port}",
        )  # fmt: skip
        stack.callback(xian.stop)
        payments_url = stack.enter_context(
            live_demo.localstripe(
                payments_port, report.workdir / "localstripe.log", live.payments_key.get_secret_value()
            )
        )
        city, riders = live_demo.prepare(live, report)
        xian_city = xian.wait(live.database_url)  # before Xianyang's exchange job starts with its server
        url = stack.enter_context(clearing_server(live, port))
        live_demo.point_webhooks(payments_url, url, secret)
        line = live_demo.bus_line(live, report.workdir, open_keystore(live), riders, url).start()
        stack.callback(line.stop)
        stack = starting.pop_all()
    with stack:
        console.print(
            "\n[bold]The city is running[/bold] (Ctrl-C to stop)\n"
            f"  portal:          {url}/   (log in as {city.citizen_mobile} / {city.citizen_password!r})\n"
            f"  clearing API:    {url}/v1  (OpenAPI: {url}/docs)\n"
            f"  payments:        {payments_url}  (localstripe; top-ups are paid in its test mode)\n"
            f"  demo card:       {city.card_asn}  PIN {city.card_pin}  image {city.card_image}\n"
            f"  reader page:     yikatong card emulate --image {city.card_image}   (puts it on the vpcd reader)\n"
            f"                   yikatong reader-agent --origin {url}\n"
            f"  bus 1:           tapping a demo card every {live_demo.TAP_INTERVAL_S:.0f} s and uploading\n"
            f"  staff console:   {url}/staff   (password {city.citizen_password!r}; a code from the TOTP URI below)"
        )
        for username, role, uri in city.staff:
            console.print(f"    {username} ({role}): {uri}", highlight=False, soft_wrap=True)
        console.print(
            f"  Xi'an:           {xian_city.url}  (a second Yikatong, YIKATONG_CITY=xian, in {xian_city.home};"
            f" log {xian_city.log_path})\n"
            f"  interop:         the Xi'an card {xian_city.card_asn}'s taps go to Xi'an every"
            f" {live_interop.EXCHANGE_INTERVAL_S:.0f} s; the net positions, both sides:\n"
            "                   yikatong interop report\n"
            f"                   {xian_city.command_prefix()} yikatong interop report",
            highlight=False, soft_wrap=True,
        )  # fmt: skip
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            console.print("stopping…")
