"""PostgreSQL ingest path: COPY, set-based SQL, one transaction per batch, short card locks.

Per batch (``clearing.ingest`` explains the shared plan):

1. lock the terminal row (serialises one terminal's batches, so (terminal, seq) duplicates
   cannot race) and claim ``(terminal_id, batch_seq)`` in ``batches``;
2. *phase 1, no card locks*: COPY the batch's natural keys into the temp table
   ``ingest_keys`` and read, set-based: which keys ``taps`` already holds, a snapshot
   of the batch's cards with their row versions (``xmin``), the cleared neighbours of late
   records; the denylist comes from a per-process cache keyed by its version. Judge in
   Python (``clearing.validation``) and COPY the rows straight into ``taps`` and
   ``transfers`` (and the exception items of unstored records);
3. *phase 2, under the card locks*: ``SELECT … FOR UPDATE`` the cards by id, in id order
   (two workers sharing cards queue instead of deadlocking). If a card's row version moved
   since the snapshot (another worker cleared it, or a load posted), judge that card's
   records again against the locked state and correct the verdicts of the rows written in
   phase 1 (invisible to anyone else until COMMIT); if what is *posted* would change, run
   the batch again. Then exception items of stored taps, the aggregated account deltas
   (one ``UPDATE … FROM unnest``), the cards, the answer; COMMIT.

Why two phases: the card locks are the only contended locks between workers (batches of
different terminals share cards), and phase 1 is most of the work; holding the locks only
for phase 2 lets workers overlap.

Locks: terminal, then cards in id order; account rows are written only in phase 2 and
card accounts only under their card's lock, so the one row two batches can share is an
operator payable, which cannot form a cycle.

A lost connection (server restart, ``pg_terminate_backend``), a deadlock or a lost race
on a natural key rolls the whole batch back; ``with_retries`` runs it again on a fresh
connection, and a batch whose COMMIT did land is then answered from ``batches``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final

import psycopg
from psycopg import errors as pg_errors
from sqlalchemy import Engine
from sqlalchemy import exc as sa_exc

from clearing.business_day import DEFAULT_CLOCK, BusinessDayClock
from clearing.contract import TapRecord
from clearing.ingest import (
    RESOLVER,
    CardRow,
    IngestResult,
    Parties,
    Prepared,
    RetryableIngestError,
    TapRow,
    WritePlan,
    answer_bytes,
    batch_conflict,
    batch_days_and_routes,
    decide,
    redecide,
    unknown_terminal,
    with_retries,
)
from clearing.ingest_reads import (
    ForwardKey,
    LateKey,
    LateReads,
    Snapshot,
    leg_from_row,
    read_cards,
    read_context,
    with_fresh_cards,
)
from clearing.ingest_totals import (
    LATEST_SEALED_SQL,
    LOCK_SHARED_SQL,
    POSTINGS_INSERT_PG,
    TOTALS_UPSERT_PG,
    TRANSFER_LEGS_INSERT_PG,
    PayeeBook,
    Posting,
    TransferLeg,
    postings_pg_params,
    read_assignments_pg,
    sale_postings,
    totals_pg_params,
    transfer_legs,
    transfer_legs_pg_params,
)
from clearing.models import LEDGER_CNY, TransferCode, TransferState
from clearing.validation import (
    CardKey,
    CardState,
    Context,
    DenyInterval,
    Leg,
    Limits,
    Neighbour,
    RefundPricer,
)

_KEYS_DDL: Final = """
CREATE TEMP TABLE IF NOT EXISTS ingest_keys (
    idx integer NOT NULL, terminal_id text NOT NULL, terminal_seq bigint NOT NULL,
    issuer_id text NOT NULL, card_asn text NOT NULL, offline_counter integer NOT NULL,
    tx_type smallint NOT NULL
) ON COMMIT DELETE ROWS
"""
_KEY_COLUMNS: Final = "idx, terminal_id, terminal_seq, issuer_id, card_asn, offline_counter, tx_type"

_TAP_COLUMNS: Final = (
    "business_day, batch_id, batch_seq, terminal_id, terminal_seq, psam_serial, issuer_id, card_asn, card_type, "
    "tx_type, amount_fen, balance_before_fen, offline_counter, tx_time, tx_utc_offset_min, key_version, "
    "alg_id, tac, route_id, stop_id, vehicle_id, fare_product_id, fare_rider_category_id, fare_leg_group_id, "
    "fare_full_fen, fare_discount_fen, fare_transfer_of, status, verdict, code, message, transfer_id, received_at, "
    "fare_tap_kind, fare_tariff_version, fare_refund_claimed_fen, refund_fen, gap_first, gap_last"
)
# Every read and write of a batch joins a few thousand staged rows with large indexed tables
# (taps, cards, accounts); the temp tables have no statistics, and a hash join over a
# sequential scan of taps grows with history. Index nested loops keep a batch's cost
# proportional to the batch, whatever the size of the tables.
_PLANNER: Final = "SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off"
_LOCK_TERMINAL: Final = "SELECT active, payable_account_id FROM terminals WHERE terminal_id = %s FOR UPDATE"
_CLAIM: Final = """
INSERT INTO batches (terminal_id, batch_seq, content_hash, record_count, status, received_at)
VALUES (%s, %s, %s, %s, 'queued', %s)
ON CONFLICT (terminal_id, batch_seq) DO NOTHING
RETURNING id
"""
_STORED: Final = """
SELECT id, content_hash, status, answer FROM batches WHERE terminal_id = %s AND batch_seq = %s FOR UPDATE
"""
# xmin is the row version: it differs from the snapshot's if another transaction wrote the card since.
_CARD_STATE: Final = """
SELECT c.issuer_id, c.card_asn, c.id, c.account_id, c.start_date, c.shadow_balance_fen,
       c.last_offline_counter, a.flags, a.credits_posted - a.debits_posted - a.debits_pending,
       c.shadow_load_at, c.last_tx_at, c.xmin::text, c.card_type
