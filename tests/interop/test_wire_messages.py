"""Window digests and dispute moves on ``/interop/v1/messages``, in process: agreement, faults, replays.

Xi'an's judge here is the test stand-in (``wire_support``), which keeps no position, so each test
books Xi'an's side of the items itself (``netting.book_many``, as its real judge does) to make
the two journals agree, or not.
"""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session
from wire_support import (  # noqa: F401 - the fixtures
    NOW,
    Pair,
    pair_fixture,
    windows_close_at_once,
    wire_pg_schemas_fixture,
    wire_sqlite_template_fixture,
)

from clearing.business_day import DEFAULT_CLOCK
from clearing.models import Transfer
from interop_xian import batch as wire
from interop_xian import message_sender, messages, netting, window_exchange
from interop_xian.errors import InteropError
from interop_xian.inbox import REPLAY_HEADER
from interop_xian.models import Alarm, Booking, InteropWindow, OutMessage, Refusal


def _xian_books(pair: Pair, *, skip: int = 0) -> None:
    """Xi'an's judge's side of every item Xianyang booked (less the last ``skip``)."""
    with Session(pair.xianyang.engine) as s:
        rows = [(b.item_id, b.amount_fen, b.window_day) for b in s.scalars(select(Booking).order_by(Booking.id))]
    with Session(pair.xian.engine) as s, s.begin():
        netting.lock_peer(s, "xianyang")
        netting.book_many(
            s,
            peer_city="xianyang",
            direction=netting.DUE_TO,
            now=NOW,
            rows=[(i, f, d, f"iss:t:{i}") for i, f, d in rows[: len(rows) - skip]],
        )


def _window(engine: Engine, day: dt.date) -> InteropWindow | None:
    with Session(engine) as s:
        return s.scalars(select(InteropWindow).where(InteropWindow.window_day == day)).one_or_none()


def _alarms(engine: Engine, kind: str) -> list[Alarm]:
    with Session(engine) as s:
        return list(s.scalars(select(Alarm).where(Alarm.kind == kind)))


def _legs(engine: Engine) -> dict[str, int]:
    with Session(engine) as s:
        legs = s.scalars(select(Transfer).where(Transfer.id.like("inet:%")))
        return {t.id.rsplit(":", 1)[1]: t.amount_fen for t in legs}


def _day(pair: Pair) -> dt.date:
    with Session(pair.xianyang.engine) as s:
        return s.scalars(select(Booking.window_day)).first()  # type: ignore[return-value]


def test_a_window_is_final_on_both_sides_only_when_both_hold_the_same_items(pair: Pair) -> None:
    windows_close_at_once(pair)
    pair.tap([200, 300])
    pair.exchange()
    day = _day(pair)
    _xian_books(pair, skip=1)  # Xi'an has the first item only
    pair.later(2 * 86400)
    report = pair.exchange()
    assert report.windows == {day.isoformat(): "mismatch"}
    for city in (pair.xianyang, pair.xian):
        row = _window(city.engine, day)
        assert row is not None and row.state == "mismatch"
        (alarm,) = _alarms(city.engine, "digest_mismatch")
        assert alarm.details["ours"] and alarm.details["theirs"] is not None  # both sides' items, itemised
    (xianyang_alarm,) = _alarms(pair.xianyang.engine, "digest_mismatch")
    assert [line[2] for line in xianyang_alarm.details["only_ours"]] == [300]
    assert _legs(pair.xianyang.engine) == {} == _legs(pair.xian.engine)  # nothing settles on a mismatch
    pair.exchange()  # the same two digests again: no second alarm
    assert len(_alarms(pair.xianyang.engine, "digest_mismatch")) == 1
    _xian_books(pair)  # Xi'an's missing item arrives
    report = pair.exchange()
    assert report.windows == {day.isoformat(): "final"}
    ours, theirs = _window(pair.xianyang.engine, day), _window(pair.xian.engine, day)
    assert ours is not None and theirs is not None and ours.state == theirs.state == "final"
    assert ours.our_digest == theirs.our_digest == ours.peer_digest == theirs.peer_digest
    assert _legs(pair.xianyang.engine) == {"receive": 500} and _legs(pair.xian.engine) == {"pay": 500}
    pair.exchange()  # final stays final, posted once
    assert _legs(pair.xianyang.engine) == {"receive": 500}


def test_a_lost_window_reply_is_asked_again_and_answered_with_the_final_instruction(pair: Pair) -> None:
    windows_close_at_once(pair)
    pair.tap([450])
    pair.exchange()
    day = _day(pair)
    _xian_books(pair)
    pair.later(2 * 86400)
    pair.transport.lose_acks = 1  # Xi'an concludes final; its reply is lost on the way back
    report = pair.exchange()
    assert report.windows == {day.isoformat(): "proposed"}
    assert "E_INTEROP_PEER_UNREACHABLE" in str(report.windows_stopped)
    xian_row = _window(pair.xian.engine, day)
    assert xian_row is not None and xian_row.state == "final"
    report = pair.exchange()
    assert report.windows == {day.isoformat(): "final"}
    assert _legs(pair.xianyang.engine) == {"receive": 450} and _legs(pair.xian.engine) == {"pay": 450}


