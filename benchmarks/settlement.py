"""Settlement: close time independent of history, and running totals that do not tax clearing.

What runs (``python -m benchmarks settlement [--quick]``; PostgreSQL, throwaway schemas):

1. **Close of 10,000 payees** after a day of ``SMALL_TAPS`` taps and after a day of ``BIG_TAPS``
   taps (``YIKATONG_BENCH_SETTLEMENT_TAPS``; default 10,000,000, ``--quick`` 1,000,000). Setup,
   not timed: payees (operators, payables, bank accounts) and the day's taps and their purchase
   transfers COPY-loaded, with the running totals and their journal as ingest leaves them (one
   posting per 500-tap batch). Timed: ``close_window`` (seal, settle, files) in a fresh process,
   whose peak RSS is reported.
2. **A close after 30 earlier windows**: 30 more days of totals for the same payees, each closed;
   the 31st close against the first.
3. **Ingest with running totals on and off**, the same generated day (``benchmarks.clearing``,
   ``YIKATONG_BENCH_RECORDS``; default 200,000, ``--quick`` 20,000) into two schemas, two spawned
   workers each, plus the raw COPY baseline: the ingest/COPY ratio with and without.
"""

from __future__ import annotations

import datetime as dt
import multiprocessing as mp
import os
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

PAYEES = 10_000
SMALL_TAPS = 100_000
BIG_TAPS_FULL = 10_000_000
BIG_TAPS_QUICK = 1_000_000
TAPS_PER_BATCH = 500
EARLIER_WINDOWS = 30
INGEST_RECORDS_FULL = 200_000
INGEST_RECORDS_QUICK = 20_000
DAY = dt.date(2026, 10, 1)
PG_URL = os.environ.get("YIKATONG_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")


def _payees(engine: Any) -> list[tuple[str, int]]:
    """10,000 payees (a tenth bus operators, the rest merchants in 3 categories), COPY-loaded."""
    from sqlalchemy.orm import Session

    from clearing import accounts
    from settlement.fees import FeeSchedule
    from settlement.parties import set_fee_schedule

    now = dt.datetime.now(dt.UTC)
    with Session(engine) as session, session.begin():
        for category, bps in (("catering", 38), ("retail", 60), ("utility", 0)):
            set_fee_schedule(session, category, FeeSchedule(bps, 100, 50_000), actor="bench")
        accounts.fee_revenue(session)
    raw = engine.raw_connection()
    try:
        conn = raw.driver_connection
        with conn.cursor() as cur:
            ids = [int(r[0]) for r in cur.execute(
                "SELECT nextval(pg_get_serial_sequence('accounts', 'id')) FROM generate_series(1, %s)", (PAYEES,)
            ).fetchall()]  # fmt: skip
            payees = [(f"payee-{i:05d}", ids[i]) for i in range(PAYEES)]
            with cur.copy("COPY accounts (id, ledger, code, owner_ref, flags, debits_pending, debits_posted, "
                          "credits_pending, credits_posted, created_at) FROM STDIN") as copy:  # fmt: skip
                for pid, account in payees:
                    copy.write_row((account, 156, 200, f"operator:{pid}", 1, 0, 0, 0, 0, now))
            with cur.copy(
                "COPY operators (operator_id, name, kind, payable_account_id, created_at) FROM STDIN"
            ) as copy:
                for i, (pid, account) in enumerate(payees):
                    copy.write_row((pid, f"Payee {i}", "bus_operator" if i % 10 == 0 else "merchant", account, now))
            with cur.copy("COPY settlement_payees (payee_id, category, account_name, account_number, cnaps_code, "
                          "status, created_at, updated_at) FROM STDIN") as copy:  # fmt: skip
                for i, (pid, _) in enumerate(payees):
                    category = "transit" if i % 10 == 0 else ("catering", "retail", "utility")[i % 3]
                    copy.write_row((pid, category, f"Payee {i} Ltd", f"62220200{i:011d}", "102791000013", "active",
                                    now, now))  # fmt: skip
        conn.commit()
    finally:
        raw.close()
    return payees


