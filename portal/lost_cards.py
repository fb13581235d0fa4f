"""Lost cards (挂失) and their replacement (补卡): the citizen's report, the clerk's replacement and unblock.

Issue 10, "Lost card and replacement"; ``docs/portal.md``, "Lost cards and replacement" and
"The lost-card money rule". The rules are pure functions (``report_decision``,
``replacement_due_at``, ``unblock_decision``); ``LostCardService`` is the shell: the
database, the rate limiter, the Redis denylist mirror, the card writer and the clock are
passed in. The money is clearing's: ``clearing.replacement`` moves the balance.

States of a report (one open report per card at most, a partial unique index):

- no report, card active or blocked — the citizen reports (the card bound to the session's
  citizen) → ``lost``: card status ``lost``, a denylist entry effective now, the Redis
  version bumps;
- ``lost`` — reported again → ``lost``, nothing changes (the same report is answered);
- card replaced — reported → ``E_LOST_CARD_REPLACED``;
- ``lost`` — a clerk replaces after the waiting period → ``replaced``: a new card bound to
  the citizen, the balance moved (``BALANCE_MOVE``); too early or with loads open →
  ``E_LOST_TOO_EARLY`` / ``E_LOST_LOADS_OPEN``, nothing changes;
- ``lost`` — a clerk unblocks (the card was found) → ``found``: the denylist entry removed,
  the card ``active`` again (unless a validator has blocked its application: then it stays
  ``blocked`` until unblocked on the card);
- ``replaced`` — a clerk unblocks → ``E_LOST_CARD_REPLACED``.
"""

from __future__ import annotations

import datetime as dt
import enum
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Protocol

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from cardos.image import CardImage
from clearing import denylist, registry, replacement
from clearing.contract.codes import Code as ClearingCode
from clearing.db import lock_for_update
from clearing.errors import ClearingError
from clearing.keystore import KeyStore
from clearing.ledger import account_balance
from clearing.models import Card, CardStatus, DenylistEntryRow
from portal import identity, topups
from portal.accounts import AccountService, CurrentSession
from portal.audit import AuditLog, card_target, mask_asn
from portal.errors import Code, PortalError
from portal.models import PortalCardBinding, PortalCitizen, PortalLostReport, PortalTopup
from portal.ratelimit import MemoryLimiter, RateLimiter, Rule
from portal.staff import StaffSession
from portal.topup_service import topup_of

log = logging.getLogger(__name__)

REPLACEMENT_WAIT_S_DEFAULT: Final = 7 * 24 * 3600
DENYLIST_REASON: Final = "lost"
SEARCH_RESULTS_MAX: Final = 50
_REPORT_PER_CITIZEN: Final = Rule(10, 60 * 60)
_REPORT_PER_IP: Final = Rule(30, 60 * 60)


# --- the pure rules ------------------------------------------------------------------------------


class ReportDecision(enum.Enum):
    NEW = "new"  # denylist it, open a report
    ALREADY = "already"  # an open report exists: answer it, change nothing
    REPLACED = "replaced"  # refused: the card was replaced


def report_decision(*, card_status: str, replaced: bool, open_report: bool) -> ReportDecision:
    """What a lost-card report does to a card in this state (module docstring, the table)."""
    if replaced or card_status == CardStatus.REPLACED.value:
        return ReportDecision.REPLACED
    if open_report:
        return ReportDecision.ALREADY
    return ReportDecision.NEW


def replacement_due_at(reported_at: dt.datetime, wait_s: int) -> dt.datetime:
    """The earliest time a clerk may replace the card: the report's time plus the waiting period."""
    assert reported_at.tzinfo is not None and wait_s >= 0
    return reported_at + dt.timedelta(seconds=wait_s)


class UnblockDecision(enum.Enum):
    REMOVE = "remove"
    NOT_LISTED = "not_listed"
    REPLACED = "replaced"


def unblock_decision(*, replaced: bool, listed: bool) -> UnblockDecision:
    if replaced:
        return UnblockDecision.REPLACED
    return UnblockDecision.REMOVE if listed else UnblockDecision.NOT_LISTED


# --- views ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReportView:
    report_id: int
    issuer_id: str
    card_asn: str
    state: str
    reported_at: dt.datetime
    replacement_due_at: dt.datetime
    denylist_version: int
    new: bool = False  # this call made the report


