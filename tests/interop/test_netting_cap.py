"""Netting (issue 12): the bilateral position per window and the net debit cap, cumulative within a batch."""

from __future__ import annotations

import datetime as dt

import pytest
from issuerworld import *  # noqa: F403 - the fixtures
from issuerworld import PEER, T0, make_world
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from interop_xian import netting
from interop_xian.errors import InteropError
from interop_xian.models import Alarm


def _codes(verdicts: list) -> list[tuple[str, str]]:  # type: ignore[type-arg]
    return [(v.outcome.value, v.code) for v in verdicts]


def _set_cap(engine: Engine, cap_fen: int | None, pct: int = 80) -> None:
    with Session(engine) as s, s.begin():
        netting.set_cap(s, PEER, cap_fen, pct)


def _alarms(engine: Engine) -> list[Alarm]:
    with Session(engine) as s:
        return netting.alarms(s, PEER)


# --- the pure rules --------------------------------------------------------------------------


def test_items_fit_cumulatively_in_order_and_a_later_smaller_one_may_still_fit() -> None:
    assert netting.fits_under_cap(0, [400, 600], 1000) == [True, True]  # reaches the cap exactly
    assert netting.fits_under_cap(0, [400, 601, 600], 1000) == [True, False, True]  # 1 fen over, then exactly
    assert netting.fits_under_cap(-300, [1300], 1000) == [True]  # what the peer owes us counts against it
    assert netting.fits_under_cap(10**9, [1], None) == [True]  # no cap


def test_the_alarm_rings_once_when_the_net_debit_reaches_its_percentage_of_the_cap() -> None:
    cap = netting.Cap(1000, 80)
    assert cap.alarm_fen == 800 and netting.Cap(999, 80).alarm_fen == 800  # rounded up, in fen
    assert netting.crossed_alarm(799, 800, cap) and not netting.crossed_alarm(800, 900, cap)
    assert not netting.crossed_alarm(0, 799, cap) and not netting.crossed_alarm(0, 10**6, netting.Cap(None))


@pytest.mark.parametrize(("cap_fen", "pct"), [(-1, 80), (10**15 + 1, 80), (1000, 0), (1000, 101)])
def test_a_cap_outside_its_rules_is_refused(cap_fen: int, pct: int) -> None:
    with pytest.raises(InteropError) as raised:
        netting.Cap(cap_fen, pct)
    assert raised.value.code.value == "E_BAD_CAP" and raised.value.status == 422


# --- the judge under a cap -------------------------------------------------------------------


def test_a_batch_that_reaches_the_cap_exactly_is_accepted_whole_and_rings_the_alarm(issuer_db: Engine) -> None:
    world = make_world(issuer_db, cards=2)
    _set_cap(issuer_db, 1000, 80)
    a, b = world.cards
    verdicts = world.judge([world.peer_terminal.tap(a, 400, T0), world.peer_terminal.tap(b, 600, T0)])
    assert _codes(verdicts) == [("accepted", "OK"), ("accepted", "OK")]
    assert world.due_to_fen() == 1000
    [alarm] = _alarms(issuer_db)
    assert alarm.kind == "net_debit_cap" and alarm.details["net_after_fen"] == 1000
    # nothing more fits: even one fen is refused
    assert _codes(world.judge([world.peer_terminal.tap(a, 1, T0 + dt.timedelta(minutes=1))])) == [
        ("rejected", "E_NET_DEBIT_CAP")
    ]


def test_a_batch_that_passes_the_cap_by_one_fen_refuses_that_item_only(issuer_db: Engine) -> None:
    world = make_world(issuer_db, cards=3)
    _set_cap(issuer_db, 1000, 80)
    a, b, c = world.cards
    t = world.peer_terminal
    verdicts = world.judge([t.tap(a, 400, T0), t.tap(b, 601, T0), t.tap(c, 600, T0)])
    assert _codes(verdicts) == [("accepted", "OK"), ("rejected", "E_NET_DEBIT_CAP"), ("accepted", "OK")]
    assert "past its cap of 1000 fen" in verdicts[1].message and verdicts[1].amount_fen == 0
    assert world.due_to_fen() == 1000
    assert world.shadow(b) == (10_000, None)  # the refused tap did not clear
    assert [a.details["refused"] for a in _alarms(issuer_db)] == [1]
    world.balanced()


def test_a_refused_record_leaves_its_card_as_it_was_for_the_records_after_it(issuer_sqlite: Engine) -> None:
    world = make_world(issuer_sqlite, cards=1)
    _set_cap(issuer_sqlite, 500)
    [a] = world.cards
    t = world.peer_terminal
    verdicts = world.judge([t.tap(a, 300, T0), t.tap(a, 300, T0 + dt.timedelta(minutes=1)),
                            t.tap(a, 100, T0 + dt.timedelta(minutes=2))])  # fmt: skip
    assert _codes(verdicts) == [("accepted", "OK"), ("rejected", "E_NET_DEBIT_CAP"), ("accepted", "OK")]
    assert verdicts[2].message.startswith("S_COUNTER_GAP")  # counter 1 did not clear
    assert world.shadow(a) == (10_000 - 300 - 300 - 100, 2)


def test_what_the_peer_owes_us_nets_against_the_cap_and_final_windows_no_longer_count(issuer_sqlite: Engine) -> None:
    world = make_world(issuer_sqlite, cards=2)
    _set_cap(issuer_sqlite, 500)
    a = world.cards[0]
    with Session(issuer_sqlite) as s, s.begin():
        netting.book(s, peer_city=PEER, direction=netting.DUE_FROM, item_id="xianyang:x:1:0", amount_fen=300,
                     window_day=T0.date(), transfer_id="acq:1")  # fmt: skip
        assert netting.open_net_debit(s, PEER) == -300
    assert _codes(world.judge([world.peer_terminal.tap(a, 800, T0)])) == [("accepted", "OK")]
    with Session(issuer_sqlite) as s:
        assert netting.open_net_debit(s, PEER) == 500
        assert netting.position(s, PEER, T0.date()) == netting.Position(PEER, T0.date(), 800, 300)
        assert netting.position(s, PEER, T0.date()).net_fen == 500


def test_the_position_is_kept_per_window_of_the_taps_business_day(issuer_sqlite: Engine) -> None:
    world = make_world(issuer_sqlite, cards=1)
    [a] = world.cards
    t = world.peer_terminal
    day2 = T0 + dt.timedelta(days=1)
    verdicts = world.judge([t.tap(a, 200, T0), t.tap(a, 300, day2)], at=day2 + dt.timedelta(hours=1))
    assert [v.window_day for v in verdicts] == [T0.date(), day2.date()]
    with Session(issuer_sqlite) as s:
        assert netting.position(s, PEER, T0.date()).due_to_fen == 200
        assert netting.position(s, PEER, day2.date()).due_to_fen == 300


def test_booking_an_item_twice_changes_nothing(issuer_sqlite: Engine) -> None:
    make_world(issuer_sqlite, cards=1)
    with Session(issuer_sqlite) as s, s.begin():
        kw = {"peer_city": PEER, "direction": netting.DUE_FROM, "item_id": "xianyang:t:1:d", "amount_fen": 250,
              "window_day": T0.date(), "transfer_id": "acq:1"}  # fmt: skip
        assert netting.book(s, **kw) == T0.date()  # type: ignore[arg-type]
        assert netting.book(s, **kw) is None  # type: ignore[arg-type]
        assert netting.position(s, PEER, T0.date()).due_from_fen == 250
