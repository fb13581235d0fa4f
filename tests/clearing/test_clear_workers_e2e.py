"""End to end: the real ``yikatong clear --workers 2`` (a subprocess) clears what the API queues.

The API runs in-process (TestClient) with Redis configured; the workers are the CLI command,
configured only through the environment (database URL pointing at this session's private
PostgreSQL schema, Redis db 15, a random key prefix). Uploads answer ``503 I_QUEUED`` with
``Retry-After`` until a worker has cleared them, then the stored answer. Every record must
post exactly once, the ledger must balance, and SIGTERM must stop the workers cleanly.
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
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

pytestmark = [pytest.mark.redis, pytest.mark.postgres]

TERMINALS = ("0000aa000001", "0000aa000002")
CARDS = 6
BATCHES_PER_TERMINAL = 3
AMOUNT_FEN = 200
OPENING_FEN = 5000
DEADLINE_S = 90.0
STOP_WITHIN_S = 10.0


def _cli() -> list[str]:
    script = Path(sys.executable).with_name("yikatong")
    found = str(script) if script.exists() else shutil.which("yikatong")
    return [found] if found else [sys.executable, "-c", "from yikatong.cli import app; app()"]


def _schema_url(url: str, schema: str) -> str:
    """The test URL with ``search_path`` set through libpq options (what the CLI gets)."""
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}options={quote(f'-csearch_path={schema}', safe='')}"


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


def _stop(proc: subprocess.Popen[bytes]) -> tuple[int | None, bytes, bytes]:
    """SIGTERM the command (it forwards it to its workers); its status if it ends in time."""
    proc.send_signal(signal.SIGTERM)
    try:
        out, err = proc.communicate(timeout=STOP_WITHIN_S)
    except subprocess.TimeoutExpired:
        return None, b"", b""
    return proc.returncode, out, err


def _group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def test_clear_workers_post_every_queued_record_once_and_stop_on_sigterm(
    pg_schema: tuple[str, str], pg_engine: Engine, redis_url: str, tmp_path: Path
) -> None:
    url, schema = pg_schema
    prefix = f"ykt-e2e-{secrets.token_hex(6)}"
    kek = os.urandom(32)
    keystore = make_keystore(tmp_path, kek)
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

    bus = RedisBus.from_url(redis_url, prefix=prefix)
    client = TestClient(create_app(ApiDeps(pg_engine, keystore, bus=bus, queue_wait_s=0.3)))
    env = {
        **os.environ,
        "YIKATONG_DATABASE_URL": _schema_url(url, schema),
        "YIKATONG_REDIS_URL": redis_url,
        "YIKATONG_REDIS_PREFIX": prefix,
        "YIKATONG_KEYSTORE": str(keystore.path),  # type: ignore[attr-defined]
        "YIKATONG_KEK": kek.hex(),
    }
    proc: subprocess.Popen[bytes] | None = None
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

        proc = subprocess.Popen(
            [*_cli(), "clear", "--workers", "2"],
            cwd=tmp_path,  # no stray .env from the working tree
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # its own process group: checked empty at the end
        )
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

        pgid = proc.pid
        status, out, err = _stop(proc)
        assert status == 0, f"exit {status}\n{out.decode()[-2000:]}\n{err.decode()[-4000:]}"
        assert b"clearing with 2 worker(s)" in out
        for _ in range(50):  # the workers were waited for by their parent; nothing is left behind
            if _group_gone(pgid):
                break
            time.sleep(0.1)
        assert _group_gone(pgid)
    finally:
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        client.close()
        keys = list(bus.client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            bus.client.delete(*keys)
        assert not list(bus.client.scan_iter(match=f"{prefix}:*", count=1000))
        bus.close()
