"""The top-up sweep: what no webhook and no effect's answer will bring, found and applied at the portal's pace.

``docs/portal.md``, "What the shell must do" and "Sweep". The state machine heals a lost
effect by issuing it again and a late event by absorbing it, but something must notice when
nothing arrives at all. One run, in this order, each step bounded by ``batch_max``:

1. **Learn from clearing.** A card that takes its load at a validator or kiosk, or a load
   clearing expires or cancels, moves clearing's ``pending_loads`` row and tells the portal
   nothing. Top-ups in ``paid``, ``load_pending`` or ``refund_requested`` (load not voided)
   whose load row says otherwise are fed the event it means: ``LoadCompleted`` (posted),
   ``LoadVoided`` (cancelled, expired, refunded), ``LoadCreated`` (a ``paid`` top-up whose
   load exists: the answer was lost).
2. **The payment window** (``payment_window_s`` from creation). A top-up still open for
   payment past it: its intent is asked for first, because a success whose webhook was lost
   must be loaded, not cancelled (``PaymentSucceeded``); one still processing waits; else
   ``PaymentWindowExpired`` (canceled, the intent cancelled).
3. **The load window.** A paid top-up not loaded by its load's ``expires_at`` (set to the
   load window when the load is made), or, for a load without one, ``load_window_s`` after
   the top-up last moved: ``LoadWindowExpired`` (the load voided, then the payment refunded).
4. **Refunds made at the provider** whose webhook never came or was dropped (one that
   overtook the payment's own success): the intent's succeeded refunds (``refunds_of``)
   against ``refunded_fen`` of top-ups holding an unloaded payment, ``RefundSucceeded`` when
   the provider knows more. These cost a provider call each, so each run takes the next
   ``batch_max`` by top-up id (a cursor that wraps), stale top-ups only.
5. **Due effects** of top-ups that have not moved for ``stale_after_s``: written to the
   outbox if it lacks them (``topups.due_effects``); then the effects of the top-ups this run
   moved, then every effect older than ``stale_after_s`` (newer ones belong to the request or
   webhook that wrote them).
6. **Expired portal sessions** are deleted. Card-login challenges are not in the database
   (``portal.card_login``: the process store drops them itself, Redis by ``PX``).

**Why it is safe.** Every decision is re-taken under the top-up's row lock
(``TopupService.sweep_apply``: ``lock_for_update``, then ``FOR UPDATE``), on the state as it
is then, and applied in the transaction that writes state and effects: a webhook, a request
or a second sweep racing it finds the new state and its event is absorbed. Provider calls
run through the outbox, whose lease lets one runner at a time call for an effect. A crash at
any point leaves committed steps and their effects due; the next run finds the rest again.
Nothing here is a money decision: the state machine (``portal.topups``) makes them.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from sqlalchemy import Select, String, and_, cast, delete, false, func, or_, select
from sqlalchemy.orm import Session

from clearing.errors import ClearingError
from clearing.models import LoadState, PendingLoad
from portal import topups
from portal.audit import mask_asn
from portal.errors import Code, PortalError
from portal.models import PortalSession, PortalTopup
from portal.topup_service import TopupService, event_of_load
from portal.webhooks import METADATA_TOPUP_ID

log = logging.getLogger(__name__)
_CARD_NUMBER: Final = re.compile(r"(?<![0-9A-Fa-f])[0-9A-Fa-f]{20}(?![0-9A-Fa-f])")

PAYMENT_WINDOW_S_DEFAULT: Final = 60 * 60  # an hour to pay: Stripe's own intents live far longer
LOAD_WINDOW_S_DEFAULT: Final = 30 * 24 * 60 * 60  # a month to meet a load-capable reader
STALE_AFTER_S_DEFAULT: Final = 5 * 60
BATCH_MAX_DEFAULT: Final = 100
INTERVAL_S_DEFAULT: Final = 60.0
ERRORS_KEPT_MAX: Final = 50

_UNLOADED: Final = (topups.State.PAID.value, topups.State.LOAD_PENDING.value, topups.State.REFUND_REQUESTED.value)
_VOIDED: Final = (LoadState.CANCELLED.value, LoadState.EXPIRED.value, LoadState.REFUNDED.value)
_OPEN: Final = (LoadState.PENDING.value, LoadState.AUTHORIZED.value)
_PAYABLE: Final = tuple(s.value for s in topups.OPEN_FOR_PAYMENT)
_WAITING: Final = (topups.State.PAID.value, topups.State.LOAD_PENDING.value)
_STILL_PAYING: Final = frozenset({"processing", "requires_capture"})  # the provider may yet succeed
PHASES: Final = ("clearing", "payment_window", "load_window", "refunds", "effects", "sessions")


@dataclass(frozen=True, slots=True)
class SweepConfig:
    """From the settings: ``portal_payment_window_s``, ``portal_load_window_s``, ``portal_sweep_*``."""

    payment_window_s: int = PAYMENT_WINDOW_S_DEFAULT
    load_window_s: int = LOAD_WINDOW_S_DEFAULT
    stale_after_s: int = STALE_AFTER_S_DEFAULT
    batch_max: int = BATCH_MAX_DEFAULT

    def __post_init__(self) -> None:
        assert self.payment_window_s > 0 and self.load_window_s > 0
        assert self.stale_after_s >= 0 and self.batch_max > 0


@dataclass
class SweepReport:
    """What one run did; ``errors`` holds codes and top-up ids only (no personal data)."""

    loads_completed: int = 0
    loads_voided: int = 0
    loads_created: int = 0
    payments_found: int = 0
    payments_expired: int = 0
    loads_expired: int = 0
    refunds_found: int = 0
    effects_requeued: int = 0
    effects_run: int = 0
    sessions_deleted: int = 0
    errors: list[str] = field(default_factory=list)

    def error(self, topup_id: str, exc: Exception) -> None:
        what = f"{exc.code}: {exc.message}" if isinstance(exc, PortalError | ClearingError) else type(exc).__name__
        what = _CARD_NUMBER.sub(lambda m: mask_asn(m.group()), what)  # clearing's sentences name the card
        log.warning("sweep: top-up %s: %s", topup_id, what)
        if len(self.errors) < ERRORS_KEPT_MAX:
            self.errors.append(f"{topup_id}: {what}")


# --- the pure decisions ------------------------------------------------------------------


def clearing_event(t: topups.Topup, load_state: str | None) -> topups.Event | None:
    """The event clearing's load row means for the top-up, or None if it tells nothing new."""
    if load_state is None or t.state.value not in _UNLOADED or t.load_voided:
        return None
    if load_state in (LoadState.POSTED.value, *_VOIDED):
        return event_of_load(load_state)
    if load_state in _OPEN and t.state is topups.State.PAID:
        return topups.LoadCreated()
    return None


