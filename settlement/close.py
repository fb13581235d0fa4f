"""The close of a window (``yikatong settle --date D``): statements, ledger transfers, payout files.

Three steps, each atomic, each safe to run again (``docs/settlement.md``, "Close"):

1. **seal** (``settlement.windows.seal``): the atomic marker; from here no transfer joins the
   window.
2. **settle**, one transaction: read the window's running totals (never the taps), the
   payees' terms and carries, and the window's transfer-discount adjustments (its transfer legs'
   journeys, ``settlement.journeys``); compute each payee's statement (``statement_lines``,
   pure), post the fees (payable → fee revenue), the sharing (payable → payable) and the payouts
   (payable → bank settlement) under ids derived from day and payee, write the statements and
   carries, render the files from what was just written and store their SHA-256 with the
   window, marked ``closed``. A second close of the same day waits on the window row, finds it
   closed and changes nothing.
3. **files** under ``<out>/<D>/``, rendered from the stored statements only, written
   atomically (temporary file, fsync, rename, fsync of the directory) and only when missing or
   different. A rerun writes nothing: the bytes are the same.

A SIGKILL leaves the old state or the new one: before step 2 commits nothing moved (a sealed
window is only a marker; the rerun settles it); after it, the rerun finds the window closed and
(re)writes any file the kill left missing.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from sqlalchemy import Engine, insert, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from clearing import accounts
from clearing.business_day import DEFAULT_CLOCK, BusinessDayClock
from clearing.errors import Code
from clearing.ledger import LedgerBatchError, TransferSpec, post_transfers
from clearing.models import Account, AccountCode, AccountFlag, TransferCode, utcnow
from settlement import transfer_ids
from settlement.bank import BankAccount
from settlement.errors import SettlementCode, SettlementError
from settlement.fees import FeeAssessment, FeeBook, FeeSchedule, Rounding, assess
from settlement.journeys import FareLookup, window_adjustments
from settlement.models import CarryRow, PostingRow, StatementRow, TotalRow, WindowRow
from settlement.parties import PayeeTerms, fee_book, payee_terms
from settlement.payouts import (
    PayeeNet,
    Payer,
    check_pain001,
    end_to_end_id,
    payout_batch,
    payout_csv,
    payout_pain001,
)
from settlement.sharing import pair_moves, sharing_moves
from settlement.windows import seal

BANK_SETTLEMENT_REF: Final = "system:bank_settlement"
# The fee is never taken beyond what the payable holds: the rest of it is forgone, and said so.
FEE_LIMITED: Final = "fee limited to the payable's balance"
TRANSFERS_PER_POST: Final = 50_000
CLOSE_ATTEMPTS_MAX: Final = 4
STATEMENT_COLUMNS: Final = (
    "business_day", "payee_id", "payee_name", "count", "gross_fen", "refund_count", "refunds_fen", "late_count",
    "late_fen", "sharing_fen", "fee_fen", "net_fen", "carry_in_fen", "payout_fen", "carry_out_fen", "fee_bps",
    "fee_min_fen", "fee_cap_fen", "fee_rounding", "end_to_end_id", "held_reason", "sharing_owed_fen",
)  # fmt: skip
LATE_COLUMNS: Final = ("business_day", "source_ref", "payee_id", "kind", "event_day", "count", "amount_fen")
Progress = Callable[[str, int, int], None]  # (step, done, total)


@dataclass(frozen=True, slots=True)
class Totals:
    """A window's running totals for one payee (``settlement_totals``)."""

    count: int = 0
    gross_fen: int = 0
    refund_count: int = 0
    refunds_fen: int = 0
    late_count: int = 0
    late_fen: int = 0


