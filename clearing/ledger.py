"""Double-entry ledger after TigerBeetle: batch posting, idempotent by transfer id, two-phase.

``post_transfers`` is the one way money is written. It works in the caller's transaction:
it reads the accounts it touches (row-locked on PostgreSQL, in id order so concurrent
batches cannot deadlock), decides every transfer in memory against the flags, then
writes the new transfers in one multi-row INSERT and the account totals as relative
increments. The account flags are also CHECK constraints, so a stale read can never
push an account past its flag: the database refuses the commit.

Invariants (asserted where money is written and again where it is read, ``trial_balance``):
* every transfer moves a positive amount between two different accounts of one ledger;
* a replayed transfer id with the same fields changes nothing (result ``exists``); with
  other fields it is ``E_TRANSFER_CONFLICT``;
* total debits == total credits, and posted totals == the sum of posted transfers.

See ``docs/ledger.md`` for the accounting of each flow.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal, TypeVar, cast

from sqlalchemy import Table, bindparam, func, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.orm.util import identity_key

from clearing.contract.codes import Code
from clearing.errors import ClearingError
from clearing.models import LEDGER_CNY, Account, AccountFlag, Transfer, TransferState, utcnow
from clearing.transfer_ids import TRANSFER_ID_LEN_MAX

TRANSFERS_PER_CALL_MAX: Final = 100_000
_IN_CHUNK: Final = 1000  # ids per IN (...) list; well under SQLite's variable limit
_T = TypeVar("_T", str, int)
_TRANSFERS: Final = cast(Table, Transfer.__table__)
_ACCOUNTS: Final = cast(Table, Account.__table__)


class LedgerBatchError(ClearingError):
    """``post_transfers(strict=True)`` refused a batch; nothing was written. ``results`` says why."""

    def __init__(self, results: list[PostResult]) -> None:
        failed = [r for r in results if r.status == "failed"]
        first = failed[0]
        more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
        super().__init__(Code(first.code), f"transfer {first.id!r}: {first.message}{more}")
        self.results = results


Kind = Literal["single", "pending", "post_pending", "void_pending"]


@dataclass(frozen=True, slots=True, kw_only=True)
class TransferSpec:
    """One transfer to post. ``id`` is the idempotency key (``tap:<terminal_id>:<seq>``, ``issue:<asn>``).

    ``kind``: ``single`` posts at once; ``pending`` reserves; ``post_pending`` /
    ``void_pending`` resolve the pending transfer ``pending_id`` (accounts and, for a void,
    amount come from it; a post may take less than the pending amount).
    """

    id: str
    debit_account_id: int | None = None
    credit_account_id: int | None = None
    amount_fen: int | None = None
    code: int = 0
    ledger: int = LEDGER_CNY
    kind: Kind = "single"
    pending_id: str | None = None
    source_ref: str | None = None

    @classmethod
    def single(
        cls, id: str, debit: int, credit: int, amount_fen: int, code: int, *, source_ref: str | None = None
    ) -> TransferSpec:
        return cls(
            id=id, debit_account_id=debit, credit_account_id=credit, amount_fen=amount_fen, code=code,
            source_ref=source_ref,
        )  # fmt: skip

    @classmethod
    def pending(
        cls, id: str, debit: int, credit: int, amount_fen: int, code: int, *, source_ref: str | None = None
    ) -> TransferSpec:
        return cls(
            id=id, debit_account_id=debit, credit_account_id=credit, amount_fen=amount_fen, code=code,
            kind="pending", source_ref=source_ref,
        )  # fmt: skip

    @classmethod
    def post(cls, id: str, pending_id: str, amount_fen: int | None = None, *, code: int = 0) -> TransferSpec:
        return cls(id=id, pending_id=pending_id, amount_fen=amount_fen, code=code, kind="post_pending")

    @classmethod
    def void(cls, id: str, pending_id: str, *, code: int = 0) -> TransferSpec:
        return cls(id=id, pending_id=pending_id, code=code, kind="void_pending")


@dataclass(frozen=True, slots=True)
class PostResult:
    id: str
    status: Literal["created", "exists", "failed"]
    code: str = "OK"
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.status != "failed"


@dataclass(frozen=True, slots=True)
class AccountBalance:
    account_id: int
    debits_pending: int
    debits_posted: int
    credits_pending: int
    credits_posted: int

    @property
    def credit_balance_fen(self) -> int:
        """Posted balance of a credit-normal account (card liability, payables, revenue)."""
        return self.credits_posted - self.debits_posted

    @property
    def debit_balance_fen(self) -> int:
        """Posted balance of a debit-normal account (float, receivables)."""
        return self.debits_posted - self.credits_posted

    @property
    def available_credit_fen(self) -> int:
        """What a debits-must-not-exceed-credits account can still be debited."""
        return self.credits_posted - self.debits_posted - self.debits_pending


@dataclass(frozen=True, slots=True)
class TrialBalance:
    accounts: int
    debits_posted: int
    credits_posted: int
    debits_pending: int
    credits_pending: int
    transfers_posted_fen: int
    transfers_pending_fen: int


# --- in-memory working state of one call ------------------------------------------------

# The flags as plain ints: ``int & IntFlag`` builds an enum member per test, twice per transfer.
_DEBITS_LIMITED: Final = int(AccountFlag.DEBITS_MUST_NOT_EXCEED_CREDITS)
_CREDITS_LIMITED: Final = int(AccountFlag.CREDITS_MUST_NOT_EXCEED_DEBITS)


@dataclass(slots=True)
class _Acc:
    id: int
    ledger: int
    flags: int
    dp: int  # debits_pending
    dpo: int  # debits_posted
    cp: int
    cpo: int
    delta: list[int] = field(default_factory=lambda: [0, 0, 0, 0])  # dp, dpo, cp, cpo

    def add(self, dp: int = 0, dpo: int = 0, cp: int = 0, cpo: int = 0) -> None:
        self.dp += dp
        self.dpo += dpo
        self.cp += cp
        self.cpo += cpo
        self.delta[0] += dp
        self.delta[1] += dpo
        self.delta[2] += cp
        self.delta[3] += cpo

    def violation(self) -> tuple[Code, str] | None:
        if self.flags & _DEBITS_LIMITED and self.dp + self.dpo > self.cpo:
            return (
                Code.E_DEBITS_EXCEED_CREDITS,
                f"account {self.id} would have debits {self.dp + self.dpo} fen over credits {self.cpo} fen "
                "(debits must not exceed credits)",
            )
        if self.flags & _CREDITS_LIMITED and self.cp + self.cpo > self.dpo:
            return (
                Code.E_CREDITS_EXCEED_DEBITS,
                f"account {self.id} would have credits {self.cp + self.cpo} fen over debits {self.dpo} fen "
                "(credits must not exceed debits)",
            )
        return None


@dataclass(frozen=True, slots=True)
class _Row:
    """The stored form of a transfer, for comparisons and inserts."""

    id: str
    debit_account_id: int
    credit_account_id: int
    amount_fen: int
    ledger: int
    code: int
    state: str
    pending_id: str | None
    source_ref: str | None


def _chunks(items: Sequence[_T]) -> Iterable[list[_T]]:
    for i in range(0, len(items), _IN_CHUNK):
        yield list(items[i : i + _IN_CHUNK])


def _load_transfers(session: Session, ids: Iterable[str]) -> dict[str, _Row]:
    out: dict[str, _Row] = {}
    wanted = sorted(set(ids))
    cols = (
        Transfer.id, Transfer.debit_account_id, Transfer.credit_account_id, Transfer.amount_fen,
        Transfer.ledger, Transfer.code, Transfer.state, Transfer.pending_id, Transfer.source_ref,
    )  # fmt: skip
    for chunk in _chunks(wanted):
        for r in session.execute(select(*cols).where(Transfer.id.in_(chunk))):
            out[r[0]] = _Row(*r)
    return out


def _load_resolutions(session: Session, pending_ids: Iterable[str]) -> dict[str, str]:
    """pending id -> id of the transfer that already posted or voided it."""
    out: dict[str, str] = {}
    wanted = sorted(set(pending_ids))
    for chunk in _chunks(wanted):
        stmt = select(Transfer.id, Transfer.pending_id).where(Transfer.pending_id.in_(chunk))
        for tid, pid in session.execute(stmt):
            assert pid is not None
            out[pid] = tid
    return out


def _lock_accounts(session: Session, ids: Iterable[int]) -> dict[int, _Acc]:
    """Read (and on PostgreSQL row-lock, in id order) the accounts a batch touches."""
    out: dict[int, _Acc] = {}
    wanted = sorted(set(ids))
    cols = (
        Account.id, Account.ledger, Account.flags, Account.debits_pending, Account.debits_posted,
        Account.credits_pending, Account.credits_posted,
    )  # fmt: skip
    for chunk in _chunks(wanted):
        stmt = select(*cols).where(Account.id.in_(chunk)).order_by(Account.id).with_for_update()
        for r in session.execute(stmt):
            out[r[0]] = _Acc(*r)
    return out


def _expire_accounts(session: Session, ids: Iterable[int]) -> None:
    """ORM Account objects in this session are stale after a Core update; reload them on next access."""
    for account_id in ids:
        obj = session.identity_map.get(identity_key(Account, account_id))
        if obj is not None:
            session.expire(obj)


def _same(spec_row: _Row, stored: _Row, spec: TransferSpec) -> bool:
    """A replay matches when every field the caller gave equals the stored transfer."""
    if spec.debit_account_id is not None and spec.debit_account_id != stored.debit_account_id:
        return False
    if spec.credit_account_id is not None and spec.credit_account_id != stored.credit_account_id:
        return False
    if spec.amount_fen is not None and spec.amount_fen != stored.amount_fen:
        return False
    return (
        spec_row.ledger == stored.ledger
        and spec_row.code == stored.code
        and spec_row.state == stored.state
        and spec_row.pending_id == stored.pending_id
        and spec_row.source_ref == stored.source_ref
    )


_KIND_STATE: Final[dict[str, str]] = {
    "single": TransferState.POSTED,
    "pending": TransferState.PENDING,
    "post_pending": TransferState.POSTED,
    "void_pending": TransferState.VOIDED,
}


def _shape_error(spec: TransferSpec) -> str | None:
    if not spec.id or len(spec.id) > TRANSFER_ID_LEN_MAX:
        return f"id must be 1..{TRANSFER_ID_LEN_MAX} characters"
    if spec.kind not in _KIND_STATE:
        return f"unknown kind {spec.kind!r}"
    if spec.amount_fen is not None and (not isinstance(spec.amount_fen, int) or spec.amount_fen <= 0):
        return f"amount must be a positive integer number of fen, got {spec.amount_fen!r}"
    if spec.kind in ("single", "pending"):
        if spec.pending_id is not None:
            return f"a {spec.kind} transfer takes no pending_id"
        if spec.debit_account_id is None or spec.credit_account_id is None or spec.amount_fen is None:
            return "debit account, credit account and amount are required"
        if spec.debit_account_id == spec.credit_account_id:
            return f"debit and credit account are the same ({spec.debit_account_id})"
    else:
        if spec.pending_id is None:
            return f"{spec.kind} needs pending_id"
        if spec.kind == "void_pending" and spec.amount_fen is not None:
            return "a void takes the pending amount; give no amount"
    return None


def post_transfers(session: Session, transfers: Sequence[TransferSpec], *, strict: bool = True) -> list[PostResult]:
    """Post a batch of transfers in the caller's transaction; one result per transfer, in order.

    ``strict=True`` (default): if any transfer fails, nothing is written and
    ``LedgerBatchError`` carries every result. ``strict=False``: the failed ones are
    skipped and reported; the rest are written. Replays (same id, same fields) are
    ``exists`` and write nothing. Transfers in one batch see each other in order, so a
    pending transfer and its post may travel together.

    Concurrency: two transactions inserting the same new id race on the primary key; the
    loser gets ``IntegrityError`` and should retry the batch, which then answers ``exists``.
    """
    assert len(transfers) <= TRANSFERS_PER_CALL_MAX, "split batches larger than TRANSFERS_PER_CALL_MAX"
    if not transfers:
        return []
    existing = _load_transfers(session, [t.id for t in transfers] + [t.pending_id for t in transfers if t.pending_id])
    resolutions = _load_resolutions(session, [t.pending_id for t in transfers if t.pending_id])
    accounts = _lock_accounts(session, _account_ids(transfers, existing))
    return _decide_and_write(session, transfers, existing, resolutions, accounts, strict=strict, write=_write)


def _decide_and_write(
    session: Session,
    transfers: Sequence[TransferSpec],
    existing: Mapping[str, _Row],
    resolutions: dict[str, str],
    accounts: Mapping[int, _Acc],
    *,
    strict: bool,
    write: Callable[[Session, list[_Row], Mapping[int, _Acc]], None],
) -> list[PostResult]:
    """Decide the batch against the loaded, locked state; refuse it whole when ``strict``; write what is new."""
    results, new_rows = _decide(transfers, existing, resolutions, accounts)
    if strict and any(r.status == "failed" for r in results):
        raise LedgerBatchError(results)
    if new_rows:
        write(session, new_rows, accounts)
    return results


def _account_ids(transfers: Sequence[TransferSpec], existing: Mapping[str, _Row]) -> set[int]:
    """The accounts a batch touches: its own and those of the pending transfers it resolves."""
    account_ids: set[int] = set()
    for t in transfers:
        account_ids.update(a for a in (t.debit_account_id, t.credit_account_id) if a is not None)
        if t.pending_id and t.pending_id in existing:
            parent = existing[t.pending_id]
            account_ids.update((parent.debit_account_id, parent.credit_account_id))
    return account_ids


def _decide(
    transfers: Sequence[TransferSpec],
    existing: Mapping[str, _Row],
    resolutions: dict[str, str],
    accounts: Mapping[int, _Acc],
) -> tuple[list[PostResult], list[_Row]]:
    """Every transfer decided in order against the loaded state (moved in memory): results and new rows."""
    results: list[PostResult] = []
    new_rows: list[_Row] = []
    batch_rows: dict[str, _Row] = {}  # transfers created earlier in this call

    def fail(spec: TransferSpec, code: Code, message: str) -> None:
        results.append(PostResult(spec.id, "failed", code.value, message))

    for spec in transfers:
        shape = _shape_error(spec)
        if shape is not None:
            fail(spec, Code.E_INVALID_TRANSFER, shape)
            continue
        state = _KIND_STATE[spec.kind]
        stored = batch_rows.get(spec.id) or existing.get(spec.id)

        pending: _Row | None = None
        if spec.pending_id is not None:
            pending = batch_rows.get(spec.pending_id) or existing.get(spec.pending_id)
        if spec.kind in ("single", "pending"):
            assert spec.debit_account_id is not None and spec.credit_account_id is not None
            assert spec.amount_fen is not None
            debit_id, credit_id, amount = spec.debit_account_id, spec.credit_account_id, spec.amount_fen
        else:
            if pending is None or pending.state != TransferState.PENDING:
                if stored is None:
                    fail(spec, Code.E_PENDING_NOT_FOUND, f"no pending transfer {spec.pending_id!r}")
                    continue
                pending = None
            debit_id = spec.debit_account_id or (pending.debit_account_id if pending else 0)
            credit_id = spec.credit_account_id or (pending.credit_account_id if pending else 0)
            if pending is not None and (debit_id, credit_id) != (pending.debit_account_id, pending.credit_account_id):
                fail(spec, Code.E_INVALID_TRANSFER, "accounts differ from the pending transfer's")
                continue
            if spec.kind == "void_pending":
                amount = pending.amount_fen if pending else (stored.amount_fen if stored else 0)
            else:
                amount = spec.amount_fen or (pending.amount_fen if pending else (stored.amount_fen if stored else 0))
        row = _Row(
            spec.id, debit_id, credit_id, amount, spec.ledger,
            spec.code or (pending.code if pending else 0), state, spec.pending_id, spec.source_ref,
        )  # fmt: skip

        if stored is not None:
            if _same(row, stored, spec):
                results.append(PostResult(spec.id, "exists"))
            else:
                fail(spec, Code.E_TRANSFER_CONFLICT, f"id {spec.id!r} already posted with other fields")
            continue

        debit, credit = accounts.get(debit_id), accounts.get(credit_id)
        if debit is None or credit is None:
            missing = debit_id if debit is None else credit_id
            fail(spec, Code.E_ACCOUNT_NOT_FOUND, f"account {missing} does not exist")
            continue
        if not (debit.ledger == credit.ledger == spec.ledger):
            fail(
                spec,
                Code.E_LEDGER_MISMATCH,
                f"ledgers differ: transfer {spec.ledger}, debit {debit.ledger}, credit {credit.ledger}",
            )
            continue

        if spec.kind in ("post_pending", "void_pending"):
            assert pending is not None and spec.pending_id is not None
            resolved_by = resolutions.get(spec.pending_id)
            if resolved_by is not None:
                fail(
                    spec,
                    Code.E_PENDING_ALREADY_RESOLVED,
                    f"pending transfer {spec.pending_id!r} was already resolved by {resolved_by!r}",
                )
                continue
            if amount > pending.amount_fen:
                fail(
                    spec,
                    Code.E_PENDING_AMOUNT,
                    f"post of {amount} fen exceeds pending amount {pending.amount_fen} fen",
                )
                continue

        # Apply to the working state, then check both accounts; undo on violation.
        moves = _moves(spec.kind, amount, pending.amount_fen if pending else 0)
        debit.add(**moves[0])
        credit.add(**moves[1])
        violation = debit.violation() or credit.violation()
        if violation is not None:
            debit.add(**{k: -v for k, v in moves[0].items()})
            credit.add(**{k: -v for k, v in moves[1].items()})
            fail(spec, violation[0], violation[1])
            continue
        if spec.pending_id is not None:
            resolutions[spec.pending_id] = spec.id
        batch_rows[spec.id] = row
        new_rows.append(row)
        results.append(PostResult(spec.id, "created"))

    return results, new_rows


def _moves(kind: str, amount: int, pending_amount: int) -> tuple[dict[str, int], dict[str, int]]:
    """Column increments (debit side, credit side) for one transfer; see TigerBeetle's two-phase model."""
    if kind == "single":
        return {"dpo": amount}, {"cpo": amount}
    if kind == "pending":
        return {"dp": amount}, {"cp": amount}
    if kind == "post_pending":
        return {"dp": -pending_amount, "dpo": amount}, {"cp": -pending_amount, "cpo": amount}
    return {"dp": -pending_amount}, {"cp": -pending_amount}