FROM cards c JOIN accounts a ON a.id = c.account_id
"""
_CARDS: Final = (
    _CARD_STATE + "WHERE (c.issuer_id, c.card_asn) IN (SELECT DISTINCT issuer_id, card_asn FROM ingest_keys)"  # noqa: S608
)
_CARDS_BY_ID: Final = _CARD_STATE + "WHERE c.id = ANY(%s::bigint[])"
# Everything a verdict decides about a stored row: verdict, code, message, the gap it names and
# the refund computed for it. Rows found by ``terminal_seq = ANY(…)`` on the unique index.
_FIX_VERDICTS: Final = """
UPDATE taps SET verdict = (%(verdicts)s::text[])[array_position(%(seqs)s::bigint[], terminal_seq)],
       code = (%(codes)s::text[])[array_position(%(seqs)s::bigint[], terminal_seq)],
       message = (%(messages)s::text[])[array_position(%(seqs)s::bigint[], terminal_seq)],
       gap_first = (%(firsts)s::int[])[array_position(%(seqs)s::bigint[], terminal_seq)],
       gap_last = (%(lasts)s::int[])[array_position(%(seqs)s::bigint[], terminal_seq)],
       refund_fen = (%(refunds)s::bigint[])[array_position(%(seqs)s::bigint[], terminal_seq)]
WHERE terminal_id = %(terminal)s AND terminal_seq = ANY(%(seqs)s::bigint[]) AND batch_id = %(batch)s
"""
# Phase 2 locks by primary key and reads only the row versions; the full state is read again
# (under the lock) only when a version moved, which is rare unless workers share cards.
_LOCK_VERSIONS: Final = "SELECT id, xmin::text FROM cards WHERE id = ANY(%s::bigint[]) ORDER BY id FOR UPDATE"
_DENYLIST_VERSION: Final = "SELECT value FROM counters WHERE name = 'denylist_version'"
_SEEN: Final = """
SELECT s.idx, 1 FROM ingest_keys s
WHERE EXISTS (SELECT 1 FROM taps k WHERE k.terminal_id = s.terminal_id AND k.terminal_seq = s.terminal_seq)
UNION ALL
SELECT s.idx, 2 FROM ingest_keys s
WHERE EXISTS (SELECT 1 FROM taps k WHERE k.issuer_id = s.issuer_id AND k.card_asn = s.card_asn
              AND k.offline_counter = s.offline_counter AND k.tx_type = s.tx_type)
   OR EXISTS (SELECT 1 FROM interop_issuer_items i WHERE i.claims_keys AND i.issuer_id = s.issuer_id
              AND i.card_asn = s.card_asn AND i.offline_counter = s.offline_counter AND i.tx_type = s.tx_type)
"""  # a card key a peer city's acquirer already claimed for our card (interop_xian, by name) is taken too
_DENYLIST: Final = "SELECT issuer_id, card_asn, effective_at, removed_at FROM denylist_entries"
# A tap as a leg for the refund rule (``validation.Leg``), with the payable its fare went to.
_LEG: Final = """t.offline_counter, t.terminal_id, t.terminal_seq, t.route_id, t.vehicle_id, t.stop_id, t.tx_time,
       t.amount_fen, t.fare_tap_kind, t.fare_tariff_version, t.fare_rider_category_id,
       t.fare_refund_claimed_fen, x.credit_account_id, t.id"""
_NEIGHBOURS: Final = """
SELECT l.issuer_id, l.card_asn, l.counter,
       p.offline_counter, p.balance_before_fen, p.amount_fen,
       n.offline_counter, n.balance_before_fen, n.amount_fen, n.waiting
