"""Settlement's running totals and dated payees, written in the ingest transaction (issue 11, "Windows").

Settlement owns the tables (``settlement/models.py``, migration 0009); clearing writes them
by name here so that clearing never imports settlement (ARCHITECTURE.md). What ingest does per
batch, in the batch's own transaction:

1. **Who is paid.** A tap credits the operator the tap's *route* is assigned to on the tap's
   business day, else the operator the *terminal* is assigned to that day, else the terminal's
   registered operator (``settlement_route_assignments``, ``settlement_terminal_assignments``,
   valid for ``[valid_from, valid_to)``). One read per batch (``read_assignments``); resolving
   is pure (``PayeeBook.payee``).
2. **Which window.** A business day's window is open until its close seals it. Closes seal
   days in order, so the sealed days are exactly those up to the latest sealed day ``H``
   (``max(settlement_windows.business_day)``), and a transfer of event day ``d`` goes to window
   ``max(d, H + 1)`` (``window_of``): its own day while that is open, else the next open
   window (then it is *late*). On PostgreSQL every writer takes a *shared* advisory lock
   (``WINDOW_LOCK_KEY``) before reading ``H`` and holds it to COMMIT; the seal takes it
   *exclusively*, so it waits for the batches in flight and the batches that start meanwhile
   wait the few milliseconds of the seal and then read the new ``H``: a transfer posting while
   a close runs goes to the next window, and none can join a sealed one. On SQLite the single
   write lock (the batch claim is the transaction's first statement) does the same.
3. **Running totals.** The batch's postings are aggregated per (payee, event day): one row of
   ``settlement_postings`` (the journal: source, payee, event day, window) and one upsert of
   ``settlement_totals`` per payee and window — never a row per tap.
4. **Transfer legs.** Each posted tap that is a transfer (``fare.transfer_of`` set; not a
   tap-off, which ends its tap-on's leg) gets one row of ``settlement_transfer_legs`` in the
   window its sale joined, for the close's discount sharing: one multi-row insert per batch,
   most columns copied from the tap row just written. Nothing for any other tap.

Decisions and refunds made outside ingest (``exceptions_queue``, ``loads``) call ``record_event``:
they fall in the window of the day the decision is made.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, NamedTuple

from sqlalchemy import text
from sqlalchemy.orm import Session

from clearing.business_day import DEFAULT_CLOCK, BusinessDayClock

if TYPE_CHECKING:
    from clearing.ingest import TapRow

# The advisory lock every writer of running totals holds shared and the seal holds exclusively
# (PostgreSQL); 'YKST' in ASCII, one key for every window (seals go in day order).
WINDOW_LOCK_KEY: Final = 0x594B5354
ONE_DAY: Final = dt.timedelta(days=1)
SALE: Final = "sale"
REFUND: Final = "refund"

LATEST_SEALED_SQL: Final = "SELECT max(business_day) FROM settlement_windows"
LOCK_SHARED_SQL: Final = f"SELECT pg_advisory_xact_lock_shared({WINDOW_LOCK_KEY})"
LOCK_EXCLUSIVE_SQL: Final = f"SELECT pg_advisory_xact_lock({WINDOW_LOCK_KEY})"
SQLITE_WRITE_LOCK_SQL: Final = "UPDATE settlement_windows SET state = state WHERE business_day IS NULL"

_ASSIGNMENT_COLUMNS: Final = "a.valid_from, a.valid_to, o.payable_account_id"
_ROUTE_ASSIGNMENTS_PG: Final = f"""
SELECT 'route', a.route_id, {_ASSIGNMENT_COLUMNS}
FROM settlement_route_assignments a JOIN operators o ON o.operator_id = a.operator_id
WHERE a.route_id = ANY(%s) AND a.valid_from <= %s AND (a.valid_to IS NULL OR a.valid_to > %s)
UNION ALL
SELECT 'terminal', a.terminal_id, {_ASSIGNMENT_COLUMNS}
FROM settlement_terminal_assignments a JOIN operators o ON o.operator_id = a.operator_id
WHERE a.terminal_id = %s AND a.valid_from <= %s AND (a.valid_to IS NULL OR a.valid_to > %s)
"""  # noqa: S608 - only a constant column list is interpolated
_ASSIGNMENTS_SQL: Final = f"""
SELECT 'route', a.route_id, {_ASSIGNMENT_COLUMNS}
FROM settlement_route_assignments a JOIN operators o ON o.operator_id = a.operator_id
WHERE a.route_id IN :routes AND a.valid_from <= :last AND (a.valid_to IS NULL OR a.valid_to > :first)
UNION ALL
SELECT 'terminal', a.terminal_id, {_ASSIGNMENT_COLUMNS}
FROM settlement_terminal_assignments a JOIN operators o ON o.operator_id = a.operator_id
WHERE a.terminal_id = :terminal AND a.valid_from <= :last AND (a.valid_to IS NULL OR a.valid_to > :first)
"""  # noqa: S608
_TERMINAL_ASSIGNMENTS_SQL: Final = f"""
SELECT 'terminal', a.terminal_id, {_ASSIGNMENT_COLUMNS}
FROM settlement_terminal_assignments a JOIN operators o ON o.operator_id = a.operator_id
WHERE a.terminal_id = :terminal AND a.valid_from <= :last AND (a.valid_to IS NULL OR a.valid_to > :first)
"""  # noqa: S608

POSTING_COLUMNS: Final = (
    "window_day, payee_account_id, kind, source_ref, event_day, count, amount_fen, late, created_at"
)
_TOTALS_UPDATE: Final = """
ON CONFLICT (window_day, payee_account_id) DO UPDATE SET
    count = settlement_totals.count + excluded.count,
    gross_fen = settlement_totals.gross_fen + excluded.gross_fen,
    refund_count = settlement_totals.refund_count + excluded.refund_count,
    refunds_fen = settlement_totals.refunds_fen + excluded.refunds_fen,
    late_count = settlement_totals.late_count + excluded.late_count,
    late_fen = settlement_totals.late_fen + excluded.late_fen
