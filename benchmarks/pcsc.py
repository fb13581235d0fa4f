"""Latency through the real PC/SC stack: pyscard -> pcscd -> vpcd -> emulated card and PSAM.

Figures (goals from the project brief; the 400 ms purchase budget of DB31/T 239-2020,
``epurse-public-sources.md`` section 10, is what they protect):

* one APDU (GET BALANCE) transmit, p50 and p99; goal p99 < 1 ms;
* a whole composite purchase, from SCardConnect to the PSAM's MAC2 verified (the seven
  APDUs of ``benchmarks.cardos_inprocess.composite_purchase``), p50 and p99; goal
  p99 <= 20 ms.

The card and the PSAM run in a separate emulator process, as ``yikatong card emulate``
does, with their images on disk (written atomically after every commit). pcscd is reused
if it answers, started in the foreground otherwise; the vpcd slots are locked like the
PC/SC tests lock them (``tests/pcsc_support.py``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import glob
import multiprocessing as mp
import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any, Final

from benchmarks.cardos_inprocess import SELECT_PSAM_DF, composite_purchase, demo_card, demo_psam, ok

GOAL_APDU_P99_MS: Final = 1.0
GOAL_TAP_P99_MS: Final = 20.0
READER_CARD: Final = "Virtual PCD 00 00"
READER_PSAM: Final = "Virtual PCD 00 01"
LOCK_PATH: Final = Path(tempfile.gettempdir()) / "yikatong-vpcd.lock"


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _readers() -> list[str] | None:
    from smartcard import scard

    rv, ctx = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
    if rv != scard.SCARD_S_SUCCESS:
        return None
    try:
        rv, names = scard.SCardListReaders(ctx, [])
        return list(names) if rv == scard.SCARD_S_SUCCESS else []
    finally:
        scard.SCardReleaseContext(ctx)


@contextlib.contextmanager
def _pcscd() -> Iterator[None]:
    try:
        import smartcard  # noqa: F401
    except ImportError as exc:
        raise SystemExit(f"pyscard not installed ({exc})") from None
    if not glob.glob("/usr/lib/pcsc/drivers/serial/libifdvpcd.so*") or not os.access("/usr/sbin/pcscd", os.X_OK):
        raise SystemExit("pcscd or the vpcd driver is not installed")
    with open(LOCK_PATH, "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        proc = None
        if _readers() is None:
            proc = subprocess.Popen(
                ["/usr/sbin/pcscd", "--foreground"], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
            )
        try:
            deadline = time.monotonic() + 15
            while not {READER_CARD, READER_PSAM} <= set(_readers() or []):
                if time.monotonic() > deadline:
                    raise SystemExit("pcscd did not show the vpcd readers")
                time.sleep(0.1)
            yield
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait(5)


def _emulate(workdir: str, stop: Event, ready: Event, quickack: bool = True) -> None:
    """The emulator process: card in slot 0, PSAM in slot 1, images on disk."""
    from cardos.card import Card
    from cardos.psam import Psam
    from cardos.vpcd import PORT_CARD, PORT_PSAM, VpcdClient

    card_path, psam_path = Path(workdir) / "card.json", Path(workdir) / "psam.json"
    demo_card().image.save_atomic(card_path)
    demo_psam().image.save(psam_path)
    card = Card.load(card_path)
    psam = Psam.from_file(psam_path)
    handles = [
        VpcdClient(card, port=PORT_CARD, quickack=quickack).serve_in_thread(),
        VpcdClient(psam, port=PORT_PSAM, quickack=quickack).serve_in_thread(),
    ]
    ready.set()
    stop.wait()
    for handle in handles:
        handle.stop()


def _connect(reader_name: str, timeout_s: float = 10.0) -> Any:
    from smartcard.Exceptions import CardConnectionException, NoCardException
    from smartcard.System import readers

    reader = next(r for r in readers() if str(r) == reader_name)
    deadline = time.monotonic() + timeout_s
    while True:
        conn = reader.createConnection()
        try:
            conn.connect()
            return conn
        except (NoCardException, CardConnectionException):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _close(conn: Any) -> None:
    """Disconnect and release the PC/SC context now, not in ``__del__`` after pcscd is gone."""
    conn.disconnect()
    conn.release()


def _transmitter(conn: Any) -> Any:
    def transmit(apdu: bytes) -> bytes:
        data, sw1, sw2 = conn.transmit(list(apdu))
        return bytes(data) + bytes((sw1, sw2))

    return transmit


def _wait_absent(reader: str, timeout_s: float = 5.0) -> None:
    """Until pcscd has seen the card leave (so the next emulator starts in an empty slot)."""
    from smartcard import scard

    _, ctx = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            rv, states = scard.SCardGetStatusChange(ctx, 0, [(reader, scard.SCARD_STATE_UNAWARE)])
            if rv == scard.SCARD_S_SUCCESS and not states[0][1] & scard.SCARD_STATE_PRESENT:
                return
            time.sleep(0.05)
    finally:
        scard.SCardReleaseContext(ctx)


@contextlib.contextmanager
def emulator_process(target: Callable[..., None], workdir: str, *args: object) -> Iterator[None]:
    """Run ``target(workdir, stop, ready, *args)`` in a spawned process (card and PSAM in the
    vpcd slots) until the block ends, then wait until pcscd sees both slots empty."""
    ctx = mp.get_context("spawn")
    stop, ready = ctx.Event(), ctx.Event()
    emulator = ctx.Process(target=target, args=(workdir, stop, ready, *args), daemon=True)
    emulator.start()
    try:
        if not ready.wait(30):
            raise SystemExit("emulator process did not start")
        yield
    finally:
        stop.set()
        emulator.join(10)
        if emulator.is_alive():
            emulator.kill()
        _wait_absent(READER_CARD)
        _wait_absent(READER_PSAM)


@contextlib.contextmanager
def _emulator(quickack: bool = True) -> Iterator[None]:
    with (
        tempfile.TemporaryDirectory(prefix="yikatong-bench-") as workdir,
        emulator_process(_emulate, workdir, quickack),
    ):
        yield


def _apdu_latencies_ms(count: int) -> list[float]:
    card_conn = _connect(READER_CARD)
    card = _transmitter(card_conn)
    ok(card, bytes.fromhex("00A4040008A00000063201010500"))
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        ok(card, bytes.fromhex("805C000204"))
        samples.append((time.perf_counter() - started) * 1e3)
    _close(card_conn)
    return samples


def _tap_latencies_ms(count: int) -> list[float]:
    psam_conn = _connect(READER_PSAM)
    psam = _transmitter(psam_conn)
    ok(psam, SELECT_PSAM_DF)
    moment = dt.datetime(2024, 3, 1, 8, 15, 0)
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        card_conn = _connect(READER_CARD)
        composite_purchase(_transmitter(card_conn), psam, 1, moment)
        samples.append((time.perf_counter() - started) * 1e3)
        _close(card_conn)
    _close(psam_conn)
    return samples


def main(quick: bool) -> None:
    apdus = 300 if quick else 3_000
    taps = 50 if quick else 500
    baseline_apdus = 10 if quick else 40
    with _pcscd():
        with _emulator():
            samples = _apdu_latencies_ms(apdus)
            p50, p99 = _percentile(samples, 0.50), _percentile(samples, 0.99)
            print(
                f"pcscd+vpcd APDU transmit (GET BALANCE, {apdus} samples): p50 {p50:.3f} ms, p99 {p99:.3f} ms "
                f"(goal p99 < {GOAL_APDU_P99_MS:g} ms: {'meets' if p99 < GOAL_APDU_P99_MS else 'MISSES'})"
            )
            samples = _tap_latencies_ms(taps)
            p50, p99 = _percentile(samples, 0.50), _percentile(samples, 0.99)
            print(
                f"pcscd+vpcd composite purchase, connect to MAC2 verified, images on disk ({taps} taps): "
                f"p50 {p50:.2f} ms, p99 {p99:.2f} ms "
                f"(goal p99 <= {GOAL_TAP_P99_MS:g} ms: {'meets' if p99 <= GOAL_TAP_P99_MS else 'MISSES'})"
            )
        with _emulator(quickack=False):
            samples = _apdu_latencies_ms(baseline_apdus)
            print(
                f"baseline, same run, emulator without TCP_QUICKACK ({baseline_apdus} samples): "
                f"APDU transmit p50 {_percentile(samples, 0.50):.2f} ms (the delayed-ACK stall of card-profile.md)"
            )


if __name__ == "__main__":
    main(quick=False)