def _write(session: Session, rows: list[_Row], accounts: Mapping[int, _Acc]) -> None:
    now = utcnow()
    payload = [
        {
            "id": r.id,
            "debit_account_id": r.debit_account_id,
            "credit_account_id": r.credit_account_id,
            "amount_fen": r.amount_fen,
            "ledger": r.ledger,
            "code": r.code,
            "state": r.state,
            "pending_id": r.pending_id,
            "source_ref": r.source_ref,
            "created_at": now,
        }
        for r in rows
    ]
    # Pending transfers first: a post in the same batch references its pending row (FK).
    payload.sort(key=lambda p: p["pending_id"] is not None)
    session.execute(_TRANSFERS.insert(), payload)
    deltas = {a.id: tuple(a.delta) for a in accounts.values() if any(a.delta)}
    _apply_deltas4(session, deltas)


def _apply_deltas4(session: Session, deltas: Mapping[int, tuple[int, ...]]) -> None:
    if not deltas:
        return
    table = _ACCOUNTS
    stmt = (
        update(table)
        .where(table.c.id == bindparam("b_id"))
        .values(
            debits_pending=table.c.debits_pending + bindparam("b_dp"),
            debits_posted=table.c.debits_posted + bindparam("b_dpo"),
            credits_pending=table.c.credits_pending + bindparam("b_cp"),
            credits_posted=table.c.credits_posted + bindparam("b_cpo"),
        )
    )
    params = [{"b_id": k, "b_dp": d[0], "b_dpo": d[1], "b_cp": d[2], "b_cpo": d[3]} for k, d in sorted(deltas.items())]
    _execute_flag_checked(session, stmt, params)
    _expire_accounts(session, deltas)


