"""Reimbursement rules of the rural cooperative medical scheme (新农合): pure functions over dataclasses.

A rule is looked up by year, region (where the member is enrolled), hospital level and visit
kind, in versioned tables (``rules_example.csv``; the values shipped are **examples**, labelled
so in the file). Of a bill's covered part (目录内费用; the rest is self-paid, 自费):

1. the deductible (起付线) still open this year is paid by the patient first;
2. of what is above it the fund pays ``ratio_bp`` basis points, **rounded down to the fen**
   (the fund never pays a fraction of a fen it does not owe; the patient pays the remainder);
3. the fund's share is then limited by what is left of the annual cap (封顶线) and, for
   outpatient pooling (门诊统筹), of the daily cap for that day.

The patient pays the rest of the bill: ``fund + patient == total`` to the fen, always. The
accumulator of a member's year (deductible used, fund paid, fund paid per day) moves by the
``Delta`` a reimbursement names; reversing a visit subtracts the same delta, so apply then
reverse restores the accumulator exactly (``docs/medical.md``, "Rules").
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import io
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from importlib import resources
from pathlib import Path
from typing import Final

from portal.modules.medical.errors import MedicalCode, MedicalError

RATIO_BP_MAX: Final = 10_000  # 100 %
BILL_FEN_MAX: Final = 100_000_000  # 1,000,000.00 CNY: a bill above it is a typo, not a visit
CAP_FEN_MAX: Final = 100_000_000
EXAMPLE_RULES: Final = "rules_example.csv"
HOSPITAL_LEVELS: Final = ("village", "township", "county", "city", "elsewhere")
_COLUMNS: Final = (
    "version",
    "year",
    "region",
    "hospital_level",
    "kind",
    "effective_from",
    "deductible_fen",
    "ratio_bp",
    "annual_cap_fen",
    "daily_cap_fen",
)


class VisitKind(StrEnum):
    OUTPATIENT = "outpatient"  # 门诊统筹: a daily cap applies
    INPATIENT = "inpatient"  # 住院


class Limit(StrEnum):
    """What bounded the fund's share below ``ratio × (covered − deductible)``; none: the ratio alone."""

    NONE = "none"
    ANNUAL_CAP = "annual_cap"
    DAILY_CAP = "daily_cap"


@dataclass(frozen=True, slots=True)
class Rule:
    """One row of a rule table: what the fund pays for one kind of visit at one level, in one region."""

    version: str
    year: int
    region: str
    hospital_level: str
    kind: VisitKind
    effective_from: dt.date
    deductible_fen: int
    ratio_bp: int
    annual_cap_fen: int
    daily_cap_fen: int | None  # outpatient pooling only

    def problems(self) -> list[str]:
        found: list[str] = []
        if not 0 <= self.deductible_fen <= CAP_FEN_MAX:
            found.append(f"deductible_fen {self.deductible_fen} outside 0..{CAP_FEN_MAX}")
        if not 0 <= self.ratio_bp <= RATIO_BP_MAX:
            found.append(f"ratio_bp {self.ratio_bp} outside 0..{RATIO_BP_MAX}")
        if not 0 <= self.annual_cap_fen <= CAP_FEN_MAX:
            found.append(f"annual_cap_fen {self.annual_cap_fen} outside 0..{CAP_FEN_MAX}")
        if self.kind is VisitKind.OUTPATIENT and self.daily_cap_fen is None:
            found.append("an outpatient rule needs daily_cap_fen")
        if self.kind is VisitKind.INPATIENT and self.daily_cap_fen is not None:
            found.append("an inpatient rule has no daily cap")
        if self.daily_cap_fen is not None and not 0 <= self.daily_cap_fen <= CAP_FEN_MAX:
            found.append(f"daily_cap_fen {self.daily_cap_fen} outside 0..{CAP_FEN_MAX}")
        if self.effective_from.year != self.year:
            found.append(f"effective_from {self.effective_from} is not in year {self.year}")
        if self.hospital_level not in HOSPITAL_LEVELS:
            found.append(f"hospital_level {self.hospital_level!r} is not one of {', '.join(HOSPITAL_LEVELS)}")
        if not self.region or len(self.region) > 32:
            found.append("region must be 1..32 characters")
        if not self.version or len(self.version) > 32:
            found.append("version must be 1..32 characters")
        return found


