"""The exception queue: rejected and suspect records waiting for a person's decision.

Every decision is a new transfer, never an edit of money (``ARCHITECTURE.md`` flow 4,
"corrections are new transfers"); ``docs/ledger.md`` ("Transfers per flow") gives the
accounting:

* **accept**: the record is paid as the tap it is: card liability → the terminal
  operator's payable, transfer id ``tap:<terminal_id>:<terminal_seq>`` — the same id
  ingest would have used, so a tap can never be paid twice. A record without a tap row
  gets one (and claims its natural keys; a key already held by another tap is refused).
  A record whose TAC was never verified (``UNVERIFIED_CODES``: forged, unknown card,
  issuer or terminal, unreadable time) is never accepted: it is written off with amount 0.
* **write off**: the card's value is released to write-off income (card liability →
  ``WRITE_OFF_INCOME``, id ``exc:<item_id>:write-off``), for a genuine record we will not
  pay; with amount 0 (a record that was never genuine) the item is closed with no transfer.

The card's shadow balance follows a decided record that is newer than the last one seen.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from cardos.records import SHANGHAI_TZ
from clearing import accounts
from clearing.contract.codes import Code
from clearing.errors import ClearingError
from clearing.ledger import TransferSpec, post_transfers
from clearing.models import Card, ExceptionItem, ExceptionState, Tap, Terminal, TransferCode

LIST_LIMIT_MAX: Final = 10_000
NOTE_LEN_MAX: Final = 2000
# Codes of records ingest refused before their TAC was verified (``clearing.validation`` steps
# 1-4). Without a tap row nothing proves the card was debited: accepting one would take card
# value for a purchase that may never have happened. A genuine one comes back as a new upload.
UNVERIFIED_CODES: Final = frozenset(
    {"E_TAC_MISMATCH", "E_UNKNOWN_CARD", "E_UNKNOWN_ISSUER", "E_UNKNOWN_TERMINAL", "E_BAD_TIME"}
)


@dataclass(frozen=True, slots=True)
class _Rec:
    """The fields of a queued record that a decision needs."""

    terminal_id: str
    terminal_seq: int
    issuer_id: str
    card_asn: str
    tx_type: int
    amount_fen: int
    balance_before_fen: int
    offline_counter: int
    tx_time: dt.datetime


def _record_dict(item: ExceptionItem) -> dict[str, Any] | None:
    record: Any = item.record
    if isinstance(record, str):
        record = json.loads(record)
    return record if isinstance(record, dict) else None


def _rec_of(item: ExceptionItem, tap: Tap | None) -> _Rec:
    if tap is not None:
        return _Rec(
            tap.terminal_id, tap.terminal_seq, tap.issuer_id, tap.card_asn, tap.tx_type, tap.amount_fen,
            tap.balance_before_fen, tap.offline_counter, tap.tx_time,
        )  # fmt: skip
    record = _record_dict(item)
    if record is None:
        raise ClearingError(Code.E_NO_RECORD, f"exception {item.id} has neither a tap nor a record")
    try:
        return _Rec(
            terminal_id=str(record["terminal_id"]).lower(),
            terminal_seq=int(record["terminal_seq"]),
            issuer_id=str(record["issuer_id"]).lower(),
            card_asn=str(record["card_asn"]).lower(),
            tx_type=int(record["tx_type"]),
            amount_fen=int(record["amount_fen"]),
            balance_before_fen=int(record["balance_before_fen"]),
            offline_counter=int(record["offline_counter"]),
            tx_time=dt.datetime.fromisoformat(str(record["tx_time"])),
        )
    except (KeyError, ValueError, TypeError) as exc:
        raise ClearingError(Code.E_BAD_RECORD, f"exception {item.id}: unusable record ({exc})") from None


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
    """Queue a record (ingest calls this, or writes the same columns in bulk)."""
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


def list_items(session: Session, *, state: str | None = "open", limit: int = 100) -> list[ExceptionItem]:
    """Items oldest first (``state=None``: all)."""
    assert 0 < limit <= LIST_LIMIT_MAX
    stmt = select(ExceptionItem).order_by(ExceptionItem.created_at, ExceptionItem.id).limit(limit)
    if state is not None:
        if state not in tuple(ExceptionState):
            raise ClearingError(Code.E_BAD_STATE, f"state must be one of {', '.join(ExceptionState)}")
        stmt = stmt.where(ExceptionItem.state == state)
    return list(session.scalars(stmt))


def _open_item(session: Session, item_id: int) -> ExceptionItem:
    item = session.get(ExceptionItem, item_id, with_for_update=True)
    if item is None:
        raise ClearingError(Code.E_NO_SUCH_EXCEPTION, f"no exception item {item_id}")
    if item.state != ExceptionState.OPEN:
        raise ClearingError(Code.E_ALREADY_DECIDED, f"exception {item_id} is already {item.state}")
    return item


def _tap_of(session: Session, item: ExceptionItem) -> Tap | None:
    if item.tap_id is None:
        return None
    tap = session.get(Tap, item.tap_id)
    assert tap is not None, f"exception {item.id} points at tap {item.tap_id}, which does not exist"
    assert item.tap_business_day is None or tap.business_day == item.tap_business_day
    return tap


def _card(session: Session, rec: _Rec) -> Card:
    card = session.execute(
        select(Card).where(Card.issuer_id == rec.issuer_id, Card.card_asn == rec.card_asn).with_for_update()
    ).scalar_one_or_none()
    if card is None:
        raise ClearingError(Code.E_UNKNOWN_CARD, f"card {rec.issuer_id}:{rec.card_asn} is not registered here")
    return card


def _move_shadow(card: Card, rec: _Rec) -> None:
    """A decided record newer than the card's last one moves the shadow balance to its after-balance."""
    after = rec.balance_before_fen - rec.amount_fen
    if after < 0:
        return
    if card.last_offline_counter is None or rec.offline_counter > card.last_offline_counter:
        card.shadow_balance_fen = after
        card.last_offline_counter = rec.offline_counter
        card.last_tx_at = rec.tx_time
        card.shadow_load_at = None