"""
TOTALS_COLUMNS: Final = (
    "window_day, payee_account_id, count, gross_fen, refund_count, refunds_fen, late_count, late_fen"
)
TOTALS_UPSERT_PG: Final = (
    f"INSERT INTO settlement_totals ({TOTALS_COLUMNS}) SELECT * FROM unnest(%s::date[], %s::bigint[], "  # noqa: S608
    "%s::bigint[], %s::bigint[], %s::bigint[], %s::bigint[], %s::bigint[], %s::bigint[])" + _TOTALS_UPDATE
)
POSTINGS_INSERT_PG: Final = (
    f"INSERT INTO settlement_postings ({POSTING_COLUMNS}) SELECT * FROM unnest(%s::date[], %s::bigint[], "  # noqa: S608
    "%s::text[], %s::text[], %s::date[], %s::int[], %s::bigint[], %s::bool[], %s::timestamptz[])"
)
_TOTALS_UPSERT: Final = (
    f"INSERT INTO settlement_totals ({TOTALS_COLUMNS}) VALUES (:window_day, :payee_account_id, :count, "  # noqa: S608
    ":gross_fen, :refund_count, :refunds_fen, :late_count, :late_fen)" + _TOTALS_UPDATE
)
_POSTING_INSERT: Final = (
    f"INSERT INTO settlement_postings ({POSTING_COLUMNS}) VALUES (:window_day, :payee_account_id, :kind, "  # noqa: S608
    ":source_ref, :event_day, :count, :amount_fen, :late, :created_at)"
)


def window_of(event_day: dt.date, sealed_through: dt.date | None) -> dt.date:
    """The window a transfer of ``event_day`` joins when every day up to ``sealed_through`` is sealed."""
    if sealed_through is None or event_day > sealed_through:
        return event_day
    return sealed_through + ONE_DAY


class Posting(NamedTuple):
    """One source's contribution to one payee's window (a row of ``settlement_postings``)."""

    window_day: dt.date
    payee_account_id: int
    kind: str  # SALE or REFUND
    source_ref: str
    event_day: dt.date
    records: int  # transfers (``count`` would shadow ``tuple.count``)
    amount_fen: int

    @property
    def late(self) -> bool:
        return self.event_day < self.window_day


def sale_postings(
    source_ref: str, sales: Mapping[tuple[int, dt.date], tuple[int, int]], sealed_through: dt.date | None
) -> list[Posting]:
    """A batch's sales, aggregated per (payee account, event day), as postings in their windows."""
    return [
        Posting(window_of(day, sealed_through), account, SALE, source_ref, day, count, fen)
        for (account, day), (count, fen) in sorted(sales.items())
        if count > 0
    ]


