"""The social security rules, pure: the contribution file, its rows, the personal account, corrections.

``docs/social-security.md``. No I/O here: the shell (``service.py``) reads the file, looks up
what was imported before and writes the rows; this module decides what a row is, which rows
are bad and why, what a row credits to the personal account, and what a correction is.

- **The file** is UTF-8 CSV (a BOM is dropped) with the header ``HEADER``; one row per person,
  month, insurance and payer. Amounts are integer fen (the bureau's export, no decimals to
  round). Blank lines are skipped; everything else is a row and is checked.
- **Every bad field of every row is reported** (line, field, code, reason), so a clerk fixes a
  file in one pass; one bad row refuses the whole file (the shell imports nothing).
- **Who pays what** (Social Insurance Law of the PRC, arts. 12, 23, 33, 44, 53): the employer
  and the employee share pension, medical and unemployment; work injury and maternity are the
  employer's alone, so a personal share there is a bad row. Shares never exceed the base.
- **The personal account** is credited with the employee's own share of pension and of
  medical insurance (``ACCOUNT_INSURANCES``); the employer's shares go to the pooled funds and
  the other insurances have no personal account. Interest (记账利率) is not credited yet.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import re
from dataclasses import dataclass
from typing import Final

from portal.errors import PortalError
from portal.identity import ResidentId, parse_id_number

from .errors import SocialSecurityError, SsCode

INSURANCES: Final = ("pension", "medical", "unemployment", "work_injury", "maternity")
ACCOUNT_INSURANCES: Final = ("pension", "medical")
EMPLOYER_ONLY: Final = ("work_injury", "maternity")
HEADER: Final = ("id_number", "month", "insurance", "payer_id", "base_fen", "employer_fen", "personal_fen")
FILE_BYTES_MAX: Final = 16 * 1024 * 1024
ROWS_MAX: Final = 200_000
AMOUNT_FEN_MAX: Final = 1_000_000_000  # 10 million yuan: no monthly base comes near it
MONTH_MIN: Final = "1991-01"  # the personal accounts begin with the 1991 pension reform
FIELD_CHARS_MAX: Final = 64
_MONTH: Final = re.compile(r"([0-9]{4})-(0[1-9]|1[0-2])")
_FEN: Final = re.compile(r"[0-9]{1,10}")
_ROW_KEY_LABEL: Final = b"yikatong/social-security/row/v1\x00"

# GB 32100-2015, the unified social credit code: 31 characters (no I, O, S, V, Z), weights 3^i mod 31.
USCC_CHARS: Final = "0123456789ABCDEFGHJKLMNPQRTUWXY"
_USCC_WEIGHTS: Final = tuple(pow(3, i, 31) for i in range(17))
_USCC_SHAPE: Final = re.compile(r"[0-9A-HJ-NPQRTUWXY]{2}[0-9]{6}[0-9A-HJ-NPQRTUWXY]{10}")


def uscc_check_char(first17: str) -> str:
    """The check character of the first 17 characters of a unified social credit code."""
    total = sum(USCC_CHARS.index(c) * w for c, w in zip(first17, _USCC_WEIGHTS, strict=True))
    return USCC_CHARS[(31 - total % 31) % 31]


def is_uscc(text: str) -> bool:
    """An 18-character unified social credit code whose check character matches (GB 32100-2015)."""
    return _USCC_SHAPE.fullmatch(text) is not None and uscc_check_char(text[:17]) == text[17]


@dataclass(frozen=True, slots=True)
class Amounts:
    """One month's contribution of one insurance: the base and the two shares, integer fen."""

    base_fen: int
    employer_fen: int
    personal_fen: int

    def __sub__(self, other: Amounts) -> Amounts:
        return Amounts(
            self.base_fen - other.base_fen,
            self.employer_fen - other.employer_fen,
            self.personal_fen - other.personal_fen,
        )

    def __add__(self, other: Amounts) -> Amounts:
        return Amounts(
            self.base_fen + other.base_fen,
            self.employer_fen + other.employer_fen,
            self.personal_fen + other.personal_fen,
        )


ZERO: Final = Amounts(0, 0, 0)


def account_fen(insurance: str, amounts: Amounts) -> int:
    """What a contribution credits to the personal account: the employee's share of pension and medical."""
    return amounts.personal_fen if insurance in ACCOUNT_INSURANCES else 0


