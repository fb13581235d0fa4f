"""Clearing's database model: SQLAlchemy 2.0 typed mappings, the same on SQLite and PostgreSQL.

``ARCHITECTURE.md`` ("Data model") fixes the shape; ``docs/ledger.md`` explains the choices.
The database enforces what it can (CHECK, UNIQUE, foreign keys, and triggers where a
row-level foreign key costs too much on the ingest path); the rest is asserted in code
where money is written (``clearing.ledger``) and read back (``trial_balance``).

Conventions:
* money is ``BIGINT`` integer fen (``*_fen``), never a float;
* every timestamp is stored in UTC (``UTCDateTime`` refuses naive datetimes);
* hex identifiers are lowercase strings exactly as on the wire (``issuer_id`` 16 hex chars,
  ``card_asn`` 20, ``terminal_id`` 12), so ingest can compare without conversions.

Hot references checked per statement, not per row (migration 0003): ``transfers`` to its
accounts and ``taps`` to its batch are checked by triggers (one anti-join per statement on
PostgreSQL), and ``accounts`` and ``batches`` rows can never be deleted, so the references
cannot dangle. Those columns therefore carry no ``ForeignKey`` here.
"""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any, Final

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    DateTime,
    Dialect,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# --- enumerations shared with the ledger and the API ----------------------------------

LEDGER_CNY: Final = 156  # ISO 4217 numeric code; every Yikatong account is on this ledger.


class AccountCode(enum.IntEnum):
    """Account kinds (``accounts.code``); the chart of accounts is ``clearing.accounts``."""

    CARD_LIABILITY = 100  # stored value owed to a card holder (credit-normal)
    OPERATOR_PAYABLE = 200  # owed to a bus operator or merchant (credit-normal)
    ISSUER_FLOAT = 300  # cash and bank money the issuer holds (debit-normal)
    GATEWAY_RECEIVABLE = 310  # owed to us by the payment gateway for portal top-ups (debit-normal)
    BANK_SETTLEMENT = 320  # payouts instructed to the bank by settlement's closes (credit side of payouts)
    FEE_REVENUE = 400  # fees we earn (credit-normal)
    WRITE_OFF_INCOME = 410  # card value released by exception write-offs (credit-normal)
    DUE_FROM_XIAN = 500  # Xi'an owes us (debit-normal)
    DUE_TO_XIAN = 510  # we owe Xi'an (credit-normal)
    MEDICAL_FUND = 600  # medical insurance fund share of clinic settlements (credit-normal)


class AccountFlag(enum.IntFlag):
    """Bit flags of ``accounts.flags``, after TigerBeetle; enforced by CHECK constraints."""

    NONE = 0
    DEBITS_MUST_NOT_EXCEED_CREDITS = 1  # debits_pending + debits_posted <= credits_posted
    CREDITS_MUST_NOT_EXCEED_DEBITS = 2  # credits_pending + credits_posted <= debits_posted


class TransferCode(enum.IntEnum):
    """Why money moved (``transfers.code``)."""

    PURCHASE = 1  # tap: card liability -> operator payable
    LOAD = 2  # top-up: gateway receivable / float -> card liability
    CARD_SALE = 3  # value sold with a new card at a counter: float -> card liability
    WRITE_OFF = 4  # exception write-off: card liability -> write-off income
    REFUND = 5
    BALANCE_MOVE = 6  # lost card: old card liability -> replacement card liability
    INTEROP = 7
    FEE = 8
    MEDICAL = 9
    PAYOUT = 10
    SHARING = 11  # settlement: a journey's transfer discount shared, payable -> payable


class TransferState(enum.StrEnum):
    PENDING = "pending"
    POSTED = "posted"
    VOIDED = "voided"


class CardStatus(enum.StrEnum):
    ACTIVE = "active"
    BLOCKED = "blocked"
    LOST = "lost"
    REPLACED = "replaced"


