"""The bilateral position with a peer, per window, and the net debit cap (issue 12, "Netting").

Every accepted item is one row of the position journal (``interop_bookings``), in the direction
of the money: ``due_to`` when we are the issuer (our card was tapped in the peer's city, we owe
the peer: card liability → DUE_TO), ``due_from`` when we are the acquirer (the peer's card on
our terminal, the peer owes us: DUE_FROM → our operator). The issuer side books in the judge's
transaction (``interop_xian.issuer``); the acquirer side calls ``book`` in the transaction that
applies the peer's verdict. One row per (peer, direction, item): booking twice changes nothing.

**Windows.** The issuer decides an item's window and its verdict names it (``window_day``); the
acquirer books it there, never in a window of its own choosing, so both journals hold the same
items per window. The issuer puts an item in the window of its tap's business day
(Asia/Shanghai, the business-day clock), unless that window is already *closed* with this peer —
proposed, mismatched or final (``window_close``): once a side has proposed a window's
instruction its judge puts nothing more in it, and the item joins the next window after the
latest closed one, exactly as ``clearing.ingest_totals.window_of`` does for settlement's
windows (``latest_closed``). An acquirer told to book into a window that is final on its side
(which a peer following these rules never asks) books it in its next open window and raises an
alarm: that window's digests then disagree until a person looks.

**Net debit cap.** Our net debit towards a peer is what we owe it less what it owes us, over
the windows not yet final (they are not settled yet: that is the exposure). A cap per peer
(``interop_peer_limits``, ``set_cap``; none by default) bounds it: the judge accepts a batch's
items in item order while ``net + amount ≤ cap`` — the cap itself may be reached exactly — and
rejects an item that would pass it (``E_NET_DEBIT_CAP``); a later, smaller item of the same
batch may still fit. Reaching the alarm percentage of the cap (default 80 %) raises one alarm
(``interop_alarms``) when a batch crosses it; every refusal for the cap raises one too.

The rules are pure functions (``fits_under_cap``, ``crossed_alarm``, ``net_of``); the rest reads
and writes the tables in the caller's transaction.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session

from clearing.contract.codes import Code
from clearing.db import conflict_insert, on_postgres
from clearing.ingest_totals import window_of
from clearing.ledger import pg_int_array, pg_text_array
from clearing.models import InteropForward
from clearing.transfer_ids import TRANSFER_ID_LEN_MAX
from interop_xian.errors import InteropCode, InteropError
from interop_xian.models import Alarm, Booking, InteropWindow, OutboxItem, PeerLimit

log = logging.getLogger(__name__)

DUE_TO: Final = "due_to"
DUE_FROM: Final = "due_from"
ALARM_PCT_DEFAULT: Final = 80
CAP_FEN_MAX: Final = 10**15  # far above any exposure, far below BIGINT (as settlement's amounts)
_LOCK_KEY: Final = 0x594B4958  # 'YKIX': the position with one peer is written by one transaction at a time


def lock_peer(session: Session, peer_city: str) -> None:
    """Serialise the writers of a peer's position (judge, bookings, window close) to COMMIT.

    PostgreSQL: a transaction advisory lock per peer. SQLite: a write as the transaction's first
    statement takes the one write lock before anything is read.
    """
    if on_postgres(session):
        session.execute(
            text("SELECT pg_advisory_xact_lock(:a, :b)"), {"a": _LOCK_KEY, "b": zlib.crc32(peer_city.encode()) - 2**31}
        )
    else:
        session.execute(update(PeerLimit).where(PeerLimit.peer_city.is_(None)).values(alarm_pct=PeerLimit.alarm_pct))


# --- transfer ids (the id is the idempotency key: clearing/transfer_ids.py's rule) -------------


def _bounded(prefix: str, tail: str) -> str:
    """``prefix:tail``, or ``prefix:h:<sha256 of tail>`` when that would pass the ledger's 80 characters."""
    transfer_id = f"{prefix}:{tail}"
    if len(transfer_id) <= TRANSFER_ID_LEN_MAX:
        return transfer_id
    return f"{prefix}:h:{hashlib.sha256(tail.encode()).hexdigest()[:48]}"


