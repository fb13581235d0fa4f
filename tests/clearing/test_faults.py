"""Faults: bad input, forgeries, replays, backwards counters, unknown terminals, a worker killed
with SIGKILL mid-batch, concurrent uploads of one batch, and the PostgreSQL connection killed
during ingest. Each ends with the ledger balanced and nothing posted twice.
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import msgspec
import psycopg
import pytest
import uvicorn
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session
from tapfactory import OWN_ISSUER, T0, Card, Terminal, body, dtk_lookup, make_keystore, register_world

from clearing import db
from clearing.api import ApiDeps, create_app
from clearing.contract import Batch
from clearing.ingest import TacKeys, content_hash, enqueue, make_ingestor, prepare, stored_answer
from clearing.ledger import trial_balance
from clearing.models import BatchRow, Tap, Transfer
from clearing.models import Card as CardRow
from clearing.redis_bus import RedisBus

NOW = T0 + dt.timedelta(days=1)
TERMINAL = "0000aa000001"
REPO = Path(__file__).resolve().parents[2]


def clock() -> dt.datetime:
    return NOW.astimezone(dt.UTC)


def posted_taps(engine: Engine) -> tuple[int, int]:
    """(number, fen) of tap transfers; and the ledger must balance."""
    with Session(engine) as session:
        trial_balance(session)
        n, fen = session.execute(
            select(func.count(), func.coalesce(func.sum(Transfer.amount_fen), 0)).where(Transfer.id.like("tap:%"))
        ).one()
        return int(n), int(fen)


def verdicts(answer: bytes) -> list[tuple[str, str]]:
    return [(v["verdict"], v["code"]) for v in msgspec.json.decode(answer)["verdicts"]]


class Direct:
    """Ingest without HTTP, with the TAC keys of the test cards."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.ingestor = make_ingestor(engine, clock=clock)
        self.keys = TacKeys(dtk_lookup, [OWN_ISSUER])

    def upload(self, batch: Batch, terminal_id: str = TERMINAL) -> bytes:
        return self.ingestor.ingest(prepare(terminal_id, batch, self.keys)).answer


def world(
    engine: Engine, cards: list[Card], terminals: list[str] | None = None, tokens: bool = False
) -> dict[str, str]:
    with Session(engine) as session:
        return register_world(session, cards, terminals or [TERMINAL], tokens=tokens)


# --- bad input ----------------------------------------------------------------------------------


