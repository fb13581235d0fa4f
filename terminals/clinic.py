"""The clinic terminal (``yikatong terminal run --clinic``): a visit settled by the patient's card.

One visit (``docs/medical.md``, "The clinic terminal"):

1. **Read the card** (SELECT purse, file 0x15: issuer and ASN) and **authenticate the holder**:
   SELECT the citizen-auth application, READ BINARY its certificate, VERIFY the PIN the patient
   types, INTERNAL AUTHENTICATE over ``SHA-256("yikatong-clinic:<terminal>") || SHA-256(visit_ref)``.
   The host checks that signature against the issuer CA, so a visit cannot be opened for a card
   whose holder did not type its PIN here, for this visit.
2. **Open the visit at the host**: it prices the bill with the rule tables and reserves the
   fund's share (nothing is paid yet), answering the split.
3. **The patient's share from the purse**: a plain purchase through the PSAM
   (``Terminal.sale``), with the validator's own journal, pending row and tear recovery.
4. **Confirm** with the purse record (its TAC): the host posts the fund's share. A torn debit is
   not confirmed: the visit stays open and the card is presented again; the journal's pending row
   and GET TRANSACTION PROVE decide whether the purse paid (then confirm) or not (charged once,
   then confirm). A purchase refused before the debit (balance, card error) cancels the visit. So
   the fund's share is never paid without the patient's share.
5. **Print the receipt** (text): bill, covered part, deductible, fund, patient, the rule version.

The host is a ``ClinicHost``: ``HttpClinicHost`` over the clinic API of the server
(``/v1/terminals/{terminal_id}/medical/visits``), or any object with the same four calls
(the portal's ``LocalClinicHost`` in tests).
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib
import secrets
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, ClassVar, Final, Protocol

from cardos.profile import AID_AUTH
from cardos.records import PublicInfo, RecordFormatError
from clearing.contract import TapRecord
from terminals.display import shanghai_stamp, yuan
from terminals.errors import CardRefused, CardRemoved, ReaderError, TerminalError
from terminals.readers import SW_OK, Apdu
from terminals.session import Cmd, Outcome, TapResult, find_tlv
from terminals.validator import Terminal

if TYPE_CHECKING:
    import httpx

CLINIC_ORIGIN_PREFIX: Final = "yikatong-clinic:"  # the host's ``portal.modules.medical.visits.clinic_origin``
CERT_CHUNK: Final = 256
CERT_BYTES_MAX: Final = 4096
SW_OFFSET_BEYOND: Final = 0x6B00
SW_NOT_FOUND: Final = 0x6A82
PIN_LEN: Final = 6
SETTLED_WITH_PURSE: Final = frozenset({Outcome.PAID, Outcome.RECOVERED, Outcome.SUSPECT})


class ClinicRefused(TerminalError):
    """The host refused a step: ``host_code`` is the host's (``E_MED_…``), ``message`` its sentence."""

    code: ClassVar[str] = "E_CLINIC_REFUSED"

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.host_code = code

    def __str__(self) -> str:
        return f"{self.host_code}: {self.message}"


@dataclass(frozen=True, slots=True)
class VisitOpen:
    visit_ref: str
    issuer_id: str
    card_asn: str
    kind: str
    total_fen: int
    covered_fen: int
    certificate_b64: str
    signature_b64: str


@dataclass(frozen=True, slots=True)
class VisitAnswer:
    """The host's view of a visit (the JSON of the clinic API)."""

    visit_ref: str
    state: str  # reserved, settled, cancelled, reversed
    kind: str
    rule_version: str
    hospital_level: str
    total_fen: int
    covered_fen: int
    deductible_fen: int
    fund_fen: int
    patient_fen: int
    limited_by: str

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> VisitAnswer:
        return cls(**{name: doc[name] for name in cls.__dataclass_fields__})


class ClinicHost(Protocol):
    def open_visit(self, req: VisitOpen) -> VisitAnswer: ...

    def confirm_visit(self, visit_ref: str, record: TapRecord) -> VisitAnswer: ...

    def cancel_visit(self, visit_ref: str) -> VisitAnswer: ...

    def get_visit(self, visit_ref: str) -> VisitAnswer: ...

    def reserved_visit(self, issuer_id: str, card_asn: str) -> VisitAnswer | None: ...