def load_deadline(t: topups.Topup, load: PendingLoad | None, moved_at: dt.datetime, load_window_s: int) -> dt.datetime:
    """When the load window of a paid top-up ends: its load's ``expires_at``, else ``load_window_s`` after it moved."""
    if load is not None and load.expires_at is not None:
        return load.expires_at
    return moved_at + dt.timedelta(seconds=load_window_s)


# --- the run -------------------------------------------------------------------------------


@dataclass
class Sweeper:
    """One per process (the server's background task) or per command; holds the refund cursor between runs."""

    service: TopupService
    config: SweepConfig = field(default_factory=SweepConfig)
    _refund_cursor: str = field(default="", init=False)

    def run(self, on_phase: Callable[[str], None] | None = None) -> SweepReport:
        """One bounded run (module docstring); never raises for one top-up's fault."""
        report = SweepReport()
        now = self.service.clock()
        moved: set[str] = set()
        steps: list[tuple[str, Callable[[], None]]] = [
            ("clearing", lambda: self._learn_from_clearing(report, moved)),
            ("payment_window", lambda: self._payment_window(now, report, moved)),
            ("load_window", lambda: self._load_window(now, report, moved)),
            ("refunds", lambda: self._refunds(now, report, moved)),
            ("effects", lambda: self._effects(now, report, moved)),
            ("sessions", lambda: self._sessions(now, report)),
        ]
        for name, step in steps:
            if on_phase is not None:
                on_phase(name)
            step()
        return report

    # --- 1. clearing -------------------------------------------------------------------

    def _learn_from_clearing(self, report: SweepReport, moved: set[str]) -> None:
        stmt = (
            select(PortalTopup.topup_id)
            .join(PendingLoad, PendingLoad.id == PortalTopup.topup_id)
            .where(PortalTopup.state.in_(_UNLOADED), PortalTopup.load_voided == false())
            .where(
                or_(
                    PendingLoad.state.in_((LoadState.POSTED.value, *_VOIDED)),
                    and_(PortalTopup.state == topups.State.PAID.value, PendingLoad.state.in_(_OPEN)),
                )
            )
            .order_by(PortalTopup.topup_id)
            .limit(self.config.batch_max)
        )

        def decide(session: Session, row: PortalTopup, t: topups.Topup) -> topups.Event | None:
            load = session.get(PendingLoad, row.topup_id, populate_existing=True)
            return clearing_event(t, load.state if load is not None else None)

        for topup_id in self._ids(stmt):
            event = self._apply(topup_id, decide, report)
            if event is not None:
                moved.add(topup_id)
                if isinstance(event, topups.LoadCompleted):
                    report.loads_completed += 1
                elif isinstance(event, topups.LoadVoided):
                    report.loads_voided += 1
                else:
                    report.loads_created += 1

    # --- 2. the payment window ---------------------------------------------------------

    def _payment_window(self, now: dt.datetime, report: SweepReport, moved: set[str]) -> None:
        cutoff = now - dt.timedelta(seconds=self.config.payment_window_s)
        stmt = (
            select(PortalTopup.topup_id, PortalTopup.payment_intent_id)
            .where(PortalTopup.state.in_(_PAYABLE), PortalTopup.created_at <= cutoff)
            .order_by(PortalTopup.created_at, PortalTopup.topup_id)
            .limit(self.config.batch_max)
        )
        with self.service.sessions() as session:
            rows = session.execute(stmt).all()
        for topup_id, intent_id in rows:
            try:
                found = self._intent_news(topup_id, intent_id)
            except PortalError as exc:
                report.error(topup_id, exc)
                continue
            if found == "wait":
                continue

            def decide(
                session: Session, row: PortalTopup, t: topups.Topup, seen: str | None = intent_id, found: object = found
            ) -> topups.Event | None:
                if t.state not in topups.OPEN_FOR_PAYMENT or t.payment_intent_id != seen:
                    return None  # moved since, or a newer intent: the next run looks again
                set_aside = {u.payment_intent_id for u in t.unmatched}
                if isinstance(found, topups.PaymentSucceeded) and found.payment_intent_id not in set_aside:
                    return found
                # (a success of an intent already set aside as unmatched is being refunded: not this
                # top-up's payment, so the window ends it as if nothing was paid)
                return topups.PaymentWindowExpired() if row.created_at <= cutoff else None

            event = self._apply(topup_id, decide, report)
            if event is not None:
                moved.add(topup_id)
                if isinstance(event, topups.PaymentSucceeded):
                    report.payments_found += 1
                else:
                    report.payments_expired += 1

    def _intent_news(self, topup_id: str, intent_id: str | None) -> topups.PaymentSucceeded | str:
        """What the provider says of the intent in use: a success to apply, ``wait``, or ``expire``."""
        if intent_id is None:
            return "expire"  # no intent was ever made (the provider was down): nothing to pay
        try:
            intent = self.service.payments.retrieve_intent(intent_id)
        except PortalError as exc:
            if exc.code is Code.E_PAYMENT_NOT_FOUND:
                return "expire"
            raise
        if intent.status == "succeeded" and intent.metadata.get(METADATA_TOPUP_ID) == topup_id:
            return topups.PaymentSucceeded(intent.id, intent.amount, intent.currency)
        return "wait" if intent.status in _STILL_PAYING else "expire"

    # --- 3. the load window ------------------------------------------------------------

    def _load_window(self, now: dt.datetime, report: SweepReport, moved: set[str]) -> None:
        window = self.config.load_window_s
        stmt = (
            select(PortalTopup.topup_id)
            .outerjoin(PendingLoad, PendingLoad.id == PortalTopup.topup_id)
            .where(PortalTopup.state.in_(_WAITING))
            .where(
                or_(
                    PendingLoad.expires_at <= now,
                    and_(
                        PendingLoad.expires_at.is_(None),
                        PortalTopup.updated_at <= now - dt.timedelta(seconds=window),
                    ),
                )
            )
            .order_by(PortalTopup.updated_at, PortalTopup.topup_id)
            .limit(self.config.batch_max)
        )

        def decide(session: Session, row: PortalTopup, t: topups.Topup) -> topups.Event | None:
            if t.state.value not in _WAITING:
                return None
            load = session.get(PendingLoad, row.topup_id, populate_existing=True)
            if load is not None and load.state == LoadState.POSTED.value:
                return topups.LoadCompleted()  # the card took it meanwhile: that, not the refund
            if now < load_deadline(t, load, row.updated_at, window):
                return None
            return topups.LoadWindowExpired()

        for topup_id in self._ids(stmt):
            event = self._apply(topup_id, decide, report)
            if event is not None:
                moved.add(topup_id)
                if isinstance(event, topups.LoadCompleted):
                    report.loads_completed += 1
                else:
                    report.loads_expired += 1

    # --- 4. refunds made at the provider ------------------------------------------------

    def _refunds(self, now: dt.datetime, report: SweepReport, moved: set[str]) -> None:
        cutoff = now - dt.timedelta(seconds=self.config.stale_after_s)
        stmt = (
            select(PortalTopup.topup_id, PortalTopup.payment_intent_id)
            .where(PortalTopup.state.in_(_UNLOADED), PortalTopup.updated_at <= cutoff)
            .where(PortalTopup.topup_id > self._refund_cursor)
            .order_by(PortalTopup.topup_id)
            .limit(self.config.batch_max)
        )
        with self.service.sessions() as session:
            rows = session.execute(stmt).all()
        self._refund_cursor = rows[-1][0] if len(rows) == self.config.batch_max else ""
        for topup_id, intent_id in rows:
            if topup_id in moved or intent_id is None:
                continue
            try:
                total = sum(r.amount for r in self.service.payments.refunds_of(intent_id) if r.status == "succeeded")
            except PortalError as exc:
                report.error(topup_id, exc)
                continue
            if total <= 0:
                continue

            def decide(
                session: Session, row: PortalTopup, t: topups.Topup, pi: str = intent_id, total: int = total
            ) -> topups.Event | None:
                if t.payment_intent_id != pi or t.state.value not in _UNLOADED or t.refunded_fen >= total:
                    return None
                return topups.RefundSucceeded(pi, total)

            if self._apply(topup_id, decide, report) is not None:
                moved.add(topup_id)
                report.refunds_found += 1

    # --- 5. effects ----------------------------------------------------------------------

    def _effects(self, now: dt.datetime, report: SweepReport, moved: set[str]) -> None:
        cutoff = now - dt.timedelta(seconds=self.config.stale_after_s)
        waits = (topups.State.CREATED.value, topups.State.PAID.value, topups.State.REFUND_REQUESTED.value)
        has_unmatched = func.length(cast(PortalTopup.unmatched, String)) > len("[]")
        stmt = (
            select(PortalTopup.topup_id)
            .where(PortalTopup.updated_at <= cutoff)
            .where(or_(PortalTopup.state.in_(waits), has_unmatched))
            .order_by(PortalTopup.updated_at, PortalTopup.topup_id)
            .limit(self.config.batch_max)
        )
        for topup_id in self._ids(stmt):
            try:
                report.effects_requeued += self.service.requeue_due(topup_id)
            except Exception as exc:  # noqa: BLE001 - one top-up's fault must not stop the sweep; recorded
                report.error(topup_id, exc)
        budget = self.config.batch_max
        for topup_id in sorted(moved):
            if budget <= 0:
                break
            _, tried = self.service.run_effects(topup_id, batch_max=budget)
            report.effects_run += tried
            budget -= tried
        if budget > 0:
            _, tried = self.service.run_effects(batch_max=budget, older_than=cutoff)
            report.effects_run += tried

    # --- 6. sessions ---------------------------------------------------------------------

    def _sessions(self, now: dt.datetime, report: SweepReport) -> None:
        ended = select(PortalSession.id).where(PortalSession.expires_at <= now).limit(self.config.batch_max)
        with self.service.sessions() as session, session.begin():
            ids = list(session.execute(ended).scalars())
            if ids:
                session.execute(delete(PortalSession).where(PortalSession.id.in_(ids)))
        report.sessions_deleted += len(ids)

    # --- plumbing ------------------------------------------------------------------------

    def _ids(self, stmt: Select[Any]) -> list[str]:
        with self.service.sessions() as session:
            return [str(i) for i in session.execute(stmt).scalars()]

    def _apply(
        self,
        topup_id: str,
        decide: Callable[[Session, PortalTopup, topups.Topup], topups.Event | None],
        report: SweepReport,
    ) -> topups.Event | None:
        try:
            return self.service.sweep_apply(topup_id, decide)
        except Exception as exc:  # noqa: BLE001 - one top-up's fault must not stop the sweep; recorded
            report.error(topup_id, exc)
            return None


async def sweep_forever(sweeper: Sweeper, interval_s: float) -> None:
    """The server's background task: a run every ``interval_s`` in a worker thread, until cancelled."""
    from starlette.concurrency import run_in_threadpool

    assert interval_s > 0
    while True:
        try:
            report = await run_in_threadpool(sweeper.run)
            if report.errors:
                log.warning("sweep: %d top-up(s) could not be swept this run", len(report.errors))
        except asyncio.CancelledError:
            raise
        except Exception:  # the next run tries again; the server keeps serving
            log.exception("sweep run failed")
        await asyncio.sleep(interval_s)


__all__ = [
    "PHASES",
    "SweepConfig",
    "SweepReport",
    "Sweeper",
    "clearing_event",
    "load_deadline",
    "sweep_forever",
]
