"""Disputes between the two cities about one record (issue 12, "Disputes"): a state machine with deadlines.

A record the issuer rejected (or one a side contests later) opens a dispute on each side, each
keeping its own row with its own ``role`` (``issuer``: the record is of our card; ``acquirer``:
it was tapped on our terminal). Who moves it:

| from | to | by | deadline of the new state |
| --- | --- | --- | --- |
| (none) | opened | acquirer (a rejected item), or either side | issuer answers in 5 working days |
| opened | evidence_requested | issuer | acquirer gives evidence in 10 |
| opened, evidence_given | accepted | issuer | — (final) |
| opened, evidence_given | rejected | issuer | acquirer writes off in 10 |
| evidence_requested | evidence_given | acquirer | issuer decides in 5 |
| evidence_given | evidence_requested | issuer (once more) | acquirer gives evidence in 10 |
| evidence_requested, rejected | written_off | acquirer | — (final) |

**Deadlines** are working days (China's official calendar, ``clearing.working_days``, injected
as ``add_working_days`` so the rules are pure and testable), counted from the business day of
the transition. Past a deadline, only the move against the side that let it pass remains
(``expiry_move``): the issuer who did not answer (opened, evidence given) has **accepted**; the
acquirer who gave no evidence, or did not write off a rejection, has **written off**.
``sweep`` applies them; any other move after the deadline is ``E_DISPUTE_DEADLINE``.

**Money.** Outcomes post new transfers in the *open* window (the business day of the decision;
never a final one, ``netting.window_for``) and nothing is edited: an **accepted** dispute on the
issuer's side posts the card's liability → DUE_TO the peer (``idsp:<peer>:issuer:<item>``) and
books it ``due_to``; on the acquirer's side DUE_FROM the peer → the terminal's operator payable
(``idsp:<peer>:acquirer:<item>``), books it ``due_from`` and adds the sale to settlement's running
totals of that day. **Rejected** and **written off** move nothing: a rejected record was never
posted on either side, so the acquirer's loss is the fare its operator was never paid.
"""

from __future__ import annotations

import datetime as dt
import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from clearing import accounts
from clearing.business_day import DEFAULT_CLOCK, BusinessDayClock
from clearing.db import lock_for_update
from clearing.ingest_totals import SALE, payee_of_tap, record_event
from clearing.ledger import LedgerBatchError, TransferSpec, post_transfers
from clearing.models import InteropForward, Tap, Terminal, TransferCode
from interop_xian import message_sender, messages, netting
from interop_xian.config import peer_of
from interop_xian.errors import InteropCode, InteropError
from interop_xian.issuer import judged, peer_issuer_id
from interop_xian.models import Dispute, DisputeEvent, IssuerItem, OutboxItem

log = logging.getLogger(__name__)
AddWorkingDays = Callable[[dt.date, int], dt.date]
NOTE_LEN_MAX: Final = 500
EVIDENCE_LEN_MAX: Final = 4000


class State(enum.StrEnum):
    OPENED = "opened"
    EVIDENCE_REQUESTED = "evidence_requested"
    EVIDENCE_GIVEN = "evidence_given"
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    WRITTEN_OFF = "written_off"


class Side(enum.StrEnum):
    ISSUER = "issuer"
    ACQUIRER = "acquirer"