class ClinicOutcome(StrEnum):
    SETTLED = "C_SETTLED"  # both shares paid: receipt printed
    PRESENT_AGAIN = "C_PRESENT_AGAIN"  # the purse debit is in doubt: the visit stays open for this card
    CANCELLED = "C_CANCELLED"  # the purse did not pay: the visit was cancelled, nothing paid
    REFUSED = "C_REFUSED"  # the card, the PIN or the host refused before anything was reserved
    HOST_UNREACHABLE = "C_HOST_UNREACHABLE"  # paid at the purse, confirm not yet answered: retried


@dataclass(frozen=True, slots=True)
class ClinicBill:
    total_fen: int
    covered_fen: int
    kind: str = "outpatient"


@dataclass(frozen=True, slots=True)
class ClinicResult:
    outcome: ClinicOutcome
    message: str
    visit: VisitAnswer | None = None
    tap: TapResult | None = None
    receipt: str | None = None


@dataclass
class OpenVisit:
    """A visit this terminal opened and has not finished: its card must come back."""

    answer: VisitAnswer
    issuer_id: str
    card_asn: str
    record: TapRecord | None = None  # paid at the purse, confirm not yet answered


# --- card commands (prepared, no I/O) ----------------------------------------------------------


def challenge(terminal_id: str, visit_ref: str) -> bytes:
    """What the card signs for a visit: ``SHA-256(origin) || SHA-256(visit_ref)`` (``portal.card_login``)."""
    origin = CLINIC_ORIGIN_PREFIX + terminal_id.lower()
    return hashlib.sha256(origin.encode()).digest() + hashlib.sha256(visit_ref.encode()).digest()


def select_auth() -> Apdu:
    command = bytes([0x00, 0xA4, 0x04, 0x00, len(AID_AUTH)]) + AID_AUTH + b"\x00"
    return Apdu(command, "SELECT citizen-auth", frozenset({SW_OK, SW_NOT_FOUND}))


def read_certificate_chunk(offset: int) -> Apdu:
    command = (
        bytes([0x00, 0xB0, 0x81, 0x00, 0x00]) if offset == 0 else bytes([0x00, 0xB0, offset >> 8, offset & 0xFF, 0x00])
    )
    return Apdu(command, "READ BINARY certificate", frozenset({SW_OK, SW_OFFSET_BEYOND}))


def verify_pin(pin: str) -> Apdu:
    return Apdu(bytes([0x00, 0x20, 0x00, 0x01, len(pin)]) + pin.encode("ascii"), "VERIFY")


def internal_authenticate(data: bytes) -> Apdu:
    return Apdu(bytes([0x00, 0x88, 0x00, 0x00, len(data)]) + data + b"\x00", "INTERNAL AUTHENTICATE")


def _der_length(head: bytes) -> int | None:
    if len(head) < 2 or head[0] != 0x30:
        return None
    if head[1] < 0x80:
        return 2 + head[1]
    count = head[1] & 0x7F
    if not 1 <= count <= 2 or len(head) < 2 + count:
        return None
    return 2 + count + int.from_bytes(head[2 : 2 + count], "big")


def _raw_signature(der: bytes) -> bytes:
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    r, s = decode_dss_signature(der)
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def check_pin(pin: str) -> str:
    if len(pin) != PIN_LEN or not all("0" <= c <= "9" for c in pin):
        raise ClinicRefused("E_CLINIC_PIN_FORMAT", "the PIN is 6 digits")
    return pin


# --- the receipt ---------------------------------------------------------------------------------


def receipt(visit: VisitAnswer, *, clinic_name: str, terminal_id: str, card_asn: str, at: dt.datetime,
            tap: TapResult | None) -> str:  # fmt: skip
    """The patient's receipt as text (a 32-column slip); the card number is masked."""
    limit = {"annual_cap": " (annual cap reached)", "daily_cap": " (daily cap reached)"}.get(visit.limited_by, "")
    lines = [
        clinic_name,
        f"terminal {terminal_id}   {shanghai_stamp(at)}",
        f"visit {visit.visit_ref}  ({visit.kind})",
        f"card   {card_asn[:4]}{'*' * 12}{card_asn[-4:]}",
        "-" * 32,
        f"bill total            {yuan(visit.total_fen):>10}",
        f"  self-paid items     {yuan(visit.total_fen - visit.covered_fen):>10}",
        f"  covered             {yuan(visit.covered_fen):>10}",
        f"  deductible paid     {yuan(visit.deductible_fen):>10}",
        f"fund pays (新农合)     {yuan(visit.fund_fen):>10}{limit}",
        f"you pay from purse    {yuan(visit.patient_fen):>10}",
    ]
    if tap is not None and tap.balance_after_fen is not None:
        lines.append(f"purse balance after   {yuan(tap.balance_after_fen):>10}")
    lines += ["-" * 32, f"rules {visit.rule_version}, level {visit.hospital_level}", f"state {visit.state}"]
    return "\n".join(lines)


