"""Two real instances closing windows and moving disputes over the signed channel, both ways.

Both cities run the exchange on a schedule (Xi'an straight to Xianyang, Xianyang through the
relay); windows are closed as soon as their day has ended (``window_close_delay_s`` 0). A day
of Xi'an cards tapped on a Xianyang bus *yesterday*, with a net debit cap at Xi'an that refuses
the last tap: the window of yesterday becomes final on both sides with one digest, Xi'an pays
and Xianyang receives through bank settlement; the refused tap opens a dispute on both sides,
Xi'an accepts it and both book it in the same open window; a forged tap's dispute goes through
evidence requested to a write-off, each move made on one side and mirrored on the other.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest
from sqlalchemy.orm import Session
from wire_instances import (
    XIAN_ISSUER,
    XIANYANG_ISSUER,
    Cities,
    cities_on,
    tap,
    upload,
    wait_for,
)

from interop_xian import disputes, netting
from interop_xian.disputes import Side, State

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(600)]
CAP_FEN = 1000


@pytest.fixture(scope="module", params=["postgres+postgres", "postgres+sqlite"])
def cities(request: pytest.FixtureRequest, pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cities]:
    home = tmp_path_factory.mktemp(f"close-{request.param.replace('+', '-')}")
    yield from cities_on(
        request.param, pg_url, home, prefix="t_cls_", both_ways=True, env={"YIKATONG_INTEROP_WINDOW_CLOSE_DELAY_S": "0"}
    )


def _yesterday_noon() -> dt.datetime:
    shanghai = dt.timezone(dt.timedelta(hours=8))
    today = dt.datetime.now(shanghai).date()
    return dt.datetime.combine(today - dt.timedelta(days=1), dt.time(12), shanghai)


def _window(c: Cities, city: str, day: dt.date) -> tuple[str, str] | None:
    instance = c.xianyang if city == "xianyang" else c.xian
    with instance.engine.connect() as conn:
        from sqlalchemy import text

        row = conn.execute(
            text("SELECT state, our_digest FROM interop_windows WHERE window_day = :d"), {"d": day}
        ).first()
    return None if row is None else (str(row[0]), str(row[1]))


def _account(c: Cities, city: str, code: int, owner: str) -> int:
    instance = c.xianyang if city == "xianyang" else c.xian
    return int(instance.scalar(
        "SELECT coalesce(sum(debits_posted - credits_posted), 0) FROM accounts WHERE code = :c AND owner_ref = :r",
        c=code, r=owner,
    ))  # fmt: skip


def _dispute_state(c: Cities, city: str, item_id: str) -> str | None:
    instance = c.xianyang if city == "xianyang" else c.xian
    value = instance.scalar("SELECT state FROM interop_disputes WHERE item_id = :i", i=item_id)
    return None if value is None else str(value)


def _rejected_item(c: Cities, code: str) -> str:
    return str(c.xianyang.scalar("SELECT item_id FROM interop_outbox WHERE code = :c ORDER BY id LIMIT 1", c=code))


def test_yesterdays_window_becomes_final_on_both_sides_and_settles_through_the_bank(cities: Cities) -> None:
    c = cities
    with Session(c.xian.engine) as s, s.begin():
        netting.set_cap(s, "xianyang", CAP_FEN)
    start = _yesterday_noon()
    records = [tap(c.terminal, c.cards[n], amount, start + dt.timedelta(minutes=n), c.xian.keystore)
               for n, amount in enumerate([300, 400, 500])]  # fmt: skip
    records.append(tap(c.terminal, c.cards[0], 250, start + dt.timedelta(minutes=9), c.xian.keystore, forge=True))
    upload(c.xianyang, c.terminal, records)
    day = start.date()
    wait_for(
        "yesterday's window to be final on both sides",
        lambda: (_window(c, "xianyang", day) or ("", ""))[0] == "final" == (_window(c, "xian", day) or ("", ""))[0],
        logs=c.instances(), timeout_s=90,
    )  # fmt: skip
    ours, theirs = _window(c, "xianyang", day), _window(c, "xian", day)
    assert ours is not None and theirs is not None and ours[1] == theirs[1]  # one instruction, one digest
    # Xi'an owed 700 (300 + 400; 500 passed the cap, 250 was forged): Xi'an paid, Xianyang received.
    receive = c.xianyang.scalar("SELECT amount_fen FROM transfers WHERE id LIKE :p", p="inet:xian:%:receive")
    pay = c.xian.scalar("SELECT amount_fen FROM transfers WHERE id LIKE :p", p="inet:xianyang:%:pay")
    assert int(receive) == 700 == int(pay)
    # Both interop accounts are back to zero for the window.
    assert _account(c, "xianyang", 500, f"interop:{XIAN_ISSUER}") == 0
    assert _account(c, "xian", 510, f"interop:{XIANYANG_ISSUER}") == 0
    assert c.xian.scalar("SELECT count(*) FROM interop_alarms WHERE kind = 'digest_mismatch'") == 0


def test_a_capped_tap_is_disputed_on_both_sides_and_its_acceptance_booked_in_one_window(cities: Cities) -> None:
    c = cities
    item = _rejected_item(c, "E_NET_DEBIT_CAP")
    wait_for("the dispute to be opened at Xi'an too", lambda: _dispute_state(c, "xian", item) == "opened",
             logs=c.instances())  # fmt: skip
    assert _dispute_state(c, "xianyang", item) == "opened"
    with Session(c.xian.engine) as s, s.begin():
        dispute_id = int(c.xian.scalar("SELECT id FROM interop_disputes WHERE item_id = :i", i=item))
        moved = disputes.move(s, dispute_id, State.ACCEPTED, by=Side.ISSUER, actor="clerk", now=dt.datetime.now(dt.UTC))
    assert moved.window_day is not None
    wait_for("Xianyang to mirror the acceptance", lambda: _dispute_state(c, "xianyang", item) == "accepted",
             logs=c.instances())  # fmt: skip
    ours = c.xianyang.scalar("SELECT window_day FROM interop_bookings WHERE item_id = :i AND direction = 'due_from'",
                             i=item)  # fmt: skip
    theirs = c.xian.scalar("SELECT window_day FROM interop_bookings WHERE item_id = :i AND direction = 'due_to'",
                           i=item)  # fmt: skip
    assert str(ours) == str(theirs) == str(moved.window_day)  # the window the issuer named
    assert _account(c, "xianyang", 500, f"interop:{XIAN_ISSUER}") == 500
    assert -_account(c, "xian", 510, f"interop:{XIANYANG_ISSUER}") == 500
    paid = c.xianyang.scalar("SELECT amount_fen FROM transfers WHERE id LIKE :p", p="idsp:xian:acquirer:%")
    assert int(paid) == 500


def test_a_forged_taps_dispute_goes_to_evidence_and_a_write_off_on_both_sides(cities: Cities) -> None:
    c = cities
    item = _rejected_item(c, "E_TAC_MISMATCH")
    wait_for("the dispute to be opened at Xi'an too", lambda: _dispute_state(c, "xian", item) == "opened",
             logs=c.instances())  # fmt: skip
    with Session(c.xian.engine) as s, s.begin():
        dispute_id = int(c.xian.scalar("SELECT id FROM interop_disputes WHERE item_id = :i", i=item))
        note = "the TAC does not verify: send the validator's log"
        disputes.move(s, dispute_id, State.EVIDENCE_REQUESTED, by=Side.ISSUER, actor="clerk",
                      now=dt.datetime.now(dt.UTC), note=note)  # fmt: skip
    wait_for("Xianyang to see the request", lambda: _dispute_state(c, "xianyang", item) == "evidence_requested",
             logs=c.instances())  # fmt: skip
    with Session(c.xianyang.engine) as s, s.begin():
        dispute_id = int(c.xianyang.scalar("SELECT id FROM interop_disputes WHERE item_id = :i", i=item))
        disputes.move(s, dispute_id, State.WRITTEN_OFF, by=Side.ACQUIRER, actor="clerk", now=dt.datetime.now(dt.UTC))
    wait_for("Xi'an to see the write-off", lambda: _dispute_state(c, "xian", item) == "written_off",
             logs=c.instances())  # fmt: skip
    # No money moved for it on either side; every message was delivered, none refused.
    assert c.xianyang.scalar("SELECT count(*) FROM transfers WHERE id LIKE :p", p="idsp:%") == 1  # the capped one
    for instance in c.instances():
        assert instance.scalar("SELECT count(*) FROM interop_messages_out WHERE state = 'refused'") == 0
    assert c.xian.scalar("SELECT count(*) FROM interop_dispute_events WHERE actor = 'peer:xianyang'") >= 2
