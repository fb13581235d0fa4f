"""End to end: the real ``yikatong clear --workers 2`` (a subprocess) clears what the API queues.

The API runs in-process (TestClient) with Redis configured; the workers are the CLI command,
configured only through the environment (database URL pointing at this session's private
PostgreSQL schema, Redis db 15, a random key prefix). Uploads answer ``503 I_QUEUED`` with
``Retry-After`` until a worker has cleared them, then the stored answer. Every record must
post exactly once, the ledger must balance, and SIGTERM must stop the workers cleanly.

Nothing here sleeps for the workers: the command prints ``clearing with N worker(s)`` once
its stop handlers are in, and ``N worker(s) ready`` once every worker consumes the stream,
and the tests signal at those points. A stop is asserted to mean exit status 0, every
worker through its own stop path (its log line), no error logged, nothing left running.
"""

from __future__ import annotations

import datetime as dt
import os
import queue
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session
from tapfactory import T0, Card, Terminal, body, make_keystore, register_world

from clearing.api import ApiDeps, create_app
from clearing.contract import Batch
from clearing.ledger import trial_balance
from clearing.models import BatchRow, Tap, Transfer
from clearing.redis_bus import RedisBus
from clearing.worker import StopFlag, Worker

pytestmark = [pytest.mark.redis, pytest.mark.postgres]

TERMINALS = ("0000aa000001", "0000aa000002")
CARDS = 6
BATCHES_PER_TERMINAL = 3
AMOUNT_FEN = 200
OPENING_FEN = 5000
WORKERS = 2
DEADLINE_S = 90.0
READY_WITHIN_S = 90.0  # two spawned interpreters importing everything, on a loaded 2-core host
STOP_WITHIN_S = 10.0  # a ready worker: at most one blocking read (1 s) and one batch
STARTUP_STOP_WITHIN_S = 60.0  # a starting worker takes the stop once its imports are done
STARTED = f"clearing with {WORKERS} worker(s)"
READY = f"{WORKERS} worker(s) ready"


def _cli() -> list[str]:
    script = Path(sys.executable).with_name("yikatong")
    found = str(script) if script.exists() else shutil.which("yikatong")
    return [found] if found else [sys.executable, "-c", "from yikatong.cli import app; app()"]


def _schema_url(url: str, schema: str) -> str:
    """The test URL with ``search_path`` set through libpq options (what the CLI gets)."""
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}options={quote(f'-csearch_path={schema}', safe='')}"


def _group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


class ClearCommand:
    """``yikatong clear --workers N`` in its own process group, its output read as it comes."""

    def __init__(self, env: dict[str, str], cwd: Path, workers: int = WORKERS) -> None:
        self.proc = subprocess.Popen(
            [*_cli(), "clear", "--workers", str(workers)],
            cwd=cwd,  # no stray .env from the working tree
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its own process group: checked empty at the end
        )
        self.pgid = self.proc.pid
        self.out: list[str] = []
        self.err: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.out, self._lines), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, self.err, None), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream: IO[str], into: list[str], lines: queue.Queue[str | None] | None) -> None:
        for line in stream:
            into.append(line)
            if lines is not None:
                lines.put(line)
        if lines is not None:
            lines.put(None)  # end of output

    @property
    def stdout(self) -> str:
        return "".join(self.out)

    @property
    def stderr(self) -> str:
        return "".join(self.err)

    def report(self) -> str:
        return f"exit {self.proc.returncode}\n--- stdout\n{self.stdout[-2000:]}\n--- stderr\n{self.stderr[-6000:]}"

    def wait_for_line(self, text: str, within_s: float) -> None:
        """Until a stdout line contains ``text``; fails if the command ends or time runs out first."""
        deadline = time.monotonic() + within_s
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f"no {text!r} within {within_s} s\n{self.report()}"
            try:
                line = self._lines.get(timeout=left)
            except queue.Empty:
                continue
            assert line is not None, f"the command ended before printing {text!r}\n{self.report()}"
            if text in line:
                return

    def stop(self, sig: int = signal.SIGTERM, *, group: bool = False, within_s: float = STOP_WITHIN_S) -> int | None:
        """Send ``sig`` to the command (it forwards a stop to its workers) or, like Ctrl-C or a
        service manager, to its whole process group; its exit status if it ends in time."""
        if group:
            os.killpg(self.pgid, sig)
        else:
            self.proc.send_signal(sig)
        return self.wait(within_s)

    def wait(self, within_s: float) -> int | None:
        """Its exit status, with all its output read, if it ends within ``within_s``."""
        try:
            status = self.proc.wait(timeout=within_s)
        except subprocess.TimeoutExpired:
            return None
        for reader in self._readers:
            reader.join(timeout=5)
        return status

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.pgid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def assert_stopped_cleanly(self, status: int | None) -> None:
        """Exit 0, every worker through its stop path, no error logged, the process group empty."""
        assert status == 0, self.report()
        assert STARTED in self.stdout and self.out[-1].strip() == "stopped", self.report()
        stopped = [line for line in self.err if " stopped " in line or "stopped before start-up" in line]
        assert sorted(line.split()[2] for line in stopped) == [f"worker-{i}" for i in range(WORKERS)], self.report()
        assert "Traceback" not in self.stderr and " ERROR " not in self.stderr, self.report()
        for _ in range(50):  # the workers were waited for by their parent; nothing is left behind
            if _group_gone(self.pgid):
                break
            time.sleep(0.1)
        assert _group_gone(self.pgid), self.report()