# --- the flow --------------------------------------------------------------------------------------


@dataclass
class Clinic:
    """A clinic's terminal: the purse side is a ``Terminal`` (its readers, PSAM, journal); the fund
    side is the ``host``. ``open_visits`` remembers visits whose card must come back."""

    terminal: Terminal
    host: ClinicHost
    clinic_name: str = "Yikatong clinic"
    open_visits: dict[tuple[str, str], OpenVisit] = field(default_factory=dict)

    def _read(self, pin: str | None, visit_ref: str) -> tuple[str, str, tuple[str, str] | None]:
        """The card's issuer and ASN and, given a PIN, its certificate and signature of the visit."""
        reader = self.terminal.card_reader
        reader.connect(self.terminal.config.apdu_timeout_ms)
        try:
            channel = self.terminal.card
            selected = channel.run(Cmd.select_purse())
            if selected.sw != SW_OK:
                raise ClinicRefused("E_CLINIC_CARD", "not a city card (no purse), or its purse is blocked")
            public_raw = find_tlv(selected.data, 0x9F0C)
            if public_raw is None or len(public_raw) != 30:
                public_raw = channel.run(Cmd.read_binary(0x15, 30)).data
            try:
                public = PublicInfo.decode(public_raw)
            except RecordFormatError as exc:
                raise ClinicRefused("E_CLINIC_CARD", f"card files unreadable: {exc}") from None
            issuer, asn = public.issuer_id.hex(), public.asn.hex()
            if pin is None:
                return issuer, asn, None
            if channel.run(select_auth()).sw != SW_OK:
                raise ClinicRefused("E_CLINIC_NOT_SOCIAL_SECURITY", "the card has no citizen-auth application")
            certificate = self._certificate()
            channel.run(verify_pin(pin))
            signature = channel.run(internal_authenticate(challenge(self.terminal_hex, visit_ref))).data
            token = (base64.b64encode(certificate).decode(), base64.b64encode(_raw_signature(signature)).decode())
            return issuer, asn, token
        finally:
            reader.disconnect()

    def _certificate(self) -> bytes:
        data = b""
        total: int | None = None
        while total is None or len(data) < total:
            reply = self.terminal.card.run(read_certificate_chunk(len(data)))
            if reply.sw == SW_OFFSET_BEYOND or not reply.data:
                break
            data += reply.data
            if total is None:
                total = _der_length(data)
                if total is None or total > CERT_BYTES_MAX:
                    raise ClinicRefused("E_CLINIC_NOT_SOCIAL_SECURITY", "the auth file holds no certificate")
            if len(reply.data) < CERT_CHUNK:
                break
        if total is None or len(data) < total:
            raise ClinicRefused("E_CLINIC_NOT_SOCIAL_SECURITY", "the certificate is cut short")
        return data[:total]

    @property
    def terminal_hex(self) -> str:
        info = self.terminal.sam_info or self.terminal.open_sam()
        return info.terminal_hex

    def card_in_field(self) -> tuple[str, str] | None:
        """The card's (issuer, ASN), or None when none answers (no PIN asked)."""
        try:
            issuer, asn, _ = self._read(None, "")
        except (CardRemoved, ReaderError, CardRefused, ClinicRefused):
            return None
        return issuer, asn

    def settle(self, bill: ClinicBill, pin: str, now: dt.datetime | None = None) -> ClinicResult:
        """One visit for the card in the field: resumes this card's open visit first, if there is one."""
        moment = now or self.terminal.clock()
        visit_ref = secrets.token_urlsafe(16)
        try:
            issuer, asn = self._identify()
            resumed = self.open_visits.get((issuer, asn))
            if resumed is not None:
                return self._finish(resumed, moment)
            check_pin(pin)
            issuer, asn, token = self._read(pin, visit_ref)
            assert token is not None
        except CardRefused as exc:
            if exc.what == "VERIFY":
                tries = exc.sw & 0x0F if exc.sw & 0xFFF0 == 0x63C0 else 0
                why = f"wrong PIN, {tries} tries left" if exc.sw & 0xFFF0 == 0x63C0 else "PIN blocked"
                return ClinicResult(ClinicOutcome.REFUSED, f"{why}; nothing was charged")
            return ClinicResult(ClinicOutcome.REFUSED, f"card error: {exc.what} answered {exc.sw:04X}")
        except (CardRemoved, ReaderError) as exc:
            return ClinicResult(ClinicOutcome.REFUSED, f"present the card again ({exc.message}); nothing was charged")
        except ClinicRefused as exc:
            return ClinicResult(ClinicOutcome.REFUSED, str(exc))
        request = VisitOpen(visit_ref, issuer, asn, bill.kind, bill.total_fen, bill.covered_fen, token[0], token[1])
        try:
            answer = self.host.open_visit(request)
        except ClinicRefused as exc:
            if exc.host_code == "E_MED_VISIT_OPEN":  # opened before this terminal restarted: finish that one
                return self._resume_from_host(issuer, asn, moment, exc)
            return ClinicResult(ClinicOutcome.REFUSED, f"{exc}; nothing was charged")
        except TerminalError as exc:
            return ClinicResult(ClinicOutcome.REFUSED, f"the host cannot be reached ({exc}); nothing was charged")
        visit = OpenVisit(answer, issuer, asn)
        self.open_visits[(issuer, asn)] = visit
        return self._finish(visit, moment)

    def _resume_from_host(self, issuer: str, asn: str, now: dt.datetime, refusal: ClinicRefused) -> ClinicResult:
        try:
            answer = self.host.reserved_visit(issuer, asn)
        except TerminalError as exc:
            return ClinicResult(ClinicOutcome.REFUSED, f"{refusal}; the host cannot be asked for it ({exc})")
        if answer is None:
            return ClinicResult(ClinicOutcome.REFUSED, f"{refusal}; nothing was charged")
        visit = OpenVisit(answer, issuer, asn)
        self.open_visits[(issuer, asn)] = visit
        result = self._finish(visit, now)
        return dataclasses.replace(result, message=f"resumed visit {answer.visit_ref}: {result.message}")

    def _identify(self) -> tuple[str, str]:
        issuer, asn, _ = self._read(None, "")
        return issuer, asn

    def _finish(self, visit: OpenVisit, now: dt.datetime) -> ClinicResult:
        """Take the patient's share (or prove it was taken), then confirm; cancel when the purse did not pay."""
        key = (visit.issuer_id, visit.card_asn)
        answer = visit.answer
        tap: TapResult | None = None
        if answer.state == "reserved" and visit.record is None:
            tap = self.terminal.sale(answer.patient_fen, now)
            if tap.outcome in SETTLED_WITH_PURSE and tap.record is not None:
                visit.record = tap.record
            elif self.terminal.local.pending_for(visit.issuer_id, visit.card_asn) is not None:
                return ClinicResult(
                    ClinicOutcome.PRESENT_AGAIN,
                    f"the purse debit of {yuan(answer.patient_fen)} is in doubt ({tap.message}): present the card"
                    " again to finish this visit; the fund pays only once the purse has",
                    answer,
                    tap,
                )
            else:
                return self._cancel(visit, f"the purse did not pay ({tap.message})", tap)
        if answer.state == "reserved" and visit.record is not None:
            try:
                answer = self.host.confirm_visit(answer.visit_ref, visit.record)
            except ClinicRefused as exc:
                return ClinicResult(ClinicOutcome.REFUSED, f"the host refused the purse record: {exc}", answer, tap)
            except TerminalError as exc:
                return ClinicResult(
                    ClinicOutcome.HOST_UNREACHABLE,
                    f"paid at the purse; the host has not confirmed yet ({exc}): present the card again to retry",
                    answer,
                    tap,
                )
        del self.open_visits[key]
        if answer.state != "settled":
            return ClinicResult(ClinicOutcome.REFUSED, f"the visit is {answer.state} at the host", answer, tap)
        text = receipt(answer, clinic_name=self.clinic_name, terminal_id=self.terminal_hex, card_asn=visit.card_asn,
                       at=now, tap=tap)  # fmt: skip
        return ClinicResult(ClinicOutcome.SETTLED, "settled: receipt printed", answer, tap, text)

    def _cancel(self, visit: OpenVisit, why: str, tap: TapResult | None) -> ClinicResult:
        try:
            answer = self.host.cancel_visit(visit.answer.visit_ref)
        except TerminalError as exc:
            return ClinicResult(
                ClinicOutcome.PRESENT_AGAIN,
                f"{why}; the host has not cancelled the visit yet ({exc})",
                visit.answer,
                tap,
            )
        del self.open_visits[(visit.issuer_id, visit.card_asn)]
        return ClinicResult(ClinicOutcome.CANCELLED, f"{why}: visit cancelled, nothing paid", answer, tap)

    def cancel_open(self, issuer_id: str, card_asn: str) -> ClinicResult:
        """The clerk gives up on a card's open visit: refused while a purse debit of it is in doubt."""
        visit = self.open_visits.get((issuer_id, card_asn))
        if visit is None:
            return ClinicResult(ClinicOutcome.REFUSED, "no open visit for this card")
        if visit.record is not None or self.terminal.local.pending_for(issuer_id, card_asn) is not None:
            return ClinicResult(
                ClinicOutcome.REFUSED,
                "the purse may have paid this visit: present the card again instead (its debit is proved or undone)",
                visit.answer,
            )
        return self._cancel(visit, "cancelled by the clerk", None)


