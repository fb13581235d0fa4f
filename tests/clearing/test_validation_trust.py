"""Issue 8 at the level of the pure judge: refunds from verified legs, gaps that close, forwards that squat nothing.

Each of these failed on the code before issue 8: the terminal's ``refund_due_fen`` was paid as
claimed, and a forwarded record claimed the natural keys.
"""

from __future__ import annotations

import datetime as dt

import msgspec
import pytest
from tapfactory import IC_MAX_FEN, OWN_ISSUER, PEER_ISSUER, T0, Card, Terminal, journey, sign, transit
from test_validation import codes, context, run, state

from clearing.contract import FareInfo
from clearing.refunds import default_refunds
from clearing.validation import Leg, Neighbour, RefundDue, record_digest

PRICER = default_refunds()
OPERATOR_B = 4242  # the payable of another operator, who received an entry fare


@pytest.fixture
def term() -> Terminal:
    return Terminal("0000aa000001")


def _ctx(term: Terminal, card: Card, **kw: object) -> object:
    return context(term, {card: state(card)}, refund_pricer=PRICER, **kw)


def test_a_tap_off_is_refunded_what_the_tariff_computes_from_its_verified_entry(term: Terminal) -> None:
    card = Card(1, balance_fen=2000)
    ctx = _ctx(term, card)
    tap_on, tap_off = journey(term, card, "ic_airport")
    j = run([tap_on, tap_off], ctx)  # type: ignore[arg-type]
    assert codes(j) == [("accepted", "OK"), ("accepted", "OK")]
    assert j.refunds == [RefundDue(OWN_ISSUER, card.asn, term.terminal_id, tap_off.terminal_seq, 300, None)]
    assert j.record_refunds == {1: 300}


def test_a_zero_amount_tap_claiming_200_cny_without_an_entry_moves_no_money(term: Terminal) -> None:
    """The drain found in review: one zero-amount tap with refund_due_fen = 20000 became a 200 CNY load."""
    card = Card(1, balance_fen=2000)
    lone = msgspec.structs.replace(
        term.tap(card, 0), fare=FareInfo("p", "adult", None, 0, 0, None, refund_due_fen=20_000)
    )
    j = run([lone], _ctx(term, card))  # type: ignore[arg-type]
    assert codes(j) == [("suspect", "S_TAPOFF_NO_ENTRY")]
    assert j.refunds == [] and j.record_refunds == {}


def test_a_claim_above_what_clearing_computes_is_suspect_and_only_the_computed_refund_is_paid(term: Terminal) -> None:
    card = Card(1, balance_fen=2000)
    ctx = _ctx(term, card)
    tap_on, tap_off = journey(term, card, "ic_airport", claimed_fen=20_000)
    j = run([tap_on, tap_off], ctx)  # type: ignore[arg-type]
    assert codes(j) == [("accepted", "OK"), ("suspect", "S_REFUND_MISMATCH")]
    assert "claims 20000 fen back, clearing computed 300 fen" in j.outcomes[1].message
    assert [d.amount_fen for d in j.refunds] == [300]


def test_an_exit_on_another_route_or_after_the_time_limit_is_not_the_entrys_tap_off(term: Terminal) -> None:
    card = Card(1, balance_fen=5000)
    tap_on, tap_off = journey(term, card, "ic_airport")
    elsewhere = msgspec.structs.replace(tap_off, route_id="19", vehicle_id="u19-bus-01")
    assert codes(run([tap_on, elsewhere], _ctx(term, card)))[1] == ("suspect", "S_TAPOFF_NO_ENTRY")  # type: ignore[arg-type]
    card2 = Card(2, balance_fen=5000)
    tap_on, tap_off = journey(term, card2, "ic_airport", minutes=5 * 60)  # the tariff allows 4 hours
    j = run([tap_on, tap_off], _ctx(term, card2))  # type: ignore[arg-type]
    assert codes(j)[1] == ("suspect", "S_TAPOFF_NO_ENTRY")
    assert "too_late" in j.outcomes[1].message and j.refunds == []


def test_a_single_tap_before_a_tap_off_is_no_entry(term: Terminal) -> None:
    card = Card(1, balance_fen=5000)
    tap_on, tap_off = journey(term, card, "ic_airport")
    single = transit(sign(tap_on), "single", "ic_xianyang_station")
    assert codes(run([single, tap_off], _ctx(term, card)))[1] == ("suspect", "S_TAPOFF_NO_ENTRY")  # type: ignore[arg-type]


