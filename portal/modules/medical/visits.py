"""Visit settlement at a clinic terminal: the fund's share and the patient's share, both or neither.

The purse and the fund cannot commit in one database transaction (the purse is on the card), so a
visit is two-phase, after the ledger's pending transfers (``docs/medical.md``, "Visit settlement"):

1. **open** (one transaction): the holder's PIN-gated signature over the visit is checked
   (``portal.card_login.verify_token``, origin ``yikatong-clinic:<terminal_id>``, nonce the
   visit reference), the bill priced with the rule in force that day, the member's accumulator
   moved, and the fund's share **reserved** (pending transfer ``med:<id>:reserve``, medical fund
   → the clinic's payable). Nothing is paid yet.
2. the terminal takes the patient's share from the purse (a purchase through its PSAM, journaled
   and uploaded like any tap; it clears ``tap:<terminal>:<seq>``, card → clinic payable);
3. **confirm** with that purse record: its TAC must verify with the card's key and it must be
   this visit's amount from this card at this terminal; only then is the reservation **posted**.
   A torn debit is never confirmed until the card proves it on a later presentation (the
   terminal's tear recovery), so the fund never pays without the patient's share.
4. **cancel** (nothing reached the purse): the reservation is voided and the accumulator
   restored. **reverse** (a settled visit, a staff decision, audited): the fund's share goes back
   (``med:<id>:reversal``), the patient's share goes back to the purse as a pending load paid by
   the clinic (``med-refund:<id>``, loaded at the next load-capable reader), and the
   accumulator loses exactly the visit's delta.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

from cryptography import x509
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from cardos import crypto
from cardos.records import SHANGHAI_TZ
from clearing import accounts
from clearing import loads as clearing_loads
from clearing.contract import TapRecord
from clearing.errors import ClearingError
from clearing.ledger import TransferSpec, post_transfers
from clearing.models import Card, CardStatus, LoadKind, Terminal, TransferCode
from clearing.validation import parse_tap_time, verify_tacs
from portal.audit import AuditLog, card_target
from portal.card_login import ALGORITHM, TOKEN_FORMAT, AuthToken, verify_token
from portal.errors import PortalError
from portal.modules.medical import accumulators
from portal.modules.medical import transfer_ids as ids
from portal.modules.medical.errors import MedicalCode, MedicalError
from portal.modules.medical.models import MedicalClinic, MedicalMember, MedicalVisit
from portal.modules.medical.rules import (
    HOSPITAL_LEVELS,
    Bill,
    Delta,
    Limit,
    Reimbursement,
    RuleBook,
    VisitKind,
    reimburse,
)

CLINIC_ORIGIN_PREFIX: Final = "yikatong-clinic:"
VISIT_REF_RE: Final = re.compile(r"[A-Za-z0-9_-]{8,64}")
REASON_LEN_MAX: Final = 200
TX_PURCHASE: Final = 6  # a plain purse purchase (POS), ``terminals.session.pos_flow``


def clinic_origin(terminal_id: str) -> str:
    """What the card signs as the "origin" at a clinic: the terminal, so a signature made at one
    clinic for one visit cannot open a visit anywhere else."""
    return CLINIC_ORIGIN_PREFIX + terminal_id.lower()


@dataclass(frozen=True, slots=True)
class VisitRequest:
    """What the clinic terminal sends to open a visit."""

    visit_ref: str  # chosen by the terminal (random, 8..64 url-safe characters); the card signs it
    issuer_id: str
    card_asn: str
    kind: VisitKind
    total_fen: int
    covered_fen: int
    certificate_b64: str  # the card's auth certificate, as read from the card
    signature_b64: str  # raw r || s over SHA-256(origin) || SHA-256(visit_ref), after VERIFY PIN


@dataclass(frozen=True, slots=True)
class VisitQuote:
    """A visit as the terminal and the receipt see it."""

    visit_id: int
    visit_ref: str
    terminal_id: str
    issuer_id: str
    card_asn: str
    state: str
    kind: str
    day: dt.date
    rule_version: str
    region: str
    hospital_level: str
    total_fen: int
    covered_fen: int
    deductible_fen: int
    fund_fen: int
    patient_fen: int
    limited_by: str
    purse_terminal_seq: int | None
    refund_load_id: str | None


def _quote(visit: MedicalVisit) -> VisitQuote:
    return VisitQuote(
        visit_id=visit.id,
        visit_ref=visit.visit_ref,
        terminal_id=visit.terminal_id,
        issuer_id=visit.issuer_id,
        card_asn=visit.card_asn,
        state=visit.state,
        kind=visit.kind,
        day=visit.day,
        rule_version=visit.rule_version,
        region=visit.region,
        hospital_level=visit.hospital_level,
        total_fen=visit.total_fen,
        covered_fen=visit.covered_fen,
        deductible_fen=visit.deductible_fen,
        fund_fen=visit.fund_fen,
        patient_fen=visit.patient_fen,
        limited_by=visit.limited_by,
        purse_terminal_seq=visit.purse_terminal_seq,
        refund_load_id=visit.refund_load_id,
    )


def _delta(visit: MedicalVisit) -> Delta:
    return Delta(visit.day, visit.deductible_fen, visit.fund_fen)


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


MacKeyFor = Callable[[TapRecord], "crypto.MacKey | None"]
Anchors = Callable[[], Mapping[str, x509.Certificate]]


def register_clinic(
    session: Session, terminal_id: str, *, name: str, region: str, hospital_level: str
) -> MedicalClinic:
    """Make a registered terminal a clinic (idempotent for the same values)."""
    terminal = session.get(Terminal, terminal_id.lower())
    if terminal is None:
        raise MedicalError(MedicalCode.E_MED_NOT_A_CLINIC, f"terminal {terminal_id} is not registered")
    if hospital_level not in HOSPITAL_LEVELS or hospital_level == "elsewhere":
        raise MedicalError(MedicalCode.E_MED_NO_RULE, "a clinic's level is one of village, township, county, city")
    clinic = session.get(MedicalClinic, terminal.terminal_id)
    if clinic is None:
        clinic = MedicalClinic(
            terminal_id=terminal.terminal_id,
            operator_id=terminal.operator_id,
            name=name,
            region=region,
            hospital_level=hospital_level,
        )
        session.add(clinic)
        session.flush()
    return clinic


def enrol(session: Session, issuer_id: str, card_asn: str, *, region: str, year_from: int) -> MedicalMember:
    """Enrol a registered card in the scheme from ``year_from`` (idempotent)."""
    issuer_id, card_asn = issuer_id.lower(), card_asn.lower()
    if session.execute(select(Card.id).where(Card.issuer_id == issuer_id, Card.card_asn == card_asn)).first() is None:
        raise MedicalError(MedicalCode.E_MED_CARD_INACTIVE, "the card is not registered")
    member = session.execute(
        select(MedicalMember).where(MedicalMember.issuer_id == issuer_id, MedicalMember.card_asn == card_asn)
    ).scalar_one_or_none()
    if member is None:
        member = MedicalMember(issuer_id=issuer_id, card_asn=card_asn, region=region, year_from=year_from)
        session.add(member)
        session.flush()
    return member


def member_for(session: Session, issuer_id: str, card_asn: str, year: int) -> MedicalMember:
    member = session.execute(
        select(MedicalMember).where(MedicalMember.issuer_id == issuer_id, MedicalMember.card_asn == card_asn)
    ).scalar_one_or_none()
    if member is None or member.year_from > year or (member.year_to is not None and member.year_to < year):
        raise MedicalError(
            MedicalCode.E_MED_NOT_ENROLLED, f"the holder of card {_mask(card_asn)} is not enrolled for {year}"
        )
    return member


def _mask(card_asn: str) -> str:
    from portal.audit import mask_asn

    return mask_asn(card_asn)


@dataclass
class VisitService:
    """Open, confirm, cancel and reverse visits; each call is one transaction."""

    sessions: sessionmaker[Session]
    rules: RuleBook
    anchors: Anchors
    mac_key_for: MacKeyFor
    audit: AuditLog | None = None
    clock: Callable[[], dt.datetime] = _utcnow

    # --- open ----------------------------------------------------------------------------------

    def open(self, terminal_id: str, req: VisitRequest) -> VisitQuote:
        terminal_id = terminal_id.lower()
        if VISIT_REF_RE.fullmatch(req.visit_ref) is None:
            raise MedicalError(MedicalCode.E_MED_VISIT_CONFLICT, "a visit reference is 8..64 of A-Z a-z 0-9 _ -")
        bill = Bill(req.total_fen, req.covered_fen)
        issuer_id, card_asn = req.issuer_id.lower(), req.card_asn.lower()
        now = self.clock()
        day = now.astimezone(SHANGHAI_TZ).date()
        with self.sessions() as session, session.begin():
            clinic = session.get(MedicalClinic, terminal_id)
            if clinic is None:
                raise MedicalError(MedicalCode.E_MED_NOT_A_CLINIC, f"terminal {terminal_id} is not a clinic")
            existing = session.execute(
                select(MedicalVisit).where(
                    MedicalVisit.terminal_id == terminal_id, MedicalVisit.visit_ref == req.visit_ref
                )
            ).scalar_one_or_none()
            if existing is not None:
                same = (existing.issuer_id, existing.card_asn, existing.kind, existing.total_fen, existing.covered_fen)
                if same != (issuer_id, card_asn, req.kind.value, bill.total_fen, bill.covered_fen):
                    raise MedicalError(
                        MedicalCode.E_MED_VISIT_CONFLICT, f"visit {req.visit_ref} exists with other contents"
                    )
                return _quote(existing)
            self._check_holder(session, terminal_id, req, issuer_id, card_asn, now)
            open_visit = session.execute(
                select(MedicalVisit.visit_ref).where(
                    MedicalVisit.terminal_id == terminal_id,
                    MedicalVisit.issuer_id == issuer_id,
                    MedicalVisit.card_asn == card_asn,
                    MedicalVisit.state == "reserved",
                )
            ).scalar_one_or_none()
            if open_visit is not None:
                raise MedicalError(
                    MedicalCode.E_MED_VISIT_OPEN,
                    f"visit {open_visit} of this card is not settled: confirm or cancel it",
                )
            member = member_for(session, issuer_id, card_asn, day.year)
            rule = self.rules.rule_for(day, member.region, clinic.hospital_level, req.kind)
            acc = accumulators.read(session, member.id, day.year, req.kind, day)
            split = reimburse(rule, bill, acc, day)
            visit = self._insert(session, clinic, member, req, split, day)
            accumulators.move(session, member.id, day.year, req.kind, split.delta, sign=1)
            payable = self._payable(session, terminal_id)
            if split.fund_fen > 0:
                post_transfers(
                    session,
                    [
                        TransferSpec.pending(
                            ids.visit_reserve(visit.id),
                            accounts.medical_fund(session),
                            payable,
                            split.fund_fen,
                            TransferCode.MEDICAL,
                            source_ref=f"medical_visit:{visit.id}",
                        )
                    ],
                )
            if split.patient_fen == 0:  # nothing for the purse to pay: the fund's share is due now
                self._post(session, visit, now)
            return _quote(visit)

    def _check_holder(
        self, session: Session, terminal_id: str, req: VisitRequest, issuer_id: str, card_asn: str, now: dt.datetime
    ) -> None:
        token = AuthToken(req.certificate_b64, ALGORITHM, req.signature_b64, TOKEN_FORMAT, "clinic")
        try:
            verified = verify_token(
                token, origin=clinic_origin(terminal_id), nonce=req.visit_ref, anchors=self.anchors(), now=now
            )
        except PortalError as exc:
            raise MedicalError(MedicalCode.E_MED_HOLDER_NOT_AUTHENTICATED, exc.message) from None
        if (verified.issuer_id, verified.card_asn) != (issuer_id, card_asn):
            raise MedicalError(MedicalCode.E_MED_HOLDER_NOT_AUTHENTICATED, "the signature is another card's")
        card = session.execute(
            select(Card).where(Card.issuer_id == issuer_id, Card.card_asn == card_asn)
        ).scalar_one_or_none()
        if card is None or card.status != CardStatus.ACTIVE.value:
            raise MedicalError(
                MedicalCode.E_MED_CARD_INACTIVE, f"card {_mask(card_asn)} is not registered or not active"
            )
        if card.auth_cert_serial != verified.cert_serial:
            raise MedicalError(MedicalCode.E_MED_HOLDER_NOT_AUTHENTICATED, "not the card's current certificate")

    @staticmethod
    def _insert(
        session: Session,
        clinic: MedicalClinic,
        member: MedicalMember,
        req: VisitRequest,
        split: Reimbursement,
        day: dt.date,
    ) -> MedicalVisit:
        visit = MedicalVisit(
            terminal_id=clinic.terminal_id,
            visit_ref=req.visit_ref,
            member_id=member.id,
            issuer_id=member.issuer_id,
            card_asn=member.card_asn,
            kind=req.kind.value,
            day=day,
            rule_version=split.rule_version,
            region=member.region,
            hospital_level=clinic.hospital_level,
            total_fen=split.total_fen,
            covered_fen=split.covered_fen,
            deductible_fen=split.deductible_fen,
            fund_fen=split.fund_fen,
            patient_fen=split.patient_fen,
            limited_by=split.limit.value,
            state="reserved",
        )
        session.add(visit)
        session.flush()
        return visit

    @staticmethod
    def _payable(session: Session, terminal_id: str) -> int:
        terminal = session.get(Terminal, terminal_id)
        assert terminal is not None, "a clinic is a registered terminal (foreign key)"
        return int(terminal.payable_account_id)

    @staticmethod
    def _post(session: Session, visit: MedicalVisit, now: dt.datetime) -> None:
        if visit.fund_fen > 0:
            post_transfers(session, [TransferSpec.post(ids.visit_post(visit.id), ids.visit_reserve(visit.id))])
        visit.state = "settled"
        visit.settled_at = now

    # --- confirm, cancel -------------------------------------------------------------------------

    def _visit(self, session: Session, terminal_id: str, visit_ref: str, *, lock: bool = True) -> MedicalVisit:
        stmt = select(MedicalVisit).where(
            MedicalVisit.terminal_id == terminal_id.lower(), MedicalVisit.visit_ref == visit_ref
        )
        visit = session.execute(stmt.with_for_update() if lock else stmt).scalar_one_or_none()
        if visit is None:
            raise MedicalError(MedicalCode.E_MED_VISIT_NOT_FOUND, f"no visit {visit_ref!r} at terminal {terminal_id}")
        return visit

    def get(self, terminal_id: str, visit_ref: str) -> VisitQuote:
        with self.sessions() as session:
            return _quote(self._visit(session, terminal_id, visit_ref, lock=False))

    def reserved_for_card(self, terminal_id: str, issuer_id: str, card_asn: str) -> VisitQuote | None:
        """The card's unsettled visit at this clinic, if any: a restarted terminal finishes it."""
        with self.sessions() as session:
            visit = session.execute(
                select(MedicalVisit).where(
                    MedicalVisit.terminal_id == terminal_id.lower(),
                    MedicalVisit.issuer_id == issuer_id.lower(),
                    MedicalVisit.card_asn == card_asn.lower(),
                    MedicalVisit.state == "reserved",
                )
            ).scalar_one_or_none()
            return None if visit is None else _quote(visit)

    def confirm(self, terminal_id: str, visit_ref: str, record: TapRecord) -> VisitQuote:
        """Post the fund's share once the purse record proves the patient's share was paid."""
        with self.sessions() as session, session.begin():
            visit = self._visit(session, terminal_id, visit_ref)
            if visit.state == "settled" and visit.purse_terminal_seq == record.terminal_seq:
                return _quote(visit)  # a replay
            if visit.state != "reserved":
                raise MedicalError(MedicalCode.E_MED_VISIT_STATE, f"visit {visit_ref} is {visit.state}, not reserved")
            self._check_record(visit, record)
            visit.purse_terminal_seq = record.terminal_seq
            visit.purse_tac = record.tac.lower()
            self._post(session, visit, self.clock())
            return _quote(visit)

    def _check_record(self, visit: MedicalVisit, record: TapRecord) -> None:
        wanted = (visit.terminal_id, visit.issuer_id, visit.card_asn, TX_PURCHASE, visit.patient_fen)
        got = (record.terminal_id.lower(), record.issuer_id.lower(), record.card_asn.lower(), record.tx_type,
               record.amount_fen)  # fmt: skip
        if got != wanted:
            raise MedicalError(
                MedicalCode.E_MED_PURSE_RECORD,
                f"the record is a purchase of {record.amount_fen} fen by card {_mask(record.card_asn)} at terminal "
                f"{record.terminal_id}; the visit needs {visit.patient_fen} fen from card {_mask(visit.card_asn)} here",
            )
        when = parse_tap_time(record.tx_time)
        [ok] = verify_tacs([record], [when], self.mac_key_for)
        if ok is not True:
            why = "no key for this card" if ok is None else "it does not verify"
            raise MedicalError(MedicalCode.E_MED_PURSE_TAC, f"the purse record's TAC cannot be accepted: {why}")

    def cancel(self, terminal_id: str, visit_ref: str) -> VisitQuote:
        """Undo a visit whose purse debit never happened: void the reservation, restore the accumulator."""
        with self.sessions() as session, session.begin():
            visit = self._visit(session, terminal_id, visit_ref)
            if visit.state == "cancelled":
                return _quote(visit)
            if visit.state != "reserved":
                raise MedicalError(
                    MedicalCode.E_MED_VISIT_STATE, f"visit {visit_ref} is {visit.state}: a settled visit is reversed"
                )
            if visit.fund_fen > 0:
                post_transfers(session, [TransferSpec.void(ids.visit_void(visit.id), ids.visit_reserve(visit.id))])
            accumulators.move(session, visit.member_id, visit.day.year, VisitKind(visit.kind), _delta(visit), sign=-1)
            visit.state = "cancelled"
            visit.closed_at = self.clock()
            return _quote(visit)

    # --- reverse (staff) -------------------------------------------------------------------------

    def reverse(self, visit_id: int, *, reason: str, actor: str) -> VisitQuote:
        """Reverse a settled visit: fund back, purse refund load, accumulator restored; audited."""
        reason = reason.strip()
        if not 0 < len(reason) <= REASON_LEN_MAX:
            raise MedicalError(
                MedicalCode.E_MED_VISIT_STATE, f"a reversal needs a reason of 1..{REASON_LEN_MAX} characters"
            )
        with self.sessions() as session, session.begin():
            visit = session.execute(
                select(MedicalVisit).where(MedicalVisit.id == visit_id).with_for_update()
            ).scalar_one_or_none()
            if visit is None:
                raise MedicalError(MedicalCode.E_MED_VISIT_NOT_FOUND, f"no visit {visit_id}")
            if visit.state == "reversed":
                return _quote(visit)
            if visit.state != "settled":
                raise MedicalError(MedicalCode.E_MED_VISIT_STATE, f"visit {visit_id} is {visit.state}, not settled")
            payable = self._payable(session, visit.terminal_id)
            if visit.fund_fen > 0:
                post_transfers(
                    session,
                    [
                        TransferSpec.single(
                            ids.visit_fund_back(visit.id),
                            payable,
                            accounts.medical_fund(session),
                            visit.fund_fen,
                            TransferCode.MEDICAL,
                            source_ref=f"medical_visit:{visit.id}",
                        )
                    ],
                )
            if visit.patient_fen > 0:
                load_id = ids.visit_refund_load(visit.id)
                try:
                    clearing_loads.create_pending(
                        session,
                        load_id,
                        visit.issuer_id,
                        visit.card_asn,
                        visit.patient_fen,
                        kind=LoadKind.REFUND,
                        payer_account_id=payable,
                    )
                except ClearingError as exc:
                    raise MedicalError(
                        MedicalCode.E_MED_VISIT_STATE, f"the purse refund cannot be made: {exc}"
                    ) from None
                visit.refund_load_id = load_id
            accumulators.move(session, visit.member_id, visit.day.year, VisitKind(visit.kind), _delta(visit), sign=-1)
            visit.state = "reversed"
            visit.reason = reason
            visit.decided_by = actor
            visit.closed_at = self.clock()
            if self.audit is not None:
                self.audit.record(
                    session,
                    actor=actor,
                    action="medical_reversal",
                    target=card_target(visit.issuer_id, visit.card_asn),
                    detail=f"visit {visit.id}: fund {visit.fund_fen} fen back, purse refund {visit.patient_fen} fen",
                )
            return _quote(visit)


__all__ = [
    "CLINIC_ORIGIN_PREFIX",
    "Limit",
    "VisitQuote",
    "VisitRequest",
    "VisitService",
    "clinic_origin",
    "enrol",
    "member_for",
    "register_clinic",
]
