"""Interop's tables, on clearing's metadata (as ``settlement/models.py``); migration 0011 creates them.

Two marked blocks, one per half of interop: the wire (outbox, batches sent and received, the
channel's sequences, peer public keys, refused deliveries) and the issuer (verdicts, positions,
disputes). ``docs/interop.md`` explains each table.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Final

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from clearing.models import Base, BigId, UTCDateTime, utcnow


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN (" + ", ".join(f"'{v}'" for v in values) + ")"


# --- wire ---

OUTBOX_STATES: Final = ("pending", "sent", "acknowledged", "accepted", "rejected")
OUT_BATCH_STATES: Final = ("sent", "acknowledged")
DIRECTIONS: Final = ("out", "in")


class InteropChannel(Base):
    """The last sequence number of one direction with one peer: allocated (out) or received (in).

    One row per (peer, direction), locked by the transaction that moves it, so two senders or
    two deliveries of the same batch can never take or accept one number twice.
    """

    __tablename__ = "interop_channels"

    peer_city: Mapped[str] = mapped_column(String(16), primary_key=True)
    direction: Mapped[str] = mapped_column(String(3), primary_key=True)
    last_sequence: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        CheckConstraint(_in("direction", DIRECTIONS), name="direction_valid"),
        CheckConstraint("last_sequence >= 0", name="sequence_nonnegative"),
    )


class OutboxItem(Base):
    """A forwarded record (``interop_forwards``) on its way to its issuer, and where it stands.

    pending (not in a batch yet) → sent (in batch ``batch_sequence``) → acknowledged (the
    issuer's signed answer is stored) → accepted (posted DUE_FROM → operator) or rejected
    (handed to disputes). The verdict's code and amount are kept as the issuer gave them.
    """

    __tablename__ = "interop_outbox"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    forward_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("interop_forwards.id"), unique=True)
    item_id: Mapped[str] = mapped_column(String(96), unique=True)
    peer_city: Mapped[str] = mapped_column(String(16))
    peer_issuer_id: Mapped[str] = mapped_column(String(16))
    amount_fen: Mapped[int] = mapped_column(BigInteger)
    state: Mapped[str] = mapped_column(String(12), default="pending")
    batch_sequence: Mapped[int | None] = mapped_column(BigInteger)
    code: Mapped[str | None] = mapped_column(String(40))
    verdict_amount_fen: Mapped[int | None] = mapped_column(BigInteger)
    window_day: Mapped[dt.date | None] = mapped_column(Date)  # the issuer's window of an accepted item
    message: Mapped[str | None] = mapped_column(Text)
    transfer_id: Mapped[str | None] = mapped_column(String(80))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        CheckConstraint(_in("state", OUTBOX_STATES), name="state_valid"),
        CheckConstraint("amount_fen >= 0", name="amount_nonnegative"),
        CheckConstraint("(state = 'pending') = (batch_sequence IS NULL)", name="batched_unless_pending"),
        Index("ix_interop_outbox_peer_state", "peer_city", "state"),
        Index("ix_interop_outbox_peer_batch", "peer_city", "batch_sequence"),
    )


class OutBatch(Base):
    """A batch we built for a peer: its exact bytes, kept so every resend is byte for byte the same.

    ``body`` is the canonical encoding (``interop_xian.batch``); the signature is made over its
    digest at each send (so a key rotated between two attempts still signs the same content).
    ``ack_body`` is the peer's signed acknowledgement, once it came.
    """

    __tablename__ = "interop_batches_out"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    peer_city: Mapped[str] = mapped_column(String(16))
    sequence: Mapped[int] = mapped_column(BigInteger)
    digest: Mapped[str] = mapped_column(String(64))
    body: Mapped[bytes] = mapped_column(LargeBinary)
    item_count: Mapped[int] = mapped_column(Integer)
    amount_fen: Mapped[int] = mapped_column(BigInteger)
    state: Mapped[str] = mapped_column(String(12), default="sent")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
    ack_body: Mapped[bytes | None] = mapped_column(LargeBinary)
    ack_key_id: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    acknowledged_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        UniqueConstraint("peer_city", "sequence"),
        CheckConstraint(_in("state", OUT_BATCH_STATES), name="state_valid"),
        CheckConstraint("sequence > 0 AND item_count > 0 AND amount_fen >= 0 AND attempts >= 0", name="counts_valid"),
        CheckConstraint("(state = 'acknowledged') = (ack_body IS NOT NULL)", name="ack_when_acknowledged"),
        Index("ix_interop_batches_out_state", "peer_city", "state", "sequence"),
    )


class InBatch(Base):
    """A peer's batch we accepted into sequence, with the acknowledgement we answered.

    A replay of the same sequence with the same digest gets ``ack_body`` again, byte for byte;
    with another digest it is refused (``E_INTEROP_BATCH_CONFLICT``).
    """

    __tablename__ = "interop_batches_in"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    peer_city: Mapped[str] = mapped_column(String(16))
    sequence: Mapped[int] = mapped_column(BigInteger)
    digest: Mapped[str] = mapped_column(String(64))
    key_id: Mapped[str] = mapped_column(String(32))
    body: Mapped[bytes] = mapped_column(LargeBinary)
    item_count: Mapped[int] = mapped_column(Integer)
    accepted_count: Mapped[int] = mapped_column(Integer)
    ack_body: Mapped[bytes] = mapped_column(LargeBinary)
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)

    __table_args__ = (
        UniqueConstraint("peer_city", "sequence"),
        CheckConstraint("sequence > 0 AND item_count > 0 AND accepted_count >= 0", name="counts_valid"),
    )


class PeerKey(Base):
    """A peer's Ed25519 public key, imported out of band; accepted until ``retire_at`` (NULL: current).

    A newer key of the same peer sets the older ones' ``retire_at`` to the import time plus the
    overlap, so batches signed before the peer switched still verify for a while, then no more.
    """

    __tablename__ = "interop_peer_keys"

    key_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    peer_city: Mapped[str] = mapped_column(String(16))
    public_key: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    imported_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    retire_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (Index("ix_interop_peer_keys_peer", "peer_city"),)


class Refusal(Base):
    """A delivery refused before anything was judged (bad signature, unknown key, gap, conflict): the log.

    Only what identifies the delivery is kept (the digest and size of the body, the claimed key,
    city and sequence), never the body: a refused body is untrusted input.
    """

    __tablename__ = "interop_refusals"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    code: Mapped[str] = mapped_column(String(40))
    message: Mapped[str] = mapped_column(Text)
    key_id: Mapped[str | None] = mapped_column(String(32))
    peer_city: Mapped[str | None] = mapped_column(String(16))
    sequence: Mapped[int | None] = mapped_column(BigInteger)
    digest: Mapped[str] = mapped_column(String(64))
    body_bytes: Mapped[int] = mapped_column(Integer)

    __table_args__ = (Index("ix_interop_refusals_received", "received_at"),)


# --- issuer ---
# Issuer side (interop_xian.issuer, netting, window_close, disputes); docs/interop.md explains them.

ITEM_OUTCOMES: Final = ("accepted", "rejected")
BOOKING_DIRECTIONS: Final = ("due_to", "due_from")
BOOKING_SOURCES: Final = ("item", "dispute")
WINDOW_STATES: Final = ("proposed", "mismatch", "final")
ALARM_KINDS: Final = ("net_debit_cap", "digest_mismatch", "window_moved", "message_refused")
DISPUTE_ROLES: Final = ("issuer", "acquirer")
DISPUTE_STATES: Final = ("opened", "evidence_requested", "evidence_given", "accepted", "rejected", "written_off")


class IssuerItem(Base):
    """A peer's forwarded record of one of our cards, as our judge decided it (once per item id).

    The verdict is kept per ``(peer_city, item_id)``: the same item in a later batch gets the
    same answer and moves nothing. Only records that are authentic (TAC verified) and not
    duplicates claim the natural keys (``claims_keys``), scoped like this: the terminal key is
    the *peer's* terminal (``peer_city, terminal_id, terminal_seq``), because the peer's terminal
    ids are its own and may equal ours; the card key (``issuer_id, card_asn, offline_counter,
    tx_type``) is the card's, whichever city it was tapped in (checked against ``taps`` too).
    """

    __tablename__ = "interop_issuer_items"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    peer_city: Mapped[str] = mapped_column(String(16))
    item_id: Mapped[str] = mapped_column(String(96))
    batch_id: Mapped[str] = mapped_column(String(128))
    terminal_id: Mapped[str] = mapped_column(String(12))
    terminal_seq: Mapped[int] = mapped_column(BigInteger)
    record_digest: Mapped[str] = mapped_column(String(64))
    issuer_id: Mapped[str] = mapped_column(String(16))
    card_asn: Mapped[str] = mapped_column(String(20))
    offline_counter: Mapped[int] = mapped_column(Integer)
    tx_type: Mapped[int] = mapped_column(SmallInteger)
    amount_fen: Mapped[int] = mapped_column(BigInteger)
    tx_time: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    outcome: Mapped[str] = mapped_column(String(10))
    code: Mapped[str] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(Text, default="")
    claims_keys: Mapped[bool] = mapped_column(Boolean)
    window_day: Mapped[dt.date | None] = mapped_column(Date)  # accepted: the interop window it is booked in
    transfer_id: Mapped[str | None] = mapped_column(String(80))
    record: Mapped[dict[str, Any]] = mapped_column(JSON)
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)

    __table_args__ = (
        UniqueConstraint("peer_city", "item_id"),
        CheckConstraint(_in("outcome", ITEM_OUTCOMES), name="outcome_valid"),
        CheckConstraint("amount_fen >= 0", name="amount_nonnegative"),
        CheckConstraint("outcome = 'rejected' OR claims_keys", name="accepted_claims_keys"),
        Index(
            "uq_interop_issuer_items_terminal_seq",
            "peer_city",
            "terminal_id",
            "terminal_seq",
            unique=True,
            sqlite_where=text("claims_keys"),
            postgresql_where=text("claims_keys"),
        ),
        Index(
            "uq_interop_issuer_items_card_counter",
            "issuer_id",
            "card_asn",
            "offline_counter",
            "tx_type",
            unique=True,
            sqlite_where=text("claims_keys"),
            postgresql_where=text("claims_keys"),
        ),
    )


class Booking(Base):
    """One accepted item (or dispute outcome) in the bilateral position of a peer and window.

    ``due_to``: we are the issuer, we owe the peer (card liability → DUE_TO); ``due_from``: we
    are the acquirer, the peer owes us (DUE_FROM → our operator; written by the acquirer side
    through ``netting.book``). Once per (peer, direction, item): the position journal the
    window's instruction is computed from and itemised by.
    """

    __tablename__ = "interop_bookings"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    peer_city: Mapped[str] = mapped_column(String(16))
    window_day: Mapped[dt.date] = mapped_column(Date)
    direction: Mapped[str] = mapped_column(String(8))
    item_id: Mapped[str] = mapped_column(String(96))
    amount_fen: Mapped[int] = mapped_column(BigInteger)
    source: Mapped[str] = mapped_column(String(8), default="item")
    transfer_id: Mapped[str] = mapped_column(String(80))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        UniqueConstraint("peer_city", "direction", "item_id"),
        CheckConstraint("amount_fen > 0", name="amount_positive"),
        CheckConstraint(_in("direction", BOOKING_DIRECTIONS), name="direction_valid"),
        CheckConstraint(_in("source", BOOKING_SOURCES), name="source_valid"),
        Index("ix_interop_bookings_peer_window", "peer_city", "window_day"),
    )


class PeerLimit(Base):
    """A peer's net debit cap (``NULL``: none) and the percentage of it that raises an alarm."""

    __tablename__ = "interop_peer_limits"

    peer_city: Mapped[str] = mapped_column(String(16), primary_key=True)
    cap_fen: Mapped[int | None] = mapped_column(BigInteger)
    alarm_pct: Mapped[int] = mapped_column(SmallInteger, default=80)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        CheckConstraint("cap_fen IS NULL OR cap_fen >= 0", name="cap_nonnegative"),
        CheckConstraint("alarm_pct BETWEEN 1 AND 100", name="alarm_pct_range"),
    )