def test_malformed_and_truncated_uploads_are_refused_and_store_nothing(db_engine: Engine, tmp_path: Path) -> None:
    tokens = world(db_engine, [Card(1)], tokens=True)
    client = TestClient(create_app(ApiDeps(db_engine, make_keystore(tmp_path))))
    term = Terminal(TERMINAL)
    data = body(term.batch([term.tap(Card(1)) for _ in range(3)]))
    headers = {"Authorization": f"Bearer {tokens[TERMINAL]}"}
    for bad in (data[: len(data) // 3], data[:-1], data.replace(b'"tx_type":9', b'"tx_type":7'), b"{}", b"[]"):
        response = client.post(f"/v1/terminals/{TERMINAL}/batches", content=bad, headers=headers)
        assert response.status_code == 422, bad[:40]
    with Session(db_engine) as session:
        assert session.execute(select(func.count()).select_from(BatchRow)).scalar_one() == 0
        assert session.execute(select(func.count()).select_from(Tap)).scalar_one() == 0


# --- forgeries, replays, counters, terminals ------------------------------------------------------


def test_forged_tacs_are_rejected_and_post_nothing(db_engine: Engine) -> None:
    card = Card(1, balance_fen=1000)
    world(db_engine, [card])
    term, clearing = Terminal(TERMINAL), Direct(db_engine)
    genuine = term.tap(card, 100)
    forgeries = [
        msgspec.structs.replace(genuine, amount_fen=1),  # cheaper fare, same TAC
        msgspec.structs.replace(genuine, tac="deadbeef"),
        msgspec.structs.replace(genuine, tx_time="2026-11-24T09:00:00+08:00"),
        msgspec.structs.replace(genuine, card_asn=Card(2).asn),  # another card's number
    ]
    answer = clearing.upload(term.batch([*forgeries, genuine]))
    assert [c for _, c in verdicts(answer)] == [
        "E_TAC_MISMATCH",
        "E_TAC_MISMATCH",
        "E_TAC_MISMATCH",
        "E_UNKNOWN_CARD",
        "OK",
    ]
    assert posted_taps(db_engine) == (1, 100)


def test_records_replayed_in_another_batch_post_once(db_engine: Engine) -> None:
    cards = [Card(n, balance_fen=1000) for n in range(3)]
    world(db_engine, cards, [TERMINAL, "0000aa000002"])
    term, clearing = Terminal(TERMINAL), Direct(db_engine)
    records = [term.tap(c, 100) for c in cards]
    clearing.upload(term.batch(records))
    replay = clearing.upload(Batch(9, T0.isoformat(), [records[1], records[0]]))
    assert verdicts(replay) == [("rejected", "E_DUPLICATE_TERMINAL_SEQ")] * 2
    # the same records relabelled as another terminal's: the terminal is not the uploader's
    stolen = clearing.upload(Batch(1, T0.isoformat(), records), terminal_id="0000aa000002")
    assert {c for _, c in verdicts(stolen)} == {"E_UNKNOWN_TERMINAL"}
    assert posted_taps(db_engine) == (3, 300)


def test_counters_going_backwards(db_engine: Engine) -> None:
    card = Card(1, balance_fen=1000)
    world(db_engine, [card], [TERMINAL, "0000aa000002"])
    bus_a, bus_b, clearing = Terminal(TERMINAL), Terminal("0000aa000002"), Direct(db_engine)
    taps = [bus_a.tap(card, 100) for _ in range(4)]  # counters 0..3, balance 1000 -> 600
    clearing.upload(bus_a.batch())
    # a clone replays counter 2 on another bus (its own, valid sequence): the counter was used
    card.counter, card.balance_fen = 2, 800
    clone = bus_b.tap(card, 100)
    answer = clearing.upload(bus_b.batch([clone]), terminal_id=bus_b.terminal_id)
    assert verdicts(answer) == [("rejected", "E_DUPLICATE_CARD_COUNTER")]
    # counter 1 again as a plain purchase (type 6): the natural key is new, the counter is not
    card.counter, card.balance_fen = 1, 900
    back = bus_b.tap(card, 100)
    back = msgspec.structs.replace(back, tx_type=6)
    from tapfactory import sign

    answer = clearing.upload(bus_b.batch([sign(back)]), terminal_id=bus_b.terminal_id)
    assert verdicts(answer) == [("rejected", "E_DUPLICATE_CARD_COUNTER")]
    with Session(db_engine) as session:
        row = session.execute(select(CardRow).where(CardRow.card_asn == card.asn)).scalar_one()
        # the shadow stays with the highest counter: a record from the past never rolls it back
        assert (row.shadow_balance_fen, row.last_offline_counter) == (600, 3)
    assert taps[3].offline_counter == 3


def test_unknown_terminals_are_refused(db_engine: Engine, tmp_path: Path) -> None:
    card = Card(1)
    tokens = world(db_engine, [card], tokens=True)
    client = TestClient(create_app(ApiDeps(db_engine, make_keystore(tmp_path))))
    stranger = Terminal("0000ffff0001")
    data = body(stranger.batch([stranger.tap(card)]))
    # a registered terminal's valid token on the stranger's path is another terminal's token: 403
    for token, status in ((tokens[TERMINAL], 403), ("made-up", 401), (f"0000ffff0001.{'A' * 43}", 401)):
        response = client.post(
            "/v1/terminals/0000ffff0001/batches", content=data, headers={"Authorization": f"Bearer {token}"}
        )
        assert response.status_code == status, token
    # records of an unregistered terminal inside a registered terminal's batch
    answer = Direct(db_engine).upload(Batch(1, T0.isoformat(), stranger.batch([stranger.tap(card)]).records))
    assert verdicts(answer) == [("rejected", "E_UNKNOWN_TERMINAL")]
    assert posted_taps(db_engine) == (0, 0)


# --- the same batch from two connections at once ---------------------------------------------------


class LiveServer:
    """A real uvicorn on a free port, in a thread."""

    def __init__(self, app: Any) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        for _ in range(100):
            if self.server.started:
                break
            time.sleep(0.05)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def test_the_same_batch_uploaded_concurrently_posts_once(db_engine: Engine, tmp_path: Path) -> None:
    cards = [Card(n, balance_fen=5000) for n in range(20)]
    tokens = world(db_engine, cards, tokens=True)
    term = Terminal(TERMINAL)
    for card in cards:
        term.tap(card, 100)
        term.tap(card, 100)
    data = body(term.batch())
    app = create_app(ApiDeps(db_engine, make_keystore(tmp_path), clock=clock))
    answers: list[httpx.Response] = []
    start = threading.Barrier(4)

    def upload(url: str) -> None:
        with httpx.Client(base_url=url, timeout=30) as client:  # one connection per thread
            start.wait()
            answers.append(
                client.post(
                    f"/v1/terminals/{TERMINAL}/batches",
                    content=data,
                    headers={"Authorization": f"Bearer {tokens[TERMINAL]}"},
                )
            )

    with LiveServer(app) as url:
        threads = [threading.Thread(target=upload, args=(url,)) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert [a.status_code for a in answers] == [200] * 4
    assert len({a.content for a in answers}) == 1
    assert posted_taps(db_engine) == (40, 4000)


# --- PostgreSQL connection lost during ingest --------------------------------------------------------


@pytest.mark.postgres
def test_postgres_backend_terminated_during_ingest_is_retried(pg_schema: tuple[str, str], pg_engine: Engine) -> None:
    """Stand-in for a server restart: ``pg_terminate_backend`` of our own ingest connection only.

    The shared server is never restarted. The backend dies with the batch's writes done but
    not committed; the ingest retries on a fresh connection and the batch posts exactly once.
    """
    url, schema = pg_schema
    app_name = f"ykt-ingest-{secrets.token_hex(4)}"
    engine = db.make_engine(url, schema=schema, connect_args={"application_name": app_name})  # pg_engine: clean
    cards = [Card(n, balance_fen=1000) for n in range(5)]
    world(engine, cards)
    term = Terminal(TERMINAL)
    for card in cards:
        term.tap(card, 150)
    clearing = Direct(engine)
    kills: list[int] = []

    def kill_my_backend(_: object) -> None:
        if kills:
            return
        with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as admin:
            rows = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s", (app_name,)
            ).fetchall()
        kills.append(len(rows))

    clearing.ingestor.before_commit = kill_my_backend
    answer = clearing.upload(term.batch())
    assert kills == [1]
    assert [v for v, _ in verdicts(answer)] == ["accepted"] * 5
    assert posted_taps(engine) == (5, 750)
    engine.dispose()


# --- a worker killed with SIGKILL mid-batch ----------------------------------------------------------

_WORKER_SCRIPT = """
import datetime as dt, os, sys, time
sys.path.insert(0, {tests!r})
from clearing import db
from clearing.ingest import TacKeys, keystore_dtk
from clearing.keystore import KeyStore
from clearing.redis_bus import RedisBus
from clearing.worker import Worker
engine = db.make_engine({url!r}, schema={schema!r})
store = KeyStore.open({keystore!r}, bytes.fromhex({kek!r}))
bus = RedisBus.from_url({redis_url!r}, prefix={prefix!r})
worker = Worker(engine, bus, TacKeys(keystore_dtk(store), store.issuers()), {name!r}, claim_idle_ms={idle})
worker.ingestor.clock = lambda: dt.datetime.fromisoformat({now!r})
marker = {marker!r}
if marker:
    def stall(_):
        open(marker, "w").close()
        time.sleep(120)  # inside the transaction, every row written, nothing committed
    worker.ingestor.before_commit = stall
deadline = time.time() + 60
while worker.processed == 0 and time.time() < deadline:
    worker.run_once(block_ms=200)
print("processed", worker.processed)
"""


@pytest.mark.postgres
@pytest.mark.redis
def test_worker_killed_with_sigkill_mid_batch_is_finished_by_the_next(
    pg_schema: tuple[str, str], pg_engine: Engine, redis_url: str, tmp_path: Path
) -> None:
    url, schema = pg_schema
    prefix = f"ykt-test-{secrets.token_hex(6)}:"
    bus = RedisBus.from_url(redis_url, prefix=prefix)
    kek = os.urandom(32)
    keystore = make_keystore(tmp_path, kek)
    cards = [Card(n, balance_fen=2000) for n in range(10)]
    world(pg_engine, cards)
    term = Terminal(TERMINAL)
    for card in cards:
        term.tap(card, 200)
    batch = term.batch()
    enqueue(pg_engine, TERMINAL, batch, content_hash(batch), body(batch), NOW)
    bus.ensure_group()
    bus.enqueue(TERMINAL, batch.batch_seq)

    def start(name: str, marker: str, idle_ms: int) -> subprocess.Popen[bytes]:
        script = _WORKER_SCRIPT.format(
            tests=str(Path(__file__).parent), url=url, schema=schema, keystore=str(keystore.path),  # type: ignore[attr-defined]
            kek=kek.hex(), redis_url=redis_url, prefix=prefix, name=name, idle=idle_ms,
            now=NOW.astimezone(dt.UTC).isoformat(), marker=marker,
        )  # fmt: skip
        return subprocess.Popen(
            [sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )

    try:
        marker = tmp_path / "in-transaction"
        doomed = start("doomed", str(marker), 60_000)
        for _ in range(300):
            if marker.exists() or doomed.poll() is not None:
                break
            time.sleep(0.05)
        assert marker.exists(), doomed.communicate()[1].decode()[-2000:]
        os.kill(doomed.pid, signal.SIGKILL)
        doomed.wait(timeout=10)
        assert posted_taps(pg_engine) == (0, 0)  # the open transaction died with the process
        assert stored_answer(pg_engine, TERMINAL, batch.batch_seq) is None
        assert bus.pending_count() == 1  # the entry was read, never acknowledged

        heir = start("heir", "", 300)
        out, err = heir.communicate(timeout=90)
        assert heir.returncode == 0, err.decode()[-2000:]
        assert b"processed 1" in out
        answer = stored_answer(pg_engine, TERMINAL, batch.batch_seq)
        assert answer is not None and {v for v, _ in verdicts(answer)} == {"accepted"}
        assert posted_taps(pg_engine) == (10, 2000)
        assert bus.pending_count() == 0
    finally:
        keys = list(bus.client.scan_iter(match=f"{prefix}*"))
        if keys:
            bus.client.delete(*keys)
        bus.close()
