"""The card denylist: versioned additions and removals, and the deltas terminals download.

Every change bumps the one counter ``denylist_version`` in the same transaction, so a
terminal at version V needs exactly the rows added or removed after V
(``spec/terminal-api.md``, "Denylist"). A terminal too far behind, or one that claims a
version from the future (a restored database), gets the full list instead.

With Redis configured the current version and the live entries are mirrored there after
each commit (``clearing.redis_bus``): terminals polling an unchanged list are answered
from Redis without touching the database, which stays the source of truth.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Final

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from clearing.contract import DenylistDelta, DenylistEntry
from clearing.contract.codes import Code
from clearing.db import bump_counter, read_counter
from clearing.errors import ClearingError
from clearing.models import DenylistEntryRow, utcnow

VERSION_COUNTER: Final = "denylist_version"
DELTA_VERSIONS_MAX: Final = 5_000  # further behind than this: the full list is smaller than the delta
REASON_LEN_MAX: Final = 64


def _iso(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _entry(row: DenylistEntryRow) -> DenylistEntry:
    return DenylistEntry(row.issuer_id, row.card_asn, row.reason, _iso(row.effective_at))


_ISSUER_RE: Final = re.compile(r"[0-9a-f]{16}")
_ASN_RE: Final = re.compile(r"[0-9a-f]{20}")
EFFECTIVE_YEARS: Final = (2000, 2099)


def card_id(issuer_id: str, card_asn: str) -> tuple[str, str]:
    """The card's ids as the wire contract has them (lower-case hex), or ``E_BAD_CARD_ID``.

    A malformed entry must never reach the list: every terminal decodes the list with the
    contract's patterns, so one bad row would stop every terminal's denylist updates.
    """
    issuer, asn = issuer_id.strip().lower(), card_asn.strip().lower()
    if not _ISSUER_RE.fullmatch(issuer):
        raise ClearingError(Code.E_BAD_CARD_ID, f"issuer id {issuer_id!r} is not 16 hex digits")
    if not _ASN_RE.fullmatch(asn):
        raise ClearingError(Code.E_BAD_CARD_ID, f"card ASN {card_asn!r} is not 20 hex digits")
    return issuer, asn


def add(session: Session, issuer_id: str, card_asn: str, reason: str, effective_at: dt.datetime | None = None) -> int:
    """Put a card on the list (in the caller's transaction); the new version, or the current one if listed."""
    issuer_id, card_asn = card_id(issuer_id, card_asn)
    if not reason.strip() or len(reason) > REASON_LEN_MAX or not reason.isprintable():
        raise ClearingError(
            Code.E_BAD_REASON, f"reason must be 1..{REASON_LEN_MAX} printable characters (no tabs or newlines)"
        )
    if effective_at is not None and (
        effective_at.tzinfo is None or not EFFECTIVE_YEARS[0] <= effective_at.year <= EFFECTIVE_YEARS[1]
    ):
        raise ClearingError(
            Code.E_BAD_TIME,
            f"effective time {effective_at!r} must be an aware time in {EFFECTIVE_YEARS[0]}..{EFFECTIVE_YEARS[1]}",
        )
    live = session.execute(
        select(DenylistEntryRow).where(
            DenylistEntryRow.issuer_id == issuer_id,
            DenylistEntryRow.card_asn == card_asn,
            DenylistEntryRow.removed_version.is_(None),
        )
    ).scalar_one_or_none()
    if live is not None:
        return read_counter(session, VERSION_COUNTER)
    version = bump_counter(session, VERSION_COUNTER)
    session.add(
        DenylistEntryRow(
            issuer_id=issuer_id,
            card_asn=card_asn,
            reason=reason,
            effective_at=effective_at or utcnow(),
            added_version=version,
        )
    )
    session.flush()
    return version


def remove(session: Session, issuer_id: str, card_asn: str, removed_at: dt.datetime | None = None) -> int:
    """Take a card off the list (a found card); taps while it was listed stay rejected."""
    issuer_id, card_asn = card_id(issuer_id, card_asn)
    live = session.execute(
        select(DenylistEntryRow).where(
            DenylistEntryRow.issuer_id == issuer_id,
            DenylistEntryRow.card_asn == card_asn,
            DenylistEntryRow.removed_version.is_(None),
        )
    ).scalar_one_or_none()
    if live is None:
        raise ClearingError(Code.E_NOT_LISTED, f"card {card_asn} of issuer {issuer_id} is not on the denylist")
    version = bump_counter(session, VERSION_COUNTER)
    live.removed_version = version
    live.removed_at = removed_at or utcnow()
    session.flush()
    return version


def current_version(session: Session) -> int:
    return read_counter(session, VERSION_COUNTER)


def live_entries(session: Session) -> list[DenylistEntry]:
    rows = session.execute(
        select(DenylistEntryRow)
        .where(DenylistEntryRow.removed_version.is_(None))
        .order_by(DenylistEntryRow.issuer_id, DenylistEntryRow.card_asn)
    ).scalars()
    return [_entry(r) for r in rows]


def publish(session: Session, bus: object) -> int:
    """Mirror the committed list into Redis (``RedisBus.publish_denylist``); call after COMMIT.

    The API also calls it when it finds the mirror behind the database, so a lost publish
    heals on the next terminal poll.
    """
    from clearing.redis_bus import RedisBus

    assert isinstance(bus, RedisBus)
    version = current_version(session)
    cards = [(e.issuer_id, e.card_asn) for e in live_entries(session)]
    bus.publish_denylist(version, cards)
    return version


def delta(session: Session, since: int) -> DenylistDelta:
    """What a terminal at version ``since`` needs: a delta, or the full list when it is too far off."""
    version = current_version(session)
    if since == version:
        return DenylistDelta(version, False, [], [])
    if since <= 0 or since > version or version - since > DELTA_VERSIONS_MAX:
        return DenylistDelta(version, True, live_entries(session), [])
    rows = session.execute(
        select(DenylistEntryRow)
        .where(or_(DenylistEntryRow.added_version > since, DenylistEntryRow.removed_version > since))
        .where(
            # added and removed again since V: the terminal never saw it, so it needs neither
            ~and_(DenylistEntryRow.added_version > since, DenylistEntryRow.removed_version > since)
            | DenylistEntryRow.removed_version.is_(None)
        )
        .order_by(DenylistEntryRow.id)
    ).scalars()
    added: list[DenylistEntry] = []
    removed: list[DenylistEntry] = []
    for row in rows:
        if row.removed_version is not None and row.removed_version > since:
            removed.append(_entry(row))
        else:
            added.append(_entry(row))
    return DenylistDelta(version, False, added, removed)


__all__ = [
    "DELTA_VERSIONS_MAX",
    "VERSION_COUNTER",
    "add",
    "card_id",
    "current_version",
    "delta",
    "live_entries",
    "publish",
    "remove",
]
