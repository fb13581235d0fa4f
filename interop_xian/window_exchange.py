"""Closing windows with the peer over the signed channel: propose, exchange digests, conclude.

``close_due`` is the sending side, run by every exchange round after the verdicts are applied:
for each window with items that is not final and whose business day ended at least
``window_close_delay_s`` ago, in day order, it proposes our instruction (``window_close.propose``:
from then on our judge books nothing more into it), posts it to the peer as a ``window`` message
(digest and itemised lines), and concludes with the peer's own instruction from the reply:
final when the digests match (the money posts, ``window_close``), else a mismatch alarm with
both sides' items. The first window that is not final stops the walk: windows close in day
order.

``answer_proposal`` is the receiving side (``POST /interop/v1/messages``, kind ``window``): it
concludes with the peer's digest — proposing our own first, which closes the window to our
judge too — and answers our instruction and its state. So each side reaches *final* only
when both hold the same items, and whichever side asks first, the other's answer carries
everything needed: a lost reply is a failed attempt, the next round asks again and gets the
same answer (a final window answers its stored instruction).

Neither side compares a window while its own taps of that day are on their way (sent and not
acknowledged, or acknowledged and not applied: ``netting.taps_in_flight``): the issuer may have
booked them already, and the comparison would only be a false mismatch. The asker stops its
walk there; the answerer says ``E_WINDOW_NOT_DUE`` and is asked again next round. A mismatch
that remains (an acknowledgement lost on the way, applied by the next round) agrees once the
journals do; one that stays is for a person (the alarm lists both sides' items and where they
differ).
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from typing import Any

import httpx
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from clearing.business_day import BusinessDayClock
from interop_xian import messages, netting, window_close
from interop_xian.config import InteropConfig
from interop_xian.errors import InteropCode, InteropError
from interop_xian.keys import SigningKeys
from interop_xian.message_sender import peer_ring, post_message
from interop_xian.models import Booking, InteropWindow

log = logging.getLogger("interop_xian.window_exchange")


def answer_proposal(
    session: Session, *, own_city: str, peer_city: str, content: messages.WindowContent, now: dt.datetime,
    days: BusinessDayClock,
) -> dict[str, Any]:  # fmt: skip
    """The peer proposed ``content``: conclude with it and answer our instruction and its state.

    Raises ``E_WINDOW_NOT_DUE`` (its business day has not ended here: a window is never closed
    ahead of its day), ``E_WINDOW_FINAL`` (final here with another digest) or
    ``E_WINDOW_NOT_PROPOSED`` (an earlier window of ours is not final yet), all 409s.
    """
    if content.window_day >= days.day_of(now):
        raise InteropError(
            InteropCode.E_WINDOW_NOT_DUE, f"window {content.window_day} has not ended here yet: it cannot close"
        )
    waiting = netting.taps_in_flight(session, peer_city, content.window_day)
    if waiting:
        raise InteropError(
            InteropCode.E_WINDOW_NOT_DUE,
            f"window {content.window_day}: {waiting} of our taps of that day or before are on their way; ask again",
        )
    theirs = window_close.from_document(content.instruction)
    conclusion = window_close.conclude(
        session, own_city=own_city, peer_city=peer_city, window_day=content.window_day, peer_digest=content.digest,
        now=now, peer_lines=theirs.lines,
    )  # fmt: skip
    return messages.window_content(
        window_day=content.window_day, digest=conclusion.our_digest,
        state="final" if conclusion.final else "mismatch",
        instruction=window_close.document_of(conclusion.instruction),
    )  # fmt: skip


def due_days(session: Session, peer_city: str, *, before: dt.date) -> list[dt.date]:
    """The windows with the peer to close now: not final, with items or a proposal, ended before ``before``."""
    final = set(
        session.execute(
            select(InteropWindow.window_day).where(InteropWindow.peer_city == peer_city, InteropWindow.state == "final")
        ).scalars()
    )
    booked = session.execute(
        select(Booking.window_day).where(Booking.peer_city == peer_city, Booking.window_day < before).distinct()
    ).scalars()
    proposed = session.execute(
        select(InteropWindow.window_day).where(
            InteropWindow.peer_city == peer_city, InteropWindow.state != "final", InteropWindow.window_day < before
        )
    ).scalars()
    return sorted((set(booked) | set(proposed)) - final)


@dataclass(slots=True)
class Closed:
    """What a round's window close did: each window's state after it, and why the walk stopped."""

    windows: dict[str, str] = field(default_factory=dict)
    stopped: str | None = None


def close_due(
    sessions: sessionmaker[Session],
    config: InteropConfig,
    signing: SigningKeys,
    client: httpx.Client,
    *,
    days: BusinessDayClock,
    now: dt.datetime,
) -> Closed:
    """Close every due window with the peer, in day order, over the channel (module docstring)."""
    report = Closed()
    cutoff = days.day_of(now - dt.timedelta(seconds=config.window_close_delay_s))
    with sessions() as session:
        due = due_days(session, config.peer_city, before=cutoff)
        ring = peer_ring(session, config)
    for day in due:
        with sessions() as session:
            waiting = netting.taps_in_flight(session, config.peer_city, day)
        if waiting:  # their verdicts first: the window would only differ now
            report.stopped = f"{day}: {waiting} of our taps of that day or before are still on their way"
            break
        try:
            with sessions() as session, session.begin():
                proposal = window_close.propose(
                    session, own_city=config.city, peer_city=config.peer_city, window_day=day, now=now
                )
        except InteropError as exc:
            report.stopped = f"{day}: {exc}"
            break
        if proposal.state == "final":
            report.windows[day.isoformat()] = "final"
            continue
        body = messages.encode_message(
            from_city=config.city, to_city=config.peer_city, created_at=now, kind="window",
            message_id=f"{config.city}:window:{day}:{proposal.digest[:16]}",
            content=messages.window_content(window_day=day, digest=proposal.digest, state=proposal.state,
                                            instruction=window_close.document_of(proposal.instruction)),
        )  # fmt: skip
        answer = post_message(client, config, signing, ring, body, "window", now)
        if answer.reply is None:
            report.windows[day.isoformat()] = proposal.state
            report.stopped = f"{day}: {answer.status} {answer.code}: {answer.message}"[:500]
            log.warning("interop: window %s with %s not concluded: %s", day, config.peer_city, report.stopped)
            break
        try:
            theirs = messages.decode_window(answer.reply.content)
            if theirs.window_day != day:
                raise InteropError(InteropCode.E_INTEROP_MALFORMED, f"a reply for window {theirs.window_day}")
            with sessions() as session, session.begin():
                conclusion = window_close.conclude(
                    session, own_city=config.city, peer_city=config.peer_city, window_day=day,
                    peer_digest=theirs.digest, now=now,
                    peer_lines=window_close.from_document(theirs.instruction).lines,
                )  # fmt: skip
        except InteropError as exc:
            report.windows[day.isoformat()] = proposal.state
            report.stopped = f"{day}: {exc}"[:500]
            break
        report.windows[day.isoformat()] = "final" if conclusion.final else "mismatch"
        if not conclusion.final:
            report.stopped = f"{day}: the digests differ (an alarm lists both sides' items)"
            break
        log.info("interop: window %s with %s is final", day, config.peer_city)
    return report


__all__ = ["Closed", "answer_proposal", "close_due", "due_days"]
