"""The exception queue: rejected and suspect records waiting for a person's decision.

A decision acts on what the ledger already holds for the record, never on the record's
face value (``docs/clearing.md``, "Exception decisions", has the table per code). Every
item falls in one of five kinds, and each kind says what a decision does:

* **posted** — ingest already posted it (a suspect whose TAC verified: ``S_COUNTER_GAP``,
  ``S_BALANCE_DISCONTINUITY``, …): the card paid the operator. *Accept* closes the item and
  moves nothing. *Write off* moves nothing either, unless a person names an amount (at most
  what was posted) and a reason: then the operator is not paid that much — operator payable
  → write-off income, a new, explained transfer. The card's purse already spent the money,
  so the card is never debited again.
* **held** — authentic (TAC verified, stored as a tap) but never posted (``E_BAD_TIME``,
  ``E_AMOUNT_LIMIT``, ``E_DENYLISTED``, a counter used twice, a debit the liability could not
  cover): the purse went down, the ledger did not follow. *Accept* re-verifies the TAC with
  the key store and posts the tap as it is (card → the terminal's operator, id
  ``tap:<terminal>:<seq>``, so it can never be paid twice). *Write off* releases the value
  from the card instead (card → write-off income; default the record's amount), for a
  record we will not pay. Either way the ledger then matches the purse.
* **unverified** — not stored: a TAC that did not verify, an unknown card, a missing key.
  *Accept* verifies the TAC again with the key store (a key may have been missing at
  ingest): if it verifies, the record becomes a tap and is posted like a held one; if not,
  it is refused (``E_UNVERIFIED_RECORD``): nothing proves the card paid. *Write off* closes
  it with amount 0 only.
* **duplicate** — a record already received: the original stands, so no decision moves
  money; accept and write off both close it.
* **batch** — a batch that could not be judged (``E_UNJUDGEABLE``): its records are kept on
  the batch; write off closes the item with a note; there is nothing to accept.

The card's shadow balance follows a decision that moves the card's ledger, when the record
is newer than the last one cleared; after every decision the ledger, the shadow and the
purse agree. Counter gaps (``S_COUNTER_GAP``) are queued only when still open
``GAP_AGE_DAYS_DEFAULT`` business days after their tap (``sweep_gaps``), and resolve
themselves when the missing counters arrive (``state = resolved``).
"""

from __future__ import annotations

import datetime as dt
import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import msgspec
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased

from clearing import accounts, transfer_ids
from clearing.business_day import DEFAULT_CLOCK, BusinessDayClock
from clearing.contract import FareInfo, TapRecord
from clearing.contract.codes import Code
from clearing.db import lock_for_update
from clearing.errors import ClearingError
from clearing.ingest import RESOLVER, TacKeys, keystore_dtk, tap_transfer_id
from clearing.ingest_totals import (
    REFUND,
    SALE,
    TransferLeg,
    is_transfer_leg,
    payee_of_tap,
    record_event,
    sealed_through,
    window_of,
    write_transfer_legs,
)
from clearing.ledger import TransferSpec, post_transfers
from clearing.models import Card, ExceptionItem, ExceptionState, Tap, Terminal, Transfer, TransferCode
from clearing.validation import before_the_load, parse_tap_time, verify_tacs

LIST_LIMIT_MAX: Final = 10_000
NOTE_LEN_MAX: Final = 2000
GAP_AGE_DAYS_DEFAULT: Final = 3
DUPLICATE_CODES: Final = frozenset({Code.E_DUPLICATE_TERMINAL_SEQ.value, Code.E_DUPLICATE_CARD_COUNTER.value})


class Kind(enum.StrEnum):
    POSTED = "posted"
    HELD = "held"
    UNVERIFIED = "unverified"
    DUPLICATE = "duplicate"
    BATCH = "batch"


@dataclass(frozen=True, slots=True)
class Effect:
    """What one decision would do, said before it is done."""

    allowed: bool
    moves_fen: int
    sentence: str


@dataclass(frozen=True, slots=True)
class ItemView:
    """An item as a clerk sees it: age, amount, what already moved, and what each decision would do."""

    item: ExceptionItem
    kind: Kind
    age_days: int
    amount_fen: int
    moved: str
    accept: Effect
    write_off: Effect


