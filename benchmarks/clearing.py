"""Clearing ingest throughput: records/s with every check on, against a raw COPY of the same rows.

What runs (``python -m benchmarks clearing [--quick]``):

1. a throwaway PostgreSQL schema at Alembic head, a key store with fresh master keys, and a
   city registered by COPY: cards (liability accounts, opening balances posted), bus
   operators and terminals;
2. a day of taps generated outside the timing: every card taps a few times at random
   buses between 06:00 and 22:00 with its own consecutive offline counters and falling
   balance; each bus numbers its taps (terminal sequence) in time order and uploads them
   in rounds; valid TACs from the card's DTK in the key store; 1 % duplicates (records
   sent again, in the same or a later batch), 0.1 % forged (amount changed after signing),
   0.5 % taps of Xi'an cards (forwarded); upload bodies written to a file;
3. timed: ``WORKERS`` spawned clearing workers take the batches in upload order and
   ingest them exactly as ``yikatong clear`` does (decode, TAC, validate, COPY, set-based
   SQL, one transaction per batch);
4. timed baseline, same run: one COPY of the same rows (less the injected duplicates,
   which the unique keys refuse) into a table made ``LIKE taps INCLUDING ALL`` (same
   columns, checks, primary key and unique indexes; no triggers), no validation; the
   median of three runs;
5. the SQLite path on a smaller day (single process, embedded database).

Figures: records/s, the ratio ingest/raw COPY, peak RSS of a clearing worker, and a check
that the ledger balances and every duplicate and forgery was caught.
"""

from __future__ import annotations

import datetime as dt
import multiprocessing as mp
import os
import random
import resource
import secrets
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

QUICK_RECORDS = 20_000
FULL_RECORDS = 1_000_000
SQLITE_RECORDS_FULL = 100_000
TAPS_PER_CARD = 5
RECORDS_PER_TERMINAL = 1_000  # a busy city bus validator's day
UPLOADS_PER_DAY = 2  # midday and end of service
WORKERS = int(os.environ.get("YIKATONG_BENCH_WORKERS", "2"))
RAW_COPY_RUNS = 3
DUPLICATE_RATE = 0.01
FORGED_RATE = 0.001
FOREIGN_RATE = 0.005
SERVICE_START_H, SERVICE_END_H = 6, 22
SHANGHAI = dt.timezone(dt.timedelta(hours=8))
DAY = dt.datetime.now(SHANGHAI).date() - dt.timedelta(days=1)  # yesterday: no tap may lie in the future
OWN = "01007120ffffffff"
PEER = "01007100ffffffff"
PG_URL = os.environ.get("YIKATONG_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")


@dataclass(frozen=True)
class Day:
    """The generated day: batch bodies in a file, in upload order, and what was injected."""

    path: Path
    batches: list[tuple[str, int, int]]  # (terminal_id, offset, length)
    records: int
    duplicates: int
    forged: int
    foreign: int
    cards: list[tuple[str, int, int]]  # (asn, opening balance, first counter)
    terminals: list[str]


def _asn(n: int) -> str:
    return f"3104{n:016d}"


def _terminal(n: int) -> str:
    return f"{0x20000000 + n:012x}"


