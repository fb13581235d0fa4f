"""Embedded ingest path: the same plan as ``ingest_pg`` through SQLAlchemy Core, on SQLite.

The equivalence tests run one scenario through this path and through ``ingest_pg`` and
compare every row that matters. SQLite has one writer at a time: the first
statement of the transaction is the ``batches`` claim, a write, so the write lock is taken
before anything is read and the reads cannot go stale.
"""

from __future__ import annotations

import bisect
import datetime as dt
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Final, TypeVar

import msgspec
from sqlalchemy import (
    Boolean,
    Engine,
    Integer,
    SmallInteger,
    String,
    column,
    func,
    insert,
    or_,
    select,
    table,
    tuple_,
    update,
)
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.orm import Session

from clearing.business_day import DEFAULT_CLOCK, BusinessDayClock
from clearing.contract import TapRecord
from clearing.contract.codes import Code
from clearing.db import session_factory
from clearing.ingest import (
    RESOLVER,
    IngestResult,
    Parties,
    Prepared,
    WritePlan,
    answer_bytes,
    batch_conflict,
    batch_days_and_routes,
    decide,
    unknown_terminal,
    with_retries,
)
from clearing.ingest_reads import ForwardKey, LateKey, LateReads, Snapshot, leg_from_row, read_context
from clearing.ingest_totals import (
    PayeeBook,
    read_assignments,
    sale_postings,
    sealed_through,
    transfer_legs,
    write_postings,
    write_transfer_legs,
)
from clearing.ledger import apply_account_deltas
from clearing.models import (
    LEDGER_CNY,
    Account,
    AccountFlag,
    BatchRow,
    Card,
    CardStatus,
    DenylistEntryRow,
    ExceptionItem,
    ExceptionState,
    ForwardState,
    InteropForward,
    Issuer,
    LoadKind,
    LoadState,
    PendingLoad,
    Tap,
    Terminal,
    Transfer,
    TransferCode,
    TransferState,
)
from clearing.validation import (
    CardKey,
    CardState,
    DenyInterval,
    Leg,
    Limits,
    Neighbour,
    RefundPricer,
    Resolution,
)

# interop_xian's issuer items, read by name (clearing never imports interop): a peer city's claim
# on one of our cards' keys (migration 0011)
_PEER_CLAIMS: Final = table(
    "interop_issuer_items",
    column("issuer_id", String),
    column("card_asn", String),
    column("offline_counter", Integer),
    column("tx_type", SmallInteger),
    column("claims_keys", Boolean),
)
_PEER_CLAIM_COLUMNS: Final = (
    _PEER_CLAIMS.c.issuer_id,
    _PEER_CLAIMS.c.card_asn,
    _PEER_CLAIMS.c.offline_counter,
    _PEER_CLAIMS.c.tx_type,
)
CHUNK: Final = 400  # row values per IN (...): far below SQLite's bound-variable limit
T = TypeVar("T")


def _chunks(items: Sequence[T]) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), CHUNK):
        yield items[start : start + CHUNK]


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, OperationalError):  # database locked past the busy timeout, lost connection
        return True
    if isinstance(exc, IntegrityError):  # lost a race on a natural key or transfer id
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