FINAL: Final = frozenset({State.ACCEPTED, State.WRITTEN_OFF})
# (from, to) -> the side that may make the move
MOVES: Final[dict[tuple[State, State], Side]] = {
    (State.OPENED, State.EVIDENCE_REQUESTED): Side.ISSUER,
    (State.OPENED, State.ACCEPTED): Side.ISSUER,
    (State.OPENED, State.REJECTED): Side.ISSUER,
    (State.EVIDENCE_REQUESTED, State.EVIDENCE_GIVEN): Side.ACQUIRER,
    (State.EVIDENCE_REQUESTED, State.WRITTEN_OFF): Side.ACQUIRER,
    (State.EVIDENCE_GIVEN, State.ACCEPTED): Side.ISSUER,
    (State.EVIDENCE_GIVEN, State.REJECTED): Side.ISSUER,
    (State.EVIDENCE_GIVEN, State.EVIDENCE_REQUESTED): Side.ISSUER,
    (State.REJECTED, State.WRITTEN_OFF): Side.ACQUIRER,
}
# working days the side that must act has in each state (None: nothing is awaited)
DEADLINE_WORKING_DAYS: Final[dict[State, int | None]] = {
    State.OPENED: 5,
    State.EVIDENCE_REQUESTED: 10,
    State.EVIDENCE_GIVEN: 5,
    State.REJECTED: 10,
    State.ACCEPTED: None,
    State.WRITTEN_OFF: None,
}
# past its deadline a state ends against the side that let it pass
EXPIRY: Final[dict[State, State]] = {
    State.OPENED: State.ACCEPTED,
    State.EVIDENCE_GIVEN: State.ACCEPTED,
    State.EVIDENCE_REQUESTED: State.WRITTEN_OFF,
    State.REJECTED: State.WRITTEN_OFF,
}


def _default_working_days(start: dt.date, n: int) -> dt.date:
    from clearing.working_days import add_working_days

    return add_working_days(start, n)


DEFAULT_ADD_WORKING_DAYS: Final[AddWorkingDays] = _default_working_days


# --- the pure rules --------------------------------------------------------------------------


def deadline_of(state: State, today: dt.date, add_working_days: AddWorkingDays) -> dt.date | None:
    """The last day to act in ``state``, entered on ``today`` (None when nothing is awaited)."""
    days = DEADLINE_WORKING_DAYS[state]
    return None if days is None else add_working_days(today, days)


def expiry_move(state: State) -> State | None:
    """The state a dispute ends in when its deadline passes (None: it has no deadline)."""
    return EXPIRY.get(state)


def check_move(state: State, to: State, by: Side, *, today: dt.date, deadline: dt.date | None) -> None:
    """Refuse a move the table does not allow, by the wrong side, or too late (raises ``InteropError``)."""
    side = MOVES.get((state, to))
    if side is None:
        raise InteropError(InteropCode.E_DISPUTE_TRANSITION, f"a dispute cannot move from {state} to {to}")
    if side is not by:
        raise InteropError(
            InteropCode.E_DISPUTE_TRANSITION, f"from {state} to {to} is the {side}'s move, not the {by}'s"
        )
    late = deadline is not None and today > deadline
    if late and expiry_move(state) is not to:
        raise InteropError(
            InteropCode.E_DISPUTE_DEADLINE,
            f"the deadline of {state} was {deadline}: only {expiry_move(state)} remains",
        )


# --- the tables ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Moved:
    dispute_id: int
    from_state: State | None
    to_state: State
    deadline: dt.date | None
    transfer_id: str | None
    window_day: dt.date | None = None  # an accepted outcome's window (the issuer's; the acquirer follows)


def _checked_text(value: str | None, limit: int, what: str) -> str:
    # a browser sends a textarea's line breaks as CR LF (HTML form encoding): they are text
    text = (value or "").replace("\r\n", "\n").strip()
    if len(text) > limit or any(ord(c) < 32 and c not in "\n\t" for c in text):
        raise InteropError(InteropCode.E_BAD_DISPUTE, f"the {what} is 0..{limit} characters of text")
    return text