@dataclass(frozen=True, slots=True)
class StatementLine:
    """One payee's close: the figures, the schedule applied, the account paid (or why not).

    ``sharing_fen`` is what the close moved to (+) or from (−) the payable for transfer
    discounts; ``sharing_owed_fen`` what of the payee's adjustments still waits for a payable
    that could not give it yet (``sharing.sharing_moves``).
    """

    payee_account_id: int
    payee_id: str
    payee_name: str
    totals: Totals
    schedule: FeeSchedule
    fee_fen: int
    net_fen: int
    carry_in_fen: int
    payout_fen: int
    carry_out_fen: int
    account: BankAccount | None
    end_to_end_id: str | None
    held_reason: str | None
    sharing_fen: int = 0
    sharing_owed_fen: int = 0

    def __post_init__(self) -> None:
        t = self.totals
        assert self.fee_fen + self.net_fen == t.gross_fen - t.refunds_fen + self.sharing_fen, (
            "fee + net == gross − refunds + sharing"
        )
        assert self.carry_out_fen == self.carry_in_fen + self.net_fen - self.payout_fen
        assert self.payout_fen >= 0 and self.fee_fen >= 0
        assert (self.payout_fen > 0) == (self.end_to_end_id is not None) and (self.payout_fen == 0 or self.account)


def statement_lines(
    day: dt.date,
    totals: Mapping[int, Totals],
    terms: Mapping[int, PayeeTerms],
    carries: Mapping[int, int],
    available: Mapping[int, int],
    book: FeeBook,
    sequence: int = 1,
    sharing: Mapping[int, int] | None = None,
    owed: Mapping[int, int] | None = None,
) -> list[StatementLine]:
    """Each payee's statement, pure: fee on the window's net sales, the sharing, then the payout.

    The fee base stays ``gross − refunds``: a transfer discount is the city's, not a sale. The
    window's transfer-discount adjustments (``sharing``, per payable, summing to 0) plus what
    each payee was still ``owed`` are moved as far as the giving payables allow after their fee
    (``sharing.sharing_moves``; the rest stays owed). ``net = gross − refunds + sharing − fee``;
    ``due = carry_in + net``; it is paid when positive, the payee is active and has an account,
    up to what its payable can still be debited after the fee and the sharing (a refund of a
    later window may already have drawn on it); whatever is not paid is carried into the next
    window.
    """
    shares, before = sharing or {}, owed or {}
    ids = sorted(set(totals) | {a for a, fen in carries.items() if fen} | {a for a, f in shares.items() if f}
                 | {a for a, f in before.items() if f})  # fmt: skip
    for account_id in ids:
        if account_id not in terms:
            raise SettlementError(
                SettlementCode.E_UNKNOWN_PAYEE, f"payable account {account_id} has running totals but no payee"
            )
    figures_of: dict[int, FeeAssessment] = {}
    for account_id in ids:
        term, t = terms[account_id], totals.get(account_id, Totals())
        figures = assess(t.gross_fen, t.refunds_fen, book.schedule_for(term.category, term.override))
        balance = available.get(account_id, 0)
        if figures.fee_fen > balance:  # a later window's refunds drew the payable below the fee
            figures = FeeAssessment(t.gross_fen, t.refunds_fen, max(0, balance),
                                    t.gross_fen - t.refunds_fen - max(0, balance))  # fmt: skip
        figures_of[account_id] = figures
    payee_of = {account_id: terms[account_id].payee_id for account_id in ids}
    moved, still_owed = sharing_moves(
        {payee_of[a]: shares.get(a, 0) + before.get(a, 0) for a in ids},
        {payee_of[a]: available.get(a, 0) - figures_of[a].fee_fen for a in ids},
    )
    lines: list[StatementLine] = []
    for account_id in ids:
        term, t, figures = terms[account_id], totals.get(account_id, Totals()), figures_of[account_id]
        schedule = book.schedule_for(term.category, term.override)
        balance = available.get(account_id, 0)
        shared = moved.get(term.payee_id, 0)
        held = FEE_LIMITED if figures.fee_fen < assess(t.gross_fen, t.refunds_fen, schedule).fee_fen else None
        net = figures.net_fen + shared
        carry_in = carries.get(account_id, 0)
        due = carry_in + net
        payout = 0
        if due > 0:
            # a fee limited stays said so (reconcile accepts the lower fee only with that reason)
            if term.status != "active":
                held = f"{held}; payee {term.status}" if held else f"payee {term.status}"
            elif term.account is None:
                held = f"{held}; no payout account" if held else "no payout account"
            else:
                payout = max(0, min(due, balance - figures.fee_fen + shared))
                if payout < due:
                    held = held or "payable short (drawn by a later window)"
        e2e = end_to_end_id(day, sequence, term.payee_id) if payout > 0 else None
        lines.append(
            StatementLine(
                account_id, term.payee_id, term.name, t, schedule, figures.fee_fen, net, carry_in,
                payout, due - payout, term.account, e2e, held, shared, still_owed.get(term.payee_id, 0),
            )
        )  # fmt: skip
    return lines