def post_transfers_bulk(
    session: Session, transfers: Sequence[TransferSpec], *, strict: bool = True
) -> list[PostResult]:
    """``post_transfers`` with set-based I/O on PostgreSQL, for batches of many transfers.

    The same decisions (``_decide``), results, rows and locks; only the statements differ: the
    stored transfers, their resolutions and the accounts (row-locked in id order) are read with one
    statement each over arrays, not chunked ``IN`` lists (psycopg and the server parse and plan a
    list of a thousand parameters afresh every time); the new transfers are written with COPY and
    the account totals with one ``UPDATE … FROM unnest``, as clearing's ingest writes them
    (``clearing.ingest_pg``). The flags are checked in memory and again by the CHECK constraints.
    A lost race on a new id raises ``IntegrityError``, as ``post_transfers`` does. Other
    databases: ``post_transfers``.
    """
    if session.get_bind().dialect.name != "postgresql":
        return post_transfers(session, transfers, strict=strict)
    assert len(transfers) <= TRANSFERS_PER_CALL_MAX, "split batches larger than TRANSFERS_PER_CALL_MAX"
    if not transfers:
        return []
    pending_ids = sorted({t.pending_id for t in transfers if t.pending_id})
    existing = _load_transfers_pg(session, sorted({t.id for t in transfers}.union(pending_ids)))
    resolutions: dict[str, str] = {}
    if pending_ids:
        rows = session.execute(_RESOLUTIONS_PG, {"ids": pg_text_array(pending_ids)})
        resolutions = {str(pid): str(tid) for tid, pid in rows}
    accounts = {
        r[0]: _Acc(*r)
        for r in session.execute(_LOCK_ACCOUNTS_PG, {"ids": pg_int_array(sorted(_account_ids(transfers, existing)))})
    }
    return _decide_and_write(session, transfers, existing, resolutions, accounts, strict=strict, write=_write_pg)


