"""The accumulator tables read and moved inside the caller's transaction (the thin shell around ``rules``).

``read`` locks the member's rows (``SELECT … FOR UPDATE`` on PostgreSQL) so two visits of one
member priced at once are priced one after the other: the second sees the first's deductible
and fund paid. ``move`` adds or subtracts exactly a ``Delta``; the database CHECKs refuse a
total below zero, a second guard behind ``rules.unapply``'s assertion.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from clearing.db import conflict_insert
from portal.modules.medical.models import MedicalAccumulator, MedicalDayTotal
from portal.modules.medical.rules import Accumulator, Delta, VisitKind


def _ensure(session: Session, member_id: int, year: int, kind: VisitKind, day: dt.date) -> None:
    insert = conflict_insert(session.get_bind().dialect.name)
    session.execute(
        insert(MedicalAccumulator)
        .values(member_id=member_id, year=year, kind=kind.value, deductible_used_fen=0, fund_paid_fen=0)
        .on_conflict_do_nothing()
    )
    session.execute(
        insert(MedicalDayTotal)
        .values(member_id=member_id, day=day, kind=kind.value, fund_paid_fen=0)
        .on_conflict_do_nothing()
    )


def read(session: Session, member_id: int, year: int, kind: VisitKind, day: dt.date) -> Accumulator:
    """The member's year so far (with ``day``'s fund paid), the rows locked until the transaction ends."""
    _ensure(session, member_id, year, kind, day)
    acc = session.execute(
        select(MedicalAccumulator.deductible_used_fen, MedicalAccumulator.fund_paid_fen)
        .where(
            MedicalAccumulator.member_id == member_id,
            MedicalAccumulator.year == year,
            MedicalAccumulator.kind == kind.value,
        )
        .with_for_update()
    ).one()
    day_paid = session.execute(
        select(MedicalDayTotal.fund_paid_fen)
        .where(MedicalDayTotal.member_id == member_id, MedicalDayTotal.day == day, MedicalDayTotal.kind == kind.value)
        .with_for_update()
    ).scalar_one()
    return Accumulator(int(acc[0]), int(acc[1]), {day: int(day_paid)} if day_paid else {})


def move(session: Session, member_id: int, year: int, kind: VisitKind, delta: Delta, *, sign: int) -> None:
    """Add (``sign=1``) or take out (``sign=-1``) one visit's delta, by relative updates."""
    assert sign in (1, -1)
    _ensure(session, member_id, year, kind, delta.day)
    session.execute(
        update(MedicalAccumulator)
        .where(
            MedicalAccumulator.member_id == member_id,
            MedicalAccumulator.year == year,
            MedicalAccumulator.kind == kind.value,
        )
        .values(
            deductible_used_fen=MedicalAccumulator.deductible_used_fen + sign * delta.deductible_fen,
            fund_paid_fen=MedicalAccumulator.fund_paid_fen + sign * delta.fund_fen,
        )
    )
    session.execute(
        update(MedicalDayTotal)
        .where(
            MedicalDayTotal.member_id == member_id,
            MedicalDayTotal.day == delta.day,
            MedicalDayTotal.kind == kind.value,
        )
        .values(fund_paid_fen=MedicalDayTotal.fund_paid_fen + sign * delta.fund_fen)
    )


def year_totals(session: Session, member_id: int, year: int, kind: VisitKind) -> tuple[int, int]:
    """(deductible used, fund paid) without locking: for pages and receipts."""
    row = session.execute(
        select(MedicalAccumulator.deductible_used_fen, MedicalAccumulator.fund_paid_fen).where(
            MedicalAccumulator.member_id == member_id,
            MedicalAccumulator.year == year,
            MedicalAccumulator.kind == kind.value,
        )
    ).first()
    return (0, 0) if row is None else (int(row[0]), int(row[1]))


__all__ = ["move", "read", "year_totals"]