def open_dispute(
    session: Session,
    *,
    peer_city: str,
    role: Side,
    item_id: str,
    amount_fen: int,
    reason_code: str,
    actor: str,
    now: dt.datetime,
    note: str = "",
    days: BusinessDayClock = DEFAULT_CLOCK,
    add_working_days: AddWorkingDays = _default_working_days,
    notify: bool = True,
) -> Moved:
    """Open a dispute for one record (idempotent for a dispute that is still open: ``E_DISPUTE_EXISTS`` once final).

    ``notify``: tell the peer (a ``dispute`` message, sent by the next exchange round), so it
    opens its side; False when the peer's own message opened it (``handle_message``).
    """
    if amount_fen < 0 or not 0 < len(item_id) <= 96 or not 0 < len(reason_code) <= 40:
        raise InteropError(InteropCode.E_BAD_DISPUTE, "a dispute needs an item id, a reason code and an amount ≥ 0")
    note = _checked_text(note, NOTE_LEN_MAX, "note")
    if role is Side.ISSUER:
        item = judged(session, peer_city, item_id)
        if item is not None and item.amount_fen != amount_fen:
            raise InteropError(
                InteropCode.E_BAD_DISPUTE, f"item {item_id} is a record of {item.amount_fen} fen, not {amount_fen}"
            )
    found = session.execute(
        select(Dispute).where(Dispute.peer_city == peer_city, Dispute.role == role.value, Dispute.item_id == item_id)
    ).scalar_one_or_none()
    if found is not None:
        if State(found.state) in FINAL:
            raise InteropError(InteropCode.E_DISPUTE_EXISTS, f"dispute {found.id} of item {item_id} is {found.state}")
        return Moved(found.id, None, State(found.state), found.deadline, None)
    today = days.day_of(now)
    deadline = deadline_of(State.OPENED, today, add_working_days)
    dispute = Dispute(
        peer_city=peer_city, role=role.value, item_id=item_id, amount_fen=amount_fen, reason_code=reason_code,
        state=State.OPENED.value, deadline=deadline, opened_at=now, updated_at=now,
    )  # fmt: skip
    session.add(dispute)
    session.flush()
    session.add(DisputeEvent(dispute_id=dispute.id, from_state=None, to_state=State.OPENED.value, actor=actor,
                             note=note, at=now))  # fmt: skip
    if notify:
        _tell_peer(session, dispute, "open", State.OPENED, role, now=now, note=note, evidence=None, window_day=None)
    return Moved(dispute.id, None, State.OPENED, deadline, None)


def _tell_peer(
    session: Session, dispute: Dispute, action: str, to: State, by: Side, *, now: dt.datetime, note: str,
    evidence: str | None, window_day: dt.date | None,
) -> None:  # fmt: skip
    """Our own move of a dispute, kept for the peer in this transaction (``message_sender.enqueue``)."""
    content = messages.DisputeContent(
        item_id=dispute.item_id, action=action, by=by.value, to_state=to.value, amount_fen=dispute.amount_fen,
        reason_code=dispute.reason_code, note=note, evidence=evidence, window_day=window_day,
    )  # fmt: skip
    message_sender.enqueue(session, own_city=peer_of(dispute.peer_city), peer_city=dispute.peer_city, kind="dispute",
                           content=messages.dispute_content(content), now=now)  # fmt: skip


DISPUTE_ID_MAX: Final = 2**63 - 1  # BIGINT: a larger id in a URL names no dispute (and must not reach the driver)


def _unknown(dispute_id: int) -> InteropError:
    return InteropError(InteropCode.E_UNKNOWN_DISPUTE, f"dispute {dispute_id} does not exist")


def get(session: Session, dispute_id: int) -> Dispute:
    if not 0 < dispute_id <= DISPUTE_ID_MAX:
        raise _unknown(dispute_id)
    dispute = session.get(Dispute, dispute_id)
    if dispute is None:
        raise InteropError(InteropCode.E_UNKNOWN_DISPUTE, f"dispute {dispute_id} does not exist")
    return dispute