class InteropWindow(Base):
    """A window's net settlement instruction with a peer: ours, the peer's digest, and whether final."""

    __tablename__ = "interop_windows"

    peer_city: Mapped[str] = mapped_column(String(16), primary_key=True)
    window_day: Mapped[dt.date] = mapped_column(Date, primary_key=True)
    state: Mapped[str] = mapped_column(String(10))
    due_to_fen: Mapped[int] = mapped_column(BigInteger)
    due_from_fen: Mapped[int] = mapped_column(BigInteger)
    our_digest: Mapped[str] = mapped_column(String(64))
    peer_digest: Mapped[str | None] = mapped_column(String(64))
    instruction: Mapped[dict[str, Any]] = mapped_column(JSON)
    finalized_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        CheckConstraint(_in("state", WINDOW_STATES), name="state_valid"),
        CheckConstraint("due_to_fen >= 0 AND due_from_fen >= 0", name="amounts_nonnegative"),
        CheckConstraint("(state = 'final') = (finalized_at IS NOT NULL)", name="final_iff_finalized"),
    )


class Alarm(Base):
    """Something a person must look at: a net debit cap approached or passed, a digest mismatch."""

    __tablename__ = "interop_alarms"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    peer_city: Mapped[str] = mapped_column(String(16))
    kind: Mapped[str] = mapped_column(String(16))
    window_day: Mapped[dt.date | None] = mapped_column(Date)
    message: Mapped[str] = mapped_column(Text)
    details: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        CheckConstraint(_in("kind", ALARM_KINDS), name="kind_valid"),
        Index("ix_interop_alarms_peer_created", "peer_city", "created_at"),
    )


