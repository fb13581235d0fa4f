"""Judging records that a foreign acquirer forwarded: our cards, tapped on another city's terminals.

The issuer's half of interop (``ARCHITECTURE.md`` flow 7): Xi'an's terminals accept our cards
and Xi'an forwards the records to us, because only we hold their TAC keys. We judge them
exactly as our own clearing judges the records of our own terminals (``validation.judge``:
TAC, both duplicate keys, time, amount, denylist as of the tap time, counters and the shadow
balance), with three differences, all of them about *whose* terminal it is:

* **step 1 is skipped** (``Context.acquirer``): the terminal is the acquirer's, registered
  there; its batch is authenticated by the acquirer's signature and the record by the card's
  TAC, which covers the terminal id and sequence;
* **the terminal key is scoped to the acquirer**: the peer's terminal ids are its own and may
  equal ours, so ``(terminal_id, terminal_seq)`` duplicates are looked up only among the
  records already claimed *from that acquirer* (the caller passes them in); the card key
  ``(issuer, card, counter, type)`` is the card's whichever city it was tapped in, so it is
  looked up in ``taps`` and among the keys the caller claimed for foreign records;
* **only our own cards**: another issuer's card in a foreign batch is ``E_UNKNOWN_ISSUER``
  (no issuer is a peer here: we never forward a forward).

Tap-off refunds are the acquirer's tariff business: no refund pricer is used, so a tap-off
(which debits nothing) is judged ``S_TAPOFF_NO_ENTRY`` and moves no money.

The caller (``interop_xian.issuer``) owns the transaction: it takes the write lock, calls
``lock_cards`` before ``foreign_context`` (the cards' state is read under their locks, so no
concurrent ingest batch can move a card between the read and the write), posts the money, and
writes the card states with ``write_card_updates``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import msgspec
from sqlalchemy import select, tuple_, update
from sqlalchemy.orm import Session

from clearing.contract import TapRecord
from clearing.ingest import TacKeys
from clearing.ingest_reads import read_cards
from clearing.ingest_sqlite import SqlReads
from clearing.models import Card, CardStatus
from clearing.validation import (
    CardCounterKey,
    CardKey,
    Context,
    Judgement,
    Limits,
    TapTime,
    TerminalSeqKey,
    judge,
    parse_tap_time,
    verify_tacs,
)

_LOCK_CHUNK = 400


@dataclass(frozen=True, slots=True)
class Verified:
    """Foreign records with their parsed times and TAC results: everything that needs no database."""

    records: list[TapRecord]
    times: list[TapTime | None]
    tacs: list[bool | None]


def decode_record(record: Mapping[str, object]) -> TapRecord:
    """A forwarded record (the JSON object of ``interop_forwards.record``) as a ``TapRecord``.

    Raises ``msgspec.ValidationError`` for anything that is not a terminal-contract record.
    """
    return msgspec.convert(dict(record), TapRecord)


def verify(records: Sequence[TapRecord], keys: TacKeys) -> Verified:
    """Parse the records' times and verify their TACs with our keys (``validation.verify_tacs``)."""
    times = [parse_tap_time(r.tx_time) for r in records]
    return Verified(list(records), times, verify_tacs(records, times, keys.for_record))


def lock_cards(session: Session, keys: Iterable[CardKey]) -> None:
    """Lock our cards among ``keys`` for the transaction (PostgreSQL: ``FOR UPDATE`` in id order).

    On SQLite the caller's first statement is a write, which takes the one write lock.
    """
    if session.get_bind().dialect.name != "postgresql":
        return
    wanted = sorted(set(keys))
    ids: list[int] = []
    for start in range(0, len(wanted), _LOCK_CHUNK):
        chunk = wanted[start : start + _LOCK_CHUNK]
        ids.extend(session.execute(select(Card.id).where(tuple_(Card.issuer_id, Card.card_asn).in_(chunk))).scalars())
    for start in range(0, len(ids), _LOCK_CHUNK):
        chunk_ids = sorted(ids)[start : start + _LOCK_CHUNK]
        session.execute(select(Card.id).where(Card.id.in_(chunk_ids)).order_by(Card.id).with_for_update()).all()


def foreign_context(
    session: Session,
    records: Sequence[TapRecord],
    *,
    acquirer: str,
    seen_terminal_seqs: Iterable[TerminalSeqKey],
    seen_card_counters: Iterable[CardCounterKey],
    now: dt.datetime,
    limits: Limits | None = None,
) -> Context:
    """The ``Context`` foreign records are judged against (module docstring: how keys are scoped).

    ``seen_terminal_seqs``: the ``(terminal_id, terminal_seq)`` already claimed from this
    acquirer; ``seen_card_counters``: card keys claimed by foreign records (of any acquirer),
    added to those of ``taps``.
    """
    reads = SqlReads(session)
    snap = reads.snapshot(records)
    per_card = read_cards(reads, records, snap.cards, snap.own_issuers)
    counters = set(snap.seen_card_counters)
    counters.update(seen_card_counters)
    return Context(
        uploader="",
        known_terminals=frozenset(),
        own_issuers=snap.own_issuers,
        peer_issuers=frozenset(),
        cards=snap.cards,
        seen_terminal_seqs=set(seen_terminal_seqs),
        seen_card_counters=counters,
        now=now,
        limits=limits or Limits(),
        denylist=snap.denylist,
        neighbours=per_card.neighbours,
        entries=per_card.entries,
        day_legs=per_card.day_legs,
        refund_pricer=None,
        acquirer=acquirer,
    )


def judge_foreign(verified: Verified, ctx: Context) -> Judgement:
    """``validation.judge`` for foreign records; ``ctx`` must come from ``foreign_context``."""
    assert ctx.acquirer is not None, "a foreign judgement needs the acquirer's context"
    return judge(verified.records, ctx, verified.tacs, verified.times)


def write_card_updates(session: Session, ctx: Context, judgement: Judgement) -> None:
    """The cards' shadow state after a foreign judgement, as ingest writes it after its own."""
    rows = [
        {
            "id": ctx.cards[key].card_id,
            "shadow_balance_fen": u.shadow_balance_fen,
            "last_offline_counter": u.last_counter,
            "last_tx_at": u.last_tx_at,
            "shadow_load_at": u.shadow_load_at,
            **({"status": CardStatus.BLOCKED.value} if u.blocked else {}),
        }
        for key, u in judgement.card_updates.items()
    ]
    if rows:
        session.execute(update(Card), rows)


__all__ = [
    "Verified",
    "decode_record",
    "foreign_context",
    "judge_foreign",
    "lock_cards",
    "verify",
    "write_card_updates",
]
