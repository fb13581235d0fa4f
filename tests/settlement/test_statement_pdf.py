"""The daily statement PDF: the same statement gives the same bytes, and it carries the close's figures.

The PDF is written uncompressed, so its text operators can be read straight from the bytes:
figures (Helvetica) as PDF literal strings, names (the CID font STSong-Light, UCS-2) as
UTF-16BE inside them (``pdf_string`` below escapes like reportlab does).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session
from tapfactory import OWN_ISSUER  # noqa: F401 - settleworld's city (tests/settlement/conftest.py path)

from settlement.close import StatementLine, Totals
from settlement.errors import SettlementCode, SettlementError
from settlement.fees import FeeSchedule
from settlement.models import StatementRow
from settlement.statement_pdf import (
    StatementDocument,
    closed_days,
    pdf_date,
    schedule_text,
    statement_document,
    statement_pdf,
    wrap,
    yuan_text,
)
from tests.settlement.settleworld import ACCOUNT_SHOP, DAY0, day_at, make_world

CLOSED_AT = dt.datetime(2026, 11, 24, 16, 5, 30, tzinfo=dt.UTC)


def pdf_string(text: str, *, cjk: bool = False) -> bytes:
    """``text`` as a PDF literal string the way reportlab writes it (UTF-16BE for the CID font)."""
    raw = text.encode("utf-16-be") if cjk else text.encode("latin-1")
    out = bytearray(b"(")
    for byte in raw:
        if byte in b"()\\":
            out += b"\\" + bytes([byte])
        elif 32 <= byte < 127:
            out.append(byte)
        else:
            out += b"\\%03o" % byte
    return bytes(out + b")")


def busy_day() -> StatementDocument:
    """docs/settlement.md's worked example, busy day: 12 345.50 gross, 120.00 refunds, 46.46 fee."""
    line = StatementLine(
        7,
        "shop-1",
        "渭城茶馆 (Weicheng)",
        Totals(310, 1_234_550, 2, 12_000, 1, 800),
        FeeSchedule(38, 100, 5000),
        4646,
        1_217_904,
        -400,
        1_217_504,
        0,
        ACCOUNT_SHOP,
        "YKT2026112401-0123456789abcdef0123",
        None,
    )
    return StatementDocument(DAY0, "shop-1", "渭城茶馆 (Weicheng)", "merchant", "咸阳一卡通有限公司", CLOSED_AT, line)


def test_the_same_statement_gives_byte_identical_pdfs() -> None:
    first, second = statement_pdf(busy_day()), statement_pdf(busy_day())
    assert first == second and first.startswith(b"%PDF-1.")
    assert b"/CreationDate (D:20261124160530+00'00')" in first  # the close's time, not the clock's
    other = busy_day()
    changed = StatementDocument(
        other.business_day,
        other.payee_id,
        other.payee_name,
        other.payee_kind,
        other.payer_name,
        CLOSED_AT + dt.timedelta(seconds=1),
        other.line,
    )
    assert statement_pdf(changed) != first


def test_the_statement_shows_totals_fee_and_payout() -> None:
    data = statement_pdf(busy_day())
    for figure in (
        "310",
        "12,345.50",
        "120.00",
        "12,225.50",
        "46.46",
        "12,179.04",
        "-4.00",
        "12,175.04",
        "0.00",
        "1 · 8.00",
    ):
        assert pdf_string(figure) in data, figure
    assert pdf_string("38 bps (0.38 %), min 1.00, cap 50.00, half up") in data
    assert b"0202) Tj" in data and ACCOUNT_SHOP.number.encode() not in data  # last 4 digits only
    assert pdf_string("渭城茶馆 (Weicheng)", cjk=True) in data
    assert pdf_string("咸阳一卡通有限公司", cjk=True) in data
    assert pdf_string("YKT2026112401-0123456789abcdef0123") in data
    assert b"/BaseFont /STSong-Light" in data and b"/FontFile" not in data  # no font shipped or embedded


def test_amounts_are_yuan_from_integer_fen() -> None:
    assert [yuan_text(f) for f in (0, 5, 100, 123_456_789, -400)] == ["0.00", "0.05", "1.00", "1,234,567.89", "-4.00"]
    with pytest.raises(TypeError):
        yuan_text(1.5)  # type: ignore[arg-type]
    assert schedule_text(FeeSchedule(5, 0, None)) == "5 bps (0.05 %), min 0.00, no cap, half up"
    assert pdf_date(dt.datetime(2026, 11, 25, 0, 5, tzinfo=dt.timezone(dt.timedelta(hours=8)))) == (
        "D:20261124160500+00'00'"
    )
    assert wrap("渭" * 128, "STSong-Light", 12, 483) == ["渭" * 40, "渭" * 40, "渭" * 40, "渭" * 8]


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=-(10**15), max_value=10**15))
def test_yuan_text_reads_back_as_the_same_fen(fen: int) -> None:
    text = yuan_text(fen)
    negative = text.startswith("-")
    whole, cents = text.lstrip("-").replace(",", "").split(".")
    assert len(cents) == 2 and (int(whole) * 100 + int(cents)) * (-1 if negative else 1) == fen


# --- from a real close -----------------------------------------------------------------------------


def test_a_closed_days_statement_is_the_closes_row(db_engine: Engine, tmp_path: Path) -> None:
    world = make_world(db_engine, tmp_path / "out")
    world.ingest("shop", day_at(DAY0), [1_000, 2_550])
    with Session(db_engine) as session:
        with pytest.raises(SettlementError) as refused:
            statement_document(session, "shop-1", DAY0)
        assert refused.value.code is SettlementCode.E_WINDOW_NOT_CLOSED
        assert closed_days(session) == []
    world.close(DAY0)
    with Session(db_engine) as session:
        doc = statement_document(session, "shop-1", DAY0)
        row = session.scalar(select(StatementRow).where(StatementRow.payee_id == "shop-1"))
        assert row is not None and doc.line is not None
        assert (doc.line.totals.gross_fen, doc.line.fee_fen, doc.line.payout_fen) == (
            row.gross_fen,
            row.fee_fen,
            row.payout_fen,
        )
        assert (row.gross_fen, row.fee_fen, row.payout_fen) == (3_550, 100, 3_450)
        assert doc.closed_at == row_closed_at(session) and closed_days(session) == [DAY0]
        quiet = statement_document(session, "bus-b", DAY0)  # registered, nothing that day
        assert quiet.line is None
        with pytest.raises(SettlementError) as unknown:
            statement_document(session, "nobody", DAY0)
        assert unknown.value.code is SettlementCode.E_UNKNOWN_PAYEE
    data = statement_pdf(doc)
    assert pdf_string("35.50") in data and pdf_string("1.00") in data and pdf_string("34.50") in data
    world.close(DAY0)  # a rerun of the close: the same statement, the same bytes
    with Session(db_engine) as session:
        assert statement_pdf(statement_document(session, "shop-1", DAY0)) == data


def row_closed_at(session: Session) -> dt.datetime:
    from settlement.models import WindowRow

    window = session.get(WindowRow, DAY0)
    assert window is not None and window.closed_at is not None
    return window.closed_at