def test_an_item_judged_after_the_peer_proposed_goes_to_the_next_window(pair: Pair) -> None:
    windows_close_at_once(pair)
    pair.tap([100])
    pair.exchange()
    day = _day(pair)
    _xian_books(pair)
    pair.later(2 * 86400)
    pair.exchange()
    with Session(pair.xian.engine) as s:
        assert netting.latest_closed(s, "xianyang") == day
        # the judge's rule: an item of that tap day now joins the next window
        assert netting.window_for(day, netting.latest_closed(s, "xianyang")) == day + dt.timedelta(days=1)


def test_windows_close_in_day_order_on_the_answering_side_too(pair: Pair) -> None:
    windows_close_at_once(pair)
    pair.tap([100])
    pair.exchange()
    day = _day(pair)
    _xian_books(pair)
    with Session(pair.xian.engine) as s, s.begin():  # Xi'an has an earlier window with an item Xianyang lacks
        netting.book_many(
            s,
            peer_city="xianyang",
            direction=netting.DUE_TO,
            now=NOW,
            rows=[("xianyang:0a0000000001:9:00", 70, day - dt.timedelta(days=1), "iss:t:early")],
        )
    pair.later(2 * 86400)
    report = pair.exchange()
    assert report.windows_stopped is not None and "E_WINDOW_NOT_PROPOSED" in report.windows_stopped
    row = _window(pair.xian.engine, day)
    assert row is None or row.state != "final"


def _message(pair: Pair, content: dict[str, object], *, message_id: str = "xianyang:dispute:t1") -> bytes:
    return messages.encode_message(
        from_city="xianyang", to_city="xian", message_id=message_id, created_at=NOW, kind="dispute", content=content
    )


def _open_content(item_id: str, amount: int = 300) -> dict[str, object]:
    return messages.dispute_content(
        messages.DisputeContent(
            item_id=item_id,
            action="open",
            by="acquirer",
            to_state="opened",
            amount_fen=amount,
            reason_code="E_TAC_MISMATCH",
            note="the issuer refused it",
            evidence=None,
            window_day=None,
        )
    )


def _post(pair: Pair, body: bytes, *, kind: str = "message", key: tuple[str, object] | None = None) -> object:
    key_id, private = key or pair.xianyang.signing.current()
    headers = {wire.KEY_ID_HEADER: key_id, wire.SIGNATURE_HEADER: wire.sign(kind, body, private)}  # type: ignore[arg-type]
    return pair.transport.client.post("/interop/v1/messages", content=body, headers=headers)


def test_a_replayed_dispute_message_is_answered_again_and_acts_once(pair: Pair) -> None:
    from interop_xian.models import Dispute, DisputeEvent

    body = _message(pair, _open_content("xianyang:0a0000000001:1:aa"))
    first, again = _post(pair, body), _post(pair, body)
    assert first.status_code == again.status_code == 200  # type: ignore[attr-defined]
    assert first.content == again.content and again.headers[REPLAY_HEADER] == "original"  # type: ignore[attr-defined]
    reply = messages.decode_reply(first.content)  # type: ignore[attr-defined]
    assert reply.content == {"item_id": "xianyang:0a0000000001:1:aa", "state": "opened"}
    with Session(pair.xian.engine) as s:
        (dispute,) = s.scalars(select(Dispute)).all()
        assert dispute.role == "issuer" and len(s.scalars(select(DisputeEvent)).all()) == 1
    other = _message(pair, _open_content("xianyang:0a0000000001:1:aa", amount=301))
    conflict = _post(pair, other)
    assert conflict.status_code == 409 and conflict.json()["code"] == "E_INTEROP_BATCH_CONFLICT"  # type: ignore[attr-defined]


