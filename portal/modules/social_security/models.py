"""The social security tables, on clearing's metadata (as ``settlement/models.py``); migration 0012.

* ``ss_imports`` — one row per contribution file imported: its SHA-256 (unique: the same file
  twice is found and changes nothing), how many rows it had and how many were new, who and when.
* ``ss_entries`` — the contribution record, **append-only** (triggers refuse UPDATE and DELETE,
  and TRUNCATE on PostgreSQL): a ``contribution`` per person, month, insurance and payer
  (``entry_key`` unique: a row imported twice is one entry), and ``correction`` entries that
  carry signed differences against the contribution they correct, with the staff member's
  reason. What is on record for a month is the contribution plus its corrections.
* ``ss_statements`` — statements issued: the canonical content (JSON) the PDF and the
  verification code are made from, so a statement renders the same bytes whenever it is asked for.

People are kept as the portal keeps them: the keyed hash of the resident ID number
(``portal.identity.id_number_hash``, the same key, so a citizen's account finds its record)
and the masked form. The clear number is never stored.
"""

from __future__ import annotations

import datetime as dt
from typing import Final

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from clearing.models import Base, BigId, UTCDateTime, utcnow

from .rules import INSURANCES

ENTRY_KINDS: Final = ("contribution", "correction")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN (" + ", ".join(f"'{v}'" for v in values) + ")"


class SsImport(Base):
    """A contribution file imported once (by its digest)."""

    __tablename__ = "ss_imports"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    file_digest: Mapped[str] = mapped_column(String(64), unique=True)
    file_name: Mapped[str] = mapped_column(String(128))
    rows_total: Mapped[int] = mapped_column(Integer)
    rows_new: Mapped[int] = mapped_column(Integer)
    actor: Mapped[str] = mapped_column(String(64))
    imported_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (CheckConstraint("rows_new >= 0 AND rows_new <= rows_total", name="rows_valid"),)


class SsEntry(Base):
    """A line of the contribution record: a contribution, or a correction of one (never edited)."""

    __tablename__ = "ss_entries"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    entry_key: Mapped[str] = mapped_column(String(64), unique=True)
    kind: Mapped[str] = mapped_column(String(12))
    person_hash: Mapped[str] = mapped_column(String(64))
    person_masked: Mapped[str] = mapped_column(String(18))
    month: Mapped[str] = mapped_column(String(7))
    insurance: Mapped[str] = mapped_column(String(16))
    payer_id: Mapped[str] = mapped_column(String(18))
    base_fen: Mapped[int] = mapped_column(BigInteger)
    employer_fen: Mapped[int] = mapped_column(BigInteger)
    personal_fen: Mapped[int] = mapped_column(BigInteger)
    account_fen: Mapped[int] = mapped_column(BigInteger)
    import_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("ss_imports.id"))
    corrects_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("ss_entries.id"))
    reason: Mapped[str] = mapped_column(Text, default="")
    actor: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        CheckConstraint(_in("kind", ENTRY_KINDS), name="kind_valid"),
        CheckConstraint(_in("insurance", INSURANCES), name="insurance_valid"),
        CheckConstraint(
            "kind <> 'contribution' OR (base_fen > 0 AND employer_fen >= 0 AND personal_fen >= 0 "
            "AND account_fen >= 0 AND import_id IS NOT NULL AND corrects_id IS NULL)",
            name="contribution_valid",
        ),
        CheckConstraint("kind <> 'correction' OR (corrects_id IS NOT NULL AND reason <> '')", name="correction_valid"),
        Index("ix_ss_entries_person_month", "person_hash", "month"),
        Index("ix_ss_entries_corrects_id", "corrects_id"),
    )


class SsStatement(Base):
    """A statement issued: its number, whose, which year, and the content it was made from."""

    __tablename__ = "ss_statements"

    number: Mapped[str] = mapped_column(String(24), primary_key=True)
    person_hash: Mapped[str] = mapped_column(String(64))
    year: Mapped[int] = mapped_column(Integer)
    content: Mapped[str] = mapped_column(Text)
    issued_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (Index("ix_ss_statements_person_hash", "person_hash"),)


__all__ = ["ENTRY_KINDS", "SsEntry", "SsImport", "SsStatement"]
