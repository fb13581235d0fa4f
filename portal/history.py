"""A card's history for its citizen: filters, keyset pages and CSV (pure), and the query shell.

``docs/portal.md``, "Pages". The history of a card is what its stored-value account holds:
the **posted** transfers of its liability account (taps, loads, the sale at the counter,
refunds, balance moves, write-offs), newest first. Reservations (pending) and voids are not
history: a pending load is shown apart, with the balance.

- **When.** A row is ordered and filtered by when it was cleared (the transfer's time, UTC,
  the date in Asia/Shanghai); a tap also shows its own time on the card's clock. Filtering by
  the cleared time keeps the query on the ledger's indexes alone (``docs/decisions.md``).
- **Filters** (``parse_filter``, every refusal ``E_PORTAL_MALFORMED`` with a sentence):
  ``from`` / ``to`` (ISO dates, inclusive, at most ``RANGE_DAYS_MAX`` apart), ``kind`` (one of
  ``KINDS``), ``terminal`` (12 hex digits: that terminal's taps), ``merchant`` (an operator or
  merchant id: what moved between the card and its payable).
- **Pages** are keyset pages on (cleared time, transfer id) descending; the cursor is those
  two, base64url. ``limit`` is bounded (``LIMIT_MAX``). Each page is a fixed number of
  queries whatever its size (no N+1): the two sides of the account (each on its own index),
  the taps of the page by their unique (terminal, seq) key, the counterparties by id.
- **CSV** (``to_csv``): a text cell that begins with ``=``, ``+``, ``-``, ``@``, a tab or a
  carriage return is prefixed with ``'`` (OWASP, "CSV Injection"), so a spreadsheet never
  runs a merchant's name as a formula; amounts are our own signed numbers and stay numbers.
"""

from __future__ import annotations

import base64
import binascii
import csv
import datetime as dt
import io
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final
from zoneinfo import ZoneInfo

from sqlalchemy import Select, and_, func, or_, select, tuple_
from sqlalchemy.orm import Session

from clearing.models import Account, AccountCode, Operator, Tap, Transfer, TransferCode, TransferState
from portal.errors import Code, PortalError

SHANGHAI: Final = ZoneInfo("Asia/Shanghai")
LIMIT_DEFAULT: Final = 50
LIMIT_MAX: Final = 200
CSV_ROWS_MAX: Final = 10_000
RANGE_DAYS_MAX: Final = 3 * 366
PARAM_CHARS_MAX: Final = 128

# What a citizen calls each kind of money movement (the ledger's codes); the filter's values.
KINDS: Final[Mapping[str, TransferCode]] = {
    "purchase": TransferCode.PURCHASE,
    "load": TransferCode.LOAD,
    "card_sale": TransferCode.CARD_SALE,
    "refund": TransferCode.REFUND,
    "balance_move": TransferCode.BALANCE_MOVE,
    "write_off": TransferCode.WRITE_OFF,
    "medical": TransferCode.MEDICAL,
    "interop": TransferCode.INTEROP,
    "fee": TransferCode.FEE,
}
_KIND_OF_CODE: Final = {int(code): name for name, code in KINDS.items()}
_TERMINAL: Final = re.compile(r"[0-9A-Za-z]{12}")  # the contract says 12 hex; older test rigs use t0…
_MERCHANT: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._-]{0,63}")
_TAP_ID: Final = re.compile(r"tap:([0-9A-Za-z]{12}):([0-9]{1,10})")


def _malformed(message: str) -> PortalError:
    return PortalError(Code.E_PORTAL_MALFORMED, message)


@dataclass(frozen=True, slots=True)
class HistoryFilter:
    date_from: dt.date | None = None
    date_to: dt.date | None = None
    kind: str | None = None
    terminal_id: str | None = None
    merchant: str | None = None

    def __post_init__(self) -> None:
        assert self.kind is None or self.kind in KINDS, self.kind
        assert self.terminal_id is None or _TERMINAL.fullmatch(self.terminal_id), self.terminal_id

    @property
    def active(self) -> bool:
        return any(v is not None for v in (self.date_from, self.date_to, self.kind, self.terminal_id, self.merchant))

    def query(self) -> dict[str, str]:
        """The filter as query parameters (the CSV link, the next page's link)."""
        out = {
            "from": self.date_from.isoformat() if self.date_from else None,
            "to": self.date_to.isoformat() if self.date_to else None,
            "kind": self.kind,
            "terminal": self.terminal_id,
            "merchant": self.merchant,
        }
        return {k: v for k, v in out.items() if v is not None}