class Dispute(Base):
    """A contested record between us and a peer (``interop_xian.disputes``): one per role and item."""

    __tablename__ = "interop_disputes"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    peer_city: Mapped[str] = mapped_column(String(16))
    role: Mapped[str] = mapped_column(String(8))
    item_id: Mapped[str] = mapped_column(String(96))
    amount_fen: Mapped[int] = mapped_column(BigInteger)
    reason_code: Mapped[str] = mapped_column(String(40))
    state: Mapped[str] = mapped_column(String(20))
    deadline: Mapped[dt.date | None] = mapped_column(Date)
    opened_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    outcome_transfer_id: Mapped[str | None] = mapped_column(String(80))
    evidence: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        UniqueConstraint("peer_city", "role", "item_id"),
        CheckConstraint(_in("role", DISPUTE_ROLES), name="role_valid"),
        CheckConstraint(_in("state", DISPUTE_STATES), name="state_valid"),
        CheckConstraint("amount_fen >= 0", name="amount_nonnegative"),
        Index("ix_interop_disputes_state_deadline", "state", "deadline"),
    )


class DisputeEvent(Base):
    """Every transition of a dispute: who, when, from and to which state, why (append only)."""

    __tablename__ = "interop_dispute_events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    dispute_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("interop_disputes.id"))
    from_state: Mapped[str | None] = mapped_column(String(20))
    to_state: Mapped[str] = mapped_column(String(20))
    actor: Mapped[str] = mapped_column(String(64))
    note: Mapped[str] = mapped_column(Text, default="")
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime)

    __table_args__ = (Index("ix_interop_dispute_events_dispute", "dispute_id"),)


