"""The permits module's tables, on clearing's metadata (migration 0013; ``docs/permits.md``).

* ``permit_applications`` — one application: its state, its version (steps applied), and each
  statutory deadline with the calendar version it was counted with.
* ``permit_steps`` — every step taken, in order (who, when, the reason told to the citizen);
  the citizen's notices are read from it. Only ever inserted.
* ``permit_documents`` — the uploaded materials: the bytes in the database (no path a name
  could steer), the type as sniffed from the bytes, the size, the SHA-256.
"""

from __future__ import annotations

import datetime as dt
from typing import Final

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from clearing.models import Base, BigId, UTCDateTime, utcnow
from portal.modules.permits.rules import State, Step

CHANNELS: Final = ("online", "counter")
DELIVERIES: Final = ("electronic", "counter")
DOCUMENT_TYPES: Final = ("application/pdf", "image/png", "image/jpeg")
APPLICATION_ID_LEN: Final = 27  # "pa_" + 24 hex


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN (" + ", ".join(f"'{v}'" for v in values) + ")"


class PermitApplication(Base):
    __tablename__ = "permit_applications"

    id: Mapped[str] = mapped_column(String(APPLICATION_ID_LEN), primary_key=True)
    citizen_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("portal_citizens.id", ondelete="RESTRICT"))
    kind: Mapped[str] = mapped_column(String(32))
    title: Mapped[str] = mapped_column(String(200))
    channel: Mapped[str] = mapped_column(String(8))
    delivery: Mapped[str] = mapped_column(String(12))
    state: Mapped[str] = mapped_column(String(24))
    version: Mapped[int] = mapped_column(Integer, default=0)
    submitted_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    submitted_on: Mapped[dt.date] = mapped_column(Date)
    materials_due: Mapped[dt.date] = mapped_column(Date)
    materials_due_calendar: Mapped[str] = mapped_column(String(40))
    materials_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    accepted_on: Mapped[dt.date | None] = mapped_column(Date)
    decision_due: Mapped[dt.date | None] = mapped_column(Date)
    decision_due_calendar: Mapped[str | None] = mapped_column(String(40))
    extended: Mapped[bool] = mapped_column(Boolean, default=False)
    decided_on: Mapped[dt.date | None] = mapped_column(Date)
    certificate_due: Mapped[dt.date | None] = mapped_column(Date)
    certificate_due_calendar: Mapped[str | None] = mapped_column(String(40))
    certificate_issued_on: Mapped[dt.date | None] = mapped_column(Date)
    certificate_no: Mapped[str | None] = mapped_column(String(32), unique=True)

    __table_args__ = (
        CheckConstraint(_in("state", tuple(State)), name="state_valid"),
        CheckConstraint(_in("channel", CHANNELS), name="channel_valid"),
        CheckConstraint(_in("delivery", DELIVERIES), name="delivery_valid"),
        CheckConstraint("version >= 0", name="version_nonnegative"),
        Index("ix_permit_applications_citizen", "citizen_id", "submitted_at"),
        Index("ix_permit_applications_state", "state"),
    )


class PermitStep(Base):
    __tablename__ = "permit_steps"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    application_id: Mapped[str] = mapped_column(
        String(APPLICATION_ID_LEN), ForeignKey("permit_applications.id", ondelete="CASCADE")
    )
    version: Mapped[int] = mapped_column(Integer)  # the application's version after this step
    step: Mapped[str] = mapped_column(String(24))
    actor: Mapped[str] = mapped_column(String(64))
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    day: Mapped[dt.date] = mapped_column(Date)
    reason: Mapped[str] = mapped_column(String(500), default="")

    __table_args__ = (
        UniqueConstraint("application_id", "version"),
        CheckConstraint(_in("step", ("submit", *tuple(Step))), name="step_valid"),
    )


class PermitDocument(Base):
    __tablename__ = "permit_documents"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    application_id: Mapped[str] = mapped_column(
        String(APPLICATION_ID_LEN), ForeignKey("permit_applications.id", ondelete="CASCADE")
    )
    sha256: Mapped[str] = mapped_column(String(64))
    content_type: Mapped[str] = mapped_column(String(24))
    size_bytes: Mapped[int] = mapped_column(Integer)
    filename: Mapped[str] = mapped_column(String(100))
    content: Mapped[bytes] = mapped_column(LargeBinary)
    uploaded_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        UniqueConstraint("application_id", "sha256"),
        CheckConstraint(_in("content_type", DOCUMENT_TYPES), name="content_type_valid"),
        CheckConstraint("size_bytes > 0", name="size_positive"),
    )


__all__ = ["CHANNELS", "DELIVERIES", "DOCUMENT_TYPES", "PermitApplication", "PermitDocument", "PermitStep"]
