"""SIGKILL the validator at random points of a busy run: no committed tap lost, none uploaded twice.

The validator runs in a subprocess (this file is also its script: ``python test_tap_kill.py
WORKDIR URL SEED busy|drain``) with persistent card and PSAM images, a journal on disk, tears
injected at random APDUs, and the uploader thread sending batches to a test double of the
clearing contract (in this process, so it outlives every kill). After the kills, one last
run presents every card once (resolving any torn tap) and uploads everything. Then:

* per card: the balance it lost == the sum of its journaled amounts, and its offline
  counter == its number of journaled taps (every debit the card committed has a record);
* the journal has no pending debit left;
* the server saw every journaled tap exactly once, with the same content.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

HERE = Path(__file__).resolve()
ROOT = HERE.parents[2]
CARDS = 6
OPENING_FEN = 200_000
TERMINAL = "360486600002"
TOKEN = "tok-kill"


def _paths(workdir: Path) -> tuple[Path, Path, list[Path]]:
    return workdir / "journal.db", workdir / "psam.json", [workdir / f"card{i}.json" for i in range(CARDS)]


def worker(workdir: Path, url: str, seed: int, mode: str) -> None:
    """The validator process: busy taps until killed, or ``drain`` (present each card once, upload all)."""
    from cardos.card import Card
    from cardos.os import TearPlan
    from cardos.psam import Psam
    from terminals.config import TerminalConfig, UploadConfig
    from terminals.denylist import Denylist
    from terminals.journal import Journal
    from terminals.readers import InProcessReader
    from terminals.uploader import Uploader, UploaderThread
    from terminals.validator import FlatFare, Terminal

    journal_path, psam_path, card_paths = _paths(workdir)
    rng = random.Random(seed)
    journal, denylist = Journal(journal_path), Denylist(journal_path)
    cards = [Card.load(p) for p in card_paths]
    psam = Psam.from_file(psam_path)
    sam_reader, card_reader = InProcessReader("sam", psam), InProcessReader("card")
    terminal = Terminal(
        card_reader=card_reader,
        sam_reader=sam_reader,
        journal=journal,
        denylist=denylist,
        config=TerminalConfig(route_id="R12", stop_id="S7", repeat_window_s=0),
        pricer=FlatFare(150),
    )
    upload = UploadConfig(
        clearing_url=url, token=TOKEN, batch_records_max=5, interval_s=0.02, backoff_base_ms=5, backoff_cap_ms=50
    )
    if mode == "drain":
        for card in cards:
            card_reader.insert(card)
            result = terminal.tap()
            assert result.outcome.value in ("T_PAID", "T_RECOVERED"), result
        uploader = Uploader(journal, upload)
        uploader.upload_pending()
        uploader.close()
        print("drained", flush=True)
        return
    thread = UploaderThread(journal_path, upload, TERMINAL).start()
    print("ready", flush=True)
    while True:
        card = rng.choice(cards)
        if rng.random() < 0.15:
            card.tear = TearPlan(rng.randint(1, 36), rng.choice(("before_commit", "after_commit")))
        card_reader.insert(card)
        terminal.tap()
        card.tear = None
        if rng.random() < 0.2:
            thread.wake.set()


def _setup(workdir: Path) -> None:
    from tests.terminals.test_tap_kit import make_card, make_psam

    _, psam_path, card_paths = _paths(workdir)
    make_psam(path=psam_path)
    for i, path in enumerate(card_paths):
        make_card(bytes.fromhex(f"031040000000000000{i + 10:02d}"), balance_fen=OPENING_FEN, path=path)


def _run_worker(workdir: Path, url: str, seed: int, mode: str) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen(
        [sys.executable, str(HERE), str(workdir), url, str(seed), mode],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=open(workdir / f"worker-{seed}.log", "w"),
        text=True,
    )


def _kill_cycles(tmp_path: Path, cycles: int, seed: int) -> None:
    from cardos.card import Card
    from terminals.journal import Journal
    from tests.terminals.test_uploader_double import ClearingContractDouble, Flakiness

    rng = random.Random(seed)
    _setup(tmp_path)
    journal_path, _, card_paths = _paths(tmp_path)
    stats: Counter[str] = Counter()
    with ClearingContractDouble({TOKEN: TERMINAL}, Flakiness(rate=0.2, seed=seed, slow_s=0.05)) as server:
        for cycle in range(cycles):
            proc = _run_worker(tmp_path, server.url, seed * 1000 + cycle, "busy")
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert line.strip() == "ready", (line, (tmp_path / f"worker-{seed * 1000 + cycle}.log").read_text())
            time.sleep(rng.uniform(0.15, 0.8))
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            with Journal(journal_path) as journal:
                stats["pending_at_kill"] += len(journal.pending())
        drain = _run_worker(tmp_path, server.url, seed * 1000 + cycles, "drain")
        out, _ = drain.communicate(timeout=120)
        log = (tmp_path / f"worker-{seed * 1000 + cycles}.log").read_text()
        assert drain.returncode == 0 and "drained" in out, log

        with Journal(journal_path) as journal:
            taps = list(journal.iter_taps())
            assert journal.pending() == []
            assert journal.unanswered_records() == 0
        assert len(taps) > 5 * cycles, f"the busy runs made too little progress: {len(taps)} taps"
        per_card: dict[str, list[int]] = {}
        for tap in taps:
            per_card.setdefault(tap.record.card_asn, []).append(tap.record.amount_fen)
        for path in card_paths:
            card = Card.load(path)
            amounts = per_card.get(card.image.public[10:20].hex(), [])
            assert OPENING_FEN - card.balance_fen == sum(amounts), path.name
            assert card.offline_counter == len(amounts), path.name
        journaled = {(t.record.terminal_id, t.record.terminal_seq): json.loads(_encode(t.record)) for t in taps}
        assert set(server.posted) == set(journaled)
        assert set(server.posted.values()) == {1}
        assert server.records == journaled
        stats["taps"] = len(taps)
        stats["recovered"] = sum(t.record.status == "recovered" for t in taps)
        print(dict(stats), dict(server.flaked))


def _encode(record: object) -> bytes:
    from clearing.contract import encode

    return encode(record)  # type: ignore[arg-type]


def test_sigkill_during_a_busy_run_loses_no_tap_and_uploads_none_twice(tmp_path: Path) -> None:
    _kill_cycles(tmp_path, cycles=4, seed=1)


@pytest.mark.soak
@pytest.mark.parametrize("seed", range(2, 6))
def test_sigkill_soak(tmp_path: Path, seed: int) -> None:
    # CI runs the soak bounded (``make test`` sets YIKATONG_SOAK_CYCLES); a long run sets more.
    _kill_cycles(tmp_path, cycles=int(os.environ.get("YIKATONG_SOAK_CYCLES", "15")), seed=seed)


if __name__ == "__main__":
    worker(Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4])
    sys.exit(0)