def sharing_transfers(day: dt.date, lines: Sequence[StatementLine]) -> list[TransferSpec]:
    """The close's sharing as payable → payable transfers (``sharing.pair_moves``), ids from the pair."""
    account_of = {line.payee_id: line.payee_account_id for line in lines}
    pairs = pair_moves({line.payee_id: line.sharing_fen for line in lines if line.sharing_fen})
    return [
        TransferSpec.single(transfer_ids.sharing(day, giver, taker), account_of[giver], account_of[taker], fen,
                            TransferCode.SHARING, source_ref=f"close:{day}")
        for giver, taker, fen in pairs
    ]  # fmt: skip


@dataclass(frozen=True, slots=True)
class CloseResult:
    business_day: dt.date
    state: str  # "closed"
    newly_closed: bool
    payees: int
    gross_fen: int
    refunds_fen: int
    fee_fen: int
    payout_fen: int
    carry_fen: int
    files: dict[str, Path]
    files_written: list[str]


def close_window(
    engine: Engine,
    day: dt.date,
    *,
    now: dt.datetime,
    payer: Payer,
    out_dir: Path,
    clock: BusinessDayClock = DEFAULT_CLOCK,
    early: bool = False,
    progress: Progress | None = None,
    after_settle: Callable[[], None] | None = None,
    fares: FareLookup | None = None,
) -> CloseResult:
    """Seal, settle and write the files of ``day``; idempotent (module docstring).

    ``fares`` prices the transfer legs' standalone fares (``settlement.journeys``); without it
    the close falls back to what the taps say.
    """
    report = progress or (lambda step, done, total: None)
    report("seal", 0, 3)
    seal(engine, day, now=now, clock=clock, early=early)
    report("settle", 1, 3)
    newly = _with_retries(lambda: _settle(engine, day, payer, report, fares))
    if after_settle is not None:
        after_settle()  # test hook: a kill here leaves a closed window without its files
    report("files", 2, 3)
    with Session(engine) as session:
        files = render(session, day)
        row = session.get(WindowRow, day)
        assert row is not None and row.state == "closed"
    stored = json.loads(row.files_sha256 or "{}")
    for name, data in files.items():
        assert hashlib.sha256(data).hexdigest() == stored.get(name), f"{name} differs from what the close stored"
    written = write_files(out_dir / day.isoformat(), files)
    report("done", 3, 3)
    return CloseResult(
        day, row.state, newly, row.payees or 0, row.gross_fen or 0, row.refunds_fen or 0, row.fee_fen or 0,
        row.payout_fen or 0, row.carry_fen or 0, {n: out_dir / day.isoformat() / n for n in files}, written,
    )  # fmt: skip


