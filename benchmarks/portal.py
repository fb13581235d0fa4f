"""Portal latency under many sessions: the balance page and the history API against bare FastAPI.

What runs (``python -m benchmarks portal [--quick]``):

1. a throwaway PostgreSQL schema at Alembic head with a day of cleared taps (the clearing
   benchmark's generator and ingest: valid TACs, one transaction per batch), so every card
   has a history in the ledger;
2. ``SESSIONS`` citizens, each registered, logged in (its own session cookie) and bound to
   one of those cards;
3. the whole application (``yikatong.app.create_app``, portal on) under uvicorn in its own
   process, one worker, access log off; ``wrk`` on loopback with ``SESSIONS`` connections,
   each request the next citizen's cookie and card: the balance page
   (``GET /cards/{issuer}/{asn}``, HTML) and the history API
   (``GET /api/cards/{issuer}/{asn}/history``), ``DURATION_S`` each;
4. the baseline, same run and same server settings: a bare FastAPI app whose one endpoint
   answers a fixed JSON body of the history API's size, no database.

Two loads, each on both servers:

* **saturation**: every connection sends its next request as soon as it is answered. This
  gives the throughput and its ratio to the baseline. With 200 connections always waiting,
  Little's law makes latency 200 / throughput, so it is not the latency a citizen sees;
* **sessions as people use them**: each of the 200 sessions waits an exponential think time
  (``THINK_MS`` mean) before its next click (wrk's ``delay()``). This gives the p50 and p99
  a citizen sees while 200 others use the portal.

Figures: p50, p99, requests/s of each, and the throughput ratio against the baseline.
Goals (issue 10): p99 ≤ 50 ms at 200 concurrent sessions, throughput ≥ 0.5 × the baseline.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from benchmarks.clearing import OWN, PG_URL, generate, register

SESSIONS = 200
DURATION_S = 20
QUICK_DURATION_S = 5
RECORDS = 20_000  # 4,000 cards with 5 taps each
QUICK_RECORDS = 3_000
WRK_THREADS = 2
P99_GOAL_MS = 50.0
RATIO_GOAL = 0.5
START_TIMEOUT_S = 30.0

BASELINE_APP = """
from fastapi import FastAPI
from fastapi.responses import Response

app = FastAPI()
BODY = bytes.fromhex("{body_hex}")


@app.get("/bare")
def bare() -> Response:
    return Response(BODY, media_type="application/json")
