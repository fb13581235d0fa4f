"""The acquirer applies the issuer's verdicts: accepted items are paid, rejected ones go to disputes.

An *acknowledged* outbox item carries the issuer's verdict (stored with the acknowledgement
by ``interop_xian.sender``). ``apply_verdicts`` settles each one, in one transaction per chunk,
under the item's row lock, moving it to its final state exactly once:

* **accepted** for the record's amount: DUE_FROM the peer → the payable of the operator the
  tap's route (else terminal) was assigned to on the tap's business day (as a local tap would
  pay, ``clearing.ingest_totals.payee_of_tap``), transfer id ``interop:acq:<terminal>:<seq>:<digest16>``,
  code INTEROP; the item joins the bilateral position (DUE_FROM, in the window the issuer's
  verdict names, ``netting.acquired_window``); and the sale joins settlement's
  running totals in the open window of the day the verdict is applied (as ``record_event``), so
  our operator is paid in our own window;
* **accepted for another amount** than the record's: nothing is posted; the item is marked
  rejected with ``E_INTEROP_AMOUNT_MISMATCH`` and handed to disputes (the issuer has posted
  its side; the difference is the dispute's to settle);
* **rejected**: marked with the issuer's code and handed to disputes;
* **rejected ``E_KEY_UNAVAILABLE``** (the issuer lacks the card's key version *now*; it keeps
  no verdict for it, ``interop_xian.issuer``): not final. The item waits ``resend_after_s``
  (acknowledged, with the code) and then goes back to *pending*, so a later batch carries it
  again, until the issuer has the key and decides.

The forwarded record (``interop_forwards``) takes the same final state and the issuer's code.
Replaying is harmless: a final item is never touched again, and the transfer id is the
ledger's idempotency key.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from sqlalchemy import ColumnElement, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from clearing import accounts
from clearing.business_day import DEFAULT_CLOCK, BusinessDayClock
from clearing.db import lock_for_update, on_postgres
from clearing.ingest_totals import SALE, Posting, payee_of_tap, sealed_through, window_of, write_postings
from clearing.ledger import TransferSpec, pg_int_array, pg_text_array, post_transfers_bulk
from clearing.models import ForwardState, InteropForward, Terminal, TransferCode
from interop_xian import netting
from interop_xian.errors import InteropCode
from interop_xian.models import OutboxItem

log = logging.getLogger("interop_xian.acquirer")
APPLY_CHUNK: Final = 500
RESEND_CODES: Final = netting.UNJUDGED_CODES  # the issuer decides when the item comes back
RESEND_AFTER_S_DEFAULT: Final = 3600.0

# Called for every item that ends rejected, in the transaction that marks it (disputes opens one).
RejectionHook = Callable[[Session, OutboxItem, dt.datetime], None]


def acquirer_transfer_id(terminal_id: str, terminal_seq: int, record_digest: str) -> str:
    """The ledger id of an accepted forwarded tap on the acquirer's side (one per record)."""
    return f"interop:acq:{terminal_id}:{terminal_seq}:{record_digest[:16]}"


def default_rejection_hook() -> RejectionHook | None:
    """Disputes' hook when ``interop_xian.disputes`` offers one (``open_for_rejected_item``)."""
    import importlib

    try:
        disputes = importlib.import_module("interop_xian.disputes")
    except ImportError:
        return None
    hook = getattr(disputes, "open_for_rejected_item", None)
    return hook if callable(hook) else None


@dataclass(frozen=True, slots=True)
class Applied:
    accepted: int = 0
    rejected: int = 0
    accepted_fen: int = 0