def move(
    session: Session,
    dispute_id: int,
    to: State,
    *,
    by: Side,
    actor: str,
    now: dt.datetime,
    note: str = "",
    evidence: str | None = None,
    days: BusinessDayClock = DEFAULT_CLOCK,
    add_working_days: AddWorkingDays = _default_working_days,
    window_day: dt.date | None = None,
    made_on: dt.date | None = None,
) -> Moved:
    """Move a dispute (``check_move``), record the event, post an accepted outcome on our side.

    Our own move (``by`` is our row's role) is told to the peer in the same transaction. A move
    of the peer's (``handle_message``) comes with the day the peer made it (``made_on``: its
    deadline is judged on that day, not on the day it reached us) and, for an acceptance, the
    window the issuer booked it in (``window_day``), where the acquirer books its side.
    """
    note = _checked_text(note, NOTE_LEN_MAX, "note")
    evidence_text = _checked_text(evidence, EVIDENCE_LEN_MAX, "evidence") if evidence is not None else None
    if not 0 < dispute_id <= DISPUTE_ID_MAX:
        raise _unknown(dispute_id)
    lock_for_update(session)  # SQLite: the write lock before the state is read (PostgreSQL: the row's lock)
    dispute = session.execute(
        select(Dispute).where(Dispute.id == dispute_id).with_for_update().execution_options(populate_existing=True)
    ).scalar_one_or_none()  # populate_existing: a row the caller loaded before the lock is read again, not trusted
    if dispute is None:
        raise InteropError(InteropCode.E_UNKNOWN_DISPUTE, f"dispute {dispute_id} does not exist")
    state = State(dispute.state)
    today = days.day_of(now)
    if made_on is not None:  # the peer's day, never before our row's last move nor after today
        made_on = min(max(made_on, days.day_of(dispute.updated_at)), today)
    check_move(state, to, by, today=made_on or today, deadline=dispute.deadline)
    # Compare and set: the state moves from the one read here, or the move is refused.
    claimed = session.execute(
        update(Dispute).where(Dispute.id == dispute_id, Dispute.state == state.value).values(state=to.value)
    ).rowcount  # type: ignore[attr-defined]
    if claimed != 1:
        raise InteropError(InteropCode.E_DISPUTE_TRANSITION, f"dispute {dispute_id} moved meanwhile; look again")
    if to is State.EVIDENCE_GIVEN and not evidence_text:
        raise InteropError(InteropCode.E_BAD_DISPUTE, "giving evidence needs the evidence (a reference or text)")
    transfer_id, window = (None, None)
    if to is State.ACCEPTED:
        transfer_id, window = _post_outcome(session, dispute, now, days, window_day)
    deadline = deadline_of(to, made_on or today, add_working_days)  # a mirrored move: from the peer's day, as its
    dispute.state, dispute.deadline, dispute.updated_at = to.value, deadline, now
    if transfer_id is not None:
        dispute.outcome_transfer_id = transfer_id
    if evidence_text:
        dispute.evidence = evidence_text
    session.add(DisputeEvent(dispute_id=dispute.id, from_state=state.value, to_state=to.value, actor=actor,
                             note=note, at=now))  # fmt: skip
    if by.value == dispute.role and made_on is None:
        _tell_peer(session, dispute, "move", to, by, now=now, note=note, evidence=evidence_text, window_day=window)
    session.flush()
    return Moved(dispute.id, state, to, deadline, transfer_id, window)


def sweep(
    session: Session,
    *,
    now: dt.datetime,
    days: BusinessDayClock = DEFAULT_CLOCK,
    add_working_days: AddWorkingDays = _default_working_days,
) -> list[Moved]:
    """End every dispute whose deadline has passed, against the side that let it pass (``expiry_move``)."""
    today = days.day_of(now)
    due = session.execute(
        select(Dispute.id, Dispute.state, Dispute.role)
        .where(Dispute.deadline < today, Dispute.state.in_([s.value for s in EXPIRY]))
        .order_by(Dispute.id)
    ).all()
    moved = []
    for dispute_id, state, role in due:
        to = EXPIRY[State(state)]
        by = MOVES[(State(state), to)]  # the move is the late side's own, made for it
        if role != by.value:
            # Each side ends only its own late states, and tells the peer: the issuer's
            # acceptance posts on both sides (our DUE_FROM without its DUE_TO would be a window
            # that never agrees), and a write-off made here while the acquirer's evidence is on
            # its way would refuse that evidence. The peer's move comes over the channel.
            continue
        try:
            with session.begin_nested():
                done = move(session, dispute_id, to, by=by, actor="deadline", now=now, note="the deadline passed",
                            days=days, add_working_days=add_working_days)  # fmt: skip
            moved.append(done)
        except InteropError as exc:  # one dispute that cannot end must not stop the others
            log.warning("dispute %s: the deadline passed but it cannot end %s: %s", dispute_id, to, exc)
    return moved