def _with_retries(attempt: Callable[[], bool]) -> bool:
    """A deadlock with an ingest batch (both touch payables) or a busy SQLite: run the settle again.

    So too a payable drawn between the settle's read of the balances and its post (a write-off, a
    tap-off refund's reservation, committed meanwhile): the ledger refuses the batch, nothing was
    written, and the settle computes again from the new balances.
    """
    for n in range(CLOSE_ATTEMPTS_MAX):
        try:
            return attempt()
        except OperationalError:
            if n == CLOSE_ATTEMPTS_MAX - 1:
                raise
        except LedgerBatchError as exc:
            drawn = all(r.code == Code.E_DEBITS_EXCEED_CREDITS.value for r in exc.results if not r.ok)
            if not drawn or n == CLOSE_ATTEMPTS_MAX - 1:
                raise
    raise AssertionError("unreachable")


def bank_settlement_account(session: Session) -> int:
    return accounts.get_or_create_account(
        session, AccountCode.BANK_SETTLEMENT, BANK_SETTLEMENT_REF, flags=AccountFlag.NONE
    )


def _settle(engine: Engine, day: dt.date, payer: Payer, report: Progress, fares: FareLookup | None = None) -> bool:
    with Session(engine) as session, session.begin():
        # the window row first: a second close of the day waits here, then finds it closed
        session.execute(update(WindowRow).where(WindowRow.business_day == day).values(state=WindowRow.state))
        row = session.get(WindowRow, day)
        assert row is not None, "sealed before settling"
        if row.state == "closed":
            return False
        # Windows settle in day order: a later day's settle reads the carries the earlier one writes.
        # PostgreSQL: this waits on an earlier settle still running and re-reads its row after it.
        earlier = session.execute(
            update(WindowRow).where(WindowRow.business_day < day, WindowRow.state != "closed")
            .values(state=WindowRow.state).returning(WindowRow.business_day)
        ).scalars().all()  # fmt: skip
        if earlier:
            raise SettlementError(
                SettlementCode.E_WINDOW_ORDER,
                f"window {min(earlier)} is sealed but not settled; windows settle in day order: close {min(earlier)} "
                "first",
            )
        totals = {
            r.payee_account_id: Totals(r.count, r.gross_fen, r.refund_count, r.refunds_fen, r.late_count, r.late_fen)
            for r in session.scalars(select(TotalRow).where(TotalRow.window_day == day))
        }
        carry_rows = list(
            session.scalars(select(CarryRow).where(or_(CarryRow.carry_fen != 0, CarryRow.sharing_owed_fen != 0)))
        )
        carries = {r.payee_account_id: r.carry_fen for r in carry_rows if r.carry_fen}
        owed = {r.payee_account_id: r.sharing_owed_fen for r in carry_rows if r.sharing_owed_fen}
        sharing = window_adjustments(session, day, fares)
        ids = sorted(set(totals) | set(carries) | set(owed) | set(sharing))
        terms = payee_terms(session, ids)
        available = _available(session, ids)
        lines = statement_lines(day, totals, terms, carries, available, fee_book(session), row.payout_sequence,
                                sharing, owed)  # fmt: skip
        report("settle", 1, 3)
        fee_account = accounts.fee_revenue(session)
        bank_account = bank_settlement_account(session)
        specs: list[TransferSpec] = []
        for line in lines:
            if line.fee_fen:
                specs.append(TransferSpec.single(transfer_ids.fee(day, line.payee_id), line.payee_account_id,
                                                 fee_account, line.fee_fen, TransferCode.FEE,
                                                 source_ref=f"close:{day}"))  # fmt: skip
        specs.extend(sharing_transfers(day, lines))  # after the fees, before the payouts they may pay
        for line in lines:
            if line.payout_fen:
                specs.append(TransferSpec.single(transfer_ids.payout(day, line.payee_id), line.payee_account_id,
                                                 bank_account, line.payout_fen, TransferCode.PAYOUT,
                                                 source_ref=f"close:{day}"))  # fmt: skip
        for start in range(0, len(specs), TRANSFERS_PER_POST):
            post_transfers(session, specs[start : start + TRANSFERS_PER_POST])
        _write_statements(session, day, lines)
        _write_carries(session, day, lines)
        row.payer_name, row.payer_account_name = payer.name, payer.account.name
        row.payer_account_number, row.payer_cnaps_code = payer.account.number, payer.account.cnaps
        row.payees = len(lines)
        row.gross_fen = sum(line.totals.gross_fen for line in lines)
        row.refunds_fen = sum(line.totals.refunds_fen for line in lines)
        row.fee_fen = sum(line.fee_fen for line in lines)
        row.payout_fen = sum(line.payout_fen for line in lines)
        row.carry_fen = sum(line.carry_out_fen for line in lines)
        session.flush()
        files = render(session, day, lines=lines, window_row=row, validate=True)
        row.files_sha256 = json.dumps({n: hashlib.sha256(d).hexdigest() for n, d in sorted(files.items())})
        row.state, row.closed_at = "closed", utcnow()
        return True


