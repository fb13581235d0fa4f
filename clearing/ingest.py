"""Batch ingest: the imperative shell around ``clearing.validation`` (flows 3 and 4).

One uploaded batch is one transaction: claim ``(terminal_id, batch_seq)`` in ``batches``
(idempotency: the same content gets the stored answer back byte for byte, other content
is ``E_BATCH_CONFLICT``), lock the terminal and the batch's cards, load what validation
needs, judge, and write taps, natural keys, transfers, account totals, card shadow state,
exception items and the answer. The database is the source of truth; a crash anywhere
before COMMIT leaves nothing, and the retried batch is judged again from scratch.

This module holds what both database paths share (decoding, TAC keys, the write plan,
answers, retries); ``ingest_pg`` (COPY, set-based SQL) and ``ingest_sqlite`` (SQLAlchemy
Core, any database) persist the same plan, so they give identical results.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, NamedTuple, Protocol

import msgspec
from sqlalchemy import Engine

from cardos import crypto
from clearing import transfer_ids
from clearing.business_day import DEFAULT_CLOCK, BusinessDayClock
from clearing.contract import (
    Batch,
    BatchAnswer,
    ErrorItem,
    TapRecord,
    Verdict,
    decode_batch,
    encode,
)
from clearing.contract.codes import Code
from clearing.errors import ClearingError
from clearing.ingest_totals import PayeeBook
from clearing.models import TransferCode
from clearing.validation import (
    CardKey,
    Context,
    Judgement,
    Limits,
    RefundPricer,
    Resolution,
    TapTime,
    judge,
    parse_tap_time,
    record_digest,
    rejudge_cards,
    verify_tacs,
)

log = logging.getLogger(__name__)

MAC_KEYS_CACHED_MAX: Final = 200_000  # ~1.1 KB each (one OpenSSL context): ~220 MB at most
MISSING_KEY_RECHECK_S: Final = 5.0  # a key the store lacked is asked for again after this long
INGEST_ATTEMPTS_MAX: Final = 6
RETRY_BACKOFF_S: Final = (0.05, 0.2, 0.5, 1.0, 2.0)
EXCEPTION_CODES_AUTHENTIC: Final = frozenset({Code.E_BAD_TIME, Code.E_AMOUNT_LIMIT, Code.E_DENYLISTED})


# --- errors ------------------------------------------------------------------------------


def batch_conflict(terminal_id: str, batch_seq: int) -> ClearingError:
    return ClearingError(
        Code.E_BATCH_CONFLICT, f"terminal {terminal_id} batch {batch_seq} was already received with other content"
    )


def unknown_terminal(terminal_id: str) -> ClearingError:
    return ClearingError(Code.E_UNKNOWN_TERMINAL, f"terminal {terminal_id} is not registered or not active")


def malformed(message: str, errors: Sequence[ErrorItem]) -> ClearingError:
    return ClearingError(Code.E_MALFORMED, message, errors=errors)


class RetryableIngestError(Exception):
    """A race lost to a concurrent writer (a natural key or transfer id appeared meanwhile)."""


def decode_upload(body: bytes) -> Batch:
    """Decode an upload (hex normalised) or raise ``E_MALFORMED`` with ``{path, code, message}`` items."""
    if b"\\u0000" in body and _carries_nul(body):  # JSON's only way to carry NUL, which no database text holds
        message = "a string in the batch contains the NUL character (\\u0000)"
        raise malformed(message, [ErrorItem("$", "E_NUL", message)])
    try:
        return decode_batch(body)
    except msgspec.ValidationError as exc:
        text = str(exc)
        path = "$"
        if " - at `" in text:
            text, _, rest = text.partition(" - at `")
            path = rest.rstrip("`")
        raise malformed(f"batch does not match the contract: {text}", [ErrorItem(path, "E_SCHEMA", text)]) from exc
    except (msgspec.DecodeError, RecursionError) as exc:
        raise malformed(f"body is not valid JSON: {exc}", [ErrorItem("$", "E_JSON", str(exc))]) from exc


def _carries_nul(body: bytes) -> bool:
    """Whether a decoded string holds NUL (the bytes ``\\u0000`` may be an escaped backslash + ``u0000``).

    Walks the document with an explicit stack: a deeply nested body cannot exhaust the
    interpreter's recursion limit here.
    """
    try:
        document = msgspec.json.decode(body)
    except (msgspec.DecodeError, RecursionError):
        return False  # not JSON (or nested past msgspec's limit): decode_batch says so
    stack: list[object] = [document]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            if "\x00" in value:
                return True
        elif isinstance(value, dict):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return False


def content_hash(batch: Batch) -> str:
    """sha256 of the canonical encoding: whitespace or key order do not make another batch."""
    return hashlib.sha256(encode(batch)).hexdigest()


def business_day(moment: dt.datetime, days: BusinessDayClock = DEFAULT_CLOCK) -> dt.date:
    """The business day a tap belongs to (``clearing.business_day``; default cut-off 00:00 Asia/Shanghai)."""
    return days.day_of(moment)


def iso(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --- TAC keys -----------------------------------------------------------------------------

DtkLookup = Callable[[str, str, int], bytes | None]
"""(issuer_id hex, card_asn hex, key_version) -> the card's 16-byte DTK, or None if unknown."""