_TRANSFER_COLUMNS: Final = (
    "id, debit_account_id, credit_account_id, amount_fen, ledger, code, state, pending_id, source_ref"
)
# Joined with ``unnest`` rather than ``= ANY(…)``: the planner sizes an ``ANY`` by its array and
# from about a thousand ids prefers a sequential scan of the whole table (measured on accounts);
# an ``unnest`` is estimated at a hundred rows and probed through the index.
_LOAD_TRANSFERS_PG: Final = text(
    "SELECT t.id, t.debit_account_id, t.credit_account_id, t.amount_fen, t.ledger, t.code, t.state, t.pending_id, "
    "t.source_ref FROM unnest(CAST(:ids AS text[])) AS k(id) JOIN transfers t ON t.id = k.id"
)
_RESOLUTIONS_PG: Final = text(
    "SELECT t.id, t.pending_id FROM unnest(CAST(:ids AS text[])) AS k(id) JOIN transfers t ON t.pending_id = k.id"
)
_LOCK_ACCOUNTS_PG: Final = text(
    "SELECT a.id, a.ledger, a.flags, a.debits_pending, a.debits_posted, a.credits_pending, a.credits_posted "
    "FROM unnest(CAST(:ids AS bigint[])) AS k(id) JOIN accounts a ON a.id = k.id ORDER BY a.id FOR UPDATE OF a"
)
_ACCOUNT_DELTAS4_PG: Final = text(
    "UPDATE accounts AS a SET debits_pending = a.debits_pending + v.dp, debits_posted = a.debits_posted + v.dpo, "
    "credits_pending = a.credits_pending + v.cp, credits_posted = a.credits_posted + v.cpo "
    "FROM unnest(CAST(:ids AS bigint[]), CAST(:dp AS bigint[]), CAST(:dpo AS bigint[]), CAST(:cp AS bigint[]), "
    "CAST(:cpo AS bigint[])) AS v(id, dp, dpo, cp, cpo) WHERE a.id = v.id"
)
_COPY_ESCAPES: Final = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _load_transfers_pg(session: Session, ids: list[str]) -> dict[str, _Row]:
    return {r[0]: _Row(*r) for r in session.execute(_LOAD_TRANSFERS_PG, {"ids": pg_text_array(ids)})}