class SqlIngestor:
    """Ingests prepared batches through SQLAlchemy sessions on SQLite."""

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
        assert engine.dialect.name == "sqlite", "SqlIngestor is the SQLite path; PostgreSQL uses PgIngestor"
        self.engine = engine
        self.sessions = session_factory(engine)
        self.limits = limits or Limits()
        self.clock = clock
        self.refund_pricer = refund_pricer
        self.days = days
        # Settlement's dated payees and running totals (clearing.ingest_totals); off only to measure them.
        self.running_totals = running_totals
        # Test hook: called inside the transaction just before COMMIT (fault tests kill or stall here).
        self.before_commit: Callable[[Prepared], None] | None = None

    def ingest(self, prepared: Prepared) -> IngestResult:
        return with_retries(lambda: self._attempt(prepared), is_transient)

    def store_unavailable(self, exc: BaseException) -> bool:
        return isinstance(exc, OperationalError) or (isinstance(exc, DBAPIError) and exc.connection_invalidated)

    def _attempt(self, prepared: Prepared) -> IngestResult:
        with self.sessions() as session:
            try:
                result = self._transaction(session, prepared)
            except BaseException:
                session.rollback()
                raise
            return result

    def _transaction(self, session: Session, prepared: Prepared) -> IngestResult:
        batch = prepared.batch
        terminal_id = prepared.terminal_id
        received_at = self.clock()
        session.begin()
        claimed = session.execute(
            sqlite_insert(BatchRow)
            .values(
                terminal_id=terminal_id,
                batch_seq=batch.batch_seq,
                content_hash=prepared.digest,
                record_count=len(batch.records),
                status="queued",
                received_at=received_at,
            )
            .on_conflict_do_nothing(index_elements=["terminal_id", "batch_seq"])
            .returning(BatchRow.id)
        ).scalar_one_or_none()
        if claimed is None:  # uploaded before: answered already, or queued and ours to clear now
            stored = session.execute(
                select(BatchRow.id, BatchRow.content_hash, BatchRow.status, BatchRow.answer).where(
                    BatchRow.terminal_id == terminal_id, BatchRow.batch_seq == batch.batch_seq
                )
            ).one()
            if stored[1] != prepared.digest:
                session.rollback()
                raise batch_conflict(terminal_id, batch.batch_seq)
            if stored[2] == "done":
                session.rollback()
                assert stored[3] is not None
                return IngestResult(answer_bytes(stored[3]), replayed=True)
            claimed = stored[0]
        terminal = session.execute(
            select(Terminal.active, Terminal.payable_account_id).where(Terminal.terminal_id == terminal_id)
        ).one_or_none()
        if terminal is None or not terminal[0]:
            raise unknown_terminal(terminal_id)
        ctx, _ = read_context(
            SqlReads(session),
            batch.records,
            uploader=terminal_id,
            now=received_at,
            limits=self.limits,
            refund_pricer=self.refund_pricer,
        )
        payees: PayeeBook | None = None
        sealed = None
        if self.running_totals:
            sealed = sealed_through(session)
            batch_days, routes = batch_days_and_routes(prepared, received_at, self.days)
            payees = read_assignments(session, terminal_id, routes, batch_days, int(terminal[1]))
        parties = Parties(int(terminal[1]), {key: state.account_id for key, state in ctx.cards.items()}, payees)
        plan = decide(prepared, ctx, parties, received_at, self.days)
        self._write(session, plan, int(claimed), batch.batch_seq, received_at)
        if self.running_totals:
            source = f"batch:{terminal_id}:{batch.batch_seq}"
            write_postings(session, sale_postings(source, plan.sales, sealed), received_at)
            assert payees is not None
            write_transfer_legs(session, transfer_legs(plan.taps, payees, sealed))
        if self.before_commit is not None:
            self.before_commit(prepared)
        session.commit()
        return IngestResult(plan.answer, replayed=False)

    def _write(
        self, session: Session, plan: WritePlan, batch_id: int, batch_seq: int, received_at: dt.datetime
    ) -> None:
        next_id = int(session.execute(select(func.coalesce(func.max(Tap.id), 0))).scalar_one()) + 1
        accounts = {t.id: t for t in plan.transfers}
        tap_rows: list[dict[str, Any]] = []
        exception_rows: list[dict[str, Any]] = []
        for tap in plan.taps:
            r = tap.record
            fare = r.fare
            tap_id = None
            if tap.exception:
                exception_rows.append(
                    {
                        "kind": "tap", "tap_id": next_id if tap.stored else None,
                        "tap_business_day": tap.business_day if tap.stored else None,
                        "record": msgspec.json.decode(tap.record_json) if tap.record_json else None,
                        "terminal_id": r.terminal_id, "terminal_seq": r.terminal_seq, "batch_seq": batch_seq,
                        "issuer_id": r.issuer_id, "card_asn": r.card_asn, "offline_counter": r.offline_counter,
                        "amount_fen": r.amount_fen, "code": tap.code, "message": tap.message,
                        "state": ExceptionState.OPEN.value, "created_at": received_at,
                    }
                )  # fmt: skip
            if not tap.stored:
                continue
            tap_id, next_id = next_id, next_id + 1
            tap_rows.append(
                {
                    "id": tap_id, "business_day": tap.business_day, "batch_id": batch_id, "batch_seq": batch_seq,
                    "terminal_id": r.terminal_id, "terminal_seq": r.terminal_seq, "psam_serial": r.psam_serial,
                    "issuer_id": r.issuer_id, "card_asn": r.card_asn, "card_type": r.card_type,
                    "tx_type": r.tx_type, "amount_fen": r.amount_fen, "balance_before_fen": r.balance_before_fen,
                    "offline_counter": r.offline_counter, "tx_time": tap.tx_at,
                    "tx_utc_offset_min": tap.tx_utc_offset_min, "key_version": r.key_version, "alg_id": r.alg_id,
                    "tac": r.tac, "route_id": r.route_id, "stop_id": r.stop_id, "vehicle_id": r.vehicle_id,
                    "fare_product_id": fare.product_id if fare else None,
                    "fare_rider_category_id": fare.rider_category_id if fare else None,
                    "fare_leg_group_id": fare.leg_group_id if fare else None,
                    "fare_full_fen": fare.full_fare_fen if fare else None,
                    "fare_discount_fen": fare.discount_fen if fare else None,
                    "fare_transfer_of": fare.transfer_of if fare else None,
                    "status": r.status, "verdict": tap.verdict, "code": tap.code, "message": tap.message,
                    "transfer_id": tap.transfer_id, "received_at": received_at,
                    "fare_tap_kind": fare.tap_kind if fare else None,
                    "fare_tariff_version": fare.tariff_version if fare else None,
                    "fare_refund_claimed_fen": fare.refund_due_fen if fare and fare.tap_kind == "tap_off" else None,
                    "refund_fen": tap.refund_fen,
                    "gap_first": tap.gap[0] if tap.gap else None, "gap_last": tap.gap[1] if tap.gap else None,
                }
            )  # fmt: skip
        _insert(session, Tap, tap_rows)
        _insert(session, ExceptionItem, exception_rows)
        _insert(
            session,
            Transfer,
            [
                {
                    "id": t.id, "debit_account_id": t.debit_account_id, "credit_account_id": t.credit_account_id,
                    "amount_fen": t.amount_fen, "ledger": LEDGER_CNY, "code": int(TransferCode.PURCHASE),
                    "state": TransferState.POSTED.value, "pending_id": None, "source_ref": t.source_ref,
                    "created_at": received_at,
                }
                for t in accounts.values()
            ],
        )  # fmt: skip
        _insert(
            session,
            PendingLoad,
            [
                {
                    "id": r.load_id, "issuer_id": r.issuer_id, "card_asn": r.card_asn, "amount_fen": r.amount_fen,
                    "state": LoadState.PENDING.value, "kind": LoadKind.REFUND.value,
                    "payer_account_id": r.payer_account_id, "created_at": received_at, "updated_at": received_at,
                }
                for r in plan.refunds
            ],
        )  # fmt: skip
        _insert(
            session,
            InteropForward,
            [
                {
                    "batch_id": batch_id, "batch_seq": batch_seq, "terminal_id": f.record.terminal_id,
                    "terminal_seq": f.record.terminal_seq, "record_digest": f.digest, "issuer_id": f.record.issuer_id,
                    "card_asn": f.record.card_asn, "offline_counter": f.record.offline_counter,
                    "tx_type": f.record.tx_type, "amount_fen": f.record.amount_fen, "tx_time": f.tx_at,
                    "business_day": f.business_day, "record": msgspec.json.decode(f.record_json),
                    "state": ForwardState.FORWARDED.value, "received_at": received_at,
                }
                for f in plan.forwards
            ],
        )  # fmt: skip
        if plan.tap_refunds:
            session.execute(update(Tap), [{"id": tap_id, "refund_fen": fen} for tap_id, fen in plan.tap_refunds])
        _resolve(session, plan.resolutions, received_at)
        apply_account_deltas(session, plan.account_deltas)
        card_rows = [
            {
                "id": card.card_id,
                "shadow_balance_fen": card.shadow_balance_fen,
                "last_offline_counter": card.last_offline_counter,
                "last_tx_at": card.last_tx_at,
                "shadow_load_at": card.shadow_load_at,
                **({"status": CardStatus.BLOCKED.value} if card.blocked else {}),
            }
            for card in plan.cards
        ]
        if card_rows:  # ORM bulk UPDATE by primary key: one executemany per set of columns
            session.execute(update(Card), card_rows)
        session.execute(
            update(BatchRow)
            .where(BatchRow.id == batch_id)
            .values(status="done", answer=plan.answer.decode(), done_at=received_at, body=None)
        )