def test_the_refund_is_paid_by_the_operator_that_received_the_entry_fare(term: Terminal) -> None:
    """The entry cleared earlier on another operator's bus: that operator pays the refund back."""
    card = Card(1, balance_fen=5000)
    other_bus = Terminal("0000bb000001")
    tap_on, tap_off = journey(other_bus, card, "ic_weicheng", exit_terminal=term)
    entry = Leg(
        tap_on.offline_counter, other_bus.terminal_id, tap_on.terminal_seq, "ic1", "ic1-bus-07",
        "ic_xianyang_station", T0, IC_MAX_FEN, "tap_on", "xianyang-2026.1", "adult", 0, OPERATOR_B, 77,
    )  # fmt: skip
    ctx = context(
        term,
        {card: state(card, last=tap_on.offline_counter, shadow=5000 - IC_MAX_FEN)},
        refund_pricer=PRICER,
        entries={(OWN_ISSUER, card.asn, tap_on.offline_counter): entry},
    )
    tap_off = msgspec.structs.replace(tap_off, balance_before_fen=5000 - IC_MAX_FEN)
    j = run([sign(tap_off)], ctx)
    assert codes(j) == [("accepted", "OK")]
    assert j.refunds == [RefundDue(OWN_ISSUER, card.asn, term.terminal_id, tap_off.terminal_seq, 600, OPERATOR_B)]


def test_a_tap_off_waiting_for_its_entry_is_refunded_when_the_entry_arrives_late(term: Terminal) -> None:
    card = Card(1, balance_fen=5000)
    front, back = Terminal("0000aa000002"), term
    tap_on, tap_off = journey(front, card, "ic_airport", exit_terminal=back)
    waiting = Leg(
        tap_off.offline_counter, back.terminal_id, tap_off.terminal_seq, "ic1", "ic1-bus-07", "ic_airport",
        T0 + dt.timedelta(minutes=30), 0, "tap_off", "xianyang-2026.1", "adult", 300, None, 991,
    )  # fmt: skip
    ctx = context(
        front,
        {card: state(card, last=tap_off.offline_counter, shadow=5000 - IC_MAX_FEN)},
        refund_pricer=PRICER,
        neighbours={
            (OWN_ISSUER, card.asn, tap_on.offline_counter): (None, Neighbour(tap_off.offline_counter, 4200, 0, waiting))
        },
    )
    j = run([tap_on], ctx)
    assert codes(j) == [("accepted", "OK")]
    assert j.refunds == [
        RefundDue(OWN_ISSUER, card.asn, back.terminal_id, tap_off.terminal_seq, 300, None, exit_tap_id=991)
    ]
    assert [r.tap_id for r in j.resolutions] == [991]


def test_a_gap_outcome_names_its_missing_counters(term: Terminal) -> None:
    card = Card(1, balance_fen=5000)
    card.counter = 5
    j = run([term.tap(card, 100)], context(term, {card: state(card, last=2)}))
    assert codes(j) == [("suspect", "S_COUNTER_GAP")]
    assert j.outcomes[0].gap == (3, 4)


def test_a_forged_forward_does_not_make_the_genuine_record_a_duplicate(term: Terminal) -> None:
    xian = Card(9, issuer_id=PEER_ISSUER)
    genuine = term.tap(xian)
    forged = msgspec.structs.replace(genuine, amount_fen=genuine.amount_fen + 1, tac="deadbeef")
    j = run([forged, genuine], context(term, {}))
    assert codes(j) == [("forwarded", "I_FORWARDED_INTEROP"), ("forwarded", "I_FORWARDED_INTEROP")]
    # once the forged one was received, the genuine one is still forwarded in a later batch
    later = run(
        [genuine], context(term, {}, seen_forwards={(term.terminal_id, forged.terminal_seq, record_digest(forged))})
    )
    assert codes(later) == [("forwarded", "I_FORWARDED_INTEROP")]
    # an exact replay of a record already forwarded is a duplicate, and claims nothing
    again = run(
        [genuine], context(term, {}, seen_forwards={(term.terminal_id, genuine.terminal_seq, record_digest(genuine))})
    )
    assert codes(again) == [("rejected", "E_DUPLICATE_TERMINAL_SEQ")]
    assert not again.outcomes[0].claims_keys and not again.outcomes[0].forwards
