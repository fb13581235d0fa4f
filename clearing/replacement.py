"""Replacing a lost card (补卡): a new card for the holder, the old card's balance moved to it once.

Issue 10, "Lost card and replacement"; ``docs/portal.md``, "The lost-card money rule";
``docs/decisions.md``. The portal reports the card lost (the denylist entry), a clerk asks for
the replacement after the waiting period; this module is clearing's part: the ledger posting
and the card registry, in the caller's transaction.

**The money rule** (``plan_move``, pure). At replacement time the old card's liability account
can still be debited ``liability_fen`` (posted credits − posted debits − pending debits). Some
of that value is already spent: authentic records of the old card that the ledger holds but
has not posted (*held* exception items: a tap after the denylist's effective time but before
the validator had the list is ``E_DENYLISTED``, a debit the ledger could not cover, …). Their
sum is ``held_fen``. Then

    moved_fen = max(0, liability_fen − held_fen),    retained_fen = liability_fen − moved_fen

``moved_fen`` goes to the new card as one ``BALANCE_MOVE`` transfer (old card liability → new
card liability, id ``move:<issuer>:<old asn>``); ``retained_fen`` stays on the old card so the
held records can still be accepted (paid to the operator) or written off against it, as the
exception queue decides them. A record of the old card that arrives only after the move
clears against the old card as any record does; if what is left there cannot cover it, the
ledger refuses the debit (the liability never goes below zero) and ingest holds it as
``S_BALANCE_DISCONTINUITY``: visible in the exception queue and in ``shortfalls`` (the staff
console's notices), never money made up. The waiting period exists so that such records
arrive first.

**Pending loads.** A replacement is refused while the old card has a load pending or
authorized (``E_REPLACEMENT_LOADS_OPEN``): a pending top-up is refunded (the lost card can
never collect it), an authorized one is in doubt and only the card can settle it. Moving
either would let one payment land twice.

**The shadow balance.** The old card's shadow stays what the purse held after its last
cleared record (the purse is gone, not emptied); its ledger keeps ``retained_fen``. The new
card is personalised with ``moved_fen`` on its purse, so purse == shadow == liability.
"""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass
from typing import Final

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from cardos.image import CardImage
from clearing import transfer_ids
from clearing.contract.codes import Code
from clearing.db import lock_for_update
from clearing.errors import ClearingError
from clearing.exceptions_queue import Kind, kind_of
from clearing.issuance import HolderInfo, issue_card
from clearing.keystore import KeyStore
from clearing.ledger import TransferSpec, account_balance, post_transfers
from clearing.loads import OPEN_STATES
from clearing.models import (
    Card,
    CardReplacement,
    CardStatus,
    DenylistEntryRow,
    ExceptionItem,
    ExceptionState,
    PendingLoad,
    Tap,
    TransferCode,
)

ACTOR_LEN_MAX: Final = 64
REPLACEABLE: Final = frozenset({CardStatus.LOST.value, CardStatus.BLOCKED.value})


# --- the pure rule ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MovePlan:
    """What a replacement moves, to the fen; ``liability_fen == moved_fen + retained_fen``."""

    liability_fen: int
    held_fen: int
    moved_fen: int
    retained_fen: int


def plan_move(liability_fen: int, held_fen: int) -> MovePlan:
    """The lost-card money rule: the liability less what held records already spent (module docstring)."""
    if isinstance(liability_fen, bool) or not isinstance(liability_fen, int) or liability_fen < 0:
        raise ValueError(f"liability is a non-negative integer of fen, got {liability_fen!r}")
    if isinstance(held_fen, bool) or not isinstance(held_fen, int) or held_fen < 0:
        raise ValueError(f"held is a non-negative integer of fen, got {held_fen!r}")
    moved = max(0, liability_fen - held_fen)
    plan = MovePlan(liability_fen, held_fen, moved, liability_fen - moved)
    assert plan.moved_fen + plan.retained_fen == plan.liability_fen and plan.moved_fen >= 0 <= plan.retained_fen
    return plan


def shortfall_fen(available_fen: int, held_fen: int) -> int:
    """What a replaced card's held records exceed its liability by: the loss to recover, 0 if none."""
    return max(0, held_fen - available_fen)