FROM unnest(%(issuers)s::text[], %(asns)s::text[], %(counters)s::int[]) AS l(issuer_id, card_asn, counter)
LEFT JOIN LATERAL (
    SELECT t.offline_counter, t.balance_before_fen, t.amount_fen FROM taps t
    WHERE t.issuer_id = l.issuer_id AND t.card_asn = l.card_asn AND t.offline_counter <= l.counter
      AND t.verdict IN ('accepted', 'suspect') AND t.batch_id IS DISTINCT FROM %(batch)s
    ORDER BY t.offline_counter DESC LIMIT 1
) p ON true
LEFT JOIN LATERAL (
    SELECT t.offline_counter, t.balance_before_fen, t.amount_fen,
           CASE WHEN t.fare_tap_kind = 'tap_off' AND t.refund_fen IS NULL THEN t.id END AS waiting
    FROM taps t
    WHERE t.issuer_id = l.issuer_id AND t.card_asn = l.card_asn AND t.offline_counter > l.counter
      AND t.verdict IN ('accepted', 'suspect') AND t.batch_id IS DISTINCT FROM %(batch)s
    ORDER BY t.offline_counter ASC LIMIT 1
) n ON true
"""
_LEGS: Final = f"""
SELECT {_LEG} FROM taps t LEFT JOIN transfers x ON x.id = t.transfer_id WHERE t.id = ANY(%s::bigint[])
"""  # noqa: S608 - only constant column lists are interpolated
_ENTRIES: Final = f"""
SELECT l.issuer_id, l.card_asn, {_LEG}
FROM unnest(%s::text[], %s::text[], %s::int[]) AS l(issuer_id, card_asn, counter)
JOIN taps t ON t.issuer_id = l.issuer_id AND t.card_asn = l.card_asn AND t.offline_counter = l.counter
LEFT JOIN transfers x ON x.id = t.transfer_id
WHERE t.verdict IN ('accepted', 'suspect')
"""  # noqa: S608
_DAY_LEGS: Final = f"""
SELECT {_LEG} FROM taps t LEFT JOIN transfers x ON x.id = t.transfer_id
WHERE t.issuer_id = %s AND t.card_asn = %s AND t.verdict IN ('accepted', 'suspect')
  AND t.tx_time >= %s AND t.tx_time < %s
ORDER BY t.offline_counter
"""  # noqa: S608
_FORWARDS_SEEN: Final = """
SELECT f.terminal_id, f.terminal_seq, f.record_digest
FROM unnest(%s::text[], %s::bigint[], %s::text[]) AS k(terminal_id, terminal_seq, record_digest)
JOIN interop_forwards f ON f.terminal_id = k.terminal_id AND f.terminal_seq = k.terminal_seq
     AND f.record_digest = k.record_digest
"""
_FORWARD_COLUMNS: Final = (
    "batch_id, batch_seq, terminal_id, terminal_seq, record_digest, issuer_id, card_asn, offline_counter, tx_type, "
    "amount_fen, tx_time, business_day, record, state, received_at"
)
# One statement per (rare) row, on an index, pipelined: joined with an unnest, the planner —
# hash joins off, statistics behind the day's growth — may scan the table per row while the
# batch holds its cards' locks.
_TAP_REFUND: Final = "UPDATE taps SET refund_fen = %s WHERE id = %s AND refund_fen IS NULL"
_RESOLVE_TAP_OFF: Final = """
UPDATE exception_items SET state = 'resolved', note = %s, decided_by = %s, decided_at = %s
WHERE tap_id = %s AND state = 'open' AND code = 'S_TAPOFF_NO_ENTRY'
"""
_TRANSFER_COLUMNS: Final = (
    "id, debit_account_id, credit_account_id, amount_fen, ledger, code, state, source_ref, created_at"
)
_EXCEPTION_COLUMNS: Final = (
    "kind, tap_id, tap_business_day, record, terminal_id, terminal_seq, batch_seq, issuer_id, card_asn, "
    "offline_counter, amount_fen, code, message, state, created_at"
)
# Exception items of stored taps point at them by id, which the server assigned during the COPY;
# found by their natural key (the unique index), the batch's taps have no index of their own.
_TAP_EXCEPTIONS: Final = f"""
INSERT INTO exception_items ({_EXCEPTION_COLUMNS})
SELECT 'tap', id, business_day, NULL, terminal_id, terminal_seq, batch_seq, issuer_id, card_asn,
       offline_counter, amount_fen, code, message, 'open', received_at
FROM taps WHERE terminal_id = %s AND terminal_seq = ANY(%s::bigint[])
"""  # noqa: S608 - only the constant column list is interpolated
_ACCOUNT_DELTAS: Final = """
UPDATE accounts AS a SET debits_posted = a.debits_posted + v.d, credits_posted = a.credits_posted + v.c
FROM unnest(%s::bigint[], %s::bigint[], %s::bigint[]) AS v(id, d, c)
WHERE a.id = v.id
"""
_CARD_UPDATES: Final = """
UPDATE cards AS c SET shadow_balance_fen = v.s, last_offline_counter = v.l, last_tx_at = v.t, shadow_load_at = v.la,
       status = CASE WHEN v.b THEN 'blocked' ELSE c.status END
FROM unnest(%s::bigint[], %s::bigint[], %s::int[], %s::timestamptz[], %s::timestamptz[], %s::bool[])
     AS v(id, s, l, t, la, b)