def keystore_dtk(keystore: object) -> DtkLookup:
    """A ``DtkLookup`` over ``clearing.keystore.KeyStore.dtk``: None for an unknown issuer or version."""
    from clearing.errors import ClearingError
    from clearing.keystore import KeyStore

    assert isinstance(keystore, KeyStore)

    def lookup(issuer_id: str, card_asn: str, key_version: int) -> bytes | None:
        try:
            return keystore.dtk(issuer_id, card_asn, key_version)
        except ClearingError:
            return None

    return lookup


class TacKeys:
    """Per-card TAC ``MacKey``s, derived once from the key store and kept in an LRU.

    One instance per process (the MAC contexts are not thread-safe). ``own_issuers`` are the
    issuers whose keys the store held when it was made. A key the store lacks (an issuer or
    key version not held, an unknown algorithm) gives None: a forwarded record, or
    ``E_KEY_UNAVAILABLE`` for an own card, never a forgery. A missing key is asked for again
    at most every ``MISSING_KEY_RECHECK_S`` (per issuer, and per issuer and version for the
    issuers held), so keys imported while the server runs are used without a restart.
    """

    def __init__(
        self,
        dtk: DtkLookup,
        own_issuers: Iterable[str],
        size_max: int = MAC_KEYS_CACHED_MAX,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._dtk = dtk
        self._own = set(own_issuers)
        self._size_max = size_max
        self._clock = clock
        self._cache: OrderedDict[tuple[str, str, int, int], crypto.MacKey] = OrderedDict()
        self._missing: dict[tuple[str, int, int], float] = {}  # slot -> when to ask the store again

    def for_record(self, record: TapRecord) -> crypto.MacKey | None:
        key = (record.issuer_id, record.card_asn, record.key_version, record.alg_id)
        cache = self._cache
        mac_key = cache.get(key)
        if mac_key is not None:
            cache.move_to_end(key)
            return mac_key
        held = record.issuer_id in self._own
        slot = (record.issuer_id, record.key_version, record.alg_id) if held else (record.issuer_id, -1, -1)
        retry_at = self._missing.get(slot)
        if retry_at is not None and self._clock() < retry_at:
            return None
        mac_key = None
        if record.alg_id in crypto.ALGORITHMS:
            dtk = self._dtk(record.issuer_id, record.card_asn, record.key_version)
            if dtk is not None:
                mac_key = crypto.tac_mac_key(dtk, record.alg_id)
        if mac_key is None:
            if len(self._missing) >= self._size_max:
                self._missing.clear()  # garbage issuer ids cannot grow it without bound
            self._missing[slot] = self._clock() + MISSING_KEY_RECHECK_S
            return None
        self._missing.pop(slot, None)
        self._own.add(record.issuer_id)
        cache[key] = mac_key
        if len(cache) > self._size_max:
            cache.popitem(last=False)
        return mac_key


# --- the write plan -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Parties:
    """Ledger accounts and card states the batch touches (read under lock by the store).

    ``operator_account_id`` is the terminal's registered operator; ``payees``, when given, says
    who each tap pays by its route and business day (dated assignments, ``clearing.ingest_totals``).
    """

    operator_account_id: int
    card_accounts: Mapping[CardKey, int]
    payees: PayeeBook | None = None


class TapRow(NamedTuple):
    """One judged record: a ``taps`` row when ``stored``, an exception item when ``exception``.

    Only authentic records (TAC verified) are stored as taps and claim natural keys;
    forgeries and duplicates live only in the exception queue, with the raw record
    (``record_json``), so they can never squat a genuine record's key; other issuers'
    records go to ``interop_forwards`` (``ForwardRow``) and claim nothing.
    """

    position: int  # in the upload
    business_day: dt.date
    record: TapRecord
    tx_at: dt.datetime
    tx_utc_offset_min: int
    verdict: str
    code: str
    message: str
    transfer_id: str | None
    stored: bool
    exception: bool
    record_json: str | None
    gap: tuple[int, int] | None = None  # S_COUNTER_GAP: the missing counters (on the tap row; no item yet)
    refund_fen: int | None = None  # a tap-off whose refund clearing computed now


class ForwardRow(NamedTuple):
    """Another issuer's record, kept for its issuer's verdict (``interop_forwards``)."""

    record: TapRecord
    digest: str
    business_day: dt.date
    tx_at: dt.datetime
    record_json: str


class TransferRow(NamedTuple):
    id: str
    debit_account_id: int
    credit_account_id: int
    amount_fen: int
    source_ref: str


class CardRow(NamedTuple):
    card_id: int
    shadow_balance_fen: int
    last_offline_counter: int | None
    last_tx_at: dt.datetime | None
    shadow_load_at: dt.datetime | None
    blocked: bool


class RefundRow(NamedTuple):
    """A tap-off's refund, as clearing computed it: a pending credit for the card (``docs/fares.md``).

    An offline validator cannot credit a purse, so the refund waits as a pending load
    (``refund:<terminal_id>:<terminal_seq>``) until the card meets a load-capable reader;
    ``clearing.loads`` then reserves and posts it from ``payer_account_id``, the payable of
    the operator that received the maximum fare at the tap-on.
    """

    load_id: str
    issuer_id: str
    card_asn: str
    amount_fen: int
    payer_account_id: int


@dataclass(frozen=True, slots=True)
class WritePlan:
    taps: list[TapRow]
    transfers: list[TransferRow]
    account_deltas: dict[int, tuple[int, int]]  # account id -> (debit fen, credit fen)
    cards: list[CardRow]
    answer: bytes
    refunds: list[RefundRow] = field(default_factory=list)
    judgement: Judgement | None = None  # what the plan was made from (``redecide`` starts there)
    forwards: list[ForwardRow] = field(default_factory=list)
    # stored tap-offs whose refund is computed now that their entry arrived: (tap id, fen)
    tap_refunds: list[tuple[int, int]] = field(default_factory=list)
    resolutions: list[Resolution] = field(default_factory=list)  # tap-off items clearing closes itself
    # settlement's running totals: (payee account, tap business day) -> (count, fen) posted
    sales: dict[tuple[int, dt.date], tuple[int, int]] = field(default_factory=dict)


RESOLVER: Final = "clearing"  # ``decided_by`` of the exception items clearing resolves itself


refund_load_id = transfer_ids.refund_load  # the names callers know
tap_transfer_id = transfer_ids.tap


def _utc_offset_min(tx_time: str) -> int:
    if tx_time.endswith("+08:00"):
        return 480  # the usual form
    if tx_time.endswith("Z"):
        return 0
    sign = -1 if tx_time[-6] == "-" else 1
    return sign * (int(tx_time[-5:-3]) * 60 + int(tx_time[-2:]))


def make_plan(
    terminal_id: str,
    batch: Batch,
    received_at: dt.datetime,
    ctx: Context,
    judgement: Judgement,
    parties: Parties,
    days: BusinessDayClock = DEFAULT_CLOCK,
) -> WritePlan:
    """What to write for a judged batch: the same plan for every database path."""
    records = batch.records
    taps: list[TapRow] = []
    forwards: list[ForwardRow] = []
    transfers: list[TransferRow] = []
    debits: dict[int, int] = {}
    credits: dict[int, int] = {}
    sales: dict[tuple[int, dt.date], tuple[int, int]] = {}
    payees = parties.payees
    source = f"batch:{terminal_id}:{batch.batch_seq}"
    verdicts: list[Verdict] = []
    operator_account_id = parties.operator_account_id
    record_refunds = judgement.record_refunds
    outcomes_and_times = zip(judgement.outcomes, judgement.tx_times, strict=True)
    for index, (record, (outcome, tx_at)) in enumerate(zip(records, outcomes_and_times, strict=True)):
        verdict, message, stored = outcome.verdict, outcome.message, outcome.claims_keys
        code = outcome.code.value
        transfer_id = None
        if tx_at is None:
            moment, utc_offset_min = received_at, 480
        else:
            moment, utc_offset_min = tx_at, _utc_offset_min(record.tx_time)
        day = days.day_of(moment)
        if outcome.posts:
            amount = record.amount_fen
            if amount > 0:
                transfer_id = tap_transfer_id(record.terminal_id, record.terminal_seq)
                card_account = parties.card_accounts[(record.issuer_id, record.card_asn)]
                payee = operator_account_id if payees is None else payees.payee(record.route_id, day)
                transfers.append(TransferRow(transfer_id, card_account, payee, amount, source))
                debits[card_account] = debits.get(card_account, 0) + amount
                credits[payee] = credits.get(payee, 0) + amount
                count, fen = sales.get((payee, day), (0, 0))
                sales[(payee, day)] = (count + 1, fen + amount)
        verdicts.append(Verdict(record.terminal_seq, verdict, code, message))  # type: ignore[arg-type]
        if outcome.forwards:
            forwards.append(ForwardRow(record, record_digest(record), day, moment, encode(record).decode()))
            continue
        # A gap gets no item now: nearly all fill within the day (``exceptions_queue.sweep_gaps``
        # queues the ones still open after an age); its missing counters go on the tap row.
        exception = verdict in ("rejected", "suspect") and outcome.gap is None
        taps.append(
            TapRow(
                position=index,
                business_day=day,
                record=record,
                tx_at=moment,
                tx_utc_offset_min=utc_offset_min,
                verdict=verdict,
                code=code,
                message=message,
                transfer_id=transfer_id,
                stored=stored,
                exception=exception,
                # only unstored exceptions keep the raw record (the exception queue's copy)
                record_json=encode(record).decode() if exception and not stored else None,
                gap=outcome.gap,
                refund_fen=record_refunds.get(index),
            )
        )
    refunds: list[RefundRow] = []
    tap_refunds: list[tuple[int, int]] = []
    for due in judgement.refunds:
        payer = operator_account_id if due.payer_account_id is None else due.payer_account_id
        if due.exit_tap_id is not None:
            tap_refunds.append((due.exit_tap_id, due.amount_fen))
        if due.amount_fen > 0:
            refunds.append(
                RefundRow(
                    refund_load_id(due.exit_terminal_id, due.exit_terminal_seq),
                    due.issuer_id, due.card_asn, due.amount_fen, payer,
                )
            )  # fmt: skip
    deltas: dict[int, tuple[int, int]] = {account: (fen, 0) for account, fen in debits.items()}
    for payee, fen in credits.items():
        assert payee not in deltas, "an operator payable is never a card account"
        deltas[payee] = (0, fen)
    assert (
        sum(d for d, _ in deltas.values()) == sum(c for _, c in deltas.values()) == sum(t.amount_fen for t in transfers)
    ), "ingest posts balanced transfers"
    cards = [
        CardRow(
            ctx.cards[key].card_id,
            update.shadow_balance_fen,
            update.last_counter,
            update.last_tx_at,
            update.shadow_load_at,
            update.blocked,
        )
        for key, update in judgement.card_updates.items()
    ]
    answer = encode(BatchAnswer(batch.batch_seq, iso(received_at), verdicts))
    return WritePlan(
        taps, transfers, deltas, cards, answer, refunds, judgement, forwards, tap_refunds, judgement.resolutions, sales
    )


def answer_bytes(stored: str | bytes) -> bytes:
    """The stored answer (``batches.answer``, the text msgspec encoded) as the bytes sent first."""
    return stored.encode() if isinstance(stored, str) else bytes(stored)


# --- the shared pipeline ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Prepared:
    """A decoded batch with its TACs verified: everything that needs no database."""

    terminal_id: str
    batch: Batch
    digest: str
    times: list[TapTime | None]
    tacs: list[bool | None]


def batch_days_and_routes(
    prepared: Prepared, received_at: dt.datetime, days: BusinessDayClock = DEFAULT_CLOCK
) -> tuple[set[dt.date], set[str]]:
    """The business days and routes of a batch's records: what its payees are looked up for."""
    found = {days.day_of(t.at if t is not None else received_at) for t in prepared.times}
    routes = {r.route_id for r in prepared.batch.records if r.route_id is not None}
    return found, routes


def prepare(terminal_id: str, batch: Batch, keys: TacKeys) -> Prepared:
    times = [parse_tap_time(r.tx_time) for r in batch.records]
    tacs = verify_tacs(batch.records, times, keys.for_record)
    return Prepared(terminal_id, batch, content_hash(batch), times, tacs)


def decide(
    prepared: Prepared,
    ctx: Context,
    parties: Parties,
    received_at: dt.datetime,
    days: BusinessDayClock = DEFAULT_CLOCK,
) -> WritePlan:
    judgement = judge(prepared.batch.records, ctx, prepared.tacs, prepared.times)
    return make_plan(prepared.terminal_id, prepared.batch, received_at, ctx, judgement, parties, days)


def redecide(
    prepared: Prepared,
    plan: WritePlan,
    ctx: Context,
    parties: Parties,
    received_at: dt.datetime,
    moved: Iterable[CardKey],
    days: BusinessDayClock = DEFAULT_CLOCK,
) -> WritePlan:
    """The plan again after the cards ``moved`` changed under the batch; ``ctx`` has their new state.

    Only those cards' records are judged again (``validation.rejudge_cards``): the same
    result as deciding the whole batch afresh, at a fraction of the cost.
    """
    assert plan.judgement is not None, "a plan made by decide() carries its judgement"
    judgement = rejudge_cards(prepared.batch.records, prepared.times, plan.judgement, ctx, moved)
    return make_plan(prepared.terminal_id, prepared.batch, received_at, ctx, judgement, parties, days)


@dataclass(frozen=True, slots=True)
class IngestResult:
    answer: bytes
    replayed: bool  # True: the stored answer of an earlier identical upload


class Ingestor(Protocol):
    """A database path: ingest one prepared batch in one transaction, retrying transient faults."""

    before_commit: Callable[[Prepared], None] | None

    def ingest(self, prepared: Prepared) -> IngestResult: ...

    def store_unavailable(self, exc: BaseException) -> bool:
        """Whether ``exc`` says the store is unreachable (retry later), not that the batch is bad."""
        ...


def clear_or_answer(
    ingestor: Ingestor, engine: Engine, terminal_id: str, batch: Batch, body: bytes, keys: TacKeys
) -> bytes:
    """The answer for an upload: cleared now, the stored answer of a replay, or an unjudgeable verdict.

    A store fault that outlived the retries is ``E_UNAVAILABLE`` (the terminal retries; nothing
    was committed). Any other fault is the batch's: it becomes a terminal verdict
    (``store_unjudgeable``), so one bad record cannot stall its terminal for ever.
    """
    try:
        return ingestor.ingest(prepare(terminal_id, batch, keys)).answer
    except ClearingError:
        raise
    except Exception as exc:
        if ingestor.store_unavailable(exc):
            raise ClearingError(
                Code.E_UNAVAILABLE, f"the clearing database is unavailable ({type(exc).__name__}); retry"
            ) from exc
        log.exception("batch %s/%s cannot be judged", terminal_id, batch.batch_seq)
        return store_unjudgeable(engine, terminal_id, batch, body, exc)


def unjudgeable_answer(batch: Batch, received_at: dt.datetime, item_id: int, reason: str) -> bytes:
    message = (
        f"{Code.E_UNJUDGEABLE.value}: the batch could not be judged ({reason}); its records are kept "
        f"for re-judging in exception {item_id}"
    )
    verdicts = [Verdict(r.terminal_seq, "rejected", Code.E_UNJUDGEABLE.value, message) for r in batch.records]
    return encode(BatchAnswer(batch.batch_seq, iso(received_at), verdicts))


def store_unjudgeable(
    engine: Engine, terminal_id: str, batch: Batch, body: bytes, fault: BaseException, *, now: dt.datetime | None = None
) -> bytes:
    """Answer a batch that cannot be judged: every record ``rejected / E_UNJUDGEABLE``, stored, replayable.

    The batch row is marked done with that answer and keeps its body; one exception item of
    kind ``batch`` says why, so the records can be judged again once the fault is mended.
    Idempotent like ingest: a batch answered meanwhile gets its stored answer.
    """
    from sqlalchemy import select, update
    from sqlalchemy.orm import Session

    from clearing.db import conflict_insert
    from clearing.models import BatchRow, ExceptionItem, ExceptionState

    received_at = now or dt.datetime.now(dt.UTC)
    digest = content_hash(batch)
    reason = f"{type(fault).__name__}: {str(fault).splitlines()[0][:200]}" if str(fault) else type(fault).__name__
    insert_fn = conflict_insert(engine.dialect.name)
    with Session(engine) as session, session.begin():
        session.execute(
            insert_fn(BatchRow)
            .values(
                terminal_id=terminal_id, batch_seq=batch.batch_seq, content_hash=digest,
                record_count=len(batch.records), status="queued", received_at=received_at,
            )
            .on_conflict_do_nothing(index_elements=["terminal_id", "batch_seq"])
        )  # fmt: skip
        row = session.execute(
            select(BatchRow)
            .where(BatchRow.terminal_id == terminal_id, BatchRow.batch_seq == batch.batch_seq)
            .with_for_update()
        ).scalar_one()
        if row.content_hash != digest:
            raise batch_conflict(terminal_id, batch.batch_seq)
        if row.status == "done":
            assert row.answer is not None
            return answer_bytes(row.answer)
        item = ExceptionItem(
            kind="batch", terminal_id=terminal_id, batch_seq=batch.batch_seq, code=Code.E_UNJUDGEABLE.value,
            message=f"{Code.E_UNJUDGEABLE.value}: {len(batch.records)} records of batch {batch.batch_seq} "
            f"could not be judged ({reason})",
            record={"terminal_id": terminal_id, "batch_seq": batch.batch_seq, "fault": reason},
            state=ExceptionState.OPEN.value, created_at=received_at,
        )  # fmt: skip
        session.add(item)
        session.flush()
        answer = unjudgeable_answer(batch, received_at, item.id, reason)
        session.execute(
            update(BatchRow)
            .where(BatchRow.id == row.id)
            .values(status="done", answer=answer.decode(), done_at=received_at, body=body)
        )
    return answer


@dataclass(frozen=True, slots=True)
class Enqueued:
    """What ``enqueue`` found: a fresh or already queued batch, or the answer of a done one."""

    queued: bool
    answer: bytes | None


def enqueue(
    engine: Engine, terminal_id: str, batch: Batch, digest: str, body: bytes, received_at: dt.datetime
) -> Enqueued:
    """Store an upload as ``queued`` (body kept) for a clearing worker; idempotent like ``ingest``.

    The row is committed before the stream entry is added, so a worker always finds the
    body; a crash between the two leaves a queued row that the terminal's retry enqueues
    again. Raises ``E_BATCH_CONFLICT`` for the same ``batch_seq`` with other content.
    """
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from clearing.db import conflict_insert
    from clearing.models import BatchRow

    insert_fn = conflict_insert(engine.dialect.name)
    with Session(engine) as session, session.begin():
        claimed = session.execute(
            insert_fn(BatchRow)
            .values(
                terminal_id=terminal_id,
                batch_seq=batch.batch_seq,
                content_hash=digest,
                record_count=len(batch.records),
                status="queued",
                body=body,
                received_at=received_at,
            )
            .on_conflict_do_nothing(index_elements=["terminal_id", "batch_seq"])
            .returning(BatchRow.id)
        ).scalar_one_or_none()
        if claimed is not None:
            return Enqueued(True, None)
        stored = session.execute(
            select(BatchRow.content_hash, BatchRow.status, BatchRow.answer).where(
                BatchRow.terminal_id == terminal_id, BatchRow.batch_seq == batch.batch_seq
            )
        ).one()
    if stored[0] != digest:
        raise batch_conflict(terminal_id, batch.batch_seq)
    if stored[1] == "done":
        assert stored[2] is not None
        return Enqueued(False, answer_bytes(stored[2]))
    return Enqueued(True, None)


def _batch_field(engine: Engine, terminal_id: str, batch_seq: int, status: str, field: str) -> bytes | None:
    """One column (``answer`` or ``body``) of a batch in ``status``, else None."""
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from clearing.models import BatchRow

    with Session(engine) as session:
        row = session.execute(
            select(BatchRow.status, getattr(BatchRow, field)).where(
                BatchRow.terminal_id == terminal_id, BatchRow.batch_seq == batch_seq
            )
        ).one_or_none()
    if row is None or row[0] != status or row[1] is None:
        return None
    return row[1]  # type: ignore[no-any-return]


def stored_answer(engine: Engine, terminal_id: str, batch_seq: int) -> bytes | None:
    """The answer of a batch once it is done, else None."""
    answer = _batch_field(engine, terminal_id, batch_seq, "done", "answer")
    return None if answer is None else answer_bytes(answer)


def queued_body(engine: Engine, terminal_id: str, batch_seq: int) -> bytes | None:
    """The body of a queued batch (None if unknown or already done)."""
    body = _batch_field(engine, terminal_id, batch_seq, "queued", "body")
    return None if body is None else bytes(body)


def make_ingestor(
    engine: Engine,
    *,
    limits: Limits | None = None,
    clock: Callable[[], dt.datetime] | None = None,
    refund_pricer: RefundPricer | None = None,
    days: BusinessDayClock = DEFAULT_CLOCK,
    running_totals: bool = True,
) -> Ingestor:
    """The ingest path for the engine's database: COPY and set-based SQL on PostgreSQL, Core on SQLite.

    ``running_totals``: settlement's dated payees and running totals (``clearing.ingest_totals``);
    only a measurement turns them off (``benchmarks/settlement.py``), settlement needs them.
    """
    kwargs: dict[str, object] = {
        "limits": limits, "refund_pricer": refund_pricer, "days": days, "running_totals": running_totals,
    }  # fmt: skip
    if clock is not None:
        kwargs["clock"] = clock
    if engine.dialect.name == "postgresql":
        from clearing.ingest_pg import PgIngestor

        return PgIngestor(engine, **kwargs)  # type: ignore[arg-type]
    from clearing.ingest_sqlite import SqlIngestor

    return SqlIngestor(engine, **kwargs)  # type: ignore[arg-type]


def with_retries(
    attempt: Callable[[], IngestResult],
    is_transient: Callable[[BaseException], bool],
    on_retry: Callable[[], None] = lambda: None,
) -> IngestResult:
    """Run one batch transaction, again after a transient fault (lost connection, lost race).

    Safe because a failed attempt committed nothing: the retry claims the batch afresh, or
    finds it committed (a COMMIT whose acknowledgement was lost) and returns its answer.
    """
    for n in range(INGEST_ATTEMPTS_MAX):
        try:
            return attempt()
        except Exception as exc:
            if n == INGEST_ATTEMPTS_MAX - 1 or not is_transient(exc):
                raise
            log.warning("ingest attempt %d failed (%s: %s); retrying", n + 1, type(exc).__name__, exc)
            on_retry()
            time.sleep(RETRY_BACKOFF_S[min(n, len(RETRY_BACKOFF_S) - 1)])
    raise AssertionError("unreachable")


__all__ = [
    "EXCEPTION_CODES_AUTHENTIC",
    "RESOLVER",
    "CardRow",
    "DtkLookup",
    "Enqueued",
    "ForwardRow",
    "IngestResult",
    "Ingestor",
    "Limits",
    "Parties",
    "Prepared",
    "RefundRow",
    "RetryableIngestError",
    "TacKeys",
    "TapRow",
    "TransferCode",
    "TransferRow",
    "WritePlan",
    "answer_bytes",
    "batch_conflict",
    "batch_days_and_routes",
    "business_day",
    "clear_or_answer",
    "content_hash",
    "decide",
    "decode_upload",
    "enqueue",
    "keystore_dtk",
    "make_ingestor",
    "make_plan",
    "malformed",
    "prepare",
    "queued_body",
    "redecide",
    "refund_load_id",
    "store_unjudgeable",
    "stored_answer",
    "tap_transfer_id",
    "unknown_terminal",
    "with_retries",
]
