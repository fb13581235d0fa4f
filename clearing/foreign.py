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
from typing import Any

import msgspec
from sqlalchemy import text, update
from sqlalchemy.orm import Session

from clearing.contract import TapRecord
from clearing.db import on_postgres
from clearing.ingest import CardRow, TacKeys
from clearing.ingest_pg import _PLANNER, PgReads, _update_cards
from clearing.ingest_reads import BatchReads, read_cards
from clearing.ingest_sqlite import SqlReads
from clearing.ledger import pg_text_array
from clearing.models import Card, CardStatus
from clearing.validation import (
    CardCounterKey,
    CardKey,
    CardUpdate,
    Context,
    DenyInterval,
    Judgement,
    Limits,
    TapTime,
    TerminalSeqKey,
    judge,
    parse_tap_time,
    verify_tacs,
)

_LOCK_CARDS_PG = """
SELECT c.id FROM cards c
WHERE (c.issuer_id, c.card_asn) IN (SELECT * FROM unnest(CAST(:i AS text[]), CAST(:a AS text[])))
ORDER BY c.id FOR UPDATE OF c
"""


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
    # one statement of two arrays (the chunked IN lists cost a parse and a plan per chunk); locked in id order
    session.execute(
        text(_LOCK_CARDS_PG),
        {"i": pg_text_array(issuer for issuer, _ in wanted), "a": pg_text_array(a for _, a in wanted)},
    ).all()


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
    reads: BatchReads
    if on_postgres(session):
        driver = session.connection().connection.driver_connection
        assert driver is not None
        cur = driver.cursor()
        cur.execute(_PLANNER)  # as ingest plans them: index nested loops over the staged keys (no statistics)
        reads = _pg_reads(cur)
        snap = reads.snapshot(records)
        per_card = read_cards(reads, records, snap.cards, snap.own_issuers)
        cur.execute(_PLANNER_DEFAULT)
    else:
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


# The issuer's transaction runs the rest (ledger, bookings) with the server's default plans.
_PLANNER_DEFAULT = "SET LOCAL enable_hashjoin = on; SET LOCAL enable_mergejoin = on"
_DENYLIST_OF_KEYS = """
SELECT d.issuer_id, d.card_asn, d.effective_at, d.removed_at FROM denylist_entries d
WHERE (d.issuer_id, d.card_asn) IN (SELECT DISTINCT issuer_id, card_asn FROM ingest_keys)
"""


def _pg_reads(cur: Any) -> PgReads:
    """PostgreSQL: clearing's own set-based reads (``ingest_pg.PgReads``: the records' keys COPY'd
    into a temporary table, the reads pipelined in one round trip) on the session's connection,
    in its transaction. The chunked ``IN`` lists of ``SqlReads`` cost a parse and a plan of
    thousands of parameters per chunk. No batch of ``taps`` is this one's (batch id 0)."""

    def denylist(cur: Any, version: int) -> dict[CardKey, list[DenyInterval]]:
        entries: dict[CardKey, list[DenyInterval]] = {}
        for issuer_id, asn, effective_at, removed_at in cur.execute(_DENYLIST_OF_KEYS):
            entries.setdefault((issuer_id, asn), []).append(DenyInterval(effective_at, removed_at))
        return entries

    return PgReads(cur, 0, denylist)


def judge_foreign(verified: Verified, ctx: Context) -> Judgement:
    """``validation.judge`` for foreign records; ``ctx`` must come from ``foreign_context``."""
    assert ctx.acquirer is not None, "a foreign judgement needs the acquirer's context"
    return judge(verified.records, ctx, verified.tacs, verified.times)


def write_card_updates(session: Session, ctx: Context, judgement: Judgement) -> None:
    """The cards' shadow state after a foreign judgement, as ingest writes it after its own.

    PostgreSQL: ingest's own statement (one ``UPDATE … FROM unnest``, ``ingest_pg``) on the
    session's connection; elsewhere an ORM bulk update by primary key. Both set the same
    columns, and the status only when the judgement blocked the card.
    """
    updates = judgement.card_updates  # a property: computed per access
    if not updates:
        return
    if on_postgres(session):
        _write_card_updates_pg(session, ctx, updates)
    else:
        _write_card_updates_orm(session, ctx, updates)


def _write_card_updates_pg(session: Session, ctx: Context, updates: Mapping[CardKey, CardUpdate]) -> None:
    driver = session.connection().connection.driver_connection
    assert driver is not None
    cards = [
        CardRow(ctx.cards[key].card_id, u.shadow_balance_fen, u.last_counter, u.last_tx_at, u.shadow_load_at, u.blocked)
        for key, u in updates.items()
    ]
    with driver.cursor() as cur:  # under ingest's plans (an index probe per card, not a scan of every card)
        cur.execute(_PLANNER)
        _update_cards(cur, cards)
        cur.execute(_PLANNER_DEFAULT)


def _write_card_updates_orm(session: Session, ctx: Context, updates: Mapping[CardKey, CardUpdate]) -> None:
    rows = [
        {
            "id": ctx.cards[key].card_id,
            "shadow_balance_fen": u.shadow_balance_fen,
            "last_offline_counter": u.last_counter,
            "last_tx_at": u.last_tx_at,
            "shadow_load_at": u.shadow_load_at,
            **({"status": CardStatus.BLOCKED.value} if u.blocked else {}),
        }
        for key, u in updates.items()
    ]
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