@dataclass(frozen=True, slots=True)
class RuleBook:
    """Every rule row; ``rule_for`` picks the version in force on the visit's day."""

    rules: tuple[Rule, ...]
    source: str = "rules_example.csv"
    example: bool = True

    def rule_for(self, day: dt.date, region: str, hospital_level: str, kind: VisitKind) -> Rule:
        """The row of (``day.year``, region, level, kind) with the latest ``effective_from`` ≤ ``day``."""
        best: Rule | None = None
        for rule in self.rules:
            if (rule.year, rule.region, rule.hospital_level, rule.kind) != (day.year, region, hospital_level, kind):
                continue
            if rule.effective_from <= day and (best is None or rule.effective_from > best.effective_from):
                best = rule
        if best is None:
            raise MedicalError(
                MedicalCode.E_MED_NO_RULE,
                f"no {kind.value} rule for {day.year}, region {region!r}, level {hospital_level!r} in force on {day}",
            )
        return best

    def regions(self) -> list[str]:
        return sorted({rule.region for rule in self.rules})


def _int(text: str, column: str, line: int) -> int:
    if not text.strip().lstrip("-").isdigit() or not text.strip().isascii():
        raise MedicalError(MedicalCode.E_MED_RULES_FILE, f"line {line}: {column} {text!r} is not an integer")
    return int(text)


def parse_rules(text: str, *, source: str) -> RuleBook:
    """Rules from CSV text (``#`` lines are comments); every problem names its line."""
    lines = [
        (n, line) for n, line in enumerate(text.splitlines(), start=1) if line.strip() and not line.startswith("#")
    ]
    if not lines:
        raise MedicalError(MedicalCode.E_MED_RULES_FILE, f"{source}: no header")
    example = any(line.startswith("#") and "EXAMPLE" in line.upper() for line in text.splitlines())
    numbers = [n for n, _ in lines]
    reader = csv.DictReader(io.StringIO("\n".join(line for _, line in lines)))
    if tuple(reader.fieldnames or ()) != _COLUMNS:
        raise MedicalError(MedicalCode.E_MED_RULES_FILE, f"{source}: the header must be {','.join(_COLUMNS)}")
    rules: list[Rule] = []
    seen: set[tuple[int, str, str, str, dt.date]] = set()
    for row, line in zip(reader, numbers[1:], strict=True):
        try:
            kind = VisitKind(row["kind"])
            effective = dt.date.fromisoformat(row["effective_from"])
        except ValueError:
            raise MedicalError(
                MedicalCode.E_MED_RULES_FILE, f"{source} line {line}: bad kind or effective_from"
            ) from None
        daily = row["daily_cap_fen"].strip()
        rule = Rule(
            version=row["version"].strip(),
            year=_int(row["year"], "year", line),
            region=row["region"].strip(),
            hospital_level=row["hospital_level"].strip(),
            kind=kind,
            effective_from=effective,
            deductible_fen=_int(row["deductible_fen"], "deductible_fen", line),
            ratio_bp=_int(row["ratio_bp"], "ratio_bp", line),
            annual_cap_fen=_int(row["annual_cap_fen"], "annual_cap_fen", line),
            daily_cap_fen=_int(daily, "daily_cap_fen", line) if daily else None,
        )
        problems = rule.problems()
        if problems:
            raise MedicalError(MedicalCode.E_MED_RULES_FILE, f"{source} line {line}: {'; '.join(problems)}")
        key = (rule.year, rule.region, rule.hospital_level, rule.kind.value, rule.effective_from)
        if key in seen:
            raise MedicalError(MedicalCode.E_MED_RULES_FILE, f"{source} line {line}: a second row for {key}")
        seen.add(key)
        rules.append(rule)
    return RuleBook(tuple(rules), source=source, example=example)


def load_rules(path: Path) -> RuleBook:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise MedicalError(MedicalCode.E_MED_RULES_FILE, f"cannot read {path}: {exc}") from None
    return parse_rules(text, source=str(path))


def load_example_rules() -> RuleBook:
    """The shipped example tables (``rules_example.csv``): example values, not a real scheme's."""
    text = resources.files("portal.modules.medical").joinpath(EXAMPLE_RULES).read_text(encoding="utf-8")
    return parse_rules(text, source=EXAMPLE_RULES)


# --- the accumulator -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Accumulator:
    """One member's year for one visit kind: deductible used, fund paid, and fund paid per day."""

    deductible_used_fen: int = 0
    fund_paid_fen: int = 0
    days: Mapping[dt.date, int] = dataclasses.field(default_factory=dict)

    def day_paid_fen(self, day: dt.date) -> int:
        return self.days.get(day, 0)


@dataclass(frozen=True, slots=True)
class Delta:
    """What one visit adds to its accumulator; reversal subtracts exactly this."""

    day: dt.date
    deductible_fen: int
    fund_fen: int


