"""``yikatong terminal run``: a bus validator (or, with ``--pos``, a merchant till) on PC/SC readers.

The card reader and the PSAM reader are PC/SC reader names (``pcsc_scan`` or the error
message list them). For a bench without a second reader, ``--sam-reader image:PATH`` runs
an emulated PSAM from its image in this process. Each tap is shown on one line (time in
Asia/Shanghai with its offset, fare or sale and why it is below the full fare, balance after,
outcome); each upload on one line (batch, records, verdicts, backlog). With ``--clearing-url``
and ``--token`` the journal is uploaded in the background and the denylist kept up to date;
without them the terminal runs offline and its journal waits for the next run with a link.

Stopping (``--taps-max``, SIGTERM, Ctrl-C) finishes the tap in progress, tries one last upload
for at most ``--final-upload-s`` seconds and says what is left in the journal, with a tally of
the run (paid, recovered, repeated, refused, failed).
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated, Final

import typer
from rich.console import Console
from rich.markup import escape
from rich.prompt import Prompt

from terminals.display import AmountError, Tally, parse_yuan, shanghai_clock, verdict_counts, yuan
from terminals.session import Outcome, TapResult

if TYPE_CHECKING:
    from collections.abc import Callable

    from terminals.config import UploadConfig
    from terminals.readers import Reader
    from terminals.uploader import BatchUploaded

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

IMAGE_PREFIX: Final = "image:"
DEFAULT_JOURNAL: Final = Path("./var/terminal-journal.db")
FINAL_UPLOAD_S_DEFAULT: Final = 5.0
STYLES: Final = {
    Outcome.PAID: "green",
    Outcome.RECOVERED: "green",
    Outcome.ALREADY_PAID: "cyan",
    Outcome.SUSPECT: "yellow",
    Outcome.TAP_AGAIN: "yellow",
    Outcome.BLOCKED: "bold red",
    Outcome.SUSPECTED_CLONE: "bold red",
}


def _fail(message: str) -> typer.Exit:
    err.print(f"[bold red]error:[/] {escape(message)}")
    return typer.Exit(code=1)


def open_readers(card_reader: str, sam_reader: str) -> tuple[Reader, Reader]:
    """The card reader and the PSAM (a PC/SC reader, or ``image:<file>`` in process), or a one-line refusal."""
    from cardos.psam import Psam, PsamImageError
    from terminals.errors import ReaderError
    from terminals.readers import InProcessReader, PcscReader, pcsc_reader_names

    wanted = [card_reader] + ([] if sam_reader.startswith(IMAGE_PREFIX) else [sam_reader])
    known = pcsc_reader_names()
    missing = [name for name in wanted if name not in known]
    if missing:
        raise _fail(f"E_READER_NOT_FOUND: {missing} not among the PC/SC readers {known or '(none: is pcscd running?)'}")
    readers: list[Reader] = []
    try:
        card: Reader = PcscReader(card_reader, monitor=True)
        readers.append(card)
        if sam_reader.startswith(IMAGE_PREFIX):
            try:
                sam: Reader = InProcessReader("psam-image", Psam.from_file(sam_reader[len(IMAGE_PREFIX) :]))
            except PsamImageError as exc:
                raise _fail(str(exc)) from None
        else:
            # Monitored: a PSAM that leaves and comes back (its emulator restarted) is reopened
            # before the next tap instead of failing it.
            sam = PcscReader(sam_reader, monitor=True, unpower_on_disconnect=False)
        readers.append(sam)
    except ReaderError as exc:
        for reader in readers:
            reader.close()
        raise _fail(str(exc)) from None
    return card, sam


def _now() -> str:
    from terminals.validator import shanghai_now

    return shanghai_clock(shanghai_now())


def tap_line(result: TapResult, *, pos: bool = False, at: str | None = None) -> str:
    """One console line per tap: time, card, outcome, fare (or sale) and its reason, balance after."""
    card = "-" if result.card_asn is None else "…" + result.card_asn[-8:]
    style = STYLES.get(result.outcome, "red")
    interop = " [magenta]Xi'an/interop[/]" if result.interop else ""
    what = "sale" if pos else "fare"
    reason = f" ({escape(result.fare_reason)})" if result.fare_reason else ""
    return (
        f"{at or _now()}  {card:>9}  [{style}]{result.outcome.name:<15}[/]"
        f"  {what} {yuan(result.amount_fen):>6}{reason}  balance {yuan(result.balance_after_fen):>8}"
        f"  {escape(result.message)}{interop}  [dim]{result.elapsed_ms:.0f} ms[/]"
    )


def upload_line(notice: BatchUploaded, *, at: str | None = None) -> str:
    """One console line per answered batch: its number, records, verdicts and what is still waiting."""
    return (
        f"{at or _now()}  [blue]upload[/] batch {notice.batch_seq}: {notice.records} records - "
        f"{verdict_counts(notice.verdicts)}; backlog {notice.backlog}"
    )


def _journal_path(journal: Path | None) -> Path:
    """The journal file; a given path's directory must exist (a typo must not start a new
    terminal's journal somewhere else); only the default's ``./var`` is made, when opened."""
    if journal is None:
        return DEFAULT_JOURNAL
    if journal.is_dir():
        raise _fail(f"E_JOURNAL_PATH: --journal {journal} is a directory; give the journal file inside it")
    if not journal.parent.is_dir():
        raise _fail(
            f"E_JOURNAL_PATH: the directory {journal.parent} of --journal {journal} does not exist;"
            " create it, or fix the path (a new journal file is made in an existing directory)"
        )
    return journal


def _amount_prompt() -> int | None:
    """Ask the cashier for the next sale in yuan (empty or q closes the till); echo it before charging."""
    while True:
        text = Prompt.ask("sale amount in CNY, e.g. 12.50 (empty to close)", default="", show_default=False)
        if text.strip() in ("", "q"):
            return None
        try:
            amount_fen = parse_yuan(text)
        except AmountError as exc:
            err.print(f"[red]{escape(str(exc))}[/]")
            continue
        out.print(f"[bold]sale {yuan(amount_fen)} CNY[/] - present card")
        return amount_fen


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
        bool, typer.Option("--pos", help="Merchant till: prompt for an amount in yuan, then take the card.")
    ] = False,
    journal: Annotated[
        Path | None,
        typer.Option(
            "--journal",
            help="Journal file (SQLite, WAL, mode 0600); its directory must exist. Default ./var/terminal-journal.db.",
        ),
    ] = None,
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
        int | None,
        typer.Option("--amount-fen", help="POS: sell this amount (in fen) at every tap instead of prompting."),
    ] = None,
    taps_max: Annotated[int | None, typer.Option("--taps-max", help="Stop after this many taps.")] = None,
    final_upload_s: Annotated[
        float, typer.Option("--final-upload-s", help="On stopping, try a last upload for at most this many seconds.")
    ] = FINAL_UPLOAD_S_DEFAULT,
    clinic: Annotated[
        bool, typer.Option("--clinic", help="Clinic: settle medical visits by card (PIN, fund share, purse share).")
    ] = False,
    clinic_name: Annotated[str, typer.Option("--clinic-name", help="Clinic: the name on receipts.")] = "clinic",
    visit_kind: Annotated[str, typer.Option("--visit-kind", help="Clinic: outpatient or inpatient.")] = "outpatient",
    bill_fen: Annotated[
        int | None, typer.Option("--bill-fen", help="Clinic: bill this total (fen) at every visit, no prompt.")
    ] = None,
    covered_fen: Annotated[
        int | None, typer.Option("--covered-fen", help="Clinic: with --bill-fen, the part in the catalogue (fen).")
    ] = None,
) -> None:
    """Run a validator (or a POS with --pos, a clinic with --clinic) on PC/SC readers, showing each tap and upload."""
    if clinic:  # its own flow: terminals.clinic, yikatong/commands/terminal_clinic.py
        from yikatong.commands.terminal_clinic import run_clinic

        run_clinic(
            card_reader=card_reader, sam_reader=sam_reader, journal_path=_journal_path(journal),
            default_journal=journal is None, clearing_url=clearing_url, token=token, clinic_name=clinic_name,
            visit_kind=visit_kind, bill_fen=bill_fen, covered_fen=covered_fen, visits_max=taps_max,
            final_upload_s=final_upload_s,
        )  # fmt: skip
        return
    from fares import TariffError, load_example_tariff, load_tariff
    from terminals.config import TerminalConfig, UploadConfig
    from terminals.denylist import Denylist
    from terminals.errors import TerminalError
    from terminals.journal import Journal
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
    if final_upload_s <= 0:
        raise _fail("E_USAGE: --final-upload-s is a positive number of seconds")
    journal_path = _journal_path(journal)
    try:
        fares = load_tariff(tariff) if tariff is not None else load_example_tariff()
    except TariffError as exc:
        raise _fail(str(exc)) from None
    line_code = station_code = 0
    if not pos:
        assert route is not None and stop is not None
        if route not in fares.route_codes:
            routes = ", ".join(sorted(fares.route_codes))
            raise _fail(f"E_FARE_UNKNOWN_PLACE: route {route!r} is not in the tariff; its routes: {routes}")
        if stop not in fares.stop_codes:
            stops = ", ".join(sorted(fares.stop_codes))
            raise _fail(f"E_FARE_UNKNOWN_PLACE: stop {stop!r} is not in the tariff; its stops: {stops}")
        line_code, station_code = fares.route_codes[route], fares.stop_codes[stop]

    card, sam = open_readers(card_reader, sam_reader)
    readers = [card, sam]

    if journal is None:  # the default place: a first run on this machine makes it, private
        journal_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        store = Journal(journal_path)
        denylist = Denylist(journal_path)
    except TerminalError as exc:
        for reader in readers:
            reader.close()
        raise _fail(str(exc)) from None
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
    upload_config = (
        UploadConfig(clearing_url=clearing_url, token=token) if clearing_url is not None and token is not None else None
    )
    uploader: UploaderThread | None = None
    stopping = threading.Event()
    in_prompt = threading.Event()
    tally = Tally()
    failure: str | None = None

    def on_signal(signum: int, frame: FrameType | None) -> None:
        # Finish the tap in progress (a debit may be in flight); only a prompt is interrupted.
        stopping.set()
        if in_prompt.is_set():
            raise KeyboardInterrupt

    def on_result(result: TapResult) -> None:
        tally.add(result)
        out.print(tap_line(result, pos=pos))

    def on_batch(notice: BatchUploaded) -> None:
        out.print(upload_line(notice))

    def next_amount() -> int | None:
        if amount_fen is not None:
            out.print(f"[bold]sale {yuan(amount_fen)} CNY[/] - present card")
            return amount_fen
        in_prompt.set()
        try:
            return _amount_prompt()
        finally:
            in_prompt.clear()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        try:
            info = terminal.open_sam()
        except TerminalError as exc:
            raise _fail(f"E_PSAM: cannot open the PSAM in {sam_reader}: {exc}") from None
        where = "POS" if pos else f"route {route} stop {stop}"
        frauds = store.fraud_count()
        out.print(
            f"[bold]terminal {info.terminal_hex}[/] ({where}); journal {journal_path}: {store.count()} taps,"
            f" {store.unanswered_records()} not yet uploaded, {len(store.pending())} torn taps pending"
            + (f", {frauds} suspected clones kept" if frauds else "")
        )
        if upload_config is not None:
            uploader = UploaderThread(journal_path, upload_config, info.terminal_hex, on_batch=on_batch)
            uploader.start()
        validator = Validator(terminal, on_result)
        out.print("[dim]waiting for cards - Ctrl-C to stop[/]")
        try:
            if pos:
                validator.run_pos(stopping, next_amount, taps_max)
            else:
                validator.run(stopping, taps_max)
        except KeyboardInterrupt:
            pass
        except TerminalError as exc:  # a broken invariant (journal): stop taking cards, say why
            failure = f"{exc} - the terminal stopped; the journal keeps every committed tap"
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if uploader is not None:
            uploader.stop(timeout_s=2.0)
        for reader in readers:
            reader.close()
        left = store.unanswered_records()
        store.close()
        denylist.close()
    out.print(f"[yellow]stopped[/] after {tally.taps} taps: {tally.summary()}")
    _say_what_is_left(journal_path, upload_config, left, final_upload_s, on_batch)
    if failure is not None:
        raise _fail(failure)


def _say_what_is_left(
    journal_path: Path,
    upload_config: UploadConfig | None,
    left: int,
    budget_s: float,
    on_batch: Callable[[BatchUploaded], None],
) -> None:
    """The last upload (bounded) and the one line that says whether records stay behind."""
    from terminals.uploader import final_upload

    reason = ""
    if upload_config is None:
        reason = " (offline: no --clearing-url)"
    elif left:
        out.print(f"[dim]last upload: {left} records, at most {budget_s:g} s[/]")
        try:
            done = final_upload(journal_path, upload_config, budget_s=budget_s, on_batch=on_batch)
        except KeyboardInterrupt:
            reason = " (last upload interrupted)"
        else:
            left = done.left
            reason = f" ({done.error})" if done.error else ""
    if left == 0:
        out.print("[green]all uploaded[/]")
    else:
        out.print(
            f"[yellow]{left} records not uploaded[/]{escape(reason)}: they stay in {journal_path}"
            " and go up on the next run with a link"
        )
