"""The permit application's state machine and its statutory deadlines: pure (``docs/permits.md``).

行政许可法 (the Administrative Licensing Law) sets the periods, counted in working days with
``clearing.working_days`` (the start day never counts):

- art. 32: missing materials are notified **once**, within **5** working days of receipt;
- art. 42: a decision within **20** working days of acceptance, extendable **once** by **10**
  with the reason told to the applicant;
- art. 44: the certificate within **10** working days of the decision to grant.

``apply(application, step)`` is the one rule: a dataclass in, a dataclass out, or a
``PermitError`` naming the refusal. Every deadline is stored with the calendar version it was
computed from. The shell (``service``) adds the database, the audit and the notices.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from clearing.working_days import CalendarNotCovered, add_working_days, calendar_version
from portal.modules.permits.errors import PermitCode, PermitError

MATERIALS_NOTICE_DAYS: Final = 5
DECISION_DAYS: Final = 20
EXTENSION_DAYS: Final = 10
CERTIFICATE_DAYS: Final = 10
REASON_CHARS_MAX: Final = 500


class State(StrEnum):
    SUBMITTED = "submitted"
    MATERIALS_REQUESTED = "materials_requested"
    NOT_ACCEPTED = "not_accepted"  # 不予受理: refused at intake
    ACCEPTED = "accepted"
    UNDER_REVIEW = "under_review"
    GRANTED = "granted"
    DENIED = "denied"  # 不予许可: refused on the merits
    CERTIFICATE_ISSUED = "certificate_issued"


class Step(StrEnum):
    REQUEST_MATERIALS = "request_materials"  # staff
    SUPPLEMENT = "supplement"  # the citizen: the missing materials are uploaded
    ACCEPT = "accept"  # staff
    REFUSE = "refuse"  # staff: not accepted
    START_REVIEW = "start_review"  # staff
    EXTEND = "extend"  # staff
    GRANT = "grant"  # staff
    DENY = "deny"  # staff
    ISSUE_CERTIFICATE = "issue_certificate"  # staff


FINAL_STATES: Final = frozenset({State.NOT_ACCEPTED, State.DENIED, State.CERTIFICATE_ISSUED})
STAFF_STEPS: Final = frozenset(Step) - {Step.SUPPLEMENT}
REASON_STEPS: Final = frozenset({Step.REQUEST_MATERIALS, Step.REFUSE, Step.EXTEND, Step.DENY})

# Which steps each state allows, and where each leads (the step's other checks are in ``apply``).
TRANSITIONS: Final[dict[State, dict[Step, State]]] = {
    State.SUBMITTED: {
        Step.REQUEST_MATERIALS: State.MATERIALS_REQUESTED,
        Step.ACCEPT: State.ACCEPTED,
        Step.REFUSE: State.NOT_ACCEPTED,
    },
    State.MATERIALS_REQUESTED: {Step.SUPPLEMENT: State.SUBMITTED, Step.REFUSE: State.NOT_ACCEPTED},
    State.ACCEPTED: {Step.START_REVIEW: State.UNDER_REVIEW, Step.EXTEND: State.ACCEPTED},
    State.UNDER_REVIEW: {Step.EXTEND: State.UNDER_REVIEW, Step.GRANT: State.GRANTED, Step.DENY: State.DENIED},
    State.GRANTED: {Step.ISSUE_CERTIFICATE: State.CERTIFICATE_ISSUED},
    State.NOT_ACCEPTED: {},
    State.DENIED: {},
    State.CERTIFICATE_ISSUED: {},
}
assert set(TRANSITIONS) == set(State)


@dataclass(frozen=True, slots=True)
class Deadline:
    """A statutory last day (the act is in time on or before it) and the calendar it was counted with."""

    due: dt.date
    calendar: str


@dataclass(frozen=True, slots=True)
class Application:
    """What the rules read and write of an application (the shell keeps the rest)."""

    state: State
    submitted_on: dt.date
    materials_due: Deadline  # the last day to ask for missing materials
    materials_requested: bool = False
    accepted_on: dt.date | None = None
    decision_due: Deadline | None = None
    extended: bool = False
    decided_on: dt.date | None = None
    certificate_due: Deadline | None = None
    certificate_issued_on: dt.date | None = None
    version: int = 0  # steps applied: a form names the version it was shown, so a replay is seen

    def allowed(self) -> tuple[Step, ...]:
        """The steps this state allows (some may still be refused: once-only, too late)."""
        return tuple(TRANSITIONS[self.state])

    @property
    def decision_kept(self) -> bool | None:
        """Whether the decision came on or before its deadline; None while undecided."""
        if self.decided_on is None or self.decision_due is None:
            return None
        return self.decided_on <= self.decision_due.due

    @property
    def certificate_kept(self) -> bool | None:
        if self.certificate_issued_on is None or self.certificate_due is None:
            return None
        return self.certificate_issued_on <= self.certificate_due.due


@dataclass(frozen=True, slots=True)
class Act:
    """One step on one day; ``reason`` where the step needs one (told to the citizen)."""

    step: Step
    on: dt.date
    reason: str = ""


def deadline(start: dt.date, days: int) -> Deadline:
    """``days`` working days after ``start`` (start not counted), with the calendar version."""
    try:
        due = add_working_days(start, days)
        return Deadline(due, calendar_version(due))
    except CalendarNotCovered as exc:
        raise PermitError(PermitCode.E_PERMIT_CALENDAR, str(exc)) from None


def submit(on: dt.date) -> Application:
    """A new application received on ``on``: the 5-day materials window starts."""
    return Application(State.SUBMITTED, on, deadline(on, MATERIALS_NOTICE_DAYS))


def check_reason(text: str) -> str:
    reason = " ".join(text.split())
    if not 0 < len(reason) <= REASON_CHARS_MAX:
        raise PermitError(PermitCode.E_PERMIT_REASON_REQUIRED, f"give a reason of 1 to {REASON_CHARS_MAX} characters")
    return reason


def apply(app: Application, act: Act) -> Application:
    """The application after ``act``, or a ``PermitError`` (nothing changes on a refusal)."""
    target = TRANSITIONS[app.state].get(act.step)
    if target is None:
        raise PermitError(PermitCode.E_PERMIT_STATE, f"an application that is {app.state} cannot take {act.step}")
    if act.on < app.submitted_on:
        raise PermitError(PermitCode.E_PERMIT_FORM, "a step cannot be dated before the application was received")
    if act.step in REASON_STEPS:
        check_reason(act.reason)
    out = dataclasses.replace(app, state=target, version=app.version + 1)
    match act.step:
        case Step.REQUEST_MATERIALS:
            if app.materials_requested:
                raise PermitError(PermitCode.E_PERMIT_MATERIALS_ONCE, "missing materials were already asked for")
            if act.on > app.materials_due.due:
                raise PermitError(
                    PermitCode.E_PERMIT_NOTICE_TOO_LATE,
                    f"missing materials had to be asked for by {app.materials_due.due.isoformat()}",
                )
            return dataclasses.replace(out, materials_requested=True)
        case Step.ACCEPT:
            # art. 32: not told of missing materials within the 5 days, the application counts as
            # accepted on the day it was received, so the 20 days run from then.
            late = not app.materials_requested and act.on > app.materials_due.due
            start = app.submitted_on if late else act.on
            return dataclasses.replace(out, accepted_on=start, decision_due=deadline(start, DECISION_DAYS))
        case Step.EXTEND:
            assert app.decision_due is not None
            if app.extended:
                raise PermitError(PermitCode.E_PERMIT_EXTENSION_USED, "the decision deadline was already extended")
            if act.on > app.decision_due.due:
                raise PermitError(
                    PermitCode.E_PERMIT_DEADLINE_PASSED,
                    f"the decision was due by {app.decision_due.due.isoformat()}: too late to extend",
                )
            extended = deadline(app.decision_due.due, EXTENSION_DAYS)
            return dataclasses.replace(out, extended=True, decision_due=extended)
        case Step.GRANT:
            return dataclasses.replace(out, decided_on=act.on, certificate_due=deadline(act.on, CERTIFICATE_DAYS))
        case Step.DENY:
            return dataclasses.replace(out, decided_on=act.on)
        case Step.ISSUE_CERTIFICATE:
            return dataclasses.replace(out, certificate_issued_on=act.on)
        case Step.SUPPLEMENT | Step.REFUSE | Step.START_REVIEW:
            return out
    raise AssertionError(f"unhandled step {act.step}")  # pragma: no cover


@dataclass(frozen=True, slots=True)
class Dashboard:
    """Counts, and shares in per mille (integers: no float in a published figure)."""

    total: int
    fully_online: int
    decisions: int
    decisions_kept: int
    certificates: int
    certificates_kept: int
    overdue_open: int
    online_target_permille: int

    @property
    def online_permille(self) -> int | None:
        return _permille(self.fully_online, self.total)

    @property
    def decisions_kept_permille(self) -> int | None:
        return _permille(self.decisions_kept, self.decisions)

    @property
    def certificates_kept_permille(self) -> int | None:
        return _permille(self.certificates_kept, self.certificates)

    @property
    def online_target_met(self) -> bool | None:
        share = self.online_permille
        return None if share is None else share >= self.online_target_permille


ONLINE_TARGET_PERMILLE: Final = 800  # the seed's target: 80 % of municipal permits online


def _permille(part: int, whole: int) -> int | None:
    """``part / whole`` in per mille, rounded down (so 79.96 % never shows as meeting 80 %)."""
    return None if whole == 0 else part * 1000 // whole


def permille_text(value: int | None) -> str:
    """``83.3 %`` for 833; an em dash when there is nothing to count."""
    return "—" if value is None else f"{value // 10}.{value % 10} %"


def _overdue(app: Application, today: dt.date) -> bool:
    """An open deadline that has passed: a decision not yet made, or a certificate not yet issued."""
    if app.state in (State.ACCEPTED, State.UNDER_REVIEW) and app.decision_due is not None:
        return today > app.decision_due.due
    if app.state is State.GRANTED and app.certificate_due is not None:
        return today > app.certificate_due.due
    return False


def dashboard(apps: list[tuple[Application, bool]], today: dt.date) -> Dashboard:
    """The dashboard over (application, handled fully online) pairs, as of ``today``."""
    overdue = sum(1 for app, _ in apps if _overdue(app, today))
    decided = [a for a, _ in apps if a.decision_kept is not None]
    issued = [a for a, _ in apps if a.certificate_kept is not None]
    return Dashboard(
        total=len(apps),
        fully_online=sum(1 for _, online in apps if online),
        decisions=len(decided),
        decisions_kept=sum(1 for a in decided if a.decision_kept),
        certificates=len(issued),
        certificates_kept=sum(1 for a in issued if a.certificate_kept),
        overdue_open=overdue,
        online_target_permille=ONLINE_TARGET_PERMILLE,
    )


__all__ = [
    "CERTIFICATE_DAYS",
    "DECISION_DAYS",
    "EXTENSION_DAYS",
    "FINAL_STATES",
    "MATERIALS_NOTICE_DAYS",
    "ONLINE_TARGET_PERMILLE",
    "REASON_STEPS",
    "STAFF_STEPS",
    "TRANSITIONS",
    "Act",
    "Application",
    "Dashboard",
    "Deadline",
    "State",
    "Step",
    "apply",
    "check_reason",
    "dashboard",
    "deadline",
    "permille_text",
    "submit",
]
