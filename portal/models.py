"""The portal's own tables, on clearing's metadata (one schema, one Alembic chain: migration 0006).

ARCHITECTURE.md, "Data model": clearing owns the model and other packages add their own
tables. These are the portal's: they live here, in the package that writes them, and are
declared on ``clearing.models.Base`` so that ``migrations/env.py`` (which imports this
module) and the model/migration agreement test see one metadata.

- ``portal_topups``: one row per top-up, the persisted ``portal.topups.Topup``. Its id is
  also clearing's load id and the payment's Idempotency-Key (``TOPUP_ID_LEN_MAX`` = 40).
  No foreign key to ``cards``: the card is checked through clearing's functions when the
  top-up is made, and clearing's own ``pending_loads`` carries the foreign key.
- ``portal_webhook_events``: every verified webhook event id, once (the dedupe of
  ``docs/portal.md``, "What the shell must do").
- ``portal_outbox``: the effects ``topups.apply`` answered, written in the transaction that
  wrote the state; ``done_at`` is set when the effect's answer has been applied.
- ``portal_citizens``, ``portal_sessions``, ``portal_card_bindings`` (migration 0007): citizen
  accounts, their login sessions (the id is the SHA-256 of the cookie's token, so a copy of
  the table opens no session), and which citizen each card is bound to (one at most).
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Final

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from clearing.models import Base, BigId, UTCDateTime, utcnow
from portal.topups import TOPUP_ID_LEN_MAX, RefundReason, State

EVENT_ID_LEN_MAX: Final = 255  # Stripe's ids are far shorter; a longer one is not an event of ours
EFFECT_KINDS: Final = (
    "create_payment_intent",
    "cancel_payment_intent",
    "create_load",
    "cancel_load",
    "refund",
    "notice",
)


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(str(v)) for v in values)})"


class PortalTopup(Base):
    """A top-up as ``portal.topups.Topup`` holds it; written only by ``portal.topup_service``."""

    __tablename__ = "portal_topups"

    topup_id: Mapped[str] = mapped_column(String(TOPUP_ID_LEN_MAX), primary_key=True)
    issuer_id: Mapped[str] = mapped_column(String(16))
    card_asn: Mapped[str] = mapped_column(String(20))
    amount_fen: Mapped[int] = mapped_column(BigInteger)
    state: Mapped[str] = mapped_column(String(16))
    payment_intent_id: Mapped[str | None] = mapped_column(String(255))
    paid_fen: Mapped[int] = mapped_column(BigInteger, default=0)
    loaded_fen: Mapped[int] = mapped_column(BigInteger, default=0)
    refunded_fen: Mapped[int] = mapped_column(BigInteger, default=0)
    load_voided: Mapped[bool] = mapped_column(Boolean, default=False)
    refund_reason: Mapped[str | None] = mapped_column(String(16))
    # Other successful payments tagged with this top-up: [{"payment_intent_id", "amount_fen", "refunded"}]
    unmatched: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        CheckConstraint("amount_fen > 0", name="amount_positive"),
        CheckConstraint("paid_fen >= 0 AND loaded_fen >= 0 AND refunded_fen >= 0", name="money_nonnegative"),
        CheckConstraint(_in("state", tuple(State)), name="state_valid"),
        CheckConstraint(f"refund_reason IS NULL OR {_in('refund_reason', tuple(RefundReason))}", name="reason_valid"),
        Index("ix_portal_topups_card_state", "issuer_id", "card_asn", "state"),
    )


class PortalWebhookEvent(Base):
    """A verified webhook event, recorded once: a repeat finds its id and moves nothing."""

    __tablename__ = "portal_webhook_events"

    event_id: Mapped[str] = mapped_column(String(EVENT_ID_LEN_MAX), primary_key=True)
    event_type: Mapped[str] = mapped_column(String(64))
    topup_id: Mapped[str | None] = mapped_column(String(TOPUP_ID_LEN_MAX))  # None: not ours
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class PortalOutbox(Base):
    """One effect to run; ``done_at`` NULL while it is still to do (partial index for the runner)."""

    __tablename__ = "portal_outbox"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    topup_id: Mapped[str] = mapped_column(String(TOPUP_ID_LEN_MAX))
    kind: Mapped[str] = mapped_column(String(24))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    done_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        CheckConstraint(_in("kind", EFFECT_KINDS), name="kind_valid"),
        Index(
            "ix_portal_outbox_due",
            "id",
            postgresql_where=text("done_at IS NULL"),
            sqlite_where=text("done_at IS NULL"),
        ),
        Index("ix_portal_outbox_topup", "topup_id"),
    )


ASSURANCES: Final = ("account", "card")  # issue 10: account login, card login
BINDING_HOWS: Final = ("transaction", "card_login", "replacement")  # replacement: migration 0008


class PortalCitizen(Base):
    """A citizen's account: the mobile number logs in; the ID number is kept only as hash and mask."""

    __tablename__ = "portal_citizens"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    mobile: Mapped[str] = mapped_column(String(11), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    real_name: Mapped[str] = mapped_column(String(64))
    id_number_hash: Mapped[str | None] = mapped_column(String(64), unique=True)
    id_number_masked: Mapped[str | None] = mapped_column(String(18))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class PortalSession(Base):
    """A login session; ``id`` is SHA-256 (hex) of the cookie's 256-bit token, never the token."""

    __tablename__ = "portal_sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    citizen_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("portal_citizens.id", ondelete="CASCADE"))
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    assurance: Mapped[str] = mapped_column(String(8))

    __table_args__ = (
        CheckConstraint(_in("assurance", ASSURANCES), name="assurance_valid"),
        Index("ix_portal_sessions_citizen_id", "citizen_id"),
        Index("ix_portal_sessions_expires_at", "expires_at"),
    )


class PortalCardBinding(Base):
    """A card bound to a citizen; (issuer, ASN) unique: a card belongs to one account at most."""

    __tablename__ = "portal_card_bindings"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    citizen_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("portal_citizens.id", ondelete="CASCADE"))
    issuer_id: Mapped[str] = mapped_column(String(16))
    card_asn: Mapped[str] = mapped_column(String(20))
    bound_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    how: Mapped[str] = mapped_column(String(16))

    __table_args__ = (
        UniqueConstraint("issuer_id", "card_asn"),
        CheckConstraint(_in("how", BINDING_HOWS), name="how_valid"),
        Index("ix_portal_card_bindings_citizen_id", "citizen_id"),
    )