@dataclass(frozen=True, slots=True)
class ReplacementView:
    issuer_id: str
    old_card_asn: str
    new_card_asn: str
    moved_fen: int
    retained_fen: int
    held_fen: int
    liability_fen: int
    shadow_fen: int
    transfer_id: str | None
    replaced_at: dt.datetime
    replayed: bool
    pin: str | None  # the new card's PIN, shown once (only when made now and the card has citizen login)
    image_ref: str | None  # where the card writer put the new card's image (only when made now)


@dataclass(frozen=True, slots=True)
class CardSummary:
    """What the counter sees of a card: masked personal data only."""

    issuer_id: str
    card_asn: str
    card_type: str
    status: str
    expiry_date: dt.date
    shadow_balance_fen: int
    ledger_balance_fen: int
    holder_name_masked: str | None
    citizen_mobile_masked: str | None
    citizen_name_masked: str | None
    citizen_id_number_masked: str | None
    report: ReportView | None
    replaced_by_asn: str | None
    open_loads: int
    held_fen: int


class CardWriter(Protocol):
    """Where a replacement card's image goes (the counter's card writer): answers a reference to it."""

    def write(self, image: CardImage, issuer_id: str, card_asn: str) -> str: ...

    def discard(self, ref: str) -> None: ...


@dataclass(frozen=True, slots=True)
class DirectoryCardWriter:
    """Card images as files (``<dir>/<issuer>-<asn>.json``), as ``yikatong card issue --out`` writes them."""

    directory: Path

    def write(self, image: CardImage, issuer_id: str, card_asn: str) -> str:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{issuer_id}-{card_asn}.json"
        image.save_atomic(path)
        return str(path)

    def discard(self, ref: str) -> None:
        Path(ref).unlink(missing_ok=True)


@dataclass(frozen=True, slots=True)
class LostLimits:
    report_per_citizen: Rule = _REPORT_PER_CITIZEN
    report_per_ip: Rule = _REPORT_PER_IP


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _report_view(row: PortalLostReport, wait_s: int, *, new: bool = False) -> ReportView:
    return ReportView(
        row.id, row.issuer_id, row.card_asn, row.state, row.reported_at,
        replacement_due_at(row.reported_at, wait_s), row.denylist_version, new,
    )  # fmt: skip


# --- the shell ------------------------------------------------------------------------------------