def _resolve(session: Session, resolutions: Sequence[Resolution], now: dt.datetime) -> None:
    """Close the tap-off items clearing resolved itself (still open: a person may have decided first)."""
    for res in resolutions:
        session.execute(
            update(ExceptionItem)
            .where(
                ExceptionItem.tap_id == res.tap_id,
                ExceptionItem.code == Code.S_TAPOFF_NO_ENTRY.value,
                ExceptionItem.state == ExceptionState.OPEN.value,
            )
            .values(state=ExceptionState.RESOLVED.value, note=res.note, decided_by=RESOLVER, decided_at=now)
        )


def _insert(session: Session, model: type[Any], rows: Iterable[dict[str, Any]]) -> None:
    rows = list(rows)
    if rows:
        session.execute(insert(model), rows)


_POSTED = or_(Tap.verdict == "accepted", Tap.verdict == "suspect")
_LEG_COLUMNS = (
    Tap.offline_counter, Tap.terminal_id, Tap.terminal_seq, Tap.route_id, Tap.vehicle_id, Tap.stop_id, Tap.tx_time,
    Tap.amount_fen, Tap.fare_tap_kind, Tap.fare_tariff_version, Tap.fare_rider_category_id,
    Tap.fare_refund_claimed_fen, Transfer.credit_account_id, Tap.id,
)  # fmt: skip