def totals_rows(postings: Iterable[Posting]) -> list[tuple[dt.date, int, int, int, int, int, int, int]]:
    """The increments of ``settlement_totals`` per (window, payee): one upsert row each."""
    acc: dict[tuple[dt.date, int], list[int]] = {}
    for p in postings:
        row = acc.setdefault((p.window_day, p.payee_account_id), [0, 0, 0, 0, 0, 0])
        if p.kind == SALE:
            row[0] += p.records
            row[1] += p.amount_fen
        else:
            row[2] += p.records
            row[3] += p.amount_fen
        if p.late:
            row[4] += p.records
            row[5] += p.amount_fen
    return [(w, a, *v) for (w, a), v in sorted(acc.items())]  # type: ignore[misc]


# --- who is paid ----------------------------------------------------------------------------


class Assignment(NamedTuple):
    scope: str  # "route" or "terminal"
    key: str  # route id or terminal id
    valid_from: dt.date
    valid_to: dt.date | None
    payable_account_id: int


@dataclass(frozen=True, slots=True)
class PayeeBook:
    """The payee of each tap of one batch: route assignment, else terminal assignment, else the default."""

    default_account_id: int
    assignments: tuple[Assignment, ...] = ()

    def payee(self, route_id: str | None, day: dt.date) -> int:
        terminal_hit: int | None = None
        for a in self.assignments:
            if a.valid_from <= day and (a.valid_to is None or day < a.valid_to):
                if a.scope == "route" and a.key == route_id:
                    return a.payable_account_id
                if a.scope == "terminal":
                    terminal_hit = a.payable_account_id
        return self.default_account_id if terminal_hit is None else terminal_hit


def as_date(value: object) -> dt.date:
    """A date read through text SQL (SQLite gives ISO text, PostgreSQL a date)."""
    return value if isinstance(value, dt.date) else dt.date.fromisoformat(str(value))


def _assignments(rows: Iterable[Sequence[Any]]) -> tuple[Assignment, ...]:
    return tuple(
        Assignment(str(s), str(k), as_date(f), None if t is None else as_date(t), int(p)) for s, k, f, t, p in rows
    )


def read_assignments_pg(
    cur: Any, terminal_id: str, routes: Iterable[str], days: Iterable[dt.date], default_account_id: int
) -> PayeeBook:
    """The batch's ``PayeeBook`` on a psycopg cursor (one indexed read)."""
    span = sorted(set(days))
    if not span:
        return PayeeBook(default_account_id)
    route_list = sorted(set(routes))
    rows = cur.execute(
        _ROUTE_ASSIGNMENTS_PG, (route_list, span[-1], span[0], terminal_id, span[-1], span[0])
    ).fetchall()
    return PayeeBook(default_account_id, _assignments(rows))


def read_assignments(
    session: Session, terminal_id: str, routes: Iterable[str], days: Iterable[dt.date], default_account_id: int
) -> PayeeBook:
    """The batch's ``PayeeBook`` through SQLAlchemy (SQLite, and decisions on either database)."""
    span = sorted(set(days))
    if not span:
        return PayeeBook(default_account_id)
    route_list = sorted(set(routes))
    params: dict[str, object] = {"terminal": terminal_id, "first": span[0], "last": span[-1]}
    if route_list:
        from sqlalchemy import bindparam

        stmt = text(_ASSIGNMENTS_SQL).bindparams(bindparam("routes", expanding=True))
        params["routes"] = route_list
    else:
        stmt = text(_TERMINAL_ASSIGNMENTS_SQL)
    return PayeeBook(default_account_id, _assignments(session.execute(stmt, params).all()))


def payee_of_tap(
    session: Session, terminal_id: str, route_id: str | None, day: dt.date, default_account_id: int
) -> int:
    """The payable a tap of ``day`` credits (an exception accepted later pays the tap day's payee)."""
    book = read_assignments(session, terminal_id, [route_id] if route_id else [], [day], default_account_id)
    return book.payee(route_id, day)


