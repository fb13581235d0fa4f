"""A validator through real pcscd + vpcd: emulated card in slot 0, emulated PSAM in slot 1."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from cardos.os import TearPlan
from cardos.vpcd import PORT_PSAM
from terminals.config import TerminalConfig
from terminals.denylist import Denylist
from terminals.journal import Journal
from terminals.readers import PcscReader
from terminals.session import Outcome
from terminals.validator import FlatFare, Terminal
from tests.pcsc_support import Insert, PcscEnv, wait_card_state
from tests.terminals.test_tap_kit import NOW, make_card, make_psam, tap_tac_verifies

pytestmark = pytest.mark.pcsc
# The session fixtures ``pcscd`` and ``vpcd_insert`` (tests/pcsc_support.py) must be registered
# once per session (tests/conftest.py): importing them here as well would give this module its
# own session instance, which waits forever for the vpcd lock the first one holds. To run this
# module alone before that: ``pytest -p tests.pcsc_support <this file>``.


@pytest.fixture
def terminal(tmp_path: Path, pcscd: PcscEnv, vpcd_insert: Insert) -> Terminal:
    vpcd_insert(make_psam(), PORT_PSAM)
    journal_path = tmp_path / "journal.db"
    card_reader = PcscReader(pcscd.card_reader)
    sam_reader = PcscReader(pcscd.psam_reader, monitor=False, unpower_on_disconnect=False)
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


def test_a_tap_through_pcscd_is_paid_and_journaled(terminal: Terminal, vpcd_insert: Insert) -> None:
    card = make_card()
    vpcd_insert(card)
    result = terminal.tap(NOW)
    assert result.outcome is Outcome.PAID, result
    assert card.balance_fen == 4_800
    [tap] = list(terminal.journal.iter_taps())
    assert tap.record.terminal_id == "360486600002" and tap_tac_verifies(tap.record)
    again = terminal.tap(NOW + dt.timedelta(seconds=5))
    assert again.outcome is Outcome.ALREADY_PAID and card.balance_fen == 4_800


def test_a_card_torn_at_debit_through_pcscd_is_recovered_on_the_next_tap(
    terminal: Terminal, pcscd: PcscEnv, vpcd_insert: Insert
) -> None:
    card = make_card()
    handle = vpcd_insert(card)
    terminal.trace = []
    card.tear = TearPlan(at_apdu=6, phase="after_commit")  # SELECT, 17, 1E/1, INIT, CACHE, DEBIT
    first = terminal.tap(NOW)
    assert first.outcome is Outcome.TAP_AGAIN, (first, terminal.trace)
    assert card.balance_fen == 4_800 and terminal.journal.count() == 0
    handle.stop()
    assert wait_card_state(pcscd.card_reader, present=False)
    again = vpcd_insert(card)  # the rider taps again
    second = terminal.tap(NOW + dt.timedelta(seconds=4))
    assert second.outcome is Outcome.RECOVERED, second
    assert card.balance_fen == 4_800 and terminal.journal.count() == 1
    assert terminal.journal.pending() == []
    again.stop()  # leave the slot empty for the fixture's teardown of the first insertion
    assert wait_card_state(pcscd.card_reader, present=False)


def test_terminal_run_command_serves_one_tap(tmp_path: Path, pcscd: PcscEnv, vpcd_insert: Insert) -> None:
    from yikatong.commands.terminal_run import run

    app = typer.Typer()
    app.command()(run)
    psam_path = tmp_path / "psam.json"
    make_psam(path=psam_path)
    card = make_card()
    vpcd_insert(card)
    journal = tmp_path / "cli.db"
    args = ["--card-reader", pcscd.card_reader, "--sam-reader", f"image:{psam_path}", "--route", "K26"]
    args += ["--stop", "u_city_hall", "--journal", str(journal), "--taps-max", "1"]
    started = time.monotonic()
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "PAID" in result.output and "fare   2.00" in result.output, result.output
    assert time.monotonic() - started < 30
    assert card.balance_fen == 4_800
    with Journal(journal) as j:
        [tap] = list(j.iter_taps())
        assert tap.record.route_id == "K26" and tap.record.fare is not None


def test_terminal_run_refuses_unknown_readers_clearly(tmp_path: Path, pcscd: PcscEnv) -> None:
    from yikatong.commands.terminal_run import run

    app = typer.Typer()
    app.command()(run)
    result = CliRunner().invoke(
        app, ["--card-reader", "No Such Reader", "--sam-reader", "Nor This", "--route", "1", "--stop", "u_bus_station"]
    )
    assert result.exit_code == 1
    assert "E_READER_NOT_FOUND" in result.output and pcscd.card_reader in result.output


def test_terminal_run_pos_sells_the_amount_given(tmp_path: Path, pcscd: PcscEnv, vpcd_insert: Insert) -> None:
    from yikatong.commands.terminal_run import run

    app = typer.Typer()
    app.command()(run)
    psam_path = tmp_path / "psam.json"
    make_psam(path=psam_path)
    card = make_card()
    vpcd_insert(card)
    args = ["--card-reader", pcscd.card_reader, "--sam-reader", f"image:{psam_path}", "--pos"]
    args += ["--amount-fen", "1234", "--journal", str(tmp_path / "pos.db"), "--taps-max", "1"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "PAID" in result.output and "sale  12.34" in result.output, result.output
    assert "sale 12.34 CNY - present card" in result.output  # echoed before the card is charged
    assert card.balance_fen == 5_000 - 1_234
    with Journal(tmp_path / "pos.db") as j:
        [tap] = list(j.iter_taps())
        assert tap.record.tx_type == 6 and tap.record.amount_fen == 1_234


def test_terminal_run_pos_prompt_takes_yuan_refuses_typos_and_echoes_the_sale(
    tmp_path: Path, pcscd: PcscEnv, vpcd_insert: Insert
) -> None:
    from yikatong.commands.terminal_run import run

    app = typer.Typer()
    app.command()(run)
    psam_path = tmp_path / "psam.json"
    make_psam(path=psam_path)
    card = make_card()
    vpcd_insert(card)
    args = ["--card-reader", pcscd.card_reader, "--sam-reader", f"image:{psam_path}", "--pos"]
    args += ["--journal", str(tmp_path / "pos.db"), "--taps-max", "1"]
    result = CliRunner().invoke(app, args, input="12.505\n-3\n12.50\n")
    assert result.exit_code == 0, result.output
    out = result.output
    assert "more than two decimals" in out and "negative" in out, out
    assert out.index("sale 12.50 CNY - present card") < out.index("PAID")
    assert "sale  12.50" in out and "fare" not in out.split("waiting for cards")[1]
    assert card.balance_fen == 5_000 - 1_250
