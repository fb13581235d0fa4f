"""The staff console's append-only audit log: who did what to which target, when, and how it ended.

Issue 10, "Staff console": every staff action goes to an append-only audit log (card search,
view, replacement, top-up refund, unblock, login and failed login; citizens' lost-card
reports too). ``docs/portal.md``, "Staff console".

- **Append-only.** Rows are only ever inserted; migration 0008 puts triggers on the table that
  refuse UPDATE and DELETE (and TRUNCATE on PostgreSQL), so neither a bug nor a person with
  the application's database grants can rewrite history.
- **In the transaction of the action** (``record``): an action and its audit line commit
  together or not at all. A refusal rolls its transaction back, so refusals are written
  in a transaction of their own (``record_now``) — a failed login leaves its line.
- **No personal data in clear.** ``target`` and ``detail`` take masked forms only (a card
  number as ``3104************1234``, a mobile as ``139****5678``). ``check_clean`` refuses
  (as a programming error) a text holding a run of 11 or more decimal digits (a mobile or ID
  number) or a 20-hex-digit card number, so an unmasked value cannot slip in unnoticed.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from portal.models import PortalAuditEntry

ACTOR_LEN_MAX: Final = 64
ACTION_LEN_MAX: Final = 32
TARGET_LEN_MAX: Final = 120
OUTCOME_LEN_MAX: Final = 64
DETAIL_LEN_MAX: Final = 2000
LIST_LIMIT_MAX: Final = 1000
OK: Final = "ok"

ACTIONS: Final = frozenset(
    {
        "staff_login",
        "staff_logout",
        "staff_add",
        "staff_list",
        "staff_reset_totp",
        "card_search",
        "card_view",
        "replacement",
        "unblock",
        "refund",
        "notices_view",
        "audit_view",
        "lost_report",
        "parties_view",  # portal.pages_parties: the payee pages' role checks, changes and statement downloads
        "parties_edit",
        "payee_add",
        "payee_fee",
        "payee_account",
        "payee_status",
        "assign_route",
        "assign_terminal",
        "statement_download",
        "finance_view",  # portal.pages_finance: a day's figures, charts or stop map looked at
        "medical_reversal",  # portal.modules.medical.visits: a settled visit reversed
        "medical_claim_review",  # portal.modules.medical.claims: a claim checked, valuated, paid or rejected
        "bills_file",  # portal.modules.utility_bills: a biller's daily file of payments downloaded
        "permit_view",  # portal.modules.permits: a clerk opened an application or one of its documents
        "permit_review",  # portal.modules.permits: a clerk's step on an application (or its refusal)
        "ss_import",  # portal.modules.social_security: a contribution file imported (or refused)
        "ss_entries_view",  # portal.modules.social_security: a clerk looked up a person's contributions
        "ss_correction",  # portal.modules.social_security: a correction entry (never an edit)
        "disputes_view",  # portal.pages_disputes: interop disputes looked at
        "dispute_move",  # portal.pages_disputes: a dispute moved (or the move refused)
    }
)
_DIGITS_RUN: Final = re.compile(r"\d{11,}")
_ASN_RUN: Final = re.compile(r"(?<![0-9A-Fa-f])[0-9A-Fa-f]{20}(?![0-9A-Fa-f])")


def mask_asn(card_asn: str) -> str:
    """A card number as the log may hold it: the first 4 (the city) and the last 4, stars between."""
    asn = card_asn.strip().lower()
    if len(asn) <= 8:
        return "*" * len(asn)
    return asn[:4] + "*" * (len(asn) - 8) + asn[-4:]


def card_target(issuer_id: str, card_asn: str) -> str:
    """``card:<issuer>:<masked ASN>``; an issuer id that reads as a number (11+ decimal digits in a row,
    which a 16-hex id may be) is masked like a card number, so ``check_clean`` never refuses the line."""
    issuer = issuer_id.lower()
    if _DIGITS_RUN.search(issuer) or _ASN_RUN.search(issuer):
        issuer = mask_asn(issuer)
    return f"card:{issuer}:{mask_asn(card_asn)}"


def check_clean(text: str, what: str) -> str:
    """``text`` if it holds no unmasked mobile, ID or card number (else ``ValueError``: a bug)."""
    if _DIGITS_RUN.search(text) or _ASN_RUN.search(text):
        raise ValueError(f"audit {what} holds what looks like an unmasked number; mask it first")
    return text


@dataclass(frozen=True, slots=True)
class AuditLine:
    id: int
    at: dt.datetime
    actor: str
    action: str
    target: str
    outcome: str
    detail: str


def _line(row: PortalAuditEntry) -> AuditLine:
    return AuditLine(row.id, row.at, row.actor, row.action, row.target, row.outcome, row.detail)


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass
class AuditLog:
    sessions: sessionmaker[Session]
    clock: Callable[[], dt.datetime] = _utcnow

    def record(
        self, session: Session, *, actor: str, action: str, target: str = "", outcome: str = OK, detail: str = ""
    ) -> None:
        """Add a line in the caller's transaction (it commits with the action it records)."""
        if action not in ACTIONS:
            raise ValueError(f"unknown audit action {action!r}")
        if not 0 < len(actor) <= ACTOR_LEN_MAX or len(outcome) > OUTCOME_LEN_MAX or not outcome:
            raise ValueError("audit actor 1..64 characters, outcome 1..64")
        session.add(
            PortalAuditEntry(
                at=self.clock(),
                actor=check_clean(actor, "actor"),
                action=action,
                target=check_clean(target[:TARGET_LEN_MAX], "target"),
                outcome=outcome,
                detail=check_clean(detail[:DETAIL_LEN_MAX], "detail"),
            )
        )

    def record_now(self, *, actor: str, action: str, target: str = "", outcome: str = OK, detail: str = "") -> None:
        """Add a line in a transaction of its own (for refusals, whose own transaction rolled back)."""
        with self.sessions() as session, session.begin():
            self.record(session, actor=actor, action=action, target=target, outcome=outcome, detail=detail)

    def lines(self, *, limit: int = 100, before_id: int | None = None, action: str | None = None) -> list[AuditLine]:
        """Newest first; ``before_id`` pages back."""
        limit = max(1, min(limit, LIST_LIMIT_MAX))
        stmt = select(PortalAuditEntry).order_by(PortalAuditEntry.id.desc()).limit(limit)
        if before_id is not None:
            stmt = stmt.where(PortalAuditEntry.id < before_id)
        if action is not None:
            stmt = stmt.where(PortalAuditEntry.action == action)
        with self.sessions() as session:
            return [_line(r) for r in session.scalars(stmt)]


__all__ = ["ACTIONS", "OK", "AuditLine", "AuditLog", "card_target", "check_clean", "mask_asn"]
