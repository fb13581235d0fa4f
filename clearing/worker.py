"""A clearing worker: takes batch references from the Redis stream and clears them.

``yikatong clear --workers N`` starts N of these as processes (``run_workers``); each is
one consumer of the group, with its own database connection and TAC key cache. Order of
work in every round: first take over entries that a dead worker left pending longer than
``claim_idle_ms`` (``XAUTOCLAIM``), then read new ones (``XREADGROUP``). An entry is
acknowledged only after its batch committed (or was found done already), so a worker
killed at any point loses nothing: its entry stays pending, and the transaction it had
open rolled back with the connection.

Stopping (SIGTERM or SIGINT, to the parent or straight to a worker, at any moment):
a worker finishes the batch it is clearing (one transaction: committed whole, then
acknowledged), leaves the entries it has not started pending (another worker claims them
after ``claim_idle_ms``) and exits 0. The parent spawns workers with both signals
*blocked*, so a stop that arrives while a worker is still starting up (interpreter,
imports, unpickling) waits, pending, until the worker has its handler, instead of killing
it with the default action (exit -15, which made ``yikatong clear`` exit 1).
"""

from __future__ import annotations

import gc
import logging
import multiprocessing as mp
import multiprocessing.connection
import os
import signal
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import Engine

from clearing.contract.codes import Code
from clearing.errors import ClearingError
from clearing.ingest import (
    Ingestor,
    TacKeys,
    clear_or_answer,
    decode_upload,
    make_ingestor,
    queued_body,
    store_unjudgeable,
    stored_answer,
)
from clearing.redis_bus import Entry, RedisBus
from clearing.validation import Limits

log = logging.getLogger(__name__)

DELIVERIES_MAX_DEFAULT: Final = 5  # an entry handed out this many times killed every worker: set it aside
CLAIM_IDLE_MS_DEFAULT: Final = 30_000  # far above the time one batch takes, so live work is never stolen
READ_BLOCK_MS: Final = 1_000
READ_COUNT: Final = 4
STOP_SIGNALS: Final = frozenset({signal.SIGTERM, signal.SIGINT})
PARENT_POLL_S: Final = 0.1


class StopFlag:
    """Set from a signal handler, read by the loop. A plain attribute, not a
    ``threading.Event``: ``Event.set`` takes a non-reentrant lock, and a second signal
    landing inside the first handler would deadlock on it."""

    def __init__(self) -> None:
        self.signal: int | None = None

    def handle(self, signum: int, _frame: object = None) -> None:
        if self.signal is None:
            self.signal = signum

    def __call__(self) -> bool:
        return self.signal is not None