@dataclass
class LostCardService:
    sessions: sessionmaker[Session]
    accounts: AccountService  # bound-card checks; its lookup key finds citizens by ID number
    audit: AuditLog
    keystore: KeyStore | None = None  # needed only to issue replacements
    writer: CardWriter | None = None
    bus: object | None = None  # clearing.redis_bus.RedisBus: the terminals' denylist mirror
    limiter: RateLimiter = field(default_factory=MemoryLimiter)
    limits: LostLimits = field(default_factory=LostLimits)
    wait_s: int = REPLACEMENT_WAIT_S_DEFAULT
    clock: Callable[[], dt.datetime] = _utcnow

    def __post_init__(self) -> None:
        assert self.wait_s >= 0

    @contextmanager
    def _tx(self) -> Iterator[Session]:
        with self.sessions() as session, session.begin():
            yield session

    def _limit(self, key: str, rule: Rule) -> None:
        if not self.limiter.hit(key, rule):
            raise PortalError(Code.E_RATE_LIMITED, f"too many attempts; try again in {int(rule.window_s)} s at most")

    def _publish(self) -> None:
        """Mirror the committed denylist into Redis; a failure heals at the next terminal poll."""
        if self.bus is None:
            return
        try:
            with self.sessions() as session:
                denylist.publish(session, self.bus)
        except Exception as exc:  # noqa: BLE001 - the database is the truth; clearing's API republishes
            log.warning("denylist publish to Redis failed (%s); terminals' next poll repairs it", type(exc).__name__)

    @staticmethod
    def _open_report(session: Session, issuer_id: str, card_asn: str) -> PortalLostReport | None:
        return session.scalar(
            select(PortalLostReport).where(
                PortalLostReport.issuer_id == issuer_id,
                PortalLostReport.card_asn == card_asn,
                PortalLostReport.state == "lost",
            )
        )

    # --- the citizen's report -------------------------------------------------------------------

    def report(self, current: CurrentSession, issuer_id: str, card_asn: str, *, client_ip: str) -> ReportView:
        """Report a card bound to the session's citizen lost: denylisted everywhere at once; idempotent."""
        issuer_id, card_asn = issuer_id.lower(), card_asn.lower()
        self._limit(f"lost:citizen:{current.citizen_id}", self.limits.report_per_citizen)
        self._limit(f"lost:ip:{client_ip}", self.limits.report_per_ip)
        actor = f"citizen:{current.citizen_id}"
        target = card_target(issuer_id, card_asn)
        try:
            self.accounts.require_bound(current, issuer_id, card_asn)
        except PortalError as exc:
            self.audit.record_now(actor=actor, action="lost_report", target=target, outcome=exc.code.value)
            raise
        now = self.clock()
        with self._tx() as session:
            lock_for_update(session)
            card = session.scalar(
                select(Card).where(Card.issuer_id == issuer_id, Card.card_asn == card_asn).with_for_update()
            )
            if card is None:
                raise PortalError(Code.E_CARD_NOT_FOUND, "no such card is registered")
            existing = self._open_report(session, issuer_id, card_asn)
            decision = report_decision(
                card_status=card.status, replaced=card.replaced_by_id is not None, open_report=existing is not None
            )
            if decision is ReportDecision.ALREADY:
                assert existing is not None
                return _report_view(existing, self.wait_s)
            if decision is ReportDecision.REPLACED:
                raise PortalError(Code.E_LOST_CARD_REPLACED, "the card was replaced already")
            version = denylist.add(session, issuer_id, card_asn, DENYLIST_REASON, effective_at=now)
            if card.status in (CardStatus.ACTIVE.value, CardStatus.BLOCKED.value):
                card.status = CardStatus.LOST.value
            row = PortalLostReport(
                issuer_id=issuer_id, card_asn=card_asn, citizen_id=current.citizen_id, assurance=current.assurance,
                state="lost", reported_at=now, denylist_version=version,
            )  # fmt: skip
            session.add(row)
            session.flush()
            self.audit.record(session, actor=actor, action="lost_report", target=target,
                              detail=f"assurance {current.assurance}, denylist version {version}")  # fmt: skip
            view = _report_view(row, self.wait_s, new=True)
        self._publish()
        log.info("citizen %d reported a card lost (report %d)", current.citizen_id, view.report_id)
        return view

    def reports(self, current: CurrentSession) -> list[ReportView]:
        with self.sessions() as session:
            rows = session.scalars(
                select(PortalLostReport)
                .where(PortalLostReport.citizen_id == current.citizen_id)
                .order_by(PortalLostReport.reported_at.desc(), PortalLostReport.id.desc())
                .limit(100)
            )
            return [_report_view(r, self.wait_s) for r in rows]

    # --- the counter ----------------------------------------------------------------------------

    def replace(self, staff: StaffSession, issuer_id: str, card_asn: str) -> ReplacementView:
        """Issue the replacement of a reported card and move its balance (``clearing.replacement``)."""
        issuer_id, card_asn = issuer_id.lower(), card_asn.lower()
        target = card_target(issuer_id, card_asn)
        try:
            view = self._replace(staff, issuer_id, card_asn, target)
        except PortalError as exc:
            self.audit.record_now(actor=staff.actor, action="replacement", target=target, outcome=exc.code.value)
            raise
        return view

    def _replace(self, staff: StaffSession, issuer_id: str, card_asn: str, target: str) -> ReplacementView:
        if self.keystore is None or self.writer is None:
            raise PortalError(Code.E_LOST_REPLACEMENT_FAILED, "this server has no key store or card writer")
        now = self.clock()
        image_ref: str | None = None
        try:
            with self._tx() as session:
                lock_for_update(session)
                card = registry.get_card(session, issuer_id, card_asn)
                if card is None:
                    raise PortalError(Code.E_CARD_NOT_FOUND, "no such card is registered")
                report = self._open_report(session, issuer_id, card_asn)
                done = replacement.find(session, issuer_id, card_asn)
                if done is None and report is None:
                    raise PortalError(Code.E_LOST_NOT_REPORTED, "the card has no open lost-card report")
                # The waiting period runs from the citizen's report (the denylist entry's effective
                # time is the same instant when the report made it; earlier if staff listed it first).
                wait_s = self.wait_s
                if report is not None:
                    since = replacement.listed_since(session, issuer_id, card_asn)
                    if since is not None and since < report.reported_at:
                        wait_s += int((report.reported_at - since).total_seconds())
                if done is None:
                    _refuse_topups_in_flight(session, issuer_id, card_asn)
                result = replacement.replace(
                    session, self.keystore, issuer_id=issuer_id, card_asn=card_asn, now=now, wait_s=wait_s,
                    replaced_by=staff.actor,
                )  # fmt: skip
                pin = None
                if not result.replayed:
                    assert result.image is not None
                    pin = result.image.auth.pin if result.image.auth is not None else None
                    self._bind_new(session, issuer_id, card_asn, result.new_card_asn, now)
                    if report is not None:
                        report.state = "replaced"
                        report.closed_at = now
                    image_ref = self.writer.write(result.image, issuer_id, result.new_card_asn)
                plan = result.plan
                self.audit.record(
                    session, actor=staff.actor, action="replacement", target=target,
                    outcome="ok" if not result.replayed else "ok (replayed)",
                    detail=f"new card {mask_asn(result.new_card_asn)}; moved {plan.moved_fen} fen, "
                    f"retained {plan.retained_fen} fen (held {plan.held_fen} of liability {plan.liability_fen})",
                )  # fmt: skip
        except ClearingError as exc:
            if image_ref is not None:
                self.writer.discard(image_ref)
            raise _portal_error(exc) from exc
        except BaseException:
            if image_ref is not None:
                self.writer.discard(image_ref)
            raise
        log.info("%s replaced a card: moved %d fen", staff.actor, result.plan.moved_fen)
        return ReplacementView(
            issuer_id, card_asn, result.new_card_asn, plan.moved_fen, plan.retained_fen, plan.held_fen,
            plan.liability_fen, result.shadow_fen, result.transfer_id, result.replaced_at, result.replayed, pin,
            image_ref,
        )  # fmt: skip

    @staticmethod
    def _bind_new(session: Session, issuer_id: str, old_asn: str, new_asn: str, now: dt.datetime) -> None:
        citizen_id = session.scalar(
            select(PortalCardBinding.citizen_id).where(
                PortalCardBinding.issuer_id == issuer_id, PortalCardBinding.card_asn == old_asn
            )
        )
        if citizen_id is not None:
            session.add(
                PortalCardBinding(citizen_id=citizen_id, issuer_id=issuer_id, card_asn=new_asn, bound_at=now,
                                  how="replacement")
            )  # fmt: skip

    def unblock(self, staff: StaffSession, issuer_id: str, card_asn: str) -> CardSummary:
        """A found card: off the denylist, the report closed ``found``; refused once replaced."""
        issuer_id, card_asn = issuer_id.lower(), card_asn.lower()
        target = card_target(issuer_id, card_asn)
        now = self.clock()
        try:
            with self._tx() as session:
                lock_for_update(session)
                card = session.scalar(
                    select(Card).where(Card.issuer_id == issuer_id, Card.card_asn == card_asn).with_for_update()
                )
                if card is None:
                    raise PortalError(Code.E_CARD_NOT_FOUND, "no such card is registered")
                listed = replacement.listed_since(session, issuer_id, card_asn) is not None
                decision = unblock_decision(replaced=card.replaced_by_id is not None, listed=listed)
                if decision is UnblockDecision.REPLACED:
                    raise PortalError(Code.E_LOST_CARD_REPLACED, "the card was replaced: it stays on the denylist")
                if decision is UnblockDecision.NOT_LISTED:
                    raise PortalError(Code.E_LOST_NOT_REPORTED, "the card is not on the denylist")
                if _listed_reason(session, issuer_id, card_asn) != DENYLIST_REASON:
                    # Listed by the operator for another reason (fraud, say): a lost-card report on top of
                    # it left that entry live, and "found" must not lift it. Only its owner does.
                    raise PortalError(
                        Code.E_LOST_NOT_REPORTED,
                        "the card is on the denylist for a reason other than a lost-card report: "
                        "the counter does not lift it",
                    )
                try:
                    version = denylist.remove(session, issuer_id, card_asn, removed_at=now)
                except ClearingError as exc:
                    raise _portal_error(exc) from exc
                if card.status == CardStatus.LOST.value:
                    card.status = CardStatus.ACTIVE.value
                report = self._open_report(session, issuer_id, card_asn)
                if report is not None:
                    report.state = "found"
                    report.closed_at = now
                self.audit.record(session, actor=staff.actor, action="unblock", target=target,
                                  detail=f"denylist version {version}; card {card.status}")  # fmt: skip
        except PortalError as exc:
            self.audit.record_now(actor=staff.actor, action="unblock", target=target, outcome=exc.code.value)
            raise
        self._publish()
        return self.view(staff, issuer_id, card_asn, audited=False)

    # --- search and view (counter) ----------------------------------------------------------

    def search(self, staff: StaffSession, query: str) -> list[CardSummary]:
        """Cards by card number (20 hex), resident ID number (18) or mobile number (11 digits)."""
        text = query.strip()
        compact = text.replace(" ", "").replace("-", "")
        try:
            with self.sessions() as session:
                if len(compact) == 20 and all(c in "0123456789abcdefABCDEF" for c in compact):
                    masked = f"asn:{mask_asn(compact)}"
                    cards = registry.find_cards(session, compact)
                else:
                    masked, citizen_ids = self._citizens(session, text)
                    cards = self._cards_of(session, citizen_ids)
                summaries = [self._summary(session, c) for c in cards[:SEARCH_RESULTS_MAX]]
        except PortalError as exc:
            self.audit.record_now(actor=staff.actor, action="card_search", target="search:?", outcome=exc.code.value)
            raise
        self.audit.record_now(actor=staff.actor, action="card_search", target=f"search:{masked}",
                              detail=f"{len(summaries)} cards")  # fmt: skip
        return summaries

    def _citizens(self, session: Session, text: str) -> tuple[str, list[int]]:
        refused = PortalError(Code.E_STAFF_SEARCH, "search by card number, resident ID number or mobile number")
        if len(text.strip()) == 18:
            try:
                rid = identity.parse_id_number(text, today=self.accounts.today())
            except PortalError:
                raise refused from None
            digest = identity.id_number_hash(rid, self.accounts.lookup_key)
            ids = list(session.scalars(select(PortalCitizen.id).where(PortalCitizen.id_number_hash == digest)))
            return f"id:{rid.masked}", ids
        try:
            mobile = identity.parse_mobile(text)
        except PortalError:
            raise refused from None
        ids = list(session.scalars(select(PortalCitizen.id).where(PortalCitizen.mobile == mobile.number)))
        return f"mobile:{mobile.masked}", ids

    @staticmethod
    def _cards_of(session: Session, citizen_ids: list[int]) -> list[Card]:
        if not citizen_ids:
            return []
        pairs = session.execute(
            select(PortalCardBinding.issuer_id, PortalCardBinding.card_asn)
            .where(PortalCardBinding.citizen_id.in_(citizen_ids))
            .order_by(PortalCardBinding.bound_at, PortalCardBinding.id)
            .limit(SEARCH_RESULTS_MAX)
        ).all()
        cards = [registry.get_card(session, i, a) for i, a in pairs]
        return [c for c in cards if c is not None]

    def view(self, staff: StaffSession, issuer_id: str, card_asn: str, *, audited: bool = True) -> CardSummary:
        issuer_id, card_asn = issuer_id.lower(), card_asn.lower()
        with self.sessions() as session:
            card = registry.get_card(session, issuer_id, card_asn)
            summary = self._summary(session, card) if card is not None else None
        if audited:
            self.audit.record_now(
                actor=staff.actor, action="card_view", target=card_target(issuer_id, card_asn),
                outcome="ok" if summary is not None else Code.E_CARD_NOT_FOUND.value,
            )  # fmt: skip
        if summary is None:
            raise PortalError(Code.E_CARD_NOT_FOUND, "no such card is registered")
        return summary

    def _summary(self, session: Session, card: Card) -> CardSummary:
        citizen = session.scalar(
            select(PortalCitizen)
            .join(PortalCardBinding, PortalCardBinding.citizen_id == PortalCitizen.id)
            .where(PortalCardBinding.issuer_id == card.issuer_id, PortalCardBinding.card_asn == card.card_asn)
        )
        report = session.scalar(
            select(PortalLostReport)
            .where(PortalLostReport.issuer_id == card.issuer_id, PortalLostReport.card_asn == card.card_asn)
            .order_by(PortalLostReport.reported_at.desc(), PortalLostReport.id.desc())
            .limit(1)
        )
        replaced_by = session.get(Card, card.replaced_by_id) if card.replaced_by_id is not None else None
        return CardSummary(
            issuer_id=card.issuer_id,
            card_asn=card.card_asn,
            card_type=card.card_type,
            status=card.status,
            expiry_date=card.expiry_date,
            shadow_balance_fen=card.shadow_balance_fen,
            ledger_balance_fen=account_balance(session, card.account_id).credit_balance_fen,
            holder_name_masked=identity.mask_real_name(card.holder_name) if card.holder_name else None,
            citizen_mobile_masked=identity.Mobile(citizen.mobile).masked if citizen is not None else None,
            citizen_name_masked=identity.mask_real_name(citizen.real_name) if citizen is not None else None,
            citizen_id_number_masked=citizen.id_number_masked if citizen is not None else None,
            report=_report_view(report, self.wait_s) if report is not None else None,
            replaced_by_asn=replaced_by.card_asn if replaced_by is not None else None,
            open_loads=replacement.open_loads(session, card.issuer_id, card.card_asn),
            held_fen=replacement.held_fen(session, card.issuer_id, card.card_asn),
        )

    def open_reports(self) -> int:
        with self.sessions() as session:
            return int(
                session.scalar(select(func.count(PortalLostReport.id)).where(PortalLostReport.state == "lost")) or 0
            )