WHERE c.id = v.id
"""
_REFUND: Final = """
INSERT INTO pending_loads (id, issuer_id, card_asn, amount_fen, state, kind, payer_account_id, created_at, updated_at)
VALUES (%s, %s, %s, %s, 'pending', 'refund', %s, %s, %s)
"""
_DONE: Final = "UPDATE batches SET status = 'done', answer = %s, done_at = %s, body = NULL WHERE id = %s"

ACCOUNT_FLAG_DEBITS_LIMITED: Final = 1


def is_transient(exc: BaseException) -> bool:
    """Faults after which the batch is simply run again: nothing of it was committed."""
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
        return True  # connection lost or server shutting down; deadlock/serialization are subclasses
    return isinstance(exc, pg_errors.UniqueViolation | pg_errors.CheckViolation | RetryableIngestError)


class PgIngestor:
    """Ingests prepared batches into PostgreSQL through the engine's pooled psycopg connections."""

    def __init__(
        self,
        engine: Engine,
        *,
        limits: Limits | None = None,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
        refund_pricer: RefundPricer | None = None,
        days: BusinessDayClock = DEFAULT_CLOCK,
        running_totals: bool = True,
    ) -> None:
        assert engine.dialect.name == "postgresql", "PgIngestor needs a PostgreSQL engine"
        self.engine = engine
        self.limits = limits or Limits()
        self.clock = clock
        self.refund_pricer = refund_pricer
        self.days = days
        # Settlement's dated payees and running totals (clearing.ingest_totals); off only to measure them.
        self.running_totals = running_totals
        # Test hook: called inside the transaction just before COMMIT (fault tests kill or stall here).
        self.before_commit: Callable[[Prepared], None] | None = None
        self._denylist_cache: tuple[int, dict[CardKey, list[DenyInterval]]] | None = None
        # Test hook: called between phase 1 (rows written) and phase 2 (cards locked).
        self.between_phases: Callable[[Prepared], None] | None = None
        # Batches judged again in phase 2 because a card moved since the snapshot (an operations figure).
        self.rejudged = 0

    def ingest(self, prepared: Prepared) -> IngestResult:
        return with_retries(lambda: self._attempt(prepared), is_transient)

    def store_unavailable(self, exc: BaseException) -> bool:
        # the raw driver's faults, and SQLAlchemy's when the pool cannot even hand out a connection
        return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError | sa_exc.OperationalError)

    def _attempt(self, prepared: Prepared) -> IngestResult:
        raw = self.engine.raw_connection()
        try:
            conn = raw.driver_connection
            assert isinstance(conn, psycopg.Connection)
            try:
                result = self._transaction(conn, prepared)
            except BaseException:
                if not conn.closed:
                    conn.rollback()
                raise
        except (psycopg.OperationalError, psycopg.InterfaceError):
            raw.invalidate()  # never hand a dead connection back to the pool
            raise
        finally:
            raw.close()
        return result

    def _transaction(self, conn: psycopg.Connection[Any], prepared: Prepared) -> IngestResult:
        batch = prepared.batch
        terminal_id = prepared.terminal_id
        received_at = self.clock()
        with conn.cursor() as cur:
            cur.execute(_PLANNER, prepare=False)
            row = cur.execute(_LOCK_TERMINAL, (terminal_id,)).fetchone()
            if row is None or not row[0]:
                raise unknown_terminal(terminal_id)
            operator_account_id = int(row[1])
            claimed = cur.execute(
                _CLAIM, (terminal_id, batch.batch_seq, prepared.digest, len(batch.records), received_at)
            ).fetchone()
            if claimed is not None:
                batch_id = int(claimed[0])
            else:  # uploaded before: answered already, or queued (Redis) and ours to clear now
                stored = cur.execute(_STORED, (terminal_id, batch.batch_seq)).fetchone()
                assert stored is not None, "a conflicting claim means the batch row exists"
                if stored[1] != prepared.digest:
                    conn.rollback()
                    raise batch_conflict(terminal_id, batch.batch_seq)
                if stored[2] == "done":
                    conn.rollback()
                    return IngestResult(answer_bytes(stored[3]), replayed=True)
                batch_id = int(stored[0])
            payees, sealed = self._windows(cur, prepared, operator_account_id, received_at)
            # Phase 1, no card locks: judge against a snapshot of the cards and write the rows.
            ctx, parties, versions = self._load(
                cur, terminal_id, prepared, operator_account_id, received_at, batch_id, payees
            )
            plan = decide(prepared, ctx, parties, received_at, self.days)
            self._write_rows(cur, plan, batch_id, prepared.batch.batch_seq, received_at)
            if self.between_phases is not None:
                self.between_phases(prepared)
            # Phase 2, short: lock the cards; if one changed since the snapshot, judge again.
            plan = self._settle(cur, prepared, ctx, parties, versions, plan, batch_id, received_at)
            postings = (
                sale_postings(f"batch:{terminal_id}:{batch.batch_seq}", plan.sales, sealed)
                if self.running_totals
                else []
            )
            legs = transfer_legs(plan.taps, payees, sealed) if payees is not None else []
            self._write_state(cur, plan, batch_id, received_at, postings, legs)
        if self.before_commit is not None:
            self.before_commit(prepared)
        conn.commit()
        return IngestResult(plan.answer, replayed=False)

    # --- read ---------------------------------------------------------------------------

    def _windows(
        self, cur: psycopg.Cursor[Any], prepared: Prepared, operator_account_id: int, now: dt.datetime
    ) -> tuple[PayeeBook | None, dt.date | None]:
        """The window lock (shared, to COMMIT), the latest sealed day and the batch's dated payees.

        One round trip: the lock is granted before the next statement's snapshot is taken, so
        a seal that committed while this batch waited for the lock is seen.
        """
        if not self.running_totals:
            return None, None
        batch_days, routes = batch_days_and_routes(prepared, now, self.days)
        with cur.connection.pipeline():
            cur.execute(LOCK_SHARED_SQL)
            sealed_cur = cur.connection.execute(LATEST_SEALED_SQL)
        row = sealed_cur.fetchone()
        sealed = row[0] if row is not None else None
        payees = read_assignments_pg(cur, prepared.terminal_id, routes, batch_days, operator_account_id)
        return payees, sealed

    def _load(
        self,
        cur: psycopg.Cursor[Any],
        terminal_id: str,
        prepared: Prepared,
        operator_account_id: int,
        now: dt.datetime,
        batch_id: int,
        payees: PayeeBook | None = None,
    ) -> tuple[Context, Parties, dict[CardKey, str]]:
        ctx, versions = read_context(
            PgReads(cur, batch_id, self._denylist),
            prepared.batch.records,
            uploader=terminal_id,
            now=now,
            limits=self.limits,
            refund_pricer=self.refund_pricer,
        )
        return ctx, Parties(operator_account_id, {k: s.account_id for k, s in ctx.cards.items()}, payees), versions

    def _denylist(self, cur: psycopg.Cursor[Any], version: int) -> Mapping[CardKey, list[DenyInterval]]:
        """The whole denylist (with removed entries, for "as of the tap time"), cached per version."""
        if self._denylist_cache is None or self._denylist_cache[0] != version:
            entries: dict[CardKey, list[DenyInterval]] = {}
            for issuer_id, asn, effective_at, removed_at in cur.execute(_DENYLIST):
                entries.setdefault((issuer_id, asn), []).append(DenyInterval(effective_at, removed_at))
            self._denylist_cache = (version, entries)
        return self._denylist_cache[1]

    def _settle(
        self,
        cur: psycopg.Cursor[Any],
        prepared: Prepared,
        ctx: Context,
        parties: Parties,
        versions: dict[CardKey, str],
        plan: WritePlan,
        batch_id: int,
        received_at: dt.datetime,
    ) -> WritePlan:
        """Lock the batch's cards (id order) and make the verdicts final.

        A card whose row version changed since the snapshot was cleared meanwhile by another
        worker (or loaded): read it again and judge its records again against the locked
        state (``redecide``; nearly every batch has one such card when workers share cards,
        so only those are redone). Verdicts may move
        between accepted and suspect (the rows written in phase 1, not yet visible to anyone,
        are corrected); if what is *posted* would change, the batch is run again from scratch.
        """
        ids = {state.card_id: key for key, state in ctx.cards.items()}
        if not ids:
            return plan
        moved = [
            card_id
            for card_id, xmin in cur.execute(_LOCK_VERSIONS, (int_array(sorted(ids)),))
            if versions[ids[card_id]] != xmin
        ]
        if not moved:
            return plan
        self.rejudged += 1
        # Only the moved cards are read again (already locked: a plain read) and judged again.
        fresh, _ = _card_states(cur.execute(_CARDS_BY_ID, (int_array(sorted(moved)),)).fetchall())
        moved_records = [r for r in prepared.batch.records if (r.issuer_id, r.card_asn) in fresh]
        reads = read_cards(PgReads(cur, batch_id, self._denylist), moved_records, fresh, ctx.own_issuers)
        ctx = with_fresh_cards(ctx, fresh, reads)
        final = redecide(prepared, plan, ctx, parties, received_at, fresh.keys(), self.days)
        if [t.transfer_id for t in final.taps] != [t.transfer_id for t in plan.taps] or [
            t.stored for t in final.taps
        ] != [t.stored for t in plan.taps]:
            raise RetryableIngestError("cards changed under the batch in a way that changes what is posted")
        changed = [
            new
            for new, old in zip(final.taps, plan.taps, strict=True)
            if new.stored
            and (new.verdict, new.code, new.message, new.gap, new.refund_fen)
            != (old.verdict, old.code, old.message, old.gap, old.refund_fen)
        ]
        if changed:
            cur.execute(
                _FIX_VERDICTS,
                {
                    "seqs": int_array(t.record.terminal_seq for t in changed),
                    "verdicts": [t.verdict for t in changed],
                    "codes": [t.code for t in changed],
                    "messages": [t.message for t in changed],
                    "firsts": int_array(t.gap[0] if t.gap else None for t in changed),
                    "lasts": int_array(t.gap[1] if t.gap else None for t in changed),
                    "refunds": int_array(t.refund_fen for t in changed),
                    "terminal": prepared.terminal_id,
                    "batch": batch_id,
                },
            )
        return final

    # --- write --------------------------------------------------------------------------

    def _write_rows(
        self, cur: psycopg.Cursor[Any], plan: WritePlan, batch_id: int, batch_seq: int, received_at: dt.datetime
    ) -> None:
        """COPY straight into taps and transfers; the staging was for the reads.

        Measured: staging the judged rows and inserting them with ``INSERT … SELECT`` cost a
        third more than COPY into the final tables (``docs/clearing.md``, "Performance").
        """
        received = received_at.isoformat()
        stored = [tap for tap in plan.taps if tap.stored]
        if stored:
            with cur.copy(f"COPY taps ({_TAP_COLUMNS}) FROM STDIN") as copy:
                copy.write("".join(_tap_line(tap, batch_id, batch_seq, received) for tap in stored))
        if plan.transfers:
            tail = f"\t{LEDGER_CNY}\t{int(TransferCode.PURCHASE)}\t{TransferState.POSTED.value}"
            with cur.copy(f"COPY transfers ({_TRANSFER_COLUMNS}) FROM STDIN") as copy:
                copy.write(
                    "".join(
                        f"{t.id}\t{t.debit_account_id}\t{t.credit_account_id}\t{t.amount_fen}{tail}"
                        f"\t{t.source_ref}\t{received}\n"
                        for t in plan.transfers
                    )
                )
        if plan.forwards:
            with cur.copy(f"COPY interop_forwards ({_FORWARD_COLUMNS}) FROM STDIN") as copy:
                for f in plan.forwards:
                    r = f.record
                    copy.write_row(
                        (batch_id, batch_seq, r.terminal_id, r.terminal_seq, f.digest, r.issuer_id, r.card_asn,
                         r.offline_counter, r.tx_type, r.amount_fen, f.tx_at, f.business_day, f.record_json,
                         "forwarded", received_at)
                    )  # fmt: skip
        unstored = [tap for tap in plan.taps if tap.exception and not tap.stored]
        if unstored:
            with cur.copy(f"COPY exception_items ({_EXCEPTION_COLUMNS}) FROM STDIN") as copy:
                for tap in unstored:
                    r = tap.record
                    copy.write_row(
                        ("tap", None, None, tap.record_json, r.terminal_id, r.terminal_seq, batch_seq, r.issuer_id,
                         r.card_asn, r.offline_counter, r.amount_fen, tap.code, tap.message, "open", received_at)
                    )  # fmt: skip

    def _write_state(
        self,
        cur: psycopg.Cursor[Any],
        plan: WritePlan,
        batch_id: int,
        received_at: dt.datetime,
        postings: Sequence[Posting] = (),
        legs: Sequence[TransferLeg] = (),
    ) -> None:
        """Under the card locks: exception items of stored taps, account totals, settlement's running
        totals and transfer legs, cards, the answer.

        Pipelined: the statements are independent writes, sent in one round trip.
        """
        with cur.connection.pipeline():
            self._send_state(cur, plan, batch_id, received_at)
            if postings:
                cur.execute(POSTINGS_INSERT_PG, postings_pg_params(postings, received_at))
                cur.execute(TOTALS_UPSERT_PG, totals_pg_params(postings))
            if legs:
                cur.execute(TRANSFER_LEGS_INSERT_PG, transfer_legs_pg_params(legs))

    def _send_state(self, cur: psycopg.Cursor[Any], plan: WritePlan, batch_id: int, received_at: dt.datetime) -> None:
        queued = [tap for tap in plan.taps if tap.exception and tap.stored]
        if queued:
            terminal_id = queued[0].record.terminal_id
            assert all(t.record.terminal_id == terminal_id for t in queued), "only the uploader's records are stored"
            cur.execute(_TAP_EXCEPTIONS, (terminal_id, int_array(t.record.terminal_seq for t in queued)))
        if plan.refunds:
            cur.executemany(
                _REFUND,
                [
                    (r.load_id, r.issuer_id, r.card_asn, r.amount_fen, r.payer_account_id, received_at, received_at)
                    for r in plan.refunds
                ],
            )
        if plan.tap_refunds:
            cur.executemany(_TAP_REFUND, [(fen, tap_id) for tap_id, fen in plan.tap_refunds])
        if plan.resolutions:
            cur.executemany(_RESOLVE_TAP_OFF, [(r.note, RESOLVER, received_at, r.tap_id) for r in plan.resolutions])
        if plan.account_deltas:
            ordered = sorted(plan.account_deltas.items())
            cur.execute(
                _ACCOUNT_DELTAS,
                (
                    int_array(k for k, _ in ordered),
                    int_array(d for _, (d, _c) in ordered),
                    int_array(c for _, (_d, c) in ordered),
                ),
            )
        if plan.cards:
            _update_cards(cur, plan.cards)
        cur.execute(_DONE, (plan.answer.decode(), received_at, batch_id))


