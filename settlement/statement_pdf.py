"""A payee's daily statement as PDF: the close's figures for one payee and one closed window.

Issue 11, "Operator console and reports": a daily report per payee, downloadable from the
staff console (``portal/pages_parties.py``). It is rendered from the stored statement row of the
close only (``settlement_statements``), never from the running totals or the taps, so it says
what the close paid and the payout files carry (``docs/settlement.md``, "Console: parties and
statements").

- **The same statement gives the same bytes.** reportlab's ``invariant=1`` (no random document
  id, no clock), the creation date taken from the close (``settlement_windows.closed_at``), no
  page compression (the content streams are readable text, which is also how the tests read
  them), fixed metadata. A statement can be hashed, filed and compared.
- **Chinese names without a shipped font.** Payee and account names are drawn in the built-in
  CID font ``STSong-Light`` (Adobe-GB1; the viewer supplies the glyphs), labels in Chinese and
  English, figures in Helvetica.
- **Money is integer fen**, shown as yuan by ``yuan_text`` with integer arithmetic only.
- **Personal data is minimised:** the account number shows its last 4 digits only.
"""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.orm import Session

from clearing.models import Operator
from settlement.close import StatementLine, line_of
from settlement.errors import SettlementCode, SettlementError, mask_account_number
from settlement.fees import FeeSchedule, Rounding
from settlement.models import StatementRow, WindowRow

CJK_FONT: Final = "STSong-Light"
LATIN_FONT: Final = "Helvetica"
LATIN_BOLD: Final = "Helvetica-Bold"
SHANGHAI: Final = ZoneInfo("Asia/Shanghai")
PAGE_W: Final = 595.2756  # A4 in points
PAGE_H: Final = 841.8898
MARGIN: Final = 56.0
NAME_LINES_MAX: Final = 4  # a 128-character name wraps to at most 4 lines at 12 pt
ROUNDING_WORDS: Final = {Rounding.HALF_UP: "half up", Rounding.HALF_EVEN: "half even", Rounding.DOWN: "down"}
KIND_WORDS: Final = {"merchant": ("商户", "merchant"), "bus_operator": ("公交运营商", "bus operator")}


@dataclass(frozen=True, slots=True)
class StatementDocument:
    """What one statement PDF shows: the payee, the window and its close's line (None: nothing that day)."""

    business_day: dt.date
    payee_id: str
    payee_name: str
    payee_kind: str
    payer_name: str
    closed_at: dt.datetime
    line: StatementLine | None

    def __post_init__(self) -> None:
        assert self.closed_at.tzinfo is not None and self.closed_at.utcoffset() is not None, "aware close time"
        assert self.line is None or self.line.payee_id == self.payee_id


# --- amounts ------------------------------------------------------------------------------------


def yuan_text(fen: int) -> str:
    """``12,179.04`` for 1 217 904 fen, ``-4.00`` for −400: divmod and int grouping, never a float."""
    if type(fen) is not int:
        raise TypeError(f"money is integer fen, got {type(fen).__name__}")
    sign = "-" if fen < 0 else ""
    whole, cents = divmod(abs(fen), 100)
    return f"{sign}{whole:,}.{cents:02d}"


def schedule_text(schedule: FeeSchedule) -> str:
    """``38 bps (0.38 %), min 1.00, cap 50.00, half up``: the terms the close applied."""
    whole, hundredths = divmod(schedule.bps, 100)
    cap = "no cap" if schedule.cap_fen is None else f"cap {yuan_text(schedule.cap_fen)}"
    return (
        f"{schedule.bps} bps ({whole}.{hundredths:02d} %), min {yuan_text(schedule.min_fen)}, {cap}, "
        f"{ROUNDING_WORDS[schedule.rounding]}"
    )


def stamp_text(moment: dt.datetime) -> str:
    local = moment.astimezone(SHANGHAI)
    return f"{local:%Y-%m-%d %H:%M:%S} +08:00"


def pdf_date(moment: dt.datetime) -> str:
    """The PDF date string (ISO 32000-1, 7.9.4) of an aware time, in UTC."""
    utc = moment.astimezone(dt.UTC)
    return f"D:{utc:%Y%m%d%H%M%S}+00'00'"


# --- loading ------------------------------------------------------------------------------------


def statement_document(session: Session, payee_id: str, day: dt.date) -> StatementDocument:
    """The statement of ``payee_id`` for the closed window ``day``.

    ``E_UNKNOWN_PAYEE`` for an id that is no merchant or operator, ``E_WINDOW_NOT_CLOSED`` for a
    day whose window is open, only sealed, or was sealed empty by a later close (no close ran for
    it). A known payee without a line in a closed window (no sales, refunds or carry that day)
    gets a statement saying so: every payee has a statement for every closed day.
    """
    operator = session.get(Operator, payee_id)
    if operator is None:
        raise SettlementError(SettlementCode.E_UNKNOWN_PAYEE, f"no merchant or operator {payee_id!r}")
    window = session.get(WindowRow, day)
    if window is None or window.state != "closed" or window.closed_at is None:
        raise SettlementError(
            SettlementCode.E_WINDOW_NOT_CLOSED, f"the window of {day} has not been closed: no statement yet"
        )
    row = session.scalar(
        select(StatementRow).where(
            StatementRow.window_day == day, StatementRow.payee_account_id == operator.payable_account_id
        )
    )
    return StatementDocument(
        business_day=day,
        payee_id=operator.operator_id,
        payee_name=row.payee_name if row else operator.name,
        payee_kind=operator.kind,
        payer_name=window.payer_name or "",
        closed_at=window.closed_at,
        line=line_of(row) if row is not None else None,
    )