class LoadState(enum.StrEnum):
    PENDING = "pending"  # paid, waiting for the card to meet a load-capable reader
    AUTHORIZED = "authorized"  # MAC2 issued, reserved; waiting for the TAC (or the card's proof)
    POSTED = "posted"
    CANCELLED = "cancelled"  # never reached the card; reservation voided, payment to refund
    EXPIRED = "expired"  # not collected in time; reservation voided, payment to refund
    REFUNDED = "refunded"  # cancelled or expired and paid back through the payment reference


class LoadKind(enum.StrEnum):
    TOPUP = "topup"  # paid on the portal: gateway receivable -> card
    REFUND = "refund"  # a tap-off's fare refund: the entry's operator payable -> card
    COUNTER = "counter"  # cash at a service counter or kiosk: issuer float -> card


class ExceptionState(enum.StrEnum):
    OPEN = "open"
    ACCEPTED = "accepted"
    WRITTEN_OFF = "written_off"
    RESOLVED = "resolved"  # closed by clearing itself (a counter gap filled, a tap-off's entry arrived)


class ForwardState(enum.StrEnum):
    FORWARDED = "forwarded"  # waiting for its issuer's verdict
    ACCEPTED = "accepted"
    REJECTED = "rejected"


CARD_TYPES: Final = ("ordinary", "student", "senior", "social_security")
VERDICT_VALUES: Final = ("accepted", "rejected", "suspect", "forwarded")
TAP_STATUSES: Final = ("normal", "recovered", "blocked")

# --- column types -----------------------------------------------------------------------


