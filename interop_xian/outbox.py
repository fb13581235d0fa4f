"""The acquirer's outbox: forwarded records → outbox items → batches with their exact bytes.

``collect`` turns every ``interop_forwards`` row of the peer's cards that has no outbox item yet
into one (state *pending*); ``build_batches`` takes pending items in order, numbers a batch
with the next sequence of the direction (``interop_channels``, row-locked), encodes it once
(``interop_xian.batch``) and stores the bytes with the items marked *sent* — one transaction
per batch, so a batch exists exactly with the items it names and is never rebuilt. Delivery
(``interop_xian.sender``) only ever resends those stored bytes.

Item ids are stable across resends (``interop_xian.items``): ``<city>:<terminal>:<seq>:<digest16>``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, cast

from sqlalchemy import Table, func, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from clearing.db import conflict_insert, lock_for_update, on_postgres
from clearing.ledger import pg_int_array, pg_text_array
from clearing.models import ForwardState, InteropForward, Issuer
from interop_xian.batch import digest, encode_batch
from interop_xian.config import InteropConfig
from interop_xian.items import InteropItem
from interop_xian.models import InteropChannel, OutBatch, OutboxItem

COLLECT_CHUNK: Final = 5000


def item_id_of(city: str, terminal_id: str, terminal_seq: int, record_digest: str) -> str:
    """The stable id of a forwarded record on the wire (``InteropItem.item_id``)."""
    return f"{city}:{terminal_id}:{terminal_seq}:{record_digest[:16]}"


def peer_issuer_ids(session: Session, peer_city: str) -> list[str]:
    """The registered issuers of the peer city (issuers are data: ``clearing.registry``)."""
    return list(session.scalars(select(Issuer.issuer_id).where(Issuer.city == peer_city, Issuer.own.is_(False))))


def collect(sessions: sessionmaker[Session], config: InteropConfig, *, now: dt.datetime) -> int:
    """Put every forwarded record of the peer's cards that is not in the outbox yet into it; how many.

    Idempotent and safe beside another collector: ``forward_id`` is unique and the insert skips
    rows that are there (``ON CONFLICT DO NOTHING``).
    """
    added = 0
    while True:
        with sessions() as session, session.begin():
            issuers = peer_issuer_ids(session, config.peer_city)
            if not issuers:
                return added
            if on_postgres(session):
                picked = int(
                    session.execute(
                        _COLLECT_PG,
                        {"forwarded": ForwardState.FORWARDED.value, "issuers": pg_text_array(issuers),
                         "n": COLLECT_CHUNK,
                         "city": config.city, "peer": config.peer_city, "now": now},
                    ).scalar_one()
                )  # fmt: skip
                added += picked
                if picked < COLLECT_CHUNK:
                    return added
                continue
            rows = session.execute(
                select(
                    InteropForward.id, InteropForward.issuer_id, InteropForward.terminal_id,
                    InteropForward.terminal_seq, InteropForward.record_digest, InteropForward.amount_fen,
                )
                .outerjoin(OutboxItem, OutboxItem.forward_id == InteropForward.id)
                .where(
                    OutboxItem.id.is_(None), InteropForward.state == ForwardState.FORWARDED.value,
                    InteropForward.issuer_id.in_(issuers),
                )
                .order_by(InteropForward.id)
                .limit(COLLECT_CHUNK)
            ).all()  # fmt: skip
            if not rows:
                return added
            insert = conflict_insert(session.get_bind().dialect.name)
            values = [
                {
                    "forward_id": r.id, "item_id": item_id_of(config.city, r.terminal_id, r.terminal_seq,
                                                             r.record_digest),
                    "peer_city": config.peer_city, "peer_issuer_id": r.issuer_id, "amount_fen": r.amount_fen,
                    "state": "pending", "created_at": now, "updated_at": now,
                }
                for r in rows
            ]  # fmt: skip
            session.execute(insert(cast(Table, OutboxItem.__table__)).on_conflict_do_nothing(), values)
            added += len(rows)
        if len(rows) < COLLECT_CHUNK:
            return added


# ``collect``'s read and insert as one statement on PostgreSQL (no rows through Python): the same
# rows, the item id of ``item_id_of``, the same conflict rule; it counts the forwards it picked,
# as the generic path does.
_COLLECT_PG: Final = text("""
WITH picked AS (
    SELECT f.id, f.issuer_id, f.terminal_id, f.terminal_seq, f.record_digest, f.amount_fen
    FROM interop_forwards f
    WHERE f.state = :forwarded AND f.issuer_id = ANY(CAST(:issuers AS text[]))
      AND NOT EXISTS (SELECT 1 FROM interop_outbox o WHERE o.forward_id = f.id)
    ORDER BY f.id
    LIMIT :n
), added AS (
    INSERT INTO interop_outbox (forward_id, item_id, peer_city, peer_issuer_id, amount_fen, state, created_at,
                                updated_at)
    SELECT id, :city || ':' || terminal_id || ':' || terminal_seq || ':' || left(record_digest, 16), :peer,
           issuer_id, amount_fen, 'pending', :now, :now
    FROM picked ORDER BY id
    ON CONFLICT DO NOTHING
)
SELECT count(*) FROM picked
""")


def channel(session: Session, peer_city: str, direction: str, *, lock: bool) -> InteropChannel:
    """The channel row of a direction, created at 0 if missing; row-locked when ``lock``."""
    insert = conflict_insert(session.get_bind().dialect.name)
    session.execute(
        insert(InteropChannel)
        .values(peer_city=peer_city, direction=direction, last_sequence=0, updated_at=dt.datetime.now(dt.UTC))
        .on_conflict_do_nothing()
    )
    query = select(InteropChannel).where(InteropChannel.peer_city == peer_city, InteropChannel.direction == direction)
    if lock:
        lock_for_update(session)
        query = query.with_for_update()
    row = session.scalars(query.execution_options(populate_existing=True)).one()
    return row


_SEND_PG: Final = text("""
UPDATE interop_outbox SET state = 'sent', batch_sequence = :sequence, updated_at = :now
WHERE id IN (SELECT unnest(CAST(:ids AS bigint[])))
""")  # ``unnest``, not ``= ANY``: a thousand-id ``ANY`` may be planned as a scan of the whole outbox


@dataclass(frozen=True, slots=True)
class BuiltBatch:
    sequence: int
    item_count: int
    amount_fen: int
    digest: str


def items_of_batch(session: Session, peer_city: str, sequence: int) -> list[InteropItem]:
    """The items of one of our batches, in the order they were encoded (outbox id order)."""
    rows = session.execute(
        select(OutboxItem.item_id, InteropForward.terminal_id, InteropForward.terminal_seq,
               InteropForward.record_digest, InteropForward.record)
        .join(InteropForward, InteropForward.id == OutboxItem.forward_id)
        .where(OutboxItem.peer_city == peer_city, OutboxItem.batch_sequence == sequence)
        .order_by(OutboxItem.id)
    ).all()  # fmt: skip
    return [InteropItem(r.item_id, r.terminal_id, r.terminal_seq, r.record_digest, r.record) for r in rows]


def build_batches(
    sessions: sessionmaker[Session], config: InteropConfig, *, now: dt.datetime, batches_max: int = 1000
) -> list[BuiltBatch]:
    """Number, encode and store batches of pending items (``batch_items_max`` each); the ones built."""
    built: list[BuiltBatch] = []
    while len(built) < batches_max:
        with sessions() as session, session.begin():
            row = channel(session, config.peer_city, "out", lock=True)
            pending = session.execute(
                select(OutboxItem.id, OutboxItem.amount_fen)
                .where(OutboxItem.peer_city == config.peer_city, OutboxItem.state == "pending")
                .order_by(OutboxItem.id)
                .limit(config.batch_items_max)
            ).all()
            if not pending:
                break
            sequence = row.last_sequence + 1
            ids = [p.id for p in pending]
            if on_postgres(session):  # one array, not an IN list of a batch's ids
                session.execute(_SEND_PG, {"sequence": sequence, "now": now, "ids": pg_int_array(ids)})
            else:
                session.execute(
                    update(OutboxItem)
                    .where(OutboxItem.id.in_(ids))
                    .values(state="sent", batch_sequence=sequence, updated_at=now)
                )
            items = items_of_batch(session, config.peer_city, sequence)
            assert [i.item_id for i in items] and len(items) == len(ids), "a batch is exactly its items"
            body = encode_batch(from_city=config.city, to_city=config.peer_city, sequence=sequence,
                                created_at=now, items=items)  # fmt: skip
            amount = sum(p.amount_fen for p in pending)
            session.add(
                OutBatch(peer_city=config.peer_city, sequence=sequence, digest=digest(body), body=body,
                         item_count=len(items), amount_fen=amount, state="sent", attempts=0, next_attempt_at=now,
                         created_at=now)
            )  # fmt: skip
            row.last_sequence = sequence
            row.updated_at = now
            built.append(BuiltBatch(sequence, len(items), amount, digest(body)))
    return built


def counts(session: Session, peer_city: str) -> dict[str, int]:
    """Outbox items per state (reports, ``yikatong interop exchange``)."""
    rows = session.execute(
        select(OutboxItem.state, func.count()).where(OutboxItem.peer_city == peer_city).group_by(OutboxItem.state)
    ).all()
    return {str(state): int(n) for state, n in rows}


def unacknowledged(session: Session, peer_city: str) -> Sequence[OutBatch]:
    return session.scalars(
        select(OutBatch).where(OutBatch.peer_city == peer_city, OutBatch.state == "sent").order_by(OutBatch.sequence)
    ).all()


__all__ = [
    "BuiltBatch",
    "build_batches",
    "channel",
    "collect",
    "counts",
    "item_id_of",
    "items_of_batch",
    "peer_issuer_ids",
    "unacknowledged",
]