def _post_outcome(
    session: Session, dispute: Dispute, now: dt.datetime, days: BusinessDayClock, named: dt.date | None
) -> tuple[str | None, dt.date | None]:
    """An accepted dispute's money on our side, in the open window (module docstring): (transfer, window).

    The issuer picks the window (the first our judge still books into); the acquirer books in the
    one the issuer named (``named``, from its message), unless that one is final here.
    """
    peer = dispute.peer_city
    if dispute.role == Side.ISSUER.value:
        # the peer's lock before any account: the judge takes it before the cards and DUE_TO (no deadlock)
        netting.lock_peer(session, peer)
        item = judged(session, peer, dispute.item_id)
        if item is None:
            raise InteropError(InteropCode.E_BAD_DISPUTE, f"item {dispute.item_id} was never judged here")
        _claim_for_acceptance(session, item, dispute)
    if dispute.amount_fen == 0:
        return None, None
    netting.lock_peer(session, peer)
    issuer = peer_issuer_id(session, peer)
    # ``netting.book`` places it: the issuer in the first window its judge still books into, the
    # acquirer in the one the issuer named (without one, the first open one here).
    if dispute.role == Side.ACQUIRER.value and named is not None:
        window = named
    else:
        window = netting.window_for(days.day_of(now), netting.latest_closed(session, peer))
    transfer_id = netting.dispute_transfer_id(peer, dispute.role, dispute.item_id)
    code = int(TransferCode.INTEROP)
    source = f"dispute:{dispute.id}"
    if dispute.role == Side.ISSUER.value:
        assert item is not None
        card = accounts.card_liability(session, item.issuer_id, item.card_asn)
        try:
            post_transfers(session, [TransferSpec.single(transfer_id, card, accounts.due_to_peer(session, issuer),
                                                         dispute.amount_fen, code, source_ref=source)])  # fmt: skip
        except LedgerBatchError as exc:  # the card's liability cannot go below zero: a refusal, not a fault
            raise InteropError(
                InteropCode.E_DISPUTE_TRANSITION,
                f"item {item.item_id}: the card's liability cannot cover {dispute.amount_fen} fen ({exc.code.value})",
            ) from None
        direction = netting.DUE_TO
    else:
        payee = _acquirer_payee(session, dispute.item_id)
        post_transfers(session, [TransferSpec.single(transfer_id, accounts.due_from_peer(session, issuer), payee,
                                                     dispute.amount_fen, code, source_ref=source)])  # fmt: skip
        record_event(session, payee_account_id=payee, kind=SALE, source_ref=transfer_id, amount_fen=dispute.amount_fen,
                     at=now, days=days)  # fmt: skip
        direction = netting.DUE_FROM
    booked = netting.book(session, peer_city=peer, direction=direction, item_id=dispute.item_id,
                          amount_fen=dispute.amount_fen, window_day=window, transfer_id=transfer_id, source="dispute",
                          now=now)  # fmt: skip
    if booked is None:
        raise InteropError(InteropCode.E_DISPUTE_TRANSITION, f"item {dispute.item_id} is already in the position")
    return transfer_id, booked


def _claim_for_acceptance(session: Session, item: IssuerItem, dispute: Dispute) -> None:
    """Refuse to accept a record that is paid already, or not shown to be our card's; else claim its keys.

    Only an authentic record (its TAC verified here) may be paid from the card: one that claimed
    its keys when judged (refused for its time, amount or the denylist) or one refused for the
    cap (authentic, but it claimed nothing). The tap must not be paid already, under this item
    or another (a variant of the record: same terminal and sequence, a field the TAC does not
    cover changed), nor its card counter cleared by our own terminals. Accepted, it claims the
    keys, so a variant arriving later is a duplicate.
    """
    if item.outcome != "rejected":
        raise InteropError(InteropCode.E_DISPUTE_TRANSITION, f"item {item.item_id} was accepted: it is paid already")
    if dispute.amount_fen != item.amount_fen:
        raise InteropError(
            InteropCode.E_BAD_DISPUTE,
            f"item {item.item_id} is a record of {item.amount_fen} fen, not {dispute.amount_fen}",
        )
    card_key = (
        IssuerItem.issuer_id == item.issuer_id, IssuerItem.card_asn == item.card_asn,
        IssuerItem.offline_counter == item.offline_counter, IssuerItem.tx_type == item.tx_type,
    )  # fmt: skip
    other = session.execute(
        select(IssuerItem.item_id).where(
            IssuerItem.id != item.id,
            IssuerItem.claims_keys.is_(True),
            or_(
                and_(IssuerItem.peer_city == item.peer_city, IssuerItem.terminal_id == item.terminal_id,
                     IssuerItem.terminal_seq == item.terminal_seq),
                and_(*card_key),
            ),
        ).limit(1)
    ).scalar_one_or_none()  # fmt: skip
    cleared = session.execute(
        select(Tap.id).where(Tap.issuer_id == item.issuer_id, Tap.card_asn == item.card_asn,
                             Tap.offline_counter == item.offline_counter, Tap.tx_type == item.tx_type).limit(1)
    ).scalar_one_or_none()  # fmt: skip
    if other is not None or cleared is not None:
        whose = f"item {other}" if other is not None else "our own clearing"
        raise InteropError(
            InteropCode.E_DISPUTE_TRANSITION,
            f"item {item.item_id} is a duplicate: its tap or card counter is already taken by {whose}",
        )
    if not item.claims_keys and item.code != InteropCode.E_NET_DEBIT_CAP.value:
        raise InteropError(
            InteropCode.E_DISPUTE_TRANSITION,
            f"item {item.item_id} was rejected {item.code}: its record is not shown authentic, "
            "so our card cannot be debited for it",
        )
    item.claims_keys = True
    session.flush()


