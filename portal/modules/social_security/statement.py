"""Benefit statements (社会保险个人权益记录单), pure: the content, its verification code, the PDF.

``docs/social-security.md``, "Statements". A statement is a year of one person's record: per
insurance the months paid and the shares, and the personal account balances at the year's
end. Its **content** is canonical JSON (sorted keys, no spaces, UTF-8) holding only masked
personal data; the statement's number and its **verification code** are HMAC-SHA256 under
the statement key (derived from the portal's lookup key, which lives in the key store or the
settings) — the number over the person and the figures, so issuing the same figures again
names the same statement; the code over the number and the whole content, shown as 16
base32 characters (80 bits) in groups of four. The verify page recomputes the code from the
stored content: a PDF whose figures were edited still carries the code of the true content,
and the page shows the true (masked) figures beside "valid"; an edited code is "invalid".

The PDF is reportlab's canvas with ``invariant=1`` (fixed creation date and document id) and
the Adobe CID font ``STSong-Light`` for Chinese (no font file shipped): the same statement
renders the same bytes every time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
from dataclasses import dataclass
from typing import Any, Final

from .rules import ACCOUNT_INSURANCES, INSURANCES

STATEMENT_KEY_LABEL: Final = b"yikatong/social-security/statement-key/v1"
_NUMBER_LABEL: Final = b"yikatong/social-security/statement-number/v1\x00"
_CODE_LABEL: Final = b"yikatong/social-security/statement-code/v1\x00"
CODE_CHARS: Final = 16
NUMBER_PREFIX: Final = "SS"
CONTENT_VERSION: Final = 1

INSURANCE_NAMES: Final = {
    "pension": ("养老保险", "Pension"),
    "medical": ("医疗保险", "Medical"),
    "unemployment": ("失业保险", "Unemployment"),
    "work_injury": ("工伤保险", "Work injury"),
    "maternity": ("生育保险", "Maternity"),
}


def statement_key(lookup_key: bytes) -> bytes:
    """The statement HMAC key: the portal's lookup key (key store / settings) for this one use."""
    if len(lookup_key) < 32:
        raise ValueError("the lookup key must be at least 32 bytes")
    return hmac.new(lookup_key, STATEMENT_KEY_LABEL, hashlib.sha256).digest()


@dataclass(frozen=True, slots=True)
class InsuranceYear:
    insurance: str
    months: int
    employer_fen: int
    personal_fen: int
    account_fen: int


@dataclass(frozen=True, slots=True)
class Figures:
    """What a statement says, before it has a number: masked person, year, totals, balances."""

    person_masked: str
    name_masked: str
    year: int
    through_month: str
    insurances: tuple[InsuranceYear, ...]
    balances_fen: tuple[tuple[str, int], ...]  # (insurance, personal account at the year's end)
    as_of_entry: int

    def as_json(self) -> dict[str, Any]:
        return {
            "v": CONTENT_VERSION,
            "person": self.person_masked,
            "name": self.name_masked,
            "year": self.year,
            "through_month": self.through_month,
            "insurances": [
                {
                    "insurance": i.insurance,
                    "months": i.months,
                    "employer_fen": i.employer_fen,
                    "personal_fen": i.personal_fen,
                    "account_fen": i.account_fen,
                }
                for i in self.insurances
            ],
            "balances_fen": {name: fen for name, fen in self.balances_fen},
            "as_of_entry": self.as_of_entry,
        }


def canonical(value: dict[str, Any]) -> bytes:
    return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode("utf-8")


def statement_number(key: bytes, person_hash: str, figures: Figures) -> str:
    """``SS`` + 20 hex: keyed over the person and the figures (same figures, same statement; unguessable)."""
    text = person_hash.encode("ascii") + b"\x00" + canonical(figures.as_json())
    return NUMBER_PREFIX + hmac.new(key, _NUMBER_LABEL + text, hashlib.sha256).hexdigest()[:20].upper()


def content_of(figures: Figures, *, issued_on: str) -> bytes:
    """The stored content: the figures and the day of issue (``YYYY-MM-DD``, Asia/Shanghai)."""
    return canonical({**figures.as_json(), "issued_on": issued_on})


def verification_code(key: bytes, number: str, content: bytes) -> str:
    """16 base32 characters in groups of four: HMAC-SHA256(key, label ‖ number ‖ 0 ‖ SHA-256(content))."""
    digest = hmac.new(
        key, _CODE_LABEL + number.encode("ascii") + b"\x00" + hashlib.sha256(content).digest(), hashlib.sha256
    ).digest()
    text = base64.b32encode(digest[:10]).decode("ascii")
    return "-".join(text[i : i + 4] for i in range(0, CODE_CHARS, 4))


