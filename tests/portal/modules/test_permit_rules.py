"""The permit state machine: every transition, each refusal, and the deadlines across holidays."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clearing.working_days import CALENDAR_VERSION, add_working_days, is_working_day, working_days_between
from portal.modules.permits import rules
from portal.modules.permits.errors import PermitCode, PermitError
from portal.modules.permits.rules import Act, State, Step, apply, submit

D = dt.date
WHY = "the site plan is missing"


def _run(start: dt.date, *steps: tuple[Step, dt.date]) -> rules.Application:
    app = submit(start)
    for step, on in steps:
        app = apply(app, Act(step, on, WHY))
    return app


def _refused(app: rules.Application, act: Act, code: PermitCode) -> None:
    with pytest.raises(PermitError) as refused:
        apply(app, act)
    assert refused.value.code is code, refused.value


# --- every transition ---------------------------------------------------------------------------


def test_submitted_opens_the_five_day_materials_window() -> None:
    app = submit(D(2026, 11, 27))  # a Friday
    assert app.state is State.SUBMITTED and app.version == 0
    assert app.materials_due == rules.Deadline(D(2026, 12, 4), CALENDAR_VERSION)


def test_the_full_path_from_submission_to_certificate() -> None:
    day = D(2026, 11, 2)
    app = submit(day)
    app = apply(app, Act(Step.REQUEST_MATERIALS, D(2026, 11, 3), WHY))
    assert app.state is State.MATERIALS_REQUESTED and app.materials_requested
    app = apply(app, Act(Step.SUPPLEMENT, D(2026, 11, 5)))
    assert app.state is State.SUBMITTED
    app = apply(app, Act(Step.ACCEPT, D(2026, 11, 6)))
    assert app.state is State.ACCEPTED and app.accepted_on == D(2026, 11, 6)
    assert app.decision_due == rules.Deadline(add_working_days(D(2026, 11, 6), 20), CALENDAR_VERSION)
    app = apply(app, Act(Step.START_REVIEW, D(2026, 11, 9)))
    assert app.state is State.UNDER_REVIEW
    app = apply(app, Act(Step.GRANT, D(2026, 11, 20)))
    assert app.state is State.GRANTED and app.decision_kept is True
    assert app.certificate_due is not None and app.certificate_due.due == D(2026, 12, 4)
    app = apply(app, Act(Step.ISSUE_CERTIFICATE, D(2026, 11, 23)))
    assert app.state is State.CERTIFICATE_ISSUED and app.certificate_kept is True
    assert app.version == 6


@pytest.mark.parametrize(
    ("path", "final"),
    [
        ([Step.REFUSE], State.NOT_ACCEPTED),
        ([Step.REQUEST_MATERIALS, Step.REFUSE], State.NOT_ACCEPTED),
        ([Step.ACCEPT, Step.START_REVIEW, Step.DENY], State.DENIED),
        ([Step.ACCEPT, Step.EXTEND], State.ACCEPTED),
        ([Step.ACCEPT, Step.START_REVIEW, Step.EXTEND], State.UNDER_REVIEW),
    ],
)
def test_the_other_transitions(path: list[Step], final: State) -> None:
    on = D(2026, 11, 2)
    app = _run(on, *[(s, on) for s in path])
    assert app.state is final


def test_the_transition_table_covers_every_state_and_final_states_allow_nothing() -> None:
    assert set(rules.TRANSITIONS) == set(State)
    for state in rules.FINAL_STATES:
        assert rules.TRANSITIONS[state] == {}
    reached = {target for steps in rules.TRANSITIONS.values() for target in steps.values()}
    assert reached | {State.SUBMITTED} == set(State)


# --- each refusal -------------------------------------------------------------------------------


@pytest.mark.parametrize("state", list(State))
def test_a_step_the_state_does_not_allow_is_refused(state: State) -> None:
    app = dataclasses.replace(submit(D(2026, 11, 2)), state=state)
    for step in Step:
        if step not in rules.TRANSITIONS[state]:
            _refused(app, Act(step, D(2026, 11, 3), WHY), PermitCode.E_PERMIT_STATE)


def test_missing_materials_are_asked_for_once_only() -> None:
    app = _run(D(2026, 11, 2), (Step.REQUEST_MATERIALS, D(2026, 11, 3)), (Step.SUPPLEMENT, D(2026, 11, 4)))
    _refused(app, Act(Step.REQUEST_MATERIALS, D(2026, 11, 4), WHY), PermitCode.E_PERMIT_MATERIALS_ONCE)


def test_missing_materials_after_five_working_days_are_refused() -> None:
    # received Wed 2026-09-30: Oct 1-7 off, Oct 8, 9, 10 (make-up Saturday), 12, 13 -> the 5th is Oct 13
    app = submit(D(2026, 9, 30))
    assert app.materials_due.due == D(2026, 10, 13)
    assert apply(app, Act(Step.REQUEST_MATERIALS, D(2026, 10, 13), WHY)).materials_requested
    _refused(app, Act(Step.REQUEST_MATERIALS, D(2026, 10, 14), WHY), PermitCode.E_PERMIT_NOTICE_TOO_LATE)


def test_accepted_after_the_silent_five_days_counts_from_receipt() -> None:
    # art. 32: no notice of missing materials within the 5 days: accepted on the day of receipt
    app = _run(D(2026, 9, 30), (Step.ACCEPT, D(2026, 10, 20)))
    assert app.accepted_on == D(2026, 9, 30)
    assert app.decision_due is not None and app.decision_due.due == add_working_days(D(2026, 9, 30), 20)


def test_the_extension_is_once_with_a_reason_and_before_the_deadline() -> None:
    app = _run(D(2026, 11, 2), (Step.ACCEPT, D(2026, 11, 2)), (Step.START_REVIEW, D(2026, 11, 3)))
    assert app.decision_due is not None
    _refused(app, Act(Step.EXTEND, D(2026, 11, 4), ""), PermitCode.E_PERMIT_REASON_REQUIRED)
    _refused(app, Act(Step.EXTEND, D(2026, 11, 4), "x" * 501), PermitCode.E_PERMIT_REASON_REQUIRED)
    late = app.decision_due.due + dt.timedelta(days=1)
    _refused(app, Act(Step.EXTEND, late, WHY), PermitCode.E_PERMIT_DEADLINE_PASSED)
    extended = apply(app, Act(Step.EXTEND, app.decision_due.due, WHY))
    assert extended.extended
    assert extended.decision_due is not None
    assert working_days_between(app.decision_due.due, extended.decision_due.due) == 10
    _refused(extended, Act(Step.EXTEND, D(2026, 11, 5), WHY), PermitCode.E_PERMIT_EXTENSION_USED)


@pytest.mark.parametrize("step", [Step.REQUEST_MATERIALS, Step.REFUSE])
def test_intake_steps_need_a_reason(step: Step) -> None:
    _refused(submit(D(2026, 11, 2)), Act(step, D(2026, 11, 3), "   "), PermitCode.E_PERMIT_REASON_REQUIRED)


def test_a_denial_needs_a_reason() -> None:
    app = _run(D(2026, 11, 2), (Step.ACCEPT, D(2026, 11, 2)), (Step.START_REVIEW, D(2026, 11, 3)))
    _refused(app, Act(Step.DENY, D(2026, 11, 4)), PermitCode.E_PERMIT_REASON_REQUIRED)


def test_a_step_before_the_submission_is_refused() -> None:
    _refused(submit(D(2026, 11, 2)), Act(Step.ACCEPT, D(2026, 11, 1)), PermitCode.E_PERMIT_FORM)


def test_a_deadline_in_a_year_without_its_notice_is_provisional_and_one_too_far_is_refused() -> None:
    app = submit(D(2026, 12, 1))
    accepted = apply(app, Act(Step.ACCEPT, D(2026, 12, 8)))  # +20 working days runs into 2027
    assert accepted.decision_due is not None and accepted.decision_due.due.year == 2027
    assert accepted.decision_due.calendar.endswith("+provisional")
    assert submit(D(2026, 11, 2)).materials_due.calendar.endswith("/CN")  # a 2026 deadline is official
    with pytest.raises(PermitError) as refused:
        submit(D(2029, 1, 4))
    assert refused.value.code is PermitCode.E_PERMIT_CALENDAR and "2029" in refused.value.message


# --- deadlines across holidays -------------------------------------------------------------------


def test_a_decision_deadline_across_national_day_2025() -> None:
    # accepted Fri 2025-09-26: Sep 28 (Sun, make-up) 1, Sep 29-30 2-3, Oct 1-8 off, Oct 9-10 4-5,
    # Oct 11 (Sat, make-up) 6, Oct 13-17 7-11, Oct 20-24 12-16, Oct 27-30 17-20
    app = _run(D(2025, 9, 26), (Step.ACCEPT, D(2025, 9, 26)))
    assert app.decision_due is not None
    assert app.decision_due.due == D(2025, 10, 30)


def test_a_certificate_deadline_across_the_spring_festival_2026() -> None:
    # granted Wed 2026-02-11: Feb 12, 13, 14 (make-up Saturday), Feb 15-23 off, Feb 24-27, Feb 28 (make-up Sat), Mar 2
    app = _run(
        D(2026, 2, 2), (Step.ACCEPT, D(2026, 2, 2)), (Step.START_REVIEW, D(2026, 2, 3)), (Step.GRANT, D(2026, 2, 11))
    )
    assert app.certificate_due is not None and app.certificate_due.due == D(2026, 3, 3)
    assert app.certificate_due.calendar == CALENDAR_VERSION


def test_a_decision_on_the_last_day_is_kept_and_the_next_day_is_late() -> None:
    app = _run(D(2026, 9, 1), (Step.ACCEPT, D(2026, 9, 1)), (Step.START_REVIEW, D(2026, 9, 2)))
    assert app.decision_due is not None
    due = app.decision_due.due
    assert apply(app, Act(Step.GRANT, due)).decision_kept is True
    assert apply(app, Act(Step.GRANT, due + dt.timedelta(days=1))).decision_kept is False


days_2025_2026 = st.dates(min_value=D(2025, 1, 1), max_value=D(2026, 10, 31))


@settings(max_examples=150, deadline=None)
@given(received=days_2025_2026, wait=st.integers(0, 8), review=st.integers(0, 30), extend=st.booleans())
def test_every_deadline_is_on_a_working_day_and_counts_exactly(
    received: dt.date, wait: int, review: int, extend: bool
) -> None:
    app = submit(received)
    assert is_working_day(app.materials_due.due)
    assert working_days_between(received, app.materials_due.due) == rules.MATERIALS_NOTICE_DAYS
    on = received + dt.timedelta(days=wait)
    app = apply(apply(app, Act(Step.ACCEPT, on)), Act(Step.START_REVIEW, on))
    assert app.decision_due is not None and app.accepted_on is not None
    accepted_on = app.accepted_on
    assert working_days_between(accepted_on, app.decision_due.due) == rules.DECISION_DAYS
    if extend:
        app = apply(app, Act(Step.EXTEND, on, WHY))
        assert app.decision_due is not None
        assert working_days_between(accepted_on, app.decision_due.due) == 30
    assert app.decision_due is not None
    due = app.decision_due.due
    decided = on + dt.timedelta(days=review)
    granted = apply(app, Act(Step.GRANT, decided))
    assert granted.decision_kept == (decided <= due)
    assert granted.certificate_due is not None and is_working_day(granted.certificate_due.due)
    assert working_days_between(decided, granted.certificate_due.due) == rules.CERTIFICATE_DAYS
    assert {d.calendar for d in (granted.materials_due, granted.decision_due, granted.certificate_due) if d} == {
        CALENDAR_VERSION
    }


# --- the dashboard --------------------------------------------------------------------------------


def test_the_dashboard_counts_online_share_and_kept_deadlines_in_whole_per_mille() -> None:
    on = D(2026, 9, 1)
    done = _run(on, (Step.ACCEPT, on), (Step.START_REVIEW, on), (Step.GRANT, on), (Step.ISSUE_CERTIFICATE, on))
    late = _run(on, (Step.ACCEPT, on), (Step.START_REVIEW, on), (Step.GRANT, D(2026, 11, 30)))
    open_late = _run(on, (Step.ACCEPT, on))
    fresh = submit(D(2026, 10, 30))
    d = rules.dashboard([(done, True), (late, True), (open_late, True), (fresh, False)], today=D(2026, 12, 1))
    assert (d.total, d.fully_online, d.online_permille) == (4, 3, 750)
    assert d.online_target_met is False
    assert (d.decisions, d.decisions_kept, d.decisions_kept_permille) == (2, 1, 500)
    assert (d.certificates, d.certificates_kept) == (1, 1)
    assert d.overdue_open == 1  # open_late's decision; late's certificate is due on Dec 14, not yet late
    assert rules.permille_text(799) == "79.9 %" and rules.permille_text(None) == "—"
    assert rules.dashboard([], D(2026, 12, 1)).online_target_met is None