def _day(engine: Any, payees: list[tuple[str, int]], day: dt.date, taps: int, *, history: bool, seed: int) -> None:
    """A day as ingest leaves it: taps + purchase transfers (``history``), postings, totals, payables."""
    rng = random.Random(seed)
    per_payee: Counter[int] = Counter()
    fen_payee: Counter[int] = Counter()
    raw = engine.raw_connection()
    try:
        conn = raw.driver_connection
        with conn.cursor() as cur:
            card = cur.execute("SELECT id FROM accounts WHERE owner_ref = 'system:bench_cards'").fetchone()
            if card is None:
                card = cur.execute(
                    "INSERT INTO accounts (ledger, code, owner_ref, flags, debits_pending, debits_posted, "
                    "credits_pending, credits_posted, created_at) VALUES (156, 300, 'system:bench_cards', 0, 0, 0, 0, "
                    "0, now()) RETURNING id"
                ).fetchone()
            card_account = int(card[0])
            received = dt.datetime.combine(day, dt.time(23), dt.UTC).isoformat()
            if history:
                with cur.copy("COPY taps (business_day, batch_seq, terminal_id, terminal_seq, psam_serial, issuer_id, "
                              "card_asn, card_type, tx_type, amount_fen, balance_before_fen, offline_counter, tx_time, "
                              "tx_utc_offset_min, key_version, alg_id, tac, status, verdict, code, message, "
                              "transfer_id, received_at) FROM STDIN") as copy:  # fmt: skip
                    base = (day - DAY).days * 10**8
                    lines = []
                    for n in range(taps):
                        seq = base + n
                        lines.append(
                            f"{day}\t{n // TAPS_PER_BATCH}\t{seq % 4096:012x}\t{seq}\t01\t01007120ffffffff\t"
                            f"{seq:020d}\tordinary\t9\t200\t10000\t{n % 65536}\t{received}\t480\t1\t0\t00000000\t"
                            f"normal\taccepted\tOK\t\ttap:{seq % 4096:012x}:{seq}\t{received}\n"
                        )
                        if len(lines) == 50_000:
                            copy.write("".join(lines))
                            lines.clear()
                    copy.write("".join(lines))
            with cur.copy("COPY transfers (id, debit_account_id, credit_account_id, amount_fen, ledger, code, state, "
                          "source_ref, created_at) FROM STDIN") as copy:  # fmt: skip
                base = (day - DAY).days * 10**8
                lines = []
                for n in range(taps):
                    account = payees[rng.randrange(PAYEES)][1]
                    amount = rng.choice((100, 200, 200, 300, 1500))
                    per_payee[account] += 1
                    fen_payee[account] += amount
                    if history:
                        seq = base + n
                        lines.append(f"tap:{seq % 4096:012x}:{seq}\t{card_account}\t{account}\t{amount}\t156\t1\t"
                                     f"posted\tbatch:{n // TAPS_PER_BATCH}\t{received}\n")  # fmt: skip
                        if len(lines) == 50_000:
                            copy.write("".join(lines))
                            lines.clear()
                copy.write("".join(lines))
            with cur.copy("COPY settlement_postings (window_day, payee_account_id, kind, source_ref, event_day, count, "
                          "amount_fen, late, created_at) FROM STDIN") as copy:  # fmt: skip
                for account, count in per_payee.items():
                    copy.write_row((day, account, "sale", f"bench:{day}:{account}", day, count, fen_payee[account],
                                    False, received))  # fmt: skip
            with cur.copy("COPY settlement_totals (window_day, payee_account_id, count, gross_fen, refund_count, "
                          "refunds_fen, late_count, late_fen) FROM STDIN") as copy:  # fmt: skip
                for account, count in per_payee.items():
                    copy.write_row((day, account, count, fen_payee[account], 0, 0, 0, 0))
            total = sum(fen_payee.values())
            ids, fens = list(fen_payee), [fen_payee[a] for a in fen_payee]
            cur.execute("UPDATE accounts a SET credits_posted = a.credits_posted + v.f FROM unnest(%s::bigint[], "
                        "%s::bigint[]) AS v(id, f) WHERE a.id = v.id", (ids, fens))  # fmt: skip
            cur.execute("UPDATE accounts SET debits_posted = debits_posted + %s WHERE id = %s", (total, card_account))
            cur.execute("ANALYZE")
        conn.commit()
    finally:
        raw.close()


