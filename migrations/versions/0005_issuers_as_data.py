"""Issuers are data: each issuer row carries the city code its cards (file 0x17, ASN prefix) use.

Issuance used to find an issuer's city code in ``cardos.profile.CITY_CODES`` by city name,
so only the two built-in city issuers could issue cards. ``issuers.city_code`` (4 hex
digits) now says it; the rows already there get the city code inside their issuer id
(hex digits 5-8: ``0100 7120 FFFFFFFF`` is Xianyang, ``docs/decisions.md``), which is what
``CITY_CODES`` gave the built-in issuers.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("issuers", sa.Column("city_code", sa.String(length=4), nullable=True))
    op.execute("UPDATE issuers SET city_code = lower(substr(issuer_id, 5, 4))")
    # SQLite: batch mode rebuilds the table (cards refer to it; env.py turns foreign keys off
    # for the rebuild and checks them after). PostgreSQL: plain ALTERs.
    with op.batch_alter_table("issuers") as batch:
        batch.alter_column("city_code", existing_type=sa.String(length=4), nullable=False)
        batch.create_check_constraint(op.f("ck_issuers_city_code_len"), "length(city_code) = 4")


def downgrade() -> None:
    with op.batch_alter_table("issuers") as batch:
        batch.drop_constraint(op.f("ck_issuers_city_code_len"), type_="check")
        batch.drop_column("city_code")