def pg_int_array(values: Iterable[int | None]) -> str:
    """A PostgreSQL array literal of integers (or NULL), for ``CAST(:p AS bigint[])``.

    psycopg's list dumper is pure Python and costs microseconds per element; set-based statements
    over a batch's thousands of values pass literals instead (as ``clearing.ingest_pg`` does).
    """
    return "{" + ",".join("NULL" if v is None else str(int(v)) for v in values) + "}"


def pg_text_array(values: Iterable[str | None]) -> str:
    """A PostgreSQL array literal of strings (or NULL), every element quoted and escaped."""
    return (
        "{"
        + ",".join("NULL" if v is None else '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"' for v in values)
        + "}"
    )


def _copy_field(value: str | int | None) -> str:
    """One COPY text field: NULL as ``\\N``; backslash, tab, CR and LF escaped."""
    if value is None:
        return "\\N"
    text_ = str(value)
    return text_ if text_.isprintable() and "\\" not in text_ else text_.translate(_COPY_ESCAPES)


def _write_pg(session: Session, rows: list[_Row], accounts: Mapping[int, _Acc]) -> None:
    """``_write`` on PostgreSQL: COPY the transfers, one ``UPDATE … FROM unnest`` for the totals."""
    import psycopg

    now = utcnow().isoformat()
    ordered = sorted(rows, key=lambda r: r.pending_id is not None)  # pending transfers first, as ``_write``
    data = "".join(
        "\t".join(
            _copy_field(v)
            for v in (r.id, r.debit_account_id, r.credit_account_id, r.amount_fen, r.ledger, r.code, r.state,
                      r.pending_id, r.source_ref)
        ) + f"\t{now}\n"
        for r in ordered
    )  # fmt: skip
    driver = session.connection().connection.driver_connection
    assert isinstance(driver, psycopg.Connection)
    copy_sql = f"COPY transfers ({_TRANSFER_COLUMNS}, created_at) FROM STDIN"
    try:
        with driver.cursor() as cur, cur.copy(copy_sql) as copy:
            copy.write(data)
    except psycopg.IntegrityError as exc:  # as SQLAlchemy raises it for ``post_transfers``' INSERT
        raise IntegrityError(copy_sql, None, exc) from exc
    deltas = sorted((a.id, a.delta) for a in accounts.values() if any(a.delta))
    if deltas:
        params = {
            "ids": pg_int_array(k for k, _ in deltas),
            "dp": pg_int_array(d[0] for _, d in deltas),
            "dpo": pg_int_array(d[1] for _, d in deltas),
            "cp": pg_int_array(d[2] for _, d in deltas),
            "cpo": pg_int_array(d[3] for _, d in deltas),
        }
        _execute_flag_checked(session, _ACCOUNT_DELTAS4_PG, params)
        _expire_accounts(session, [k for k, _ in deltas])


