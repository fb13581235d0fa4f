"""The whole clinic flow through real pcscd + vpcd: an emulated social security card in slot 0,
the clinic's emulated PSAM in slot 1, the host the real clearing app with the clinic API.

Including a torn purse debit: the fund's share stays reserved, not paid, until the card is
presented again and proves its debit; then both shares are paid, once. Run under the lock:
``flock /tmp/yk-pcsc.lock .venv/bin/python -m pytest tests/terminals/test_clinic_pcsc.py -q``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
from sqlalchemy import Engine
from typer.testing import CliRunner

from cardos.vpcd import PORT_PSAM
from terminals.clinic import ClinicBill, ClinicOutcome
from terminals.journal import Journal
from terminals.readers import PcscReader
from tests.pcsc_support import Insert, PcscEnv, wait_card_state
from tests.terminals.clinic_kit import (
    PIN,
    ClinicRig,
    LiveServer,
    TearAt,
    make_rig,
    migrated_template,
    new_keystore,
    sqlite_copy,
)

pytestmark = pytest.mark.pcsc
BILL = ClinicBill(total_fen=12_000, covered_fen=10_000)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return migrated_template(tmp_path_factory.mktemp("medical-template"))


@pytest.fixture(scope="module")
def keystore(tmp_path_factory: pytest.TempPathFactory) -> object:
    return new_keystore(tmp_path_factory.mktemp("ks"))


@pytest.fixture
def rig(template: Path, keystore: object, tmp_path: Path) -> Iterator[ClinicRig]:
    engine: Engine = sqlite_copy(template, tmp_path)
    yield make_rig(engine, keystore, tmp_path)  # type: ignore[arg-type]
    engine.dispose()


@pytest.fixture
def readers(rig: ClinicRig, pcscd: PcscEnv, vpcd_insert: Insert) -> Iterator[tuple[PcscReader, PcscReader]]:
    vpcd_insert(rig.psam, PORT_PSAM)
    card = PcscReader(pcscd.card_reader)
    sam = PcscReader(pcscd.psam_reader, monitor=False, unpower_on_disconnect=False)
    yield card, sam
    card.close()
    sam.close()


def test_a_visit_through_pcscd_pays_the_fund_share_and_the_purse_share(
    rig: ClinicRig, readers: tuple[PcscReader, PcscReader], vpcd_insert: Insert
) -> None:
    clinic = rig.clinic(rig.terminal(*readers))
    vpcd_insert(rig.card)
    result = clinic.settle(BILL, PIN)
    assert result.outcome is ClinicOutcome.SETTLED, result.message
    [(state, fund, patient)] = rig.visits()
    assert state == "settled" and fund + patient == BILL.total_fen
    assert rig.card.registers.balance_fen == 20_000 - patient
    rig.upload(clinic.terminal.journal)
    assert rig.balances()["clinic"] == BILL.total_fen
    assert result.receipt is not None and "you pay from purse" in result.receipt
    clinic.terminal.journal.close()


def test_a_torn_purse_debit_through_pcscd_pays_no_fund_share_until_the_card_proves_it(
    rig: ClinicRig, readers: tuple[PcscReader, PcscReader], pcscd: PcscEnv, vpcd_insert: Insert
) -> None:
    clinic = rig.clinic(rig.terminal(*readers))
    handle = vpcd_insert(TearAt(rig.card, phase="after_commit"))
    torn = clinic.settle(BILL, PIN)
    assert torn.outcome is ClinicOutcome.PRESENT_AGAIN, torn.message
    [(state, fund, patient)] = rig.visits()
    assert state == "reserved" and rig.card.registers.balance_fen == 20_000 - patient  # the card did debit
    assert rig.transfers() == [("med:1:reserve", "pending", fund)]
    assert rig.balances()["clinic"] == 0 and rig.balances()["fund_pending_debit"] == fund  # reserved, not paid
    handle.stop()
    assert wait_card_state(pcscd.card_reader, present=False)
    again = vpcd_insert(rig.card)  # the patient presents the card again
    done = clinic.settle(BILL, PIN)
    assert done.outcome is ClinicOutcome.SETTLED, done.message
    assert done.tap is not None and done.tap.outcome.value == "T_RECOVERED"
    assert rig.card.registers.balance_fen == 20_000 - patient  # charged once
    assert rig.visits() == [("settled", fund, patient)]
    rig.upload(clinic.terminal.journal)
    balances = rig.balances()
    assert balances["clinic"] == BILL.total_fen and balances["fund_pending_debit"] == 0
    clinic.terminal.journal.close()
    again.stop()
    assert wait_card_state(pcscd.card_reader, present=False)


def test_terminal_run_clinic_settles_a_visit_and_prints_the_receipt(
    rig: ClinicRig, pcscd: PcscEnv, vpcd_insert: Insert, tmp_path: Path
) -> None:
    from yikatong.commands.terminal_run import run

    app = typer.Typer()
    app.command()(run)
    psam_path = tmp_path / "psam.json"
    rig.psam.image.save(psam_path)
    vpcd_insert(rig.card)
    journal = tmp_path / "clinic-cli.db"
    with LiveServer(rig.app) as url:
        args = ["--card-reader", pcscd.card_reader, "--sam-reader", f"image:{psam_path}", "--clinic"]
        args += ["--clearing-url", url, "--token", rig.token, "--bill-fen", "12000", "--covered-fen", "10000"]
        args += ["--journal", str(journal), "--taps-max", "1", "--clinic-name", "Weicheng clinic"]
        result = CliRunner().invoke(app, args, input=PIN + "\n")
    assert result.exit_code == 0, result.output
    assert "C_SETTLED" in result.output and "fund pays" in result.output and "Weicheng clinic" in result.output
    assert "all uploaded" in result.output, result.output
    [(state, _, patient)] = rig.visits()
    assert state == "settled" and rig.card.registers.balance_fen == 20_000 - patient
    assert rig.balances()["clinic"] == BILL.total_fen  # the purse record was uploaded and cleared
    with Journal(journal) as j:
        [tap] = list(j.iter_taps())
        assert tap.record.amount_fen == patient
