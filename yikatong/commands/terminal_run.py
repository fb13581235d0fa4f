"""``yikatong terminal run``: a bus validator (or, with ``--pos``, a merchant till) on PC/SC readers.

The card reader and the PSAM reader are PC/SC reader names (``pcsc_scan`` or the error
message list them). For a bench without a second reader, ``--sam-reader image:PATH`` runs
an emulated PSAM from its image in this process. Each tap is shown on one line (fare,
balance after, status). With ``--clearing-url`` and ``--token`` the journal is uploaded in
the background and the denylist kept up to date; without them the terminal runs offline
and its journal waits for the next run that has a link.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer
from rich.console import Console
from rich.prompt import Prompt

from terminals.session import Outcome, TapResult

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

IMAGE_PREFIX = "image:"
STYLES = {
    Outcome.PAID: "green",
    Outcome.RECOVERED: "green",
    Outcome.ALREADY_PAID: "cyan",
    Outcome.SUSPECT: "yellow",
    Outcome.TAP_AGAIN: "yellow",
    Outcome.BLOCKED: "bold red",
}


def _fail(message: str) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}")
    return typer.Exit(code=1)


def _yuan(fen: int | None) -> str:
    return "-" if fen is None else f"{fen // 100}.{fen % 100:02d}"


def show(result: TapResult) -> None:
    """One console line per tap: time, card, outcome, fare, balance after, message."""
    from terminals.validator import shanghai_now

    card = "-" if result.card_asn is None else "…" + result.card_asn[-8:]
    style = STYLES.get(result.outcome, "red")
    interop = " [magenta]Xi'an/interop[/]" if result.interop else ""
    out.print(
        f"{shanghai_now():%H:%M:%S}  {card:>9}  [{style}]{result.outcome.name:<14}[/]"
        f"  fare {_yuan(result.amount_fen):>6}  balance {_yuan(result.balance_after_fen):>8}"
        f"  {result.message}{interop}  [dim]{result.elapsed_ms:.0f} ms[/]"
    )


def _amount_prompt() -> int | None:
    """Ask the cashier for the next amount in yuan (empty or q closes the till)."""
    text = Prompt.ask("amount (CNY, empty to close)", default="", show_default=False).strip()
    if text in ("", "q"):
        return None
    try:
        yuan, _, fen = text.partition(".")
        amount = int(yuan or "0") * 100 + int((fen + "00")[:2] if fen else "0")
    except ValueError:
        err.print(f"[red]not an amount:[/] {text!r}")
        return _amount_prompt()
    if amount <= 0:
        err.print("[red]the amount must be positive[/]")
        return _amount_prompt()
    return amount


def run(
    card_reader: Annotated[str, typer.Option("--card-reader", help="PC/SC name of the contactless card reader.")],
    sam_reader: Annotated[
        str, typer.Option("--sam-reader", help="PC/SC name of the PSAM reader, or image:PATH for an emulated PSAM.")
    ],
    route: Annotated[str | None, typer.Option("--route", help="GTFS route id this validator serves.")] = None,
    stop: Annotated[str | None, typer.Option("--stop", help="GTFS stop id where it stands.")] = None,
    vehicle: Annotated[str | None, typer.Option("--vehicle", help="Vehicle id written into each record.")] = None,
    tap_kind: Annotated[
        str, typer.Option("--tap-kind", help="single, tap_on or tap_off (routes priced entry to exit).")
    ] = "single",
    pos: Annotated[
        bool, typer.Option("--pos", help="Merchant till: prompt for an amount, then take the card.")
    ] = False,
    journal: Annotated[Path, typer.Option("--journal", help="Journal file (SQLite, WAL).")] = Path(
        "./var/terminal-journal.db"
    ),
    clearing_url: Annotated[
        str | None, typer.Option("--clearing-url", help="Clearing centre base URL for uploads and the denylist.")
    ] = None,
    token: Annotated[str | None, typer.Option("--token", help="This terminal's bearer token.")] = None,
    tariff: Annotated[
        Path | None, typer.Option("--tariff", help="GTFS-Fares v2 tariff directory (default: the example tariff).")
    ] = None,
    repeat_window_s: Annotated[
        int, typer.Option("--repeat-window-s", help="A second tap within this many seconds is not charged.")
    ] = 60,
    amount_fen: Annotated[
        int | None, typer.Option("--amount-fen", help="POS: sell this amount at every tap instead of prompting.")
    ] = None,
    taps_max: Annotated[int | None, typer.Option("--taps-max", help="Stop after this many taps.")] = None,
) -> None:
    """Run a validator (or a POS with --pos) on PC/SC readers, showing each tap."""
    from cardos.psam import Psam, PsamImageError
    from fares import TariffError, load_example_tariff, load_tariff
    from terminals.config import TerminalConfig, UploadConfig
    from terminals.denylist import Denylist
    from terminals.errors import ReaderError, TerminalError
    from terminals.journal import Journal
    from terminals.readers import InProcessReader, PcscReader, Reader, pcsc_reader_names
    from terminals.uploader import UploaderThread
    from terminals.validator import TariffFare, Terminal, Validator

    if (clearing_url is None) != (token is None):
        raise _fail("E_USAGE: --clearing-url and --token go together")
    if not pos and (route is None or stop is None):
        raise _fail("E_USAGE: a validator needs --route and --stop (or use --pos)")
    if tap_kind not in ("single", "tap_on", "tap_off"):
        raise _fail(f"E_USAGE: --tap-kind is single, tap_on or tap_off, not {tap_kind!r}")
    if amount_fen is not None and (not pos or amount_fen <= 0):
        raise _fail("E_USAGE: --amount-fen is a positive amount, for --pos")
    try:
        fares = load_tariff(tariff) if tariff is not None else load_example_tariff()
    except TariffError as exc:
        raise _fail(str(exc)) from None
    line_code = station_code = 0
    if not pos:
        assert route is not None and stop is not None
        if route not in fares.route_codes or stop not in fares.stop_codes:
            raise _fail(f"E_FARE_UNKNOWN_PLACE: route {route!r} or stop {stop!r} is not in the tariff")
        line_code, station_code = fares.route_codes[route], fares.stop_codes[stop]

    wanted = [card_reader] + ([] if sam_reader.startswith(IMAGE_PREFIX) else [sam_reader])
    known = pcsc_reader_names()
    missing = [name for name in wanted if name not in known]
    if missing:
        raise _fail(f"E_READER_NOT_FOUND: {missing} not among the PC/SC readers {known or '(none: is pcscd running?)'}")
    readers: list[Reader] = []
    try:
        card = PcscReader(card_reader, monitor=True)
        readers.append(card)
        if sam_reader.startswith(IMAGE_PREFIX):
            try:
                sam: Reader = InProcessReader("psam-image", Psam.from_file(sam_reader[len(IMAGE_PREFIX) :]))
            except PsamImageError as exc:
                raise _fail(str(exc)) from None
        else:
            sam = PcscReader(sam_reader, monitor=False, unpower_on_disconnect=False)
        readers.append(sam)
    except ReaderError as exc:
        for reader in readers:
            reader.close()
        raise _fail(str(exc)) from None

    journal.parent.mkdir(parents=True, exist_ok=True)
    store, denylist = Journal(journal), Denylist(journal)
    config = TerminalConfig(
        route_id=route,
        stop_id=stop,
        tap_kind=tap_kind,  # type: ignore[arg-type]  # checked above
        vehicle_id=vehicle,
        line_code=line_code,
        station_code=station_code,
        acquirer_city=fares.acquirer_city or TerminalConfig().acquirer_city,
        repeat_window_s=repeat_window_s,
    )
    terminal = Terminal(
        card_reader=card, sam_reader=sam, journal=store, denylist=denylist, config=config, pricer=TariffFare(fares)
    )
    uploader: UploaderThread | None = None
    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    previous = signal.signal(signal.SIGTERM, on_signal)
    try:
        try:
            info = terminal.open_sam()
        except TerminalError as exc:
            raise _fail(f"E_PSAM: cannot open the PSAM in {sam_reader}: {exc}") from None
        where = "POS" if pos else f"route {route} stop {stop}"
        out.print(
            f"[bold]terminal {info.terminal_hex}[/] ({where}); journal {journal}: {store.count()} taps,"
            f" {store.unanswered_records()} not yet uploaded, {len(store.pending())} torn taps pending"
        )
        if clearing_url is not None and token is not None:
            uploader = UploaderThread(journal, UploadConfig(clearing_url=clearing_url, token=token), info.terminal_hex)
            uploader.start()
        validator = Validator(terminal, show)
        out.print("[dim]waiting for cards - Ctrl-C to stop[/]")
        try:
            if pos:
                next_amount = (lambda: amount_fen) if amount_fen is not None else _amount_prompt
                validator.run_pos(stopping, next_amount, taps_max)
            else:
                validator.run(stopping, taps_max)
        except KeyboardInterrupt:
            pass
        except TerminalError as exc:  # a broken invariant (journal): stop taking cards, say why
            raise _fail(f"{exc} - the terminal stopped; the journal keeps every committed tap") from None
    finally:
        signal.signal(signal.SIGTERM, previous)
        if uploader is not None:
            uploader.stop()
        for reader in readers:
            reader.close()
        store.close()
        denylist.close()
    out.print(f"[yellow]stopped[/] after {validator.taps} taps")