@pytest.fixture
def cli_world(
    pg_schema: tuple[str, str], pg_engine: Engine, redis_url: str, tmp_path: Path
) -> Iterator[dict[str, Any]]:
    """The environment ``yikatong clear`` runs in, its key store, a bus on the same prefix."""
    url, schema = pg_schema
    prefix = f"ykt-e2e-{secrets.token_hex(6)}"
    kek = os.urandom(32)
    keystore = make_keystore(tmp_path, kek)
    bus = RedisBus.from_url(redis_url, prefix=prefix)
    env = {
        **os.environ,
        "YIKATONG_DATABASE_URL": _schema_url(url, schema),
        "YIKATONG_REDIS_URL": redis_url,
        "YIKATONG_REDIS_PREFIX": prefix,
        "YIKATONG_KEYSTORE": str(keystore.path),  # type: ignore[attr-defined]
        "YIKATONG_KEK": kek.hex(),
    }
    try:
        yield {"env": env, "keystore": keystore, "bus": bus, "engine": pg_engine, "cwd": tmp_path}
    finally:
        keys = list(bus.client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            bus.client.delete(*keys)
        assert not list(bus.client.scan_iter(match=f"{prefix}:*", count=1000))
        bus.close()


def _upload_until_answered(client: TestClient, terminal_id: str, data: bytes, token: str) -> tuple[Any, int]:
    """POST until the stored answer comes back; returns it and how many 503s came first."""
    headers = {"Authorization": f"Bearer {token}"}
    queued = 0
    deadline = time.monotonic() + DEADLINE_S
    while True:
        response = client.post(f"/v1/terminals/{terminal_id}/batches", content=data, headers=headers)
        if response.status_code == 200:
            return response, queued
        assert response.status_code == 503, response.text
        assert response.json()["code"] == "I_QUEUED"
        assert int(response.headers["Retry-After"]) > 0
        queued += 1
        assert time.monotonic() < deadline, f"no answer within {DEADLINE_S} s"
        time.sleep(0.2)  # shorter than Retry-After: the test need not wait that long


def test_clear_workers_post_every_queued_record_once_and_stop_on_sigterm(cli_world: dict[str, Any]) -> None:
    pg_engine: Engine = cli_world["engine"]
    bus: RedisBus = cli_world["bus"]
    cards = [Card(n, balance_fen=OPENING_FEN) for n in range(CARDS)]
    with Session(pg_engine) as session:
        tokens = register_world(session, cards, list(TERMINALS), tokens=True)

    # batches from two terminals sharing the cards, so the two workers contend for card rows
    terms = {t: Terminal(t) for t in TERMINALS}
    batches: list[tuple[str, Batch]] = []
    for round_ in range(BATCHES_PER_TERMINAL):
        for t, term in terms.items():
            for card in cards:
                term.tap(card, AMOUNT_FEN, when=T0 + dt.timedelta(minutes=round_, seconds=term.seq))
            batches.append((t, term.batch()))
    expected = {f"tap:{t}:{r.terminal_seq}" for t, b in batches for r in b.records}

    client = TestClient(create_app(ApiDeps(pg_engine, cli_world["keystore"], bus=bus, queue_wait_s=0.3)))
    command: ClearCommand | None = None
    try:
        # before any worker runs, an upload is queued: 503 I_QUEUED + Retry-After
        first_terminal, first = batches[0]
        early = client.post(
            f"/v1/terminals/{first_terminal}/batches",
            content=body(first),
            headers={"Authorization": f"Bearer {tokens[first_terminal]}"},
        )
        assert early.status_code == 503 and early.json()["code"] == "I_QUEUED"
        assert early.headers["Retry-After"] == "2"

        command = ClearCommand(cli_world["env"], cli_world["cwd"])
        # every worker is a consumer before the uploads: both take part, neither is still starting
        command.wait_for_line(READY, READY_WITHIN_S)
        answers = {}
        for terminal_id, batch in batches:
            response, _ = _upload_until_answered(client, terminal_id, body(batch), tokens[terminal_id])
            answers[(terminal_id, batch.batch_seq)] = response.content
            verdicts = response.json()["verdicts"]
            assert [v["terminal_seq"] for v in verdicts] == [r.terminal_seq for r in batch.records]
            assert {v["verdict"] for v in verdicts} <= {"accepted", "suspect"}, verdicts  # both post

        # a re-upload gets the stored bytes and posts nothing more
        again = client.post(
            f"/v1/terminals/{first_terminal}/batches",
            content=body(first),
            headers={"Authorization": f"Bearer {tokens[first_terminal]}"},
        )
        assert again.status_code == 200 and again.content == answers[(first_terminal, first.batch_seq)]

        with Session(pg_engine) as session:
            posted = list(session.scalars(select(Transfer.id).where(Transfer.id.like("tap:%"))))
            assert len(posted) == len(expected) and set(posted) == expected  # each record exactly once
            assert session.execute(select(func.count()).select_from(Tap)).scalar_one() == len(expected)
            statuses = session.execute(select(BatchRow.status, func.count()).group_by(BatchRow.status)).all()
            assert dict(statuses) == {"done": len(batches)}
            totals = trial_balance(session)
            assert totals.transfers_posted_fen == CARDS * OPENING_FEN + len(expected) * AMOUNT_FEN
        assert bus.pending_count() == 0  # every entry acknowledged
        assert len(bus.client.xinfo_consumers(bus.stream, bus.group)) == WORKERS

        # the known point: every worker ready, every entry acknowledged, the workers idle
        command.assert_stopped_cleanly(command.stop(signal.SIGTERM))
    finally:
        if command is not None:
            command.kill()
        client.close()


@pytest.mark.parametrize(
    ("sig", "group"),
    [(signal.SIGTERM, False), (signal.SIGTERM, True), (signal.SIGINT, True)],
    ids=["sigterm-to-the-command", "sigterm-to-the-group", "ctrl-c"],
)
def test_a_stop_while_the_workers_start_up_is_a_clean_exit(cli_world: dict[str, Any], sig: int, group: bool) -> None:
    """The stop lands while the spawned workers are still importing (``clearing with`` is
    printed right after they are spawned, seconds before they are ready). It used to kill a
    worker with the default action (exit -15: the command exited 1) or, a moment earlier,
    the command itself; now it is held until each worker has its handler."""
    command = ClearCommand(cli_world["env"], cli_world["cwd"])
    try:
        command.wait_for_line(STARTED, READY_WITHIN_S)
        status = command.stop(sig, group=group, within_s=STARTUP_STOP_WITHIN_S)
        command.assert_stopped_cleanly(status)
        assert READY not in command.stdout, command.report()  # the stop came before the workers were up
        assert command.stderr.count("stopped before start-up finished") == WORKERS, command.report()
    finally:
        command.kill()
    assert cli_world["bus"].client.exists(cli_world["bus"].stream) == 0  # no worker got as far as the stream


def test_a_worker_that_fails_makes_the_command_exit_1_with_the_error(cli_world: dict[str, Any]) -> None:
    """The other side of the exit status: no signal, the workers cannot reach Redis (a port
    nobody listens on), each exits 1 on its own, and the command says so and exits 1."""
    with socket.create_server(("127.0.0.1", 0)) as probe:
        closed = f"redis://127.0.0.1:{probe.getsockname()[1]}/15"
    command = ClearCommand({**cli_world["env"], "YIKATONG_REDIS_URL": closed}, cli_world["cwd"])
    try:
        status = command.wait(READY_WITHIN_S)
        assert status == 1, command.report()
        assert STARTED in command.stdout and READY not in command.stdout, command.report()
        assert "stopped" not in command.stdout, command.report()
        assert "error: E_INTERNAL: a clearing worker failed" in command.stderr, command.report()
        failed = re.findall(r"clearing worker (\d+) \(pid \d+\) exited with (-?\d+)", command.stderr)
        assert sorted(failed) == [(str(i), "1") for i in range(WORKERS)], command.report()
    finally:
        command.kill()


def test_a_sigterm_mid_batch_commits_that_batch_and_leaves_the_rest_pending_for_another_worker(
    db_engine: Engine, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In process, with the worker's own stop handler: SIGTERM arrives while the first of
    three entries is being cleared. That batch commits whole and is acknowledged; the two
    not started stay pending (nothing of them posted) and another worker claims and clears
    them once they have been idle ``claim_idle_ms``. Each record posts once."""
    keystore = make_keystore(tmp_path)
    cards = [Card(n, balance_fen=OPENING_FEN) for n in range(3)]
    with Session(db_engine) as session:
        tokens = register_world(session, cards, [TERMINALS[0]], tokens=True)
    term = Terminal(TERMINALS[0])
    batches = []
    for round_ in range(3):
        for card in cards:
            term.tap(card, AMOUNT_FEN, when=T0 + dt.timedelta(minutes=round_, seconds=term.seq))
        batches.append(term.batch())
    per_batch = len(cards) * AMOUNT_FEN
    bus = RedisBus.from_url(redis_url, prefix=f"ykt-stop-{secrets.token_hex(6)}")
    client = TestClient(create_app(ApiDeps(db_engine, keystore, bus=bus, queue_wait_s=0.01)))  # type: ignore[arg-type]
    headers = {"Authorization": f"Bearer {tokens[TERMINALS[0]]}"}

    def posted() -> tuple[int, dict[str, int]]:
        with Session(db_engine) as session:
            fen = session.execute(
                select(func.coalesce(func.sum(Transfer.amount_fen), 0)).where(Transfer.id.like("tap:%"))
            ).scalar_one()
            statuses = dict(session.execute(select(BatchRow.status, func.count()).group_by(BatchRow.status)).all())
            trial_balance(session)
            return int(fen), {str(k): int(v) for k, v in statuses.items()}

    def worker(name: str, claim_idle_ms: int) -> Worker:
        from clearing.ingest import TacKeys, keystore_dtk

        made = Worker(
            db_engine,
            bus,
            TacKeys(keystore_dtk(keystore), keystore.issuers()),  # type: ignore[attr-defined]
            name,
            claim_idle_ms=claim_idle_ms,
        )
        assert made.ingestor is not None
        made.ingestor.clock = lambda: (T0 + dt.timedelta(days=1)).astimezone(dt.UTC)  # type: ignore[attr-defined]
        return made

    stopping = StopFlag()
    previous = signal.signal(signal.SIGTERM, stopping.handle)
    try:
        bus.ensure_group()
        for batch in batches:  # the API stores each as queued and XADDs its reference
            answer = client.post(f"/v1/terminals/{TERMINALS[0]}/batches", content=body(batch), headers=headers)
            assert answer.status_code == 503 and answer.json()["code"] == "I_QUEUED"
        assert bus.pending_count() == 0

        leaving = worker("leaving", claim_idle_ms=60_000)
        assert leaving.ingestor is not None
        ingest = leaving.ingestor.ingest

        def ingest_while_signalled(*args: Any, **kwargs: Any) -> Any:
            signal.raise_signal(signal.SIGTERM)  # handled at once: the flag is set, the batch goes on
            assert stopping.signal == signal.SIGTERM
            return ingest(*args, **kwargs)

        monkeypatch.setattr(leaving.ingestor, "ingest", ingest_while_signalled)
        leaving.run(stopping)  # returns: one round, stopped after the entry in hand
        assert leaving.processed == 1
        assert posted() == (per_batch, {"done": 1, "queued": 2})  # the first batch whole, nothing of the rest
        pending = bus.client.xpending_range(bus.stream, bus.group, min="-", max="+", count=10)
        assert [p["consumer"] for p in pending] == [b"leaving", b"leaving"]

        heir = worker("heir", claim_idle_ms=50)
        time.sleep(0.1)  # the abandoned entries idle past the heir's claim timeout
        assert heir.run_once(block_ms=50) == 2  # XAUTOCLAIM: the two the leaving worker never started
        assert heir.processed == 2
        assert bus.pending_count() == 0
        assert posted() == (len(batches) * per_batch, {"done": len(batches)})  # each record exactly once
        for batch in batches:
            done = client.post(f"/v1/terminals/{TERMINALS[0]}/batches", content=body(batch), headers=headers)
            assert done.status_code == 200 and {v["verdict"] for v in done.json()["verdicts"]} == {"accepted"}
    finally:
        signal.signal(signal.SIGTERM, previous)
        client.close()
        keys = list(bus.client.scan_iter(match=f"{bus.prefix}:*", count=1000))
        if keys:
            bus.client.delete(*keys)
        bus.close()
