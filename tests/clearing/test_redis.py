"""Redis: the ingest stream and consumer group, claiming a dead worker's entries, the denylist mirror.

Every test works under its own random key prefix on the shared Redis (db 15) and deletes
only its own keys.
"""

from __future__ import annotations

import datetime as dt
import secrets
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session
from tapfactory import OWN_ISSUER, T0, Card, Terminal, body, make_keystore, register_world

from clearing import denylist
from clearing.api import ApiDeps, create_app
from clearing.ingest import TacKeys, content_hash, enqueue, keystore_dtk, stored_answer
from clearing.ledger import trial_balance
from clearing.models import BatchRow, Transfer
from clearing.redis_bus import RedisBus
from clearing.worker import Worker

pytestmark = pytest.mark.redis
NOW = T0 + dt.timedelta(days=1)
TERMINAL = "0000aa000001"


@pytest.fixture
def bus(redis_url: str) -> Iterator[RedisBus]:
    prefix = f"ykt-test-{secrets.token_hex(6)}"
    bus = RedisBus.from_url(redis_url, prefix=prefix)
    yield bus
    keys = list(bus.client.scan_iter(match=f"{prefix}:*", count=1000))
    if keys:
        bus.client.delete(*keys)
    bus.close()


@pytest.fixture
def world(db_engine: Engine, tmp_path: Path) -> tuple[Engine, Any, dict[str, str]]:
    keystore = make_keystore(tmp_path)
    with Session(db_engine) as session:
        tokens = register_world(session, [Card(n, balance_fen=5000) for n in range(4)], [TERMINAL], tokens=True)
    return db_engine, keystore, tokens


def make_worker(engine: Engine, bus: RedisBus, keystore: Any, name: str = "w1", claim_idle_ms: int = 60_000) -> Worker:
    keys = TacKeys(keystore_dtk(keystore), keystore.issuers())
    worker = Worker(engine, bus, keys, name, claim_idle_ms=claim_idle_ms)
    assert worker.ingestor is not None
    worker.ingestor.clock = lambda: NOW.astimezone(dt.UTC)  # type: ignore[attr-defined]
    return worker


class Background:
    """A worker looping in a thread until stopped."""

    def __init__(self, worker: Worker) -> None:
        self.stop = threading.Event()
        self.thread = threading.Thread(target=lambda: worker.run(self.stop.is_set), daemon=True)

    def __enter__(self) -> Background:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join(timeout=10)


def posted(engine: Engine) -> int:
    with Session(engine) as session:
        return int(
            session.execute(
                select(func.coalesce(func.sum(Transfer.amount_fen), 0)).where(Transfer.id.like("tap:%"))
            ).scalar_one()
        )


def test_api_enqueues_and_a_worker_answers_the_waiting_request(world: Any, bus: RedisBus) -> None:
    engine, keystore, tokens = world
    client = TestClient(create_app(ApiDeps(engine, keystore, bus=bus, queue_wait_s=10)))
    term = Terminal(TERMINAL)
    cards = [Card(n, balance_fen=5000) for n in range(4)]
    for card in cards:
        term.tap(card)
    batch = term.batch()
    headers = {"Authorization": f"Bearer {tokens[TERMINAL]}"}
    with Background(make_worker(engine, bus, keystore)):
        response = client.post(f"/v1/terminals/{TERMINAL}/batches", content=body(batch), headers=headers)
        assert response.status_code == 200, response.text
        assert [v["verdict"] for v in response.json()["verdicts"]] == ["accepted"] * 4
        again = client.post(f"/v1/terminals/{TERMINAL}/batches", content=body(batch), headers=headers)
    assert again.content == response.content
    assert posted(engine) == 800
    assert bus.pending_count() == 0


def test_no_worker_in_time_is_503_with_retry_after_then_the_answer(world: Any, bus: RedisBus) -> None:
    engine, keystore, tokens = world
    client = TestClient(create_app(ApiDeps(engine, keystore, bus=bus, queue_wait_s=0.2)))
    term = Terminal(TERMINAL)
    term.tap(Card(0, balance_fen=5000))
    data = body(term.batch())
    headers = {"Authorization": f"Bearer {tokens[TERMINAL]}"}
    first = client.post(f"/v1/terminals/{TERMINAL}/batches", content=data, headers=headers)
    assert first.status_code == 503 and first.headers["Retry-After"] == "2"
    assert first.json()["code"] == "I_QUEUED"
    worker = make_worker(engine, bus, keystore)
    assert worker.run_once(block_ms=100) >= 1
    second = client.post(f"/v1/terminals/{TERMINAL}/batches", content=data, headers=headers)
    assert second.status_code == 200
    assert posted(engine) == 200


def test_entries_of_a_dead_consumer_are_claimed_and_cleared_once(world: Any, bus: RedisBus) -> None:
    engine, keystore, _ = world
    term = Terminal(TERMINAL)
    term.tap(Card(1, balance_fen=5000))
    batch = term.batch()
    data = body(batch)
    enqueue(engine, TERMINAL, batch, content_hash(batch), data, NOW)
    bus.ensure_group()
    bus.enqueue(TERMINAL, batch.batch_seq)
    taken = bus.read("dead-worker", count=1, block_ms=100)  # read, never acknowledged: the worker "died"
    assert len(taken) == 1 and bus.pending_count() == 1
    survivor = make_worker(engine, bus, keystore, name="survivor", claim_idle_ms=50)
    threading.Event().wait(0.1)
    assert survivor.run_once(block_ms=50) == 1
    assert bus.pending_count() == 0
    assert stored_answer(engine, TERMINAL, batch.batch_seq) is not None
    # the same reference again (a terminal retry that enqueued twice): done already, nothing posted
    bus.enqueue(TERMINAL, batch.batch_seq)
    assert survivor.run_once(block_ms=100) == 1
    assert posted(engine) == 200
    with Session(engine) as session:
        trial_balance(session)
        assert session.execute(select(BatchRow.status, BatchRow.body)).one() == ("done", None)


