"""The finance console's figures for one business day: read-only queries returning frozen dataclasses.

Issue 11, "Operator console and reports"; ``docs/finance-console.md`` says what each figure
is and where it comes from. Money figures come from what settlement keeps, never from a
rescan of history:

* **per payee** (bus operators' revenue, merchants' sales, payout status): the window's
  running totals (``settlement_totals``) while the window is open or sealed, its statements
  (``settlement_statements``) once it is closed, and the bank's answers
  (``settlement_payout_results``). These are *window* figures: a late record counts in the
  window it joined, as on the statement.
* **per hour, per route, per stop**: the taps of the business day (``taps.business_day``),
  counted in the database (``GROUP BY``), because no running total keeps them. These are
  *tap-day* figures: a tap counts on the day it was made, whichever window paid it, so a
  route's total and its operator's window total differ by the late records.
* **late, suspect and rejected records**: late ones from the totals' journal
  (``settlement_postings`` with ``late``) of the window; suspect and rejected ones from the
  day's tap rows and, for records that got no tap row (a forgery, a duplicate), from the
  exception queue's items made during the day.

Stops and their coordinates are the tariff feed's GTFS ``stops`` file (``load_stops``);
nothing here draws or formats — the portal does.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Final

from sqlalchemy import Integer, and_, case, cast, func, literal_column, select
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from clearing.business_day import DEFAULT_CLOCK, BusinessDayClock
from clearing.models import ExceptionItem, Operator, Tap
from settlement.models import PayoutResultRow, PostingRow, StatementRow, TotalRow, WindowRow

OPEN: Final = "open"  # the window has no marker yet: transfers still join it
SEALED: Final = "sealed"
CLOSED: Final = "closed"

# Payout status of one payee in one window (``PayoutStatus.status``).
NOT_CLOSED: Final = "not_closed"  # the window is not closed: nothing is decided yet
INSTRUCTED: Final = "instructed"  # in the day's payout files, no bank answer yet
CLEARED: Final = "cleared"  # the bank statement shows it booked
RETURNED: Final = "returned"  # the bank sent it back (an exception item of kind payout)
HELD: Final = "held"  # due but not paid: the statement's reason (no account, suspended, ...)
CARRIED: Final = "carried"  # a negative net, carried into the next window
NOTHING_DUE: Final = "nothing_due"
PAYOUT_STATUSES: Final = (NOT_CLOSED, INSTRUCTED, CLEARED, RETURNED, HELD, CARRIED, NOTHING_DUE)

LATE: Final = "late"
SUSPECT: Final = "suspect"
REJECTED: Final = "rejected"
VERDICTS: Final = ("accepted", "suspect", "rejected", "forwarded")
HOURS_PER_DAY: Final = 24
DAYS_LISTED_MAX: Final = 62  # the day picker's list; any other day can still be typed
STOPS_FILE_NAMES: Final = ("stops.csv", "stops.txt")  # GTFS names it .txt; the example ships .csv
STOPS_BYTES_MAX: Final = 4 * 1024 * 1024
STOPS_MAX: Final = 20_000


# --- what the queries answer ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HourTaps:
    """The taps of one local hour of the day, by verdict, and what the posted ones took."""

    hour: int  # 0..23, local time of the clock's zone
    accepted: int
    suspect: int
    rejected: int
    forwarded: int
    posted_fen: int  # the amounts of the hour's taps that posted a sale

    @property
    def taps(self) -> int:
        return self.accepted + self.suspect + self.rejected + self.forwarded


@dataclass(frozen=True, slots=True)
class PayeeFigures:
    """One payee's window: running totals, and once closed the statement's fee and net."""

    payee_id: str
    name: str
    kind: str  # bus_operator or merchant
    count: int
    gross_fen: int
    refund_count: int
    refunds_fen: int
    late_count: int
    late_fen: int
    fee_fen: int | None  # None until the window is closed
    net_fen: int | None

    @property
    def sales_fen(self) -> int:
        """Gross less refunds: what the payee sold in the window."""
        return self.gross_fen - self.refunds_fen


@dataclass(frozen=True, slots=True)
class RouteFigures:
    """One route's taps of the day (tap-day figures: ``taps``)."""

    route_id: str
    taps: int
    posted: int  # taps that posted a sale
    posted_fen: int