def _close_child(url: str, schema: str, day: str, out: str, results: Any) -> None:
    from clearing import db
    from settlement.bank import BankAccount
    from settlement.close import close_window
    from settlement.payouts import Payer

    engine = db.make_engine(url, schema=schema)
    payer = Payer("Xianyang Yikatong Co., Ltd.", BankAccount("Xianyang Yikatong Settlement", "6222020000000000001",
                                                            "102791000013"))  # fmt: skip
    with engine.connect():
        pass
    started = time.perf_counter()
    result = close_window(engine, dt.date.fromisoformat(day), now=dt.datetime.now(dt.UTC), payer=payer,
                          out_dir=Path(out))  # fmt: skip
    elapsed = time.perf_counter() - started
    from benchmarks.clearing import peak_rss_mb

    results.put((elapsed, peak_rss_mb(), result.payees, result.payout_fen + result.fee_fen, result.gross_fen))
    engine.dispose()


def timed_close(url: str, schema: str, day: dt.date, out: Path) -> tuple[float, float, int]:
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    proc = ctx.Process(target=_close_child, args=(url, schema, day.isoformat(), str(out), results))
    proc.start()
    elapsed, rss, payees, paid, gross = results.get()
    proc.join()
    assert paid <= gross and 0.99 * PAYEES <= payees <= PAYEES, (payees, paid, gross)
    return elapsed, rss, payees


def close_benchmark(taps: int, out: Path, *, windows: int = 0) -> list[tuple[float, float]]:
    from clearing import db

    url = PG_URL
    schema = db.random_schema_name("bench_set_")
    db.create_schema(url, schema)
    try:
        db.upgrade(url, schema=schema)
        engine = db.make_engine(url, schema=schema)
        payees = _payees(engine)
        started = time.perf_counter()
        _day(engine, payees, DAY, taps, history=True, seed=1)
        print(f"  loaded a day of {taps:,} taps (+ transfers) in {time.perf_counter() - started:.0f} s (not timed)",
              flush=True)  # fmt: skip
        figures = [timed_close(url, schema, DAY, out)[:2]]
        for n in range(1, windows + 1):
            day = DAY + dt.timedelta(days=n)
            _day(engine, payees, day, SMALL_TAPS, history=False, seed=n + 1)
            elapsed, rss, _ = timed_close(url, schema, day, out)
            if n == windows:
                figures.append((elapsed, rss))
        engine.dispose()
        return figures
    finally:
        db.drop_schema(url, schema)


# --- running totals on and off ---------------------------------------------------------------


def _worker(flag: bool, url: str, schema: str, keystore_path: str, kek: bytes, uploads: str, queue: Any,
            ready: Any, results: Any) -> None:  # fmt: skip
    import msgspec

    from benchmarks.clearing import OWN
    from clearing import db
    from clearing.ingest import TacKeys, decode_upload, keystore_dtk, make_ingestor, prepare
    from clearing.keystore import KeyStore
    from clearing.worker import tune_gc

    engine = db.make_engine(url, schema=schema, pool_size=1)
    ingestor = make_ingestor(engine, running_totals=flag)
    keys = TacKeys(keystore_dtk(KeyStore.open(keystore_path, kek)), [OWN])
    fd = os.open(uploads, os.O_RDONLY)
    tune_gc()
    accepted = 0
    ready.wait()
    while (item := queue.get()) is not None:
        terminal_id, offset, length = item
        result = ingestor.ingest(prepare(terminal_id, decode_upload(os.pread(fd, length, offset)), keys))
        accepted += sum(v["verdict"] == "accepted" for v in msgspec.json.decode(result.answer)["verdicts"])
    os.close(fd)
    engine.dispose()
    results.put(accepted)


