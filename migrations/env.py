"""Alembic environment for clearing's schema (SQLite and PostgreSQL).

The URL comes from, in order: ``-x url=...`` on the command line, the ``sqlalchemy.url``
that ``clearing.db.alembic_config`` sets, or ``yikatong.settings``. A PostgreSQL schema
passed by ``clearing.db.upgrade(..., schema=...)`` becomes the search_path, so the
tables and ``alembic_version`` live in that schema (test isolation).
"""

from __future__ import annotations

import importlib

from alembic import context

from clearing.db import make_engine
from clearing.models import Base

# Every package's tables are on clearing's metadata; each module's migration is named beside it.
TABLE_MODULES = (
    "portal.models",  # 0006-0008
    "settlement.models",  # 0009, 0010
    "interop_xian.models",  # 0011
    "portal.modules.social_security.models",  # 0012
    "portal.modules.permits.models",  # 0013
    "portal.modules.utility_bills.models",  # 0014
    "portal.modules.medical.models",  # 0015
)
for _name in TABLE_MODULES:
    importlib.import_module(_name)

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    x_url = context.get_x_argument(as_dictionary=True).get("url")
    if x_url:
        return str(x_url)
    url = config.get_main_option("sqlalchemy.url")
    if url:
        return url
    from yikatong.settings import get_settings

    return get_settings().database_url


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    schema = config.attributes.get("schema")
    engine = make_engine(_url(), schema=schema)
    try:
        with engine.connect() as connection:
            sqlite = connection.dialect.name == "sqlite"
            if sqlite:
                # Batch mode rebuilds a table by copy, drop and rename; with foreign keys on,
                # dropping a table that other rows refer to fails. Off outside the transaction
                # (SQLite ignores the pragma inside one), checked again once migrated.
                connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
                connection.commit()
            context.configure(
                connection=connection,
                target_metadata=target_metadata,
                render_as_batch=sqlite,
                compare_type=True,
            )
            with context.begin_transaction():
                context.run_migrations()
                if sqlite:  # inside the transaction: a broken reference rolls the migration back
                    broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                    if broken:
                        raise RuntimeError(f"migration left rows that refer to missing rows: {broken[:5]}")
            if sqlite:
                connection.exec_driver_sql("PRAGMA foreign_keys=ON")
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