@dataclass(frozen=True, slots=True)
class StopFigures:
    """One stop's taps of the day, all routes together."""

    stop_id: str
    taps: int
    posted_fen: int


@dataclass(frozen=True, slots=True)
class RecordIssue:
    """Late, suspect or rejected records of the day, per code (late: per event day)."""

    kind: str  # LATE, SUSPECT or REJECTED
    code: str  # the clearing code, or for late records "from <event day>"
    count: int
    amount_fen: int


@dataclass(frozen=True, slots=True)
class PayoutStatus:
    """Where one payee's money of the window stands."""

    payee_id: str
    name: str
    kind: str
    status: str  # one of PAYOUT_STATUSES
    net_fen: int | None  # None until closed
    carry_in_fen: int | None
    payout_fen: int
    carry_out_fen: int | None
    end_to_end_id: str | None
    held_reason: str | None
    booked_on: dt.date | None  # the bank's booking date (cleared or returned)


@dataclass(frozen=True, slots=True)
class Stop:
    """A GTFS stop with its coordinates (WGS 84 degrees; the example feed's are made up)."""

    stop_id: str
    name: str
    lat: Decimal
    lon: Decimal
    description: str = ""


@dataclass(frozen=True, slots=True)
class DaySummary:
    """A line of the day picker: a window and its totals."""

    business_day: dt.date
    state: str  # OPEN, SEALED or CLOSED
    payees: int
    gross_fen: int
    refunds_fen: int


@dataclass(frozen=True, slots=True)
class DayReport:
    """Every figure of the finance console's day page."""

    business_day: dt.date
    state: str  # OPEN, SEALED or CLOSED
    sealed_at: dt.datetime | None
    closed_at: dt.datetime | None
    hours: tuple[HourTaps, ...]  # 24, in the business day's order (from the cut-off hour)
    operators: tuple[PayeeFigures, ...]
    merchants: tuple[PayeeFigures, ...]
    routes: tuple[RouteFigures, ...]
    stops: tuple[StopFigures, ...]
    route_stops: Mapping[str, tuple[str, ...]]  # route -> the stops its taps were made at, by name
    issues: tuple[RecordIssue, ...]
    payouts: tuple[PayoutStatus, ...]

    @property
    def taps(self) -> int:
        return sum(h.taps for h in self.hours)

    @property
    def posted_fen(self) -> int:
        return sum(h.posted_fen for h in self.hours)


# --- pure parts -------------------------------------------------------------------------------


def hour_order(clock: BusinessDayClock) -> tuple[int, ...]:
    """The 24 local hours in the order a business day runs them: from the cut-off's hour."""
    first = clock.cutoff.hour
    return tuple((first + i) % HOURS_PER_DAY for i in range(HOURS_PER_DAY))


def payout_status(statement: StatementRow | None, results: Mapping[str, PayoutResultRow]) -> tuple[str, dt.date | None]:
    """A payee's status from its statement (None: window not closed) and the bank's answers by status."""
    if statement is None:
        return NOT_CLOSED, None
    if statement.payout_fen > 0:
        if RETURNED in results:
            return RETURNED, results[RETURNED].booked_on
        if CLEARED in results:
            return CLEARED, results[CLEARED].booked_on
        return INSTRUCTED, None
    if statement.held_reason and statement.carry_out_fen > 0:
        return HELD, None
    if statement.carry_out_fen < 0:
        return CARRIED, None
    return NOTHING_DUE, None


def parse_stops(text_: str, *, source: str = "stops.csv") -> list[Stop]:
    """A GTFS ``stops`` file's stops that have coordinates (stations, entrances, nodes alike).

    Coordinates are decimal text; a row without both, or out of range, is skipped — the map
    can only place what has a position, and the fare loader has already checked the header.
    """
    reader = csv.DictReader(io.StringIO(text_.removeprefix("\ufeff"), newline=""))
    stops: list[Stop] = []
    for row in reader:
        if len(stops) >= STOPS_MAX:
            break
        stop_id = (row.get("stop_id") or "").strip()
        try:
            lat = Decimal((row.get("stop_lat") or "").strip())
            lon = Decimal((row.get("stop_lon") or "").strip())
        except InvalidOperation:
            continue
        if not stop_id or not (-90 <= lat <= 90 and -180 <= lon <= 180):
            continue
        name = (row.get("stop_name") or "").strip() or stop_id
        stops.append(Stop(stop_id, name, lat, lon, (row.get("stop_desc") or "").strip()))
    return stops