@dataclass
class Worker:
    engine: Engine
    bus: RedisBus
    keys: TacKeys
    name: str
    claim_idle_ms: int = CLAIM_IDLE_MS_DEFAULT
    limits: Limits | None = None
    ingestor: Ingestor | None = None
    processed: int = 0
    deliveries_max: int = DELIVERIES_MAX_DEFAULT

    def __post_init__(self) -> None:
        if self.ingestor is None:
            self.ingestor = make_ingestor(self.engine, limits=self.limits)
        self.bus.ensure_group()

    def process(self, entry: Entry) -> None:
        """Clear one referenced batch (or see it done already), then acknowledge the entry.

        A batch that cannot be judged gets its final answer (``clear_or_answer``); a store that
        is down leaves the entry pending for later. An entry handed out ``deliveries_max``
        times — it killed every worker that took it — is set aside (``dead_letter``).
        """
        assert self.ingestor is not None
        body = queued_body(self.engine, entry.terminal_id, entry.batch_seq)
        if body is None:
            if stored_answer(self.engine, entry.terminal_id, entry.batch_seq) is None:
                log.warning("entry %s: no batch %s/%s", entry.entry_id, entry.terminal_id, entry.batch_seq)
        elif entry.deliveries > self.deliveries_max:
            self.dead_letter(entry, body)
            return
        else:
            try:
                batch = decode_upload(body)
                clear_or_answer(self.ingestor, self.engine, entry.terminal_id, batch, body, self.keys)
            except ClearingError as exc:
                if exc.code is Code.E_UNAVAILABLE:
                    raise  # the store is down: leave the entry pending
                log.error("batch %s/%s refused: %s", entry.terminal_id, entry.batch_seq, exc)
            self.processed += 1
        self.bus.notify_done(entry.terminal_id, entry.batch_seq)
        self.bus.ack(entry.entry_id)

    def dead_letter(self, entry: Entry, body: bytes) -> None:
        """An entry that failed ``deliveries_max`` times: its batch gets a final answer and an
        exception item, the entry moves to the dead-letter stream, and the terminal moves on."""
        reason = f"handed out {entry.deliveries} times without being cleared (a worker died on it each time)"
        log.error("batch %s/%s: %s; dead-lettered", entry.terminal_id, entry.batch_seq, reason)
        try:
            store_unjudgeable(self.engine, entry.terminal_id, decode_upload(body), body, RuntimeError(reason))
        except ClearingError as exc:
            log.error("batch %s/%s: no final answer stored (%s)", entry.terminal_id, entry.batch_seq, exc)
        self.bus.dead_letter(entry, reason)
        self.bus.notify_done(entry.terminal_id, entry.batch_seq)

    def run_once(self, block_ms: int = READ_BLOCK_MS, stop: Callable[[], bool] | None = None) -> int:
        """One round: stale entries first, then new ones. Returns how many entries were handled.

        ``stop`` is asked before each entry: once it says yes, the entries not yet started
        are left pending (unacknowledged) for a worker to claim after ``claim_idle_ms``.
        """
        entries = self.bus.claim_stale(self.name, idle_ms=self.claim_idle_ms, count=READ_COUNT)
        if not entries and not (stop is not None and stop()):  # no new entries for a worker on its way out
            entries = self.bus.read(self.name, count=READ_COUNT, block_ms=block_ms)
        handled = 0
        for entry in entries:
            if stop is not None and stop():
                log.info("stopping: %d entr(ies) left pending for another worker", len(entries) - handled)
                break
            handled += 1
            try:
                self.process(entry)
            except Exception:
                # Not acknowledged: the entry stays pending and is claimed again after
                # claim_idle_ms (by this or another worker), when the database is back.
                log.exception("batch %s/%s failed; left pending", entry.terminal_id, entry.batch_seq)
        return handled

    def run(self, stop: Callable[[], bool]) -> None:
        while not stop():
            self.run_once(stop=stop)


GC_THRESHOLDS: Final = (50_000, 20, 100)


