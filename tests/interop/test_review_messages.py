"""Review findings on the messages channel (window digests, dispute moves), each pinned by its test.

1. A dispute move read its state from a row the caller had loaded before another move committed:
   an acceptance could be overwritten, or made after a rejection (money on one side only).
2. A mirrored move's new deadline counted from the day it arrived, not the day the peer made it.
3. The acquirer believed the peer's open and acceptance of a tap it never forwarded, for any
   amount, in any window.
4. A signed proposal for a future day closed every window before it.
5. NUL in a dispute's item id or reason code got a 503 on PostgreSQL, so the sender's outbox
   stalled; a created_at far in the future overflowed the business-day clock.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from issuerworld import *  # noqa: F403 - the fixtures
from issuerworld import PEER, RECEIVED, T0, make_world
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session
from test_disputes_state_machine import weekdays
from wire_support import (  # noqa: F401 - the fixtures
    NOW,
    Pair,
    pair_fixture,
    windows_close_at_once,
    wire_pg_schemas_fixture,
    wire_sqlite_template_fixture,
)

from clearing.business_day import DEFAULT_CLOCK
from interop_xian import batch as wire
from interop_xian import disputes, messages, netting, window_close
from interop_xian.disputes import Side, State
from interop_xian.errors import InteropError
from interop_xian.models import Booking, Dispute, InteropWindow

LATER = RECEIVED + dt.timedelta(hours=1)


def _capped_dispute(engine: Engine) -> tuple[int, Any]:
    world = make_world(engine)
    with Session(engine) as s, s.begin():
        netting.set_cap(s, PEER, 100)
    [verdict] = world.judge([world.peer_terminal.tap(world.cards[0], 300, T0)])
    assert verdict.code == "E_NET_DEBIT_CAP"
    with Session(engine) as s, s.begin():
        netting.set_cap(s, PEER, None)
        moved = disputes.open_dispute(s, peer_city=PEER, role=Side.ISSUER, item_id=verdict.item_id, amount_fen=300,
                                      reason_code="E_NET_DEBIT_CAP", actor="xianyang", now=LATER,
                                      add_working_days=weekdays, notify=False)  # fmt: skip
    return moved.dispute_id, world


def test_a_move_from_a_dispute_loaded_before_another_move_committed_is_refused(issuer_db: Engine) -> None:
    dispute_id, world = _capped_dispute(issuer_db)
    with Session(issuer_db) as console:
        assert disputes.get(console, dispute_id).state == "opened"  # the form's page loaded it
        with Session(issuer_db) as other, other.begin():  # another clerk accepts meanwhile
            disputes.move(other, dispute_id, State.ACCEPTED, by=Side.ISSUER, actor="clerk-2", now=LATER,
                          add_working_days=weekdays)  # fmt: skip
        with pytest.raises(InteropError) as refused:
            disputes.move(console, dispute_id, State.REJECTED, by=Side.ISSUER, actor="clerk-1", now=LATER,
                          add_working_days=weekdays)  # fmt: skip
        console.rollback()
    assert refused.value.code.value == "E_DISPUTE_TRANSITION"
    with Session(issuer_db) as s:
        assert s.get(Dispute, dispute_id).state == "accepted"  # type: ignore[union-attr]
    assert world.due_to_fen() == 300  # posted once, kept


def test_an_acceptance_after_a_committed_rejection_is_refused_and_posts_nothing(issuer_db: Engine) -> None:
    dispute_id, world = _capped_dispute(issuer_db)
    with Session(issuer_db) as late:
        disputes.get(late, dispute_id)
        with Session(issuer_db) as other, other.begin():
            disputes.move(other, dispute_id, State.REJECTED, by=Side.ISSUER, actor="clerk-1", now=LATER,
                          add_working_days=weekdays)  # fmt: skip
        with pytest.raises(InteropError):
            disputes.move(late, dispute_id, State.ACCEPTED, by=Side.ISSUER, actor="clerk-2", now=LATER,
                          add_working_days=weekdays)  # fmt: skip
        late.rollback()
    assert world.due_to_fen() == 0 and world.bookings() == []


def test_a_mirrored_moves_deadline_counts_from_the_day_the_peer_made_it(issuer_sqlite: Engine) -> None:
    item = "xian:0a0000000001:7:00112233445566aa"
    with Session(issuer_sqlite) as s, s.begin():
        opened = disputes.open_dispute(s, peer_city=PEER, role=Side.ISSUER, item_id=item, amount_fen=300,
                                       reason_code="E_TAC_MISMATCH", actor="t", now=LATER, add_working_days=weekdays,
                                       notify=False)  # fmt: skip
        disputes.move(s, opened.dispute_id, State.EVIDENCE_REQUESTED, by=Side.ISSUER, actor="clerk", now=LATER,
                      add_working_days=weekdays)  # fmt: skip
    made = LATER + dt.timedelta(days=1)
    body = messages.encode_message(
        from_city=PEER, to_city="xian" if PEER != "xian" else "xianyang", message_id=f"{PEER}:dispute:d1",
        created_at=made, kind="dispute",
        content=messages.dispute_content(messages.DisputeContent(
            item_id=item, action="move", by="acquirer", to_state="evidence_given", amount_fen=300,
            reason_code="E_TAC_MISMATCH", note="", evidence="the validator's log", window_day=None,
        )),
    )  # fmt: skip
    arrived = made + dt.timedelta(days=4)  # we were down for four days
    with Session(issuer_sqlite) as s, s.begin():
        disputes.handle_message(s, PEER, messages.decode_message(body), arrived, add_working_days=weekdays)
    with Session(issuer_sqlite) as s:
        row = s.get(Dispute, opened.dispute_id)
        assert row is not None and row.state == "evidence_given"
        expected = disputes.deadline_of(State.EVIDENCE_GIVEN, DEFAULT_CLOCK.day_of(made), weekdays)
        assert row.deadline == expected


def _from_xian(pair: Pair, content: dict[str, Any], n: int) -> Any:
    body = messages.encode_message(from_city="xian", to_city="xianyang", message_id=f"xian:dispute:r{n}",
                                   created_at=pair.now, kind="dispute", content=content)  # fmt: skip
    key_id, private = pair.xian.signing.current()
    return pair.xianyang.node.receiver.receive_message(body, key_id, wire.sign("message", body, private))


def _issuer_move(item: str, action: str, to: str, amount: int, window: dt.date | None) -> dict[str, Any]:
    return messages.dispute_content(messages.DisputeContent(
        item_id=item, action=action, by="issuer", to_state=to, amount_fen=amount, reason_code="E_X", note="",
        evidence=None, window_day=window,
    ))  # fmt: skip


def test_the_peer_cannot_open_or_accept_a_dispute_of_a_tap_we_never_forwarded(pair: Pair) -> None:
    item = f"xianyang:{pair.terminal.terminal_id}:99999:ffffffffffffffff"
    opened = _from_xian(pair, _issuer_move(item, "open", "opened", 100_000_000, None), 1)
    accepted = _from_xian(pair, _issuer_move(item, "move", "accepted", 100_000_000, dt.date(2099, 1, 1)), 2)
    assert opened.status == 422 and b"E_BAD_DISPUTE" in opened.body
    assert accepted.status == 422
    with Session(pair.xianyang.engine) as s:
        assert s.scalars(select(Dispute)).all() == [] and s.scalars(select(Booking)).all() == []


def test_an_acceptance_of_ours_must_name_an_open_window_not_far_ahead(pair: Pair) -> None:
    from wire_support import REJECT_TAC

    pair.tap([300], tac=REJECT_TAC)
    pair.exchange()  # rejected: our acquirer dispute is opened (and told to Xi'an)
    with Session(pair.xianyang.engine) as s:
        (dispute,) = s.scalars(select(Dispute)).all()
    far = _from_xian(pair, _issuer_move(dispute.item_id, "move", "accepted", 300, dt.date(2099, 1, 1)), 3)
    assert far.status == 422 and b"E_BAD_DISPUTE" in far.body
    today = DEFAULT_CLOCK.day_of(pair.now)
    good = _from_xian(pair, _issuer_move(dispute.item_id, "move", "accepted", 999, today), 4)
    assert good.status == 200
    with Session(pair.xianyang.engine) as s:
        (booking,) = s.scalars(select(Booking)).all()
        assert (booking.window_day, booking.amount_fen) == (today, 300)  # our record's amount, not the message's


def test_a_proposal_for_a_day_that_has_not_ended_is_refused(pair: Pair) -> None:
    windows_close_at_once(pair)
    far = dt.date(2099, 1, 1)
    empty = window_close.instruction_of("xianyang", "xian", far, [])
    body = messages.encode_message(
        from_city="xianyang", to_city="xian", message_id="xianyang:window:far", created_at=NOW, kind="window",
        content=messages.window_content(window_day=far, digest=window_close.instruction_digest(empty),
                                        state="proposed", instruction=window_close.document_of(empty)),
    )  # fmt: skip
    key_id, private = pair.xianyang.signing.current()
    answer = pair.transport.client.post(
        "/interop/v1/messages", content=body,
        headers={wire.KEY_ID_HEADER: key_id, wire.SIGNATURE_HEADER: wire.sign("message", body, private)},
    )  # fmt: skip
    assert answer.status_code == 409 and answer.json()["code"] == "E_WINDOW_NOT_DUE"
    with Session(pair.xian.engine) as s:
        assert s.scalars(select(InteropWindow)).all() == []


def test_nul_in_a_dispute_and_a_time_far_ahead_are_refused_not_failed(pair: Pair) -> None:
    def post(content: dict[str, Any], mid: str, at: dt.datetime = NOW) -> Any:
        body = messages.encode_message(from_city="xianyang", to_city="xian", message_id=mid, created_at=at,
                                       kind="dispute", content=content)  # fmt: skip
        key_id, private = pair.xianyang.signing.current()
        return pair.transport.client.post(
            "/interop/v1/messages", content=body,
            headers={wire.KEY_ID_HEADER: key_id, wire.SIGNATURE_HEADER: wire.sign("message", body, private)},
        )  # fmt: skip

    def opening(item: str, reason: str) -> dict[str, Any]:
        return messages.dispute_content(messages.DisputeContent(
            item_id=item, action="open", by="acquirer", to_state="opened", amount_fen=5, reason_code=reason,
            note="", evidence=None, window_day=None,
        ))  # fmt: skip

    answers = [
        post(opening("xianyang:a:1:b", "E_\x00X"), "xianyang:dispute:n1"),
        post(opening("xianyang:\x00:1:b", "E_X"), "xianyang:dispute:n2"),
        post(opening("xianyang:a:1:c", "E_X"), "xianyang:dispute:n3", at=dt.datetime(9999, 12, 31, tzinfo=dt.UTC)),
    ]
    assert [a.status_code for a in answers] == [422, 422, 422]
    assert {a.json()["code"] for a in answers} == {"E_INTEROP_MALFORMED"}