# --- reading ---------------------------------------------------------------------------------


def _tap_of(session: Session, item: ExceptionItem) -> Tap | None:
    if item.tap_id is None:
        return None
    tap = session.get(Tap, item.tap_id)
    assert tap is not None, f"exception {item.id} points at tap {item.tap_id}, which does not exist"
    return tap


def _is_posted(tap: Tap) -> bool:
    """Ingest (or an earlier decision) posted the tap: its transfer exists, or it moved 0 fen."""
    return tap.verdict in ("accepted", "suspect") and (tap.transfer_id is not None or tap.amount_fen == 0)


def kind_of(item: ExceptionItem, tap: Tap | None) -> Kind:
    if item.kind in ("batch", "payout"):  # a payout item (settlement) moves nothing here either
        return Kind.BATCH
    if tap is None:
        return Kind.DUPLICATE if item.code in DUPLICATE_CODES else Kind.UNVERIFIED
    return Kind.POSTED if _is_posted(tap) else Kind.HELD


def _posted_fen(session: Session, tap: Tap) -> int:
    if tap.transfer_id is None:
        return 0
    transfer = session.get(Transfer, tap.transfer_id)
    return transfer.amount_fen if transfer is not None else 0


def view(session: Session, item: ExceptionItem, now: dt.datetime, days: BusinessDayClock = DEFAULT_CLOCK) -> ItemView:
    """What a person needs to decide ``item``, computed from what the ledger holds."""
    tap = _tap_of(session, item)
    kind = kind_of(item, tap)
    amount = int(item.amount_fen or 0)
    age = days.age_days(item.created_at, now)
    if kind is Kind.POSTED:
        assert tap is not None
        posted = _posted_fen(session, tap)
        moved = f"posted {posted} fen, card → operator ({tap.transfer_id})" if posted else "posted, 0 fen"
        accept_effect = Effect(True, 0, "closes the item; moves nothing (the card already paid)")
        write_off_effect = Effect(
            True,
            0,
            "closes the item; moves nothing, or with --amount-fen N (≤ "
            f"{posted}) withholds N fen from the operator (operator → write-off income)",
        )
    elif kind is Kind.HELD:
        moved = "nothing: the purse paid, the ledger did not (held)"
        accept_effect = Effect(True, amount, f"re-verifies the TAC, then posts {amount} fen card → operator")
        write_off_effect = Effect(True, amount, f"releases the {amount} fen of card value to write-off income")
    elif kind is Kind.UNVERIFIED:
        moved = "nothing: not stored, the TAC proves no debit"
        accept_effect = Effect(
            True, amount, f"verifies the TAC with the key store; posts {amount} fen if it verifies, else refused"
        )
        write_off_effect = Effect(True, 0, "closes the item; moves nothing (amount 0 only)")
    elif kind is Kind.DUPLICATE:
        moved = "nothing: the original record stands"
        accept_effect = Effect(True, 0, "closes the item; moves nothing")
        write_off_effect = Effect(True, 0, "closes the item; moves nothing")
    else:
        moved = "nothing: the batch's records were not judged"
        accept_effect = Effect(False, 0, "not possible: the records must be judged again")
        write_off_effect = Effect(True, 0, "closes the item with a note; moves nothing")
    return ItemView(item, kind, age, amount, moved, accept_effect, write_off_effect)


def list_items(
    session: Session,
    *,
    state: str | None = "open",
    limit: int = 100,
    code: str | None = None,
    card_asn: str | None = None,
    created_before: dt.datetime | None = None,
) -> list[ExceptionItem]:
    """Items oldest first (``state=None``: all). Run ``sweep_gaps`` first to bring gaps up to date.

    The filters are applied before ``limit`` (the clerk's ``exceptions list --code/--card/--age``):
    only items with this code, of this card (ASN, any issuer), created before this instant.
    """
    if not 0 < limit <= LIST_LIMIT_MAX:
        raise ClearingError(Code.E_BAD_STATE, f"limit must be 1..{LIST_LIMIT_MAX}")
    stmt = select(ExceptionItem).order_by(ExceptionItem.created_at, ExceptionItem.id).limit(limit)
    if state is not None:
        if state not in tuple(ExceptionState):
            raise ClearingError(Code.E_BAD_STATE, f"state must be one of {', '.join(ExceptionState)}")
        stmt = stmt.where(ExceptionItem.state == state)
    if code is not None:
        stmt = stmt.where(ExceptionItem.code == code)
    if card_asn is not None:
        stmt = stmt.where(ExceptionItem.card_asn == card_asn.lower())
    if created_before is not None:
        stmt = stmt.where(ExceptionItem.created_at < created_before)
    return list(session.scalars(stmt))


