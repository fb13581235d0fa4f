"""``yikatong terminal run --clinic``: a clinic's terminal settling visits by card (``terminals.clinic``).

The clerk types the bill (total and the part in the scheme's catalogue, in yuan), the patient
presents the card and types the PIN (hidden); the host prices the visit and reserves the fund's
share, the purse pays the patient's share through the PSAM, the host posts the fund's share and
the receipt is printed. The host is the server at ``--clearing-url`` (its clinic API), with the
terminal's ``--token``; the journal of purse records is uploaded in the background like any
terminal's. A torn purse debit keeps the visit open: present the same card again.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from types import FrameType

import typer
from rich.markup import escape
from rich.prompt import Prompt

from terminals.display import AmountError, parse_yuan, yuan
from yikatong.commands.terminal_run import _fail, _say_what_is_left, err, open_readers, out, upload_line

VISIT_KINDS = ("outpatient", "inpatient")


def _bill_prompt(kind: str) -> object:
    """The next bill from the clerk, or None to close (empty or q)."""
    from terminals.clinic import ClinicBill

    while True:
        text = Prompt.ask("bill total in CNY (empty to close)", default="", show_default=False)
        if text.strip() in ("", "q"):
            return None
        covered_text = Prompt.ask("of which in the catalogue, CNY (empty: all)", default="", show_default=False)
        try:
            total = parse_yuan(text)
            covered = parse_yuan(covered_text) if covered_text.strip() else total
        except AmountError as exc:
            err.print(f"[red]{escape(str(exc))}[/]")
            continue
        if covered > total:
            err.print("[red]E_MED_BAD_BILL: the covered part cannot exceed the total[/]")
            continue
        return ClinicBill(total, covered, kind)


def run_clinic(
    *,
    card_reader: str,
    sam_reader: str,
    journal_path: Path,
    default_journal: bool,
    clearing_url: str | None,
    token: str | None,
    clinic_name: str,
    visit_kind: str,
    bill_fen: int | None,
    covered_fen: int | None,
    visits_max: int | None,
    final_upload_s: float,
) -> None:
    from terminals.clinic import Clinic, ClinicBill, ClinicOutcome, HttpClinicHost
    from terminals.config import TerminalConfig, UploadConfig
    from terminals.denylist import Denylist
    from terminals.errors import TerminalError
    from terminals.journal import Journal
    from terminals.uploader import UploaderThread
    from terminals.validator import Terminal

    if clearing_url is None or token is None:
        raise _fail("E_USAGE: a clinic needs its host: --clearing-url and --token")
    if visit_kind not in VISIT_KINDS:
        raise _fail(f"E_USAGE: --visit-kind is outpatient or inpatient, not {visit_kind!r}")
    if bill_fen is not None and bill_fen <= 0:
        raise _fail("E_USAGE: --bill-fen is a positive amount")
    if covered_fen is not None and (bill_fen is None or not 0 <= covered_fen <= bill_fen):
        raise _fail("E_USAGE: --covered-fen goes with --bill-fen and is at most the bill")
    card, sam = open_readers(card_reader, sam_reader)
    readers = [card, sam]
    if default_journal:
        journal_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    store = Journal(journal_path)
    denylist = Denylist(journal_path)
    terminal = Terminal(card_reader=card, sam_reader=sam, journal=store, denylist=denylist, config=TerminalConfig())
    stopping = threading.Event()
    visits = 0
    uploader: UploaderThread | None = None
    upload_config = UploadConfig(clearing_url=clearing_url, token=token)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.set()
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        try:
            info = terminal.open_sam()
        except TerminalError as exc:
            raise _fail(f"E_PSAM: cannot open the PSAM in {sam_reader}: {exc}") from None
        host = HttpClinicHost.connect(clearing_url, info.terminal_hex, token)
        clinic = Clinic(terminal, host, clinic_name=clinic_name)
        out.print(f"[bold]clinic terminal {info.terminal_hex}[/] ({escape(clinic_name)}); journal {journal_path}")
        uploader = UploaderThread(
            journal_path, upload_config, info.terminal_hex, on_batch=lambda n: out.print(upload_line(n))
        )
        uploader.start()
        bill: object = None
        try:
            while not stopping.is_set() and (visits_max is None or visits < visits_max):
                if not clinic.open_visits or bill is None:
                    if bill_fen is not None:
                        bill = ClinicBill(bill_fen, bill_fen if covered_fen is None else covered_fen, visit_kind)
                    else:
                        bill = _bill_prompt(visit_kind)
                    if bill is None:
                        break
                assert isinstance(bill, ClinicBill)
                resuming = bool(clinic.open_visits)
                out.print(
                    "[bold]present the same card again[/] to finish its visit"
                    if resuming
                    else f"[bold]bill {yuan(bill.total_fen)} CNY[/] (covered {yuan(bill.covered_fen)}) - present card"
                )
                if not _wait_card(terminal, stopping):
                    break
                pin = "" if resuming else typer.prompt("PIN", hide_input=True, default="", show_default=False)
                result = clinic.settle(bill, pin)
                style = {ClinicOutcome.SETTLED: "green", ClinicOutcome.PRESENT_AGAIN: "yellow"}.get(
                    result.outcome, "red"
                )
                out.print(f"[{style}]{result.outcome.value}[/] {escape(result.message)}")
                if result.receipt is not None:
                    out.print(escape(result.receipt))
                if result.outcome is not ClinicOutcome.PRESENT_AGAIN:
                    visits += 1
        except KeyboardInterrupt:
            pass
        host.close()
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
    out.print(f"[yellow]stopped[/] after {visits} visits")
    _say_what_is_left(journal_path, upload_config, left, final_upload_s, lambda n: out.print(upload_line(n)))


def _wait_card(terminal: object, stopping: threading.Event) -> bool:
    """Block until a card is inserted (the reader's event queue), or the terminal stops."""
    import queue

    from terminals.validator import Terminal

    assert isinstance(terminal, Terminal)
    while not stopping.is_set():
        try:
            event = terminal.card_reader.events.get(timeout=0.2)
        except queue.Empty:
            continue
        if event.kind == "inserted":
            return True
    return False