def amount_problems(insurance: str, amounts: Amounts) -> list[tuple[str, str]]:
    """(field, reason) for each contribution rule the amounts break; empty when they keep them all."""
    problems: list[tuple[str, str]] = []
    for name in ("base_fen", "employer_fen", "personal_fen"):
        value = getattr(amounts, name)
        if type(value) is not int or not 0 <= value <= AMOUNT_FEN_MAX:
            problems.append((name, f"a whole number of fen from 0 to {AMOUNT_FEN_MAX}"))
    if problems:
        return problems
    if amounts.base_fen == 0:
        problems.append(("base_fen", "the contribution base is more than 0"))
    elif amounts.employer_fen + amounts.personal_fen > amounts.base_fen:
        problems.append(("employer_fen", "the two shares together exceed the contribution base"))
    if insurance in EMPLOYER_ONLY and amounts.personal_fen != 0:
        problems.append(("personal_fen", f"{insurance} is paid by the employer alone: the personal share is 0"))
    if amounts.employer_fen + amounts.personal_fen == 0:
        problems.append(("employer_fen", "nothing was paid: a row records a contribution"))
    return problems


def parse_month(text: str, *, today: dt.date) -> str | None:
    """``YYYY-MM`` from ``MONTH_MIN`` to this month, else None."""
    if _MONTH.fullmatch(text) is None:
        return None
    if not MONTH_MIN <= text <= f"{today.year:04d}-{today.month:02d}":
        return None
    return text


def row_key(person_hash: str, month: str, insurance: str, payer_id: str) -> str:
    """A contribution's identity: one person, month, insurance and payer is one contribution (hex)."""
    text = f"{person_hash}|{month}|{insurance}|{payer_id}".encode("ascii")
    return hashlib.sha256(_ROW_KEY_LABEL + text).hexdigest()


@dataclass(frozen=True, slots=True)
class Row:
    """A good row of the file; the ID number only as the checked value (it prints masked)."""

    line: int
    person: ResidentId
    month: str
    insurance: str
    payer_id: str
    amounts: Amounts


@dataclass(frozen=True, slots=True)
class BadRow:
    """A reason a file is refused: where (line, field) and why (code, sentence without the value)."""

    line: int
    field: str
    code: SsCode
    reason: str


@dataclass(frozen=True, slots=True)
class Parsed:
    rows: tuple[Row, ...]
    bad: tuple[BadRow, ...]