@dataclass(frozen=True, slots=True)
class Sweep:
    queued: int  # gaps still open after the age, now exception items
    resolved: int  # queued gaps whose counters have all arrived since


def _held(issuer: Any, asn: Any, first: Any, last: Any) -> Any:
    """How many distinct counters of first..last a card's stored taps hold (a scalar subquery)."""
    held = aliased(Tap)
    return (
        select(func.count(func.distinct(held.offline_counter)))
        .where(held.issuer_id == issuer, held.card_asn == asn, held.offline_counter.between(first, last))
        .scalar_subquery()
    )


def sweep_gaps(
    session: Session,
    *,
    now: dt.datetime,
    age_days: int = GAP_AGE_DAYS_DEFAULT,
    days: BusinessDayClock = DEFAULT_CLOCK,
) -> Sweep:
    """Bring counter gaps up to date, in the caller's transaction (``yikatong exceptions sweep``).

    Ingest makes no exception item for an ``S_COUNTER_GAP``: the missing counters are on the
    tap row, and nearly all of them arrive within the day (a bus that was offline uploads).
    A gap still open ``age_days`` business days after its tap's day becomes an item; a queued
    gap whose counters have all arrived since resolves itself with a note. Idempotent.
    """
    if age_days < 0:
        raise ClearingError(Code.E_BAD_STATE, "the gap age is a number of business days ≥ 0")
    e = ExceptionItem
    filled = session.execute(
        select(e.id, e.gap_first, e.gap_last).where(
            e.state == ExceptionState.OPEN.value,
            e.code == Code.S_COUNTER_GAP.value,
            e.gap_first.is_not(None),
            _held(e.issuer_id, e.card_asn, e.gap_first, e.gap_last) == e.gap_last - e.gap_first + 1,
        )
    ).all()
    for item_id, first, last in filled:
        session.execute(
            update(e)
            .where(e.id == item_id, e.state == ExceptionState.OPEN.value)
            .values(
                state=ExceptionState.RESOLVED.value, decided_by=RESOLVER, decided_at=now,
                note=f"counters {first}..{last} have all arrived; gap closed",
            )
        )  # fmt: skip
    oldest_open_day = days.day_of(now) - dt.timedelta(days=age_days)
    queued_already = select(e.id).where(e.tap_id == Tap.id).exists()
    still_open = session.execute(
        select(Tap).where(
            Tap.gap_first.is_not(None),
            Tap.business_day <= oldest_open_day,
            ~queued_already,
            _held(Tap.issuer_id, Tap.card_asn, Tap.gap_first, Tap.gap_last) < Tap.gap_last - Tap.gap_first + 1,
        )
    ).scalars()
    queued = 0
    for tap in still_open:
        assert tap.gap_first is not None and tap.gap_last is not None
        session.add(
            ExceptionItem(
                kind="tap", tap_id=tap.id, tap_business_day=tap.business_day, terminal_id=tap.terminal_id,
                terminal_seq=tap.terminal_seq, batch_seq=tap.batch_seq, issuer_id=tap.issuer_id,
                card_asn=tap.card_asn, offline_counter=tap.offline_counter, amount_fen=tap.amount_fen,
                code=tap.code, message=tap.message, state=ExceptionState.OPEN.value, created_at=tap.received_at,
                gap_first=tap.gap_first, gap_last=tap.gap_last,
            )
        )  # fmt: skip
        queued += 1
    session.flush()
    return Sweep(queued, len(filled))


def open_counts(session: Session) -> dict[str, int]:
    """Open items per code (what the queue holds)."""
    rows = session.execute(
        select(ExceptionItem.code, func.count())
        .where(ExceptionItem.state == ExceptionState.OPEN.value)
        .group_by(ExceptionItem.code)
    )
    return {code: int(n) for code, n in rows}