# --- COPY text format ----------------------------------------------------------------------
# Rows are written as COPY text lines, not through ``write_row``: a third of the cost per tap.
# Hex ids, numbers, times and our own codes never need escaping (the contract's patterns
# say so); free text (``ShortText`` fields, messages) goes through ``copy_text``.

_COPY_ESCAPES: Final = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
_NULL: Final = "\\N"


def copy_text(value: str | None) -> str:
    """A string as one COPY text field (NULL as ``\\N``); only backslash, tab, CR and LF are special."""
    if value is None:
        return _NULL
    if value.isprintable() and "\\" not in value:
        return value
    return value.translate(_COPY_ESCAPES)


def _copy_int(value: int | None) -> str:
    return _NULL if value is None else str(value)


def _tap_line(tap: TapRow, batch_id: int, batch_seq: int, received: str) -> str:
    """One ``taps`` row in ``_TAP_COLUMNS`` order."""
    r = tap.record
    fare = r.fare
    fare_fields = (
        f"{copy_text(fare.product_id)}\t{copy_text(fare.rider_category_id)}\t{copy_text(fare.leg_group_id)}"
        f"\t{fare.full_fare_fen}\t{fare.discount_fen}\t{_copy_int(fare.transfer_of)}"
        if fare is not None
        else "\\N\t\\N\t\\N\t\\N\t\\N\t\\N"
    )
    return (
        f"{tap.business_day}\t{batch_id}\t{batch_seq}\t{r.terminal_id}\t{r.terminal_seq}\t{r.psam_serial}"
        f"\t{r.issuer_id}\t{r.card_asn}\t{copy_text(r.card_type)}\t{r.tx_type}\t{r.amount_fen}"
        f"\t{r.balance_before_fen}\t{r.offline_counter}\t{tap.tx_at.isoformat()}\t{tap.tx_utc_offset_min}"
        f"\t{r.key_version}\t{r.alg_id}\t{r.tac}\t{copy_text(r.route_id)}\t{copy_text(r.stop_id)}"
        f"\t{copy_text(r.vehicle_id)}\t{fare_fields}\t{r.status}\t{tap.verdict}\t{tap.code}"
        f"\t{copy_text(tap.message)}\t{copy_text(tap.transfer_id)}\t{received}\t{_tap_off_fields(tap)}"
        f"\t{_gap_fields(tap)}\n"
    )


