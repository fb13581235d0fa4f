"""Reconciliation of a closed window (``yikatong reconcile --date D``): every difference with its cause.

What is compared, each against the others (``docs/settlement.md``, "Reconciliation"):

* the **running totals** (``settlement_totals``) against their journal (``settlement_postings``);
* the **statements** against the totals, and each statement's arithmetic (fee from the stored
  schedule, ``fee + net == gross − refunds``, carry in = the payee's previous carry out);
* the **sharing** of transfer discounts: what the close moved sums to 0, and so does what stays
  owed (so the window's adjustments, moved + owed − owed before, do too);
* the **ledger**: each fee, sharing and payout transfer exists with the statement's amount, from
  the payee's payable, and no other transfer claims the close; every payee payable holds exactly its
  carry plus the open windows' running totals (a transfer that moved a payable outside the
  running totals shows here);
* the **window** row's sums against the statements;
* the **files** on disk against what the close stored (SHA-256) and against the statements
  (every payout line's end-to-end id, payee and amount);
* the **bank** (imported statements): returned payouts, and payouts no statement shows once
  one was imported for the day.

Nothing here writes; ``differences`` is empty exactly when everything agrees.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from clearing.models import Account, ExceptionItem, Operator, Transfer
from settlement import transfer_ids
from settlement.close import FEE_LIMITED, Totals, file_names, render, sharing_transfers, stored_lines
from settlement.fees import assess
from settlement.models import CarryRow, PayoutResultRow, PostingRow, StatementRow, TotalRow, WindowRow


@dataclass(frozen=True, slots=True)
class Difference:
    what: str  # "totals", "statement", "sharing", "ledger", "window", "file", "bank", "payable"
    subject: str  # the payee, file or transfer concerned
    expected: str
    found: str
    cause: str


def _journal(session: Session, day: dt.date) -> dict[int, Totals]:
    acc: dict[int, list[int]] = {}
    rows = session.execute(
        select(PostingRow.payee_account_id, PostingRow.kind, PostingRow.late, func.sum(PostingRow.count),
               func.sum(PostingRow.amount_fen))
        .where(PostingRow.window_day == day)
        .group_by(PostingRow.payee_account_id, PostingRow.kind, PostingRow.late)
    )  # fmt: skip
    for account, kind, late, count, fen in rows:
        v = acc.setdefault(int(account), [0, 0, 0, 0, 0, 0])
        offset = 0 if kind == "sale" else 2
        v[offset] += int(count)
        v[offset + 1] += int(fen)
        if late:
            v[4] += int(count)
            v[5] += int(fen)
    return {a: Totals(*v) for a, v in acc.items()}


def _totals(session: Session, day: dt.date) -> dict[int, Totals]:
    return {
        r.payee_account_id: Totals(r.count, r.gross_fen, r.refund_count, r.refunds_fen, r.late_count, r.late_fen)
        for r in session.scalars(select(TotalRow).where(TotalRow.window_day == day))
    }


def differences(session: Session, day: dt.date, out_dir: Path) -> list[Difference]:
    """Every disagreement about window ``day``, each with its cause (empty: all agree)."""
    found: list[Difference] = []
    add = found.append
    window = session.get(WindowRow, day)
    if window is None or window.state != "closed":
        add(Difference("window", str(day), "closed", window.state if window else "open",
                       f"the window has not been closed: run `yikatong settle --date {day}`"))  # fmt: skip
        return found
    totals, journal = _totals(session, day), _journal(session, day)
    for account in sorted(set(totals) | set(journal)):
        if totals.get(account, Totals()) != journal.get(account, Totals()):
            add(Difference("totals", f"payable {account}", str(journal.get(account)), str(totals.get(account)),
                           "the running totals disagree with their journal (a totals row edited, or a posting "
                           "written without its upsert)"))  # fmt: skip
    lines = stored_lines(session, day)
    by_account = {line.payee_account_id: line for line in lines}
    for account in sorted(set(totals) - set(by_account)):
        add(Difference("statement", f"payable {account}", str(totals[account]), "no statement",
                       "a payee with running totals has no statement in the close"))  # fmt: skip
    previous, owed_before = _previous_carries(session, day)
    found.extend(_sharing(day, lines, owed_before))
    for line in lines:
        who = line.payee_id
        if line.totals != totals.get(line.payee_account_id, Totals()):
            add(Difference("statement", who, str(totals.get(line.payee_account_id)), str(line.totals),
                           "the statement's figures are not the window's running totals"))  # fmt: skip
        fee = assess(line.totals.gross_fen, line.totals.refunds_fen, line.schedule).fee_fen
        if fee != line.fee_fen and not (line.fee_fen < fee and (line.held_reason or "").startswith(FEE_LIMITED)):
            add(Difference("statement", who, f"fee {fee}", f"fee {line.fee_fen}",
                           "the fee does not follow the schedule stored with the statement"))  # fmt: skip
        carry_in = previous.get(line.payee_account_id, 0)
        if carry_in != line.carry_in_fen:
            add(Difference("statement", who, f"carry in {carry_in}", f"carry in {line.carry_in_fen}",
                           "the carry in is not what the payee's previous statement carried out"))  # fmt: skip
    found.extend(_ledger(session, day, lines))
    sums = (
        len(lines),
        sum(x.totals.gross_fen for x in lines),
        sum(x.totals.refunds_fen for x in lines),
        sum(x.fee_fen for x in lines),
        sum(x.payout_fen for x in lines),
        sum(x.carry_out_fen for x in lines),
    )
    stored = (window.payees, window.gross_fen, window.refunds_fen, window.fee_fen, window.payout_fen, window.carry_fen)
    if sums != stored:
        add(Difference("window", str(day), str(sums), str(stored),
                       "the window's stored sums are not the sums of its statements"))  # fmt: skip
    found.extend(_files(session, day, window, out_dir))
    found.extend(_bank(session, day))
    found.extend(payable_differences(session))
    return found


def _sharing(day: dt.date, lines: Iterable[object], owed_before: dict[int, int]) -> list[Difference]:
    """Sharing only moves money between payables: moved, owed and the adjustments each sum to 0."""
    from settlement.close import StatementLine

    moved = owed = adjusted = 0
    for line in lines:
        assert isinstance(line, StatementLine)
        moved += line.sharing_fen
        owed += line.sharing_owed_fen
        adjusted += line.sharing_fen + line.sharing_owed_fen - owed_before.get(line.payee_account_id, 0)
    if not moved == owed == adjusted == 0:
        return [Difference("sharing", str(day), "moved 0, owed 0, adjustments 0",
                           f"moved {moved}, owed {owed}, adjustments {adjusted}",
                           "transfer-discount sharing does not sum to zero: it may only move money between payables "
                           "(a statement edited, or a payee owed sharing missing from the close)")]  # fmt: skip
    return []


def _previous_carries(session: Session, day: dt.date) -> tuple[dict[int, int], dict[int, int]]:
    latest = (
        select(StatementRow.payee_account_id, func.max(StatementRow.window_day).label("d"))
        .where(StatementRow.window_day < day)
        .group_by(StatementRow.payee_account_id)
        .subquery()
    )
    rows = session.execute(
        select(StatementRow.payee_account_id, StatementRow.carry_out_fen, StatementRow.sharing_owed_fen).join(
            latest,
            (latest.c.payee_account_id == StatementRow.payee_account_id) & (latest.c.d == StatementRow.window_day),
        )
    ).all()
    return {int(a): int(c) for a, c, _ in rows}, {int(a): int(o) for a, _, o in rows if o}


def _ledger(session: Session, day: dt.date, lines: Iterable[object]) -> list[Difference]:
    from settlement.close import StatementLine

    out: list[Difference] = []
    expected: dict[str, tuple[int, int]] = {}
    listed = [line for line in lines if isinstance(line, StatementLine)]
    for spec in sharing_transfers(day, listed):
        assert spec.debit_account_id is not None and spec.amount_fen is not None
        expected[spec.id] = (spec.debit_account_id, spec.amount_fen)
    for line in listed:
        if line.fee_fen:
            expected[transfer_ids.fee(day, line.payee_id)] = (line.payee_account_id, line.fee_fen)
        if line.payout_fen:
            expected[transfer_ids.payout(day, line.payee_id)] = (line.payee_account_id, line.payout_fen)
    posted = {
        t.id: (t.debit_account_id, t.amount_fen)
        for t in session.scalars(select(Transfer).where(Transfer.source_ref == f"close:{day}"))
    }
    for transfer_id in sorted(set(expected) | set(posted)):
        want, have = expected.get(transfer_id), posted.get(transfer_id)
        if want != have:
            cause = ("the close's transfer is missing from the ledger" if have is None
                     else "a transfer claims the close but no statement asks for it" if want is None
                     else "the ledger transfer's payable or amount differs from the statement")  # fmt: skip
            out.append(Difference("ledger", transfer_id, str(want), str(have), cause))
    return out


def payable_differences(session: Session) -> list[Difference]:
    """Every payee payable == its carry + the running totals of the windows not yet closed (as of now).

    One statement, so one snapshot: read in parts, an ingest batch committing between the totals and
    the balances (ingest runs all day) would show a difference that is not there. The windows not
    closed are those after the latest closed day: a sealed window's money is still in its payable
    until its settle moves it into the carries (closes settle in day order).
    """
    closed = select(func.max(WindowRow.business_day)).where(WindowRow.state == "closed").scalar_subquery()
    open_totals = (
        select(TotalRow.payee_account_id.label("account"),
               func.sum(TotalRow.gross_fen - TotalRow.refunds_fen).label("fen"))
        .where(or_(closed.is_(None), TotalRow.window_day > closed))
        .group_by(TotalRow.payee_account_id)
        .subquery()
    )  # fmt: skip
    rows = session.execute(
        select(Operator.operator_id, Account.credits_posted - Account.debits_posted,
               func.coalesce(CarryRow.carry_fen, 0) + func.coalesce(open_totals.c.fen, 0))
        .join(Account, Account.id == Operator.payable_account_id)
        .outerjoin(CarryRow, CarryRow.payee_account_id == Account.id)
        .outerjoin(open_totals, open_totals.c.account == Account.id)
        .order_by(Operator.operator_id)
    )  # fmt: skip
    out: list[Difference] = []
    for operator_id, balance, want in rows:
        if int(balance) != int(want):
            out.append(Difference("payable", operator_id, f"{int(want)} (carry + open windows)", str(balance),
                                  "the payable moved by transfers no window holds (posted outside the running "
                                  "totals), or a close's transfers are missing"))  # fmt: skip
    return out


def _files(session: Session, day: dt.date, window: WindowRow, out_dir: Path) -> list[Difference]:
    out: list[Difference] = []
    stored = json.loads(window.files_sha256 or "{}")
    rendered = render(session, day)
    directory = out_dir / day.isoformat()
    for name in sorted(set(stored) | set(rendered)):
        want = stored.get(name)
        if name in rendered and hashlib.sha256(rendered[name]).hexdigest() != want:
            out.append(Difference("file", name, str(want), hashlib.sha256(rendered[name]).hexdigest(),
                                  "the stored statements no longer render the files the close wrote"))  # fmt: skip
        path = directory / name
        if not path.is_file():
            cause = f"the file is not on disk: `yikatong settle --date {day}` writes it again"
            out.append(Difference("file", str(path), "present", "missing", cause))
            continue
        have = hashlib.sha256(path.read_bytes()).hexdigest()
        if have != want:
            out.append(Difference("file", str(path), str(want), have, "the file on disk was changed after the close"))
    payouts = directory / file_names(day)["payouts"]
    if payouts.is_file():
        want_lines = {
            (x.end_to_end_id, x.payee_id, x.payout_fen) for x in stored_lines(session, day) if x.payout_fen > 0
        }
        try:
            reader = csv.DictReader(io.StringIO(payouts.read_text("utf-8")))
            have_lines = {(r["end_to_end_id"], r["payee_id"], int(r["amount_fen"])) for r in reader}
        except (KeyError, ValueError, UnicodeDecodeError) as exc:
            have_lines = set()
            out.append(Difference("file", str(payouts), "a payout CSV", f"unreadable ({exc})",
                                  "the payout file is not in the form the close writes"))  # fmt: skip
        for line in sorted(want_lines - have_lines, key=str):
            out.append(Difference("file", str(payouts), str(line), "absent", "a statement's payout is not in the file"))
        for line in sorted(have_lines - want_lines, key=str):
            out.append(Difference("file", str(payouts), "absent", str(line), "the file pays what no statement says"))
    return out


def _bank(session: Session, day: dt.date) -> list[Difference]:
    out: list[Difference] = []
    results = list(session.scalars(select(PayoutResultRow).where(PayoutResultRow.window_day == day)))
    for r in results:
        if r.status == "returned":
            out.append(Difference("bank", r.end_to_end_id, "cleared", f"returned ({r.reason or 'no reason'})",
                                  f"the payee's bank returned the payout (statement {r.statement_ref})"))  # fmt: skip
    flagged = {
        str(item.record.get("end_to_end_id"))
        for item in session.scalars(
            select(ExceptionItem).where(ExceptionItem.kind == "payout", ExceptionItem.code == "E_PAYOUT_UNMATCHED")
        )
        if item.record and item.record.get("window_day") == day.isoformat()
    }
    for item in session.scalars(
        select(ExceptionItem).where(ExceptionItem.kind == "payout", ExceptionItem.code == "E_STATEMENT_UNKNOWN_ENTRY")
    ):
        record = item.record or {}
        if record.get("window_day") == day.isoformat():  # an entry naming one of the day's payouts, wrongly
            seen = f"{record.get('amount_fen')} fen ({record.get('status')}) on {record.get('statement')}"
            out.append(Difference("bank", str(record.get("end_to_end_id")), "the payout once, for its amount", seen,
                                  item.message or "a statement entry does not match the day's payout"))  # fmt: skip
    if results or flagged:  # a statement was imported for the day: what it lacks is a difference
        from settlement.bank_statements import unmatched_payouts

        for e2e, payee_id, fen in unmatched_payouts(session, day):
            out.append(Difference("bank", e2e, f"{fen} fen to {payee_id} on a statement", "not on any statement",
                                  "the bank statements imported do not show this payout"))  # fmt: skip
    return out


__all__ = ["Difference", "differences", "payable_differences"]