def _param(params: Mapping[str, str], name: str) -> str | None:
    value = params.get(name)
    if value is None:
        return None
    value = value.strip()
    if len(value) > PARAM_CHARS_MAX:
        raise _malformed(f"{name}: at most {PARAM_CHARS_MAX} characters")
    return value or None


def _date(params: Mapping[str, str], name: str) -> dt.date | None:
    value = _param(params, name)
    if value is None:
        return None
    if re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", value) is None:
        raise _malformed(f"{name}: a date is written YYYY-MM-DD, e.g. 2026-12-02")
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise _malformed(f"{name}: {value} is not a calendar date") from None


def parse_filter(params: Mapping[str, str]) -> HistoryFilter:
    """The history filter of a request's query (empty fields are no filter); ``E_PORTAL_MALFORMED`` else."""
    date_from, date_to = _date(params, "from"), _date(params, "to")
    if date_from and date_to:
        if date_from > date_to:
            raise _malformed("from: the first date is after the last")
        if (date_to - date_from).days > RANGE_DAYS_MAX:
            raise _malformed(f"to: at most {RANGE_DAYS_MAX} days at a time")
    kind = _param(params, "kind")
    if kind is not None and kind not in KINDS:
        raise _malformed(f"kind: one of {', '.join(KINDS)}")
    terminal = _param(params, "terminal")
    if terminal is not None and _TERMINAL.fullmatch(terminal) is None:
        raise _malformed("terminal: a terminal id is 12 hexadecimal digits")
    merchant = _param(params, "merchant")
    if merchant is not None and _MERCHANT.fullmatch(merchant) is None:
        raise _malformed("merchant: an operator or merchant id is letters, digits, space, '.', '_' or '-'")
    return HistoryFilter(date_from, date_to, kind, terminal.lower() if terminal else None, merchant)


def parse_limit(text: str | None) -> int:
    if text is None or not text.strip():
        return LIMIT_DEFAULT
    if re.fullmatch(r"[0-9]{1,4}", text.strip()) is None or not 1 <= int(text) <= LIMIT_MAX:
        raise _malformed(f"limit: a whole number from 1 to {LIMIT_MAX}")
    return int(text)


# --- the cursor: (cleared time, transfer id) of the last row of a page ---------------------


@dataclass(frozen=True, slots=True)
class Cursor:
    at: dt.datetime
    transfer_id: str


def encode_cursor(cursor: Cursor) -> str:
    raw = f"{cursor.at.astimezone(dt.UTC).isoformat()}|{cursor.transfer_id}".encode()
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_cursor(text: str | None) -> Cursor | None:
    if text is None or not text.strip():
        return None
    bad = _malformed("cursor: not a cursor this history gave; start from the first page")
    if len(text) > 256 or re.fullmatch(r"[A-Za-z0-9_-]+", text) is None:
        raise bad
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode("utf-8")
        at_text, _, transfer_id = raw.partition("|")
        at = dt.datetime.fromisoformat(at_text)
    except (ValueError, UnicodeDecodeError, binascii.Error):
        raise bad from None
    if at.tzinfo is None or not transfer_id or len(transfer_id) > 80:
        raise bad
    return Cursor(at.astimezone(dt.UTC), transfer_id)


# --- rows ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    transfer_id: str
    cleared_at: dt.datetime  # UTC
    kind: str
    amount_fen: int  # signed: + into the card, - out of it
    terminal_id: str | None = None
    tap_time: dt.datetime | None = None  # the card's own clock, as an aware datetime
    counterparty: str | None = None  # operator or merchant id
    counterparty_name: str | None = None
    route_id: str | None = None
    stop_id: str | None = None


@dataclass(frozen=True, slots=True)
class HistoryPage:
    entries: list[HistoryEntry]
    next_cursor: str | None


def tap_key(transfer_id: str) -> tuple[str, int] | None:
    """(terminal, seq) of a tap's transfer id (``clearing.transfer_ids.tap``), else None."""
    m = _TAP_ID.fullmatch(transfer_id)
    return (m.group(1), int(m.group(2))) if m else None


