"""Every row of some PostgreSQL tables as text, for tests that compare two write paths to the byte."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Engine, text


def table_rows(
    engine: Engine, tables: Sequence[str], *, skip: Callable[[str, str], bool]
) -> dict[str, list[tuple[Any, ...]]]:
    """Each table's rows (every column as its stored text, JSON included), ordered by the first column.

    ``skip(table, column)``: columns a run fills with the wall clock, or otherwise may differ.
    """
    out: dict[str, list[tuple[Any, ...]]] = {}
    with engine.connect() as conn:
        for table in tables:
            names = conn.execute(
                text(
                    "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() "
                    "AND table_name = :t ORDER BY ordinal_position"
                ),
                {"t": table},
            )
            columns = [c for (c,) in names if not skip(table, c)]
            cast = ", ".join(f"{c}::text" for c in columns)
            out[table] = [tuple(r) for r in conn.execute(text(f"SELECT {cast} FROM {table} ORDER BY 1"))]
    return out