def apply(acc: Accumulator, delta: Delta) -> Accumulator:
    days = dict(acc.days)
    paid = days.get(delta.day, 0) + delta.fund_fen
    if paid:  # a day with nothing paid is not kept, so equal years compare equal
        days[delta.day] = paid
    return Accumulator(acc.deductible_used_fen + delta.deductible_fen, acc.fund_paid_fen + delta.fund_fen, days)


def unapply(acc: Accumulator, delta: Delta) -> Accumulator:
    """``apply``'s inverse; a day left at 0 is dropped, so ``unapply(apply(a, d), d) == a``."""
    days = dict(acc.days)
    left = days.get(delta.day, 0) - delta.fund_fen
    assert left >= 0 and acc.fund_paid_fen >= delta.fund_fen and acc.deductible_used_fen >= delta.deductible_fen, (
        "a reversal cannot take out more than the visit put in"
    )
    if left:
        days[delta.day] = left
    else:
        days.pop(delta.day, None)
    return Accumulator(acc.deductible_used_fen - delta.deductible_fen, acc.fund_paid_fen - delta.fund_fen, days)


# --- reimbursement ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Bill:
    """A visit's bill: ``total_fen``, of which ``covered_fen`` is in the scheme's catalogue."""

    total_fen: int
    covered_fen: int

    def __post_init__(self) -> None:
        if not 0 <= self.covered_fen <= self.total_fen <= BILL_FEN_MAX:
            raise MedicalError(
                MedicalCode.E_MED_BAD_BILL,
                f"a bill needs 0 ≤ covered ({self.covered_fen}) ≤ total ({self.total_fen}) ≤ {BILL_FEN_MAX} fen",
            )


@dataclass(frozen=True, slots=True)
class Reimbursement:
    """The split of one bill and why: the receipt prints these lines."""

    rule_version: str
    total_fen: int
    covered_fen: int
    deductible_fen: int  # of the covered part, paid by the patient towards the deductible
    ratio_fen: int  # ratio × (covered − deductible), rounded down
    fund_fen: int  # what the fund pays, after the caps
    patient_fen: int  # total − fund
    limit: Limit
    delta: Delta


def reimburse(rule: Rule, bill: Bill, acc: Accumulator, day: dt.date) -> Reimbursement:
    """The fund's and the patient's share of ``bill`` on ``day``, given the year so far (``acc``)."""
    deductible_left = max(0, rule.deductible_fen - acc.deductible_used_fen)
    deductible = min(bill.covered_fen, deductible_left)
    ratio_fen = (bill.covered_fen - deductible) * rule.ratio_bp // RATIO_BP_MAX
    fund, limit = ratio_fen, Limit.NONE
    annual_left = max(0, rule.annual_cap_fen - acc.fund_paid_fen)
    if annual_left < fund:
        fund, limit = annual_left, Limit.ANNUAL_CAP
    if rule.daily_cap_fen is not None:
        daily_left = max(0, rule.daily_cap_fen - acc.day_paid_fen(day))
        if daily_left < fund:
            fund, limit = daily_left, Limit.DAILY_CAP
    patient = bill.total_fen - fund
    assert 0 <= fund <= bill.covered_fen and patient >= 0 and fund + patient == bill.total_fen
    return Reimbursement(
        rule_version=rule.version,
        total_fen=bill.total_fen,
        covered_fen=bill.covered_fen,
        deductible_fen=deductible,
        ratio_fen=ratio_fen,
        fund_fen=fund,
        patient_fen=patient,
        limit=limit,
        delta=Delta(day, deductible, fund),
    )


def replay(rule_for: Mapping[dt.date, Rule] | Rule, visits: Iterable[tuple[dt.date, Bill]]) -> Sequence[Reimbursement]:
    """Price visits in order from an empty year (a test and audit helper): each sees the ones before."""
    acc = Accumulator()
    done: list[Reimbursement] = []
    for day, bill in visits:
        rule = rule_for if isinstance(rule_for, Rule) else rule_for[day]
        result = reimburse(rule, bill, acc, day)
        acc = apply(acc, result.delta)
        done.append(result)
    return done


__all__ = [
    "HOSPITAL_LEVELS",
    "Accumulator",
    "Bill",
    "Delta",
    "Limit",
    "Reimbursement",
    "Rule",
    "RuleBook",
    "VisitKind",
    "apply",
    "load_example_rules",
    "load_rules",
    "parse_rules",
    "reimburse",
    "replay",
    "unapply",
]