def _available(session: Session, ids: Sequence[int]) -> dict[int, int]:
    out: dict[int, int] = {}
    for start in range(0, len(ids), 1000):
        chunk = list(ids[start : start + 1000])
        for account_id, available in session.execute(
            select(Account.id, Account.credits_posted - Account.debits_posted - Account.debits_pending).where(
                Account.id.in_(chunk)
            )
        ):
            out[int(account_id)] = int(available)
    return out


def _write_statements(session: Session, day: dt.date, lines: Sequence[StatementLine]) -> None:
    rows = [
        {
            "window_day": day, "payee_account_id": line.payee_account_id, "payee_id": line.payee_id,
            "payee_name": line.payee_name, "count": line.totals.count, "gross_fen": line.totals.gross_fen,
            "refund_count": line.totals.refund_count, "refunds_fen": line.totals.refunds_fen,
            "late_count": line.totals.late_count, "late_fen": line.totals.late_fen, "fee_fen": line.fee_fen,
            "net_fen": line.net_fen, "carry_in_fen": line.carry_in_fen, "payout_fen": line.payout_fen,
            "carry_out_fen": line.carry_out_fen, "fee_bps": line.schedule.bps, "fee_min_fen": line.schedule.min_fen,
            "fee_cap_fen": line.schedule.cap_fen, "fee_rounding": line.schedule.rounding.value,
            "account_name": line.account.name if line.account else None,
            "account_number": line.account.number if line.account else None,
            "cnaps_code": line.account.cnaps if line.account else None,
            "end_to_end_id": line.end_to_end_id, "held_reason": line.held_reason,
            "sharing_fen": line.sharing_fen, "sharing_owed_fen": line.sharing_owed_fen,
        }
        for line in lines
    ]  # fmt: skip
    for start in range(0, len(rows), 5000):
        session.execute(insert(StatementRow), rows[start : start + 5000])


def _write_carries(session: Session, day: dt.date, lines: Sequence[StatementLine]) -> None:
    rows = [{"payee_account_id": line.payee_account_id, "carry_fen": line.carry_out_fen, "through_day": day,
             "sharing_owed_fen": line.sharing_owed_fen} for line in lines]  # fmt: skip
    if not rows:
        return
    upsert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    for start in range(0, len(rows), 5000):
        stmt = upsert(CarryRow).values(rows[start : start + 5000])
        session.execute(
            stmt.on_conflict_do_update(
                index_elements=["payee_account_id"],
                set_={
                    "carry_fen": stmt.excluded.carry_fen,
                    "through_day": stmt.excluded.through_day,
                    "sharing_owed_fen": stmt.excluded.sharing_owed_fen,
                },
            )
        )


# --- files ----------------------------------------------------------------------------------