def decode(raw: bytes) -> str:
    """The file's text: UTF-8 (a BOM dropped), within ``FILE_BYTES_MAX``; else the file's refusal."""
    if len(raw) > FILE_BYTES_MAX:
        raise SocialSecurityError(SsCode.E_SS_FILE_TOO_LARGE, f"a contribution file has at most {FILE_BYTES_MAX} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SocialSecurityError(SsCode.E_SS_FILE_ENCODING, f"byte {exc.start} is not UTF-8") from None
    return text.removeprefix("\ufeff")


def _fen(text: str) -> int | None:
    return int(text) if _FEN.fullmatch(text) else None


def parse_file(raw: bytes, *, today: dt.date) -> Parsed:
    """Every row of the file checked: the good rows and every bad field (file-level faults raise)."""
    reader = csv.reader(io.StringIO(decode(raw), newline=""), strict=False)
    header: list[str] | None = None
    rows: list[Row] = []
    bad: list[BadRow] = []
    seen: dict[tuple[str, str, str, str], int] = {}
    count = 0
    try:
        for fields in reader:
            line = reader.line_num
            if header is None:
                header = [f.strip().lower() for f in fields]
                if tuple(header) != HEADER:
                    raise SocialSecurityError(SsCode.E_SS_FILE_HEADER, "line 1 must read: " + ",".join(HEADER))
                continue
            if not fields or all(not f.strip() for f in fields):
                continue  # a blank line
            count += 1
            if count > ROWS_MAX:
                raise SocialSecurityError(
                    SsCode.E_SS_FILE_TOO_LARGE, f"a contribution file has at most {ROWS_MAX} rows"
                )
            row, problems = _row(line, fields, today)
            if row is not None:
                key = (row.person.number, row.month, row.insurance, row.payer_id)
                if key in seen:
                    problems.append(
                        BadRow(
                            line,
                            "row",
                            SsCode.E_SS_ROW_DUPLICATE,
                            f"the same person, month, insurance and payer as line {seen[key]}",
                        )
                    )
                    row = None
                else:
                    seen[key] = line
            bad.extend(problems)
            if row is not None:
                rows.append(row)
    except csv.Error as exc:
        bad.append(BadRow(reader.line_num, "row", SsCode.E_SS_ROW_COLUMNS, f"not CSV: {exc}"[:200]))
    if header is None:
        raise SocialSecurityError(SsCode.E_SS_FILE_HEADER, "the file is empty: line 1 must be the header")
    if count == 0:
        raise SocialSecurityError(SsCode.E_SS_FILE_EMPTY, "the file has a header and no rows")
    return Parsed(tuple(rows), tuple(bad))


def _row(line: int, fields: list[str], today: dt.date) -> tuple[Row | None, list[BadRow]]:
    if len(fields) != len(HEADER):
        return None, [
            BadRow(line, "row", SsCode.E_SS_ROW_COLUMNS, f"{len(fields)} fields, the header has {len(HEADER)}")
        ]
    values = dict(zip(HEADER, (f.strip()[: FIELD_CHARS_MAX + 1] for f in fields), strict=True))
    problems: list[BadRow] = []
    person: ResidentId | None = None
    try:
        person = parse_id_number(values["id_number"], today=today)
    except PortalError as exc:
        problems.append(BadRow(line, "id_number", SsCode.E_SS_ROW_ID_NUMBER, f"{exc.code.value}: {exc.message}"))
    month = parse_month(values["month"], today=today)
    if month is None:
        problems.append(BadRow(line, "month", SsCode.E_SS_ROW_MONTH, f"YYYY-MM from {MONTH_MIN} to this month"))
    insurance = values["insurance"].lower()
    if insurance not in INSURANCES:
        problems.append(BadRow(line, "insurance", SsCode.E_SS_ROW_INSURANCE, "one of " + ", ".join(INSURANCES)))
    payer = values["payer_id"].upper()
    if not is_uscc(payer):
        problems.append(
            BadRow(line, "payer_id", SsCode.E_SS_ROW_PAYER, "18 characters of GB 32100 with a matching check character")
        )
    fen = {name: _fen(values[name]) for name in ("base_fen", "employer_fen", "personal_fen")}
    for name, value in fen.items():
        if value is None or value > AMOUNT_FEN_MAX:
            problems.append(
                BadRow(
                    line,
                    name,
                    SsCode.E_SS_ROW_AMOUNT,
                    f"a whole number of fen from 0 to {AMOUNT_FEN_MAX} (digits only)",
                )
            )
    amounts: Amounts | None = None
    if all(v is not None for v in fen.values()) and not any(p.code is SsCode.E_SS_ROW_AMOUNT for p in problems):
        amounts = Amounts(int(fen["base_fen"] or 0), int(fen["employer_fen"] or 0), int(fen["personal_fen"] or 0))
        if insurance in INSURANCES:
            for field, reason in amount_problems(insurance, amounts):
                problems.append(BadRow(line, field, SsCode.E_SS_ROW_RULE, reason))
    if problems or person is None or month is None or amounts is None:
        return None, problems
    return Row(line, person, month, insurance, payer, amounts), []


def correction_delta(insurance: str, current: Amounts, target: Amounts) -> Amounts:
    """The correction entry that takes ``current`` to ``target``: their difference, checked.

    The target must itself keep the contribution rules (a correction cannot make a row an
    import would refuse), and must differ from what is on record.
    """
    problems = amount_problems(insurance, target)
    if problems:
        field, reason = problems[0]
        raise SocialSecurityError(SsCode.E_SS_CORRECTION_AMOUNT, f"{field}: {reason}")
    if target == current:
        raise SocialSecurityError(SsCode.E_SS_CORRECTION_NOTHING, "the amounts on record are already these")
    return target - current


REASON_CHARS_MIN: Final = 5
REASON_CHARS_MAX: Final = 500


def check_reason(text: str) -> str:
    reason = " ".join(text.split())
    if not REASON_CHARS_MIN <= len(reason) <= REASON_CHARS_MAX or re.search(r"\d{11,}|[0-9A-Fa-f]{20}", reason):
        raise SocialSecurityError(
            SsCode.E_SS_CORRECTION_REASON,
            f"{REASON_CHARS_MIN} to {REASON_CHARS_MAX} characters, and no ID, mobile or card number in it",
        )
    return reason


__all__ = [
    "ACCOUNT_INSURANCES",
    "AMOUNT_FEN_MAX",
    "EMPLOYER_ONLY",
    "HEADER",
    "INSURANCES",
    "ZERO",
    "Amounts",
    "BadRow",
    "Parsed",
    "Row",
    "account_fen",
    "amount_problems",
    "check_reason",
    "correction_delta",
    "decode",
    "is_uscc",
    "parse_file",
    "parse_month",
    "row_key",
    "uscc_check_char",
]