def load_stops(directory: str | os.PathLike[str]) -> list[Stop]:
    """The stops of a tariff feed directory (``stops.csv`` or ``stops.txt``); none if it has no such file."""
    for name in STOPS_FILE_NAMES:
        path = Path(directory) / name
        if path.is_file() and path.stat().st_size <= STOPS_BYTES_MAX:
            return parse_stops(path.read_text(encoding="utf-8-sig"), source=str(path))
    return []


# --- queries ----------------------------------------------------------------------------------


def _local_hour(session: Session, offset_min: int) -> ColumnElement[int]:
    """The tap's local hour in SQL: UTC plus the zone's offset of that day (both databases)."""
    minutes = int(offset_min)  # an int: nothing but digits reaches the SQL text
    if session.get_bind().dialect.name == "postgresql":
        return literal_column(
            f"CAST(EXTRACT(HOUR FROM (taps.tx_time AT TIME ZONE 'UTC') + INTERVAL '{minutes} minutes') AS INTEGER)",
            Integer,
        )
    return cast(func.strftime("%H", Tap.tx_time, f"{int(offset_min):+d} minutes"), Integer)


def _posted_fen() -> ColumnElement[int]:
    return func.coalesce(func.sum(case((Tap.transfer_id.is_not(None), Tap.amount_fen), else_=0)), 0)