# --- the shell ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Replacement:
    old_card_id: int
    new_card_id: int
    issuer_id: str
    old_card_asn: str
    new_card_asn: str
    shadow_fen: int
    plan: MovePlan
    transfer_id: str | None
    replaced_at: dt.datetime
    replaced_by: str
    replayed: bool  # True: this replacement existed already; nothing moved now
    image: CardImage | None  # the new card's image, only when made now (the caller writes it)


@dataclass(frozen=True, slots=True)
class Shortfall:
    """A replaced card whose late records need more than its liability holds (a notice for staff)."""

    issuer_id: str
    card_asn: str
    available_fen: int
    held_fen: int
    shortfall_fen: int


def held_fen(session: Session, issuer_id: str, card_asn: str) -> int:
    """The sum of the card's open exception items of kind *held* (authentic, purse debited, not posted)."""
    rows = session.execute(
        select(ExceptionItem, Tap)
        .join(Tap, Tap.id == ExceptionItem.tap_id)
        .where(
            ExceptionItem.issuer_id == issuer_id,
            ExceptionItem.card_asn == card_asn,
            ExceptionItem.state == ExceptionState.OPEN.value,
        )
    ).all()
    total = 0
    for item, tap in rows:
        if kind_of(item, tap) is Kind.HELD:
            total += tap.amount_fen
    assert total >= 0
    return total


def open_loads(session: Session, issuer_id: str, card_asn: str) -> int:
    return int(
        session.scalar(
            select(func.count(PendingLoad.id)).where(
                PendingLoad.issuer_id == issuer_id, PendingLoad.card_asn == card_asn, PendingLoad.state.in_(OPEN_STATES)
            )
        )
        or 0
    )


def _view(row: CardReplacement, old: Card, new: Card, *, replayed: bool, image: CardImage | None) -> Replacement:
    plan = MovePlan(row.liability_fen, row.held_fen, row.moved_fen, row.liability_fen - row.moved_fen)
    return Replacement(
        old.id, new.id, old.issuer_id, old.card_asn, new.card_asn, row.shadow_fen, plan, row.transfer_id,
        row.replaced_at, row.replaced_by, replayed, image,
    )  # fmt: skip


def find(session: Session, issuer_id: str, card_asn: str) -> Replacement | None:
    """The replacement of this old card, if it was replaced."""
    old = session.scalar(select(Card).where(Card.issuer_id == issuer_id, Card.card_asn == card_asn))
    if old is None:
        return None
    row = session.scalar(select(CardReplacement).where(CardReplacement.old_card_id == old.id))
    if row is None:
        return None
    new = session.get(Card, row.new_card_id)
    assert new is not None
    return _view(row, old, new, replayed=True, image=None)


def listed_since(session: Session, issuer_id: str, card_asn: str) -> dt.datetime | None:
    """When the card's live denylist entry took effect (None: not on the list)."""
    return session.scalar(
        select(DenylistEntryRow.effective_at).where(
            DenylistEntryRow.issuer_id == issuer_id,
            DenylistEntryRow.card_asn == card_asn,
            DenylistEntryRow.removed_version.is_(None),
        )
    )