def closed_days(session: Session, limit: int = 31) -> list[dt.date]:
    """The closed days, newest first (the console's download list): every payee has a statement for each."""
    assert 0 < limit <= 366
    stmt = (
        select(WindowRow.business_day)
        .where(WindowRow.state == "closed")
        .order_by(WindowRow.business_day.desc())
        .limit(limit)
    )
    return list(session.scalars(stmt))


# --- rendering ----------------------------------------------------------------------------------


def _register_fonts() -> None:
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.cidfonts import UnicodeCIDFont

    if CJK_FONT not in pdfmetrics.getRegisteredFontNames():
        pdfmetrics.registerFont(UnicodeCIDFont(CJK_FONT))


def wrap(text: str, font: str, size: float, width: float) -> list[str]:
    """Greedy wrap by character (CJK names have no spaces to break at)."""
    from reportlab.pdfbase.pdfmetrics import stringWidth

    lines: list[str] = []
    current = ""
    for ch in text:
        if current and stringWidth(current + ch, font, size) > width:
            lines.append(current)
            current = ch.lstrip() if ch.isspace() else ch
        else:
            current += ch
    if current or not lines:
        lines.append(current)
    return lines


@dataclass(frozen=True, slots=True)
class Row:
    """One labelled figure: Chinese label, English label, value (Helvetica, right-aligned) or text."""

    zh: str
    en: str
    value: str
    cjk_value: bool = False  # a name: drawn in the CJK font, left of the value column
    strong: bool = False


def statement_rows(doc: StatementDocument) -> list[tuple[str, str, list[Row]]]:
    """The sections of the statement, pure: (Chinese heading, English heading, rows)."""
    line = doc.line
    if line is None:
        return [
            (
                "本期无交易",
                "Nothing in this window",
                [
                    Row("说明", "Note", "No sales, refunds or carry for this payee in this window."),
                    Row("本期付款", "Payout", yuan_text(0), strong=True),
                ],
            )
        ]
    t = line.totals
    sales = [
        Row("交易笔数", "Sales", str(t.count)),
        Row("销售总额", "Gross sales", yuan_text(t.gross_fen)),
        Row("退款笔数", "Refunds (count)", str(t.refund_count)),
        Row("退款金额", "Refunds", yuan_text(t.refunds_fen)),
        Row("净销售额", "Net sales", yuan_text(t.gross_fen - t.refunds_fen), strong=True),
        Row("其中迟到", "Of which late", f"{t.late_count} · {yuan_text(t.late_fen)}"),
    ]
    fees = [
        Row("费率", "Fee schedule", schedule_text(line.schedule)),
        Row("手续费", "Fee", yuan_text(line.fee_fen), strong=True),
    ]
    payout = [
        Row("换乘优惠分摊", "Transfer discount sharing", yuan_text(line.sharing_fen)),
        Row("本期净额", "Net (net sales + sharing - fee)", yuan_text(line.net_fen)),
        Row("上期结转", "Carried in", yuan_text(line.carry_in_fen)),
        Row("应付金额", "Due", yuan_text(line.carry_in_fen + line.net_fen)),
        Row("本期付款", "Payout", yuan_text(line.payout_fen), strong=True),
        Row("结转下期", "Carried out", yuan_text(line.carry_out_fen)),
    ]
    if line.account is not None:
        payout.append(Row("收款户名", "Account name", line.account.name, cjk_value=True))
        payout.append(Row("收款账号", "Account number", mask_account_number(line.account.number)))
        payout.append(Row("联行号", "Bank code (CNAPS)", line.account.cnaps))
    else:
        payout.append(Row("收款账户", "Payout account", "none registered"))
    if line.end_to_end_id is not None:
        payout.append(Row("付款编号", "End-to-end id", line.end_to_end_id))
    if line.held_reason is not None:
        payout.append(Row("暂缓原因", "Held", line.held_reason))
    return [("销售", "Sales", sales), ("手续费", "Fee", fees), ("结算", "Payout", payout)]


def check_text(doc: StatementDocument) -> str:
    """The statement's own arithmetic, printed so a reader can check it: fee + net == gross − refunds + sharing."""
    if doc.line is None:
        return "Nothing to add up."
    t, line = doc.line.totals, doc.line
    return (
        f"Fee + net = gross - refunds + transfer sharing: {yuan_text(line.fee_fen)} + {yuan_text(line.net_fen)} = "
        f"{yuan_text(t.gross_fen)} - {yuan_text(t.refunds_fen)} + {yuan_text(line.sharing_fen)} = "
        f"{yuan_text(t.gross_fen - t.refunds_fen + line.sharing_fen)}. "
        f"Carried out = carried in + net - payout = {yuan_text(line.carry_out_fen)}."
    )