def line_of(r: StatementRow) -> StatementLine:
    """A stored statement row as the close's ``StatementLine`` (sharing included)."""
    account = (
        BankAccount(r.account_name, r.account_number, r.cnaps_code)
        if r.account_name is not None and r.account_number is not None and r.cnaps_code is not None
        else None
    )
    return StatementLine(
        r.payee_account_id, r.payee_id, r.payee_name,
        Totals(r.count, r.gross_fen, r.refund_count, r.refunds_fen, r.late_count, r.late_fen),
        FeeSchedule(r.fee_bps, r.fee_min_fen, r.fee_cap_fen, Rounding(r.fee_rounding)), r.fee_fen, r.net_fen,
        r.carry_in_fen, r.payout_fen, r.carry_out_fen, account, r.end_to_end_id, r.held_reason, r.sharing_fen,
        r.sharing_owed_fen,
    )  # fmt: skip


def stored_lines(session: Session, day: dt.date) -> list[StatementLine]:
    rows = session.scalars(select(StatementRow).where(StatementRow.window_day == day))
    return sorted((line_of(r) for r in rows), key=lambda line: line.payee_account_id)


def _safe_cell(value: object) -> str:
    """A CSV cell a spreadsheet will not run as a formula (OWASP: prefix ``'``)."""
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@") and not text.lstrip("-").isdigit() else text