# --- lost cards, staff, audit (migration 0008) -------------------------------------------------

LOST_REPORT_STATES: Final = ("lost", "found", "replaced")
STAFF_ROLES: Final = ("counter_clerk", "finance", "administrator")


class PortalLostReport(Base):
    """A lost-card report (挂失): at most one open (``lost``) per card (partial unique index).

    ``found``: a clerk took the card off the denylist (the holder found it); ``replaced``: a
    clerk issued its replacement (``clearing.models.CardReplacement`` holds the money).
    """

    __tablename__ = "portal_lost_reports"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    issuer_id: Mapped[str] = mapped_column(String(16))
    card_asn: Mapped[str] = mapped_column(String(20))
    citizen_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("portal_citizens.id"))
    assurance: Mapped[str] = mapped_column(String(8))
    state: Mapped[str] = mapped_column(String(8), default="lost")
    reported_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    denylist_version: Mapped[int] = mapped_column(BigInteger)
    closed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        CheckConstraint(_in("state", LOST_REPORT_STATES), name="state_valid"),
        CheckConstraint(_in("assurance", ASSURANCES), name="assurance_valid"),
        CheckConstraint("(state = 'lost') = (closed_at IS NULL)", name="closed_iff_not_lost"),
        Index("ix_portal_lost_reports_citizen_id", "citizen_id"),
        Index(
            "uq_portal_lost_reports_open_card",
            "issuer_id",
            "card_asn",
            unique=True,
            sqlite_where=text("state = 'lost'"),
            postgresql_where=text("state = 'lost'"),
        ),
    )


class PortalStaff(Base):
    """A staff account of the console: a role, an argon2id password and a TOTP secret (encrypted).

    ``totp_last_step`` is the 30 s time step of the last code accepted: a code is good only
    for a later step, so a code seen over a shoulder cannot be used again in its window.
    """

    __tablename__ = "portal_staff"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    username: Mapped[str] = mapped_column(String(32), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    password_hash: Mapped[str] = mapped_column(String(255))
    totp_secret_enc: Mapped[str] = mapped_column(String(255))
    totp_last_step: Mapped[int] = mapped_column(BigInteger, default=0)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (CheckConstraint(_in("role", STAFF_ROLES), name="role_valid"),)


class PortalStaffSession(Base):
    """A staff login (cookie ``yk_staff``); ``id`` is SHA-256 (hex) of the cookie's token."""

    __tablename__ = "portal_staff_sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    staff_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("portal_staff.id", ondelete="CASCADE"))
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)

    __table_args__ = (Index("ix_portal_staff_sessions_staff_id", "staff_id"),)


class PortalAuditEntry(Base):
    """One line of the append-only audit log: UPDATE and DELETE are refused by triggers (0008).

    ``actor`` is a staff username (``staff:<name>``), ``citizen:<id>`` or ``cli``; ``target``
    and ``detail`` hold masked forms only (a card as ``3104…1234``), never personal data in clear.
    """

    __tablename__ = "portal_audit_log"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    actor: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(32))
    target: Mapped[str] = mapped_column(String(120), default="")
    outcome: Mapped[str] = mapped_column(String(64))
    detail: Mapped[str] = mapped_column(Text, default="")

    __table_args__ = (Index("ix_portal_audit_log_at", "at"),)


__all__ = [
    "ASSURANCES",
    "BINDING_HOWS",
    "EFFECT_KINDS",
    "LOST_REPORT_STATES",
    "STAFF_ROLES",
    "PortalAuditEntry",
    "PortalCardBinding",
    "PortalCitizen",
    "PortalLostReport",
    "PortalOutbox",
    "PortalSession",
    "PortalStaff",
    "PortalStaffSession",
    "PortalTopup",
    "PortalWebhookEvent",
]
