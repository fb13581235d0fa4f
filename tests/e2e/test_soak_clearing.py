"""Load soak: the clearing benchmark's day of taps, ingested by two workers, must check out.

Bounded in CI (``--quick``: 20,000 records with 1 % duplicates, 0.1 % forgeries and 0.5 %
Xi'an cards); the full million-record run is ``make bench``.

The test runs the benchmark's own steps (``benchmarks.clearing``: generate, register, the
spawned workers, the raw COPY baseline, the SQLite path) and asserts every figure the
benchmark reports, each against what follows from the generated day alone. What the day
must clear to is worked out from the upload bodies, independently of clearing: every
(terminal, terminal_seq) is one genuine tap, sent once or more (the extra copies are the
injected duplicates); a record of a Xi'an card is forwarded; a Xianyang record whose TAC
does not verify under the card's key (``cardos.crypto``, the key store) is a forgery;
every other record posts its amount, once. So:

- each batch's stored answer has a verdict per record, and per tap: the extra copies
  ``E_DUPLICATE_TERMINAL_SEQ``, forgeries ``E_TAC_MISMATCH``, Xi'an taps
  ``I_FORWARDED_INTEROP``, the rest ``accepted`` or ``suspect`` (and then only for an
  order of arrival the generator cannot fix: ``S_COUNTER_GAP``, or
  ``S_BALANCE_DISCONTINUITY`` on a card with a forgery or without a previous counter);
- the verdict counts the workers report are those answers, and the injected counts;
- the ledger balances, its posted total is the openings plus every posting tap, one
  ``tap:`` transfer per posting tap; each card's account is its opening less its posted
  taps, its shadow balance and counter those after its last cleared tap;
- every batch is ``done``; the exception queue holds each forgery and each duplicate, and
  at the end of the day only the counter gaps a forgery leaves are still open;
- the raw COPY baseline copied the day's distinct rows, both workers worked, and the
  measured figures are sane (positive, the worker's peak RSS bounded).
"""

from __future__ import annotations

import datetime as dt
import math
import os
import tempfile
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import pytest

pytestmark = [pytest.mark.soak, pytest.mark.postgres]

PEAK_RSS_MB_MAX = 1024  # a quick-run worker measures under 100 MB
POSTS = {"accepted", "suspect"}
ORDER_SUSPECTS = {"S_COUNTER_GAP", "S_BALANCE_DISCONTINUITY"}
Key = tuple[str, int]  # (terminal_id, terminal_seq): one genuine tap


@dataclass
class Expected:
    """What a generated day must clear to, from its upload bodies and the key store only."""

    records: int = 0  # every record sent, copies included
    copies: Counter[Key] = field(default_factory=Counter)
    record: dict[Key, Any] = field(default_factory=dict)
    forged: set[Key] = field(default_factory=set)
    foreign: set[Key] = field(default_factory=set)
    posting: set[Key] = field(default_factory=set)
    batches: list[tuple[str, int, Any]] = field(default_factory=list)  # (terminal_id, batch_seq, Batch)
    opening: dict[str, int] = field(default_factory=dict)  # card ASN -> opening balance
    registered_counter: dict[str, int | None] = field(default_factory=dict)  # card ASN -> last counter known

    @property
    def duplicates(self) -> int:
        return sum(n - 1 for n in self.copies.values())

    @property
    def posted_fen(self) -> int:
        return sum(self.record[k].amount_fen for k in self.posting)

    def card_of(self, key: Key) -> str:
        return str(self.record[key].card_asn)


def expected_from(day: Any, keystore: Any, own_issuer: str) -> Expected:
    from cardos import crypto
    from clearing.ingest import decode_upload

    out = Expected()
    data = day.path.read_bytes()
    for terminal_id, offset, length in day.batches:
        batch = decode_upload(data[offset : offset + length])
        out.batches.append((terminal_id, batch.batch_seq, batch))
        for r in batch.records:
            key = (terminal_id, r.terminal_seq)
            out.records += 1
            out.copies[key] += 1
            if key in out.record:
                assert out.record[key] == r, f"{key}: a copy differs from the tap it repeats"
            out.record[key] = r
    for key, r in out.record.items():
        if r.issuer_id != own_issuer:
            out.foreign.add(key)
            continue
        moment = dt.datetime.fromisoformat(r.tx_time)
        tac = crypto.purchase_tac(
            keystore.dtk(own_issuer, r.card_asn, r.key_version),
            r.amount_fen,
            r.tx_type,
            bytes.fromhex(r.terminal_id),
            r.terminal_seq,
            bytes.fromhex(moment.strftime("%Y%m%d")),
            bytes.fromhex(moment.strftime("%H%M%S")),
            r.alg_id,
        )
        (out.posting if tac.hex() == r.tac else out.forged).add(key)
    for asn, opening, first_counter in day.cards:
        out.opening[asn] = opening
        out.registered_counter[asn] = first_counter - 1 if first_counter else None
    return out


