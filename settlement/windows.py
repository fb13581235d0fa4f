"""Settlement windows: one per business day and payee, sealed by an atomic marker, in day order.

A window is open until the close of its day *seals* it (``seal``): one short transaction that
writes the day's ``settlement_windows`` row under the window lock taken exclusively
(``clearing.ingest_totals``: every writer of running totals holds it shared to COMMIT). After
the seal no transfer can join the window: a batch in flight finished before the seal took the
lock, and one that starts after reads the new latest sealed day and posts to the next window.
So every transfer belongs to exactly one window, and a window's running totals are final once
sealed — the close reads them without any lock on ingest.

Windows seal in day order: the sealed days are exactly those up to the latest sealed one.
Sealing a day seals the empty days before it with it; an earlier day that still has running
totals must be closed first (``E_WINDOW_ORDER``).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import Engine, func, select, text, update
from sqlalchemy.orm import Session

from clearing.business_day import BusinessDayClock
from clearing.ingest_totals import LOCK_EXCLUSIVE_SQL, sealed_through
from settlement.errors import SettlementCode, SettlementError
from settlement.models import TotalRow, WindowRow


@dataclass(frozen=True, slots=True)
class Sealed:
    business_day: dt.date
    sealed_at: dt.datetime
    state: str  # "sealed" (now or before) or "closed" (an earlier close finished it)
    newly: bool


def take_write_lock(session: Session) -> None:
    """The transaction's first statement: the seal's lock (PostgreSQL) or SQLite's write lock."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text(LOCK_EXCLUSIVE_SQL))
    else:  # a write that changes nothing still takes SQLite's one write lock, before any read
        session.execute(update(WindowRow).where(WindowRow.business_day.is_(None)).values(state=WindowRow.state))


def seal(engine: Engine, day: dt.date, *, now: dt.datetime, clock: BusinessDayClock, early: bool = False) -> Sealed:
    """Seal the window of ``day`` (idempotent: a sealed or closed day is returned as it is).

    Refused: a day that has not ended unless ``early`` (the rest of the day then falls in the
    next window, listed as late); a day sealed empty by a later close; a day after an
    earlier day whose window has transfers and is still open.
    """
    with Session(engine) as session, session.begin():
        take_write_lock(session)
        row = session.get(WindowRow, day)
        if row is not None:
            return Sealed(day, row.sealed_at, row.state, newly=False)
        latest = _latest(session)
        if latest is not None and day <= latest:
            raise SettlementError(
                SettlementCode.E_WINDOW_SEALED_EMPTY,
                f"window {day} was sealed empty by the close of {latest}: its day's transfers, if any came "
                f"later, went to the next open window",
            )
        if day > clock.day_of(now):  # early: a typo'd year would seal every day up to it, empty
            raise SettlementError(
                SettlementCode.E_WINDOW_NOT_OVER,
                f"business day {day} has not begun (today is {clock.day_of(now)}): a day closes once it has ended, "
                "or with --before-cutoff once it has begun, never before",
            )
        if not early and clock.end_of(day) > now:
            raise SettlementError(
                SettlementCode.E_WINDOW_NOT_OVER,
                f"business day {day} ends at {clock.end_of(day).isoformat()}; close it after that, or pass "
                "--before-cutoff to close it now (later transfers of the day go to the next window, as late)",
            )
        earlier = select(func.min(TotalRow.window_day)).where(TotalRow.window_day < day)
        if latest is not None:
            earlier = earlier.where(TotalRow.window_day > latest)
        pending = session.execute(earlier).scalar_one_or_none()
        if pending is not None:
            raise SettlementError(
                SettlementCode.E_WINDOW_ORDER,
                f"window {pending} has transfers and is still open; windows close in day order: close {pending} first",
            )
        session.add(WindowRow(business_day=day, state="sealed", sealed_at=now, payout_sequence=1))
    return Sealed(day, now, "sealed", newly=True)


def _latest(session: Session) -> dt.date | None:
    return session.execute(select(func.max(WindowRow.business_day))).scalar_one_or_none()


def latest_sealed(session: Session) -> dt.date | None:
    """The latest sealed day (PostgreSQL: after the window lock, shared)."""
    return sealed_through(session)


def window(session: Session, day: dt.date) -> WindowRow | None:
    return session.get(WindowRow, day)


__all__ = ["Sealed", "latest_sealed", "seal", "take_write_lock", "window"]
