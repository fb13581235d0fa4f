"""README "Run your own city", run line by line, so the section cannot rot.

The lines are taken from the README's shell block as they stand: each foreground line runs
under ``bash`` after the block's ``export`` line, in a fresh directory, with ``.venv/bin``
first on ``PATH``; a line the README puts in a terminal of its own (``# terminal N``) is
started in the background and waited for. ``pcscd -f`` is the session's pcscd fixture (it
starts ``pcscd --foreground`` itself unless one already runs). ``TOKEN`` is the token
``terminal register`` printed, as the README tells the reader to do.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.pcsc_support import PcscEnv, wait_card_state

pytestmark = pytest.mark.pcsc

README = Path(__file__).resolve().parents[1] / "README.md"
SECTION = "## Run your own city"
SERVE_URL = "http://127.0.0.1:8400"
START_S = 30.0


@dataclass(frozen=True, slots=True)
class Line:
    command: str
    background: bool


def readme_lines() -> tuple[str, list[Line]]:
    """The block's ``export`` line and its commands, in order."""
    text = README.read_text(encoding="utf-8")
    section = text.split(SECTION, 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block is not None, "the README section has no ```sh block"
    export, lines = "", []
    for raw in block.group(1).splitlines():
        command, _, comment = raw.partition("  #")
        command = command.strip()
        if not command:
            continue
        if command.startswith("export "):
            export = command
            continue
        lines.append(Line(command, background=re.search(r"\bterminal \d+", comment) is not None))
    assert export, "the README block sets no environment"
    return export, lines


def test_the_readme_lists_the_operator_steps_in_order() -> None:
    _, lines = readme_lines()
    firsts = [" ".join(line.command.split()[:3]) for line in lines]
    wanted = [
        "yikatong init",
        "yikatong card issue",
        "yikatong terminal register",
        "yikatong terminal psam",
        "yikatong serve",
        "pcscd -f",
        "yikatong card emulate",
        "yikatong card emulate",
        "yikatong terminal run",
        "yikatong card show",
        "yikatong exceptions list",
    ]
    assert len(firsts) == len(wanted) and all(f.startswith(w) for f, w in zip(firsts, wanted, strict=True)), firsts


@pytest.fixture
def city(tmp_path: Path) -> Iterator[dict[str, str]]:
    """An environment with only the README's settings: no Redis, no test database."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("YIKATONG_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["COLUMNS"] = "200"
    yield env


def _run(export: str, command: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["bash", "-c", f"{export}\n{command}"], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, f"{command}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    return result


def _wait_for(predicate: object, what: str, proc: subprocess.Popen[str], log: Path) -> None:
    deadline = time.monotonic() + START_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{what} ended (rc {proc.returncode}): {log.read_text(errors='replace')[-800:]}")
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.2)
    pytest.fail(f"{what} not ready after {START_S:.0f} s: {log.read_text(errors='replace')[-800:]}")


def _serving() -> bool:
    try:
        return httpx.get(f"{SERVE_URL}/openapi.json", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def test_run_your_own_city_as_the_readme_says(tmp_path: Path, city: dict[str, str], pcscd: PcscEnv) -> None:
    export, lines = readme_lines()
    background: list[tuple[subprocess.Popen[str], Path]] = []
    token = ""
    outputs: dict[str, str] = {}
    try:
        for number, line in enumerate(lines):
            command = line.command.replace("TOKEN", token)
            if command.startswith("pcscd"):
                continue  # the fixture's pcscd --foreground
            if command.startswith("yikatong terminal run"):
                outputs["run"] = _run_validator(export, command, tmp_path, city, pcscd)
                continue
            if line.background:
                log = tmp_path / f"bg-{number}.log"
                proc = subprocess.Popen(
                    ["bash", "-c", f"{export}\nexec {command}"],
                    cwd=tmp_path,
                    env=city,
                    stdout=log.open("w"),
                    stderr=subprocess.STDOUT,
                    text=True,
                    start_new_session=True,
                )
                background.append((proc, log))
                if command.startswith("yikatong serve"):
                    _wait_for(_serving, command, proc, log)
                else:
                    _wait_for(lambda log=log: "inserted" in log.read_text(), command, proc, log)
                continue
            result = _run(export, command, tmp_path, city)
            outputs[" ".join(command.split()[:3])] = result.stdout
            if command.startswith("yikatong terminal register"):
                token = result.stdout.strip().splitlines()[-1]
                assert re.fullmatch(r"[0-9a-f]{12}\.[A-Za-z0-9_\-]{20,}", token), result.stdout
    finally:
        for proc, _ in reversed(background):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGINT)
        for proc, _ in reversed(background):
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        wait_card_state(pcscd.card_reader, present=False)
        wait_card_state(pcscd.psam_reader, present=False)

    run = outputs["run"]
    assert "PAID" in run and "all uploaded" in run, run
    shown = outputs["yikatong card show"]
    assert "active" in shown and "+08:00" in shown, shown
    assert "tap:0a0000000001:" in shown, shown  # the tap was uploaded and cleared
    shadow = re.search(r"shadow_balance_fen[\s│]+(\d+)", shown)
    ledger = re.search(r"ledger_balance_fen[\s│]+(\d+)", shown)
    assert shadow is not None and ledger is not None, shown
    assert int(shadow.group(1)) == int(ledger.group(1)) < 5000, shown
    assert "no " in outputs["yikatong exceptions list"].lower(), outputs["yikatong exceptions list"]


def _run_validator(export: str, command: str, cwd: Path, env: dict[str, str], env_pcsc: PcscEnv) -> str:
    """The validator until the card has paid, then Ctrl-C: it uploads what is left and stops."""
    log = cwd / "validator.log"
    proc = subprocess.Popen(
        ["bash", "-c", f"{export}\nexec {command}"],
        cwd=cwd,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        _wait_for(lambda: "PAID" in log.read_text(), "the validator's first tap", proc, log)
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(30) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    return log.read_text()