# --- end issuer ---


# --- messages (migration 0016) ---
# ``interop_xian.messages``: the signed messages beside the batches — window digests, dispute moves.

MESSAGE_KINDS: Final = ("window", "dispute")
OUT_MESSAGE_STATES: Final = ("pending", "delivered", "refused")


class OutMessage(Base):
    """A dispute move for the peer, kept from the transaction that made it until the peer answered.

    ``body`` is the canonical message (built once, resent byte for byte, like a batch). Messages
    to a peer are delivered in id order, so a dispute's moves arrive in the order they were made.
    Window digests are not kept here: each round proposes afresh (``interop_xian.window_close``).
    """

    __tablename__ = "interop_messages_out"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    peer_city: Mapped[str] = mapped_column(String(16))
    message_id: Mapped[str] = mapped_column(String(128), unique=True)
    kind: Mapped[str] = mapped_column(String(8))
    digest: Mapped[str] = mapped_column(String(64))
    body: Mapped[bytes] = mapped_column(LargeBinary)
    state: Mapped[str] = mapped_column(String(10), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
    reply_body: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        CheckConstraint(_in("kind", MESSAGE_KINDS), name="kind_valid"),
        CheckConstraint(_in("state", OUT_MESSAGE_STATES), name="state_valid"),
        CheckConstraint("attempts >= 0", name="attempts_nonnegative"),
        Index("ix_interop_messages_out_peer_state", "peer_city", "state", "id"),
    )


class InMessage(Base):
    """A peer's dispute message we acted on, and our answer: a replay gets the same answer, acts once."""

    __tablename__ = "interop_messages_in"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    peer_city: Mapped[str] = mapped_column(String(16))
    message_id: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(8))
    digest: Mapped[str] = mapped_column(String(64))
    reply_body: Mapped[bytes] = mapped_column(LargeBinary)
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)

    __table_args__ = (
        UniqueConstraint("peer_city", "message_id"),
        CheckConstraint(_in("kind", MESSAGE_KINDS), name="kind_valid"),
    )


__all__ = [
    "ALARM_KINDS",
    "BOOKING_DIRECTIONS",
    "DIRECTIONS",
    "DISPUTE_STATES",
    "MESSAGE_KINDS",
    "OUTBOX_STATES",
    "OUT_BATCH_STATES",
    "OUT_MESSAGE_STATES",
    "Alarm",
    "Booking",
    "Dispute",
    "DisputeEvent",
    "InBatch",
    "InMessage",
    "InteropChannel",
    "InteropWindow",
    "IssuerItem",
    "OutBatch",
    "OutMessage",
    "OutboxItem",
    "PeerKey",
    "PeerLimit",
    "Refusal",
]