def generate(n_records: int, keystore: Any, workdir: Path, seed: int = 7) -> Day:
    """Build the day's uploads (not timed). Fast: one MAC context per card, msgspec encoding."""
    from cardos import crypto
    from clearing.contract import Batch, FareInfo, TapRecord

    rng = random.Random(seed)
    n_foreign = int(n_records * FOREIGN_RATE)
    n_own = n_records - n_foreign
    n_cards = max(10, n_own // TAPS_PER_CARD)
    n_peer_cards = max(1, n_foreign // 2)
    n_terminals = max(4, n_records // RECORDS_PER_TERMINAL)
    terminals = [_terminal(i) for i in range(n_terminals)]
    cards = [(_asn(i), 20_000 + rng.randrange(30_000), rng.randrange(0, 3_000)) for i in range(n_cards)]
    start_s, end_s = SERVICE_START_H * 3600, SERVICE_END_H * 3600

    # taps as compact tuples: (time_s, terminal index, card index (-1-i for peer cards), counter, before, amount)
    taps: list[tuple[int, int, int, int, int, int]] = []
    per_card: list[list[int]] = [[] for _ in range(n_cards)]
    for _ in range(n_own):
        per_card[rng.randrange(n_cards)].append(rng.randrange(start_s, end_s))
    for index, times in enumerate(per_card):
        times.sort()
        _, balance, counter = cards[index]
        for t in times:
            amount = rng.choice((100, 150, 200, 200, 200, 300))
            taps.append((t, rng.randrange(n_terminals), index, counter, balance, amount))
            counter += 1
            balance -= amount
    peer_state = [[rng.randrange(5_000, 50_000), rng.randrange(100)] for _ in range(n_peer_cards)]
    for _ in range(n_foreign):
        p = rng.randrange(n_peer_cards)
        balance, counter = peer_state[p]
        amount = 200
        taps.append((rng.randrange(start_s, end_s), rng.randrange(n_terminals), -1 - p, counter, balance, amount))
        peer_state[p] = [balance - amount, counter + 1]
    taps.sort()  # time order: each terminal numbers its taps in the order it made them

    mac_keys: dict[str, crypto.MacKey] = {}
    fare = FareInfo("bus-flat", "adult", None, 200, 0, None)
    round_s = (end_s - start_s) // UPLOADS_PER_DAY
    by_upload: dict[tuple[int, int], list[TapRecord]] = {}
    seq = [0] * n_terminals
    forged: set[tuple[int, int]] = set()
    midnight = dt.datetime.combine(DAY, dt.time(), SHANGHAI)
    date4 = bytes.fromhex(DAY.strftime("%Y%m%d"))
    terminal_bytes = [bytes.fromhex(t) for t in terminals]
    for t, term, card, counter, before, amount in taps:
        seq[term] += 1
        moment = midnight + dt.timedelta(seconds=t)
        tx_time = moment.isoformat()
        if card >= 0:
            asn, issuer = cards[card][0], OWN
            key = mac_keys.get(asn)
            if key is None:
                key = mac_keys[asn] = crypto.tac_mac_key(keystore.dtk(OWN, asn, 1))
            time3 = bytes.fromhex(f"{t // 3600:02d}{t // 60 % 60:02d}{t % 60:02d}")
            tac = key.mac(crypto.purchase_tac_data(amount, 9, terminal_bytes[term], seq[term], date4, time3)).hex()
        else:
            asn, issuer = _asn(900_000_000 + (-1 - card)), PEER
            tac = secrets.token_hex(4)
        if card >= 0 and rng.random() < FORGED_RATE:
            amount += 1  # changed after the card signed it
            forged.add((term, seq[term]))
        record = TapRecord(
            terminals[term], seq[term], "0102030405060708", issuer, asn, "ordinary", 9, amount, before, counter,
            tx_time, 1, 0, tac, "R" + str(term % 120), "S" + str(t % 40), "V" + str(term), fare, "normal",
        )  # fmt: skip
        upload_round = min((t - start_s) // round_s, UPLOADS_PER_DAY - 1)
        by_upload.setdefault((upload_round, term), []).append(record)

    duplicates = 0
    for (upload_round, term), records in by_upload.items():
        for record in list(records):
            if rng.random() < DUPLICATE_RATE and (term, record.terminal_seq) not in forged:
                later = by_upload.get((upload_round + 1, term)) if rng.random() < 0.5 else None
                (later if later is not None else records).append(record)
                duplicates += 1

    order = sorted(by_upload, key=lambda k: (k[0], rng.random()))
    path = workdir / "uploads.bin"
    encoder = msgspec.json.Encoder()
    batches: list[tuple[str, int, int]] = []
    batch_seq: dict[int, int] = {}
    with path.open("wb") as out:
        for upload_round, term in order:
            batch_seq[term] = batch_seq.get(term, 0) + 1
            created = (midnight + dt.timedelta(seconds=start_s + (upload_round + 1) * round_s)).isoformat()
            body = encoder.encode(Batch(batch_seq[term], created, by_upload[(upload_round, term)]))
            batches.append((terminals[term], out.tell(), len(body)))
            out.write(body)
    total = sum(len(v) for v in by_upload.values())
    return Day(path, batches, total, duplicates, len(forged), n_foreign, cards, terminals)


# --- the city in the database (not timed) -----------------------------------------------------


def register(engine: Any, day: Day) -> None:
    """Issuers, operators, terminals and cards with opening balances, loaded with COPY."""
    from sqlalchemy.orm import Session

    from clearing import accounts, registry
    from clearing.models import AccountCode, AccountFlag, TransferCode

    with Session(engine) as session:
        registry.ensure_issuers(session, own_city="xianyang")
        operators = [registry.ensure_operator(session, f"bus-{i}") for i in range(10)]
        float_account = accounts.issuer_float(session, OWN)
        session.commit()
        payables = [(o.operator_id, o.payable_account_id) for o in operators]
    now = dt.datetime.now(dt.UTC)
    raw = engine.raw_connection()
    try:
        conn = raw.driver_connection
        with conn.cursor() as cur:
            with cur.copy(
                "COPY terminals (terminal_id, operator_id, payable_account_id, route, token_hash, active, created_at)"
                " FROM STDIN"
            ) as copy:
                for i, terminal_id in enumerate(day.terminals):
                    operator_id, payable = payables[i % len(payables)]
                    copy.write_row((terminal_id, operator_id, payable, f"R{i % 120}", "bench", True, now))
            first = cur.execute(
                "SELECT nextval(pg_get_serial_sequence('accounts', 'id')) FROM generate_series(1, %s)",
                (len(day.cards),),
            ).fetchall()
            ids = [int(r[0]) for r in first]
            flags = int(AccountFlag.DEBITS_MUST_NOT_EXCEED_CREDITS)
            with cur.copy(
                "COPY accounts (id, ledger, code, owner_ref, flags, debits_pending, debits_posted, credits_pending,"
                " credits_posted, created_at) FROM STDIN"
            ) as copy:
                for account_id, (asn, balance, _) in zip(ids, day.cards, strict=True):
                    copy.write_row(
                        (account_id, 156, int(AccountCode.CARD_LIABILITY), f"card:{OWN}:{asn}", flags, 0, 0, 0,
                         balance, now)
                    )  # fmt: skip
            with cur.copy(
                "COPY cards (issuer_id, card_asn, card_type, status, issued_at, start_date, expiry_date, key_version,"
                " alg_id, account_id, shadow_balance_fen, last_offline_counter) FROM STDIN"
            ) as copy:
                for account_id, (asn, balance, counter) in zip(ids, day.cards, strict=True):
                    copy.write_row(
                        (OWN, asn, "ordinary", "active", now, dt.date(2026, 1, 1), dt.date(2036, 1, 1), 1, 0,
                         account_id, balance, counter - 1 if counter else None)
                    )  # fmt: skip
            with cur.copy(
                "COPY transfers (id, debit_account_id, credit_account_id, amount_fen, ledger, code, state, created_at)"
                " FROM STDIN"
            ) as copy:
                for account_id, (asn, balance, _) in zip(ids, day.cards, strict=True):
                    copy.write_row(
                        (f"issue:{asn}", float_account, account_id, balance, 156, int(TransferCode.CARD_SALE),
                         "posted", now)
                    )  # fmt: skip
            cur.execute(
                "UPDATE accounts SET debits_posted = %s WHERE id = %s",
                (sum(c[1] for c in day.cards), float_account),
            )
            cur.execute("ANALYZE")
        conn.commit()
    finally:
        raw.close()


# --- workers (spawned: their memory is their own) ------------------------------------------


def _worker(
    url: str, schema: str, keystore_path: str, kek: bytes, uploads: str, queue: Any, ready: Any, results: Any
) -> None:
    from clearing import db
    from clearing.ingest import TacKeys, decode_upload, keystore_dtk, make_ingestor, prepare
    from clearing.keystore import KeyStore
    from clearing.worker import tune_gc

    engine = db.make_engine(url, schema=schema, pool_size=1)
    ingestor = make_ingestor(engine)
    with engine.connect() as conn:
        backend = int(conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one())
    keys = TacKeys(keystore_dtk(KeyStore.open(keystore_path, kek)), [OWN])
    fd = os.open(uploads, os.O_RDONLY)
    tune_gc()  # as `yikatong clear` does
    verdicts: Counter[str] = Counter()
    busy = 0.0
    ready.wait()
    cpu_started, backend_started = time.process_time(), process_cpu_s(backend)
    while True:
        item = queue.get()
        if item is None:
            break
        terminal_id, offset, length = item
        started = time.perf_counter()
        body = os.pread(fd, length, offset)
        result = ingestor.ingest(prepare(terminal_id, decode_upload(body), keys))
        for v in msgspec.json.decode(result.answer)["verdicts"]:
            verdicts[v["code"] if v["verdict"] != "accepted" else "accepted"] += 1
        busy += time.perf_counter() - started
    cpu = (time.process_time() - cpu_started, process_cpu_s(backend) - backend_started)
    os.close(fd)
    engine.dispose()
    results.put((dict(verdicts), busy, peak_rss_mb(), (*cpu, getattr(ingestor, "rejudged", 0))))


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of a process on this host, e.g. a PostgreSQL backend; 0 if unreadable."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM). Not ``ru_maxrss``: Linux carries that over
    from the parent across fork+exec, so a spawned worker would report the generator's size."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def ingest_pg(url: str, schema: str, keystore_path: Path, kek: bytes, day: Day, workers: int) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    queue, results = ctx.Queue(), ctx.Queue()
    ready = ctx.Event()
    procs = [
        ctx.Process(target=_worker, args=(url, schema, str(keystore_path), kek, str(day.path), queue, ready, results))
        for _ in range(workers)
    ]
    for p in procs:
        p.start()
    for item in day.batches:
        queue.put(item)
    for _ in procs:
        queue.put(None)
    time.sleep(3.0)  # let the workers import and connect before the clock starts
    started = time.perf_counter()
    ready.set()
    outcome = [results.get() for _ in procs]
    elapsed = time.perf_counter() - started
    for p in procs:
        p.join()
    verdicts: Counter[str] = Counter()
    for counts, *_ in outcome:
        verdicts.update(counts)
    return {
        "elapsed_s": elapsed,
        "verdicts": dict(verdicts),
        "rss_mb_max": max(r for _, _, r, _ in outcome),
        "busy_s": [round(b, 1) for _, b, _, _ in outcome],
        "worker_cpu_s": sum(c[0] for *_, c in outcome),
        "backend_cpu_s": sum(c[1] for *_, c in outcome),
        "rejudged": sum(c[2] for *_, c in outcome),
    }


def raw_copy(engine: Any, day: Day) -> tuple[float, int]:
    """The same rows, COPY'd into an identical table without any validation (one stream).

    The injected duplicates are left out: the identical table refuses them, as ``taps`` does.
    Returns (median seconds of ``RAW_COPY_RUNS`` runs, rows).
    """
    from clearing.ingest import business_day, decode_upload
    from clearing.validation import parse_tap_time

    rows = []
    received = dt.datetime.now(dt.UTC)
    with day.path.open("rb") as f:
        data = f.read()
    seq_id = 0
    seen: set[tuple[str, int]] = set()
    for terminal_id, offset, length in day.batches:
        batch = decode_upload(data[offset : offset + length])
        for r in batch.records:
            if (r.terminal_id, r.terminal_seq) in seen:
                continue
            seen.add((r.terminal_id, r.terminal_seq))
            seq_id += 1
            when = parse_tap_time(r.tx_time)
            assert when is not None
            fare = r.fare
            assert fare is not None
            rows.append(
                (seq_id, business_day(when.at), None, batch.batch_seq, terminal_id, r.terminal_seq, r.psam_serial,
                 r.issuer_id, r.card_asn, r.card_type, r.tx_type, r.amount_fen, r.balance_before_fen,
                 r.offline_counter, when.at, 480, r.key_version, r.alg_id, r.tac, r.route_id, r.stop_id,
                 r.vehicle_id, fare.product_id, fare.rider_category_id, fare.leg_group_id, fare.full_fare_fen,
                 fare.discount_fen, fare.transfer_of, r.status, "accepted", "OK", "", None, received)
            )  # fmt: skip
    del data
    raw = engine.raw_connection()
    try:
        conn = raw.driver_connection
        times = []
        with conn.cursor() as cur:
            for run in range(RAW_COPY_RUNS):  # the median of a few: one short COPY is at the mercy of the host
                # identical to taps: same columns, defaults, checks, primary key and unique indexes (no triggers)
                table = f"bench_raw_taps_{run}"
                cur.execute(f"CREATE TABLE {table} (LIKE taps INCLUDING ALL)")
                conn.commit()
                started = time.perf_counter()
                with cur.copy(
                    f"COPY {table} (id, business_day, batch_id, batch_seq, terminal_id, terminal_seq, psam_serial,"
                    " issuer_id, card_asn, card_type, tx_type, amount_fen, balance_before_fen, offline_counter,"
                    " tx_time, tx_utc_offset_min, key_version, alg_id, tac, route_id, stop_id, vehicle_id,"
                    " fare_product_id, fare_rider_category_id, fare_leg_group_id, fare_full_fen, fare_discount_fen,"
                    " fare_transfer_of, status, verdict, code, message, transfer_id, received_at) FROM STDIN"
                ) as copy:
                    for row in rows:
                        copy.write_row(row)
                conn.commit()
                times.append(time.perf_counter() - started)
                cur.execute(f"DROP TABLE {table}")
                conn.commit()
        return statistics.median(times), len(rows)
    finally:
        raw.close()


def check(engine: Any, day: Day, verdicts: dict[str, int]) -> list[str]:
    """The ledger balances and the injected faults were caught (and only those)."""
    from sqlalchemy.orm import Session

    from clearing.ledger import trial_balance

    problems = []
    with Session(engine) as session:
        trial_balance(session)  # raises if debits != credits or totals != transfers
    if verdicts.get("E_TAC_MISMATCH", 0) != day.forged:
        problems.append(f"forged {day.forged}, caught {verdicts.get('E_TAC_MISMATCH', 0)}")
    dups = verdicts.get("E_DUPLICATE_TERMINAL_SEQ", 0)
    if dups != day.duplicates:
        problems.append(f"duplicates {day.duplicates}, caught {dups}")
    if verdicts.get("I_FORWARDED_INTEROP", 0) > day.foreign:
        problems.append("more forwarded than foreign records")
    return problems


def sqlite_run(n_records: int, keystore: Any, keystore_path: Path, kek: bytes, workdir: Path) -> tuple[int, float]:
    from sqlalchemy.orm import Session

    from clearing import db, registry
    from clearing.ingest import TacKeys, decode_upload, keystore_dtk, make_ingestor, prepare

    day = generate(n_records, keystore, workdir, seed=11)
    url = f"sqlite:///{workdir / 'clearing.db'}"
    db.upgrade(url)
    engine = db.make_engine(url)
    from clearing import accounts
    from clearing.ledger import TransferSpec, post_transfers
    from clearing.models import Card, Terminal, TransferCode

    with Session(engine) as session:
        registry.ensure_issuers(session, own_city="xianyang")
        op = registry.ensure_operator(session, "bus-0")
        float_account = accounts.issuer_float(session, OWN)
        for terminal_id in day.terminals:
            session.add(
                Terminal(
                    terminal_id=terminal_id, operator_id=op.operator_id, payable_account_id=op.payable_account_id,
                    token_hash="bench", active=True,
                )
            )  # fmt: skip
        specs = []
        now = dt.datetime.now(dt.UTC)
        for asn, balance, counter in day.cards:
            account = accounts.card_liability(session, OWN, asn)
            session.add(
                Card(
                    issuer_id=OWN, card_asn=asn, card_type="ordinary", issued_at=now, start_date=dt.date(2026, 1, 1),
                    expiry_date=dt.date(2036, 1, 1), key_version=1, alg_id=0, account_id=account,
                    shadow_balance_fen=balance, last_offline_counter=counter - 1 if counter else None,
                )
            )  # fmt: skip
            specs.append(TransferSpec.single(f"issue:{asn}", float_account, account, balance, TransferCode.CARD_SALE))
        session.flush()
        post_transfers(session, specs)
        session.commit()
    ingestor = make_ingestor(engine)
    keys = TacKeys(keystore_dtk(keystore), [OWN])
    with day.path.open("rb") as f:
        data = f.read()
    started = time.perf_counter()
    for terminal_id, offset, length in day.batches:
        ingestor.ingest(prepare(terminal_id, decode_upload(data[offset : offset + length]), keys))
    elapsed = time.perf_counter() - started
    engine.dispose()
    return day.records, elapsed


def main(quick: bool = False) -> None:
    from sqlalchemy import text

    from clearing import db
    from clearing.keystore import KeyStore

    n_records = int(os.environ.get("YIKATONG_BENCH_RECORDS", QUICK_RECORDS if quick else FULL_RECORDS))
    try:
        import psycopg

        psycopg.connect(PG_URL, connect_timeout=3).close()
    except Exception as exc:
        raise SystemExit(f"PostgreSQL not reachable at {PG_URL}: {exc}") from exc
    with tempfile.TemporaryDirectory(prefix="yikatong-bench-") as tmp:
        workdir = Path(tmp)
        kek = os.urandom(32)
        keystore_path = workdir / "keystore.json"
        keystore = KeyStore.open(keystore_path, kek)
        keystore.init([OWN])
        started = time.perf_counter()
        day = generate(n_records, keystore, workdir)
        gen_s = time.perf_counter() - started
        print(
            f"generated {day.records:,} records ({len(day.cards):,} cards, {len(day.terminals):,} terminals, "
            f"{len(day.batches):,} batches; {day.duplicates:,} duplicates, {day.forged:,} forged, "
            f"{day.foreign:,} Xi'an) in {gen_s:.1f} s (not timed)",
            flush=True,
        )
        schema = db.random_schema_name("bench_")
        db.create_schema(PG_URL, schema)
        try:
            db.upgrade(PG_URL, schema=schema)
            engine = db.make_engine(PG_URL, schema=schema)
            register(engine, day)
            result = ingest_pg(PG_URL, schema, keystore_path, kek, day, WORKERS)
            rate = day.records / result["elapsed_s"]
            problems = check(engine, day, result["verdicts"])
            with engine.begin() as conn:
                conn.execute(text("ANALYZE"))
            copy_s, copy_rows = raw_copy(engine, day)
            copy_rate = copy_rows / copy_s
            engine.dispose()
        finally:
            db.drop_schema(PG_URL, schema)
        print(
            f"PostgreSQL ingest, {WORKERS} workers, all checks on: {day.records:,} records in "
            f"{result['elapsed_s']:.1f} s = {rate:,.0f} records/s (worker busy {result['busy_s']} s)"
        )
        print(
            f"raw COPY of the same rows (less duplicates: {copy_rows:,}) into LIKE taps INCLUDING ALL, "
            f"median of {RAW_COPY_RUNS}: {copy_s:.1f} s = {copy_rate:,.0f} rows/s"
        )
        print(f"ratio ingest / raw COPY: {rate / copy_rate:.2f}")
        per_record = 1e6 / day.records
        print(
            f"CPU per record: clearing workers {result['worker_cpu_s'] * per_record:.0f} µs, their PostgreSQL "
            f"backends {result['backend_cpu_s'] * per_record:.0f} µs; {os.cpu_count()} cores x elapsed = "
            f"{(os.cpu_count() or 1) * result['elapsed_s'] * per_record:.0f} µs"
        )
        print(f"peak RSS of a clearing worker: {result['rss_mb_max']:.0f} MB")
        print(f"verdicts: {result['verdicts']}")
        print(f"batches whose cards moved under them (another worker cleared them), judged again: {result['rejudged']}")
        verdict = "; ".join(problems) if problems else "ledger balances; every duplicate and forgery caught"
        print("checks: " + verdict)
        n_sqlite = min(n_records, SQLITE_RECORDS_FULL)
        records, elapsed = sqlite_run(n_sqlite, keystore, keystore_path, kek, workdir)
        print(f"SQLite ingest (1 process, {records:,} records): {records / elapsed:,.0f} records/s")
        if problems:
            raise SystemExit("benchmark checks failed: " + "; ".join(problems))


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