def _execute_flag_checked(session: Session, stmt: object, params: object) -> None:
    try:
        session.execute(stmt, params)  # type: ignore[call-overload]
    except IntegrityError as exc:
        text_ = str(exc.orig)
        if "debits_must_not_exceed_credits" in text_:
            raise ClearingError(Code.E_DEBITS_EXCEED_CREDITS, "an account would go past its flag") from exc
        if "credits_must_not_exceed_debits" in text_:
            raise ClearingError(Code.E_CREDITS_EXCEED_DEBITS, "an account would go past its flag") from exc
        raise


def apply_account_deltas(session: Session, deltas: Mapping[int, tuple[int, int]]) -> None:
    """Add ``(debit_fen, credit_fen)`` to each account's posted totals, for set-based bulk posting.

    For ingest paths that insert their transfers themselves (e.g. COPY) and aggregate the
    amounts per account: one statement on PostgreSQL (``UPDATE … FROM unnest(…)``, after
    locking the rows in id order), one executemany on SQLite. Flags are enforced by the
    CHECK constraints; a violation raises ``ClearingError`` and the caller must roll back.
    The caller owns the invariant that the deltas match the transfers it inserted
    (``trial_balance`` checks it).
    """
    if not deltas:
        return
    for account_id, (debit_fen, credit_fen) in deltas.items():
        assert isinstance(account_id, int) and debit_fen >= 0 and credit_fen >= 0, "deltas are non-negative fen"
    ordered = sorted(deltas.items())
    if session.get_bind().dialect.name == "postgresql":
        ids = [k for k, _ in ordered]
        session.execute(text("SELECT id FROM accounts WHERE id = ANY(:ids) ORDER BY id FOR UPDATE"), {"ids": ids}).all()
        stmt = text(
            "UPDATE accounts AS a SET debits_posted = a.debits_posted + v.d, "
            "credits_posted = a.credits_posted + v.c "
            "FROM unnest(CAST(:ids AS bigint[]), CAST(:ds AS bigint[]), CAST(:cs AS bigint[])) AS v(id, d, c) "
            "WHERE a.id = v.id"
        )
        params: object = {"ids": ids, "ds": [d for _, (d, _c) in ordered], "cs": [c for _, (_d, c) in ordered]}
        _execute_flag_checked(session, stmt, params)
        _expire_accounts(session, ids)
        return
    _apply_deltas4(session, {k: (0, d, 0, c) for k, (d, c) in ordered})