def _csv(header: Iterable[str], rows: Iterable[Iterable[object]]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([_safe_cell(v) for v in row])
    return out.getvalue().encode("utf-8")


def file_names(day: dt.date) -> dict[str, str]:
    d = day.isoformat()
    return {"payouts": f"payouts-{d}.csv", "pain001": f"pain001-{d}.xml", "statement": f"statement-{d}.csv",
            "late": f"late-{d}.csv"}  # fmt: skip


def render(
    session: Session,
    day: dt.date,
    *,
    lines: Sequence[StatementLine] | None = None,
    window_row: WindowRow | None = None,
    validate: bool = False,
) -> dict[str, bytes]:
    """The close's files, from the stored statements and window (the same bytes on every run).

    ``payouts`` (CSV) and ``pain001`` (only when something is paid; ``validate``: against the XSD,
    which the close does once, before it commits — later renders are checked against the SHA-256
    stored then, which is cheaper than xmlschema's ~1.5 ms per payout)
    from ``settlement.payouts``; ``statement`` (every payee's figures) and ``late`` (the
    window's late postings, by source) as CSV.
    """
    row = window_row or session.get(WindowRow, day)
    assert row is not None and row.payer_name and row.payer_account_name
    assert row.payer_account_number and row.payer_cnaps_code
    lines = stored_lines(session, day) if lines is None else sorted(lines, key=lambda line: line.payee_account_id)
    payer = Payer(row.payer_name, BankAccount(row.payer_account_name, row.payer_account_number, row.payer_cnaps_code))
    by_id = sorted(lines, key=lambda line: line.payee_id)
    paid = [PayeeNet(line.payee_id, line.payee_name, line.account, line.payout_fen)
            for line in by_id if line.payout_fen > 0 and line.account is not None]  # fmt: skip
    batch = payout_batch(
        business_day=day, created_at=row.sealed_at, execution_date=day + dt.timedelta(days=1), payer=payer,
        payees=paid, sequence=row.payout_sequence,
    )  # fmt: skip
    names = file_names(day)
    files = {names["payouts"]: payout_csv(batch)}
    if batch.lines:
        document = payout_pain001(batch)
        if validate:
            check_pain001(batch)  # the whole XSD in two parts, fast (payouts.check_pain001)
        files[names["pain001"]] = document
    files[names["statement"]] = _csv(
        STATEMENT_COLUMNS,
        (
            (day.isoformat(), line.payee_id, line.payee_name, line.totals.count, line.totals.gross_fen,
             line.totals.refund_count, line.totals.refunds_fen, line.totals.late_count, line.totals.late_fen,
             line.sharing_fen, line.fee_fen, line.net_fen, line.carry_in_fen, line.payout_fen, line.carry_out_fen,
             line.schedule.bps, line.schedule.min_fen, line.schedule.cap_fen, line.schedule.rounding.value,
             line.end_to_end_id, line.held_reason, line.sharing_owed_fen)
            for line in by_id
        ),
    )  # fmt: skip
    payee_ids = {line.payee_account_id: line.payee_id for line in lines}
    late = session.execute(
        select(PostingRow.source_ref, PostingRow.payee_account_id, PostingRow.kind, PostingRow.event_day,
               PostingRow.count, PostingRow.amount_fen)
        .where(PostingRow.window_day == day, PostingRow.late.is_(True))
    ).all()  # fmt: skip
    files[names["late"]] = _csv(
        LATE_COLUMNS,
        sorted(
            (day.isoformat(), ref, payee_ids.get(account, str(account)), kind, event_day.isoformat(), count, fen)
            for ref, account, kind, event_day, count, fen in late
        ),
    )
    files.update(interop_files(session, day, row.sealed_at))  # the interop hook (below)
    return files


# --- interop hook (issue 12): the net settlement instructions agreed with the peer city -----------
# ``interop_xian.window_close`` makes an instruction final when both cities' digests match; each
# appears once, in the files of the first close sealed after it became final (``interop-D.csv``),
# read by table name: settlement may not import interop (ARCHITECTURE.md). Nothing when none.
INTEROP_COLUMNS: Final = ("business_day", "peer_city", "window_day", "payer", "payee", "net_fen", "due_to_fen",
                          "due_from_fen", "digest", "finalized_at")  # fmt: skip


def interop_files(session: Session, day: dt.date, sealed_at: dt.datetime) -> dict[str, bytes]:
    """``interop-D.csv``: the instructions finalized after the previous close's seal, up to this one's."""
    from sqlalchemy import JSON, Date, String, column, table

    from clearing.models import UTCDateTime

    windows = table("interop_windows", column("peer_city", String), column("window_day", Date),
                    column("state", String), column("due_to_fen"), column("due_from_fen"), column("our_digest", String),
                    column("instruction", JSON), column("finalized_at", UTCDateTime()))  # fmt: skip
    before = session.execute(
        select(WindowRow.sealed_at).where(WindowRow.business_day < day).order_by(WindowRow.business_day.desc()).limit(1)
    ).scalar_one_or_none()
    rows = [
        r for r in session.execute(select(windows).where(windows.c.state == "final")).all()
        if r.finalized_at <= sealed_at and (before is None or r.finalized_at > before)
    ]  # fmt: skip
    if not rows:
        return {}
    lines = sorted(
        (day.isoformat(), r.peer_city, r.window_day.isoformat(), r.instruction.get("payer") or "",
         r.instruction.get("payee") or "", r.instruction.get("net_fen", 0), r.due_to_fen, r.due_from_fen,
         r.our_digest, r.finalized_at.isoformat())
        for r in rows
    )  # fmt: skip
    return {f"interop-{day.isoformat()}.csv": _csv(INTEROP_COLUMNS, lines)}


def write_files(directory: Path, files: Mapping[str, bytes]) -> list[str]:
    """Write each file atomically (temp, fsync, rename, fsync the directory) unless already identical."""
    directory.mkdir(parents=True, exist_ok=True)
    written: list[str] = []
    for name, data in sorted(files.items()):
        path = directory / name
        try:
            if path.read_bytes() == data:
                continue
        except FileNotFoundError:
            pass
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=directory)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        written.append(name)
    if written:
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return written


__all__ = [
    "BANK_SETTLEMENT_REF",
    "FEE_LIMITED",
    "CloseResult",
    "StatementLine",
    "Totals",
    "bank_settlement_account",
    "close_window",
    "file_names",
    "line_of",
    "render",
    "sharing_transfers",
    "statement_lines",
    "stored_lines",
    "write_files",
]