"""

WRK_SCRIPT = """
local targets = {{
{rows}
}}
local think_ms = {think_ms}
local n = 0
math.randomseed(os.time())
request = function()
  n = n + 1
  local t = targets[(n % #targets) + 1]
  return wrk.format("GET", t[2], {{ ["Cookie"] = t[1] }})
end
if think_ms > 0 then
  -- a person reads the page before the next click: exponential think time per connection
  delay = function()
    return math.floor(-math.log(1 - math.random()) * think_ms)
  end
end
"""
THINK_MS = 5_000  # a citizen on the portal clicks every 5 s on average (an active one)


@dataclass(frozen=True)
class Figures:
    p50_ms: float
    p99_ms: float
    rps: float
    non_2xx: int
    errors: int


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def uvicorn_process(target: str, env: dict[str, str], cwd: Path, *, factory: bool) -> Iterator[str]:
    """``target`` under uvicorn in a child process (one worker, no access log); its base URL."""
    port = _free_port()
    cmd = [sys.executable, "-m", "uvicorn", target, "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--no-access-log", "--log-level", "warning", "--backlog", "2048"]
    if factory:
        cmd.append("--factory")
    log = (cwd / f"uvicorn-{port}.log").open("wb")
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"uvicorn {target} exited: {(cwd / f'uvicorn-{port}.log').read_text()[-2000:]}")
            with contextlib.suppress(httpx.TransportError):
                httpx.get(f"{url}/openapi.json", timeout=1)
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"uvicorn {target} did not start")
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


_LATENCY = re.compile(r"^\s+(50|99)(?:\.000)?%\s+([\d.]+)(us|ms|s)\s*$", re.MULTILINE)
_RPS = re.compile(r"^Requests/sec:\s+([\d.]+)", re.MULTILINE)
_NON2XX = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")
_ERRORS = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def wrk(url: str, targets: list[tuple[str, str]], duration_s: int, workdir: Path, *, think_ms: int = 0) -> Figures:
    """``wrk`` with ``SESSIONS`` connections, each request the next (cookie, path) of ``targets``.

    ``think_ms`` 0: every connection sends its next request as soon as the answer is in
    (saturation: the throughput figure). Otherwise each connection waits an exponential
    think time of that mean first (sessions as people use them: the latency figure).
    """
    rows = ",\n".join(f'  {{"{cookie}", "{path}"}}' for cookie, path in targets)
    script = workdir / f"wrk-{secrets.token_hex(4)}.lua"
    script.write_text(WRK_SCRIPT.format(rows=rows, think_ms=think_ms))
    cmd = ["wrk", "-t", str(WRK_THREADS), "-c", str(SESSIONS), "-d", f"{duration_s}s", "--latency", "-s", str(script)]
    out = subprocess.run([*cmd, url], capture_output=True, text=True, check=True).stdout
    time.sleep(2)  # let the server finish what the last run left queued before the next one
    latencies = {m.group(1): _ms(m.group(2), m.group(3)) for m in _LATENCY.finditer(out)}
    rps = _RPS.search(out)
    non2xx = _NON2XX.search(out)
    errors = _ERRORS.search(out)
    if rps is None or "50" not in latencies or "99" not in latencies:
        raise RuntimeError(f"wrk printed no figures:\n{out}")
    return Figures(
        p50_ms=latencies["50"],
        p99_ms=latencies["99"],
        rps=float(rps.group(1)),
        non_2xx=int(non2xx.group(1)) if non2xx else 0,
        errors=sum(int(g) for g in errors.groups()) if errors else 0,
    )


def seed(url: str, schema: str, workdir: Path, kek: bytes, records: int) -> list[tuple[str, str]]:
    """A day of cleared taps and ``SESSIONS`` logged-in citizens, each bound to a card: (cookie, asn)."""
    from argon2 import PasswordHasher

    from clearing import db
    from clearing.ingest import TacKeys, decode_upload, keystore_dtk, make_ingestor, prepare
    from clearing.keystore import KeyStore
    from portal.accounts import AccountService
    from portal.identity import check_char
    from portal.models import PortalCardBinding, PortalCitizen
    from portal.passwords import Passwords

    keystore = KeyStore.open(workdir / "keystore.json", kek)
    keystore.init([OWN])
    day = generate(records, keystore, workdir)
    db.upgrade(url, schema=schema)
    engine = db.make_engine(url, schema=schema)
    register(engine, day)
    ingestor = make_ingestor(engine)
    keys = TacKeys(keystore_dtk(keystore), [OWN])
    data = day.path.read_bytes()
    for terminal_id, offset, length in day.batches:
        ingestor.ingest(prepare(terminal_id, decode_upload(data[offset : offset + length]), keys))
    from sqlalchemy import select

    cheap = Passwords(PasswordHasher(time_cost=1, memory_cost=8, parallelism=1))  # seeding, not timed
    accounts = AccountService(sessions=db.session_factory(engine), lookup_key=bytes(32), passwords=cheap)
    out: list[tuple[str, str]] = []
    for i in range(SESSIONS):
        mobile = f"139{i:08d}"
        first17 = f"61040219900101{i:03d}"
        accounts.register(mobile, "bench password", "王五", first17 + check_char(first17), client_ip=f"10.0.{i}.1")
        login = accounts.login(mobile, "bench password", client_ip=f"10.1.{i}.1", previous_token=None)
        asn = day.cards[i][0]
        with db.session_factory(engine)() as session, session.begin():
            citizen_id = session.scalar(select(PortalCitizen.id).where(PortalCitizen.mobile == mobile))
            session.add(PortalCardBinding(citizen_id=citizen_id, issuer_id=OWN, card_asn=asn, how="transaction"))
        out.append((f"yk_session={login.token}", asn))
    with engine.begin() as conn:
        from sqlalchemy import text

        conn.execute(text("ANALYZE"))
    engine.dispose()
    return out


def _check_answers(url: str, cookie: str, path: str) -> int:
    answer = httpx.get(url + path, headers={"Cookie": cookie}, timeout=10)
    if answer.status_code != 200:
        raise RuntimeError(f"GET {path} answered {answer.status_code}: {answer.text[:300]}")
    return len(answer.content)


def report(name: str, figures: Figures, baseline: Figures, *, ratio_goal: bool = True) -> None:
    ratio = figures.rps / baseline.rps
    p99_ok = "meets" if figures.p99_ms <= P99_GOAL_MS else "MISSES"
    ratio_ok = ("meets" if ratio >= RATIO_GOAL else "MISSES") + f" ≥ {RATIO_GOAL}" if ratio_goal else "offered load"
    print(
        f"{name}: p50 {figures.p50_ms:.1f} ms, p99 {figures.p99_ms:.1f} ms ({p99_ok} ≤ {P99_GOAL_MS:.0f} ms), "
        f"{figures.rps:,.0f} req/s, ratio {ratio:.2f} of baseline ({ratio_ok}); "
        f"non-2xx {figures.non_2xx}, socket errors {figures.errors}"
    )


def main(quick: bool = False) -> None:
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (Debian package wrk; scripts/install-system-deps)")
    try:
        import psycopg

        psycopg.connect(PG_URL, connect_timeout=3).close()
    except Exception as exc:
        raise SystemExit(f"PostgreSQL not reachable at {PG_URL}: {exc}") from exc
    from clearing import db

    duration_s = QUICK_DURATION_S if quick else DURATION_S
    think_s = 3 * duration_s  # long enough for every session to click a few times
    with tempfile.TemporaryDirectory(prefix="yikatong-bench-portal-") as tmp:
        workdir = Path(tmp)
        kek = os.urandom(32)
        schema = db.random_schema_name("bench_portal_")
        db.create_schema(PG_URL, schema)
        try:
            started = time.perf_counter()
            records = QUICK_RECORDS if quick else RECORDS
            sessions = seed(PG_URL, schema, workdir, kek, records)
            print(f"seeded {records:,} cleared taps and {SESSIONS} citizens in {time.perf_counter() - started:.0f} s")
            env = {k: v for k, v in os.environ.items() if not k.startswith("YIKATONG_")}
            env.update(
                YIKATONG_DATABASE_URL=f"{PG_URL}?options=-csearch_path%3D{schema}",
                YIKATONG_KEYSTORE=str(workdir / "keystore.json"),
                YIKATONG_KEK=kek.hex(),
                YIKATONG_PORTAL_ENABLED="true",
                YIKATONG_PORTAL_DEV="true",
                YIKATONG_PORTAL_LOOKUP_KEY="00" * 32,
                PYTHONPATH=str(Path(__file__).resolve().parent.parent),
            )
            balance = [(cookie, f"/cards/{OWN}/{asn}") for cookie, asn in sessions]
            history = [(cookie, f"/api/cards/{OWN}/{asn}/history") for cookie, asn in sessions]
            with uvicorn_process("yikatong.app:app_from_environment", env, workdir, factory=True) as url:
                size = _check_answers(url, *history[0])
                _check_answers(url, *balance[0])
                page = wrk(url, balance, duration_s, workdir)
                api = wrk(url, history, duration_s, workdir)
                page_used = wrk(url, balance, think_s, workdir, think_ms=THINK_MS)
                api_used = wrk(url, history, think_s, workdir, think_ms=THINK_MS)
            (workdir / "bare_app.py").write_text(BASELINE_APP.format(body_hex=(b"x" * size).hex()))
            bare_env = dict(env, PYTHONPATH=f"{workdir}{os.pathsep}{env['PYTHONPATH']}")
            with uvicorn_process("bare_app:app", bare_env, workdir, factory=False) as url:
                base = wrk(url, [("none=1", "/bare")] * SESSIONS, duration_s, workdir)
                base_used = wrk(url, [("none=1", "/bare")] * SESSIONS, think_s, workdir, think_ms=THINK_MS)
        finally:
            db.drop_schema(PG_URL, schema)
    print(f"{SESSIONS} sessions, wrk {WRK_THREADS} threads, 1 uvicorn worker, PostgreSQL")
    print(f"saturation ({duration_s} s each, every session sends as soon as it is answered):")
    print(
        f"  baseline (bare FastAPI, {size} B JSON): p50 {base.p50_ms:.1f} ms, p99 {base.p99_ms:.1f} ms, "
        f"{base.rps:,.0f} req/s"
    )
    report("  balance page (HTML)", page, base)
    report("  history API (JSON)", api, base)
    print(f"sessions as people use them ({think_s} s each, think time {THINK_MS / 1000:.0f} s mean, exponential):")
    print(f"  baseline: p50 {base_used.p50_ms:.1f} ms, p99 {base_used.p99_ms:.1f} ms, {base_used.rps:,.0f} req/s")
    report("  balance page (HTML)", page_used, base_used, ratio_goal=False)
    report("  history API (JSON)", api_used, base_used, ratio_goal=False)


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