def statement_pdf(doc: StatementDocument) -> bytes:
    """The statement as PDF bytes; the same document gives the same bytes (module docstring)."""
    from reportlab.pdfbase.pdfmetrics import stringWidth
    from reportlab.pdfgen.canvas import Canvas

    _register_fonts()
    out = io.BytesIO()
    canvas = Canvas(out, pagesize=(PAGE_W, PAGE_H), invariant=1, pageCompression=0)
    stamp = pdf_date(doc.closed_at)
    canvas.setDateFormatter(lambda *_: stamp)
    canvas.setTitle(f"Settlement statement {doc.payee_id} {doc.business_day.isoformat()}")
    canvas.setAuthor("Yikatong")
    canvas.setCreator("Yikatong settlement")
    canvas.setSubject(f"Settlement window {doc.business_day.isoformat()}")
    canvas.setKeywords("")
    width = PAGE_W - 2 * MARGIN
    y = PAGE_H - MARGIN

    canvas.setFont(CJK_FONT, 18)
    canvas.drawString(MARGIN, y, "一卡通结算对账单")
    canvas.setFont(LATIN_BOLD, 14)
    canvas.drawRightString(PAGE_W - MARGIN, y, "Settlement statement")
    y -= 26
    canvas.setFont(LATIN_FONT, 10)
    canvas.drawString(MARGIN, y, f"Business day {doc.business_day.isoformat()} (Asia/Shanghai)")
    canvas.drawRightString(PAGE_W - MARGIN, y, f"Closed {stamp_text(doc.closed_at)}")
    y -= 14
    canvas.setFont(CJK_FONT, 10)
    canvas.drawString(MARGIN, y, "付款方")
    canvas.setFont(LATIN_FONT, 10)
    canvas.drawString(MARGIN + 34, y, "Payer")
    canvas.setFont(CJK_FONT, 10)
    canvas.drawString(MARGIN + 72, y, wrap(doc.payer_name, CJK_FONT, 10, width - 72)[0])
    y -= 24

    zh_kind, en_kind = KIND_WORDS.get(doc.payee_kind, (doc.payee_kind, doc.payee_kind))
    canvas.setFont(CJK_FONT, 12)
    for text in wrap(doc.payee_name, CJK_FONT, 12, width)[:NAME_LINES_MAX]:
        canvas.drawString(MARGIN, y, text)
        y -= 16
    canvas.setFont(CJK_FONT, 10)
    canvas.drawString(MARGIN, y, zh_kind)
    canvas.setFont(LATIN_FONT, 10)
    canvas.drawString(MARGIN + 8 + stringWidth(zh_kind, CJK_FONT, 10), y, en_kind)
    canvas.drawRightString(PAGE_W - MARGIN, y, f"Payee id {doc.payee_id}")
    y -= 10
    canvas.line(MARGIN, y, PAGE_W - MARGIN, y)
    y -= 22

    for zh, en, rows in statement_rows(doc):
        canvas.setFont(CJK_FONT, 12)
        canvas.drawString(MARGIN, y, zh)
        canvas.setFont(LATIN_BOLD, 11)
        canvas.drawString(MARGIN + 64, y, en)
        y -= 18
        y = _draw_rows(canvas, rows, y)
        y -= 10

    canvas.line(MARGIN, y, PAGE_W - MARGIN, y)
    y -= 16
    canvas.setFont(LATIN_FONT, 9)
    for text in wrap(check_text(doc), LATIN_FONT, 9, width):
        canvas.drawString(MARGIN, y, text)
        y -= 12
    canvas.drawString(MARGIN, y, "Amounts in CNY (yuan). From the close's stored statement; the payout files carry")
    y -= 12
    canvas.drawString(MARGIN, y, "the same figures. Account numbers are shown by their last 4 digits.")
    canvas.showPage()
    canvas.save()
    return out.getvalue()


def _draw_rows(canvas: object, rows: Sequence[Row], y: float) -> float:
    from reportlab.pdfgen.canvas import Canvas

    assert isinstance(canvas, Canvas)
    right = PAGE_W - MARGIN
    for row in rows:
        canvas.setFont(CJK_FONT, 10)
        canvas.drawString(MARGIN + 8, y, row.zh)
        canvas.setFont(LATIN_FONT, 10)
        canvas.drawString(MARGIN + 72, y, row.en)
        if row.cjk_value:
            canvas.setFont(CJK_FONT, 10)
            text = wrap(row.value, CJK_FONT, 10, right - (MARGIN + 200))[0]
            canvas.drawRightString(right, y, text)
        else:
            canvas.setFont(LATIN_BOLD if row.strong else LATIN_FONT, 10)
            canvas.drawRightString(right, y, row.value)
        y -= 15
    return y


__all__ = [
    "StatementDocument",
    "check_text",
    "closed_days",
    "pdf_date",
    "schedule_text",
    "statement_document",
    "statement_pdf",
    "statement_rows",
    "wrap",
    "yuan_text",
]