def day_bounds(date_from: dt.date | None, date_to: dt.date | None) -> tuple[dt.datetime | None, dt.datetime | None]:
    """The UTC instants of Asia/Shanghai dates: [start of from, start of the day after to)."""
    start = dt.datetime.combine(date_from, dt.time(), SHANGHAI).astimezone(dt.UTC) if date_from else None
    end = (
        dt.datetime.combine(date_to + dt.timedelta(days=1), dt.time(), SHANGHAI).astimezone(dt.UTC) if date_to else None
    )
    return start, end


# --- CSV -------------------------------------------------------------------------------------

_FORMULA_START: Final = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER: Final = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")
CSV_HEADER: Final = (
    "cleared_at",
    "tap_time",
    "kind",
    "amount_yuan",
    "terminal",
    "merchant",
    "merchant_name",
    "route",
    "stop",
    "transfer_id",
)


def csv_cell(value: str) -> str:
    """A text cell a spreadsheet will not run: ``'`` before a leading ``= + - @``, tab or CR.

    A plain number (our own signed amounts, ``-2.00``) stays a number.
    """
    if value.startswith(_FORMULA_START) and _PLAIN_NUMBER.fullmatch(value) is None:
        return "'" + value
    return value


def _stamp(moment: dt.datetime | None) -> str:
    if moment is None:
        return ""
    local = moment.astimezone(SHANGHAI)
    return f"{local:%Y-%m-%d %H:%M:%S}{local.isoformat()[-6:]}"


def _amount(fen: int) -> str:
    sign = "-" if fen < 0 else ""
    whole, cents = divmod(abs(fen), 100)
    return f"{sign}{whole}.{cents:02d}"


def to_csv(entries: Iterable[HistoryEntry]) -> str:
    """The entries as CSV (UTF-8 with a BOM when written, so spreadsheets read Chinese names)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_HEADER)
    for e in entries:
        row = (
            _stamp(e.cleared_at),
            _stamp(e.tap_time),
            e.kind,
            _amount(e.amount_fen),
            e.terminal_id or "",
            e.counterparty or "",
            e.counterparty_name or "",
            e.route_id or "",
            e.stop_id or "",
            e.transfer_id,
        )
        writer.writerow([csv_cell(c) for c in row])
    return out.getvalue()


# --- the query shell ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Row:
    id: str
    created_at: dt.datetime
    code: int
    amount_fen: int  # signed
    counterparty: int


def _side(
    account_id: int,
    incoming: bool,
    f: HistoryFilter,
    merchant_account: int | None,
    cursor: Cursor | None,
    limit: int,
) -> Select[str, dt.datetime, int, int, int]:
    """One side of the card's account (credited or debited), on that column's own index."""
    mine = Transfer.credit_account_id if incoming else Transfer.debit_account_id
    theirs = Transfer.debit_account_id if incoming else Transfer.credit_account_id
    stmt = select(Transfer.id, Transfer.created_at, Transfer.code, Transfer.amount_fen, theirs).where(
        mine == account_id, Transfer.state == TransferState.POSTED.value
    )
    start, end = day_bounds(f.date_from, f.date_to)
    if start is not None:
        stmt = stmt.where(Transfer.created_at >= start)
    if end is not None:
        stmt = stmt.where(Transfer.created_at < end)
    if f.kind is not None:
        stmt = stmt.where(Transfer.code == int(KINDS[f.kind]))
    if f.terminal_id is not None:
        stmt = stmt.where(Transfer.id.like(f"tap:{f.terminal_id}:%"))
    if f.merchant is not None:
        stmt = stmt.where(theirs == (merchant_account if merchant_account is not None else -1))
    if cursor is not None:
        stmt = stmt.where(
            or_(
                Transfer.created_at < cursor.at,
                and_(Transfer.created_at == cursor.at, Transfer.id < cursor.transfer_id),
            )
        )
    return stmt.order_by(Transfer.created_at.desc(), Transfer.id.desc()).limit(limit)


def _merchant_account(session: Session, merchant: str) -> int | None:
    return session.scalar(
        select(Account.id).where(
            Account.code == int(AccountCode.OPERATOR_PAYABLE), Account.owner_ref == f"operator:{merchant}"
        )
    )


def history_page(
    session: Session,
    account_id: int,
    f: HistoryFilter,
    *,
    limit: int = LIMIT_DEFAULT,
    cursor: Cursor | None = None,
) -> HistoryPage:
    """One page of a card's history, newest first, and the cursor of the next (None at the end)."""
    assert 1 <= limit <= CSV_ROWS_MAX, limit
    merchant_account = _merchant_account(session, f.merchant) if f.merchant is not None else None
    rows: list[_Row] = []
    for incoming, sign in ((True, 1), (False, -1)):
        stmt = _side(account_id, incoming, f, merchant_account, cursor, limit + 1)
        rows.extend(_Row(i, at, int(c), sign * int(a), int(p)) for i, at, c, a, p in session.execute(stmt).all())
    rows.sort(key=lambda r: (r.created_at, r.id), reverse=True)
    more = len(rows) > limit
    rows = rows[:limit]
    taps = _taps_of(session, [k for k in (tap_key(r.id) for r in rows) if k is not None])
    parties = _parties_of(session, {r.counterparty for r in rows})
    entries = []
    for r in rows:
        key = tap_key(r.id)
        tap = taps.get(key) if key is not None else None
        party = parties.get(r.counterparty)
        entries.append(
            HistoryEntry(
                transfer_id=r.id,
                cleared_at=r.created_at,
                kind=_KIND_OF_CODE.get(r.code, "other"),
                amount_fen=r.amount_fen,
                terminal_id=key[0] if key is not None else None,
                tap_time=tap[0] if tap is not None else None,
                counterparty=party[0] if party is not None else None,
                counterparty_name=party[1] if party is not None else None,
                route_id=tap[1] if tap is not None else None,
                stop_id=tap[2] if tap is not None else None,
            )
        )
    last = rows[-1] if rows else None
    next_cursor = encode_cursor(Cursor(last.created_at, last.id)) if more and last is not None else None
    return HistoryPage(entries, next_cursor)


