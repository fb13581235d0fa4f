"""Cross-city clearing with Xi'an (issue 12): end-to-end seconds, and issuer validation against local clearing.

What runs (``python -m benchmarks interop [--quick]``):

1. not timed: two PostgreSQL schemas at Alembic head, two cities as the two-instance tests make
   them (``tests/interop/wire_instances.py``: key stores, signing keys exchanged, a test CA and
   TLS certificates for 127.0.0.1); Xi'an's cards COPY-loaded into Xi'an (liability accounts,
   opening balances posted); Xianyang's buses COPY-loaded; a day of taps of those Xi'an cards on
   Xianyang buses with real TACs from Xi'an's keys (consecutive counters, falling balances);
   the day ingested by Xianyang's own clearing (``make_ingestor``), which forwards every record
   (``interop_forwards``); then both cities started as uvicorn processes over HTTPS;
2. timed, end to end: the acquirer's exchange rounds (``InteropNode.exchange``, as ``yikatong
   interop exchange`` runs them, in this process on Xianyang's database and keys) collect the
   forwards into the outbox, build and sign sequence-numbered batches, POST them to Xi'an's
   ``/interop/v1/batches`` over HTTPS on loopback, where Xi'an's issuer validation
   (``interop_xian.issuer``) judges every record and answers a signed acknowledgement; the
   verdicts are applied at Xianyang; then both sides' net positions are read and must be equal
   and opposite. The day's window is not closed with the peer in the timed rounds
   (``WINDOW_CLOSE_DELAY_S``): closing is once a day, not per record;
3. timed baseline, same run, same machine: local clearing ingest (``benchmarks.clearing``'s
   path: spawned workers, every check on) on its own day, with one worker (one stream, as one
   peer's batches are judged one at a time) and with ``YIKATONG_BENCH_WORKERS`` (2).

The issuer-side validation rate is the items over the summed round trips of the batch POSTs
(signature check, decode, judge, commit, signed acknowledgement). Sizes:
``YIKATONG_BENCH_INTEROP_RECORDS`` (default 1,000,000; ``--quick`` 3,000),
``YIKATONG_BENCH_INTEROP_BASELINE`` (records of the local baseline, default 50,000; quick 10,000),
``YIKATONG_BENCH_INTEROP_BATCH`` (items per batch, default 1,000 as the config's).
``YIKATONG_BENCH_INTEROP_PROFILE=<file>`` also profiles (cProfile) the issuer's receive path in
this process on a fresh copy of Xi'an for the first batches, and writes the stats there;
``YIKATONG_BENCH_INTEROP_PROFILE_ACQUIRER=<file>`` profiles the acquirer's timed exchange rounds
(in this process; the figures of that run are then the profiler's, not the benchmark's).
"""

from __future__ import annotations

import datetime as dt
import os
import random
import ssl
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

FULL_RECORDS = 1_000_000
QUICK_RECORDS = 3_000
N_RECORDS_ENV = "YIKATONG_BENCH_INTEROP_RECORDS"
BASELINE_ENV = "YIKATONG_BENCH_INTEROP_BASELINE"
BATCH_ENV = "YIKATONG_BENCH_INTEROP_BATCH"
PROFILE_ENV = "YIKATONG_BENCH_INTEROP_PROFILE"
PROFILE_ACQUIRER_ENV = "YIKATONG_BENCH_INTEROP_PROFILE_ACQUIRER"
TAPS_PER_CARD = 5
RECORDS_PER_TERMINAL = 1_000
UPLOAD_RECORDS = 1_000  # records per terminal upload at Xianyang (setup)
GOAL_S = 60.0
GOAL_RATIO = 0.8
PROFILE_BATCHES = 20
# Yesterday's window becomes due this long after the day ends: past the run, so the timed rounds
# move records only (BENCHMARKS.md, "Interop": closing 20,000 items' window took 69 to 128 s).
WINDOW_CLOSE_DELAY_S = 7 * 24 * 3600.0
SHANGHAI = dt.timezone(dt.timedelta(hours=8))
DAY = dt.datetime.now(SHANGHAI).date() - dt.timedelta(days=1)  # yesterday: no tap in the future
PG_URL = os.environ.get("YIKATONG_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")


