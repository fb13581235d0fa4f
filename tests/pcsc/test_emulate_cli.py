"""``yikatong card emulate``: errors without pcscd, and a real run through pcscd + vpcd."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cardos.image import CardImage
from cardos.psam import PsamImage
from tests.pcsc_support import (
    SELECT_PSAM_DF,
    PcscEnv,
    composite_purchase,
    connect,
    expect_ok,
    pyscard_transmit,
    wait_card_state,
)
from yikatong.cli import app

STAMP = bytes.fromhex("20250301083015")


def free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        return int(probe.getsockname()[1])


def run_cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["card", "emulate", *args])
    return result.exit_code, result.output


def test_missing_image_is_a_clear_error(tmp_path: Path) -> None:
    code, output = run_cli("--image", str(tmp_path / "absent.json"))
    assert code == 1
    assert "E_CARD_IMAGE" in output and "absent.json" in output


def test_invalid_image_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "card.json"
    bad.write_text(json.dumps({"schema_version": 99}))
    code, output = run_cli("--image", str(bad))
    assert code == 1 and "E_CARD_IMAGE" in output and "schema_version" in output


def test_card_image_given_as_psam_is_refused(card_path: Path) -> None:
    code, output = run_cli("--image", str(card_path), "--psam", str(card_path))
    assert code == 1 and "E_PSAM_IMAGE" in output


def test_bad_vpcd_address_is_refused(card_path: Path) -> None:
    code, output = run_cli("--image", str(card_path), "--vpcd", "localhost")
    assert code == 1 and "E_BAD_VPCD_ADDRESS" in output


def test_neither_a_card_nor_a_psam_is_a_usage_error() -> None:
    code, output = run_cli()
    assert code == 1 and "E_USAGE" in output


def test_a_psam_alone_goes_to_the_slot_after_the_card_slot(psam_path: Path) -> None:
    port = free_port()
    code, output = run_cli("--psam", str(psam_path), "--vpcd", f"127.0.0.1:{port - 1}")
    assert code == 1 and "E_VPCD_UNREACHABLE" in output and f"127.0.0.1:{port}" in output


def test_unreachable_vpcd_fails_after_bounded_retries(card_path: Path) -> None:
    code, output = run_cli("--image", str(card_path), "--vpcd", f"127.0.0.1:{free_port()}")
    assert code == 1 and "E_VPCD_UNREACHABLE" in output


@pytest.mark.pcsc
def test_emulator_process_serves_card_and_psam_until_sigterm(
    pcscd: PcscEnv,
    card_path: Path,
    psam_path: Path,
) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "yikatong.cli", "card", "emulate", "--image", str(card_path), "--psam", str(psam_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert wait_card_state(pcscd.card_reader, present=True, timeout_s=20), proc.stderr
        assert wait_card_state(pcscd.psam_reader, present=True)
        card_conn, psam_conn = connect(pcscd.card_reader), connect(pcscd.psam_reader)
        try:
            psam = pyscard_transmit(psam_conn)
            expect_ok(psam, SELECT_PSAM_DF)
            purchase = composite_purchase(pyscard_transmit(card_conn), psam, 75, STAMP)
            assert purchase.credit_sam_sw == 0x9000
        finally:
            card_conn.disconnect()
            psam_conn.disconnect()
    finally:
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=10)
    assert proc.returncode == 0, stderr
    assert "inserted" in stdout and "removed" in stdout
    assert wait_card_state(pcscd.card_reader, present=False)
    assert wait_card_state(pcscd.psam_reader, present=False)
    assert CardImage.load(card_path).purse.balance_fen == purchase.balance_before_fen - 75
    assert PsamImage.load(psam_path).ttc_next == purchase.ttc + 1