def test_tampered_wrongly_signed_and_misaddressed_messages_are_refused_and_do_nothing(pair: Pair) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from interop_xian.models import Dispute

    body = _message(pair, _open_content("xianyang:0a0000000001:2:bb"))
    key_id, private = pair.xianyang.signing.current()
    signature = wire.sign("message", body, private)
    tampered = body.replace(b'"amount_fen":300', b'"amount_fen":900')
    answer = pair.transport.client.post(
        "/interop/v1/messages", content=tampered, headers={wire.KEY_ID_HEADER: key_id, wire.SIGNATURE_HEADER: signature}
    )
    assert answer.status_code == 401 and answer.json()["code"] == "E_INTEROP_BAD_SIGNATURE"
    as_batch = _post(pair, body, kind="batch")  # a batch's signature is not a message's
    assert as_batch.status_code == 401  # type: ignore[attr-defined]
    stranger = _post(pair, body, key=("0" * 32, Ed25519PrivateKey.generate()))
    assert stranger.status_code == 401 and stranger.json()["code"] == "E_INTEROP_UNKNOWN_KEY"  # type: ignore[attr-defined]
    wrong_way = messages.encode_message(
        from_city="xian",
        to_city="xianyang",
        message_id="xian:dispute:t",
        created_at=NOW,
        kind="dispute",
        content=_open_content("xian:x:1:cc"),
    )
    misaddressed = _post(pair, wrong_way)
    assert misaddressed.status_code == 403  # type: ignore[attr-defined]
    garbage = _post(pair, b'{"format":"yikatong-interop-message/1"}')
    assert garbage.status_code == 422  # type: ignore[attr-defined]
    with Session(pair.xian.engine) as s:
        assert s.scalars(select(Dispute)).all() == []
        assert len(s.scalars(select(Refusal)).all()) == 5


def test_dispute_messages_wait_for_a_peer_that_is_down_and_a_refused_one_raises_an_alarm(pair: Pair) -> None:
    unknown_move = messages.dispute_content(
        messages.DisputeContent(
            item_id="xianyang:0a0000000001:3:dd",
            action="move",
            by="acquirer",
            to_state="written_off",
            amount_fen=0,
            reason_code="E_TAC_MISMATCH",
            note="",
            evidence=None,
            window_day=None,
        )
    )
    with Session(pair.xianyang.engine) as s, s.begin():
        message_sender.enqueue(s, own_city="xianyang", peer_city="xian", kind="dispute", content=unknown_move, now=NOW)
        message_sender.enqueue(
            s,
            own_city="xianyang",
            peer_city="xian",
            kind="dispute",
            content=_open_content("xianyang:0a0000000001:4:ee"),
            now=NOW,
        )
    pair.transport.down = True
    report = pair.exchange()
    assert report.messages_delivered == 0 and len(report.messages_failed) == 1  # the first one; the second waits
    with Session(pair.xianyang.engine) as s:
        assert [m.state for m in s.scalars(select(OutMessage).order_by(OutMessage.id))] == ["pending", "pending"]
    pair.transport.down = False
    assert pair.exchange().messages_delivered == 0  # not yet: the backoff
    pair.later(60)
    report = pair.exchange()
    assert report.messages_delivered == 1 and len(report.messages_refused) == 1
    with Session(pair.xianyang.engine) as s:
        assert [m.state for m in s.scalars(select(OutMessage).order_by(OutMessage.id))] == ["refused", "delivered"]
    (alarm,) = _alarms(pair.xianyang.engine, "message_refused")
    assert alarm.details["code"] == "E_UNKNOWN_DISPUTE"


def test_a_window_is_not_compared_while_our_taps_of_it_are_on_their_way(pair: Pair) -> None:
    from clearing.models import InteropForward
    from interop_xian.models import OutboxItem

    windows_close_at_once(pair)
    pair.tap([200])
    pair.later(2 * 86400)
    pair.transport.lose_acks = 1  # Xi'an judges the batch; its acknowledgement is lost on the way back
    report = pair.exchange()
    assert report.failed and report.windows == {}
    with Session(pair.xianyang.engine) as s:  # Xi'an's judge booked the item (as its real judge would)
        rows = s.execute(
            select(OutboxItem.item_id, OutboxItem.amount_fen, InteropForward.business_day).join(
                InteropForward, InteropForward.id == OutboxItem.forward_id
            )
        ).all()
    with Session(pair.xian.engine) as s, s.begin():
        netting.lock_peer(s, "xianyang")
        netting.book_many(s, peer_city="xianyang", direction=netting.DUE_TO, now=NOW,
                          rows=[(i, int(f), d, f"iss:t:{i}") for i, f, d in rows])  # fmt: skip
        day = rows[0][2]
    # Xi'an asks to close the window: Xianyang's tap of that day is on its way, so not now (no alarm).
    content = messages.window_content(window_day=day, digest="0" * 64, state="proposed", instruction={})
    with Session(pair.xianyang.engine) as s, s.begin(), pytest.raises(InteropError) as refused:
        window_exchange.answer_proposal(
            s, own_city="xianyang", peer_city="xian", now=pair.now, days=DEFAULT_CLOCK,
            content=messages.WindowContent(day, "0" * 64, "proposed", content["instruction"]),
        )  # fmt: skip
    assert refused.value.code.value == "E_WINDOW_NOT_DUE"
    pair.later(60)
    report = pair.exchange()  # the resend gets the stored acknowledgement, applies it, then closes the window
    assert report.windows == {day.isoformat(): "final"}
    for city in (pair.xianyang, pair.xian):
        assert _alarms(city.engine, "digest_mismatch") == []