# --- writing --------------------------------------------------------------------------------


def sealed_through(session: Session) -> dt.date | None:
    """The latest sealed business day, after taking the window lock shared (PostgreSQL) or SQLite's write lock.

    SQLite: a read before the transaction's first write runs on its own (pysqlite begins at the
    first write), so a seal could commit between this read and the caller's writes, which would
    then join the window just sealed (a decision's transfer leg, an interop sale); a write that
    changes nothing takes the one write lock first, as the seal does (``windows.take_write_lock``).
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text(LOCK_SHARED_SQL))
    else:
        session.execute(text(SQLITE_WRITE_LOCK_SQL))
    value = session.execute(text(LATEST_SEALED_SQL)).scalar_one_or_none()
    return None if value is None else as_date(value)


def write_postings(session: Session, postings: Sequence[Posting], now: dt.datetime) -> None:
    """The journal rows and the totals upserts of ``postings`` (SQLAlchemy; both databases)."""
    if not postings:
        return
    session.execute(
        text(_POSTING_INSERT),
        [
            {
                "window_day": p.window_day, "payee_account_id": p.payee_account_id, "kind": p.kind,
                "source_ref": p.source_ref, "event_day": p.event_day, "count": p.records,
                "amount_fen": p.amount_fen, "late": p.late, "created_at": _stored_time(session, now),
            }
            for p in postings
        ],
    )  # fmt: skip
    columns = ("window_day", "payee_account_id", "count", "gross_fen", "refund_count", "refunds_fen")
    session.execute(
        text(_TOTALS_UPSERT),
        [dict(zip((*columns, "late_count", "late_fen"), row, strict=True)) for row in totals_rows(postings)],
    )


def _stored_time(session: Session, moment: dt.datetime) -> dt.datetime:
    """A time as ``UTCDateTime`` stores it (text SQL bypasses the type): UTC, naive on SQLite."""
    utc = moment.astimezone(dt.UTC)
    return utc.replace(tzinfo=None) if session.get_bind().dialect.name == "sqlite" else utc


def postings_pg_params(postings: Sequence[Posting], now: dt.datetime) -> tuple[object, ...]:
    """Arrays for ``POSTINGS_INSERT_PG``."""
    return (
        [p.window_day for p in postings],
        [p.payee_account_id for p in postings],
        [p.kind for p in postings],
        [p.source_ref for p in postings],
        [p.event_day for p in postings],
        [p.records for p in postings],
        [p.amount_fen for p in postings],
        [p.late for p in postings],
        [now for _ in postings],
    )


def totals_pg_params(postings: Sequence[Posting]) -> tuple[object, ...]:
    """Arrays for ``TOTALS_UPSERT_PG``."""
    rows = totals_rows(postings)
    return tuple([row[i] for row in rows] for i in range(8))


# --- transfer legs (settlement's discount sharing) --------------------------------------------

# Everything but the window and the payee comes from the tap row itself, found on its unique
# (terminal_id, terminal_seq) index: the row was written earlier in the same transaction.
_LEG_COLUMNS: Final = (
    "window_day, issuer_id, card_asn, terminal_id, terminal_seq, offline_counter, tx_time, transfer_of, "
    "product_id, rider_category_id, tariff_version, charged_fen, full_fare_fen, payee_account_id, tap_id"
)
_LEG_FROM_TAP: Final = (
    "t.issuer_id, t.card_asn, t.terminal_id, t.terminal_seq, t.offline_counter, t.tx_time, t.fare_transfer_of, "
    "t.fare_product_id, t.fare_rider_category_id, t.fare_tariff_version, t.amount_fen, t.fare_full_fen"
)
TRANSFER_LEGS_INSERT_PG: Final = (
    f"INSERT INTO settlement_transfer_legs ({_LEG_COLUMNS}) SELECT v.window_day, {_LEG_FROM_TAP}, v.payee, t.id "  # noqa: S608
    "FROM unnest(%s::bigint[], %s::date[], %s::bigint[]) AS v(seq, window_day, payee) "
    "JOIN taps t ON t.terminal_id = %s AND t.terminal_seq = v.seq "
    "ON CONFLICT (terminal_id, terminal_seq) DO NOTHING"
)
_TRANSFER_LEG_INSERT: Final = (
    f"INSERT INTO settlement_transfer_legs ({_LEG_COLUMNS}) SELECT :window_day, {_LEG_FROM_TAP}, :payee, t.id "  # noqa: S608
    "FROM taps t WHERE t.terminal_id = :terminal_id AND t.terminal_seq = :seq "
    "ON CONFLICT (terminal_id, terminal_seq) DO NOTHING"
)


class TransferLeg(NamedTuple):
    """A posted transfer tap: its key, the window its sale joined and the payable it credited."""

    terminal_id: str
    terminal_seq: int
    window_day: dt.date
    payee_account_id: int


def is_transfer_leg(fare: Any) -> bool:
    """A tap that is a leg transferred from an earlier one (a tap-off only ends its tap-on's leg)."""
    return fare is not None and fare.transfer_of is not None and fare.tap_kind != "tap_off"


def transfer_legs(taps: Iterable[TapRow], payees: PayeeBook, sealed: dt.date | None) -> list[TransferLeg]:
    """The batch's posted transfer taps, each with its window and payee (the sale's: ``make_plan``)."""
    legs: list[TransferLeg] = []
    for tap in taps:
        r = tap.record
        if not (tap.stored and is_transfer_leg(r.fare) and tap.verdict in ("accepted", "suspect")):
            continue
        if tap.transfer_id is None and r.amount_fen != 0:
            continue  # stored, not posted (a debit the card's liability could not cover)
        payee = payees.payee(r.route_id, tap.business_day)
        legs.append(TransferLeg(r.terminal_id, r.terminal_seq, window_of(tap.business_day, sealed), payee))
    return legs


def transfer_legs_pg_params(legs: Sequence[TransferLeg]) -> tuple[object, ...]:
    """Arguments of ``TRANSFER_LEGS_INSERT_PG`` (the uploader's taps only: one terminal)."""
    assert len({leg.terminal_id for leg in legs}) == 1, "a batch stores only its uploader's taps"
    return (
        [leg.terminal_seq for leg in legs],
        [leg.window_day for leg in legs],
        [leg.payee_account_id for leg in legs],
        legs[0].terminal_id,
    )


def write_transfer_legs(session: Session, legs: Sequence[TransferLeg]) -> None:
    """The legs' rows through SQLAlchemy (SQLite ingest, and decisions on either database)."""
    if legs:
        session.execute(
            text(_TRANSFER_LEG_INSERT),
            [{"window_day": leg.window_day, "payee": leg.payee_account_id, "terminal_id": leg.terminal_id,
              "seq": leg.terminal_seq} for leg in legs],
        )  # fmt: skip


def record_event(
    session: Session,
    *,
    payee_account_id: int,
    kind: str,
    source_ref: str,
    amount_fen: int,
    at: dt.datetime,
    days: BusinessDayClock = DEFAULT_CLOCK,
) -> Posting:
    """A decision or refund that moves a payee's money, in the window of the day it is made.

    Call it in the transaction that posts the transfer (``source_ref`` = the transfer id).
    """
    assert kind in (SALE, REFUND) and amount_fen > 0
    event_day = days.day_of(at)
    posting = Posting(window_of(event_day, sealed_through(session)), payee_account_id, kind, source_ref, event_day, 1,
                      amount_fen)  # fmt: skip
    write_postings(session, [posting], at)
    return posting


__all__ = [
    "LOCK_EXCLUSIVE_SQL",
    "LOCK_SHARED_SQL",
    "POSTINGS_INSERT_PG",
    "REFUND",
    "SALE",
    "TOTALS_UPSERT_PG",
    "TRANSFER_LEGS_INSERT_PG",
    "WINDOW_LOCK_KEY",
    "Assignment",
    "PayeeBook",
    "Posting",
    "TransferLeg",
    "is_transfer_leg",
    "payee_of_tap",
    "postings_pg_params",
    "read_assignments",
    "read_assignments_pg",
    "record_event",
    "sale_postings",
    "sealed_through",
    "totals_pg_params",
    "totals_rows",
    "transfer_legs",
    "transfer_legs_pg_params",
    "window_of",
    "write_postings",
    "write_transfer_legs",
]
