"""Closing a window with the peer: one net settlement instruction, final only when both sides agree.

Each side computes the instruction from its own position journal (``interop_bookings``) and the
two exchange its digest over the signed channel (the wire helper carries them). The instruction
is written so that **both sides compute the same bytes**: the two cities in sorted order, what
each owes the other (its cards' items accepted at the other's terminals), the net payer, payee
and amount, and every item in item-id order with the city whose card it was and its amount.
So the digests agree exactly when the two journals hold the same items for the window; a
difference (an item one side accepted and the other never applied, another amount) is a
mismatch: no money moves, the window is ``mismatch`` and an alarm lists both sides' items and
where they differ. A later exchange (after the missing verdict is applied) can still make it
final.

**Final.** The instruction posts, in our ledger (``inet:<peer>:<yyyymmdd>:<leg>``, code INTEROP,
source ``interop-window:<peer>:<day>``): ``offset`` DUE_TO → DUE_FROM for the part that nets out,
then ``pay`` DUE_TO → bank settlement for what we owe net, or ``receive`` bank settlement →
DUE_FROM for what we are owed net. Both accounts of the window go back to zero for it. A
window takes no more items from our judge once proposed (``netting.latest_closed``): later
ones go to the next open window. ``window_exchange`` carries the digests over the channel.
Settlement's close lists every instruction finalized since its previous close in
``interop-<day>.csv`` (``settlement/close.py``, the interop hook).

Pure: ``instruction_of``, ``canonical``, ``instruction_digest``, ``differences``. The rest works in
the caller's transaction, under ``netting.lock_peer``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import select
from sqlalchemy.orm import Session

from clearing import accounts
from clearing.ledger import TransferSpec, post_transfers
from clearing.models import AccountCode, AccountFlag, TransferCode
from interop_xian import netting
from interop_xian.errors import InteropCode, InteropError
from interop_xian.issuer import peer_issuer_id
from interop_xian.models import Booking, InteropWindow

INSTRUCTION_VERSION: Final = 1
# The same account settlement's closes pay out through (``settlement.close.BANK_SETTLEMENT_REF``);
# interop may not import settlement (ARCHITECTURE.md), so the reference is repeated here.
BANK_SETTLEMENT_REF: Final = "system:bank_settlement"


@dataclass(frozen=True, slots=True, order=True)
class Line:
    """One item of the window: whose card it was (the city that owes) and its amount."""

    item_id: str
    owed_by: str
    amount_fen: int


@dataclass(frozen=True, slots=True)
class Instruction:
    """A window's net settlement between two cities, the same whichever side computes it."""

    window_day: dt.date
    cities: tuple[str, str]  # sorted
    owed_fen: tuple[int, int]  # owed_fen[i]: what cities[i] owes the other (its cards' items)
    lines: tuple[Line, ...]  # by item id

    @property
    def net_fen(self) -> int:
        return abs(self.owed_fen[0] - self.owed_fen[1])

    @property
    def payer(self) -> str | None:
        if self.owed_fen[0] == self.owed_fen[1]:
            return None
        return self.cities[0] if self.owed_fen[0] > self.owed_fen[1] else self.cities[1]

    @property
    def payee(self) -> str | None:
        payer = self.payer
        return None if payer is None else (self.cities[1] if payer == self.cities[0] else self.cities[0])


def instruction_of(
    own_city: str, peer_city: str, window_day: dt.date, bookings: Iterable[tuple[str, str, int]]
) -> Instruction:
    """The instruction from our journal's (direction, item id, amount) rows (pure).

    ``due_to`` rows are our cards' items (we owe), ``due_from`` rows the peer's (it owes).
    """
    assert own_city != peer_city
    cities = (min(own_city, peer_city), max(own_city, peer_city))
    lines = sorted(
        Line(item_id, own_city if direction == netting.DUE_TO else peer_city, amount)
        for direction, item_id, amount in bookings
    )
    owed = tuple(sum(line.amount_fen for line in lines if line.owed_by == city) for city in cities)
    return Instruction(window_day, cities, (owed[0], owed[1]), tuple(lines))


