"""Tear at every APDU of a tap, then present the card again: charged exactly once, one record.

The repeat-tap window is 0 here, so the only thing standing between a torn tap and a double
charge is the recovery logic (pending write-ahead, GET TRANSACTION PROVE, the log check).
"""

from __future__ import annotations

import datetime as dt
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from cardos.os import TearPlan
from terminals.session import Outcome
from tests.terminals.test_tap_kit import (
    FARE_FEN,
    NOW,
    Rig,
    earlier_leg,
    make_card,
    make_psam,
    make_rig,
    tap_tac_verifies,
)

PHASES = ("before_commit", "after_commit")
DONE = {Outcome.PAID, Outcome.RECOVERED, Outcome.SUSPECT}


def card_apdus_of_a_clean_tap(tmp_path: Path, history: int) -> list[str]:
    rig = make_rig(tmp_path, journal_name="count.db", repeat_window_s=0)
    rig.terminal.trace = []
    assert rig.present(card_with_history(history)).outcome is Outcome.PAID
    rig.close()
    return [step for step in rig.terminal.trace if step.startswith("card:")]


def card_with_history(history: int) -> object:
    card = make_card()
    for i in range(history):
        card.transit.push(earlier_leg(NOW - dt.timedelta(minutes=30 - i)))
    return card


def assert_charged_once(rig: Rig, card: object, balance_before: int) -> None:
    records = rig.records()
    assert len(records) == 1, records
    [record] = records
    assert record.amount_fen == FARE_FEN and tap_tac_verifies(record)
    assert card.balance_fen == balance_before - FARE_FEN  # type: ignore[attr-defined]
    assert card.offline_counter == 1  # type: ignore[attr-defined]
    assert rig.journal.pending() == []


@pytest.mark.parametrize("history", [0, 2])
@pytest.mark.parametrize("phase", PHASES)
def test_tear_at_every_card_apdu_then_retry_charges_exactly_once(tmp_path: Path, history: int, phase: str) -> None:
    steps = card_apdus_of_a_clean_tap(tmp_path, history)
    assert steps[-1] == "card:DEBIT FOR CAPP PURCHASE"
    for at in range(1, len(steps) + 1):
        rig = make_rig(tmp_path, journal_name=f"tear-{at}.db", repeat_window_s=0)
        card = card_with_history(history)
        card.tear = TearPlan(at_apdu=at, phase=phase)  # type: ignore[attr-defined]
        first = rig.present(card)
        assert first.outcome is Outcome.TAP_AGAIN, (at, steps[at - 1], first)
        second = rig.present(card, NOW + dt.timedelta(seconds=90))
        assert second.outcome in DONE, (at, steps[at - 1], second)
        debit_committed = steps[at - 1].endswith("DEBIT FOR CAPP PURCHASE") and phase == "after_commit"
        expected = Outcome.RECOVERED if debit_committed else Outcome.PAID
        assert second.outcome is expected, (at, steps[at - 1], second)
        assert_charged_once(rig, card, 5_000)
        rig.close()


def test_tear_at_every_psam_apdu_then_retry_charges_exactly_once(tmp_path: Path) -> None:
    for at in range(5, 7):  # the PSAM's APDUs 1-4 open it; 5 = INIT SAM, 6 = CREDIT SAM
        for phase in PHASES:
            psam = make_psam()
            rig = make_rig(tmp_path, psam=psam, journal_name=f"sam-{at}-{phase}.db", repeat_window_s=0)
            card = make_card()
            psam.tear = TearPlan(at_apdu=at, phase=phase)  # type: ignore[assignment]
            first = rig.present(card)
            if at == 6:  # the card had debited: journaled, MAC2 unverified
                assert first.outcome is Outcome.SUSPECT
            else:  # nothing debited yet: the PSAM is reopened and the tap run again, once
                assert first.outcome is Outcome.PAID
            assert_charged_once(rig, card, 5_000)
            rig.close()


tear = st.one_of(
    st.none(),
    st.tuples(st.just("card"), st.integers(1, 12), st.sampled_from(PHASES)),
    st.tuples(st.just("sam"), st.integers(1, 3), st.sampled_from(PHASES)),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tears=st.lists(tear, min_size=1, max_size=5), history=st.integers(0, 3))
def test_any_sequence_of_torn_presentations_charges_exactly_once(
    tears: list[tuple[str, int, str] | None], history: int
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        psam = make_psam()
        rig = make_rig(Path(tmp), psam=psam, repeat_window_s=0)
        card = card_with_history(history)
        outcomes = []
        for n, plan in enumerate([*tears, None]):
            if plan is not None and plan[0] == "card":
                card.tear = TearPlan(at_apdu=plan[1], phase=plan[2])  # type: ignore[attr-defined]
            elif plan is not None:
                # the PSAM counts APDUs since its power-on; a closed one is first opened with 4
                base = 4 if rig.terminal.sam_info is None else psam.apdu_index
                psam.tear = TearPlan(at_apdu=base + plan[1], phase=plan[2])
            result = rig.present(card, NOW + dt.timedelta(minutes=2 * n))
            outcomes.append(result.outcome)
            card.tear = None  # type: ignore[attr-defined]
            psam.tear = None
            if rig.sam_reader.card is None or not psam.powered:
                rig.sam_reader.insert(psam)
            if result.outcome in DONE:
                break
        if outcomes[-1] not in DONE:  # the last, untorn presentation met a stale PSAM state: once more
            outcomes.append(rig.present(card, NOW + dt.timedelta(hours=1)).outcome)
        event(f"outcomes: {[o.name for o in outcomes]}")
        assert outcomes[-1] in DONE, outcomes
        assert_charged_once(rig, card, 5_000)
        rig.close()