def taps_per_hour(session: Session, day: dt.date, clock: BusinessDayClock = DEFAULT_CLOCK) -> tuple[HourTaps, ...]:
    """The day's tap rows per local hour and verdict (one GROUP BY over the day's taps)."""
    offset = clock.start_of(day).utcoffset()
    assert offset is not None
    hour = _local_hour(session, int(offset.total_seconds() // 60)).label("hour")
    rows = session.execute(
        select(hour, Tap.verdict, func.count(), _posted_fen())
        .where(Tap.business_day == day)
        .group_by(hour, Tap.verdict)
    ).all()
    counts: dict[int, dict[str, int]] = {h: dict.fromkeys(VERDICTS, 0) for h in range(HOURS_PER_DAY)}
    posted: dict[int, int] = dict.fromkeys(range(HOURS_PER_DAY), 0)
    for h, verdict, n, fen in rows:
        h = int(h) % HOURS_PER_DAY
        counts[h][str(verdict)] = counts[h].get(str(verdict), 0) + int(n)
        posted[h] += int(fen)
    return tuple(
        HourTaps(h, counts[h]["accepted"], counts[h]["suspect"], counts[h]["rejected"], counts[h]["forwarded"],
                 posted[h])
        for h in hour_order(clock)
    )  # fmt: skip


def _route_stop_rows(session: Session, day: dt.date) -> list[tuple[str | None, str | None, int, int, int]]:
    posted = func.coalesce(func.sum(case((Tap.transfer_id.is_not(None), 1), else_=0)), 0)
    rows = session.execute(
        select(Tap.route_id, Tap.stop_id, func.count(), posted, _posted_fen())
        .where(Tap.business_day == day)
        .group_by(Tap.route_id, Tap.stop_id)
    ).all()
    return [(r, s, int(n), int(p), int(f)) for r, s, n, p, f in rows]


def route_and_stop_figures(
    session: Session, day: dt.date
) -> tuple[tuple[RouteFigures, ...], tuple[StopFigures, ...], dict[str, tuple[str, ...]]]:
    """Per route, per stop, and which stops each route's taps were made at (one GROUP BY)."""
    routes: dict[str, list[int]] = {}
    stops: dict[str, list[int]] = {}
    served: dict[str, set[str]] = {}
    for route, stop, n, posted, fen in _route_stop_rows(session, day):
        if route is not None:
            acc = routes.setdefault(route, [0, 0, 0])
            acc[0], acc[1], acc[2] = acc[0] + n, acc[1] + posted, acc[2] + fen
        if stop is not None:
            sacc = stops.setdefault(stop, [0, 0])
            sacc[0], sacc[1] = sacc[0] + n, sacc[1] + fen
        if route is not None and stop is not None:
            served.setdefault(route, set()).add(stop)
    return (
        tuple(RouteFigures(r, *v) for r, v in sorted(routes.items())),
        tuple(StopFigures(s, *v) for s, v in sorted(stops.items())),
        {r: tuple(sorted(s)) for r, s in sorted(served.items())},
    )


def window_state(session: Session, day: dt.date) -> tuple[str, WindowRow | None]:
    row = session.get(WindowRow, day)
    return (OPEN if row is None else row.state), row


def payee_figures(session: Session, day: dt.date) -> list[PayeeFigures]:
    """Every payee of the window: its statement once closed, else its running totals."""
    state, _ = window_state(session, day)
    kinds = {a: (k, i, n) for a, k, i, n in session.execute(
        select(Operator.payable_account_id, Operator.kind, Operator.operator_id, Operator.name))}  # fmt: skip
    out: list[PayeeFigures] = []
    if state == CLOSED:
        for s in session.scalars(select(StatementRow).where(StatementRow.window_day == day)):
            kind = kinds.get(s.payee_account_id, ("bus_operator", s.payee_id, s.payee_name))[0]
            out.append(PayeeFigures(s.payee_id, s.payee_name, kind, s.count, s.gross_fen, s.refund_count,
                                    s.refunds_fen, s.late_count, s.late_fen, s.fee_fen, s.net_fen))  # fmt: skip
    else:
        for t in session.scalars(select(TotalRow).where(TotalRow.window_day == day)):
            kind, payee_id, name = kinds.get(t.payee_account_id, ("bus_operator", str(t.payee_account_id), ""))
            out.append(PayeeFigures(payee_id, name, kind, t.count, t.gross_fen, t.refund_count, t.refunds_fen,
                                    t.late_count, t.late_fen, None, None))  # fmt: skip
    return sorted(out, key=lambda p: p.payee_id)


def payout_statuses(session: Session, day: dt.date) -> list[PayoutStatus]:
    """Each payee's payout of the window: decided by the close, answered by the bank's statement."""
    state, _ = window_state(session, day)
    if state != CLOSED:
        return [PayoutStatus(p.payee_id, p.name, p.kind, NOT_CLOSED, None, None, 0, None, None, None, None)
                for p in payee_figures(session, day)]  # fmt: skip
    kinds = {int(a): str(k) for a, k in session.execute(select(Operator.payable_account_id, Operator.kind))}
    statements = list(session.scalars(select(StatementRow).where(StatementRow.window_day == day)))
    results: dict[str, dict[str, PayoutResultRow]] = {}
    e2e = [s.end_to_end_id for s in statements if s.end_to_end_id]
    for start in range(0, len(e2e), 1000):
        for r in session.scalars(
            select(PayoutResultRow).where(PayoutResultRow.end_to_end_id.in_(e2e[start : start + 1000]))
        ):
            results.setdefault(r.end_to_end_id, {})[r.status] = r
    out = []
    for s in statements:
        status, booked = payout_status(s, results.get(s.end_to_end_id or "", {}))
        out.append(PayoutStatus(s.payee_id, s.payee_name, str(kinds.get(s.payee_account_id, "bus_operator")), status,
                                s.net_fen, s.carry_in_fen, s.payout_fen, s.carry_out_fen, s.end_to_end_id,
                                s.held_reason, booked))  # fmt: skip
    return sorted(out, key=lambda p: p.payee_id)


def record_issues(session: Session, day: dt.date, clock: BusinessDayClock = DEFAULT_CLOCK) -> list[RecordIssue]:
    """Late records of the window (per event day), suspect and rejected records of the day (per code)."""
    out: list[RecordIssue] = []
    late = session.execute(
        select(PostingRow.event_day, func.sum(PostingRow.count), func.sum(PostingRow.amount_fen))
        .where(PostingRow.window_day == day, PostingRow.late.is_(True), PostingRow.kind == "sale")
        .group_by(PostingRow.event_day)
        .order_by(PostingRow.event_day)
    ).all()
    out.extend(RecordIssue(LATE, f"from {event_day.isoformat()}", int(n), int(fen)) for event_day, n, fen in late)
    judged: dict[tuple[str, str], list[int]] = {}
    for verdict, code, n, fen in session.execute(
        select(Tap.verdict, Tap.code, func.count(), func.coalesce(func.sum(Tap.amount_fen), 0))
        .where(Tap.business_day == day, Tap.verdict.in_((SUSPECT, REJECTED)))
        .group_by(Tap.verdict, Tap.code)
    ):
        acc = judged.setdefault((str(verdict), str(code)), [0, 0])
        acc[0], acc[1] = acc[0] + int(n), acc[1] + int(fen)
    start, end = clock.start_of(day), clock.end_of(day)
    for item_code, items, item_fen in session.execute(
        select(ExceptionItem.code, func.count(), func.coalesce(func.sum(ExceptionItem.amount_fen), 0))
        .where(
            ExceptionItem.kind == "tap",
            ExceptionItem.tap_id.is_(None),
            and_(ExceptionItem.created_at >= start, ExceptionItem.created_at < end),
        )
        .group_by(ExceptionItem.code)
    ):
        kind = SUSPECT if str(item_code).startswith("S_") else REJECTED
        acc = judged.setdefault((kind, str(item_code)), [0, 0])
        acc[0], acc[1] = acc[0] + int(items), acc[1] + int(item_fen or 0)
    out.extend(RecordIssue(kind, code, n, fen) for (kind, code), (n, fen) in sorted(judged.items()))
    return out


def day_report(session: Session, day: dt.date, clock: BusinessDayClock = DEFAULT_CLOCK) -> DayReport:
    """The day page's figures, read in one session (one snapshot on PostgreSQL's repeatable read)."""
    state, row = window_state(session, day)
    payees = payee_figures(session, day)
    routes, stops, route_stops = route_and_stop_figures(session, day)
    return DayReport(
        business_day=day,
        state=state,
        sealed_at=row.sealed_at if row is not None else None,
        closed_at=row.closed_at if row is not None else None,
        hours=taps_per_hour(session, day, clock),
        operators=tuple(p for p in payees if p.kind != "merchant"),
        merchants=tuple(p for p in payees if p.kind == "merchant"),
        routes=routes,
        stops=stops,
        route_stops=route_stops,
        issues=tuple(record_issues(session, day, clock)),
        payouts=tuple(payout_statuses(session, day)),
    )


def recent_days(session: Session, today: dt.date, *, limit: int = DAYS_LISTED_MAX) -> list[DaySummary]:
    """The windows of the day picker, newest first: closed and sealed days, and open days with totals."""
    days: dict[dt.date, DaySummary] = {}
    for w in session.scalars(select(WindowRow).order_by(WindowRow.business_day.desc()).limit(limit)):
        days[w.business_day] = DaySummary(w.business_day, w.state, w.payees or 0, w.gross_fen or 0,
                                          w.refunds_fen or 0)  # fmt: skip
    for d, n, gross, refunds in session.execute(
        select(TotalRow.window_day, func.count(), func.sum(TotalRow.gross_fen), func.sum(TotalRow.refunds_fen))
        .group_by(TotalRow.window_day)
        .order_by(TotalRow.window_day.desc())
        .limit(limit)
    ):
        if d not in days or days[d].state != CLOSED:
            state = days[d].state if d in days else OPEN
            days[d] = DaySummary(d, state, int(n), int(gross or 0), int(refunds or 0))
    days.setdefault(today, DaySummary(today, OPEN, 0, 0, 0))
    return sorted(days.values(), key=lambda s: s.business_day, reverse=True)[:limit]


def stops_on_map(stops: Iterable[Stop], figures: Sequence[StopFigures]) -> tuple[list[Stop], list[str]]:
    """The feed's stops to draw, and the stop ids with taps that the feed cannot place."""
    known = {s.stop_id for s in stops}
    return list(stops), sorted(f.stop_id for f in figures if f.stop_id not in known)


__all__ = [
    "CARRIED",
    "CLEARED",
    "CLOSED",
    "HELD",
    "INSTRUCTED",
    "LATE",
    "NOTHING_DUE",
    "NOT_CLOSED",
    "OPEN",
    "PAYOUT_STATUSES",
    "REJECTED",
    "RETURNED",
    "SEALED",
    "SUSPECT",
    "DayReport",
    "DaySummary",
    "HourTaps",
    "PayeeFigures",
    "PayoutStatus",
    "RecordIssue",
    "RouteFigures",
    "Stop",
    "StopFigures",
    "day_report",
    "hour_order",
    "load_stops",
    "parse_stops",
    "payee_figures",
    "payout_status",
    "payout_statuses",
    "recent_days",
    "record_issues",
    "route_and_stop_figures",
    "stops_on_map",
    "taps_per_hour",
    "window_state",
]