def normalise_code(text: str) -> str:
    """A typed code as ``XXXX-XXXX-XXXX-XXXX``: case, spaces and hyphens do not matter."""
    plain = "".join(c for c in text.upper() if c.isascii() and c.isalnum())[: CODE_CHARS + 1]
    return "-".join(plain[i : i + 4] for i in range(0, len(plain), 4))


def check_code(key: bytes, number: str, content: bytes, typed: str) -> bool:
    expected = verification_code(key, number, content)
    return hmac.compare_digest(normalise_code(typed).encode("ascii"), expected.encode("ascii"))


def read_content(content: str) -> dict[str, Any]:
    value = json.loads(content)
    assert isinstance(value, dict) and value.get("v") == CONTENT_VERSION
    return value


def yuan_text(fen: int) -> str:
    """``1,234.50``: integer fen by divmod, never a float."""
    sign = "-" if fen < 0 else ""
    whole, cents = divmod(abs(fen), 100)
    return f"{sign}{whole:,}.{cents:02d}"


def render_pdf(number: str, content: bytes, code: str, *, verify_url: str) -> bytes:
    """The statement as a one-page A4 PDF, the same bytes for the same arguments."""
    from reportlab.lib.pagesizes import A4
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.cidfonts import UnicodeCIDFont
    from reportlab.pdfgen import canvas

    if "STSong-Light" not in pdfmetrics.getRegisteredFontNames():
        pdfmetrics.registerFont(UnicodeCIDFont("STSong-Light"))
    data = json.loads(content)
    out = io.BytesIO()
    pdf = canvas.Canvas(out, pagesize=A4, invariant=1, pageCompression=1)
    pdf.setTitle(f"社会保险个人权益记录单 {number}")
    pdf.setAuthor("Yikatong Xianyang")
    pdf.setSubject(f"Social insurance statement {data['year']}")
    pdf.setCreator("Yikatong")
    width, height = A4
    x, y = 56.0, height - 72.0

    def line(text: str, size: float = 10.5, dy: float = 16.0, at: float | None = None) -> None:
        nonlocal y
        pdf.setFont("STSong-Light", size)
        pdf.drawString(at if at is not None else x, y, text)
        y -= dy

    line(f"咸阳市社会保险个人权益记录单（{data['year']} 年度）", 16, 22)
    line(f"Xianyang social insurance statement, year {data['year']}", 11, 24)
    line(f"记录单编号 Statement no.: {number}")
    line(f"姓名 Name: {data['name']}")
    line(f"公民身份号码 ID number: {data['person']}")
    line(f"记录截至 Record through: {data['through_month']}    出具日期 Issued: {data['issued_on']}", dy=26)
    columns = (x, x + 150, x + 210, x + 300, x + 390)
    heads = ("险种 Insurance", "月数 Months", "单位缴纳 Employer", "个人缴纳 Personal", "记入个人账户 Account")
    pdf.setFont("STSong-Light", 9.5)
    for at, head in zip(columns, heads, strict=True):
        pdf.drawString(at, y, head)
    y -= 6
    pdf.line(x, y, width - x, y)
    y -= 14
    for item in data["insurances"]:
        zh, en = INSURANCE_NAMES[item["insurance"]]
        cells = (
            f"{zh} {en}",
            str(item["months"]),
            yuan_text(item["employer_fen"]),
            yuan_text(item["personal_fen"]),
            yuan_text(item["account_fen"]),
        )
        pdf.setFont("STSong-Light", 10)
        for at, cell in zip(columns, cells, strict=True):
            pdf.drawString(at, y, cell)
        y -= 16
    y -= 12
    line("个人账户年末余额 Personal account at the year's end (元 CNY):", 11, 18)
    for name, fen in sorted(data["balances_fen"].items(), key=lambda kv: INSURANCES.index(kv[0])):
        zh, en = INSURANCE_NAMES[name]
        line(f"{zh} {en}: {yuan_text(fen)}", at=x + 16)
    y -= 14
    line(f"验证码 Verification code: {code}", 13, 20)
    line(f"核验 Verify at: {verify_url}  (编号与验证码 number and code)", 9.5, 14)
    line("本记录单中的个人信息已作遮蔽处理。Personal data on this statement is masked.", 9, 14)
    pdf.showPage()
    pdf.save()
    return out.getvalue()


__all__ = [
    "ACCOUNT_INSURANCES",
    "INSURANCE_NAMES",
    "Figures",
    "InsuranceYear",
    "canonical",
    "check_code",
    "content_of",
    "normalise_code",
    "read_content",
    "render_pdf",
    "statement_key",
    "statement_number",
    "verification_code",
    "yuan_text",
]