_NO_TAP_OFF: Final = "\\N\t\\N\t\\N\t\\N"
_NO_GAP: Final = "\\N\t\\N"


def _gap_fields(tap: TapRow) -> str:
    """``gap_first, gap_last`` (NULLs for a tap without a counter gap)."""
    return _NO_GAP if tap.gap is None else f"{tap.gap[0]}\t{tap.gap[1]}"


def _tap_off_fields(tap: TapRow) -> str:
    """``fare_tap_kind, fare_tariff_version, fare_refund_claimed_fen, refund_fen`` (NULLs for most taps)."""
    fare = tap.record.fare
    if fare is None or (fare.tap_kind is None and fare.tariff_version is None and tap.refund_fen is None):
        return _NO_TAP_OFF
    claimed = fare.refund_due_fen if fare.tap_kind == "tap_off" else None
    kind, version = copy_text(fare.tap_kind), copy_text(fare.tariff_version)
    return f"{kind}\t{version}\t{_copy_int(claimed)}\t{_copy_int(tap.refund_fen)}"


def int_array(values: Iterable[int | None]) -> str:
    """A PostgreSQL array literal of integers or NULL (psycopg's list dumper is pure Python and slow)."""
    return "{" + ",".join("NULL" if v is None else str(v) for v in values) + "}"