# --- the record behind an item ------------------------------------------------------------------


def _record_of(item: ExceptionItem, tap: Tap | None) -> TapRecord:
    """The record as uploaded: rebuilt from the tap row, or decoded from the item's raw copy."""
    if tap is not None:
        offset = dt.timedelta(minutes=tap.tx_utc_offset_min)
        local = tap.tx_time.astimezone(dt.timezone(offset)).isoformat(timespec="seconds")
        fare = None
        if tap.fare_product_id is not None:
            fare = FareInfo(
                tap.fare_product_id, tap.fare_rider_category_id or "", tap.fare_leg_group_id, tap.fare_full_fen or 0,
                tap.fare_discount_fen or 0, tap.fare_transfer_of,
            )  # fmt: skip
        return TapRecord(
            terminal_id=tap.terminal_id, terminal_seq=tap.terminal_seq, psam_serial=tap.psam_serial,
            issuer_id=tap.issuer_id, card_asn=tap.card_asn, card_type=tap.card_type, tx_type=tap.tx_type,  # type: ignore[arg-type]
            amount_fen=tap.amount_fen, balance_before_fen=tap.balance_before_fen,
            offline_counter=tap.offline_counter, tx_time=local, key_version=tap.key_version, alg_id=tap.alg_id,
            tac=tap.tac, route_id=tap.route_id, stop_id=tap.stop_id, vehicle_id=tap.vehicle_id, fare=fare,
            status=tap.status,  # type: ignore[arg-type]
        )  # fmt: skip
    raw: Any = item.record
    if isinstance(raw, str):
        raw = json.loads(raw)
    if not isinstance(raw, Mapping):
        raise ClearingError(Code.E_NO_RECORD, f"exception {item.id} has neither a tap nor a record")
    try:
        return msgspec.convert(raw, TapRecord)
    except msgspec.ValidationError as exc:
        raise ClearingError(Code.E_BAD_RECORD, f"exception {item.id}: unusable record ({exc})") from None


def _tac_verifies(record: TapRecord, keystore: object) -> bool | None:
    """Whether the record's TAC verifies with the key store now (None: no key for it)."""
    from clearing.keystore import KeyStore

    assert isinstance(keystore, KeyStore)
    keystore.refresh()  # keys imported since the store was opened (E_KEY_UNAVAILABLE items wait for them)
    keys = TacKeys(keystore_dtk(keystore), keystore.issuers())
    return verify_tacs([record], [parse_tap_time(record.tx_time)], keys.for_record)[0]


def _require_verified(item: ExceptionItem, record: TapRecord, keystore: object) -> None:
    verified = _tac_verifies(record, keystore)
    if verified is None:
        raise ClearingError(
            Code.E_UNVERIFIED_RECORD,
            f"exception {item.id}: the key store holds no TAC key for issuer {record.issuer_id}, key version "
            f"{record.key_version}; import it, then accept again",
        )
    if not verified:
        raise ClearingError(
            Code.E_UNVERIFIED_RECORD,
            f"exception {item.id} ({item.code}): the TAC does not verify with the card's key, so nothing proves "
            "the card paid; write it off with amount 0",
        )


# --- deciding --------------------------------------------------------------------------------------


def _open_item(session: Session, item_id: int) -> ExceptionItem:
    lock_for_update(session)  # SQLite: two clerks deciding one item queue as they do on PostgreSQL
    item = session.get(ExceptionItem, item_id, with_for_update=True)
    if item is None:
        raise ClearingError(Code.E_NO_SUCH_EXCEPTION, f"no exception item {item_id}")
    if item.state != ExceptionState.OPEN:
        raise ClearingError(Code.E_ALREADY_DECIDED, f"exception {item_id} is already {item.state}")
    return item


def _card(session: Session, record: TapRecord) -> Card:
    card = session.execute(
        select(Card).where(Card.issuer_id == record.issuer_id, Card.card_asn == record.card_asn).with_for_update()
    ).scalar_one_or_none()
    if card is None:
        raise ClearingError(Code.E_UNKNOWN_CARD, f"card {record.issuer_id}:{record.card_asn} is not registered here")
    return card


