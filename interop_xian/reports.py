"""Reports per window with a peer (issue 12, "Commands and reports"): what moved each way, and the net.

For one peer and one window (a business day): as **acquirer**, the forwarded records of that day
(``interop_forwards.business_day``) by how far they got in the outbox — sent, acknowledged,
accepted, rejected — with their amounts; as **issuer**, the peer's items of our cards that we
judged with a tap of that day, accepted and rejected (by code); the disputes opened that day (by
state now); and the window's bilateral position (``netting.position``) with its instruction's
state (``window_close``). Counts and integer fen only; nothing personal.

``window_report`` reads; ``report_lines`` and ``report_csv`` are pure renderings of it.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from clearing.business_day import DEFAULT_CLOCK, BusinessDayClock
from clearing.models import InteropForward
from interop_xian import netting
from interop_xian.models import Dispute, InteropWindow, IssuerItem, OutboxItem

_SENT = ("sent", "acknowledged", "accepted", "rejected")
_ACKNOWLEDGED = ("acknowledged", "accepted", "rejected")


@dataclass(frozen=True, slots=True)
class Tally:
    count: int = 0
    fen: int = 0


@dataclass(frozen=True, slots=True)
class WindowReport:
    peer_city: str
    window_day: dt.date
    sent: Tally = Tally()
    acknowledged: Tally = Tally()
    accepted: Tally = Tally()  # as acquirer: the peer accepted our forwards
    rejected: Tally = Tally()
    judged_accepted: Tally = Tally()  # as issuer: we accepted the peer's items of our cards
    judged_rejected: dict[str, int] = field(default_factory=dict)  # code -> count
    disputes: dict[str, int] = field(default_factory=dict)  # state now -> count, opened that day
    position: netting.Position | None = None
    instruction_state: str = "open"  # open, proposed, mismatch or final

    @property
    def disputed(self) -> int:
        return sum(self.disputes.values())


def _tally(row: Sequence[object]) -> Tally:
    return Tally(int(row[0] or 0), int(row[1] or 0))  # type: ignore[call-overload]


def window_report(
    session: Session, peer_city: str, window_day: dt.date, *, days: BusinessDayClock = DEFAULT_CLOCK
) -> WindowReport:
    """The report of one window with one peer (module docstring)."""

    def outbox(states: tuple[str, ...], amount: object = OutboxItem.amount_fen) -> Tally:
        row = session.execute(
            select(func.count(OutboxItem.id), func.sum(amount))
            .join(InteropForward, InteropForward.id == OutboxItem.forward_id)
            .where(
                OutboxItem.peer_city == peer_city,
                InteropForward.business_day == window_day,
                OutboxItem.state.in_(states),
            )
        ).one()
        return _tally(row)

    judged = session.execute(
        select(func.count(IssuerItem.id), func.sum(IssuerItem.amount_fen)).where(
            IssuerItem.peer_city == peer_city, IssuerItem.outcome == "accepted", IssuerItem.window_day == window_day
        )
    ).one()
    start, end = days.start_of(window_day), days.end_of(window_day)
    rejected_codes = session.execute(
        select(IssuerItem.code, func.count(IssuerItem.id))
        .where(
            IssuerItem.peer_city == peer_city,
            IssuerItem.outcome == "rejected",
            IssuerItem.tx_time >= start,
            IssuerItem.tx_time < end,
        )
        .group_by(IssuerItem.code)
    ).all()
    opened = session.execute(
        select(Dispute.state, func.count(Dispute.id))
        .where(Dispute.peer_city == peer_city, Dispute.opened_at >= start, Dispute.opened_at < end)
        .group_by(Dispute.state)
    ).all()
    row = session.get(InteropWindow, (peer_city, window_day))
    return WindowReport(
        peer_city=peer_city,
        window_day=window_day,
        sent=outbox(_SENT),
        acknowledged=outbox(_ACKNOWLEDGED),
        accepted=outbox(("accepted",), OutboxItem.verdict_amount_fen),
        rejected=outbox(("rejected",)),
        judged_accepted=_tally(judged),
        judged_rejected={str(c): int(n) for c, n in rejected_codes},
        disputes={str(s): int(n) for s, n in opened},
        position=netting.position(session, peer_city, window_day),
        instruction_state="open" if row is None else row.state,
    )


COLUMNS = (
    "window_day", "peer_city", "sent", "sent_fen", "acknowledged", "acknowledged_fen", "accepted", "accepted_fen",
    "rejected", "rejected_fen", "judged_accepted", "judged_accepted_fen", "judged_rejected", "disputed",
    "due_to_fen", "due_from_fen", "net_fen", "instruction",
)  # fmt: skip


def report_row(r: WindowReport) -> tuple[object, ...]:
    """One CSV row (pure). ``net_fen`` is our net debit: > 0 we pay the peer."""
    position = r.position or netting.Position(r.peer_city, r.window_day)
    return (
        r.window_day.isoformat(), r.peer_city, r.sent.count, r.sent.fen, r.acknowledged.count, r.acknowledged.fen,
        r.accepted.count, r.accepted.fen, r.rejected.count, r.rejected.fen, r.judged_accepted.count,
        r.judged_accepted.fen, sum(r.judged_rejected.values()), r.disputed, position.due_to_fen,
        position.due_from_fen, position.net_fen, r.instruction_state,
    )  # fmt: skip


def report_csv(reports: Sequence[WindowReport]) -> bytes:
    """The reports as CSV (UTF-8, CRLF, one header row), one row per window and peer."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(COLUMNS)
    for r in sorted(reports, key=lambda r: (r.window_day, r.peer_city)):
        writer.writerow(report_row(r))
    return out.getvalue().encode("utf-8")


def report_lines(r: WindowReport) -> list[str]:
    """The report as a few lines of text for a terminal (pure)."""
    position = r.position or netting.Position(r.peer_city, r.window_day)
    rejected = ", ".join(f"{code} {n}" for code, n in sorted(r.judged_rejected.items())) or "none"
    disputes = ", ".join(f"{state} {n}" for state, n in sorted(r.disputes.items())) or "none"
    return [
        f"window {r.window_day} with {r.peer_city} ({r.instruction_state})",
        f"  as acquirer: sent {r.sent.count} ({r.sent.fen} fen), acknowledged {r.acknowledged.count}, "
        f"accepted {r.accepted.count} ({r.accepted.fen} fen), rejected {r.rejected.count} ({r.rejected.fen} fen)",
        f"  as issuer: accepted {r.judged_accepted.count} ({r.judged_accepted.fen} fen), rejected {rejected}",
        f"  disputes opened: {disputes}",
        f"  position: we owe {position.due_to_fen} fen, owed {position.due_from_fen} fen, net {position.net_fen} fen",
    ]


__all__ = ["COLUMNS", "Tally", "WindowReport", "report_csv", "report_lines", "report_row", "window_report"]