def replace(
    session: Session,
    keystore: KeyStore,
    *,
    issuer_id: str,
    card_asn: str,
    now: dt.datetime,
    wait_s: int,
    replaced_by: str,
    pin: str | None = None,
) -> Replacement:
    """Issue the replacement of a lost card and move its balance (in the caller's transaction).

    Idempotent per old card: a second call answers the first replacement (``replayed``) and
    moves nothing. Refusals: an unknown card (``E_UNKNOWN_CARD``), a card not reported lost
    (not on the denylist, or active: ``E_CARD_NOT_LOST``), before the waiting period is over
    (``E_REPLACEMENT_TOO_EARLY``), open loads (``E_REPLACEMENT_LOADS_OPEN``).
    """
    if now.tzinfo is None:
        raise ClearingError(Code.E_BAD_TIME, "now must be timezone-aware")
    assert wait_s >= 0
    if not 0 < len(replaced_by) <= ACTOR_LEN_MAX:
        raise ClearingError(Code.E_BAD_REASON, f"who replaces the card is 1..{ACTOR_LEN_MAX} characters")
    lock_for_update(session)  # SQLite: the write lock before the reads, as loads and ingest take it
    old = session.scalar(select(Card).where(Card.issuer_id == issuer_id, Card.card_asn == card_asn).with_for_update())
    if old is None:
        raise ClearingError(Code.E_UNKNOWN_CARD, f"card {card_asn} of issuer {issuer_id} is not registered")
    existing = session.scalar(select(CardReplacement).where(CardReplacement.old_card_id == old.id))
    if existing is not None:
        new = session.get(Card, existing.new_card_id)
        assert new is not None
        return _view(existing, old, new, replayed=True, image=None)
    since = listed_since(session, issuer_id, card_asn)
    if since is None or old.status not in REPLACEABLE:
        raise ClearingError(
            Code.E_CARD_NOT_LOST, f"card {card_asn} is {old.status} and {'not ' if since is None else ''}denylisted: "
            "only a card reported lost is replaced",
        )  # fmt: skip
    due = since + dt.timedelta(seconds=wait_s)
    if now < due:
        raise ClearingError(
            Code.E_REPLACEMENT_TOO_EARLY,
            f"card {card_asn} was reported lost at {since.isoformat(timespec='seconds')}; "
            f"it can be replaced from {due.isoformat(timespec='seconds')}",
        )
    loads = open_loads(session, issuer_id, card_asn)
    if loads:
        raise ClearingError(
            Code.E_REPLACEMENT_LOADS_OPEN,
            f"card {card_asn} has {loads} load(s) pending or authorized: refund or resolve them first",
        )
    available = account_balance(session, old.account_id).available_credit_fen
    plan = plan_move(available, held_fen(session, issuer_id, card_asn))
    shadow = old.shadow_balance_fen
    holder = HolderInfo(name=old.holder_name) if old.holder_name else None
    if pin is None and old.auth_cert_serial is not None:
        pin = f"{secrets.randbelow(10**6):06d}"  # the old card had citizen login: so has the new (PIN shown once)
    image, new = issue_card(
        session, keystore, issuer_id=issuer_id, card_type=old.card_type, balance_fen=plan.moved_fen,
        holder=holder, pin=pin, now=now, sale=False,
    )  # fmt: skip
    transfer_id: str | None = None
    if plan.moved_fen > 0:
        transfer_id = transfer_ids.balance_move(issuer_id, card_asn)
        post_transfers(
            session,
            [TransferSpec.single(transfer_id, old.account_id, new.account_id, plan.moved_fen,
                                 TransferCode.BALANCE_MOVE, source_ref=f"replacement:{issuer_id}:{card_asn}")],
        )  # fmt: skip
    old.status = CardStatus.REPLACED.value
    old.replaced_by_id = new.id
    row = CardReplacement(
        old_card_id=old.id, new_card_id=new.id, shadow_fen=shadow, liability_fen=plan.liability_fen,
        held_fen=plan.held_fen, moved_fen=plan.moved_fen, transfer_id=transfer_id, replaced_at=now,
        replaced_by=replaced_by,
    )  # fmt: skip
    session.add(row)
    session.flush()
    # Read back: the move is reconciled to the fen on both sides.
    after_old = account_balance(session, old.account_id).available_credit_fen
    after_new = account_balance(session, new.account_id)
    assert after_old == plan.retained_fen, (after_old, plan)
    assert after_new.credit_balance_fen == plan.moved_fen == new.shadow_balance_fen == image.purse.balance_fen
    return _view(row, old, new, replayed=False, image=image)


def shortfalls(session: Session, *, limit: int = 1000) -> list[Shortfall]:
    """Replaced cards whose open held records exceed what their liability still holds (notices)."""
    assert 0 < limit <= 10_000
    rows = session.execute(
        select(Card)
        .join(CardReplacement, CardReplacement.old_card_id == Card.id)
        .where(
            select(ExceptionItem.id)
            .where(
                ExceptionItem.issuer_id == Card.issuer_id,
                ExceptionItem.card_asn == Card.card_asn,
                ExceptionItem.state == ExceptionState.OPEN.value,
            )
            .exists()
        )
        .order_by(Card.id)
        .limit(limit)
    ).scalars()
    out: list[Shortfall] = []
    for card in rows:
        available = account_balance(session, card.account_id).available_credit_fen
        held = held_fen(session, card.issuer_id, card.card_asn)
        short = shortfall_fen(available, held)
        if short > 0:
            out.append(Shortfall(card.issuer_id, card.card_asn, available, held, short))
    return out


__all__ = [
    "MovePlan",
    "Replacement",
    "Shortfall",
    "find",
    "held_fen",
    "listed_since",
    "open_loads",
    "plan_move",
    "replace",
    "shortfall_fen",
    "shortfalls",
]