def apply_verdicts(
    sessions: sessionmaker[Session],
    peer_city: str,
    *,
    now: dt.datetime,
    days: BusinessDayClock = DEFAULT_CLOCK,
    on_rejected: RejectionHook | None = None,
) -> Applied:
    """Settle every acknowledged item of ``peer_city`` (see the module); what was applied.

    PostgreSQL: the waiting items' ids are read once per pass and the chunks locked by id, in id
    order, until a pass finds none; taking each chunk as "the first 500 acknowledged by id" read
    and sorted every item still waiting, once per chunk (quadratic in a day's items).
    """
    accepted = rejected = accepted_fen = 0
    waiting = _ready(peer_city)
    with sessions() as session:
        by_id = on_postgres(session)
    while True:
        chunks: list[list[int] | None] = [None]  # None: the first APPLY_CHUNK waiting, by id
        if by_id:
            with sessions() as session:
                ids = list(session.scalars(select(OutboxItem.id).where(*waiting).order_by(OutboxItem.id)))
            if not ids:
                return Applied(accepted, rejected, accepted_fen)
            chunks = [ids[start : start + APPLY_CHUNK] for start in range(0, len(ids), APPLY_CHUNK)]
        for chunk in chunks:
            with sessions() as session, session.begin():
                lock_for_update(session)
                if chunk is None:
                    query = select(OutboxItem).where(*waiting).order_by(OutboxItem.id).limit(APPLY_CHUNK)
                    items = session.scalars(query.with_for_update()).all()
                else:  # locked by primary key only (an index condition), then still waiting under the lock
                    by_key = select(OutboxItem).where(_BY_IDS.bindparams(ids=pg_int_array(chunk)))
                    locked = session.scalars(by_key.order_by(OutboxItem.id).with_for_update()).all()
                    items = [i for i in locked if _still_waiting(i, peer_city)]
                a, r, fen = _apply_chunk(session, items, now=now, days=days, on_rejected=on_rejected)
                accepted, rejected, accepted_fen = accepted + a, rejected + r, accepted_fen + fen
            if chunk is None and len(items) < APPLY_CHUNK:
                return Applied(accepted, rejected, accepted_fen)


# The chunk by primary key alone, joined with ``unnest``: beside the state filter, ``id = ANY(…)`` was
# planned as an array search over every waiting item per chunk (325 s for 100,000 items), and a
# large ``ANY`` alone may be planned as a sequential scan; an ``unnest`` is probed through the index.
_BY_IDS: Final = text("interop_outbox.id IN (SELECT unnest(CAST(:ids AS bigint[])))")


def _still_waiting(item: OutboxItem, peer_city: str) -> bool:
    """``_ready`` for a locked item, as read under its lock."""
    return (
        item.peer_city == peer_city
        and item.state == "acknowledged"
        and item.code is not None  # SQL's ``NOT IN`` leaves NULL out
        and item.code not in RESEND_CODES
    )


def _ready(peer_city: str) -> tuple[ColumnElement[bool], ...]:
    """The acknowledged items of the peer whose verdict is final (``RESEND_CODES`` wait)."""
    return (
        OutboxItem.peer_city == peer_city,
        OutboxItem.state == "acknowledged",
        OutboxItem.code.not_in(RESEND_CODES),
    )


def requeue_unjudged(
    sessions: sessionmaker[Session], peer_city: str, *, now: dt.datetime,
    resend_after_s: float = RESEND_AFTER_S_DEFAULT,
) -> int:  # fmt: skip
    """Put back to *pending* the items the issuer could not judge (``RESEND_CODES``) that waited long enough."""
    waited = now - dt.timedelta(seconds=resend_after_s)
    with sessions() as session, session.begin():
        moved = session.execute(
            update(OutboxItem)
            .where(OutboxItem.peer_city == peer_city, OutboxItem.state == "acknowledged",
                   OutboxItem.code.in_(RESEND_CODES), OutboxItem.updated_at <= waited)
            .values(state="pending", batch_sequence=None, updated_at=now)
        ).rowcount  # type: ignore[attr-defined]  # fmt: skip
    return int(moved or 0)