# --- reading back ------------------------------------------------------------------------


def balance(account: Account) -> AccountBalance:
    """The totals of an Account object as loaded (refresh it first if the session may be stale)."""
    return AccountBalance(
        account.id, account.debits_pending, account.debits_posted, account.credits_pending, account.credits_posted
    )


def account_balance(session: Session, account_id: int) -> AccountBalance:
    row = session.execute(
        select(Account.debits_pending, Account.debits_posted, Account.credits_pending, Account.credits_posted).where(
            Account.id == account_id
        )
    ).one_or_none()
    if row is None:
        raise ClearingError(Code.E_ACCOUNT_NOT_FOUND, f"account {account_id} does not exist")
    result = AccountBalance(account_id, *row)
    assert min(row) >= 0, f"account {account_id} has a negative total: {result}"
    return result


def trial_balance(session: Session) -> TrialBalance:
    """Sum every account and every transfer; raise ``ClearingError(E_LEDGER_INVARIANT)`` if they disagree.

    Checks: debits == credits (posted and pending), posted totals == sum of posted
    transfers, pending totals == sum of unresolved pending transfers.
    """
    acc = session.execute(
        select(
            func.count(Account.id),
            func.coalesce(func.sum(Account.debits_posted), 0),
            func.coalesce(func.sum(Account.credits_posted), 0),
            func.coalesce(func.sum(Account.debits_pending), 0),
            func.coalesce(func.sum(Account.credits_pending), 0),
        )
    ).one()
    posted = session.execute(
        select(func.coalesce(func.sum(Transfer.amount_fen), 0)).where(Transfer.state == TransferState.POSTED.value)
    ).scalar_one()
    resolution = _TRANSFERS.alias("resolution")
    unresolved = session.execute(
        select(func.coalesce(func.sum(Transfer.amount_fen), 0)).where(
            Transfer.state == TransferState.PENDING.value,
            ~select(resolution.c.id).where(resolution.c.pending_id == Transfer.id).exists(),
        )
    ).scalar_one()
    tb = TrialBalance(
        accounts=int(acc[0]),
        debits_posted=int(acc[1]),
        credits_posted=int(acc[2]),
        debits_pending=int(acc[3]),
        credits_pending=int(acc[4]),
        transfers_posted_fen=int(posted),
        transfers_pending_fen=int(unresolved),
    )
    if not (tb.debits_posted == tb.credits_posted == tb.transfers_posted_fen):
        raise ClearingError(Code.E_LEDGER_INVARIANT, f"posted totals disagree: {tb}")
    if not (tb.debits_pending == tb.credits_pending == tb.transfers_pending_fen):
        raise ClearingError(Code.E_LEDGER_INVARIANT, f"pending totals disagree: {tb}")
    return tb


def transfers_of(session: Session, account_id: int, *, limit: int = 100) -> list[Transfer]:
    """Newest transfers touching an account (history pages, ``card show``)."""
    assert 0 < limit <= 10_000
    stmt = (
        select(Transfer)
        .where((Transfer.debit_account_id == account_id) | (Transfer.credit_account_id == account_id))
        .order_by(Transfer.created_at.desc(), Transfer.id.desc())
        .limit(limit)
    )
    return list(session.scalars(stmt))


__all__ = [
    "AccountBalance",
    "LedgerBatchError",
    "PostResult",
    "TransferSpec",
    "TrialBalance",
    "account_balance",
    "apply_account_deltas",
    "balance",
    "pg_int_array",
    "pg_text_array",
    "post_transfers",
    "post_transfers_bulk",
    "transfers_of",
    "trial_balance",
]
