"""Claims for treatment elsewhere: the database shell around ``claims`` (states) and ``rules`` (pricing).

A citizen logged in **with the card** files a claim for one of their bound, enrolled cards, with
documents; staff check it (set the catalogue part), valuate it (priced by the rule of the
member's region at level ``elsewhere`` on the treatment day, the accumulator moved), pay it (a
pending load of the fund's share to the card, paid by the medical fund, loaded at the next
load-capable reader) or reject it with an openIMIS-style reason code. Every staff step is one
transaction with its claim event and its audit line (``medical_claim_review``); rejecting a
valuated claim takes its delta back out of the accumulator, exactly.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from cardos.records import SHANGHAI_TZ
from clearing import accounts
from clearing import loads as clearing_loads
from clearing.models import LoadKind
from portal.accounts import CurrentSession
from portal.audit import AuditLog, card_target
from portal.models import PortalCardBinding
from portal.modules.medical import accumulators
from portal.modules.medical import transfer_ids as ids
from portal.modules.medical.claims import (
    CLAIM_DAYS_MAX,
    DOCS_PER_CLAIM_MAX,
    HOSPITAL_NAME_LEN_MAX,
    ClaimAction,
    ClaimState,
    Document,
    check_document,
    check_reason,
    next_state,
)
from portal.modules.medical.errors import MedicalCode, MedicalError
from portal.modules.medical.models import MedicalClaim, MedicalClaimDocument, MedicalClaimEvent, MedicalMember
from portal.modules.medical.rules import Accumulator, Bill, Delta, RuleBook, VisitKind, reimburse

CARD_ASSURANCE: Final = "card"
ELSEWHERE: Final = "elsewhere"


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True, slots=True)
class ClaimForm:
    hospital_name: str
    hospital_level: str  # the level of the hospital elsewhere, for the record; priced at ``elsewhere``
    kind: VisitKind
    day: dt.date
    total_fen: int


@dataclass(frozen=True, slots=True)
class ClaimView:
    id: int
    state: str
    hospital_name: str
    kind: str
    day: dt.date
    total_fen: int
    covered_fen: int | None
    fund_fen: int | None
    deductible_fen: int | None
    rule_version: str | None
    reason_code: str | None
    payout_load_id: str | None
    documents: tuple[tuple[int, str, int], ...]  # id, type, size
    events: tuple[tuple[str | None, str, str | None, dt.datetime], ...]  # from, to, reason, at


@dataclass
class ClaimService:
    sessions: sessionmaker[Session]
    rules: RuleBook
    audit: AuditLog
    clock: Callable[[], dt.datetime] = _utcnow

    # --- the citizen's side ----------------------------------------------------------------------

    def member_of(self, session: Session, current: CurrentSession) -> MedicalMember:
        """The enrolled member among the citizen's bound cards; card login required."""
        if current.assurance != CARD_ASSURANCE:
            raise MedicalError(MedicalCode.E_MED_HOLDER_NOT_AUTHENTICATED, "log in with the card to file or see claims")
        member = session.execute(
            select(MedicalMember)
            .join(
                PortalCardBinding,
                (PortalCardBinding.issuer_id == MedicalMember.issuer_id)
                & (PortalCardBinding.card_asn == MedicalMember.card_asn),
            )
            .where(PortalCardBinding.citizen_id == current.citizen_id)
            .order_by(MedicalMember.id)
            .limit(1)
        ).scalar_one_or_none()
        if member is None:
            raise MedicalError(MedicalCode.E_MED_NOT_ENROLLED, "none of this account's cards is enrolled in the scheme")
        return member

    def submit(
        self, current: CurrentSession, form: ClaimForm, documents: list[Document], *, submit_ref: str
    ) -> ClaimView:
        """A new claim; the same ``submit_ref`` (the form's nonce) again answers the claim it made."""
        if not 16 <= len(submit_ref) <= 64 or not submit_ref.isascii():
            raise MedicalError(MedicalCode.E_MED_CLAIM_MALFORMED, "the form is incomplete: reload it and send it again")
        name = form.hospital_name.strip()
        if not 0 < len(name) <= HOSPITAL_NAME_LEN_MAX:
            raise MedicalError(
                MedicalCode.E_MED_CLAIM_MALFORMED, f"the hospital's name is 1..{HOSPITAL_NAME_LEN_MAX} characters"
            )
        if form.hospital_level not in ("township", "county", "city"):
            raise MedicalError(MedicalCode.E_MED_CLAIM_MALFORMED, "the hospital's level is township, county or city")
        Bill(form.total_fen, 0)  # the bill's bounds (E_MED_BAD_BILL)
        if form.total_fen <= 0:
            raise MedicalError(MedicalCode.E_MED_BAD_BILL, "a claim is for a bill above 0")
        today = self.clock().astimezone(SHANGHAI_TZ).date()
        if not today - dt.timedelta(days=CLAIM_DAYS_MAX) <= form.day <= today:
            raise MedicalError(
                MedicalCode.E_MED_CLAIM_MALFORMED, f"the treatment day is within the last {CLAIM_DAYS_MAX} days"
            )
        if not documents:
            raise MedicalError(MedicalCode.E_MED_CLAIM_DOCUMENT, "a claim needs at least its invoice")
        if len(documents) > DOCS_PER_CLAIM_MAX:
            raise MedicalError(MedicalCode.E_MED_CLAIM_DOCUMENT, f"at most {DOCS_PER_CLAIM_MAX} documents")
        checked = [check_document(d) for d in documents]
        now = self.clock()
        with self.sessions() as session, session.begin():
            member = self.member_of(session, current)
            sent = session.execute(
                select(MedicalClaim).where(
                    MedicalClaim.citizen_id == current.citizen_id, MedicalClaim.submit_ref == submit_ref
                )
            ).scalar_one_or_none()
            if sent is not None:
                return self._view(session, sent)
            claim = MedicalClaim(
                citizen_id=current.citizen_id, submit_ref=submit_ref, member_id=member.id, hospital_name=name,
                hospital_level=form.hospital_level, kind=form.kind.value, day=form.day, total_fen=form.total_fen,
                state=ClaimState.SUBMITTED.value, created_at=now, updated_at=now,
            )  # fmt: skip
            session.add(claim)
            session.flush()
            for doc in checked:
                self._add_document(session, claim, doc, now)
            session.add(MedicalClaimEvent(claim_id=claim.id, from_state=None, to_state=claim.state,
                                          actor=f"citizen:{current.citizen_id}", at=now))  # fmt: skip
            session.flush()
            return self._view(session, claim)

    @staticmethod
    def _add_document(session: Session, claim: MedicalClaim, doc: Document, now: dt.datetime) -> None:
        session.add(
            MedicalClaimDocument(
                claim_id=claim.id,
                doc_type=doc.doc_type,
                content_type=doc.content_type,
                size_bytes=len(doc.content),
                sha256=hashlib.sha256(doc.content).hexdigest(),
                content=doc.content,
                uploaded_at=now,
            )
        )

    def add_document(self, current: CurrentSession, claim_id: int, doc: Document) -> ClaimView:
        check_document(doc)
        with self.sessions() as session, session.begin():
            claim = self._own(session, current, claim_id, lock=True)
            if claim.state != ClaimState.SUBMITTED.value:
                raise MedicalError(MedicalCode.E_MED_CLAIM_STATE, f"a {claim.state} claim takes no more documents")
            count = session.scalar(select(func.count()).where(MedicalClaimDocument.claim_id == claim.id)) or 0
            if count >= DOCS_PER_CLAIM_MAX:
                raise MedicalError(MedicalCode.E_MED_CLAIM_DOCUMENT, f"at most {DOCS_PER_CLAIM_MAX} documents")
            self._add_document(session, claim, doc, self.clock())
            session.flush()
            return self._view(session, claim)

    def _own(self, session: Session, current: CurrentSession, claim_id: int, *, lock: bool = False) -> MedicalClaim:
        member = self.member_of(session, current)
        stmt = select(MedicalClaim).where(MedicalClaim.id == claim_id, MedicalClaim.member_id == member.id)
        claim = session.execute(stmt.with_for_update() if lock else stmt).scalar_one_or_none()
        if claim is None:  # another citizen's claim is not found either: nothing is revealed
            raise MedicalError(MedicalCode.E_MED_CLAIM_NOT_FOUND, f"no claim {claim_id} of yours")
        return claim

    def mine(self, current: CurrentSession) -> list[ClaimView]:
        with self.sessions() as session:
            member = self.member_of(session, current)
            claims = session.scalars(
                select(MedicalClaim)
                .where(MedicalClaim.member_id == member.id)
                .order_by(MedicalClaim.id.desc())
                .limit(100)
            ).all()
            return [self._view(session, c) for c in claims]

    def one(self, current: CurrentSession, claim_id: int) -> ClaimView:
        with self.sessions() as session:
            return self._view(session, self._own(session, current, claim_id))

    def year_totals(self, current: CurrentSession, year: int) -> dict[str, tuple[int, int]]:
        """(deductible used, fund paid) per visit kind: what the citizen's page shows."""
        with self.sessions() as session:
            member = self.member_of(session, current)
            return {k.value: accumulators.year_totals(session, member.id, year, k) for k in VisitKind}

    # --- staff review -----------------------------------------------------------------------------

    def review(
        self,
        claim_id: int,
        action: ClaimAction,
        *,
        actor: str,
        covered_fen: int | None = None,
        reason_code: str | None = None,
        note: str = "",
    ) -> ClaimView:
        """One staff decision on a claim (check, valuate, pay, reject), audited, in one transaction."""
        note = note.strip()[:200]
        if action is ClaimAction.REJECT:
            check_reason(reason_code or "")
        now = self.clock()
        with self.sessions() as session, session.begin():
            claim = session.execute(
                select(MedicalClaim).where(MedicalClaim.id == claim_id).with_for_update()
            ).scalar_one_or_none()
            if claim is None:
                raise MedicalError(MedicalCode.E_MED_CLAIM_NOT_FOUND, f"no claim {claim_id}")
            before = ClaimState(claim.state)
            after = next_state(before, action)
            member = session.get(MedicalMember, claim.member_id)
            assert member is not None
            if action is ClaimAction.CHECK:
                if covered_fen is None or not 0 <= covered_fen <= claim.total_fen:
                    raise MedicalError(MedicalCode.E_MED_BAD_BILL, f"the covered part is 0..{claim.total_fen} fen")
                claim.covered_fen = covered_fen
            elif action is ClaimAction.VALUATE:
                self._valuate(session, claim, member)
            elif action is ClaimAction.PAY:
                self._pay(session, claim, member)
            else:
                if before is ClaimState.VALUATED:
                    accumulators.move(
                        session, member.id, claim.day.year, VisitKind(claim.kind), self._delta(claim), sign=-1
                    )
                claim.reason_code = reason_code
            claim.state = after.value
            claim.updated_at = now
            session.add(MedicalClaimEvent(claim_id=claim.id, from_state=before.value, to_state=after.value, actor=actor,
                                          reason_code=claim.reason_code if action is ClaimAction.REJECT else None,
                                          note=note, at=now))  # fmt: skip
            self.audit.record(
                session,
                actor=actor,
                action="medical_claim_review",
                target=card_target(member.issuer_id, member.card_asn),
                detail=f"claim {claim.id}: {before.value} -> {after.value}"
                + (f" (reason {claim.reason_code})" if action is ClaimAction.REJECT else ""),
            )
            session.flush()
            return self._view(session, claim)

    @staticmethod
    def _delta(claim: MedicalClaim) -> Delta:
        assert claim.deductible_fen is not None and claim.fund_fen is not None
        return Delta(claim.day, claim.deductible_fen, claim.fund_fen)

    def _valuate(self, session: Session, claim: MedicalClaim, member: MedicalMember) -> None:
        assert claim.covered_fen is not None, "a checked claim has its covered part"
        kind = VisitKind(claim.kind)
        rule = self.rules.rule_for(claim.day, member.region, ELSEWHERE, kind)
        acc: Accumulator = accumulators.read(session, member.id, claim.day.year, kind, claim.day)
        split = reimburse(rule, Bill(claim.total_fen, claim.covered_fen), acc, claim.day)
        accumulators.move(session, member.id, claim.day.year, kind, split.delta, sign=1)
        claim.fund_fen = split.fund_fen
        claim.deductible_fen = split.deductible_fen
        claim.rule_version = split.rule_version

    @staticmethod
    def _pay(session: Session, claim: MedicalClaim, member: MedicalMember) -> None:
        assert claim.fund_fen is not None
        if claim.fund_fen == 0:
            return  # nothing to pay: the claim is paid with 0 (the deductible took it all)
        load_id = ids.claim_payout_load(claim.id)
        clearing_loads.create_pending(
            session, load_id, member.issuer_id, member.card_asn, claim.fund_fen,
            kind=LoadKind.REFUND, payer_account_id=accounts.medical_fund(session),
        )  # fmt: skip
        claim.payout_load_id = load_id

    def queue(self, state: ClaimState | None = None, *, limit: int = 100) -> list[ClaimView]:
        """Claims waiting for staff, oldest first (the review console)."""
        with self.sessions() as session:
            stmt = select(MedicalClaim).order_by(MedicalClaim.id).limit(max(1, min(limit, 500)))
            if state is not None:
                stmt = stmt.where(MedicalClaim.state == state.value)
            return [self._view(session, c) for c in session.scalars(stmt)]

    @staticmethod
    def _view(session: Session, claim: MedicalClaim) -> ClaimView:
        docs = session.execute(
            select(MedicalClaimDocument.id, MedicalClaimDocument.doc_type, MedicalClaimDocument.size_bytes)
            .where(MedicalClaimDocument.claim_id == claim.id)
            .order_by(MedicalClaimDocument.id)
        ).all()
        events = session.execute(
            select(
                MedicalClaimEvent.from_state,
                MedicalClaimEvent.to_state,
                MedicalClaimEvent.reason_code,
                MedicalClaimEvent.at,
            )
            .where(MedicalClaimEvent.claim_id == claim.id)
            .order_by(MedicalClaimEvent.id)
        ).all()
        return ClaimView(
            id=claim.id, state=claim.state, hospital_name=claim.hospital_name, kind=claim.kind, day=claim.day,
            total_fen=claim.total_fen, covered_fen=claim.covered_fen, fund_fen=claim.fund_fen,
            deductible_fen=claim.deductible_fen, rule_version=claim.rule_version, reason_code=claim.reason_code,
            payout_load_id=claim.payout_load_id,
            documents=tuple((d[0], d[1], d[2]) for d in docs),
            events=tuple((e[0], e[1], e[2], e[3]) for e in events),
        )  # fmt: skip


__all__ = ["CARD_ASSURANCE", "ClaimForm", "ClaimService", "ClaimView"]