def _apply_chunk(
    session: Session, items: Sequence[OutboxItem], *, now: dt.datetime, days: BusinessDayClock,
    on_rejected: RejectionHook | None,
) -> tuple[int, int, int]:  # fmt: skip
    """One chunk of acknowledged items (one peer): (accepted, rejected, accepted fen).

    Set-based where money moves: one ``post_transfers_bulk`` call (COPY on PostgreSQL), one
    booking statement and one running-totals posting per payee for the whole chunk (``source_ref``
    names the chunk by its first outbox id, so it is unique and never reused: each item is applied
    once); on PostgreSQL the accepted items are marked with one statement (``_mark_accepted``).
    """
    if not items:
        return 0, 0, 0
    peer_city = items[0].peer_city
    # PostgreSQL: the accepted items and their forwards are marked with one statement each, not
    # through the ORM's flush of every object (``_mark_accepted``), and the forwards are read as
    # rows (``_forward_rows``); rejected ones keep the ORM path.
    set_based = on_postgres(session)
    forwards: dict[int, InteropForward | _ForwardRow]
    if set_based:
        forwards = _forward_rows(session, [i.forward_id for i in items])
    else:
        forwards = {
            f.id: f
            for f in session.scalars(select(InteropForward).where(InteropForward.id.in_([i.forward_id for i in items])))
        }
    terminals = {
        t.terminal_id: t
        for t in session.scalars(
            select(Terminal).where(Terminal.terminal_id.in_({f.terminal_id for f in forwards.values()}))
        )
    }
    due_from: dict[str, int] = {}
    payees: dict[tuple[str, str | None, dt.date], int] = {}
    marked: list[tuple[int, int, str | None]] = []  # (outbox id, forward id, transfer id)
    specs: list[TransferSpec] = []
    paid: list[tuple[OutboxItem, InteropForward | _ForwardRow, int, str]] = []
    accepted = rejected = accepted_fen = 0
    for item in items:
        forward = forwards.get(item.forward_id)
        assert forward is not None, "an outbox item's forwarded record cannot be deleted"
        assert item.code is not None and item.verdict_amount_fen is not None, "acknowledged items carry their verdict"
        assert item.peer_city == peer_city
        if item.code == "OK" and item.verdict_amount_fen != item.amount_fen:
            item.message = (
                f"the issuer accepted {item.verdict_amount_fen} fen for a record of {item.amount_fen} fen"
                + (f" ({item.message})" if item.message else "")
            )[:2000]
            item.code = InteropCode.E_INTEROP_AMOUNT_MISMATCH.value
        if item.code != "OK":
            item.state = "rejected"
            item.updated_at = now
            stored = forward if isinstance(forward, InteropForward) else session.get(InteropForward, forward.id)
            assert stored is not None
            stored.state = ForwardState.REJECTED.value
            stored.issuer_code = item.code[:32]
            session.flush()
            if on_rejected is not None:
                on_rejected(session, item, now)
            rejected += 1
            continue
        if item.amount_fen > 0:
            terminal = terminals.get(forward.terminal_id)
            assert terminal is not None, "a forwarded record came from a registered terminal"
            route = forward.record.get("route_id") if isinstance(forward.record, dict) else None
            key = (terminal.terminal_id, route if isinstance(route, str) else None, forward.business_day)
            if key not in payees:
                payees[key] = payee_of_tap(session, key[0], key[1], key[2], terminal.payable_account_id)
            if item.peer_issuer_id not in due_from:
                due_from[item.peer_issuer_id] = accounts.due_from_peer(session, item.peer_issuer_id)
            transfer_id = acquirer_transfer_id(forward.terminal_id, forward.terminal_seq, forward.record_digest)
            debit, code = due_from[item.peer_issuer_id], int(TransferCode.INTEROP)
            specs.append(TransferSpec.single(transfer_id, debit, payees[key], item.amount_fen, code,
                                             source_ref=f"interop:{item.item_id}"))  # fmt: skip
            paid.append((item, forward, payees[key], transfer_id))
            if not set_based:
                item.transfer_id = transfer_id
        if set_based:
            marked.append((item.id, forward.id, transfer_id if item.amount_fen > 0 else item.transfer_id))
        else:
            assert isinstance(forward, InteropForward)
            item.state = "accepted"
            item.updated_at = now
            forward.state = ForwardState.ACCEPTED.value
            forward.issuer_code = "OK"
        accepted += 1
        accepted_fen += item.amount_fen
    _mark_accepted(session, marked, now)
    if not paid:
        return accepted, rejected, accepted_fen
    created = {r.id for r in post_transfers_bulk(session, specs) if r.status == "created"}
    # The bilateral position: DUE_FROM in the issuer's window (the tap day's when it named none).
    netting.book_acquired(
        session, peer_city=peer_city, now=now,
        rows=[(item.item_id, item.amount_fen, item.window_day or forward.business_day, transfer_id)
              for item, forward, _, transfer_id in paid],
    )  # fmt: skip
    # Our operator's sales, in the open window of the day the verdicts are applied.
    sales: dict[int, list[int]] = {}
    for item, _, payee, transfer_id in paid:
        if transfer_id in created:
            count_fen = sales.setdefault(payee, [0, 0])
            count_fen[0] += 1
            count_fen[1] += item.amount_fen
    if sales:
        event_day = days.day_of(now)
        window = window_of(event_day, sealed_through(session))
        source_ref = f"interop:acq:{peer_city}:{min(item.id for item, _, _, _ in paid)}"
        write_postings(
            session,
            [Posting(window, payee, SALE, source_ref, event_day, n, fen) for payee, (n, fen) in sorted(sales.items())],
            now,
        )
    return accepted, rejected, accepted_fen