def canonical(instruction: Instruction) -> bytes:
    """The instruction's canonical bytes: JSON, sorted keys, no spaces, integers only (what is digested)."""
    document = {
        "version": INSTRUCTION_VERSION,
        "window_day": instruction.window_day.isoformat(),
        "cities": list(instruction.cities),
        "owed_fen": list(instruction.owed_fen),
        "payer": instruction.payer,
        "payee": instruction.payee,
        "net_fen": instruction.net_fen,
        "items": [[line.item_id, line.owed_by, line.amount_fen] for line in instruction.lines],
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def instruction_digest(instruction: Instruction) -> str:
    """SHA-256 hex of ``canonical``: what the two sides exchange."""
    return hashlib.sha256(canonical(instruction)).hexdigest()


def from_document(document: Mapping[str, Any]) -> Instruction:
    """An instruction back from its stored (or the peer's) document."""
    cities = document["cities"]
    owed = document["owed_fen"]
    return Instruction(
        dt.date.fromisoformat(document["window_day"]),
        (str(cities[0]), str(cities[1])),
        (int(owed[0]), int(owed[1])),
        tuple(Line(str(i), str(c), int(f)) for i, c, f in document["items"]),
    )


def document_of(instruction: Instruction) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(canonical(instruction))
    return document


@dataclass(frozen=True, slots=True)
class Differences:
    """Where two sides' item lists of one window disagree."""

    only_ours: tuple[Line, ...]
    only_theirs: tuple[Line, ...]
    other_amount: tuple[tuple[Line, Line], ...]  # (ours, theirs) of the same item

    @property
    def none(self) -> bool:
        return not (self.only_ours or self.only_theirs or self.other_amount)


def differences(ours: Sequence[Line], theirs: Sequence[Line]) -> Differences:
    """The items only one side has, and those both have with another city or amount (pure)."""
    mine = {line.item_id: line for line in ours}
    other = {line.item_id: line for line in theirs}
    return Differences(
        tuple(sorted(line for i, line in mine.items() if i not in other)),
        tuple(sorted(line for i, line in other.items() if i not in mine)),
        tuple(sorted((mine[i], other[i]) for i in mine.keys() & other.keys() if mine[i] != other[i])),
    )


# --- the window, in the caller's transaction --------------------------------------------------


@dataclass(frozen=True, slots=True)
class Proposal:
    instruction: Instruction
    digest: str
    state: str  # "proposed", "mismatch" (an earlier exchange disagreed) or "final"


@dataclass(frozen=True, slots=True)
class Conclusion:
    """What an exchange of digests concluded: final (the money posted) or a mismatch (an alarm)."""

    final: bool
    instruction: Instruction
    our_digest: str
    peer_digest: str
    differences: Differences | None = None  # known when the peer's items were given


def _bookings(session: Session, peer_city: str, window_day: dt.date) -> list[tuple[str, str, int]]:
    rows = session.execute(
        select(Booking.direction, Booking.item_id, Booking.amount_fen).where(
            Booking.peer_city == peer_city, Booking.window_day == window_day
        )
    ).all()
    return [(str(d), str(i), int(f)) for d, i, f in rows]


def propose(session: Session, *, own_city: str, peer_city: str, window_day: dt.date, now: dt.datetime) -> Proposal:
    """Our instruction for the window and its digest, stored as ``proposed`` (again, if not final).

    A final window is answered as it is (its stored instruction): it never changes. Windows
    close in day order: while an earlier window with items is not final, this one is refused
    (``E_WINDOW_NOT_PROPOSED``, naming the earlier window).
    """
    netting.lock_peer(session, peer_city)
    netting.sync_acquired(session, peer_city, now=now)
    row = session.get(InteropWindow, (peer_city, window_day))
    if row is not None and row.state == "final":
        instruction = from_document(row.instruction)
        return Proposal(instruction, row.our_digest, row.state)
    earlier = _earliest_open(session, peer_city, before=window_day)
    if earlier is not None:
        raise InteropError(
            InteropCode.E_WINDOW_NOT_PROPOSED,
            f"window {earlier} with {peer_city} has items and is not final: windows close in day order",
        )
    instruction = instruction_of(own_city, peer_city, window_day, _bookings(session, peer_city, window_day))
    digest = instruction_digest(instruction)
    due_to = sum(line.amount_fen for line in instruction.lines if line.owed_by == own_city)
    due_from = sum(line.amount_fen for line in instruction.lines if line.owed_by == peer_city)
    if row is None:
        row = InteropWindow(peer_city=peer_city, window_day=window_day, state="proposed")
        session.add(row)
    elif row.our_digest != digest:
        row.state = "proposed"  # the journal moved since the last exchange: it may agree now
    row.due_to_fen, row.due_from_fen = due_to, due_from
    row.our_digest, row.instruction, row.updated_at = digest, document_of(instruction), now
    session.flush()
    return Proposal(instruction, digest, row.state)


def _earliest_open(session: Session, peer_city: str, *, before: dt.date) -> dt.date | None:
    final_days = select(InteropWindow.window_day).where(
        InteropWindow.peer_city == peer_city, InteropWindow.state == "final"
    )
    value: dt.date | None = session.execute(
        select(Booking.window_day)
        .where(Booking.peer_city == peer_city, Booking.window_day < before, Booking.window_day.not_in(final_days))
        .order_by(Booking.window_day)
        .limit(1)
    ).scalar_one_or_none()
    return value


def conclude(
    session: Session,
    *,
    own_city: str,
    peer_city: str,
    window_day: dt.date,
    peer_digest: str,
    now: dt.datetime,
    peer_lines: Sequence[Line] | None = None,
) -> Conclusion:
    """Compare the peer's digest with ours (proposed again now): final on a match, an alarm on a mismatch.

    ``peer_lines``: the peer's itemised list, when the channel carried it, for the alarm. A
    window already final answers its stored conclusion when the digest matches and refuses
    another digest (``E_WINDOW_FINAL``): a final instruction never changes.
    """
    proposal = propose(session, own_city=own_city, peer_city=peer_city, window_day=window_day, now=now)
    row = session.get(InteropWindow, (peer_city, window_day))
    assert row is not None
    if proposal.state == "final":
        if peer_digest != proposal.digest:
            raise InteropError(
                InteropCode.E_WINDOW_FINAL,
                f"window {window_day} with {peer_city} is final with digest {proposal.digest[:16]}…; "
                f"the peer's {peer_digest[:16]}… cannot change it",
            )
        return Conclusion(True, proposal.instruction, proposal.digest, peer_digest)
    known_mismatch = proposal.state == "mismatch" and row.peer_digest == peer_digest  # alarmed already
    row.peer_digest = peer_digest
    if peer_digest == proposal.digest:
        _post_final(session, own_city, peer_city, proposal.instruction)
        row.state, row.finalized_at, row.updated_at = "final", now, now
        session.flush()
        return Conclusion(True, proposal.instruction, proposal.digest, peer_digest)
    found = differences(proposal.instruction.lines, peer_lines) if peer_lines is not None else None
    row.state, row.updated_at = "mismatch", now
    if not known_mismatch:  # the same two digests again: one alarm is enough
        netting.raise_alarm(
            session, peer_city=peer_city, kind="digest_mismatch", window_day=window_day, now=now,
            message=f"window {window_day}: our instruction {proposal.digest[:16]}… and {peer_city}'s "
            f"{peer_digest[:16]}… differ; nothing is settled until they agree",
            details=_mismatch_details(proposal, peer_digest, peer_lines, found),
        )  # fmt: skip
    session.flush()
    return Conclusion(False, proposal.instruction, proposal.digest, peer_digest, found)


def _lines_json(lines: Iterable[Line]) -> list[list[object]]:
    return [[line.item_id, line.owed_by, line.amount_fen] for line in lines]


def _mismatch_details(
    proposal: Proposal, peer_digest: str, peer_lines: Sequence[Line] | None, found: Differences | None
) -> dict[str, Any]:
    """Both sides' itemised lists (ours always; the peer's when given) and where they differ."""
    details: dict[str, Any] = {
        "our_digest": proposal.digest,
        "peer_digest": peer_digest,
        "ours": _lines_json(proposal.instruction.lines),
        "theirs": None if peer_lines is None else _lines_json(sorted(peer_lines)),
    }
    if found is not None:
        details["only_ours"] = _lines_json(found.only_ours)
        details["only_theirs"] = _lines_json(found.only_theirs)
        details["other_amount"] = [[o.item_id, o.amount_fen, t.amount_fen] for o, t in found.other_amount]
    return details


def _post_final(session: Session, own_city: str, peer_city: str, instruction: Instruction) -> None:
    issuer = peer_issuer_id(session, peer_city)
    due_to = accounts.due_to_peer(session, issuer)
    due_from = accounts.due_from_peer(session, issuer)
    bank = accounts.get_or_create_account(session, AccountCode.BANK_SETTLEMENT, BANK_SETTLEMENT_REF,
                                          flags=AccountFlag.NONE)  # fmt: skip
    specs = settlement_transfers(own_city, peer_city, instruction, due_to=due_to, due_from=due_from, bank=bank)
    if specs:
        post_transfers(session, specs)


def settlement_transfers(
    own_city: str, peer_city: str, instruction: Instruction, *, due_to: int, due_from: int, bank: int
) -> list[TransferSpec]:
    """The final instruction's ledger legs on our side (pure): offset, then pay or receive."""
    day = instruction.window_day
    owed = dict(zip(instruction.cities, instruction.owed_fen, strict=True))
    we_owe, they_owe = owed[own_city], owed[peer_city]
    source = f"interop-window:{peer_city}:{day.isoformat()}"
    code = int(TransferCode.INTEROP)
    specs: list[TransferSpec] = []
    offset = min(we_owe, they_owe)
    if offset:
        specs.append(TransferSpec.single(netting.instruction_transfer_id(peer_city, day, "offset"), due_to, due_from,
                                         offset, code, source_ref=source))  # fmt: skip
    if we_owe > they_owe:
        specs.append(TransferSpec.single(netting.instruction_transfer_id(peer_city, day, "pay"), due_to, bank,
                                         we_owe - they_owe, code, source_ref=source))  # fmt: skip
    elif they_owe > we_owe:
        specs.append(TransferSpec.single(netting.instruction_transfer_id(peer_city, day, "receive"), bank, due_from,
                                         they_owe - we_owe, code, source_ref=source))  # fmt: skip
    return specs


def window(session: Session, peer_city: str, window_day: dt.date) -> InteropWindow | None:
    return session.get(InteropWindow, (peer_city, window_day))


__all__ = [
    "BANK_SETTLEMENT_REF",
    "Conclusion",
    "Differences",
    "Instruction",
    "Line",
    "Proposal",
    "canonical",
    "conclude",
    "differences",
    "document_of",
    "from_document",
    "instruction_digest",
    "instruction_of",
    "propose",
    "settlement_transfers",
    "window",
]