def _post(session: Session, spec: TransferSpec) -> None:
    post_transfers(session, [spec])


def _decide(
    item: ExceptionItem, state: ExceptionState, note: str | None, decided_by: str | None, now: dt.datetime
) -> None:
    if note is not None and len(note) > NOTE_LEN_MAX:
        raise ClearingError(Code.E_NOTE_TOO_LONG, f"notes are at most {NOTE_LEN_MAX} characters")
    item.state = state.value
    item.note = note
    item.decided_by = decided_by
    item.decided_at = now


def accept(
    session: Session,
    item_id: int,
    *,
    now: dt.datetime,
    note: str | None = None,
    decided_by: str | None = None,
    business_day: dt.date | None = None,
) -> ExceptionItem:
    """Accept a queued record: post it as the tap it is (see the module docstring)."""
    item = _open_item(session, item_id)
    tap = _tap_of(session, item)
    if tap is None and item.code in UNVERIFIED_CODES:
        raise ClearingError(
            Code.E_UNVERIFIED_RECORD,
            f"exception {item.id} ({item.code}): the record's TAC was never verified, so it cannot be paid; "
            "write it off with amount 0, or have the terminal upload a verified record",
        )
    rec = _rec_of(item, tap)
    card = _card(session, rec)
    terminal = session.get(Terminal, rec.terminal_id)
    if terminal is None:
        raise ClearingError(Code.E_UNKNOWN_TERMINAL, f"terminal {rec.terminal_id} is not registered")
    transfer_id = f"tap:{rec.terminal_id}:{rec.terminal_seq}"

    if tap is None:
        day = business_day or now.astimezone(SHANGHAI_TZ).date()
        held = _key_held(session, rec)
        if held is not None:
            raise ClearingError(
                Code.E_DUPLICATE_TAP, f"exception {item.id}: another tap already holds this record's {held}"
            )
        tap = _tap_row(item, rec, day, now)
        try:
            with session.begin_nested():  # a savepoint: losing the key to a concurrent batch is a clear refusal
                session.add(tap)
                session.flush()
        except IntegrityError as exc:
            raise ClearingError(
                Code.E_DUPLICATE_TAP, f"exception {item.id}: another tap took this record's key meanwhile"
            ) from exc
        item.tap_id, item.tap_business_day = tap.id, tap.business_day

    if rec.amount_fen > 0:
        _post(
            session,
            TransferSpec.single(
                transfer_id, card.account_id, terminal.payable_account_id, rec.amount_fen, TransferCode.PURCHASE,
                source_ref=f"exception:{item.id}",
            ),
        )  # fmt: skip
        item.decision_transfer_id = transfer_id
        tap.transfer_id = transfer_id
    tap.verdict = "accepted"
    tap.message = (tap.message + " " if tap.message else "") + f"[accepted by exception {item.id}]"
    _move_shadow(card, rec)
    _decide(item, ExceptionState.ACCEPTED, note, decided_by, now)
    session.flush()
    return item