def text_array(values: Iterable[str | None]) -> str:
    """An array literal of strings that need no escaping (hex ids, ISO times) or NULL."""
    return "{" + ",".join("NULL" if v is None else f'"{v}"' for v in values) + "}"


def _time_literal(moment: dt.datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def _update_cards(cur: psycopg.Cursor[Any], cards: list[CardRow]) -> None:
    cur.execute(
        _CARD_UPDATES,
        (
            int_array(c.card_id for c in cards),
            int_array(c.shadow_balance_fen for c in cards),
            int_array(c.last_offline_counter for c in cards),
            text_array(_time_literal(c.last_tx_at) for c in cards),
            text_array(_time_literal(c.shadow_load_at) for c in cards),
            "{" + ",".join("t" if c.blocked else "f" for c in cards) + "}",
        ),
    )


def _card_states(rows: Iterable[tuple[Any, ...]]) -> tuple[dict[CardKey, CardState], dict[CardKey, str]]:
    cards: dict[CardKey, CardState] = {}
    versions: dict[CardKey, str] = {}
    for (
        issuer_id,
        asn,
        card_id,
        account_id,
        start,
        shadow,
        last,
        flags,
        available,
        load_at,
        last_tx_at,
        xmin,
        card_type,
    ) in rows:
        key = (issuer_id, asn)
        limited = bool(flags & ACCOUNT_FLAG_DEBITS_LIMITED)
        cards[key] = CardState(
            card_id, account_id, start, shadow, last, load_at, available if limited else None, last_tx_at, card_type
        )
        versions[key] = xmin
    return cards, versions


class PgReads:
    """``ingest_reads.BatchReads`` on the ingest connection: COPY'd keys and set-based reads."""

    def __init__(
        self,
        cur: psycopg.Cursor[Any],
        batch_id: int,
        denylist: Callable[[psycopg.Cursor[Any], int], Mapping[CardKey, Sequence[DenyInterval]]],
    ) -> None:
        self.cur = cur
        self.batch_id = batch_id
        self._denylist = denylist

    def snapshot(self, records: Sequence[TapRecord]) -> Snapshot:
        cur = self.cur
        cur.execute(_KEYS_DDL)
        with cur.copy(f"COPY ingest_keys ({_KEY_COLUMNS}) FROM STDIN") as copy:
            copy.write(
                "".join(
                    f"{i}\t{r.terminal_id}\t{r.terminal_seq}\t{r.issuer_id}\t{r.card_asn}\t{r.offline_counter}"
                    f"\t{r.tx_type}\n"
                    for i, r in enumerate(records)
                )
            )
        # The four reads go out together (one round trip): they need nothing from each other.
        conn = cur.connection
        with conn.pipeline():
            issuers_cur = conn.execute("SELECT issuer_id, own FROM issuers")
            cards_cur = conn.execute(_CARDS)
            seen_cur = conn.execute(_SEEN)
            version_cur = conn.execute(_DENYLIST_VERSION)
        issuers = issuers_cur.fetchall()
        cards, versions = _card_states(cards_cur.fetchall())
        version_row = version_cur.fetchone()
        seen_seq: set[tuple[str, int]] = set()
        seen_counter: set[tuple[str, str, int, int]] = set()
        for index, kind in seen_cur.fetchall():
            r = records[index]
            if kind == 1:
                seen_seq.add((r.terminal_id, r.terminal_seq))
            else:
                seen_counter.add((r.issuer_id, r.card_asn, r.offline_counter, r.tx_type))
        return Snapshot(
            own_issuers=frozenset(i for i, is_own in issuers if is_own),
            peer_issuers=frozenset(i for i, is_own in issuers if not is_own),
            cards=cards,
            versions=versions,
            seen_terminal_seqs=seen_seq,
            seen_card_counters=seen_counter,
            denylist=self._denylist(cur, int(version_row[0]) if version_row is not None else 0),
        )

    def late(self, late: Sequence[LateKey]) -> LateReads:
        params = {
            "issuers": text_array(k[0] for k in late),
            "asns": text_array(k[1] for k in late),
            "counters": int_array(k[2] for k in late),
            "batch": self.batch_id,  # in phase 2 this batch's own rows are visible: they are not neighbours
        }
        neighbours_cur = self.cur.execute(_NEIGHBOURS, params)
        neighbours: dict[LateKey, tuple[Neighbour | None, Neighbour | None]] = {}
        waiting: dict[LateKey, int] = {}
        for issuer_id, asn, counter, pc, pb, pa, nc, nb, na, waiting_id in neighbours_cur.fetchall():
            below = Neighbour(pc, pb, pa) if pc is not None else None
            above = Neighbour(nc, nb, na) if nc is not None else None
            neighbours[(issuer_id, asn, counter)] = (below, above)
            if waiting_id is not None:
                waiting[(issuer_id, asn, counter)] = int(waiting_id)
        return LateReads(neighbours, waiting)

    def legs(self, tap_ids: Sequence[int]) -> dict[int, Leg]:
        rows = self.cur.execute(_LEGS, (int_array(tap_ids),))
        return {leg.tap_id: leg for leg in map(leg_from_row, rows) if leg.tap_id is not None}

    def forwards_seen(self, keys: Sequence[ForwardKey]) -> set[ForwardKey]:
        rows = self.cur.execute(
            _FORWARDS_SEEN,
            (text_array(k[0] for k in keys), int_array(k[1] for k in keys), text_array(k[2] for k in keys)),
        )
        return {(t, s, d) for t, s, d in rows}

    def entries(self, keys: Sequence[LateKey]) -> dict[LateKey, Leg]:
        rows = self.cur.execute(
            _ENTRIES, (text_array(k[0] for k in keys), text_array(k[1] for k in keys), int_array(k[2] for k in keys))
        )
        out: dict[LateKey, Leg] = {}
        for issuer_id, asn, *leg_row in rows:
            leg = leg_from_row(leg_row)
            out[(issuer_id, asn, leg.counter)] = leg
        return out

    def day_legs(self, cards: Sequence[tuple[CardKey, dt.datetime, dt.datetime]]) -> dict[CardKey, list[Leg]]:
        return {
            key: [leg_from_row(row) for row in self.cur.execute(_DAY_LEGS, (key[0], key[1], start, end))]
            for key, start, end in cards
        }


__all__ = ["PgIngestor", "is_transient"]