@dataclass(frozen=True)
class Day:
    """Xianyang's uploads of Xi'an cards' taps (terminal, body), and the cards (asn, balance, first counter)."""

    uploads: list[tuple[str, bytes]]
    records: int
    amount_fen: int
    cards: list[tuple[str, int, int]]
    terminals: list[str]


def _asn(n: int) -> str:
    return f"3101{n:016d}"


def _terminal(n: int) -> str:
    return f"{0x30000000 + n:012x}"


def generate(n_records: int, xian_keystore: Any, xian_issuer: str, seed: int = 12) -> Day:
    """Xi'an cards tapping Xianyang buses over a day, with the TACs the cards compute (not timed)."""
    from cardos import crypto
    from clearing.contract import Batch, FareInfo, TapRecord

    rng = random.Random(seed)
    n_cards = max(2, n_records // TAPS_PER_CARD)
    n_terminals = max(2, n_records // RECORDS_PER_TERMINAL)
    terminals = [_terminal(i) for i in range(n_terminals)]
    cards = [(_asn(i), 20_000 + rng.randrange(30_000), rng.randrange(0, 3_000)) for i in range(n_cards)]
    start_s, end_s = 6 * 3600, 22 * 3600
    per_card: list[list[int]] = [[] for _ in range(n_cards)]
    for _ in range(n_records):
        per_card[rng.randrange(n_cards)].append(rng.randrange(start_s, end_s))
    taps: list[tuple[int, int, int, int, int, int]] = []  # (time_s, terminal, card, counter, before, amount)
    for index, times in enumerate(per_card):
        times.sort()
        _, balance, counter = cards[index]
        for t in times:
            amount = rng.choice((100, 150, 200, 200, 200, 300))
            taps.append((t, rng.randrange(n_terminals), index, counter, balance, amount))
            counter += 1
            balance -= amount
    taps.sort()
    midnight = dt.datetime.combine(DAY, dt.time(), SHANGHAI)
    date4 = bytes.fromhex(DAY.strftime("%Y%m%d"))
    terminal_bytes = [bytes.fromhex(t) for t in terminals]
    fare = FareInfo("bus-flat", "adult", None, 200, 0, None)
    keys: dict[str, Any] = {}
    seq = [0] * n_terminals
    per_terminal: list[list[TapRecord]] = [[] for _ in range(n_terminals)]
    total_fen = 0
    for t, term, card, counter, before, amount in taps:
        seq[term] += 1
        asn = cards[card][0]
        key = keys.get(asn)
        if key is None:
            key = keys[asn] = crypto.tac_mac_key(xian_keystore.dtk(xian_issuer, asn, 1))
        time3 = bytes.fromhex(f"{t // 3600:02d}{t // 60 % 60:02d}{t % 60:02d}")
        tac = key.mac(crypto.purchase_tac_data(amount, 9, terminal_bytes[term], seq[term], date4, time3)).hex()
        tx_time = (midnight + dt.timedelta(seconds=t)).isoformat()
        per_terminal[term].append(
            TapRecord(
                terminals[term], seq[term], "0102030405060708", xian_issuer, asn, "ordinary", 9, amount, before,
                counter, tx_time, 1, 0, tac, "R" + str(term % 120), "S" + str(t % 40), "V" + str(term), fare,
                "normal",
            )
        )  # fmt: skip
        total_fen += amount
    encoder = msgspec.json.Encoder()
    created = (midnight + dt.timedelta(hours=23)).isoformat()
    uploads: list[tuple[str, bytes]] = []
    for term, records in enumerate(per_terminal):
        for n, start in enumerate(range(0, len(records), UPLOAD_RECORDS)):
            uploads.append(
                (terminals[term], encoder.encode(Batch(n + 1, created, records[start : start + UPLOAD_RECORDS])))
            )
    return Day(uploads, len(taps), total_fen, cards, terminals)


# --- the two databases (not timed) --------------------------------------------------------------

# The tables of the connection's own schema only: a bare ANALYZE takes every schema of the shared
# database and waits behind any other run's lock (a test's DROP SCHEMA behind an open transaction).
ANALYZE_OWN_SCHEMA = """
DO $$ DECLARE t text; BEGIN
  FOR t IN SELECT quote_ident(schemaname) || '.' || quote_ident(tablename) FROM pg_tables
           WHERE schemaname = current_schema() LOOP
    EXECUTE 'ANALYZE ' || t;
  END LOOP;
END $$
"""


def load_xian_cards(engine: Any, day: Day, issuer: str) -> None:
    """Xi'an's cards, their liability accounts and opening balances, by COPY (as ``benchmarks.clearing``)."""
    from sqlalchemy.orm import Session

    from clearing import accounts
    from clearing.models import AccountCode, AccountFlag, TransferCode

    with Session(engine) as session:
        float_account = accounts.issuer_float(session, issuer)
        session.commit()
    now = dt.datetime.now(dt.UTC)
    raw = engine.raw_connection()
    try:
        conn = raw.driver_connection
        with conn.cursor() as cur:
            ids = [
                int(r[0])
                for r in cur.execute(
                    "SELECT nextval(pg_get_serial_sequence('accounts', 'id')) FROM generate_series(1, %s)",
                    (len(day.cards),),
                ).fetchall()
            ]
            flags = int(AccountFlag.DEBITS_MUST_NOT_EXCEED_CREDITS)
            with cur.copy(
                "COPY accounts (id, ledger, code, owner_ref, flags, debits_pending, debits_posted, credits_pending,"
                " credits_posted, created_at) FROM STDIN"
            ) as copy:
                for account_id, (asn, balance, _) in zip(ids, day.cards, strict=True):
                    copy.write_row((account_id, 156, int(AccountCode.CARD_LIABILITY), f"card:{issuer}:{asn}", flags,
                                    0, 0, 0, balance, now))  # fmt: skip
            with cur.copy(
                "COPY cards (issuer_id, card_asn, card_type, status, issued_at, start_date, expiry_date, key_version,"
                " alg_id, account_id, shadow_balance_fen, last_offline_counter) FROM STDIN"
            ) as copy:
                for account_id, (asn, balance, counter) in zip(ids, day.cards, strict=True):
                    copy.write_row((issuer, asn, "ordinary", "active", now, dt.date(2026, 1, 1), dt.date(2036, 1, 1),
                                    1, 0, account_id, balance, counter - 1 if counter else None))  # fmt: skip
            with cur.copy(
                "COPY transfers (id, debit_account_id, credit_account_id, amount_fen, ledger, code, state, created_at)"
                " FROM STDIN"
            ) as copy:
                for account_id, (asn, balance, _) in zip(ids, day.cards, strict=True):
                    copy.write_row((f"issue:{asn}", float_account, account_id, balance, 156,
                                    int(TransferCode.CARD_SALE), "posted", now))  # fmt: skip
            cur.execute("UPDATE accounts SET debits_posted = %s WHERE id = %s",
                        (sum(c[1] for c in day.cards), float_account))  # fmt: skip
            cur.execute(ANALYZE_OWN_SCHEMA)
        conn.commit()
    finally:
        raw.close()


def load_xianyang_buses(engine: Any, day: Day) -> None:
    """Xianyang's bus operators and terminals, by COPY."""
    from sqlalchemy.orm import Session

    from clearing import registry

    with Session(engine) as session:
        operators = [registry.ensure_operator(session, f"bus-{i}") for i in range(10)]
        session.commit()
        payables = [(o.operator_id, o.payable_account_id) for o in operators]
    now = dt.datetime.now(dt.UTC)
    raw = engine.raw_connection()
    try:
        conn = raw.driver_connection
        with (
            conn.cursor() as cur,
            cur.copy(
                "COPY terminals (terminal_id, operator_id, payable_account_id, route, token_hash, active, created_at)"
                " FROM STDIN"
            ) as copy,
        ):
            for i, terminal_id in enumerate(day.terminals):
                operator_id, payable = payables[i % len(payables)]
                copy.write_row((terminal_id, operator_id, payable, f"R{i % 120}", "bench", True, now))
        conn.commit()
    finally:
        raw.close()


def forward_day(engine: Any, day: Day, keystore: Any, own_issuer: str) -> int:
    """Xianyang's clearing ingests the day (not timed): every Xi'an record becomes a forward."""
    from sqlalchemy import text

    from clearing.ingest import TacKeys, decode_upload, keystore_dtk, make_ingestor, prepare

    ingestor = make_ingestor(engine)
    keys = TacKeys(keystore_dtk(keystore), [own_issuer])
    for terminal_id, body in day.uploads:
        ingestor.ingest(prepare(terminal_id, decode_upload(body), keys))
    with engine.begin() as conn:
        conn.execute(text(ANALYZE_OWN_SCHEMA))
        return int(conn.execute(text("SELECT count(*) FROM interop_forwards")).scalar_one())


# --- the timed run ----------------------------------------------------------------------------


class TimedTransport:
    """An ``httpx`` transport that sums the round trips of the requests it carries (POSTs only)."""

    def __init__(self, ca_file: Path) -> None:
        import httpx

        self.inner = httpx.HTTPTransport(verify=ssl.create_default_context(cafile=str(ca_file)), retries=1)
        self.post_s = 0.0
        self.posts = 0

    def handle_request(self, request: Any) -> Any:
        started = time.perf_counter()
        response = self.inner.handle_request(request)
        response.read()
        if request.method == "POST":
            self.post_s += time.perf_counter() - started
            self.posts += 1
        return response

    def close(self) -> None:
        self.inner.close()


def exchange_all(node: Any, peer_city: str, engine: Any) -> dict[str, Any]:
    """Rounds until every outbox item is final; phase times (build, then deliver + judge + apply)."""
    from sqlalchemy.orm import Session

    from interop_xian import outbox

    started = time.perf_counter()
    built = node.exchange(deliver=False)  # collect and build (sign happens at each POST)
    build_s = time.perf_counter() - started
    rounds, failed = 0, {}
    while True:
        rounds += 1
        report = node.exchange()
        failed.update(report.failed)
        with Session(engine) as session:
            states = outbox.counts(session, peer_city)
        if set(states) <= {"accepted", "rejected"} or rounds >= 20:
            break
        time.sleep(0.5 if report.failed else 0)
    return {"build_s": build_s, "batches": len(built.built), "rounds": rounds, "states": states, "failed": failed,
            "exchange_s": time.perf_counter() - started}  # fmt: skip


def net_positions(xianyang: Any, xian: Any) -> tuple[int, int]:
    """Each side's net debit towards the other over every window of the journal.

    Not ``netting.open_net_debit``: a window closed with the peer (``window_exchange``, once it is
    due) leaves the open exposure, and the check is about the items, whichever window holds them.
    """
    from sqlalchemy import func, select
    from sqlalchemy.orm import Session

    from interop_xian import netting
    from interop_xian.models import Booking

    def net(session: Session, peer: str) -> int:
        rows = session.execute(
            select(Booking.direction, func.sum(Booking.amount_fen)).where(Booking.peer_city == peer)
            .group_by(Booking.direction)
        ).all()  # fmt: skip
        return netting.net_of((str(d), int(fen)) for d, fen in rows)

    with Session(xianyang) as a, Session(xian) as b:
        return net(a, "xian"), net(b, "xianyang")


class PhaseTimer:
    """Seconds spent in module functions the exchange round calls (wrapped for the timed part only)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._undo: list[tuple[Any, str, Any]] = []

    def wrap(self, module: Any, name: str) -> None:
        original = getattr(module, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started

        setattr(module, name, timed)
        self._undo.append((module, name, original))

    def restore(self) -> None:
        for module, name, original in reversed(self._undo):
            setattr(module, name, original)
        self._undo.clear()


def local_clearing(n_records: int, workers: int, workdir: Path) -> float:
    """``benchmarks.clearing``'s PostgreSQL ingest on its own day: records/s (timed part only)."""
    from benchmarks import clearing as local
    from clearing import db
    from clearing.keystore import KeyStore

    kek = os.urandom(32)
    keystore_path = workdir / f"local-{workers}.json"
    keystore = KeyStore.open(keystore_path, kek)
    keystore.init([local.OWN])
    sub = workdir / f"local-{workers}"
    sub.mkdir()
    day = local.generate(n_records, keystore, sub)
    schema = db.random_schema_name("bench_")
    db.create_schema(PG_URL, schema)
    try:
        db.upgrade(PG_URL, schema=schema)
        engine = db.make_engine(PG_URL, schema=schema)
        local.register(engine, day)
        result = local.ingest_pg(PG_URL, schema, keystore_path, kek, day, workers)
        problems = local.check(engine, day, result["verdicts"])
        engine.dispose()
    finally:
        db.drop_schema(PG_URL, schema)
    if problems:
        raise SystemExit("local clearing checks failed: " + "; ".join(problems))
    return float(day.records / result["elapsed_s"])


def profile_issuer(out: str, xianyang_engine: Any, cities: dict[str, Any], day: Day, xian_issuer: str) -> None:
    """cProfile of Xi'an's receive path in this process, on a fresh Xi'an, for the first batches."""
    import cProfile
    import pstats

    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from clearing import db, registry
    from clearing.business_day import DEFAULT_CLOCK
    from clearing.db import session_factory
    from interop_xian import batch as wire
    from interop_xian.config import InteropConfig
    from interop_xian.exchange import InteropNode, issuer_judge
    from interop_xian.keys import import_peer_keys
    from interop_xian.models import OutBatch

    xian = cities["xian"]
    schema = db.random_schema_name("bench_")
    db.create_schema(PG_URL, schema)
    try:
        db.upgrade(PG_URL, schema=schema)
        engine = db.make_engine(PG_URL, schema=schema)
        now = dt.datetime.now(dt.UTC)
        with Session(engine) as session, session.begin():
            registry.ensure_issuers(session, own_city="xian")
            import_peer_keys(session, cities["xianyang"].signing.export(now=now), own_city="xian", now=now,
                             overlap=dt.timedelta(days=7))  # fmt: skip
        load_xian_cards(engine, day, xian_issuer)
        judge = issuer_judge(engine, xian.keystore, DEFAULT_CLOCK)
        node = InteropNode(session_factory(engine), InteropConfig(city="xian"), xian.signing, judge)
        key_id, private = cities["xianyang"].signing.current()
        with Session(xianyang_engine) as session:
            bodies = list(session.scalars(select(OutBatch.body).order_by(OutBatch.sequence).limit(PROFILE_BATCHES)))
        signed = [(body, wire.sign("batch", body, private)) for body in bodies]
        profiler = cProfile.Profile()
        started = time.perf_counter()
        profiler.enable()
        for body, signature in signed:
            answer = node.receiver.receive(body, key_id, signature)
            assert answer.status == 200, answer.body[:300]
        profiler.disable()
        elapsed = time.perf_counter() - started
        items = sum(len(wire.decode_batch(b).items) for b in bodies)
        profiler.dump_stats(out)
        print(f"profile: {len(bodies)} batches, {items:,} items received in process under cProfile in "
              f"{elapsed:.1f} s = {items / elapsed:,.0f} items/s; stats in {out}")  # fmt: skip
        pstats.Stats(out).sort_stats("cumulative").print_stats(25)
        engine.dispose()
    finally:
        db.drop_schema(PG_URL, schema)


def main(quick: bool = False) -> None:
    import httpx
    from sqlalchemy import text

    from clearing import db
    from clearing.db import session_factory
    from interop_xian.config import InteropConfig
    from interop_xian.exchange import InteropNode, UnavailableJudge

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.interop import wire_instances as wi

    n_records = int(os.environ.get(N_RECORDS_ENV, QUICK_RECORDS if quick else FULL_RECORDS))
    n_baseline = int(os.environ.get(BASELINE_ENV, 10_000 if quick else 50_000))
    batch_items = int(os.environ.get(BATCH_ENV, 1000))
    workers = int(os.environ.get("YIKATONG_BENCH_WORKERS", "2"))
    try:
        import psycopg

        psycopg.connect(PG_URL, connect_timeout=3).close()
    except Exception as exc:
        raise SystemExit(f"PostgreSQL not reachable at {PG_URL}: {exc}") from exc
    print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", flush=True)
    with tempfile.TemporaryDirectory(prefix="yikatong-bench-interop-") as tmp:
        home = Path(tmp)
        schemas = {c: db.random_schema_name(f"bench_{tag}_") for c, tag in (("xianyang", "xy"), ("xian", "xa"))}
        engines: dict[str, Any] = {}
        instances: dict[str, Any] = {}
        try:
            for city, schema in schemas.items():
                db.create_schema(PG_URL, schema)
                db.upgrade(PG_URL, schema=schema)
                engines[city] = db.make_engine(PG_URL, schema=schema)
            ca = wi.make_ca(home)
            certs = {c: wi.make_server_cert(ca, home, c) for c in ("xianyang", "xian")}
            xian = instances["xian"] = wi.make_instance(
                "xian", home / "xian", wi.pg_url_with_schema(PG_URL, schemas["xian"]), engines["xian"], ca[2],
                YIKATONG_INTEROP_EXCHANGE_INTERVAL_S="0",
            )  # fmt: skip
            xianyang = instances["xianyang"] = wi.make_instance(
                "xianyang", home / "xianyang", wi.pg_url_with_schema(PG_URL, schemas["xianyang"]),
                engines["xianyang"], ca[2], YIKATONG_PEER_URL=xian.url, YIKATONG_INTEROP_EXCHANGE_INTERVAL_S="0",
            )  # fmt: skip
            wi.exchange_keys(xianyang, xian)
            started = time.perf_counter()
            day = generate(n_records, xian.keystore, wi.XIAN_ISSUER)
            load_xian_cards(engines["xian"], day, wi.XIAN_ISSUER)
            load_xianyang_buses(engines["xianyang"], day)
            forwarded = forward_day(engines["xianyang"], day, xianyang.keystore, wi.XIANYANG_ISSUER)
            print(
                f"setup (not timed): {day.records:,} taps of {len(day.cards):,} Xi'an cards on "
                f"{len(day.terminals):,} Xianyang buses, {day.amount_fen:,} fen; {forwarded:,} forwarded by "
                f"Xianyang's ingest; {time.perf_counter() - started:.1f} s",
                flush=True,
            )
            if forwarded != day.records:
                raise SystemExit(f"{day.records} taps but {forwarded} forwards")
            xian.start(certs["xian"])
            xianyang.start(certs["xianyang"])

            transport = TimedTransport(ca[2])
            client = httpx.Client(base_url=xian.url, transport=transport, timeout=300)  # type: ignore[arg-type]
            # The day's window is not closed in the timed rounds (``WINDOW_CLOSE_DELAY_S``): closing is once
            # a day, not per record, and its ``netting.sync_acquired`` read is quadratic on a fresh journal.
            config = InteropConfig(city="xianyang", peer_url=xian.url, batch_items_max=batch_items, timeout_s=300,
                                   retry_base_s=0.5, retry_max_s=2, ca_file=ca[2],
                                   window_close_delay_s=WINDOW_CLOSE_DELAY_S)  # fmt: skip
            node = InteropNode(session_factory(engines["xianyang"]), config, xianyang.signing, UnavailableJudge(),
                               client=client)  # fmt: skip
            assert xian.process is not None
            from benchmarks.clearing import process_cpu_s

            load_before = os.getloadavg()[0]
            server_cpu = process_cpu_s(xian.process.pid)
            acquirer_profile = os.environ.get(PROFILE_ACQUIRER_ENV)
            profiler = None
            if acquirer_profile:  # diagnosis only: the profiler slows the timed part
                import cProfile

                profiler = cProfile.Profile()
                profiler.enable()
            from interop_xian import acquirer, window_exchange

            phases = PhaseTimer()
            phases.wrap(acquirer, "apply_verdicts")
            phases.wrap(window_exchange, "close_due")
            started = time.perf_counter()
            try:
                result = exchange_all(node, "xian", engines["xianyang"])
            finally:
                phases.restore()
            net_xianyang, net_xian = net_positions(engines["xianyang"], engines["xian"])
            total_s = time.perf_counter() - started
            server_cpu = process_cpu_s(xian.process.pid) - server_cpu
            if profiler is not None and acquirer_profile:
                import pstats

                profiler.disable()
                profiler.dump_stats(acquirer_profile)
                print(f"profile of the acquirer's exchange rounds (timed part, under cProfile): {acquirer_profile}")
                pstats.Stats(acquirer_profile).sort_stats("cumulative").print_stats(30)
            load_after = os.getloadavg()[0]
            client.close()
            with engines["xian"].connect() as conn:
                judged = dict(
                    conn.execute(text("SELECT outcome, count(*) FROM interop_issuer_items GROUP BY outcome")).all()
                )
            problems = []
            if result["states"] != {"accepted": day.records}:
                problems.append(f"outbox ended {result['states']}, not all {day.records:,} accepted")
            if net_xian != day.amount_fen or net_xianyang != -day.amount_fen:
                problems.append(f"net positions {net_xianyang} / {net_xian}, expected ∓{day.amount_fen}")
            issuer_rate = day.records / transport.post_s if transport.post_s else 0.0
            print(
                f"interop end to end, {day.records:,} records in {result['batches']:,} batches of {batch_items:,} "
                f"({result['rounds']} delivering round(s)): {total_s:.1f} s = {day.records / total_s:,.0f} "
                f"records/s (goal ≤ {GOAL_S:.0f} s for 1,000,000)"
            )
            print(
                f"  collect + build: {result['build_s']:.1f} s; POST round trips (sign, send, verify, judge, "
                f"ack) {transport.post_s:.1f} s over {transport.posts:,} POSTs; the rest "
                f"{total_s - result['build_s'] - transport.post_s:.1f} s, of which applying the verdicts "
                f"{phases.seconds.get('apply_verdicts', 0.0):.1f} s and closing the due windows with the peer "
                f"{phases.seconds.get('close_due', 0.0):.1f} s"
            )
            print(
                f"  issuer validation (items / POST round trips): {issuer_rate:,.0f} items/s; Xi'an server CPU "
                f"{server_cpu * 1e6 / day.records:,.0f} µs per item"
            )
            print(f"  net positions: Xianyang {net_xianyang:,} fen, Xi'an {net_xian:,} fen; issuer items {judged}")
            print(f"  load average {load_before:.1f} → {load_after:.1f} on {os.cpu_count()} cores")
            for instance in instances.values():
                instance.stop()
            profile_out = os.environ.get(PROFILE_ENV)
            if profile_out:
                profile_issuer(profile_out, engines["xianyang"], instances, day, wi.XIAN_ISSUER)
        finally:
            for instance in instances.values():
                instance.stop()
            for engine in engines.values():
                engine.dispose()
            for schema in schemas.values():
                db.drop_schema(PG_URL, schema)
        rate_1 = local_clearing(n_baseline, 1, home)
        rate_n = local_clearing(n_baseline, workers, home) if workers != 1 else rate_1
        print(f"local clearing ingest, same run, {n_baseline:,} records: 1 worker {rate_1:,.0f} records/s, "
              f"{workers} workers {rate_n:,.0f} records/s")  # fmt: skip
        print(
            f"ratio issuer validation / local clearing: {issuer_rate / rate_1:.3f} (1 worker, like for like: one "
            f"peer's batches are judged one at a time), {issuer_rate / rate_n:.3f} ({workers} workers); "
            f"goal ≥ {GOAL_RATIO}"
        )
        if problems:
            raise SystemExit("benchmark checks failed: " + "; ".join(problems))


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
