"""A clearing worker: takes batch references from the Redis stream and clears them.

``yikatong clear --workers N`` starts N of these as processes (``run_workers``); each is
one consumer of the group, with its own database connection and TAC key cache. Order of
work in every round: first take over entries that a dead worker left pending longer than
``claim_idle_ms`` (``XAUTOCLAIM``), then read new ones (``XREADGROUP``). An entry is
acknowledged only after its batch committed (or was found done already), so a worker
killed at any point loses nothing: its entry stays pending, and the transaction it had
open rolled back with the connection.
"""

from __future__ import annotations

import gc
import logging
import multiprocessing as mp
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import Engine

from clearing.ingest import (
    IngestError,
    Ingestor,
    TacKeys,
    decode_upload,
    make_ingestor,
    prepare,
    queued_body,
    stored_answer,
)
from clearing.redis_bus import Entry, RedisBus
from clearing.validation import Limits

log = logging.getLogger(__name__)

CLAIM_IDLE_MS_DEFAULT: Final = 30_000  # far above the time one batch takes, so live work is never stolen
READ_BLOCK_MS: Final = 1_000
READ_COUNT: Final = 4


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

    def __post_init__(self) -> None:
        if self.ingestor is None:
            self.ingestor = make_ingestor(self.engine, limits=self.limits)
        self.bus.ensure_group()

    def process(self, entry: Entry) -> None:
        """Clear one referenced batch (or see it done already), then acknowledge the entry."""
        assert self.ingestor is not None
        body = queued_body(self.engine, entry.terminal_id, entry.batch_seq)
        if body is None:
            if stored_answer(self.engine, entry.terminal_id, entry.batch_seq) is None:
                log.warning("entry %s: no batch %s/%s", entry.entry_id, entry.terminal_id, entry.batch_seq)
        else:
            try:
                prepared = prepare(entry.terminal_id, decode_upload(body), self.keys)
                self.ingestor.ingest(prepared)
            except IngestError as exc:  # cannot become clearable by retrying: say so and move on
                log.error("batch %s/%s refused: %s", entry.terminal_id, entry.batch_seq, exc)
            self.processed += 1
        self.bus.notify_done(entry.terminal_id, entry.batch_seq)
        self.bus.ack(entry.entry_id)

    def run_once(self, block_ms: int = READ_BLOCK_MS) -> int:
        """One round: stale entries first, then new ones. Returns how many entries were handled."""
        entries = self.bus.claim_stale(self.name, idle_ms=self.claim_idle_ms, count=READ_COUNT)
        if not entries:
            entries = self.bus.read(self.name, count=READ_COUNT, block_ms=block_ms)
        for entry in entries:
            try:
                self.process(entry)
            except Exception:
                # Not acknowledged: the entry stays pending and is claimed again after
                # claim_idle_ms (by this or another worker), when the database is back.
                log.exception("batch %s/%s failed; left pending", entry.terminal_id, entry.batch_seq)
        return len(entries)

    def run(self, stop: Callable[[], bool]) -> None:
        while not stop():
            self.run_once()


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


def worker_main(settings: Any, index: int, claim_idle_ms: int = CLAIM_IDLE_MS_DEFAULT) -> None:
    """Entry point of one worker process (spawned): build everything from the settings and run."""
    from clearing import db
    from clearing.ingest import keystore_dtk
    from clearing.keystore import KeyStore

    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s worker-{index} %(levelname)s %(message)s")
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    engine = db.make_engine(settings.database_url, pool_size=2)
    keystore = KeyStore.from_settings(settings)
    keys = TacKeys(keystore_dtk(keystore), keystore.issuers())
    assert settings.redis_url, "workers need Redis"
    bus = RedisBus.from_url(settings.redis_url, prefix=settings.redis_prefix)
    worker = Worker(engine, bus, keys, consumer_name(index), claim_idle_ms=claim_idle_ms)
    tune_gc()
    log.info("clearing worker %s consuming %s", worker.name, bus.stream)
    try:
        worker.run(stopping.is_set)
    finally:
        bus.close()
        engine.dispose()


def run_workers(settings: Any, workers: int, claim_idle_ms: int = CLAIM_IDLE_MS_DEFAULT) -> int:
    """Start ``workers`` processes and wait; SIGTERM/SIGINT stop them cleanly. Exit status."""
    assert 1 <= workers <= 64, "between 1 and 64 workers"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=worker_main, args=(settings, i, claim_idle_ms), daemon=False) for i in range(workers)]
    for p in procs:
        p.start()

    def stop(*_: object) -> None:
        for p in procs:
            if p.is_alive() and p.pid is not None:
                os.kill(p.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while any(p.is_alive() for p in procs):
        time.sleep(0.5)
    return 0 if all(p.exitcode == 0 for p in procs) else 1


__all__ = ["CLAIM_IDLE_MS_DEFAULT", "Worker", "consumer_name", "run_workers", "tune_gc", "worker_main"]