def test_two_workers_share_the_stream(world: Any, bus: RedisBus) -> None:
    engine, keystore, _ = world
    terms = [Terminal(f"0000aa00000{i}") for i in (1,)]
    cards = [Card(n, balance_fen=5000) for n in range(4)]
    batches = []
    for _ in range(6):
        for card in cards:
            terms[0].tap(card, 10)
        batches.append(terms[0].batch())
    for batch in batches:
        enqueue(engine, TERMINAL, batch, content_hash(batch), body(batch), NOW)
        bus.ensure_group()
        bus.enqueue(TERMINAL, batch.batch_seq)
    a, b = make_worker(engine, bus, keystore, "a"), make_worker(engine, bus, keystore, "b")
    with Background(a), Background(b):
        for _ in range(100):
            if all(stored_answer(engine, TERMINAL, batch.batch_seq) for batch in batches):
                break
            threading.Event().wait(0.1)
    assert a.processed + b.processed == 6
    assert posted(engine) == 6 * 4 * 10


def test_denylist_version_and_set_are_mirrored_for_terminals(world: Any, bus: RedisBus) -> None:
    engine, keystore, tokens = world
    card = Card(2)
    with Session(engine) as session, session.begin():
        version = denylist.add(session, OWN_ISSUER, card.asn, "lost")
    with Session(engine) as session:
        denylist.publish(session, bus)
    assert bus.denylist_version() == version and bus.denylisted(OWN_ISSUER, card.asn)
    client = TestClient(create_app(ApiDeps(engine, keystore, bus=bus)))
    headers = {"Authorization": f"Bearer {tokens[TERMINAL]}"}
    full = client.get(f"/v1/terminals/{TERMINAL}/denylist", params={"since": 0}, headers=headers).json()
    assert full["full"] and full["version"] == version
    current = client.get(f"/v1/terminals/{TERMINAL}/denylist", params={"since": version}, headers=headers).json()
    assert current == {"version": version, "full": False, "added": [], "removed": []}


def test_redis_is_isolated_by_prefix(bus: RedisBus, redis_url: str) -> None:
    other = RedisBus(redis.Redis.from_url(redis_url), prefix=bus.prefix + "-other")
    bus.ensure_group()
    other.ensure_group()
    bus.enqueue(TERMINAL, 1)
    assert other.read("x", block_ms=50) == []
    other.client.delete(other.stream)
    other.close()


def _queue(engine: Engine, bus: RedisBus, batch: Any) -> bytes:
    data = body(batch)
    enqueue(engine, TERMINAL, batch, content_hash(batch), data, NOW.astimezone(dt.UTC))
    bus.enqueue(TERMINAL, batch.batch_seq)
    return data


def test_a_batch_that_cannot_be_judged_is_answered_by_the_worker_not_retried_forever(
    world: tuple[Engine, Any, dict[str, str]], bus: RedisBus, monkeypatch: pytest.MonkeyPatch
) -> None:
    from clearing.models import ExceptionItem

    engine, keystore, _ = world
    term = Terminal(TERMINAL)
    batch = term.batch([term.tap(Card(0, balance_fen=5000))])
    _queue(engine, bus, batch)

    def broken(*_: object, **__: object) -> None:
        raise ZeroDivisionError("a bug in the judge")

    monkeypatch.setattr("clearing.ingest.judge", broken)
    worker = make_worker(engine, bus, keystore)
    assert worker.run_once(block_ms=100) == 1
    answer = stored_answer(engine, TERMINAL, batch.batch_seq)
    assert answer is not None and b"E_UNJUDGEABLE" in answer
    assert bus.pending_count() == 0  # acknowledged: the terminal gets this answer and moves on
    with Session(engine) as session:
        item = session.execute(select(ExceptionItem)).scalar_one()
        assert (item.kind, item.code) == ("batch", "E_UNJUDGEABLE")


def test_an_entry_that_keeps_killing_workers_goes_to_the_dead_letter_stream(
    world: tuple[Engine, Any, dict[str, str]], bus: RedisBus
) -> None:
    """Each delivery 'crashes' (read, never acknowledged); after the limit the entry is set aside."""
    from clearing.models import ExceptionItem

    engine, keystore, _ = world
    term = Terminal(TERMINAL)
    batch = term.batch([term.tap(Card(1, balance_fen=5000))])
    _queue(engine, bus, batch)
    bus.ensure_group()
    assert len(bus.read("doomed-0", block_ms=100)) == 1  # a worker took it and died
    worker = make_worker(engine, bus, keystore, claim_idle_ms=0)
    worker.deliveries_max = 3
    for n in range(1, 3):  # two more deaths: claimed, never finished
        claimed = bus.claim_stale(f"doomed-{n}", idle_ms=0)
        assert [e.deliveries for e in claimed] == [n + 1]
    assert worker.run_once(block_ms=100) == 1  # the fourth hand-out: set aside
    assert bus.pending_count() == 0
    dead = bus.client.xrange(bus.dead_letters)
    assert len(dead) == 1 and dead[0][1][b"batch_seq"] == str(batch.batch_seq).encode()
    answer = stored_answer(engine, TERMINAL, batch.batch_seq)
    assert answer is not None and b"E_UNJUDGEABLE" in answer
    assert posted(engine) == 0
    with Session(engine) as session:
        assert session.execute(select(ExceptionItem.code)).scalar_one() == "E_UNJUDGEABLE"
        trial_balance(session)
