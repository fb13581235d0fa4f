"""What ingest reads for a batch, through one interface both database paths implement.

``read_context`` decides *what* a batch needs from the database — the cards and the keys
they already hold, the neighbours of late records, a tap-off's entry leg and the card's legs
of the day, forwards already received — and builds the pure
``validation.Context`` from it. ``ingest_pg`` (COPY, set-based SQL) and ``ingest_sqlite``
(SQLAlchemy Core) implement ``BatchReads``, which only says *how* to fetch each piece, so
the two paths cannot disagree about what a batch is judged against (a test runs one
scenario through both and compares every row). Only the writes are dialect-specific.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Container, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from clearing.contract import TapRecord
from clearing.validation import (
    CardKey,
    CardState,
    Context,
    DenyInterval,
    Leg,
    Limits,
    Neighbour,
    RefundPricer,
    is_tap_off,
    late_record_keys,
    record_digest,
)

LateKey = tuple[str, str, int]  # (issuer_id, card_asn, offline_counter)
ForwardKey = tuple[str, int, str]  # (terminal_id, terminal_seq, record digest)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The batch-wide reads: issuers, the batch's own cards, keys already held, the denylist."""

    own_issuers: frozenset[str]
    peer_issuers: frozenset[str]
    cards: dict[CardKey, CardState]
    versions: dict[CardKey, str]  # row versions (PostgreSQL ``xmin``; empty where one writer at a time)
    seen_terminal_seqs: set[tuple[str, int]]
    seen_card_counters: set[tuple[str, str, int, int]]
    denylist: Mapping[CardKey, Sequence[DenyInterval]]


@dataclass(frozen=True, slots=True)
class LateReads:
    """What the late records of a batch need: their cleared neighbours."""

    neighbours: dict[LateKey, tuple[Neighbour | None, Neighbour | None]]
    # the neighbour above is a stored tap-off still waiting for its refund: its tap id
    waiting: dict[LateKey, int]


class BatchReads(Protocol):
    """How one database path fetches each piece ``read_context`` asks for."""

    def snapshot(self, records: Sequence[TapRecord]) -> Snapshot: ...

    def late(self, late: Sequence[LateKey]) -> LateReads:
        """The cleared purchases at-or-below and above each late counter."""
        ...

    def legs(self, tap_ids: Sequence[int]) -> dict[int, Leg]:
        """Stored taps as legs, by tap id."""
        ...

    def forwards_seen(self, keys: Sequence[ForwardKey]) -> set[ForwardKey]: ...

    def entries(self, keys: Sequence[LateKey]) -> dict[LateKey, Leg]:
        """The posted tap of each (card, counter), with the payable its fare went to."""
        ...

    def day_legs(self, cards: Sequence[tuple[CardKey, dt.datetime, dt.datetime]]) -> dict[CardKey, list[Leg]]:
        """Each card's posted taps with a time in [from, to), in counter order."""
        ...


@dataclass(frozen=True, slots=True)
class CardReads:
    """The per-card reads: re-read for the cards that moved under a batch (``ingest_pg`` phase 2)."""

    neighbours: dict[LateKey, tuple[Neighbour | None, Neighbour | None]] = field(default_factory=dict)
    entries: dict[LateKey, Leg] = field(default_factory=dict)
    day_legs: dict[CardKey, list[Leg]] = field(default_factory=dict)


# How far back a tap-off's fare may look at the card's earlier legs: the daily cap and the
# transfer windows of any tariff live within a day (docs/fares.md).
LEGS_LOOKBACK: dt.timedelta = dt.timedelta(days=1)


def leg_from_row(row: Sequence[Any]) -> Leg:
    """A stored tap as a ``Leg``, from a row in the order both paths select it (the leg columns)."""
    counter, terminal_id, seq, route, vehicle, stop, at, amount, kind, version, category, claimed, payer, tap_id = row
    return Leg(
        counter, terminal_id, seq, route, vehicle, stop, at, amount, kind, version, category, claimed or 0, payer,
        tap_id,
    )  # fmt: skip