class UTCDateTime(TypeDecorator[dt.datetime]):
    """A timestamp stored as UTC and read back as an aware UTC datetime on both databases.

    Naive datetimes are refused: a time without an offset is a bug waiting for a DST-free
    city to move (``ARCHITECTURE.md``: "Time: stored as UTC").
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r}: store aware datetimes only")
        value = value.astimezone(dt.UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)


# 64-bit ids; SQLite only auto-increments a column declared exactly INTEGER PRIMARY KEY.
BigId = BigInteger().with_variant(Integer(), "sqlite")

NAMING_CONVENTION: Final = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def _in(column: str, values: tuple[str, ...]) -> str:
    quoted = ", ".join("'" + str(v) + "'" for v in values)
    return f"{column} IN ({quoted})"


# --- reference data -------------------------------------------------------------------------


class Issuer(Base):
    """A card issuer: our own (``own``) or a peer whose cards we accept as acquirer (Xi'an).

    Issuers are data: a registered issuer marked ``own`` (``clearing.registry.register_issuer``)
    whose keys are in the key store can issue cards. ``city_code`` (4 lower-case hex digits)
    is file 0x17's city code and the first four digits of every ASN it issues; when not given
    it is the city code inside the issuer id (bytes 2-3, ``docs/decisions.md``), as migration
    0005 filled it for the rows it found.
    """

    __tablename__ = "issuers"

    issuer_id: Mapped[str] = mapped_column(String(16), primary_key=True)
    city: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(64))
    own: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    # default: hex digits 5-8 of the issuer id (its city code)
    city_code: Mapped[str] = mapped_column(
        String(4), default=lambda context: str(context.get_current_parameters()["issuer_id"])[4:8].lower()
    )

    __table_args__ = (
        CheckConstraint("length(issuer_id) = 16", name="issuer_id_len"),
        CheckConstraint("length(city_code) = 4", name="city_code_len"),
    )

    def __repr__(self) -> str:
        return f"Issuer({self.issuer_id}, {self.city!r}, city_code={self.city_code!r}, own={self.own})"


class Account(Base):
    """A ledger account after TigerBeetle: running debit/credit totals, flags checked by the DB.

    ``owner_ref`` names what the account belongs to (``card:<issuer>:<asn>``,
    ``operator:<id>``, ``system:issuer_float:<issuer>``); (code, owner_ref) is unique so the
    chart of accounts can get-or-create without races.
    """

    __tablename__ = "accounts"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    ledger: Mapped[int] = mapped_column(Integer, default=LEDGER_CNY)
    code: Mapped[int] = mapped_column(Integer)
    owner_ref: Mapped[str] = mapped_column(String(80))
    flags: Mapped[int] = mapped_column(Integer, default=0)
    debits_pending: Mapped[int] = mapped_column(BigInteger, default=0)
    debits_posted: Mapped[int] = mapped_column(BigInteger, default=0)
    credits_pending: Mapped[int] = mapped_column(BigInteger, default=0)
    credits_posted: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        UniqueConstraint("code", "owner_ref"),
        CheckConstraint(
            "debits_pending >= 0 AND debits_posted >= 0 AND credits_pending >= 0 AND credits_posted >= 0",
            name="totals_nonnegative",
        ),
        CheckConstraint(
            "(flags & 1) = 0 OR debits_pending + debits_posted <= credits_posted",
            name="debits_must_not_exceed_credits",
        ),
        CheckConstraint(
            "(flags & 2) = 0 OR credits_pending + credits_posted <= debits_posted",
            name="credits_must_not_exceed_debits",
        ),
        CheckConstraint("(flags & 3) <> 3", name="flags_exclusive"),
    )

    def __repr__(self) -> str:
        return f"Account({self.id}, code={self.code}, {self.owner_ref!r})"


class Transfer(Base):
    """An immutable money movement; ``id`` is the idempotency key (``tap:<terminal>:<seq>``, …).

    Two-phase: a ``pending`` transfer reserves the amount; a later transfer with
    ``pending_id`` set and state ``posted`` or ``voided`` resolves it. The pending row is
    never edited; a unique index on ``pending_id`` makes the database refuse a second resolution.
    """

    __tablename__ = "transfers"

    id: Mapped[str] = mapped_column(String(80), primary_key=True)
    # accounts exist: checked per statement by a trigger (module docstring), not a row-level FK
    debit_account_id: Mapped[int] = mapped_column(BigInteger)
    credit_account_id: Mapped[int] = mapped_column(BigInteger)
    amount_fen: Mapped[int] = mapped_column(BigInteger)
    ledger: Mapped[int] = mapped_column(Integer, default=LEDGER_CNY)
    code: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(8))
    pending_id: Mapped[str | None] = mapped_column(String(80), ForeignKey("transfers.id"))
    source_ref: Mapped[str | None] = mapped_column(String(120))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        CheckConstraint("amount_fen > 0", name="amount_positive"),
        CheckConstraint("debit_account_id <> credit_account_id", name="accounts_differ"),
        CheckConstraint(_in("state", tuple(TransferState)), name="state_valid"),
        CheckConstraint("state <> 'pending' OR pending_id IS NULL", name="pending_has_no_parent"),
        Index(None, "debit_account_id"),
        Index(None, "credit_account_id"),
        # partial: the tap transfers (nearly all rows) have no pending_id and skip the index
        Index(
            "uq_transfers_pending_id",
            "pending_id",
            unique=True,
            postgresql_where=text("pending_id IS NOT NULL"),
            sqlite_where=text("pending_id IS NOT NULL"),
        ),
    )

    def __repr__(self) -> str:
        return (
            f"Transfer({self.id!r}, {self.debit_account_id}->{self.credit_account_id}, "
            f"{self.amount_fen} fen, {self.state})"
        )


class Counter(Base):
    """Named monotonic counters (denylist version, ASN allocation); see ``clearing.db.bump_counter``."""

    __tablename__ = "counters"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger, default=0)


class Operator(Base):
    """A bus operator or merchant; taps on its terminals credit its payable account."""

    __tablename__ = "operators"

    operator_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(16), default="bus_operator")
    payable_account_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("accounts.id"), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (CheckConstraint(_in("kind", ("bus_operator", "merchant")), name="kind_valid"),)


class Terminal(Base):
    """A validator or POS; the bearer token is stored only as a scrypt hash (``clearing.registry``)."""

    __tablename__ = "terminals"

    terminal_id: Mapped[str] = mapped_column(String(12), primary_key=True)
    operator_id: Mapped[str] = mapped_column(String(64), ForeignKey("operators.operator_id"))
    # The operator's payable (credit side of every accepted tap), copied here so ingest
    # needs no join; an operator's payable account never changes.
    payable_account_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("accounts.id"))
    route: Mapped[str | None] = mapped_column(String(64))
    token_hash: Mapped[str] = mapped_column(String(200))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        CheckConstraint("length(terminal_id) = 12", name="terminal_id_len"),
        Index(None, "operator_id"),
    )

    def __repr__(self) -> str:  # never shows the token hash
        return f"Terminal({self.terminal_id}, operator={self.operator_id!r}, active={self.active})"


class Card(Base):
    """A card we issued (or registered): its keys' version, liability account and shadow state.

    ``shadow_balance_fen`` is the purse balance after the card's last cleared record; the
    ``last_*`` columns are what validation compares the next record against.
    """

    __tablename__ = "cards"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    issuer_id: Mapped[str] = mapped_column(String(16), ForeignKey("issuers.issuer_id"))
    card_asn: Mapped[str] = mapped_column(String(20))
    card_type: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(10), default=CardStatus.ACTIVE.value)
    issued_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    start_date: Mapped[dt.date] = mapped_column(Date)
    expiry_date: Mapped[dt.date] = mapped_column(Date)
    key_version: Mapped[int] = mapped_column(SmallInteger)
    alg_id: Mapped[int] = mapped_column(SmallInteger)
    account_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("accounts.id"), unique=True)
    shadow_balance_fen: Mapped[int] = mapped_column(BigInteger, default=0)
    last_offline_counter: Mapped[int | None] = mapped_column(Integer)
    last_online_counter: Mapped[int | None] = mapped_column(Integer)
    last_tx_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    # Time of the online load that last set the shadow balance; NULL once a tap moves it.
    # A tap from before that load, uploaded after it, is not checked against that shadow.
    shadow_load_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    auth_cert_serial: Mapped[str | None] = mapped_column(String(40))
    holder_name: Mapped[str | None] = mapped_column(String(64))
    replaced_by_id: Mapped[int | None] = mapped_column(BigInteger, ForeignKey("cards.id"))

    __table_args__ = (
        UniqueConstraint("issuer_id", "card_asn"),
        CheckConstraint("length(card_asn) = 20", name="asn_len"),
        CheckConstraint("shadow_balance_fen >= 0", name="shadow_balance_nonnegative"),
        CheckConstraint(_in("status", tuple(CardStatus)), name="status_valid"),
        CheckConstraint(_in("card_type", CARD_TYPES), name="card_type_valid"),
        CheckConstraint("key_version BETWEEN 0 AND 255 AND alg_id BETWEEN 0 AND 255", name="key_bytes"),
    )

    def __repr__(self) -> str:
        return f"Card({self.issuer_id}:{self.card_asn}, {self.card_type}, {self.status})"


# --- terminal uploads ------------------------------------------------------------------------


class BatchRow(Base):
    """One uploaded journal batch and the answer it got; a replay returns ``answer`` byte for byte.

    ``content_hash`` is the sha256 hex of the canonical body (same seq, other hash:
    E_BATCH_CONFLICT). ``body`` keeps the raw upload while the batch waits in a queue
    (``status`` ``queued``); ``answer`` is the exact encoded ``BatchAnswer`` once ``done``.
    """

    __tablename__ = "batches"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    terminal_id: Mapped[str] = mapped_column(String(12), ForeignKey("terminals.terminal_id"))
    batch_seq: Mapped[int] = mapped_column(BigInteger)
    content_hash: Mapped[str] = mapped_column(String(64))
    record_count: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[str] = mapped_column(String(8), default="done")
    body: Mapped[bytes | None] = mapped_column(LargeBinary)
    answer: Mapped[str | None] = mapped_column(Text)
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    done_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        UniqueConstraint("terminal_id", "batch_seq"),
        CheckConstraint("batch_seq >= 0 AND record_count >= 0", name="nonnegative"),
        CheckConstraint(_in("status", ("queued", "done")), name="status_valid"),
        CheckConstraint("status <> 'done' OR answer IS NOT NULL", name="done_has_answer"),
    )


class Tap(Base):
    """A tap record kept by clearing, with its verdict.

    All ``TapRecord`` fields of ``clearing.contract`` (``fare`` flattened into ``fare_*``;
    ``tx_time`` in UTC plus ``tx_utc_offset_min`` so the card-local time that the TAC covers
    can be rebuilt), the verdict, and where it came from. The two natural keys are unique
    indexes: the database refuses a second (terminal, seq) or (card, counter, type), which
    is what makes concurrent workers safe (the loser's COPY fails and its batch is judged
    again). Not partitioned: those keys are unique for all time, which a partitioned table
    cannot enforce (``docs/decisions.md``). Policy (ingest): only authentic records (TAC
    verified, or forwarded foreign cards) get a tap row and a key; duplicates and forgeries
    go to the exception queue with the raw record, so a forgery never squats a genuine key.
    """

    __tablename__ = "taps"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    business_day: Mapped[dt.date] = mapped_column(Date)
    batch_id: Mapped[int | None] = mapped_column(BigInteger)  # batch exists: statement trigger
    batch_seq: Mapped[int | None] = mapped_column(BigInteger)
    terminal_id: Mapped[str] = mapped_column(String(12))
    terminal_seq: Mapped[int] = mapped_column(BigInteger)
    psam_serial: Mapped[str] = mapped_column(String(64))
    issuer_id: Mapped[str] = mapped_column(String(16))
    card_asn: Mapped[str] = mapped_column(String(20))
    card_type: Mapped[str] = mapped_column(String(64))
    tx_type: Mapped[int] = mapped_column(SmallInteger)
    amount_fen: Mapped[int] = mapped_column(BigInteger)
    balance_before_fen: Mapped[int] = mapped_column(BigInteger)
    offline_counter: Mapped[int] = mapped_column(Integer)
    tx_time: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    tx_utc_offset_min: Mapped[int] = mapped_column(SmallInteger, default=480)
    key_version: Mapped[int] = mapped_column(SmallInteger)
    alg_id: Mapped[int] = mapped_column(SmallInteger)
    tac: Mapped[str] = mapped_column(String(8))
    route_id: Mapped[str | None] = mapped_column(String(64))
    stop_id: Mapped[str | None] = mapped_column(String(64))
    vehicle_id: Mapped[str | None] = mapped_column(String(64))
    fare_product_id: Mapped[str | None] = mapped_column(String(64))
    fare_rider_category_id: Mapped[str | None] = mapped_column(String(64))
    fare_leg_group_id: Mapped[str | None] = mapped_column(String(64))
    fare_full_fen: Mapped[int | None] = mapped_column(BigInteger)
    fare_discount_fen: Mapped[int | None] = mapped_column(BigInteger)
    fare_transfer_of: Mapped[int | None] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(10), default="normal")
    verdict: Mapped[str] = mapped_column(String(10))
    code: Mapped[str] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(Text, default="")
    transfer_id: Mapped[str | None] = mapped_column(String(80))
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    # A tap-off (fare.tap_kind): what the terminal claimed back (outside the TAC), the tariff
    # version it priced with, and the refund clearing computed from the verified entry leg
    # (NULL until the entry has cleared; ``clearing.refunds``).
    fare_tap_kind: Mapped[str | None] = mapped_column(String(8))
    fare_tariff_version: Mapped[str | None] = mapped_column(String(64))
    fare_refund_claimed_fen: Mapped[int | None] = mapped_column(BigInteger)
    refund_fen: Mapped[int | None] = mapped_column(BigInteger)
    # S_COUNTER_GAP: the counters missing when the tap cleared. No exception item is made at
    # ingest: most gaps fill within the day; ``exceptions_queue.sweep_gaps`` queues the ones
    # still open after the configured age (and resolves queued ones that filled since).
    gap_first: Mapped[int | None] = mapped_column(Integer)
    gap_last: Mapped[int | None] = mapped_column(Integer)

    __table_args__ = (
        CheckConstraint("amount_fen >= 0 AND balance_before_fen >= 0", name="amounts_nonnegative"),
        CheckConstraint("terminal_seq BETWEEN 0 AND 4294967295", name="terminal_seq_u32"),
        CheckConstraint("offline_counter BETWEEN 0 AND 65535", name="offline_counter_u16"),
        CheckConstraint(_in("verdict", VERDICT_VALUES), name="verdict_valid"),
        CheckConstraint(_in("status", TAP_STATUSES), name="status_valid"),
        Index("uq_taps_terminal_seq", "terminal_id", "terminal_seq", unique=True),
        Index("uq_taps_card_counter", "issuer_id", "card_asn", "offline_counter", "tx_type", unique=True),
        # the gaps a sweep looks at: partial, so the three taps in four without a gap skip it
        Index(
            "ix_taps_gaps",
            "business_day",
            postgresql_where=text("gap_first IS NOT NULL"),
            sqlite_where=text("gap_first IS NOT NULL"),
        ),
    )


# --- denylist, loads, exceptions ---------------------------------------------------------------


class DenylistEntryRow(Base):
    """A denylisted card: ``added_version`` when it went on, ``removed_version`` when it came off.

    A terminal at version V needs the rows with ``added_version > V`` or
    ``removed_version > V``; at most one live (unremoved) row per card.
    """

    __tablename__ = "denylist_entries"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    issuer_id: Mapped[str] = mapped_column(String(16))
    card_asn: Mapped[str] = mapped_column(String(20))
    reason: Mapped[str] = mapped_column(String(64))
    effective_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    added_version: Mapped[int] = mapped_column(BigInteger)
    removed_version: Mapped[int | None] = mapped_column(BigInteger)
    removed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        CheckConstraint("removed_version IS NULL OR removed_version > added_version", name="versions_ordered"),
        Index("ix_denylist_entries_added_version", "added_version"),
        Index("ix_denylist_entries_removed_version", "removed_version"),
        # every entry of a card, live or removed (ingest's per-card lookups; migration 0002)
        Index("ix_denylist_entries_card", "issuer_id", "card_asn"),
        Index(
            "uq_denylist_entries_live_card",
            "issuer_id",
            "card_asn",
            unique=True,
            sqlite_where=text("removed_version IS NULL"),
            postgresql_where=text("removed_version IS NULL"),
        ),
    )


class PendingLoad(Base):
    """A paid top-up waiting for the card (flow 5); posted at most once (``transfer_id`` = ``load:<id>``)."""

    __tablename__ = "pending_loads"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    issuer_id: Mapped[str] = mapped_column(String(16))
    card_asn: Mapped[str] = mapped_column(String(20))
    amount_fen: Mapped[int] = mapped_column(BigInteger)
    state: Mapped[str] = mapped_column(String(12), default=LoadState.PENDING.value)
    payment_ref: Mapped[str | None] = mapped_column(String(128), unique=True)
    terminal_id: Mapped[str | None] = mapped_column(String(12))
    online_counter: Mapped[int | None] = mapped_column(Integer)
    balance_before_fen: Mapped[int | None] = mapped_column(BigInteger)
    card_random: Mapped[str | None] = mapped_column(String(8))
    key_version: Mapped[int | None] = mapped_column(SmallInteger)
    alg_id: Mapped[int | None] = mapped_column(SmallInteger)
    mac1: Mapped[str | None] = mapped_column(String(8))
    mac2: Mapped[str | None] = mapped_column(String(8))
    tx_time: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    tac: Mapped[str | None] = mapped_column(String(8))
    transfer_id: Mapped[str | None] = mapped_column(String(80), ForeignKey("transfers.id"))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    kind: Mapped[str] = mapped_column(String(8), default=LoadKind.TOPUP.value)
    # Who pays the load: a column, never parsed from the load id (``clearing.loads``).
    payer_account_id: Mapped[int | None] = mapped_column(BigInteger, ForeignKey("accounts.id"))
    # The pending transfer that reserves the amount from the payer (posted at completion,
    # voided at cancel or expiry).
    reserve_transfer_id: Mapped[str | None] = mapped_column(String(80), ForeignKey("transfers.id"))
    expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        CheckConstraint("amount_fen > 0", name="amount_positive"),
        CheckConstraint(_in("state", tuple(LoadState)), name="state_valid"),
        CheckConstraint(_in("kind", tuple(LoadKind)), name="kind_valid"),
        ForeignKeyConstraint(["issuer_id", "card_asn"], ["cards.issuer_id", "cards.card_asn"]),
        Index("ix_pending_loads_card_state", "issuer_id", "card_asn", "state"),
    )


class ExceptionItem(Base):
    """A rejected or suspect record waiting for a person's decision (``clearing.exceptions_queue``).

    ``record`` is the raw ``TapRecord`` (as a JSON object) and the key columns repeat its
    natural keys for lookups; ``tap_id`` + ``tap_business_day`` point at the tap when it has
    a row (no foreign key: on PostgreSQL taps is partitioned; the code asserts the link).
    A decision never edits money: it posts a new transfer, recorded in
    ``decision_transfer_id``.
    """

    __tablename__ = "exception_items"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(16), default="tap")
    tap_id: Mapped[int | None] = mapped_column(BigInteger, unique=True)
    tap_business_day: Mapped[dt.date | None] = mapped_column(Date)
    record: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    terminal_id: Mapped[str | None] = mapped_column(String(12))
    terminal_seq: Mapped[int | None] = mapped_column(BigInteger)
    batch_seq: Mapped[int | None] = mapped_column(BigInteger)
    issuer_id: Mapped[str | None] = mapped_column(String(16))
    card_asn: Mapped[str | None] = mapped_column(String(20))
    offline_counter: Mapped[int | None] = mapped_column(Integer)
    amount_fen: Mapped[int | None] = mapped_column(BigInteger)
    code: Mapped[str] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(Text, default="")
    state: Mapped[str] = mapped_column(String(12), default=ExceptionState.OPEN.value)
    decision_transfer_id: Mapped[str | None] = mapped_column(String(80), ForeignKey("transfers.id"))
    note: Mapped[str | None] = mapped_column(Text)
    decided_by: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    decided_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    # S_COUNTER_GAP: the missing counters; the item resolves itself when all of them arrive.
    gap_first: Mapped[int | None] = mapped_column(Integer)
    gap_last: Mapped[int | None] = mapped_column(Integer)
    # What a person's decision moved (0: nothing); the transfer is ``decision_transfer_id``.
    decision_amount_fen: Mapped[int | None] = mapped_column(BigInteger)

    __table_args__ = (
        CheckConstraint(_in("state", tuple(ExceptionState)), name="state_valid"),
        CheckConstraint("(state = 'open') = (decided_at IS NULL)", name="decided_iff_closed"),
        CheckConstraint("gap_first IS NULL OR gap_last >= gap_first", name="gap_ordered"),
        Index("ix_exception_items_state_created", "state", "created_at"),
        Index("ix_exception_items_terminal_batch", "terminal_id", "batch_seq"),
        # the open items of a card: ingest resolves gaps and waiting tap-offs through it
        Index(
            "ix_exception_items_open_card",
            "issuer_id",
            "card_asn",
            sqlite_where=text("state = 'open'"),
            postgresql_where=text("state = 'open'"),
        ),
    )


class CardReplacement(Base):
    """A lost card replaced (补卡): its balance moved to the new card once (``clearing.replacement``).

    One row per old card (UNIQUE): a replayed replacement finds it and moves nothing. The
    amounts are the move's reconciliation, to the fen: ``moved_fen`` = ``liability_fen`` (what
    the old card's liability could still be debited) − ``held_fen`` (the old card's authentic
    records not yet posted: spent before the denylist reached the validators); ``held_fen``
    stays on the old card so those records still clear against it. ``transfer_id`` is the
    ``BALANCE_MOVE`` transfer (NULL when nothing was left to move).
    """

    __tablename__ = "card_replacements"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    old_card_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("cards.id"), unique=True)
    new_card_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("cards.id"), unique=True)
    shadow_fen: Mapped[int] = mapped_column(BigInteger)
    liability_fen: Mapped[int] = mapped_column(BigInteger)
    held_fen: Mapped[int] = mapped_column(BigInteger)
    moved_fen: Mapped[int] = mapped_column(BigInteger)
    transfer_id: Mapped[str | None] = mapped_column(String(80), ForeignKey("transfers.id"))
    replaced_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    replaced_by: Mapped[str] = mapped_column(String(64))

    __table_args__ = (
        CheckConstraint(
            "shadow_fen >= 0 AND liability_fen >= 0 AND held_fen >= 0 AND moved_fen >= 0", name="amounts_nonnegative"
        ),
        CheckConstraint("moved_fen <= liability_fen", name="moved_within_liability"),
        CheckConstraint("(moved_fen = 0) = (transfer_id IS NULL)", name="transfer_iff_moved"),
        CheckConstraint("old_card_id <> new_card_id", name="cards_differ"),
    )


class InteropForward(Base):
    """Another issuer's card tapped on our terminal, waiting for (or judged by) its issuer.

    Kept apart from ``taps`` on purpose: we cannot verify its TAC, so it must not claim the
    natural keys a genuine record needs (a forged forward would otherwise make the genuine
    one a duplicate that is never forwarded). Only an exact replay of the same record from
    the same terminal (``record_digest``) is a duplicate; the issuer's verdict decides the rest.
    """

    __tablename__ = "interop_forwards"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    batch_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("batches.id"))
    batch_seq: Mapped[int] = mapped_column(BigInteger)
    terminal_id: Mapped[str] = mapped_column(String(12))
    terminal_seq: Mapped[int] = mapped_column(BigInteger)
    record_digest: Mapped[str] = mapped_column(String(64))
    issuer_id: Mapped[str] = mapped_column(String(16))
    card_asn: Mapped[str] = mapped_column(String(20))
    offline_counter: Mapped[int] = mapped_column(Integer)
    tx_type: Mapped[int] = mapped_column(SmallInteger)
    amount_fen: Mapped[int] = mapped_column(BigInteger)
    tx_time: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    business_day: Mapped[dt.date] = mapped_column(Date)
    record: Mapped[dict[str, Any]] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(12), default=ForwardState.FORWARDED.value)
    issuer_code: Mapped[str | None] = mapped_column(String(32))
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)

    __table_args__ = (
        UniqueConstraint("terminal_id", "terminal_seq", "record_digest"),
        CheckConstraint(_in("state", tuple(ForwardState)), name="state_valid"),
        CheckConstraint("amount_fen >= 0", name="amount_nonnegative"),
        Index("ix_interop_forwards_state_issuer", "state", "issuer_id"),
    )


__all__ = [
    "CARD_TYPES",
    "LEDGER_CNY",
    "Account",
    "AccountCode",
    "AccountFlag",
    "Base",
    "BatchRow",
    "Card",
    "CardReplacement",
    "CardStatus",
    "Counter",
    "DenylistEntryRow",
    "ExceptionItem",
    "ExceptionState",
    "ForwardState",
    "InteropForward",
    "Issuer",
    "LoadKind",
    "LoadState",
    "Operator",
    "PendingLoad",
    "Tap",
    "Terminal",
    "Transfer",
    "TransferCode",
    "TransferState",
    "UTCDateTime",
    "utcnow",
]
