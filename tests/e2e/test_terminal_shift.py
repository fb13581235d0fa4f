"""A validator's shift through real pcscd + vpcd: the PSAM stays, cards come and go, records get home.

The PSAM runs in its own emulator process (``card emulate --psam``) for the whole shift, and
every card presentation is a separate emulator process (``card emulate --image``) started and
stopped, as riders come and go. ``terminal run`` is run as riders and operators see it: its
console, its tally, and its last upload when it stops.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from cardos.image import CardImage
from cardos.psam import PsamImage
from terminals.config import TerminalConfig
from terminals.denylist import Denylist
from terminals.journal import Journal
from terminals.readers import PcscReader
from terminals.session import Outcome
from terminals.validator import FlatFare, Terminal
from tests.pcsc_support import Insert, PcscEnv, wait_card_state
from tests.terminals.test_tap_kit import NOW, make_card, make_psam
from tests.terminals.test_uploader_double import ClearingContractDouble

pytestmark = pytest.mark.pcsc

TERMINAL = "360486600002"  # make_psam's terminal number
TOKEN = "tok-shift"
START_S = 30.0


def emulator(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "yikatong.cli", "card", "emulate", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=15)
    assert proc.returncode == 0, stderr
    return stdout


@contextlib.contextmanager
def psam_process(pcscd: PcscEnv, psam_path: Path) -> Iterator[subprocess.Popen[str]]:
    """The PSAM alone in slot 1, in its own process, until the block ends."""
    proc = emulator("--psam", str(psam_path))
    try:
        present = wait_card_state(pcscd.psam_reader, present=True, timeout_s=START_S)
        assert present, proc.stderr.read() if proc.poll() is not None and proc.stderr else "PSAM never arrived"
        yield proc
    finally:
        if proc.poll() is None:
            stop(proc)
        wait_card_state(pcscd.psam_reader, present=False)


def present_card(pcscd: PcscEnv, card_path: Path) -> subprocess.Popen[str]:
    proc = emulator("--image", str(card_path))
    present = wait_card_state(pcscd.card_reader, present=True, timeout_s=START_S)
    assert present, proc.stderr.read() if proc.poll() is not None and proc.stderr else "card never arrived"
    return proc


def take_card_away(pcscd: PcscEnv, proc: subprocess.Popen[str]) -> None:
    stop(proc)
    assert wait_card_state(pcscd.card_reader, present=False)


@pytest.fixture
def validator(tmp_path: Path, pcscd: PcscEnv) -> Iterator[Terminal]:
    journal_path = tmp_path / "journal.db"
    card_reader = PcscReader(pcscd.card_reader, monitor=False)
    sam_reader = PcscReader(pcscd.psam_reader, monitor=True, unpower_on_disconnect=False)  # as terminal run
    made = Terminal(
        card_reader=card_reader,
        sam_reader=sam_reader,
        journal=Journal(journal_path),
        denylist=Denylist(journal_path),
        config=TerminalConfig(route_id="R12", stop_id="S7", line_code=12, station_code=7),
        pricer=FlatFare(200),
    )
    yield made
    card_reader.close()
    sam_reader.close()
    made.journal.close()
    made.denylist.close()


def test_the_psam_process_stays_up_while_card_processes_come_and_go_and_every_tap_pays(
    tmp_path: Path, pcscd: PcscEnv, validator: Terminal
) -> None:
    psam_path, card_path = tmp_path / "psam.json", tmp_path / "card.json"
    make_psam(path=psam_path)
    make_card(path=card_path)
    with psam_process(pcscd, psam_path) as psam:
        for n in range(4):
            card = present_card(pcscd, card_path)
            result = validator.tap(NOW + dt.timedelta(minutes=2 * n))
            take_card_away(pcscd, card)
            assert result.outcome is Outcome.PAID, (n, result)
            assert psam.poll() is None  # the PSAM's process was never touched
            assert wait_card_state(pcscd.psam_reader, present=True, timeout_s=0.5)
    assert CardImage.load(card_path).purse.balance_fen == 5_000 - 4 * 200
    assert validator.journal.count() == 4
    assert PsamImage.load(psam_path).ttc_next == 5


def test_a_psam_whose_process_restarted_between_taps_is_reopened_and_the_next_tap_pays(
    tmp_path: Path, pcscd: PcscEnv, validator: Terminal
) -> None:
    psam_path, card_path = tmp_path / "psam.json", tmp_path / "card.json"
    make_psam(path=psam_path)
    make_card(path=card_path)
    with psam_process(pcscd, psam_path):
        card = present_card(pcscd, card_path)
        assert validator.tap(NOW).outcome is Outcome.PAID
        take_card_away(pcscd, card)
    with psam_process(pcscd, psam_path):  # the PSAM's emulator restarted: a new session
        card = present_card(pcscd, card_path)
        validator.trace = []
        result = validator.tap(NOW + dt.timedelta(minutes=2))
        take_card_away(pcscd, card)
    assert result.outcome is Outcome.PAID, result
    assert validator.trace.count("sam:PSAM SELECT 8011") == 1  # reopened once, no tap lost to it
    assert validator.journal.count() == 2


# --- terminal run: the console, the tally and the last upload ----------------------------------


def run_app() -> typer.Typer:
    from yikatong.commands.terminal_run import run

    app = typer.Typer()
    app.command()(run)
    return app


def run_args(pcscd: PcscEnv, psam_path: Path, journal: Path, *more: str) -> list[str]:
    args = ["--card-reader", pcscd.card_reader, "--sam-reader", f"image:{psam_path}", "--route", "K26"]
    return [*args, "--stop", "u_city_hall", "--journal", str(journal), *more]


def test_taps_max_uploads_before_exiting_and_says_all_uploaded(
    tmp_path: Path, pcscd: PcscEnv, vpcd_insert: Insert
) -> None:
    psam_path = tmp_path / "psam.json"
    make_psam(path=psam_path)
    vpcd_insert(make_card())
    with ClearingContractDouble({TOKEN: TERMINAL}) as server:
        args = run_args(pcscd, psam_path, tmp_path / "j.db", "--taps-max", "1")
        result = CliRunner().invoke(run_app(), [*args, "--clearing-url", server.url, "--token", TOKEN])
        assert len(server.posted) == 1
    assert result.exit_code == 0, result.output
    out = result.output
    [tap] = [line for line in out.splitlines() if "PAID" in line]
    assert "+08:00" in tap and "fare   2.00" in tap  # times carry their zone
    assert "upload batch 1: 1 records - accepted 1, suspect 0, rejected 0, forwarded 0; backlog 0" in out, out
    assert "stopped after 1 taps: paid 1 (2.00 CNY), recovered 0, repeated 0, refused 0, failed 0" in out, out
    assert "all uploaded" in out
    with Journal(tmp_path / "j.db") as journal:
        assert journal.unanswered_records() == 0


def test_an_offline_run_says_how_many_records_stay_behind(tmp_path: Path, pcscd: PcscEnv, vpcd_insert: Insert) -> None:
    psam_path = tmp_path / "psam.json"
    make_psam(path=psam_path)
    vpcd_insert(make_card())
    result = CliRunner().invoke(run_app(), run_args(pcscd, psam_path, tmp_path / "j.db", "--taps-max", "1"))
    assert result.exit_code == 0, result.output
    assert "1 records not uploaded (offline: no --clearing-url)" in result.output, result.output


def _lines(stream: object, into: queue.Queue[str]) -> None:
    for line in stream:  # type: ignore[attr-defined]
        into.put(line)


def _wait_for(lines: queue.Queue[str], text: str, seen: list[str], timeout_s: float = START_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.2)
        except queue.Empty:
            continue
        seen.append(line)
        if text in line:
            return
    pytest.fail(f"{text!r} never shown; output so far: {''.join(seen)}")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "ctrl-c"])
def test_a_stop_signal_finishes_with_a_last_upload_and_says_what_is_left(
    tmp_path: Path, pcscd: PcscEnv, vpcd_insert: Insert, signum: int
) -> None:
    psam_path = tmp_path / "psam.json"
    make_psam(path=psam_path)
    with ClearingContractDouble({TOKEN: TERMINAL}) as server:
        args = run_args(pcscd, psam_path, tmp_path / "j.db", "--clearing-url", server.url, "--token", TOKEN)
        proc = subprocess.Popen(
            [sys.executable, "-m", "yikatong.cli", "terminal", "run", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"},
        )
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=_lines, args=(proc.stdout, lines), daemon=True).start()
        seen: list[str] = []
        try:
            _wait_for(lines, "waiting for cards", seen)
            vpcd_insert(make_card())
            _wait_for(lines, "PAID", seen)
        finally:
            proc.send_signal(signum)
            proc.wait(timeout=20)
        time.sleep(0.2)
        while not lines.empty():
            seen.append(lines.get())
        assert len(server.posted) == 1
    out = "".join(seen)
    assert proc.returncode == 0, out
    assert "stopped after 1 taps: paid 1" in out and "all uploaded" in out, out