def _listed_reason(session: Session, issuer_id: str, card_asn: str) -> str | None:
    """The reason of the card's live denylist entry (None: not listed)."""
    return session.scalar(
        select(DenylistEntryRow.reason).where(
            DenylistEntryRow.issuer_id == issuer_id,
            DenylistEntryRow.card_asn == card_asn,
            DenylistEntryRow.removed_version.is_(None),
        )
    )


def _refuse_topups_in_flight(session: Session, issuer_id: str, card_asn: str) -> None:
    """``E_LOST_LOADS_OPEN`` while a portal top-up of the card may still land on it.

    Clearing refuses a replacement with loads pending or authorized, but it sees only
    ``pending_loads``: a top-up paid whose ``CreateLoad`` has not run yet (the outbox is behind,
    the effect failing) or one still open for payment has no load row. Replaced anyway, its load
    would be made on the replaced card, which never takes one: the citizen's money would wait for
    the load window's refund. Finance refunds a paid one (``POST /staff/api/refunds``: the load is
    voided, then the payment refunded); one still open for payment ends with its payment window.
    No top-up can start meanwhile: the card is not active.
    """
    rows = session.scalars(
        select(PortalTopup).where(
            PortalTopup.issuer_id == issuer_id,
            PortalTopup.card_asn == card_asn,
            PortalTopup.state.not_in([s.value for s in topups.FINAL]),
        )
    )
    waiting = [row.topup_id for row in rows if topups.may_still_land_fen(topup_of(row)) > 0]
    if waiting:
        raise PortalError(
            Code.E_LOST_LOADS_OPEN,
            f"{len(waiting)} top-up(s) of the card are paid or being paid and not loaded: refund them first "
            "(finance), or wait for the payment window to end",
        )