class SqlReads:
    """``ingest_reads.BatchReads`` through SQLAlchemy Core, in the ingest transaction (SQLite)."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def snapshot(self, records: Sequence[TapRecord]) -> Snapshot:
        session = self.session
        issuers = session.execute(select(Issuer.issuer_id, Issuer.own)).all()
        card_keys = sorted({(r.issuer_id, r.card_asn) for r in records})
        cards: dict[CardKey, CardState] = {}
        for chunk in _chunks(card_keys):
            rows = session.execute(
                select(
                    Card.issuer_id, Card.card_asn, Card.id, Card.account_id, Card.start_date,
                    Card.shadow_balance_fen, Card.last_offline_counter, Card.shadow_load_at, Card.last_tx_at,
                    Card.card_type, Account.flags,
                    Account.credits_posted - Account.debits_posted - Account.debits_pending,
                )
                .join(Account, Account.id == Card.account_id)
                .where(tuple_(Card.issuer_id, Card.card_asn).in_(chunk))
            )  # fmt: skip
            for issuer_id, asn, card_id, account_id, start, shadow, last, load_at, last_tx, kind, flags, avail in rows:
                limited = bool(flags & AccountFlag.DEBITS_MUST_NOT_EXCEED_CREDITS)
                cards[(issuer_id, asn)] = CardState(
                    card_id, account_id, start, shadow, last, load_at, avail if limited else None, last_tx, kind
                )
        seqs = sorted({(r.terminal_id, r.terminal_seq) for r in records})
        seen_seq: set[tuple[str, int]] = set()
        for seq_chunk in _chunks(seqs):
            seen_seq.update(
                (t, s)
                for t, s in session.execute(
                    select(Tap.terminal_id, Tap.terminal_seq).where(
                        tuple_(Tap.terminal_id, Tap.terminal_seq).in_(seq_chunk)
                    )
                )
            )
        counters = sorted({(r.issuer_id, r.card_asn, r.offline_counter, r.tx_type) for r in records})
        seen_counter: set[tuple[str, str, int, int]] = set()
        for ctr_chunk in _chunks(counters):
            columns = (Tap.issuer_id, Tap.card_asn, Tap.offline_counter, Tap.tx_type)
            seen_counter.update(
                (i, a, c, t) for i, a, c, t in session.execute(select(*columns).where(tuple_(*columns).in_(ctr_chunk)))
            )
            # a card key a peer city's acquirer already claimed for our card (interop_xian's table, by name)
            seen_counter.update(
                (i, a, c, t)
                for i, a, c, t in session.execute(
                    select(*_PEER_CLAIM_COLUMNS)
                    .select_from(_PEER_CLAIMS)
                    .where(_PEER_CLAIMS.c.claims_keys, tuple_(*_PEER_CLAIM_COLUMNS).in_(ctr_chunk))
                )
            )
        denylist: dict[CardKey, list[DenyInterval]] = {}
        for card_chunk in _chunks(card_keys):
            for issuer_id, asn, effective_at, removed_at in session.execute(
                select(
                    DenylistEntryRow.issuer_id,
                    DenylistEntryRow.card_asn,
                    DenylistEntryRow.effective_at,
                    DenylistEntryRow.removed_at,
                ).where(
                    tuple_(DenylistEntryRow.issuer_id, DenylistEntryRow.card_asn).in_(card_chunk),
                )
            ):
                denylist.setdefault((issuer_id, asn), []).append(DenyInterval(effective_at, removed_at))
        return Snapshot(
            own_issuers=frozenset(i for i, own in issuers if own),
            peer_issuers=frozenset(i for i, own in issuers if not own),
            cards=cards,
            versions={},
            seen_terminal_seqs=seen_seq,
            seen_card_counters=seen_counter,
            denylist=denylist,
        )

    def late(self, late: Sequence[LateKey]) -> LateReads:
        """The cleared purchases next to each late record's counter (one read per card, not two per
        record: a card's cleared taps come back in counter order and are bisected), and the open
        gaps those counters fall in."""
        history: dict[tuple[str, str], list[tuple[int, int, int, int | None]]] = {}
        card_keys = sorted({(issuer_id, asn) for issuer_id, asn, _ in late})
        for chunk in _chunks(card_keys):
            rows = self.session.execute(
                select(
                    Tap.issuer_id, Tap.card_asn, Tap.offline_counter, Tap.balance_before_fen, Tap.amount_fen,
                    Tap.id, Tap.fare_tap_kind, Tap.refund_fen,
                )
                .where(tuple_(Tap.issuer_id, Tap.card_asn).in_(chunk), _POSTED)
                .order_by(Tap.issuer_id, Tap.card_asn, Tap.offline_counter)
            )  # fmt: skip
            for issuer_id, asn, counter, before, amount, tap_id, kind, refund_fen in rows:
                waiting = tap_id if kind == "tap_off" and refund_fen is None else None
                history.setdefault((issuer_id, asn), []).append((counter, before, amount, waiting))
        neighbours: dict[LateKey, tuple[Neighbour | None, Neighbour | None]] = {}
        waiting_ids: dict[LateKey, int] = {}
        for issuer_id, asn, counter in late:
            taps = history.get((issuer_id, asn), [])
            split = bisect.bisect_right(taps, counter, key=lambda t: t[0])  # taps[:split] are at or below
            below = Neighbour(*taps[split - 1][:3]) if split > 0 else None
            above = Neighbour(*taps[split][:3]) if split < len(taps) else None
            neighbours[(issuer_id, asn, counter)] = (below, above)
            if split < len(taps) and taps[split][3] is not None:
                waiting_ids[(issuer_id, asn, counter)] = int(taps[split][3])  # type: ignore[arg-type]
        return LateReads(neighbours, waiting_ids)

    def legs(self, tap_ids: Sequence[int]) -> dict[int, Leg]:
        rows = self.session.execute(
            select(*_LEG_COLUMNS).outerjoin(Transfer, Transfer.id == Tap.transfer_id).where(Tap.id.in_(list(tap_ids)))
        )
        return {leg.tap_id: leg for leg in map(leg_from_row, rows) if leg.tap_id is not None}

    def forwards_seen(self, keys: Sequence[ForwardKey]) -> set[ForwardKey]:
        found: set[ForwardKey] = set()
        columns = (InteropForward.terminal_id, InteropForward.terminal_seq, InteropForward.record_digest)
        for chunk in _chunks(sorted(set(keys))):
            rows = self.session.execute(select(*columns).where(tuple_(*columns).in_(chunk)))
            found.update((t, s, d) for t, s, d in rows)
        return found

    def entries(self, keys: Sequence[LateKey]) -> dict[LateKey, Leg]:
        out: dict[LateKey, Leg] = {}
        for chunk in _chunks(sorted(set(keys))):
            rows = self.session.execute(
                select(Tap.issuer_id, Tap.card_asn, *_LEG_COLUMNS)
                .outerjoin(Transfer, Transfer.id == Tap.transfer_id)
                .where(tuple_(Tap.issuer_id, Tap.card_asn, Tap.offline_counter).in_(chunk), _POSTED)
            )
            for issuer_id, asn, *leg_row in rows:
                leg = leg_from_row(leg_row)
                out[(issuer_id, asn, leg.counter)] = leg
        return out

    def day_legs(self, cards: Sequence[tuple[CardKey, dt.datetime, dt.datetime]]) -> dict[CardKey, list[Leg]]:
        out: dict[CardKey, list[Leg]] = {}
        for (issuer_id, asn), start, end in cards:
            rows = self.session.execute(
                select(*_LEG_COLUMNS)
                .outerjoin(Transfer, Transfer.id == Tap.transfer_id)
                .where(
                    Tap.issuer_id == issuer_id, Tap.card_asn == asn, _POSTED, Tap.tx_time >= start, Tap.tx_time < end
                )
                .order_by(Tap.offline_counter)
            )
            out[(issuer_id, asn)] = [leg_from_row(row) for row in rows]
        return out


__all__ = ["SqlIngestor", "is_transient"]