def _ingest(flag: bool, url: str, schema: str, keystore_path: Path, kek: bytes, day: Any, workers: int = 2) -> float:
    ctx = mp.get_context("spawn")
    queue, results, ready = ctx.Queue(), ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=_worker, args=(flag, url, schema, str(keystore_path), kek, str(day.path), queue,
                                               ready, results)) for _ in range(workers)]  # fmt: skip
    for p in procs:
        p.start()
    for item in day.batches:
        queue.put(item)
    for _ in procs:
        queue.put(None)
    time.sleep(3.0)
    started = time.perf_counter()
    ready.set()
    for _ in procs:
        results.get()
    elapsed = time.perf_counter() - started
    for p in procs:
        p.join()
    return elapsed


def ingest_ratio(records: int, workdir: Path) -> dict[str, float]:
    from benchmarks.clearing import OWN, generate, raw_copy, register
    from clearing import db
    from clearing.keystore import KeyStore

    kek = os.urandom(32)
    keystore_path = workdir / "keystore.json"
    keystore = KeyStore.open(keystore_path, kek)
    keystore.init([OWN])
    day = generate(records, keystore, workdir)
    out: dict[str, float] = {}
    for flag in (True, False, True):  # on, off, on again: the host's drift shows
        schema = db.random_schema_name("bench_rt_")
        db.create_schema(PG_URL, schema)
        try:
            db.upgrade(PG_URL, schema=schema)
            engine = db.make_engine(PG_URL, schema=schema)
            register(engine, day)
            elapsed = _ingest(flag, PG_URL, schema, keystore_path, kek, day)
            key = "on" if flag else "off"
            out[key] = min(out.get(key, float("inf")), elapsed)
            if "copy_rate" not in out:
                copy_s, rows = raw_copy(engine, day)
                out["copy_rate"] = rows / copy_s
            engine.dispose()
        finally:
            db.drop_schema(PG_URL, schema)
    out["records"] = day.records
    return out


def main(quick: bool = False) -> None:
    try:
        import psycopg

        psycopg.connect(PG_URL, connect_timeout=3).close()
    except Exception as exc:
        raise SystemExit(f"PostgreSQL not reachable at {PG_URL}: {exc}") from exc
    big = int(os.environ.get("YIKATONG_BENCH_SETTLEMENT_TAPS", BIG_TAPS_QUICK if quick else BIG_TAPS_FULL))
    records = int(os.environ.get("YIKATONG_BENCH_RECORDS", INGEST_RECORDS_QUICK if quick else INGEST_RECORDS_FULL))
    windows = 5 if quick else EARLIER_WINDOWS
    with tempfile.TemporaryDirectory(prefix="yikatong-bench-settlement-") as tmp:
        work = Path(tmp)
        print(
            f"close of {PAYEES:,} payees after a day of {SMALL_TAPS:,} taps, then {windows} more windows:", flush=True
        )
        small = close_benchmark(SMALL_TAPS, work / "small", windows=windows)
        print(f"close of {PAYEES:,} payees after a day of {big:,} taps:", flush=True)
        large = close_benchmark(big, work / "big")
        (s_t, s_rss), (w_t, w_rss) = small[0], small[-1]
        b_t, b_rss = large[0]
        print(f"close (seal + settle + files), {PAYEES:,} payees, {SMALL_TAPS:,}-tap day: {s_t:.2f} s, "
              f"peak RSS {s_rss:.0f} MB")  # fmt: skip
        print(f"close, {PAYEES:,} payees, {big:,}-tap day: {b_t:.2f} s, peak RSS {b_rss:.0f} MB; "
              f"ratio big/small {b_t / s_t:.2f}")  # fmt: skip
        print(f"close after {windows} earlier windows: {w_t:.2f} s (first {s_t:.2f} s), peak RSS {w_rss:.0f} MB")
        ratio = ingest_ratio(records, work / "ingest")
        on, off, copy_rate = ratio["records"] / ratio["on"], ratio["records"] / ratio["off"], ratio["copy_rate"]
        print(f"ingest {int(ratio['records']):,} records, 2 workers: running totals on {on:,.0f} records/s "
              f"(ratio {on / copy_rate:.3f}), off {off:,.0f} records/s (ratio {off / copy_rate:.3f}); "
              f"drop {100 * (1 - on / off):.1f} %")  # fmt: skip


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