_CLEARING_TO_PORTAL: Final = {
    ClearingCode.E_CARD_NOT_LOST: Code.E_LOST_NOT_REPORTED,
    ClearingCode.E_REPLACEMENT_TOO_EARLY: Code.E_LOST_TOO_EARLY,
    ClearingCode.E_REPLACEMENT_LOADS_OPEN: Code.E_LOST_LOADS_OPEN,
    ClearingCode.E_UNKNOWN_CARD: Code.E_CARD_NOT_FOUND,
    ClearingCode.E_NOT_LISTED: Code.E_LOST_NOT_REPORTED,
}


def _portal_error(exc: ClearingError) -> PortalError:
    """Clearing's refusal in the portal's registry (its sentence kept: it names no person)."""
    code = _CLEARING_TO_PORTAL.get(exc.code, Code.E_LOST_REPLACEMENT_FAILED)
    return PortalError(code, exc.message)


__all__ = [
    "REPLACEMENT_WAIT_S_DEFAULT",
    "CardSummary",
    "CardWriter",
    "DirectoryCardWriter",
    "LostCardService",
    "LostLimits",
    "ReplacementView",
    "ReportDecision",
    "ReportView",
    "UnblockDecision",
    "replacement_due_at",
    "report_decision",
    "unblock_decision",
]
