"""Payout bank accounts: name, number and the bank's 12-digit CNAPS code (联行号), format only.

Each check is a named step with its own code (STYLE.md, after Web eID), so a form can say
which field is wrong. Nothing is normalised: a payout goes where the fields say, and a
silently "fixed" account number pays a stranger. Full-width digits (``１２３``, what a
Chinese IME types) are refused with the sentence saying so; the console may convert them
before it submits, in front of the person typing.

What is checked and why (``docs/settlement.md``, "Bank accounts"):
- **Name**: 1..70 characters (ISO 20022 ``Max70Text``, the account name field of
  pain.001), no leading or trailing space, no control, format, private-use, unassigned or
  line-separator characters (a bank file cannot carry them), and no leading ``= + - @``,
  which spreadsheet programs run as a formula when finance opens the payout CSV.
- **Number**: 8..30 ASCII digits. Chinese banks' account numbers are digits only; their
  lengths are bank-specific (about 12 to 23 digits, card-linked accounts 16 to 19), and no
  national standard fixes them, so the bounds are generous. There is no checksum to test:
  card numbers carry a Luhn digit but settlement accounts are usually not card numbers, and
  the two cannot be told apart from the digits.
- **CNAPS code**: exactly 12 ASCII digits, read as bank class code (3, 行别代码, e.g. 102),
  region code (4, 地区代码), branch number (4) and a check digit (1, 校验位). The check
  digit's algorithm is in the People's Bank of China's participant-code rules and is not
  published; we found no public specification, so the digit is kept and not verified. A real
  code is confirmed only by the PBOC bank code directory, which the operator loads, not this
  module.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Final

from settlement.errors import SettlementCode, SettlementError, mask_account_number

ACCOUNT_NAME_LEN_MAX: Final = 70
ACCOUNT_NUMBER_LEN_MIN: Final = 8
ACCOUNT_NUMBER_LEN_MAX: Final = 30
CNAPS_LEN: Final = 12
# Cc control, Cf format (zero-width and bidi controls), Cs surrogates, Co private use,
# Cn unassigned, Zl/Zp line and paragraph separators.
_REFUSED_CATEGORIES: Final = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
_FORMULA_STARTS: Final = frozenset("=+-@")


def _ascii_digits(text: str) -> bool:
    return text.isascii() and text.isdigit()


def _has_wide_digits(text: str) -> bool:
    return any(not ch.isascii() and ch.isdigit() for ch in text)


def text_problem(what: str, text: str, len_max: int) -> str | None:
    """Why ``text`` cannot go in a bank file or the payout CSV, or None; shared by names of every kind."""
    if not isinstance(text, str) or not text:
        return f"the {what} is empty"
    if len(text) > len_max:
        return f"the {what} has {len(text)} characters; at most {len_max}"
    if text != text.strip():
        return f"the {what} starts or ends with a space"
    bad = next((ch for ch in text if unicodedata.category(ch) in _REFUSED_CATEGORIES), None)
    if bad is not None:
        return f"the {what} contains the character U+{ord(bad):04X}, which a bank file cannot carry"
    if text[0] in _FORMULA_STARTS:
        return f"the {what} starts with {text[0]!r}, which spreadsheets run as a formula"
    return None


def check_account_name(name: str) -> str:
    """The name as given, or ``E_BAD_ACCOUNT_NAME`` saying which rule it breaks."""
    problem = text_problem("account name", name, ACCOUNT_NAME_LEN_MAX)
    if problem is not None:
        raise SettlementError(SettlementCode.E_BAD_ACCOUNT_NAME, problem)
    return name


def check_account_number(number: str) -> str:
    """The number as given, or ``E_BAD_ACCOUNT_NUMBER`` (the message masks all but the last 4)."""
    code = SettlementCode.E_BAD_ACCOUNT_NUMBER
    if not isinstance(number, str) or not number:
        raise SettlementError(code, "the account number is empty")
    if _has_wide_digits(number):
        raise SettlementError(code, "the account number has full-width or non-ASCII digits; type 0-9")
    if not _ascii_digits(number):
        raise SettlementError(code, f"the account number {mask_account_number(number)} has characters other than 0-9")
    if not ACCOUNT_NUMBER_LEN_MIN <= len(number) <= ACCOUNT_NUMBER_LEN_MAX:
        raise SettlementError(
            code,
            f"the account number {mask_account_number(number)} has {len(number)} digits;"
            f" {ACCOUNT_NUMBER_LEN_MIN} to {ACCOUNT_NUMBER_LEN_MAX} expected",
        )
    return number


def check_cnaps_code(cnaps: str) -> str:
    """The 12-digit CNAPS code as given, or ``E_BAD_CNAPS_CODE``; the check digit is not verifiable."""
    code = SettlementCode.E_BAD_CNAPS_CODE
    if not isinstance(cnaps, str) or not cnaps:
        raise SettlementError(code, "the bank code (联行号) is empty")
    if _has_wide_digits(cnaps):
        raise SettlementError(code, "the bank code (联行号) has full-width or non-ASCII digits; type 0-9")
    if not _ascii_digits(cnaps) or len(cnaps) != CNAPS_LEN:
        raise SettlementError(code, f"the bank code (联行号) {cnaps!r} is not exactly {CNAPS_LEN} digits 0-9")
    return cnaps


@dataclass(frozen=True, slots=True)
class CnapsParts:
    """A CNAPS code read by position; only the format is known to be right."""

    bank_class: str  # 3 digits, 行别代码 (102 ICBC, 103 ABC, 104 BOC, 105 CCB, …)
    region: str  # 4 digits, 地区代码 (the PBOC's city code)
    branch: str  # 4 digits, the branch within bank and region
    check_digit: str  # 1 digit, 校验位; the algorithm is not public, so it is not verified


def cnaps_parts(cnaps: str) -> CnapsParts:
    cnaps = check_cnaps_code(cnaps)
    return CnapsParts(cnaps[0:3], cnaps[3:7], cnaps[7:11], cnaps[11])


@dataclass(frozen=True, slots=True)
class BankAccount:
    """A payout account; an instance always passed every check, so a payout cannot carry a bad one."""

    name: str
    number: str
    cnaps: str

    def __post_init__(self) -> None:
        check_account_name(self.name)
        check_account_number(self.number)
        check_cnaps_code(self.cnaps)

    def __repr__(self) -> str:  # the number is personal data: keep it out of logs and tracebacks
        return f"BankAccount(name={self.name!r}, number={mask_account_number(self.number)!r}, cnaps={self.cnaps!r})"


def bank_account_problems(name: str, number: str, cnaps: str) -> tuple[SettlementError, ...]:
    """Every field's error at once (empty when the account is valid), for a form to show together."""
    problems: list[SettlementError] = []
    for check, value in ((check_account_name, name), (check_account_number, number), (check_cnaps_code, cnaps)):
        try:
            check(value)
        except SettlementError as error:
            problems.append(error)
    return tuple(problems)


__all__ = [
    "ACCOUNT_NAME_LEN_MAX",
    "ACCOUNT_NUMBER_LEN_MAX",
    "ACCOUNT_NUMBER_LEN_MIN",
    "CNAPS_LEN",
    "BankAccount",
    "CnapsParts",
    "bank_account_problems",
    "check_account_name",
    "check_account_number",
    "check_cnaps_code",
    "cnaps_parts",
    "text_problem",
]