def _acquirer_payee(session: Session, item_id: str) -> int:
    """Who the tap pays, as the acquirer pays an accepted item (``clearing.ingest_totals.payee_of_tap``).

    From the forwarded record when the outbox has it (route and business day), else from the
    terminal the item id names (its registered operator).
    """
    found = session.execute(
        select(InteropForward)
        .join(OutboxItem, OutboxItem.forward_id == InteropForward.id)
        .where(OutboxItem.item_id == item_id)
    ).scalar_one_or_none()
    parts = item_id.split(":")
    terminal_id = found.terminal_id if found is not None else (parts[1] if len(parts) == 4 else "")
    payable = session.execute(
        select(Terminal.payable_account_id).where(Terminal.terminal_id == terminal_id)
    ).scalar_one_or_none()
    if payable is None:
        raise InteropError(InteropCode.E_BAD_DISPUTE, f"item {item_id} names no terminal of ours")
    if found is None:
        return int(payable)
    route = found.record.get("route_id") if isinstance(found.record, dict) else None
    return payee_of_tap(session, terminal_id, route if isinstance(route, str) else None, found.business_day,
                        int(payable))  # fmt: skip


def open_for_rejected_item(session: Session, item: OutboxItem, now: dt.datetime) -> None:
    """The acquirer's hook (``interop_xian.acquirer.default_rejection_hook``): a rejected item opens a dispute.

    In the transaction that marks the item rejected; the deadline uses China's working days.
    """
    open_dispute(
        session, peer_city=item.peer_city, role=Side.ACQUIRER, item_id=item.item_id, amount_fen=item.amount_fen,
        reason_code=(item.code or "E_REJECTED")[:40], actor="interop", now=now,
        note="".join(c if c.isprintable() else " " for c in (item.message or ""))[:NOTE_LEN_MAX],
    )  # fmt: skip