def check_day(engine: Any, day: Any, exp: Expected, *, own_issuer: str) -> Counter[str]:
    """Everything the database and the stored answers must say after the day; returns the
    verdict counts of the stored answers (``"accepted"`` or the code)."""
    from sqlalchemy import func, select
    from sqlalchemy.orm import Session

    from clearing.exceptions_queue import sweep_gaps
    from clearing.ingest import stored_answer
    from clearing.ledger import trial_balance
    from clearing.models import Account, BatchRow, Card, ExceptionItem, Tap, Transfer

    # what the benchmark says it generated is what the upload file holds
    assert (day.records, day.duplicates, day.forged, day.foreign) == (
        exp.records,
        exp.duplicates,
        len(exp.forged),
        len(exp.foreign),
    )
    assert day.duplicates > 0 and day.forged > 0 and day.foreign > 0  # every fault was injected
    assert {t for t, _, _ in exp.batches} <= set(day.terminals) and len(day.batches) == len(exp.batches)
    assert {exp.card_of(k) for k in exp.posting | exp.forged} <= set(exp.opening)

    # per tap, from the stored answers (the terminal contract)
    outcomes: dict[Key, list[tuple[str, str]]] = defaultdict(list)
    counts: Counter[str] = Counter()
    for terminal_id, batch_seq, batch in exp.batches:
        raw = stored_answer(engine, terminal_id, batch_seq)
        assert raw is not None, f"batch {terminal_id}/{batch_seq} has no answer"
        verdicts = msgspec.json.decode(raw)["verdicts"]
        assert [v["terminal_seq"] for v in verdicts] == [r.terminal_seq for r in batch.records]
        for v in verdicts:
            outcomes[(terminal_id, v["terminal_seq"])].append((v["verdict"], v["code"]))
            counts["accepted" if v["verdict"] == "accepted" else v["code"]] += 1
    assert sum(counts.values()) == exp.records
    disorder: dict[str, set[Key]] = defaultdict(set)
    for key, seen in outcomes.items():
        others = [s for s in seen if s != ("rejected", "E_DUPLICATE_TERMINAL_SEQ")]
        assert len(seen) == exp.copies[key] and len(others) == 1, (key, seen)  # one judged, the copies refused
        first = others[0]
        if key in exp.forged:
            assert first == ("rejected", "E_TAC_MISMATCH"), (key, seen)
        elif key in exp.foreign:
            assert first == ("forwarded", "I_FORWARDED_INTEROP"), (key, seen)
        else:
            assert first == ("accepted", "OK") or first[0] == "suspect", (key, seen)
            if first[0] == "suspect":
                assert first[1] in ORDER_SUSPECTS, (key, seen)
                disorder[first[1]].add(key)
    assert counts["E_DUPLICATE_TERMINAL_SEQ"] == day.duplicates
    assert counts["E_TAC_MISMATCH"] == day.forged
    assert counts["I_FORWARDED_INTEROP"] == day.foreign
    assert counts["accepted"] + sum(counts[c] for c in ORDER_SUSPECTS) == len(exp.posting)
    assert set(counts) <= {"accepted", "E_DUPLICATE_TERMINAL_SEQ", "E_TAC_MISMATCH", "I_FORWARDED_INTEROP"} | (
        ORDER_SUSPECTS
    ), counts
    forged_cards: dict[str, set[int]] = defaultdict(set)
    for key in exp.forged:
        forged_cards[exp.card_of(key)].add(exp.record[key].offline_counter)
    for key in disorder["S_BALANCE_DISCONTINUITY"]:  # nothing else moves a generated purse
        card = exp.card_of(key)
        assert card in forged_cards or exp.registered_counter[card] is None, (key, exp.record[key])

    # per card: account, shadow balance and counter
    posted_fen: Counter[str] = Counter()
    last: dict[str, Any] = {}
    for key in exp.posting:
        r = exp.record[key]
        posted_fen[r.card_asn] += r.amount_fen
        if r.card_asn not in last or r.offline_counter > last[r.card_asn].offline_counter:
            last[r.card_asn] = r
    with Session(engine) as session:
        totals = trial_balance(session)  # raises unless debits == credits == posted transfers
        assert totals.transfers_posted_fen == sum(exp.opening.values()) + exp.posted_fen
        taps = session.execute(select(Transfer.id, Transfer.amount_fen).where(Transfer.id.like("tap:%"))).all()
        assert sorted(t for t, _ in taps) == sorted(f"tap:{t}:{s}" for t, s in exp.posting)  # each once
        assert sum(a for _, a in taps) == exp.posted_fen
        rows = session.execute(select(Tap.terminal_id, Tap.terminal_seq, Tap.verdict, Tap.amount_fen)).all()
        assert {(t, s) for t, s, v, _ in rows if v in POSTS} == exp.posting
        assert not {(t, s) for t, s, _, _ in rows} & exp.forged  # a forgery never squats a genuine key
        cards = session.execute(
            select(
                Card.card_asn,
                Card.shadow_balance_fen,
                Card.last_offline_counter,
                Account.credits_posted - Account.debits_posted,
            ).join(Account, Account.id == Card.account_id)
        ).all()
        assert len(cards) == len(exp.opening)
        for asn, shadow, counter, balance in cards:
            r = last.get(asn)
            assert balance == exp.opening[asn] - posted_fen[asn], asn  # the ledger: every posted tap
            # the purse after the last cleared tap (a rejected forgery's debit is not cleared)
            assert shadow == (r.balance_before_fen - r.amount_fen if r else exp.opening[asn]), asn
            assert counter == (r.offline_counter if r else exp.registered_counter[asn]), asn
        statuses = dict(session.execute(select(BatchRow.status, func.count()).group_by(BatchRow.status)).all())
        assert statuses == {"done": len(exp.batches)}
        # ingest queues no counter gap: each waits on its tap row (gap_first..gap_last)
        gap_taps = session.execute(select(func.count()).select_from(Tap).where(Tap.gap_first.is_not(None)))
        assert gap_taps.scalar_one() == counts["S_COUNTER_GAP"]
    with Session(engine) as session, session.begin():
        # the end of the day, swept with age 0: only gaps no upload filled join the queue
        sweep_gaps(session, now=dt.datetime.now(dt.UTC) + dt.timedelta(days=400), age_days=0)
    with Session(engine) as session:
        items = session.execute(
            select(
                ExceptionItem.code,
                ExceptionItem.state,
                ExceptionItem.terminal_id,
                ExceptionItem.terminal_seq,
                ExceptionItem.card_asn,
                ExceptionItem.gap_first,
                ExceptionItem.gap_last,
            )
        ).all()
    by_code: dict[str, list[Any]] = defaultdict(list)
    for item in items:
        by_code[item.code].append(item)
    assert {(i.terminal_id, i.terminal_seq) for i in by_code["E_TAC_MISMATCH"]} == exp.forged
    assert len(by_code["E_TAC_MISMATCH"]) == day.forged
    assert len(by_code["E_DUPLICATE_TERMINAL_SEQ"]) == day.duplicates
    assert {(i.terminal_id, i.terminal_seq) for i in by_code["E_DUPLICATE_TERMINAL_SEQ"]} == {
        k for k, n in exp.copies.items() if n > 1
    }
    assert {i.state for i in by_code["E_TAC_MISMATCH"] + by_code["E_DUPLICATE_TERMINAL_SEQ"]} == {"open"}
    assert len(by_code["S_BALANCE_DISCONTINUITY"]) == counts["S_BALANCE_DISCONTINUITY"]
    assert set(by_code) <= {"E_TAC_MISMATCH", "E_DUPLICATE_TERMINAL_SEQ"} | ORDER_SUSPECTS, set(by_code)
    # every upload is in: a gap still open is one a rejected forgery left (its counter never clears),
    # and every forgery with a later cleared tap on its card left one open
    open_gaps = [i for i in by_code["S_COUNTER_GAP"] if i.state == "open"]
    assert {i.state for i in by_code["S_COUNTER_GAP"]} == ({"open"} if open_gaps else set())
    for gap in open_gaps:
        assert any(gap.gap_first <= c <= gap.gap_last for c in forged_cards[gap.card_asn]), gap
    for key in exp.forged:
        card, counter = exp.card_of(key), exp.record[key].offline_counter
        if card in last and last[card].offline_counter > counter:
            assert any(g.card_asn == card and g.gap_first <= counter <= g.gap_last for g in open_gaps), key
    return counts