# --- the host over HTTP ------------------------------------------------------------------------------


class HttpClinicHost:
    """The clinic API of the server (``/medical/v1/clinics/{terminal_id}/visits``), with the terminal's token."""

    def __init__(self, client: httpx.Client, terminal_id: str, token: str) -> None:
        self._client = client
        self._headers = {"Authorization": f"Bearer {token}"}
        self._base = f"/medical/v1/clinics/{terminal_id.lower()}/visits"

    @classmethod
    def connect(cls, base_url: str, terminal_id: str, token: str, *, timeout_s: float = 10.0) -> HttpClinicHost:
        import httpx

        return cls(httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout_s), terminal_id, token)

    def close(self) -> None:
        self._client.close()

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> VisitAnswer:
        import httpx

        try:
            answer = self._client.request(method, self._base + path, json=body, headers=self._headers)
        except httpx.HTTPError as exc:
            raise TerminalError(f"clinic host: {exc}") from None
        try:
            doc = answer.json()
        except ValueError:
            raise TerminalError(f"clinic host answered {answer.status_code} without JSON") from None
        if answer.status_code >= 500:
            raise TerminalError(f"clinic host answered {answer.status_code}: {doc.get('code')}")
        if answer.status_code >= 400:
            raise ClinicRefused(str(doc.get("code", "E_MED_UNKNOWN")), str(doc.get("message", "")))
        return VisitAnswer.from_json(doc)

    def open_visit(self, req: VisitOpen) -> VisitAnswer:
        return self._call("POST", "", {name: getattr(req, name) for name in VisitOpen.__dataclass_fields__})

    def confirm_visit(self, visit_ref: str, record: TapRecord) -> VisitAnswer:
        import msgspec

        return self._call("POST", f"/{visit_ref}/confirm", {"record": msgspec.to_builtins(record)})

    def cancel_visit(self, visit_ref: str) -> VisitAnswer:
        return self._call("POST", f"/{visit_ref}/cancel")

    def get_visit(self, visit_ref: str) -> VisitAnswer:
        return self._call("GET", f"/{visit_ref}")

    def reserved_visit(self, issuer_id: str, card_asn: str) -> VisitAnswer | None:
        import httpx

        try:
            answer = self._client.get(
                self._base, params={"issuer_id": issuer_id, "card_asn": card_asn}, headers=self._headers
            )
            doc = answer.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise TerminalError(f"clinic host: {exc}") from None
        if answer.status_code != 200:
            raise ClinicRefused(str(doc.get("code", "E_MED_UNKNOWN")), str(doc.get("message", "")))
        visits = doc.get("visits") or []
        return VisitAnswer.from_json(visits[0]) if visits else None


__all__ = [
    "Clinic",
    "ClinicBill",
    "ClinicHost",
    "ClinicOutcome",
    "ClinicRefused",
    "ClinicResult",
    "HttpClinicHost",
    "OpenVisit",
    "VisitAnswer",
    "VisitOpen",
    "challenge",
    "receipt",
]