def _key_held(session: Session, rec: _Rec) -> str | None:
    """Which natural key of the record another tap already holds, if any.

    The unique indexes on ``taps`` are the guarantee (a concurrent insert of the same key
    fails the flush); this check gives the usual case a clear error.
    """
    by_seq = select(Tap.id).where(Tap.terminal_id == rec.terminal_id, Tap.terminal_seq == rec.terminal_seq)
    if session.scalar(by_seq) is not None:
        return "terminal sequence"
    by_counter = select(Tap.id).where(
        Tap.issuer_id == rec.issuer_id,
        Tap.card_asn == rec.card_asn,
        Tap.offline_counter == rec.offline_counter,
        Tap.tx_type == rec.tx_type,
    )
    return "card counter" if session.scalar(by_counter) is not None else None


def _tap_row(item: ExceptionItem, rec: _Rec, day: dt.date, now: dt.datetime) -> Tap:
    record = _record_dict(item) or {}
    fare = record.get("fare") or {}
    offset = rec.tx_time.utcoffset()
    return Tap(
        business_day=day,
        batch_seq=item.batch_seq,
        terminal_id=rec.terminal_id,
        terminal_seq=rec.terminal_seq,
        psam_serial=str(record.get("psam_serial", "")),
        issuer_id=rec.issuer_id,
        card_asn=rec.card_asn,
        card_type=str(record.get("card_type", "")),
        tx_type=rec.tx_type,
        amount_fen=rec.amount_fen,
        balance_before_fen=rec.balance_before_fen,
        offline_counter=rec.offline_counter,
        tx_time=rec.tx_time,
        tx_utc_offset_min=int(offset.total_seconds() // 60) if offset is not None else 480,
        key_version=int(record.get("key_version", 0)),
        alg_id=int(record.get("alg_id", 0)),
        tac=str(record.get("tac", "")),
        route_id=record.get("route_id"),
        stop_id=record.get("stop_id"),
        vehicle_id=record.get("vehicle_id"),
        fare_product_id=fare.get("product_id"),
        fare_rider_category_id=fare.get("rider_category_id"),
        fare_leg_group_id=fare.get("leg_group_id"),
        fare_full_fen=fare.get("full_fare_fen"),
        fare_discount_fen=fare.get("discount_fen"),
        fare_transfer_of=fare.get("transfer_of"),
        status=str(record.get("status", "normal")),
        verdict="accepted",
        code=item.code,
        message=item.message,
        received_at=now,
    )


def write_off(
    session: Session,
    item_id: int,
    *,
    now: dt.datetime,
    note: str,
    amount_fen: int | None = None,
    decided_by: str | None = None,
) -> ExceptionItem:
    """Write a queued record off: release ``amount_fen`` (default: the record's amount) of the card's value.

    Amount 0 closes the item with no transfer (a record that never took money from the card).
    A record whose TAC was never verified proves no debit, so it can only be closed with 0
    (the default for it): releasing its amount would move real card value on a forger's word.
    """
    if not note.strip():
        raise ClearingError(Code.E_NOTE_REQUIRED, "a write-off needs a note saying why")
    item = _open_item(session, item_id)
    tap = _tap_of(session, item)
    rec = _rec_of(item, tap)
    unverified = tap is None and item.code in UNVERIFIED_CODES
    amount = (0 if unverified else rec.amount_fen) if amount_fen is None else amount_fen
    if unverified and amount != 0:
        raise ClearingError(
            Code.E_UNVERIFIED_RECORD,
            f"{item.code} record {item.id} never had its TAC verified: it can only be written off with amount 0",
        )
    if not 0 <= amount <= rec.amount_fen:
        raise ClearingError(Code.E_BAD_AMOUNT, f"write-off amount must be 0..{rec.amount_fen} fen")
    if amount > 0:
        card = _card(session, rec)
        transfer_id = f"exc:{item.id}:write-off"
        _post(
            session,
            TransferSpec.single(
                transfer_id, card.account_id, accounts.write_off_income(session), amount, TransferCode.WRITE_OFF,
                source_ref=f"exception:{item.id}",
            ),
        )  # fmt: skip
        item.decision_transfer_id = transfer_id
        if amount == rec.amount_fen:
            _move_shadow(card, rec)
    _decide(item, ExceptionState.WRITTEN_OFF, note, decided_by, now)
    session.flush()
    return item


__all__ = ["UNVERIFIED_CODES", "accept", "add_item", "list_items", "write_off"]
