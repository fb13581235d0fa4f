"""COPY text lines written by the PostgreSQL ingest path read back exactly as sent."""

from __future__ import annotations

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine

from clearing.ingest_pg import copy_text

# Any text a decoded record's free-text fields can carry: the JSON decoder refuses lone
# surrogates, and ``decode_upload`` refuses NUL (PostgreSQL text cannot hold it at all).
TEXT = st.text(st.characters(exclude_characters="\x00", exclude_categories=("Cs",)), max_size=64)


def test_plain_text_passes_unchanged_and_specials_are_escaped() -> None:
    assert copy_text("R12 西安北站") == "R12 西安北站"
    assert copy_text(None) == "\\N"
    assert copy_text("a\tb\nc\rd\\e") == "a\\tb\\nc\\rd\\\\e"
    assert copy_text("\\N") == "\\\\N"  # the text "\N", not NULL


@pytest.mark.postgres
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.lists(st.one_of(st.none(), TEXT), min_size=1, max_size=5))
def test_copy_text_round_trips_through_postgresql(pg_engine: Engine, values: list[str | None]) -> None:
    raw = pg_engine.raw_connection()
    try:
        conn = raw.driver_connection
        assert isinstance(conn, psycopg.Connection)
        with conn.cursor() as cur:
            cur.execute("CREATE TEMP TABLE copy_probe (n int, v text) ON COMMIT DROP")
            with cur.copy("COPY copy_probe (n, v) FROM STDIN") as copy:
                copy.write("".join(f"{n}\t{copy_text(v)}\n" for n, v in enumerate(values)))
            assert [v for _, v in cur.execute("SELECT n, v FROM copy_probe ORDER BY n")] == values
        conn.rollback()
    finally:
        raw.close()