def _move_shadow(card: Card, record: TapRecord) -> None:
    """A decision that moves the card's ledger, for a record newer than the last one cleared, moves the shadow."""
    after = record.balance_before_fen - record.amount_fen
    when = parse_tap_time(record.tx_time)
    if after < 0 or when is None:
        return
    if card.last_offline_counter is None or record.offline_counter > card.last_offline_counter:
        card.last_offline_counter = record.offline_counter
        card.last_tx_at = when.at
        if not before_the_load(when.at, record.balance_before_fen, card.shadow_balance_fen, card.shadow_load_at):
            card.shadow_balance_fen = after
            card.shadow_load_at = None


def _decide(
    item: ExceptionItem,
    state: ExceptionState,
    note: str | None,
    decided_by: str | None,
    now: dt.datetime,
    *,
    transfer_id: str | None = None,
    amount_fen: int = 0,
) -> None:
    if note is not None and len(note) > NOTE_LEN_MAX:
        raise ClearingError(Code.E_NOTE_TOO_LONG, f"notes are at most {NOTE_LEN_MAX} characters")
    item.state = state.value
    item.note = note
    item.decided_by = decided_by
    item.decided_at = now
    item.decision_transfer_id = transfer_id
    item.decision_amount_fen = amount_fen


def _terminal(session: Session, record: TapRecord) -> Terminal:
    terminal = session.get(Terminal, record.terminal_id)
    if terminal is None:
        raise ClearingError(Code.E_UNKNOWN_TERMINAL, f"terminal {record.terminal_id} is not registered")
    return terminal


def accept(
    session: Session,
    keystore: object,
    item_id: int,
    *,
    now: dt.datetime,
    note: str | None = None,
    decided_by: str | None = None,
    days: BusinessDayClock = DEFAULT_CLOCK,
) -> ExceptionItem:
    """Accept a queued record (in the caller's transaction): what that does depends on its kind (module docstring)."""
    item = _open_item(session, item_id)
    tap = _tap_of(session, item)
    kind = kind_of(item, tap)
    if kind is Kind.BATCH:
        raise ClearingError(
            Code.E_DECISION_NOT_ALLOWED,
            f"exception {item.id} is a batch that could not be judged; its records must be judged again "
            "(write the item off once they are)",
        )
    if kind in (Kind.POSTED, Kind.DUPLICATE):
        _decide(item, ExceptionState.ACCEPTED, note, decided_by, now)  # nothing moves
        session.flush()
        return item
    record = _record_of(item, tap)
    _require_verified(item, record, keystore)
    card = _card(session, record)
    terminal = _terminal(session, record)
    ridden = tap.business_day if tap is not None else None
    if tap is None:
        tap = _store_tap(session, item, record, days.day_of(now), now)
        when = parse_tap_time(record.tx_time)
        assert when is not None, "a verified TAC implies a readable time"
        ridden = days.day_of(when.at)  # the tap row takes the decision's day; the ride's is its time's
    transfer_id = None
    # The ride's day's payee (dated assignments); the money joins the window of the decision's day.
    payee = payee_of_tap(session, terminal.terminal_id, record.route_id, ridden or tap.business_day,
                         terminal.payable_account_id)  # fmt: skip
    window = None
    if record.amount_fen > 0:
        transfer_id = tap_transfer_id(record.terminal_id, record.terminal_seq)
        post_transfers(
            session,
            [
                TransferSpec.single(
                    transfer_id, card.account_id, payee, record.amount_fen,
                    TransferCode.PURCHASE, source_ref=f"exception:{item.id}",
                )
            ],
        )  # fmt: skip
        window = record_event(session, payee_account_id=payee, kind=SALE, source_ref=transfer_id,
                              amount_fen=record.amount_fen, at=now, days=days).window_day  # fmt: skip
        tap.transfer_id = transfer_id
    if is_transfer_leg(record.fare):  # a sale of a transfer leg: settlement shares its journey's discount
        if window is None:
            window = window_of(days.day_of(now), sealed_through(session))
        session.flush()
        write_transfer_legs(session, [TransferLeg(record.terminal_id, record.terminal_seq, window, payee)])
    _move_shadow(card, record)
    _decide(item, ExceptionState.ACCEPTED, note, decided_by, now, transfer_id=transfer_id, amount_fen=record.amount_fen)
    session.flush()
    return item