def tune_gc() -> None:
    """Fewer cyclic-GC passes: a batch allocates tens of thousands of short-lived, acyclic
    objects, and every generation-2 pass walks the long-lived key caches (200,000 MAC
    contexts). The gain is a few per cent, within the noise of a shared 2-core machine
    (``docs/clearing.md``, "Performance")."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def consumer_name(index: int) -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{index}"


def _install_stop_handlers(flag: StopFlag) -> dict[int, Any]:
    return {sig: signal.signal(sig, flag.handle) for sig in STOP_SIGNALS}


def worker_main(settings: Any, index: int, claim_idle_ms: int = CLAIM_IDLE_MS_DEFAULT, ready: Any = None) -> None:
    """Entry point of one worker process (spawned): build everything from the settings and run.

    The parent spawned this process with SIGTERM/SIGINT blocked; the handler goes in first,
    then the signals are unblocked, so a stop sent during start-up is delivered here (and
    only sets the flag). When the loop has ended they are blocked again: interpreter
    shutdown puts the default handlers back, and a second stop (the parent forwarding one
    this worker also got from its process group) would otherwise kill it on its way out.
    ``ready`` (an ``Event``) is set once the worker is a consumer of the group.
    """
    stopping = StopFlag()
    _install_stop_handlers(stopping)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    try:
        _work(settings, index, claim_idle_ms, ready, stopping)
    finally:
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)


def _work(settings: Any, index: int, claim_idle_ms: int, ready: Any, stopping: StopFlag) -> None:
    from clearing import db
    from clearing.business_day import clock_from_settings
    from clearing.ingest import keystore_dtk
    from clearing.keystore import KeyStore
    from clearing.refunds import tariff_refunds

    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s worker-{index} %(levelname)s %(message)s")
    if stopping():
        log.info("stopped before start-up finished; nothing was read")
        return
    engine = db.make_engine(settings.database_url, pool_size=2)
    keystore = KeyStore.from_settings(settings)
    keys = TacKeys(keystore_dtk(keystore), keystore.issuers())
    assert settings.redis_url, "workers need Redis"
    bus = RedisBus.from_url(settings.redis_url, prefix=settings.redis_prefix)
    try:
        ingestor = make_ingestor(
            engine, refund_pricer=tariff_refunds(getattr(settings, "tariffs", None)), days=clock_from_settings(settings)
        )
        worker = Worker(engine, bus, keys, consumer_name(index), claim_idle_ms=claim_idle_ms, ingestor=ingestor)
        tune_gc()
        log.info("clearing worker %s consuming %s", worker.name, bus.stream)
        if ready is not None:
            ready.set()
        worker.run(stopping)
        log.info("clearing worker %s stopped after %d batch(es)", worker.name, worker.processed)
    finally:
        bus.close()
        engine.dispose()


def run_workers(
    settings: Any,
    workers: int,
    claim_idle_ms: int = CLAIM_IDLE_MS_DEFAULT,
    *,
    on_start: Callable[[], None] | None = None,
    on_ready: Callable[[], None] | None = None,
) -> int:
    """Start ``workers`` processes and wait; SIGTERM/SIGINT stop them cleanly. Exit status:
    0 if every worker ended cleanly, else 1 (each failure is logged).

    The previous signal handlers are put back on return. After a stop, SIGTERM/SIGINT are
    left *blocked*: the caller was asked to stop and should exit, and a second stop
    signal (a process-group kill also reaches this process twice) must not kill it with
    the default action while it does.

    ``on_start`` is called once this process handles the stop signals and the workers are
    spawned (a stop from then on is a clean stop); ``on_ready`` once every worker is a
    consumer of the group (both for the CLI's messages and for tests to wait on).
    """
    assert 1 <= workers <= 64, "between 1 and 64 workers"
    from multiprocessing import resource_tracker

    ctx = mp.get_context("spawn")
    stopping = StopFlag()
    previous = _install_stop_handlers(stopping)
    try:
        # Its first launch unblocks SIGINT/SIGTERM in this process when done: get it
        # running before the mask below, so the mask holds for every worker spawned.
        resource_tracker.ensure_running()
        ready = [ctx.Event() for _ in range(workers)]
        procs = [
            ctx.Process(target=worker_main, args=(settings, i, claim_idle_ms, ready[i]), name=f"clearing-worker-{i}")
            for i in range(workers)
        ]
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            for p in procs:
                p.start()  # the child inherits the blocked mask across fork + exec
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # a stop that came meanwhile is handled now
        if on_start is not None:
            on_start()
        return _supervise(procs, ready, stopping, on_ready)
    finally:
        if stopping():
            signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _supervise(procs: list[Any], ready: list[Any], stopping: StopFlag, on_ready: Callable[[], None] | None) -> int:
    forwarded = announced = False
    was_ready = [False] * len(procs)
    while True:
        alive = [p for p in procs if p.exitcode is None]
        if not alive:
            break
        if stopping() and not forwarded:
            forwarded = True
            for p in alive:
                _signal(p, signal.SIGTERM)
        for i, event in enumerate(ready):
            was_ready[i] = was_ready[i] or event.is_set()
        if not announced and not stopping() and all(was_ready):
            announced = True
            if on_ready is not None:
                on_ready()
        _wait([p.sentinel for p in alive], PARENT_POLL_S)
    failed = 0
    for i, p in enumerate(procs):
        p.join()
        if p.exitcode != 0:
            failed += 1
            log.error("clearing worker %d (pid %s) exited with %s", i, p.pid, p.exitcode)
    return 1 if failed else 0


def _signal(proc: Any, sig: int) -> None:
    try:
        if proc.pid is not None and proc.exitcode is None:  # not reaped yet: the pid is still ours
            os.kill(proc.pid, sig)
    except ProcessLookupError:
        pass


def _wait(sentinels: Iterable[int], timeout_s: float) -> None:
    multiprocessing.connection.wait(list(sentinels), timeout=timeout_s)


__all__ = [
    "CLAIM_IDLE_MS_DEFAULT",
    "STOP_SIGNALS",
    "StopFlag",
    "Worker",
    "consumer_name",
    "run_workers",
    "tune_gc",
    "worker_main",
]