def read_cards(
    reads: BatchReads, records: Sequence[TapRecord], cards: Mapping[CardKey, CardState], own_issuers: Container[str]
) -> CardReads:
    """The per-card reads of ``records`` against the card states ``cards``."""
    late = late_record_keys(records, cards)
    facts = reads.late(late) if late else LateReads({}, {})
    neighbours = facts.neighbours
    if facts.waiting:  # rare: a stored tap-off still waiting for its entry, just above a late record
        legs = reads.legs(sorted(set(facts.waiting.values())))
        for key, tap_id in facts.waiting.items():
            below, above = neighbours[key]
            if above is not None and tap_id in legs:
                neighbours[key] = (below, above._replace(waiting=legs[tap_id]))
    tap_offs = [
        r for r in records if r.issuer_id in own_issuers and (r.issuer_id, r.card_asn) in cards and is_tap_off(r)
    ]
    entries = reads.entries([(r.issuer_id, r.card_asn, r.offline_counter - 1) for r in tap_offs]) if tap_offs else {}
    # the cards whose tap-off may be priced in this batch: their legs of the day before it
    windows: dict[CardKey, tuple[dt.datetime, dt.datetime]] = {}

    def widen(key: CardKey, at: dt.datetime) -> None:
        start, end = at - LEGS_LOOKBACK, at
        if key in windows:
            start, end = min(start, windows[key][0]), max(end, windows[key][1])
        windows[key] = (start, end)

    for r in tap_offs:
        entry = entries.get((r.issuer_id, r.card_asn, r.offline_counter - 1))
        if entry is not None:
            widen((r.issuer_id, r.card_asn), entry.at)
        else:  # the entry may be in this batch: its time is close to the exit's
            moment = dt.datetime.fromisoformat(r.tx_time) if _time_ok(r.tx_time) else None
            if moment is not None:
                widen((r.issuer_id, r.card_asn), moment)
    for (issuer, asn, _), (_, above) in neighbours.items():
        if above is not None and above.waiting is not None:
            widen((issuer, asn), above.waiting.at)
    day_legs = reads.day_legs([(key, start, end) for key, (start, end) in windows.items()]) if windows else {}
    return CardReads(neighbours, entries, day_legs)


def _time_ok(text: str) -> bool:
    try:
        dt.datetime.fromisoformat(text)
    except ValueError:
        return False
    return True


def read_context(
    reads: BatchReads,
    records: Sequence[TapRecord],
    *,
    uploader: str,
    now: dt.datetime,
    limits: Limits,
    refund_pricer: RefundPricer | None,
) -> tuple[Context, dict[CardKey, str]]:
    """The ``Context`` a batch is judged against, and the row versions of its cards."""
    snap = reads.snapshot(records)
    per_card = read_cards(reads, records, snap.cards, snap.own_issuers)
    peer = [r for r in records if r.issuer_id in snap.peer_issuers]
    forwards = reads.forwards_seen([(r.terminal_id, r.terminal_seq, record_digest(r)) for r in peer]) if peer else set()
    ctx = Context(
        uploader=uploader,
        known_terminals=frozenset({uploader}),
        own_issuers=snap.own_issuers,
        peer_issuers=snap.peer_issuers,
        cards=snap.cards,
        seen_terminal_seqs=snap.seen_terminal_seqs,
        seen_card_counters=snap.seen_card_counters,
        now=now,
        limits=limits,
        denylist=snap.denylist,
        neighbours=per_card.neighbours,
        seen_forwards=forwards,
        entries=per_card.entries,
        day_legs=per_card.day_legs,
        refund_pricer=refund_pricer,
    )
    return ctx, snap.versions


def with_fresh_cards(ctx: Context, fresh: Mapping[CardKey, CardState], reads: CardReads) -> Context:
    """``ctx`` with the moved cards' states and per-card reads replaced by fresh ones."""
    return replace(
        ctx,
        cards={**ctx.cards, **fresh},
        neighbours={**ctx.neighbours, **reads.neighbours},
        entries={**ctx.entries, **reads.entries},
        day_legs={**ctx.day_legs, **reads.day_legs},
    )


__all__ = [
    "LEGS_LOOKBACK",
    "BatchReads",
    "CardReads",
    "ForwardKey",
    "LateKey",
    "LateReads",
    "Snapshot",
    "leg_from_row",
    "read_cards",
    "read_context",
    "with_fresh_cards",
]
