"""Billers and bills: registration, the biller's CSV import, look-up, payment marks and the daily file.

``docs/utility-bills.md``. Pure rules first (``parse_bill_rows``, ``receipt_no``, ``daily_file_csv``,
``mask_account``), then the thin database functions around them; every function that writes takes
the caller's ``Session`` so a payment's mark commits with what proves it.

A biller is a settlement payee (``settlement.parties.add_payee``, kind ``merchant``, category
``utility``) with one virtual purchase terminal in clearing (``clearing.registry.register_terminal``,
operator = the biller): its purse records clear through clearing's normal ingest, crediting the
biller's payable and settlement's running totals, and the nightly close pays it like any merchant.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from sqlalchemy import select
from sqlalchemy.orm import Session

from clearing.business_day import DEFAULT_CLOCK, BusinessDayClock
from clearing.models import utcnow
from clearing.registry import register_terminal
from portal.identity import mask_real_name
from portal.modules.utility_bills.errors import BillCode, BillError
from portal.modules.utility_bills.models import BILLER_KINDS, UtilityBill, UtilityBiller

CATEGORY: Final = "utility"
ACCOUNT_RE: Final = re.compile(r"[0-9A-Za-z-]{4,32}")
PERIOD_RE: Final = re.compile(r"(20[0-9]{2})-(0[1-9]|1[0-2])")
BILLER_ID_RE: Final = re.compile(r"[a-z0-9][a-z0-9-]{1,63}")
AMOUNT_FEN_MAX: Final = 10_000_000  # 100,000 CNY: a bill above it is a typo in the biller's file
IMPORT_ROWS_MAX: Final = 100_000
CSV_COLUMNS: Final = ("account_no", "holder_name", "period", "amount_fen", "due_date")
FILE_COLUMNS: Final = (
    "paid_at",
    "business_day",
    "account_no",
    "period",
    "amount_fen",
    "via",
    "reference",
    "receipt_no",
)


# --- pure rules ------------------------------------------------------------------------------------


def mask_account(account_no: str) -> str:
    """The account number with all but its last 4 characters starred (pages and the audit log)."""
    keep = account_no[-4:]
    return "*" * max(len(account_no) - 4, 0) + keep


def check_account(account_no: str) -> str:
    value = account_no.strip()
    if ACCOUNT_RE.fullmatch(value) is None:
        raise BillError(BillCode.E_BILL_MALFORMED, "an account number is 4 to 32 letters, digits or hyphens")
    return value


def receipt_no(paid_day: dt.date, bill_id: int) -> str:
    """``UB`` + the business day + the bill: one receipt per bill, readable over the phone."""
    return f"UB{paid_day:%Y%m%d}{bill_id:010d}"


@dataclass(frozen=True, slots=True)
class BillRow:
    account_no: str
    holder_masked: str
    period: str
    amount_fen: int
    due_date: dt.date


@dataclass(frozen=True, slots=True)
class RowProblem:
    line: int
    field: str
    reason: str


def parse_bill_rows(text: str) -> tuple[list[BillRow], list[RowProblem]]:
    """A biller's CSV (header ``account_no,holder_name,period,amount_fen,due_date``), row by row.

    The holder's name is masked here and never kept in clear: the portal shows the masked form
    only (a bill is found by its account number, which is not a secret).
    """
    try:
        parsed = list(csv.reader(io.StringIO(text.lstrip("\ufeff"), newline=""), strict=True))
    except csv.Error as exc:
        return [], [RowProblem(1, "file", f"not a CSV file: {exc}")]
    rows: list[BillRow] = []
    problems: list[RowProblem] = []
    if not parsed or tuple(h.strip() for h in parsed[0]) != CSV_COLUMNS:
        return [], [RowProblem(1, "header", f"the header must be {','.join(CSV_COLUMNS)}")]
    seen: dict[tuple[str, str], int] = {}
    for line, fields in enumerate(parsed[1:], start=2):
        if line > IMPORT_ROWS_MAX + 1:
            problems.append(RowProblem(line, "file", f"at most {IMPORT_ROWS_MAX} rows"))
            break
        if not fields:
            continue
        if len(fields) != len(CSV_COLUMNS):
            problems.append(RowProblem(line, "row", f"{len(fields)} fields, not {len(CSV_COLUMNS)}"))
            continue
        account, holder, period, amount, due = (f.strip() for f in fields)
        before = len(problems)
        if ACCOUNT_RE.fullmatch(account) is None:
            problems.append(RowProblem(line, "account_no", "4 to 32 letters, digits or hyphens"))
        if not 0 < len(holder) <= 64:
            problems.append(RowProblem(line, "holder_name", "1 to 64 characters"))
        if PERIOD_RE.fullmatch(period) is None:
            problems.append(RowProblem(line, "period", "YYYY-MM"))
        if not (amount.isascii() and amount.isdigit() and 0 < int(amount) <= AMOUNT_FEN_MAX):
            problems.append(RowProblem(line, "amount_fen", f"a whole number of fen, 1 to {AMOUNT_FEN_MAX}"))
        try:
            due_date = dt.date.fromisoformat(due)
        except ValueError:
            problems.append(RowProblem(line, "due_date", "YYYY-MM-DD"))
            due_date = dt.date.min
        if (account, period) in seen and len(problems) == before:
            problems.append(
                RowProblem(line, "account_no", f"this account and period are already on line {seen[(account, period)]}")
            )
        if len(problems) == before:
            seen[(account, period)] = line
            rows.append(BillRow(account, mask_real_name(holder), period, int(amount), due_date))
    return rows, problems


@dataclass(frozen=True, slots=True)
class FileLine:
    paid_at: dt.datetime
    business_day: dt.date
    account_no: str
    period: str
    amount_fen: int
    via: str
    reference: str
    receipt_no: str


def _yuan(amount_fen: int) -> str:
    whole, fen = divmod(amount_fen, 100)
    return f"{whole}.{fen:02d}"


def daily_file_csv(biller_id: str, day: dt.date, lines: Sequence[FileLine]) -> str:
    """The biller's file of one business day: a header, one line per payment, a total line.

    Amounts in fen (the biller's system reconciles to the fen) and in yuan for people; the total
    line lets the biller check the file is whole. The holder's name is not in it: the biller has it.
    """
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["biller", biller_id, "business_day", day.isoformat()])
    w.writerow([*FILE_COLUMNS, "amount_yuan"])
    for ln in sorted(lines, key=lambda x: (x.paid_at, x.receipt_no)):
        w.writerow(
            [
                ln.paid_at.astimezone(dt.UTC).isoformat(),
                ln.business_day.isoformat(),
                ln.account_no,
                ln.period,
                ln.amount_fen,
                ln.via,
                ln.reference,
                ln.receipt_no,
                _yuan(ln.amount_fen),
            ]
        )
    total = sum(ln.amount_fen for ln in lines)
    w.writerow(["total", len(lines), "", "", total, "", "", "", _yuan(total)])
    return out.getvalue()


# --- the database side -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BillerView:
    id: str
    name: str
    kind: str
    terminal_id: str


@dataclass(frozen=True, slots=True)
class BillView:
    id: int
    biller_id: str
    biller_name: str
    biller_kind: str
    account_masked: str
    holder_masked: str
    period: str
    amount_fen: int
    due_date: dt.date
    state: str
    paid_at: dt.datetime | None
    paid_day: dt.date | None
    paid_via: str | None
    paid_ref: str | None
    receipt_no: str | None


def biller_view(b: UtilityBiller) -> BillerView:
    return BillerView(b.id, b.name, b.kind, b.terminal_id)


def bill_view(bill: UtilityBill, biller: UtilityBiller) -> BillView:
    return BillView(
        bill.id,
        biller.id,
        biller.name,
        biller.kind,
        mask_account(bill.account_no),
        bill.holder_masked,
        bill.period,
        bill.amount_fen,
        bill.due_date,
        bill.state,
        bill.paid_at,
        bill.paid_day,
        bill.paid_via,
        bill.paid_ref,
        bill.receipt_no,
    )


def ensure_biller(
    session: Session, biller_id: str, *, name: str, kind: str, terminal_id: str, actor: str
) -> UtilityBiller:
    """The biller, registered once: a settlement merchant (category ``utility``) and its virtual terminal.

    Idempotent for the demo and ``make run``: a biller already here is answered as it is.
    """
    existing = session.get(UtilityBiller, biller_id)
    if existing is not None:
        return existing
    if BILLER_ID_RE.fullmatch(biller_id) is None or kind not in BILLER_KINDS:
        raise BillError(
            BillCode.E_BILL_MALFORMED,
            "a biller id is 2-64 lower-case letters, digits or hyphens; kind water, electricity or gas",
        )
    from clearing.models import Operator
    from settlement.parties import add_payee

    if session.get(Operator, biller_id) is None:
        add_payee(session, biller_id, name=name, kind="merchant", category=CATEGORY, actor=actor)
    register_terminal(session, terminal_id, biller_id, replace_token=True)
    biller = UtilityBiller(id=biller_id, name=name, kind=kind, terminal_id=terminal_id.lower(), ttc_next=1)
    session.add(biller)
    session.flush()
    return biller


def billers(session: Session) -> list[BillerView]:
    return [biller_view(b) for b in session.scalars(select(UtilityBiller).order_by(UtilityBiller.id))]


def biller_of(session: Session, biller_id: str) -> UtilityBiller:
    biller = session.get(UtilityBiller, biller_id[:64])
    if biller is None:
        raise BillError(BillCode.E_BILL_BILLER_UNKNOWN, "no such biller")
    return biller


@dataclass(frozen=True, slots=True)
class ImportResult:
    added: int
    unchanged: int


def import_bills(session: Session, biller_id: str, text: str) -> ImportResult:
    """All rows or none: a bad row refuses the file with every problem; a row already here unchanged is skipped.

    A row that names an existing bill (account, period) with another amount or due date is a
    problem too: bills are never edited in place (a correction is the biller's new period).
    """
    biller_of(session, biller_id)
    rows, problems = parse_bill_rows(text)
    existing = {
        (b.account_no, b.period): b
        for b in session.scalars(select(UtilityBill).where(UtilityBill.biller_id == biller_id))
    }
    added = unchanged = 0
    new: list[UtilityBill] = []
    for row in rows:
        old = existing.get((row.account_no, row.period))
        if old is not None:
            if (old.amount_fen, old.due_date) != (row.amount_fen, row.due_date):
                problems.append(
                    RowProblem(
                        0,
                        "amount_fen",
                        f"account {mask_account(row.account_no)} {row.period} is already billed differently",
                    )
                )
            else:
                unchanged += 1
            continue
        new.append(
            UtilityBill(
                biller_id=biller_id,
                account_no=row.account_no,
                holder_masked=row.holder_masked,
                period=row.period,
                amount_fen=row.amount_fen,
                due_date=row.due_date,
                state="open",
            )
        )
        added += 1
    if problems:
        summary = "; ".join(f"line {p.line}, {p.field}: {p.reason}" for p in problems[:20])
        raise BillError(BillCode.E_BILL_IMPORT, f"{len(problems)} bad row(s), nothing imported: {summary}")
    session.add_all(new)
    session.flush()
    return ImportResult(added, unchanged)


def lookup(session: Session, biller_id: str, account_no: str) -> list[BillView]:
    """The account's bills at the biller, open ones first, then the paid, newest period first."""
    biller = biller_of(session, biller_id)
    account = check_account(account_no)
    found = session.scalars(
        select(UtilityBill)
        .where(UtilityBill.biller_id == biller.id, UtilityBill.account_no == account)
        .order_by(UtilityBill.period.desc())
        .limit(24)
    ).all()
    if not found:
        raise BillError(BillCode.E_BILL_NOT_FOUND, "no bill for this account number at this biller")
    views = [bill_view(b, biller) for b in found]
    return sorted(views, key=lambda v: (v.state != "open", v.period), reverse=False)


def bill_of(session: Session, bill_id: int, *, lock: bool = False) -> tuple[UtilityBill, UtilityBiller]:
    query = select(UtilityBill).where(UtilityBill.id == bill_id)
    if lock:
        query = query.with_for_update()
    bill = session.execute(query).scalar_one_or_none()
    if bill is None:
        raise BillError(BillCode.E_BILL_NOT_FOUND, "no such bill")
    biller = session.get(UtilityBiller, bill.biller_id)
    assert biller is not None  # the foreign key
    return bill, biller


def mark_paid(
    bill: UtilityBill, *, via: str, ref: str, at: dt.datetime, days: BusinessDayClock = DEFAULT_CLOCK
) -> None:
    """The bill paid, in the caller's transaction (with the record or event that proves it)."""
    assert bill.state == "open", "a bill is paid once"
    day = days.day_of(at)
    bill.state, bill.paid_via, bill.paid_ref, bill.paid_at, bill.paid_day = "paid", via, ref, at, day
    bill.receipt_no = receipt_no(day, bill.id)


def daily_file(session: Session, biller_id: str, day: dt.date) -> str:
    biller = biller_of(session, biller_id)
    paid: Iterable[UtilityBill] = session.scalars(
        select(UtilityBill).where(UtilityBill.biller_id == biller.id, UtilityBill.paid_day == day)
    )
    lines = [
        FileLine(
            b.paid_at or utcnow(),
            day,
            b.account_no,
            b.period,
            b.amount_fen,
            b.paid_via or "",
            b.paid_ref or "",
            b.receipt_no or "",
        )
        for b in paid
    ]
    return daily_file_csv(biller.id, day, lines)


__all__ = [
    "CATEGORY",
    "BillRow",
    "BillView",
    "BillerView",
    "FileLine",
    "ImportResult",
    "RowProblem",
    "bill_of",
    "bill_view",
    "biller_of",
    "billers",
    "daily_file",
    "daily_file_csv",
    "ensure_biller",
    "import_bills",
    "lookup",
    "mark_paid",
    "mask_account",
    "parse_bill_rows",
    "receipt_no",
]