@dataclass(frozen=True, slots=True)
class _ForwardRow:
    """What a chunk reads of a forwarded record, as a row (no ORM object, no parse of the JSON):
    ``record`` holds only the record's ``route_id``, when that is a string."""

    id: int
    terminal_id: str
    terminal_seq: int
    record_digest: str
    business_day: dt.date
    record: dict[str, object]


_FORWARDS_PG: Final = text("""
SELECT id, terminal_id, terminal_seq, record_digest, business_day,
       CASE WHEN json_typeof(record -> 'route_id') = 'string' THEN record ->> 'route_id' END
FROM interop_forwards WHERE id IN (SELECT unnest(CAST(:ids AS bigint[])))
""")  # ``unnest``, not ``= ANY``: an index probe per id, never a scan of every forward (``_BY_IDS``)


def _forward_rows(session: Session, ids: Sequence[int]) -> dict[int, InteropForward | _ForwardRow]:
    rows = session.execute(_FORWARDS_PG, {"ids": pg_int_array(ids)})
    return {
        int(i): _ForwardRow(int(i), t, int(s), d, day, {} if route is None else {"route_id": route})
        for i, t, s, d, day, route in rows
    }


_MARK_ITEMS_PG: Final = text("""
UPDATE interop_outbox AS o SET state = 'accepted', updated_at = :now, transfer_id = v.t
FROM unnest(CAST(:ids AS bigint[]), CAST(:tids AS text[])) AS v(id, t) WHERE o.id = v.id
""")
_MARK_FORWARDS_PG: Final = text("""
UPDATE interop_forwards SET state = :state, issuer_code = 'OK' WHERE id IN (SELECT unnest(CAST(:ids AS bigint[])))
""")


def _mark_accepted(session: Session, marked: Sequence[tuple[int, int, str | None]], now: dt.datetime) -> None:
    """The accepted items (state, time, transfer id) and their forwards (state, code): what the ORM
    flush of each object would write, in two statements. The items are row-locked already."""
    if not marked:
        return
    ids, tids = pg_int_array(m[0] for m in marked), pg_text_array(m[2] for m in marked)
    session.execute(_MARK_ITEMS_PG, {"now": now, "ids": ids, "tids": tids})
    session.execute(
        _MARK_FORWARDS_PG, {"state": ForwardState.ACCEPTED.value, "ids": pg_int_array(m[1] for m in marked)}
    )


__all__ = [
    "RESEND_CODES",
    "Applied",
    "RejectionHook",
    "acquirer_transfer_id",
    "apply_verdicts",
    "default_rejection_hook",
    "requeue_unjudged",
]