def issuer_item_transfer_id(peer_city: str, item_id: str) -> str:
    """An item accepted by our judge: our card's liability → DUE_TO the peer."""
    return _bounded("iss", f"{peer_city}:{item_id}")


def instruction_transfer_id(peer_city: str, window_day: dt.date, leg: str) -> str:
    """A leg of a final net settlement instruction (``offset``, ``pay`` or ``receive``)."""
    return _bounded("inet", f"{peer_city}:{window_day:%Y%m%d}:{leg}")


def dispute_transfer_id(peer_city: str, role: str, item_id: str) -> str:
    """A dispute's accepted outcome, posted in the open window."""
    return _bounded("idsp", f"{peer_city}:{role}:{item_id}")


# --- pure rules ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Cap:
    """A peer's net debit cap (None: no cap) and the alarm percentage of it."""

    cap_fen: int | None
    alarm_pct: int = ALARM_PCT_DEFAULT

    def __post_init__(self) -> None:
        if self.cap_fen is not None and not 0 <= self.cap_fen <= CAP_FEN_MAX:
            raise InteropError(InteropCode.E_BAD_CAP, f"a net debit cap is 0..{CAP_FEN_MAX} fen, not {self.cap_fen}")
        if not 1 <= self.alarm_pct <= 100:
            raise InteropError(InteropCode.E_BAD_CAP, f"the alarm percentage is 1..100, not {self.alarm_pct}")

    @property
    def alarm_fen(self) -> int | None:
        """The net debit at which the alarm rings: ``ceil(cap × pct / 100)``, in integer fen."""
        if self.cap_fen is None:
            return None
        return -(-self.cap_fen * self.alarm_pct // 100)


def fits_under_cap(net_fen: int, amounts: Sequence[int], cap_fen: int | None) -> list[bool]:
    """Which items of a batch fit, cumulatively and in order, under the cap (``net + amount ≤ cap``).

    ``net_fen``: the net debit before the batch. An item that would pass the cap does not fit
    and adds nothing; a later, smaller one may still fit.
    """
    if cap_fen is None:
        return [True] * len(amounts)
    out: list[bool] = []
    running = net_fen
    for amount in amounts:
        assert amount >= 0
        if running + amount <= cap_fen:
            running += amount
            out.append(True)
        else:
            out.append(False)
    return out


def crossed_alarm(before_fen: int, after_fen: int, cap: Cap) -> bool:
    """Whether the net debit reached the alarm level in this step (it was below before)."""
    level = cap.alarm_fen
    return level is not None and before_fen < level <= after_fen


@dataclass(frozen=True, slots=True)
class Position:
    """A window's bilateral position with a peer, from our side: what we owe and what we are owed."""

    peer_city: str
    window_day: dt.date
    due_to_fen: int = 0
    due_from_fen: int = 0

    @property
    def net_fen(self) -> int:
        """Our net debit: > 0 we pay the peer, < 0 the peer pays us. The peer's is the opposite."""
        return self.due_to_fen - self.due_from_fen


def net_of(bookings: Iterable[tuple[str, int]]) -> int:
    """The net debit of (direction, amount) bookings."""
    return sum(fen if direction == DUE_TO else -fen for direction, fen in bookings)


# --- the tables ------------------------------------------------------------------------------


def read_cap(session: Session, peer_city: str) -> Cap:
    row = session.get(PeerLimit, peer_city)
    return Cap(None) if row is None else Cap(row.cap_fen, row.alarm_pct)


def set_cap(session: Session, peer_city: str, cap_fen: int | None, alarm_pct: int = ALARM_PCT_DEFAULT) -> Cap:
    """Set (or, with None, remove) the peer's net debit cap; checked before it is stored."""
    cap = Cap(cap_fen, alarm_pct)
    row = session.get(PeerLimit, peer_city)
    now = dt.datetime.now(dt.UTC)
    if row is None:
        session.add(PeerLimit(peer_city=peer_city, cap_fen=cap_fen, alarm_pct=alarm_pct, updated_at=now))
    else:
        row.cap_fen, row.alarm_pct, row.updated_at = cap_fen, alarm_pct, now
    session.flush()
    return cap


def latest_final(session: Session, peer_city: str) -> dt.date | None:
    """The latest window whose instruction with the peer is final."""
    return session.execute(
        select(func.max(InteropWindow.window_day)).where(
            InteropWindow.peer_city == peer_city, InteropWindow.state == "final"
        )
    ).scalar_one_or_none()


CLOSED_STATES: Final = ("proposed", "mismatch", "final")


def latest_closed(session: Session, peer_city: str) -> dt.date | None:
    """The latest window with the peer that takes no new items from our judge (proposed or later)."""
    return session.execute(
        select(func.max(InteropWindow.window_day)).where(
            InteropWindow.peer_city == peer_city, InteropWindow.state.in_(CLOSED_STATES)
        )
    ).scalar_one_or_none()


def window_for(event_day: dt.date, latest_closed_day: dt.date | None) -> dt.date:
    """The window an item of tap day ``event_day`` joins (``clearing.ingest_totals.window_of``'s rule)."""
    return window_of(event_day, latest_closed_day)


def acquired_window(named: dt.date | None, tap_day: dt.date, latest_final_day: dt.date | None) -> tuple[dt.date, bool]:
    """Where the acquirer books an accepted item: the issuer's named window, unless it is final here.

    Returns (window, honoured): ``honoured`` is False when the named window (or, without one, the
    tap day's) was final on our side and the item moved to the next open window (an alarm).
    """
    wanted = named or tap_day
    if latest_final_day is not None and wanted <= latest_final_day:
        return latest_final_day + dt.timedelta(days=1), False
    return wanted, True


def open_net_debit(session: Session, peer_city: str) -> int:
    """Our net debit towards the peer over the windows not yet final (the exposure the cap bounds)."""
    final_days = select(InteropWindow.window_day).where(
        InteropWindow.peer_city == peer_city, InteropWindow.state == "final"
    )
    rows = session.execute(
        select(Booking.direction, func.coalesce(func.sum(Booking.amount_fen), 0))
        .where(Booking.peer_city == peer_city, Booking.window_day.not_in(final_days))
        .group_by(Booking.direction)
    ).all()
    return net_of((str(d), int(fen)) for d, fen in rows)


def position(session: Session, peer_city: str, window_day: dt.date) -> Position:
    """The window's bilateral position as the journal holds it."""
    rows = session.execute(
        select(Booking.direction, func.coalesce(func.sum(Booking.amount_fen), 0))
        .where(Booking.peer_city == peer_city, Booking.window_day == window_day)
        .group_by(Booking.direction)
    ).all()
    sums = {str(d): int(fen) for d, fen in rows}
    return Position(peer_city, window_day, sums.get(DUE_TO, 0), sums.get(DUE_FROM, 0))


def book(
    session: Session,
    *,
    peer_city: str,
    direction: str,
    item_id: str,
    amount_fen: int,
    window_day: dt.date,
    transfer_id: str,
    source: str = "item",
    now: dt.datetime | None = None,
) -> dt.date | None:
    """One accepted item in the position journal: the window it went to, or None if booked already.

    ``due_to`` (we are the issuer, we decide): ``window_day`` is the event's day, and the item
    goes to the first window not closed yet (``latest_closed``). ``due_from`` (the acquirer):
    ``window_day`` is the window the issuer named, kept unless it is final here.
    """
    assert direction in (DUE_TO, DUE_FROM) and amount_fen > 0
    lock_peer(session, peer_city)
    if direction == DUE_TO:
        window_day = window_for(window_day, latest_closed(session, peer_city))
    else:
        window_day = _acquired(session, peer_city, item_id, window_day, latest_final(session, peer_city), now)
    insert = conflict_insert(session.get_bind().dialect.name)
    result = session.execute(
        insert(Booking)
        .values(
            peer_city=peer_city, window_day=window_day, direction=direction, item_id=item_id,
            amount_fen=amount_fen, source=source, transfer_id=transfer_id, created_at=now or dt.datetime.now(dt.UTC),
        )
        .on_conflict_do_nothing(index_elements=["peer_city", "direction", "item_id"])
    )  # fmt: skip
    return window_day if getattr(result, "rowcount", 0) else None


_BOOK_MANY_PG: Final = text("""
INSERT INTO interop_bookings (peer_city, window_day, direction, item_id, amount_fen, source, transfer_id, created_at)
SELECT :peer, v.w, :direction, v.i, v.a, :source, v.t, :now
FROM unnest(CAST(:w AS date[]), CAST(:i AS text[]), CAST(:a AS bigint[]), CAST(:t AS text[])) AS v(w, i, a, t)
ON CONFLICT (peer_city, direction, item_id) DO NOTHING
""")


def book_many(
    session: Session,
    *,
    peer_city: str,
    direction: str,
    rows: Sequence[tuple[str, int, dt.date, str]],
    now: dt.datetime,
    source: str = "item",
) -> None:
    """Book many (item id, amount, window, transfer id) at once, for a caller that holds ``lock_peer``
    and computed each window with ``window_for(…, latest_final)`` (the judge: one statement a batch)."""
    assert direction in (DUE_TO, DUE_FROM)
    if not rows:
        return
    if on_postgres(session):  # one statement over arrays, not an executemany
        session.execute(
            _BOOK_MANY_PG,
            {"peer": peer_city, "direction": direction, "source": source, "now": now,
             "w": pg_text_array(r[2].isoformat() for r in rows), "i": pg_text_array(r[0] for r in rows),
             "a": pg_int_array(r[1] for r in rows), "t": pg_text_array(r[3] for r in rows)},
        )  # fmt: skip
        return
    insert = conflict_insert(session.get_bind().dialect.name)
    session.execute(
        insert(Booking).on_conflict_do_nothing(index_elements=["peer_city", "direction", "item_id"]),
        [
            {"peer_city": peer_city, "window_day": window, "direction": direction, "item_id": item_id,
             "amount_fen": amount, "source": source, "transfer_id": transfer_id, "created_at": now}
            for item_id, amount, window, transfer_id in rows
        ],
    )  # fmt: skip


def sync_acquired(session: Session, peer_city: str, *, now: dt.datetime | None = None) -> int:
    """Book ``due_from`` every item the acquirer side applied as accepted and did not book yet; how many.

    The acquirer (``interop_xian.acquirer``) books each accepted item as it applies the verdict;
    this catches any it did not, in the window the issuer's verdict named (``acquired_window``),
    so the position is right either way. Idempotent.
    """
    # NOT IN over the peer's booked ids (a hashed subplan on PostgreSQL), not a correlated NOT EXISTS:
    # with stale statistics on a fresh journal that was planned as a nested loop, quadratic in the items.
    booked = select(Booking.item_id).where(Booking.peer_city == peer_city, Booking.direction == DUE_FROM)
    rows = session.execute(
        select(OutboxItem.item_id, OutboxItem.amount_fen, OutboxItem.transfer_id, OutboxItem.window_day,
               InteropForward.business_day)
        .join(InteropForward, InteropForward.id == OutboxItem.forward_id)
        .where(
            OutboxItem.peer_city == peer_city,
            OutboxItem.state == "accepted",
            OutboxItem.amount_fen > 0,
            OutboxItem.item_id.not_in(booked),
        )
        .order_by(OutboxItem.id)
    ).all()  # fmt: skip
    book_acquired(session, peer_city=peer_city, now=now or dt.datetime.now(dt.UTC),
                  rows=[(item_id, int(amount), named or day, transfer_id or "") for item_id, amount, transfer_id,
                        named, day in rows])  # fmt: skip
    return len(rows)


def book_acquired(
    session: Session, *, peer_city: str, rows: Sequence[tuple[str, int, dt.date, str]], now: dt.datetime
) -> None:
    """Book ``due_from`` our accepted items, (item id, amount, the window the issuer named, transfer id),
    each in that window unless it is final here (``acquired_window``, with its alarm)."""
    if not rows:
        return
    lock_peer(session, peer_city)
    final = latest_final(session, peer_city)
    placed = [(i, fen, _acquired(session, peer_city, i, named, final, now), t) for i, fen, named, t in rows]
    book_many(session, peer_city=peer_city, direction=DUE_FROM, rows=placed, now=now)


def _acquired(
    session: Session, peer_city: str, item_id: str, named: dt.date, final: dt.date | None, now: dt.datetime | None
) -> dt.date:
    """The window an accepted item of ours is booked in (``acquired_window``); an alarm when it had to move."""
    window, honoured = acquired_window(named, named, final)
    if not honoured:
        moved_alarm(session, peer_city, item_id, named, window, now=now)
    return window


# The issuer lacks the card's key now and kept no verdict: the item is sent again later
# (``interop_xian.acquirer``), and nothing of it is booked anywhere until the issuer judges it.
UNJUDGED_CODES: Final = frozenset({Code.E_KEY_UNAVAILABLE.value})


def taps_in_flight(session: Session, peer_city: str, through: dt.date) -> int:
    """How many of our taps of a day up to ``through`` are on their way to the peer and not settled here.

    Sent and not acknowledged, or acknowledged and not applied: the issuer may have booked them
    in a window we do not show yet, so comparing that window now would only be a false mismatch.
    """
    return int(
        session.execute(
            select(func.count(OutboxItem.id))
            .join(InteropForward, InteropForward.id == OutboxItem.forward_id)
            .where(
                OutboxItem.peer_city == peer_city,
                InteropForward.business_day <= through,
                (OutboxItem.state == "sent")
                | ((OutboxItem.state == "acknowledged") & OutboxItem.code.not_in(UNJUDGED_CODES)),
            )
        ).scalar_one()
    )


def moved_alarm(
    session: Session, peer_city: str, item_id: str, named: dt.date, window: dt.date, *, now: dt.datetime | None
) -> None:
    """The alarm of an accepted item the issuer put in a window that is final on our side."""
    raise_alarm(
        session, peer_city=peer_city, kind="window_moved", window_day=window, now=now,
        message=f"item {item_id}: {peer_city} booked it in window {named}, which is final here; "
        f"booked in {window} instead, whose digests will differ until a person looks",
        details={"item_id": item_id, "named_window": named.isoformat(), "booked_window": window.isoformat()},
    )  # fmt: skip


def raise_alarm(
    session: Session,
    *,
    peer_city: str,
    kind: str,
    message: str,
    details: dict[str, Any],
    window_day: dt.date | None = None,
    now: dt.datetime | None = None,
) -> None:
    """Store an alarm for a person (and log it: the message names no card holder)."""
    log.warning("interop alarm %s (%s): %s", kind, peer_city, message)
    session.add(
        Alarm(
            peer_city=peer_city, kind=kind, window_day=window_day, message=message, details=details,
            created_at=now or dt.datetime.now(dt.UTC),
        )
    )  # fmt: skip


def alarms(session: Session, peer_city: str | None = None, *, limit: int = 100) -> list[Alarm]:
    stmt = select(Alarm).order_by(Alarm.id.desc()).limit(limit)
    if peer_city is not None:
        stmt = stmt.where(Alarm.peer_city == peer_city)
    return list(session.execute(stmt).scalars())


__all__ = [
    "ALARM_PCT_DEFAULT",
    "CLOSED_STATES",
    "DUE_FROM",
    "DUE_TO",
    "UNJUDGED_CODES",
    "Cap",
    "Position",
    "acquired_window",
    "alarms",
    "book",
    "book_acquired",
    "book_many",
    "crossed_alarm",
    "dispute_transfer_id",
    "fits_under_cap",
    "instruction_transfer_id",
    "issuer_item_transfer_id",
    "latest_closed",
    "latest_final",
    "lock_peer",
    "moved_alarm",
    "net_of",
    "open_net_debit",
    "position",
    "raise_alarm",
    "read_cap",
    "set_cap",
    "sync_acquired",
    "taps_in_flight",
    "window_for",
]
