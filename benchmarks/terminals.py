"""Validator taps: latency through pcscd, and throughput in process, both with the journal on.

Figures (goals from the terminals issue; DB31/T 239-2020's 400 ms purchase budget,
``epurse-public-sources.md`` section 10, is what they protect):

* a whole validator tap through pyscard -> pcscd -> vpcd -> emulated card and PSAM (in an
  emulator process, images on disk), from the card connect to the journal's fsync (and the
  card's power-down), p50 and p99; goal p99 <= 30 ms;
* in-process validator taps per second on one core, journal on disk in WAL mode with
  ``synchronous=FULL`` (two durable commits per tap: the pending debit before DEBIT and the
  record after it); goal >= 2,000 taps/s. The baseline, measured in the same run, is the
  bare fsync rate of that disk: the ceiling the journal allows.

Every tap is the full flow of ``terminals.session``: SELECT, 0x17, the card's recent transit
records (cards are tapped every ~2 minutes, so up to 30 records are read), fare, INITIALIZE,
PSAM MAC1, UPDATE CAPP DATA CACHE, pending write, DEBIT, PSAM MAC2, journal append.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Final

from benchmarks.cardos_inprocess import asn_of, demo_card, demo_psam
from cardos.card import Card
from cardos.profile import ISSUER_XIANYANG
from cardos.records import INDUSTRY_BUS, SHANGHAI_TZ, TRANSIT_SINGLE, TransitRecord
from terminals.config import TerminalConfig
from terminals.denylist import Denylist
from terminals.journal import Journal
from terminals.readers import InProcessReader, PcscReader, Reader
from terminals.session import Outcome
from terminals.validator import FlatFare, Terminal

GOAL_TAP_P99_MS: Final = 30.0
GOAL_TAPS_PER_S: Final = 2_000
READER_CARD: Final = "Virtual PCD 00 00"
READER_PSAM: Final = "Virtual PCD 00 01"
START: Final = dt.datetime(2025, 6, 2, 7, 0, 0, tzinfo=SHANGHAI_TZ)
CONFIG: Final = TerminalConfig(route_id="1", stop_id="u_railway_station", line_code=1, station_code=101)


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _terminal(card: Reader, sam: Reader, journal_path: Path) -> Terminal:
    return Terminal(
        card_reader=card,
        sam_reader=sam,
        journal=Journal(journal_path),
        denylist=Denylist(journal_path),
        config=CONFIG,
        pricer=FlatFare(100),
    )


# --- in process ----------------------------------------------------------------------------


def _rider_card(index: int) -> Card:
    """A card with a full transit file from the days before (a regular rider)."""
    card = demo_card(asn=asn_of(index))
    for day in range(15, 0, -1):
        for hour in (8, 18):
            moment = START - dt.timedelta(days=day) + dt.timedelta(hours=hour - START.hour)
            card.transit.push(_old_leg(moment))
    return card


def _old_leg(moment: dt.datetime) -> bytes:
    return TransitRecord(
        tx_type=TRANSIT_SINGLE,
        terminal_id=bytes.fromhex("360486600009"),
        industry=INDUSTRY_BUS,
        line=6,
        station=102,
        operator=0,
        amount_fen=100,
        balance_after_fen=900_000,
        moment=moment,
        acquirer_city=b"\x71\x20",
        acquirer_id=ISSUER_XIANYANG,
    ).encode()


def taps_per_second(taps: int, workdir: Path, pending_sync: str = "full", warm_up: int = 400) -> float:
    """``taps`` taps by ``taps // 2`` riders, each tapping twice an hour apart (the second a transfer).

    ``warm_up`` taps first, untimed: a validator that has run for a while has its WAL file at
    its working size, which SQLite then overwrites in place (a growing file costs an extra
    metadata write per fsync).
    """
    riders = max(1, taps // 2)
    cards = [_rider_card(i) for i in range(riders + warm_up)]
    reader = InProcessReader("card")
    terminal = _terminal(reader, InProcessReader("sam", demo_psam()), workdir / f"inprocess-{pending_sync}.db")
    terminal.journal.pending_sync = pending_sync  # type: ignore[assignment]  # "full" or "normal"
    for k in range(warm_up):
        reader.insert(cards[riders + k])
        terminal.tap(START - dt.timedelta(hours=2) + k * dt.timedelta(seconds=10))
    step = dt.timedelta(hours=1) / riders  # one tap every few seconds, over two hours
    started = time.perf_counter()
    for k in range(taps):
        reader.insert(cards[k % riders])
        result = terminal.tap(START + k * step)
        if result.outcome is not Outcome.PAID:
            raise RuntimeError(f"benchmark tap {k} failed: {result}")
    elapsed = time.perf_counter() - started
    terminal.journal.close()
    terminal.denylist.close()
    return taps / elapsed


def fsync_commits_per_second(workdir: Path, commits: int) -> float:
    """Durable SQLite commits per second on this disk, WAL at its working size (the journal's ceiling)."""
    db = sqlite3.connect(str(workdir / "fsync.db"), isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = FULL")
    db.execute("CREATE TABLE t (b BLOB)")

    def commit(n: int) -> None:
        for _ in range(n):
            db.execute("BEGIN IMMEDIATE")
            db.execute("INSERT INTO t VALUES (?)", (bytes(600),))
            db.execute("COMMIT")

    commit(1_500)
    started = time.perf_counter()
    commit(commits)
    elapsed = time.perf_counter() - started
    db.close()
    return commits / elapsed


# --- through pcscd ----------------------------------------------------------------------------


def _emulate(workdir: str, stop: Event, ready: Event) -> None:
    """The emulator process: card in slot 0, PSAM in slot 1, images on disk."""
    from cardos.card import Card
    from cardos.psam import Psam
    from cardos.vpcd import PORT_CARD, PORT_PSAM, VpcdClient

    card_path, psam_path = Path(workdir) / "card.json", Path(workdir) / "psam.json"
    demo_card().image.save_atomic(card_path)
    demo_psam().image.save(psam_path)
    handles = [
        VpcdClient(Card.load(card_path), port=PORT_CARD).serve_in_thread(),
        VpcdClient(Psam.from_file(psam_path), port=PORT_PSAM).serve_in_thread(),
    ]
    ready.set()
    stop.wait()
    for handle in handles:
        handle.stop()


@contextlib.contextmanager
def _emulator(workdir: Path) -> Iterator[None]:
    from benchmarks.pcsc import emulator_process

    with emulator_process(_emulate, str(workdir)):
        yield


def pcsc_tap_latencies_ms(taps: int, workdir: Path) -> list[float]:
    from benchmarks.pcsc import _pcscd

    samples: list[float] = []
    with _pcscd(), _emulator(workdir):
        card = PcscReader(READER_CARD, monitor=False)
        sam = PcscReader(READER_PSAM, monitor=False, unpower_on_disconnect=False)
        terminal = _terminal(card, sam, workdir / "pcsc.db")
        try:
            deadline = time.monotonic() + 10
            while terminal.tap(START).outcome is not Outcome.PAID:  # opens the PSAM, waits for the card
                if time.monotonic() > deadline:
                    raise SystemExit("no tap through pcscd within 10 s")
                time.sleep(0.05)
            for i in range(1, taps + 1):
                started = time.perf_counter()
                result = terminal.tap(START + dt.timedelta(seconds=120 * i))
                samples.append((time.perf_counter() - started) * 1e3)
                if result.outcome is not Outcome.PAID:
                    raise RuntimeError(f"pcscd tap {i} failed: {result}")
        finally:
            card.close()
            sam.close()
            terminal.journal.close()
            terminal.denylist.close()
    return samples


def main(quick: bool) -> None:
    taps = 600 if quick else 5_000
    pcsc_taps = 50 if quick else 500
    with tempfile.TemporaryDirectory(prefix="yikatong-bench-terminals-") as tmp:
        workdir = Path(tmp)
        ceiling = fsync_commits_per_second(workdir, 300 if quick else 3_000)
        rate = taps_per_second(taps, workdir)
        print(
            f"in-process validator taps, journal on disk (WAL, synchronous=FULL, 2 fsync'd commits per tap), "
            f"{taps} taps: {rate:,.0f} taps/s "
            f"(goal >= {GOAL_TAPS_PER_S:,} taps/s: {'meets' if rate >= GOAL_TAPS_PER_S else 'MISSES'})"
        )
        relaxed = taps_per_second(taps, workdir, pending_sync="normal")
        print(
            f"  same, pending row not fsync'd (Journal pending_sync='normal', 1 fsync per tap): {relaxed:,.0f} taps/s"
        )
        print(f"  baseline, same run, same disk: {ceiling:,.0f} single-page durable SQLite commits/s")
        shm = Path("/dev/shm")
        if shm.is_dir():
            with tempfile.TemporaryDirectory(dir=shm) as ram:
                cpu = taps_per_second(taps, Path(ram))
            print(
                f"  baseline, same run, journal on tmpfs (fsync costs nothing: the CPU-bound rate): {cpu:,.0f} taps/s"
            )
        samples = pcsc_tap_latencies_ms(pcsc_taps, workdir)
        p50, p99 = _percentile(samples, 0.50), _percentile(samples, 0.99)
        print(
            f"validator tap through pcscd+vpcd, card connect to journal fsync, images on disk ({pcsc_taps} taps): "
            f"p50 {p50:.2f} ms, p99 {p99:.2f} ms "
            f"(goal p99 <= {GOAL_TAP_P99_MS:g} ms: {'meets' if p99 <= GOAL_TAP_P99_MS else 'MISSES'})"
        )


if __name__ == "__main__":
    main(quick=False)