def _store_tap(session: Session, item: ExceptionItem, record: TapRecord, day: dt.date, now: dt.datetime) -> Tap:
    """A verified record without a tap row gets one, claiming its natural keys (or a clear refusal)."""
    held = _key_held(session, record)
    if held is not None:
        raise ClearingError(
            Code.E_DUPLICATE_TAP, f"exception {item.id}: another tap already holds this record's {held}"
        )
    when = parse_tap_time(record.tx_time)
    assert when is not None, "a verified TAC implies a readable time"
    offset = when.at.utcoffset()
    fare = record.fare
    tap = Tap(
        business_day=day, batch_seq=item.batch_seq, terminal_id=record.terminal_id,
        terminal_seq=record.terminal_seq, psam_serial=record.psam_serial, issuer_id=record.issuer_id,
        card_asn=record.card_asn, card_type=record.card_type, tx_type=record.tx_type,
        amount_fen=record.amount_fen, balance_before_fen=record.balance_before_fen,
        offline_counter=record.offline_counter, tx_time=when.at,
        tx_utc_offset_min=int(offset.total_seconds() // 60) if offset is not None else 480,
        key_version=record.key_version, alg_id=record.alg_id, tac=record.tac, route_id=record.route_id,
        stop_id=record.stop_id, vehicle_id=record.vehicle_id,
        fare_product_id=fare.product_id if fare else None,
        fare_rider_category_id=fare.rider_category_id if fare else None,
        fare_leg_group_id=fare.leg_group_id if fare else None, fare_full_fen=fare.full_fare_fen if fare else None,
        fare_discount_fen=fare.discount_fen if fare else None, fare_transfer_of=fare.transfer_of if fare else None,
        status=record.status, verdict="accepted", code=item.code, message=item.message, received_at=now,
    )  # fmt: skip
    try:
        with session.begin_nested():  # a savepoint: losing the key to a concurrent batch is a clear refusal
            session.add(tap)
            session.flush()
    except IntegrityError as exc:
        raise ClearingError(
            Code.E_DUPLICATE_TAP, f"exception {item.id}: another tap took this record's key meanwhile"
        ) from exc
    item.tap_id, item.tap_business_day = tap.id, tap.business_day
    return tap


def _key_held(session: Session, record: TapRecord) -> str | None:
    """Which natural key of the record another tap already holds, if any (the unique indexes are the guarantee)."""
    by_seq = select(Tap.id).where(Tap.terminal_id == record.terminal_id, Tap.terminal_seq == record.terminal_seq)
    if session.scalar(by_seq) is not None:
        return "terminal sequence"
    by_counter = select(Tap.id).where(
        Tap.issuer_id == record.issuer_id,
        Tap.card_asn == record.card_asn,
        Tap.offline_counter == record.offline_counter,
        Tap.tx_type == record.tx_type,
    )
    return "card counter" if session.scalar(by_counter) is not None else None


def write_off(
    session: Session,
    item_id: int,
    *,
    now: dt.datetime,
    note: str,
    amount_fen: int | None = None,
    decided_by: str | None = None,
    days: BusinessDayClock = DEFAULT_CLOCK,
) -> ExceptionItem:
    """Write a queued record off (in the caller's transaction): what that moves depends on its kind."""
    if not note.strip():
        raise ClearingError(Code.E_NOTE_REQUIRED, "a write-off needs a note saying why")
    item = _open_item(session, item_id)
    tap = _tap_of(session, item)
    kind = kind_of(item, tap)
    if amount_fen is not None and amount_fen < 0:
        raise ClearingError(Code.E_BAD_AMOUNT, "a write-off amount is 0 or more fen")
    if kind in (Kind.DUPLICATE, Kind.UNVERIFIED, Kind.BATCH):
        if amount_fen:
            why = {
                Kind.DUPLICATE: "the original record stands: a duplicate's decision never moves money",
                Kind.UNVERIFIED: "its TAC never verified: nothing proves the card paid",
                Kind.BATCH: "its records were never judged",
            }[kind]
            raise ClearingError(Code.E_DECISION_NOT_ALLOWED, f"exception {item.id} can only be closed with 0: {why}")
        _decide(item, ExceptionState.WRITTEN_OFF, note, decided_by, now)
        session.flush()
        return item
    assert tap is not None
    record = _record_of(item, tap)
    income = accounts.write_off_income(session)
    transfer_id = transfer_ids.write_off(item.id)
    if kind is Kind.POSTED:
        posted = _posted_fen(session, tap)
        amount = amount_fen or 0
        if amount > posted:
            raise ClearingError(
                Code.E_BAD_AMOUNT, f"exception {item.id}: at most the {posted} fen posted can be withheld"
            )
        if amount == 0:
            _decide(item, ExceptionState.WRITTEN_OFF, note, decided_by, now)
            session.flush()
            return item
        # withheld from whoever the tap paid; the decision's day's window takes it as a refund
        posted_to = session.get(Transfer, tap.transfer_id) if tap.transfer_id else None
        payable = (
            posted_to.credit_account_id if posted_to is not None else _terminal(session, record).payable_account_id
        )
        post_transfers(
            session,
            [TransferSpec.single(transfer_id, payable, income, amount, TransferCode.WRITE_OFF,
                                 source_ref=f"exception:{item.id}")],
        )  # fmt: skip
        record_event(session, payee_account_id=payable, kind=REFUND, source_ref=transfer_id, amount_fen=amount,
                     at=now, days=days)  # fmt: skip
        _decide(item, ExceptionState.WRITTEN_OFF, note, decided_by, now, transfer_id=transfer_id, amount_fen=amount)
        session.flush()
        return item
    # held: the purse paid, the ledger did not; release the card's value instead of paying the
    # operator. All of it: anything less would leave the card's ledger above what its purse holds.
    amount = record.amount_fen if amount_fen is None else amount_fen
    if amount != record.amount_fen:
        raise ClearingError(
            Code.E_BAD_AMOUNT,
            f"exception {item.id}: the purse paid {record.amount_fen} fen; a write-off releases exactly that",
        )
    if amount > 0:
        card = _card(session, record)
        post_transfers(
            session,
            [TransferSpec.single(transfer_id, card.account_id, income, amount, TransferCode.WRITE_OFF,
                                 source_ref=f"exception:{item.id}")],
        )  # fmt: skip
        if amount == record.amount_fen:
            _move_shadow(card, record)
    _decide(
        item, ExceptionState.WRITTEN_OFF, note, decided_by, now,
        transfer_id=transfer_id if amount else None, amount_fen=amount,
    )  # fmt: skip
    session.flush()
    return item


def add_item(
    session: Session,
    *,
    code: str,
    message: str = "",
    record: Mapping[str, Any] | None = None,
    tap: Tap | None = None,
    batch_seq: int | None = None,
    now: dt.datetime | None = None,
) -> ExceptionItem:
    """Queue a record by hand (ingest writes the same columns in bulk)."""
    source: Mapping[str, Any] = record or {}
    item = ExceptionItem(
        kind="tap",
        tap_id=tap.id if tap is not None else None,
        tap_business_day=tap.business_day if tap is not None else None,
        record=dict(record) if record is not None else None,
        terminal_id=tap.terminal_id if tap else source.get("terminal_id"),
        terminal_seq=tap.terminal_seq if tap else source.get("terminal_seq"),
        batch_seq=batch_seq if batch_seq is not None else (tap.batch_seq if tap else None),
        issuer_id=tap.issuer_id if tap else source.get("issuer_id"),
        card_asn=tap.card_asn if tap else source.get("card_asn"),
        offline_counter=tap.offline_counter if tap else source.get("offline_counter"),
        amount_fen=tap.amount_fen if tap else source.get("amount_fen"),
        code=code,
        message=message,
        state=ExceptionState.OPEN.value,
    )
    if now is not None:
        item.created_at = now
    session.add(item)
    session.flush()
    return item


__all__ = [
    "DUPLICATE_CODES",
    "GAP_AGE_DAYS_DEFAULT",
    "Effect",
    "ItemView",
    "Kind",
    "Sweep",
    "accept",
    "add_item",
    "kind_of",
    "list_items",
    "open_counts",
    "sweep_gaps",
    "view",
    "write_off",
]
