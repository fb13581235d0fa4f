"""The acquirer applies the issuer's verdicts: accepted items are paid, rejected ones go to disputes.

An *acknowledged* outbox item carries the issuer's verdict (stored with the acknowledgement
by ``interop_xian.sender``). ``apply_verdicts`` settles each one, in one transaction per chunk,
under the item's row lock, moving it to its final state exactly once:

* **accepted** for the record's amount: DUE_FROM the peer → the payable of the operator the
  tap's route (else terminal) was assigned to on the tap's business day (as a local tap would
  pay, ``clearing.ingest_totals.payee_of_tap``), transfer id ``interop:acq:<terminal>:<seq>:<digest16>``,
  code INTEROP; the item joins the bilateral position (``netting.book``, DUE_FROM, in the window
  the issuer's verdict names, else the tap's business day); and the sale joins settlement's
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

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from clearing import accounts
from clearing.business_day import DEFAULT_CLOCK, BusinessDayClock
from clearing.contract.codes import Code
from clearing.db import lock_for_update
from clearing.ingest_totals import SALE, Posting, payee_of_tap, sealed_through, window_of, write_postings
from clearing.ledger import TransferSpec, post_transfers
from clearing.models import ForwardState, InteropForward, Terminal, TransferCode
from interop_xian import netting
from interop_xian.errors import InteropCode
from interop_xian.models import OutboxItem

log = logging.getLogger("interop_xian.acquirer")
APPLY_CHUNK: Final = 500
RESEND_CODES: Final = frozenset({Code.E_KEY_UNAVAILABLE.value})  # the issuer decides when the item comes back
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
    """Settle every acknowledged item of ``peer_city`` (see the module); what was applied."""
    accepted = rejected = accepted_fen = 0
    while True:
        with sessions() as session, session.begin():
            lock_for_update(session)
            items = session.scalars(
                select(OutboxItem)
                .where(OutboxItem.peer_city == peer_city, OutboxItem.state == "acknowledged",
                       OutboxItem.code.not_in(RESEND_CODES))
                .order_by(OutboxItem.id)
                .limit(APPLY_CHUNK)
                .with_for_update()
            ).all()  # fmt: skip
            a, r, fen = _apply_chunk(session, items, now=now, days=days, on_rejected=on_rejected)
            accepted, rejected, accepted_fen = accepted + a, rejected + r, accepted_fen + fen
        if len(items) < APPLY_CHUNK:
            return Applied(accepted, rejected, accepted_fen)


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

    Set-based where money moves: one ``post_transfers`` call, one booking statement and one
    running-totals posting per payee for the whole chunk (``source_ref`` names the chunk by its
    first outbox id, so it is unique and never reused: each item is applied once).
    """
    if not items:
        return 0, 0, 0
    peer_city = items[0].peer_city
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
    specs: list[TransferSpec] = []
    paid: list[tuple[OutboxItem, InteropForward, int, str]] = []
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
            forward.state = ForwardState.REJECTED.value
            forward.issuer_code = item.code[:32]
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
            item.transfer_id = transfer_id
        item.state = "accepted"
        item.updated_at = now
        forward.state = ForwardState.ACCEPTED.value
        forward.issuer_code = "OK"
        accepted += 1
        accepted_fen += item.amount_fen
    if not paid:
        return accepted, rejected, accepted_fen
    created = {r.id for r in post_transfers(session, specs) if r.status == "created"}
    # The bilateral position: DUE_FROM in the issuer's window (the tap day's when it named none).
    netting.lock_peer(session, peer_city)
    final = netting.latest_final(session, peer_city)
    netting.book_many(
        session, peer_city=peer_city, direction=netting.DUE_FROM, now=now,
        rows=[(item.item_id, item.amount_fen, netting.window_for(item.window_day or forward.business_day, final),
               transfer_id) for item, forward, _, transfer_id in paid],
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


__all__ = [
    "RESEND_CODES",
    "Applied",
    "RejectionHook",
    "acquirer_transfer_id",
    "apply_verdicts",
    "default_rejection_hook",
    "requeue_unjudged",
]