def handle_message(
    session: Session,
    peer_city: str,
    message: messages.Message,
    now: dt.datetime,
    *,
    days: BusinessDayClock = DEFAULT_CLOCK,
    add_working_days: AddWorkingDays = _default_working_days,
) -> dict[str, object]:
    """The peer's move of a dispute (a ``dispute`` message), mirrored on our row: the reply's content.

    ``open`` opens our side (the other role); ``move`` makes the peer's move on our row, judged
    for its deadline on the day the peer made it. A move our row has made already (the two
    sides' sweeps may both end a late state) changes nothing. A move our rules refuse is answered
    with its code (the peer marks its message refused and raises an alarm).
    """
    move_of = messages.decode_dispute(message.content)
    ours = Side.ACQUIRER if move_of.by == Side.ISSUER.value else Side.ISSUER
    made_on = days.day_of(message.created_at)
    if ours is Side.ACQUIRER:
        _check_ours_rejected(session, peer_city, move_of)
    if move_of.action == "open":
        opened = open_dispute(
            session, peer_city=peer_city, role=ours, item_id=move_of.item_id, amount_fen=move_of.amount_fen,
            reason_code=move_of.reason_code, actor=f"peer:{peer_city}", now=now, note=move_of.note[:NOTE_LEN_MAX],
            days=days, add_working_days=add_working_days, notify=False,
        )  # fmt: skip
        return {"item_id": move_of.item_id, "state": opened.to_state.value}
    found = session.execute(
        select(Dispute).where(Dispute.peer_city == peer_city, Dispute.role == ours.value,
                              Dispute.item_id == move_of.item_id)
    ).scalar_one_or_none()  # fmt: skip
    if found is None:
        raise InteropError(InteropCode.E_UNKNOWN_DISPUTE, f"no dispute of item {move_of.item_id} is open here")
    to = State(move_of.to_state)
    if found.state == to.value:
        return {"item_id": move_of.item_id, "state": found.state}
    if ours is Side.ACQUIRER and to is State.ACCEPTED and found.amount_fen > 0:
        _check_named_window(session, peer_city, move_of.window_day, today=days.day_of(now))
    moved = move(
        session, found.id, to, by=Side(move_of.by), actor=f"peer:{peer_city}", now=now,
        note=move_of.note[:NOTE_LEN_MAX], evidence=move_of.evidence, days=days, add_working_days=add_working_days,
        window_day=move_of.window_day, made_on=made_on,
    )  # fmt: skip
    return {"item_id": move_of.item_id, "state": moved.to_state.value}


def _check_ours_rejected(session: Session, peer_city: str, move_of: messages.DisputeContent) -> None:
    """The issuer's word about a tap on our terminal is taken only for a tap we sent it and it rejected.

    Our dispute as acquirer is of one of our outbox items, sent to this peer and rejected, for its
    amount: a peer cannot open (or accept) one for a tap never forwarded, nor for another amount.
    """
    item = session.execute(
        select(OutboxItem).where(OutboxItem.peer_city == peer_city, OutboxItem.item_id == move_of.item_id)
    ).scalar_one_or_none()
    if item is None or item.state != "rejected":
        raise InteropError(
            InteropCode.E_BAD_DISPUTE, f"item {move_of.item_id} is not one of ours that {peer_city} rejected"
        )
    if move_of.action == "open" and move_of.amount_fen != item.amount_fen:
        raise InteropError(
            InteropCode.E_BAD_DISPUTE,
            f"item {move_of.item_id} is a record of {item.amount_fen} fen, not {move_of.amount_fen}",
        )


def _check_named_window(session: Session, peer_city: str, named: dt.date | None, *, today: dt.date) -> None:
    """An acceptance's window must be one still open here, and not beyond tomorrow (the peer's clock may run ahead)."""
    final = netting.latest_final(session, peer_city)
    if named is None or (final is not None and named <= final) or named > today + dt.timedelta(days=1):
        raise InteropError(
            InteropCode.E_BAD_DISPUTE,
            f"an acceptance names window {named}; open windows here are after {final} and not beyond {today}",
        )


def events(session: Session, dispute_id: int) -> list[DisputeEvent]:
    return list(
        session.execute(
            select(DisputeEvent).where(DisputeEvent.dispute_id == dispute_id).order_by(DisputeEvent.id)
        ).scalars()
    )


def listing(session: Session, *, state: str | None = None, limit: int = 200) -> list[Dispute]:
    stmt = select(Dispute).order_by(Dispute.deadline.is_(None), Dispute.deadline, Dispute.id).limit(limit)
    if state is not None:
        stmt = stmt.where(Dispute.state == state)
    return list(session.execute(stmt).scalars())


__all__ = [
    "DEADLINE_WORKING_DAYS",
    "DEFAULT_ADD_WORKING_DAYS",
    "EXPIRY",
    "FINAL",
    "MOVES",
    "AddWorkingDays",
    "Moved",
    "Side",
    "State",
    "check_move",
    "deadline_of",
    "events",
    "expiry_move",
    "get",
    "handle_message",
    "listing",
    "move",
    "open_dispute",
    "open_for_rejected_item",
    "sweep",
]