def last_cleared_at(session: Session, account_id: int) -> dt.datetime | None:
    """When the card's balance was last set by a cleared record: its newest posted transfer's time.

    One aggregate per side of the account, each on that side's index.
    """
    newest = [
        session.scalar(
            select(func.max(Transfer.created_at)).where(
                side == account_id, Transfer.state == TransferState.POSTED.value
            )
        )
        for side in (Transfer.credit_account_id, Transfer.debit_account_id)
    ]
    found = [t for t in newest if t is not None]
    return max(found) if found else None


def _taps_of(
    session: Session, keys: Sequence[tuple[str, int]]
) -> dict[tuple[str, int], tuple[dt.datetime, str | None, str | None]]:
    """The card-local time, route and stop of the page's taps, in one query on their unique key."""
    if not keys:
        return {}
    found = session.execute(
        select(Tap.terminal_id, Tap.terminal_seq, Tap.tx_time, Tap.tx_utc_offset_min, Tap.route_id, Tap.stop_id).where(
            tuple_(Tap.terminal_id, Tap.terminal_seq).in_(list(keys))
        )
    ).all()
    out = {}
    for terminal_id, seq, tx_time, offset_min, route_id, stop_id in found:
        local = tx_time.astimezone(dt.timezone(dt.timedelta(minutes=int(offset_min))))
        out[(terminal_id, int(seq))] = (local, route_id, stop_id)
    return out


def _parties_of(session: Session, account_ids: set[int]) -> dict[int, tuple[str, str | None]]:
    """Operators and merchants among the counterparties (id and name), in one query."""
    if not account_ids:
        return {}
    found = session.execute(
        select(Account.id, Account.owner_ref, Operator.name)
        .outerjoin(Operator, Operator.payable_account_id == Account.id)
        .where(Account.id.in_(sorted(account_ids)), Account.code == int(AccountCode.OPERATOR_PAYABLE))
    ).all()
    return {int(i): (ref.removeprefix("operator:"), name) for i, ref, name in found}


__all__ = [
    "CSV_ROWS_MAX",
    "KINDS",
    "LIMIT_DEFAULT",
    "LIMIT_MAX",
    "Cursor",
    "HistoryEntry",
    "HistoryFilter",
    "HistoryPage",
    "csv_cell",
    "day_bounds",
    "decode_cursor",
    "encode_cursor",
    "history_page",
    "last_cleared_at",
    "parse_filter",
    "parse_limit",
    "tap_key",
    "to_csv",
]