@pytest.fixture
def bench_workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="yikatong-soak-") as tmp:
        yield Path(tmp)


def test_a_day_of_taps_clears_with_every_duplicate_and_forgery_caught(
    pg_url: str, bench_workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from benchmarks import clearing as bench
    from clearing import db
    from clearing.keystore import KeyStore

    n_records = int(os.environ.get("YIKATONG_BENCH_RECORDS", bench.QUICK_RECORDS))
    kek = os.urandom(32)
    keystore_path = bench_workdir / "keystore.json"
    keystore = KeyStore.open(keystore_path, kek)
    keystore.init([bench.OWN])
    day = bench.generate(n_records, keystore, bench_workdir)
    exp = expected_from(day, keystore, bench.OWN)

    # PostgreSQL, WORKERS spawned workers
    schema = db.random_schema_name("soak_")
    db.create_schema(bench.PG_URL, schema)
    try:
        db.upgrade(bench.PG_URL, schema=schema)
        engine = db.make_engine(bench.PG_URL, schema=schema)
        bench.register(engine, day)
        result = bench.ingest_pg(bench.PG_URL, schema, keystore_path, kek, day, bench.WORKERS)
        answered = check_day(engine, day, exp, own_issuer=bench.OWN)
        assert result["verdicts"] == dict(answered)  # what the workers report is what they stored
        assert bench.check(engine, day, result["verdicts"]) == []  # the benchmark's own verdict agrees
        copy_s, copy_rows = bench.raw_copy(engine, day)
        engine.dispose()
    finally:
        db.drop_schema(bench.PG_URL, schema)
    assert copy_rows == len(exp.copies) == day.records - day.duplicates  # the day's distinct rows
    assert len(result["busy_s"]) == bench.WORKERS and all(b > 0 for b in result["busy_s"])  # both worked
    assert 0 <= result["rejudged"] <= len(day.batches)
    assert 0 < result["rss_mb_max"] < PEAK_RSS_MB_MAX
    for figure in (result["elapsed_s"], copy_s, result["worker_cpu_s"], result["backend_cpu_s"]):
        assert math.isfinite(figure) and figure > 0
    rate, copy_rate = day.records / result["elapsed_s"], copy_rows / copy_s

    # SQLite, one process: the benchmark generates its own (smaller or equal) day; keep it to check
    days: list[Any] = []
    generate = bench.generate

    def keep(*args: Any, **kwargs: Any) -> Any:
        days.append(generate(*args, **kwargs))
        return days[-1]

    monkeypatch.setattr(bench, "generate", keep)
    n_sqlite = min(n_records, bench.SQLITE_RECORDS_FULL)
    sqlite_records, sqlite_s = bench.sqlite_run(n_sqlite, keystore, keystore_path, kek, bench_workdir)
    [sqlite_day] = days
    sqlite_exp = expected_from(sqlite_day, keystore, bench.OWN)
    assert sqlite_records == sqlite_exp.records and math.isfinite(sqlite_s) and sqlite_s > 0
    sqlite_engine = db.make_engine(f"sqlite:///{bench_workdir / 'clearing.db'}")
    try:
        check_day(sqlite_engine, sqlite_day, sqlite_exp, own_issuer=bench.OWN)
    finally:
        sqlite_engine.dispose()

    print(
        f"\nsoak: {day.records:,} records ({day.duplicates} duplicates, {day.forged} forged, {day.foreign} Xi'an) "
        f"cleared by {bench.WORKERS} workers at {rate:,.0f} records/s (raw COPY {copy_rate:,.0f} rows/s); "
        f"verdicts {dict(answered)}; SQLite {sqlite_records:,} records at {sqlite_records / sqlite_s:,.0f}/s; "
        "all checked"
    )
