"""The channel between two cities in process: delivery, replays, gaps, faults, keys, and the acquirer's money."""

from __future__ import annotations

import datetime as dt
import json

from sqlalchemy import select
from wire_support import (  # noqa: F401 - the fixtures
    KEYLESS_TAC,
    NOW,
    OVERLAP,
    PEER_ISSUER,
    REJECT_TAC,
    Pair,
    count,
    pair_fixture,
    wire_pg_schemas_fixture,
    wire_sqlite_template_fixture,
)

from clearing import accounts
from clearing.ledger import account_balance, trial_balance
from clearing.models import ForwardState, InteropForward
from interop_xian import batch as wire
from interop_xian.inbox import REPLAY_HEADER
from interop_xian.keys import import_peer_keys
from interop_xian.models import Booking, Dispute, InBatch, OutBatch, OutboxItem, Refusal


def _post(p: Pair, body: bytes, *, key: tuple[str, object] | None = None) -> object:
    key_id, private = key or p.xianyang.signing.current()
    headers = {wire.KEY_ID_HEADER: key_id, wire.SIGNATURE_HEADER: wire.sign("batch", body, private)}  # type: ignore[arg-type]
    return p.transport.client.post("/interop/v1/batches", content=body, headers=headers)


def _due_from(p: Pair) -> int:
    with p.xianyang.session() as session:
        return account_balance(session, accounts.due_from_peer(session, PEER_ISSUER)).debit_balance_fen


def _payable(p: Pair) -> int:
    with p.xianyang.session() as session:
        return account_balance(session, accounts.operator_payable(session, "xianyang-bus")).credit_balance_fen


def test_forwarded_taps_are_sent_accepted_and_paid_to_our_operator_once(pair: Pair) -> None:
    pair.tap([200, 300, 150])
    report = pair.exchange()
    assert (report.collected, report.built, report.acknowledged) == (3, [1], [1])
    assert (report.accepted, report.rejected, report.accepted_fen) == (3, 0, 650)
    assert report.outbox == {"accepted": 3}
    assert _due_from(pair) == 650 and _payable(pair) == 650
    assert pair.xianyang.scalar("SELECT sum(gross_fen) FROM settlement_totals") == 650
    with pair.xianyang.session() as session:
        assert {f.state for f in session.scalars(select(InteropForward))} == {ForwardState.ACCEPTED.value}
        trial_balance(session)
    again = pair.exchange()
    assert (again.collected, again.built, again.acknowledged, again.accepted) == (0, [], [], 0)
    assert _due_from(pair) == 650 and pair.xianyang.scalar("SELECT sum(gross_fen) FROM settlement_totals") == 650
    assert pair.judge.calls == ["xianyang:xian:1"]
    assert count(pair.xian.engine, InBatch) == 1


def test_a_rejected_item_is_marked_and_posts_nothing(pair: Pair) -> None:
    pair.tap([200])
    pair.tap([500], tac=REJECT_TAC)
    report = pair.exchange()
    assert (report.accepted, report.rejected) == (1, 1)
    with pair.xianyang.session() as session:
        rejected = session.scalars(select(OutboxItem).where(OutboxItem.state == "rejected")).one()
        assert rejected.code == "E_TAC_MISMATCH" and rejected.transfer_id is None
        dispute = session.scalars(select(Dispute)).one()  # handed to disputes, once
        assert dispute.item_id == rejected.item_id
    assert _due_from(pair) == 200
    pair.exchange()
    assert count(pair.xianyang.engine, Dispute) == 1


def test_batches_keep_their_sequence_and_size_bound(pair: Pair) -> None:
    pair.tap([10] * 120)
    report = pair.exchange()
    assert report.built == [1, 2, 3] and report.acknowledged == [1, 2, 3]
    with pair.xianyang.session() as session:
        sizes = [b.item_count for b in session.scalars(select(OutBatch).order_by(OutBatch.sequence))]
    assert sizes == [50, 50, 20]
    assert pair.judge.calls == ["xianyang:xian:1", "xianyang:xian:2", "xianyang:xian:3"]


def test_a_lost_acknowledgement_is_answered_again_by_the_original_on_resend(pair: Pair) -> None:
    pair.tap([200, 300])
    pair.transport.lose_acks = 1
    first = pair.exchange()
    assert first.acknowledged == [] and 1 in first.failed and "E_INTEROP_PEER_UNREACHABLE" in first.failed[1]
    assert pair.judge.calls == ["xianyang:xian:1"]  # the peer judged it; we never heard
    assert _due_from(pair) == 0
    with pair.xian.session() as session:
        original = session.scalars(select(InBatch)).one().ack_body
    pair.later(1)
    assert pair.exchange().acknowledged == []  # not due yet: backoff
    pair.later(10)
    second = pair.exchange()
    assert second.acknowledged == [1] and second.accepted == 2
    assert pair.judge.calls == ["xianyang:xian:1"]  # the resend was a replay, not judged again
    with pair.xianyang.session() as session:
        assert session.scalars(select(OutBatch)).one().ack_body == original
    assert _due_from(pair) == 500


def test_a_peer_down_for_an_hour_is_retried_with_capped_backoff_then_delivered_once(pair: Pair) -> None:
    pair.tap([200])
    pair.transport.down = True
    attempts_at = []
    for _ in range(12):  # an hour of rounds every five minutes
        report = pair.exchange()
        if report.failed:
            attempts_at.append(pair.now)
        pair.later(300)
    with pair.xianyang.session() as session:
        out = session.scalars(select(OutBatch)).one()
        assert (
            out.state == "sent" and out.attempts == len(attempts_at) and "E_INTEROP_PEER_UNREACHABLE" in out.last_error
        )
        assert out.next_attempt_at - attempts_at[-1] <= dt.timedelta(seconds=300)
    assert _due_from(pair) == 0 and pair.judge.calls == []
    pair.transport.down = False
    pair.later(300)
    assert pair.exchange().acknowledged == [1]
    assert _due_from(pair) == 200 and pair.judge.calls == ["xianyang:xian:1"]


def test_a_replayed_batch_gets_the_stored_acknowledgement_byte_for_byte(pair: Pair) -> None:
    pair.tap([200])
    pair.exchange(deliver=False)
    with pair.xianyang.session() as session:
        body = session.scalars(select(OutBatch)).one().body
    first, second = _post(pair, body), _post(pair, body)
    assert first.status_code == second.status_code == 200  # type: ignore[attr-defined]
    assert first.content == second.content  # type: ignore[attr-defined]
    assert second.headers[REPLAY_HEADER] == "original" and REPLAY_HEADER not in first.headers  # type: ignore[attr-defined]
    assert pair.judge.calls == ["xianyang:xian:1"]


def test_a_tampered_batch_is_refused_logged_and_judges_nothing(pair: Pair) -> None:
    pair.tap([200])
    pair.exchange(deliver=False)
    with pair.xianyang.session() as session:
        body = session.scalars(select(OutBatch)).one().body
    key_id, private = pair.xianyang.signing.current()
    signature = wire.sign("batch", body, private)
    tampered = body.replace(b'"amount_fen":200', b'"amount_fen":900')
    assert tampered != body
    answer = pair.transport.client.post(
        "/interop/v1/batches", content=tampered, headers={wire.KEY_ID_HEADER: key_id, wire.SIGNATURE_HEADER: signature}
    )
    assert answer.status_code == 401 and answer.json()["code"] == "E_INTEROP_BAD_SIGNATURE"
    assert pair.judge.calls == [] and count(pair.xian.engine, InBatch) == 0
    with pair.xian.session() as session:
        refusal = session.scalars(select(Refusal)).one()
        assert refusal.code == "E_INTEROP_BAD_SIGNATURE" and refusal.digest == wire.digest(tampered)


def test_a_batch_after_a_gap_names_the_sequence_expected(pair: Pair) -> None:
    pair.tap([200])
    pair.tap([300])
    pair.exchange(deliver=False)
    with pair.xianyang.session() as session:
        body = session.scalars(select(OutBatch).where(OutBatch.sequence == 1)).one().body
    skipped = wire.encode_batch(from_city="xianyang", to_city="xian", sequence=3, created_at=NOW,
                                items=wire.decode_batch(body).items)  # fmt: skip
    answer = _post(pair, skipped)
    assert answer.status_code == 409  # type: ignore[attr-defined]
    assert answer.json() == {"code": "E_INTEROP_SEQUENCE_GAP", "expected_sequence": 1,  # type: ignore[attr-defined]
                             "message": "batch 3 arrived before 1: resend from sequence 1"}  # fmt: skip
    assert pair.judge.calls == []


def test_a_peer_that_lost_batches_is_sent_them_again_from_the_sequence_it_names(pair: Pair) -> None:
    pair.tap([200])
    assert pair.exchange().acknowledged == [1]
    with pair.xian.engine.begin() as conn:  # Xi'an restored from a backup taken before batch 1
        conn.exec_driver_sql("DELETE FROM interop_batches_in")
        conn.exec_driver_sql("UPDATE interop_channels SET last_sequence = 0 WHERE direction = 'in'")
    pair.tap([300])
    report = pair.exchange()
    assert report.resent == [1] and report.acknowledged == [2]
    assert _due_from(pair) == 500  # batch 1's items were not paid twice
    assert count(pair.xian.engine, InBatch) == 2


def test_the_same_sequence_with_other_content_is_a_conflict(pair: Pair) -> None:
    pair.tap([200])
    assert pair.exchange().acknowledged == [1]
    with pair.xianyang.session() as session:
        body = session.scalars(select(OutBatch)).one().body
    other = body.replace(b'"created_at":"', b'"created_at":"', 1)
    document = json.loads(body)
    document["created_at"] = "2030-01-01T00:00:00Z"
    other = wire.canonical(document)
    answer = _post(pair, other)
    assert answer.status_code == 409 and answer.json()["code"] == "E_INTEROP_BATCH_CONFLICT"  # type: ignore[attr-defined]


def test_a_batch_signed_by_a_key_the_peer_does_not_hold_is_refused(pair: Pair) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    pair.tap([200])
    pair.exchange(deliver=False)
    with pair.xianyang.session() as session:
        body = session.scalars(select(OutBatch)).one().body
    stranger = Ed25519PrivateKey.generate()
    answer = _post(pair, body, key=(wire.key_id_of(stranger.public_key()), stranger))
    assert answer.status_code == 401 and answer.json()["code"] == "E_INTEROP_UNKNOWN_KEY"  # type: ignore[attr-defined]
    xian_key = pair.xian.signing.current()  # Xi'an's own key is not a key of Xianyang's
    answer = _post(pair, body, key=xian_key)
    assert answer.status_code == 401 and answer.json()["code"] == "E_INTEROP_UNKNOWN_KEY"  # type: ignore[attr-defined]
    assert pair.judge.calls == []


def test_a_rotated_key_is_refused_until_imported_and_the_old_one_works_for_the_overlap(pair: Pair) -> None:
    pair.tap([200])
    old_key = pair.xianyang.signing.current()
    rotated_at = pair.now
    pair.xianyang.signing.rotate(now=rotated_at, overlap=OVERLAP)
    refused = pair.exchange()
    assert "E_INTEROP_UNKNOWN_KEY" in refused.failed[1] and _due_from(pair) == 0
    with pair.xian.session() as session, session.begin():
        import_peer_keys(session, pair.xianyang.signing.export(now=pair.now), own_city="xian", now=pair.now,
                         overlap=OVERLAP)  # fmt: skip
    pair.later(60)
    assert pair.exchange().acknowledged == [1]
    pair.tap([300])
    pair.exchange(deliver=False)
    with pair.xianyang.session() as session:
        body = session.scalars(select(OutBatch).where(OutBatch.sequence == 2)).one().body
    pair.xian.node.receiver.clock = lambda: rotated_at + OVERLAP
    late = _post(pair, body, key=old_key)
    assert late.status_code == 401 and late.json()["code"] == "E_INTEROP_KEY_RETIRED"  # type: ignore[attr-defined]
    pair.xian.node.receiver.clock = lambda: rotated_at + OVERLAP - dt.timedelta(seconds=1)
    assert _post(pair, body, key=old_key).status_code == 200  # type: ignore[attr-defined]


def test_a_judge_that_fails_stores_nothing_and_the_batch_is_resent(pair: Pair) -> None:
    pair.tap([200])
    pair.judge.fail_next = 1
    first = pair.exchange()
    assert "503" in first.failed[1] and count(pair.xian.engine, InBatch) == 0
    pair.later(60)
    assert pair.exchange().acknowledged == [1]
    assert _due_from(pair) == 200


def test_an_item_the_issuer_cannot_judge_for_want_of_a_key_is_sent_again_later(pair: Pair) -> None:
    pair.tap([200])
    pair.tap([450], tac=KEYLESS_TAC)
    first = pair.exchange()
    assert (first.accepted, first.rejected) == (1, 0)
    with pair.xianyang.session() as session:
        waiting = session.scalars(select(OutboxItem).where(OutboxItem.code == "E_KEY_UNAVAILABLE")).one()
        assert waiting.state == "acknowledged" and waiting.batch_sequence == 1
    pair.later(60)
    assert pair.exchange().built == []  # not before the wait
    pair.judge.keys_arrived = True
    pair.later(3600)
    again = pair.exchange()
    assert again.requeued == 1 and again.built == [2] and again.accepted == 1
    assert _due_from(pair) == 650
    with pair.xianyang.session() as session:
        assert session.scalars(select(OutboxItem).where(OutboxItem.amount_fen == 450)).one().batch_sequence == 2


def test_an_accepted_item_joins_the_position_in_the_issuers_window(pair: Pair) -> None:
    pair.judge.window_day = dt.date(2026, 11, 25)  # the issuer rolled it past a final window
    pair.tap([200])
    pair.exchange()
    pair.judge.window_day = None
    pair.tap([300])
    pair.exchange()
    pair.exchange()
    with pair.xianyang.session() as session:
        rows = sorted((b.window_day, b.direction, b.amount_fen) for b in session.scalars(select(Booking)))
    assert rows == [(dt.date(2026, 11, 24), "due_from", 300), (dt.date(2026, 11, 25), "due_from", 200)]


def test_two_deliveries_of_one_batch_at_once_store_one_answer(pair: Pair) -> None:
    from concurrent.futures import ThreadPoolExecutor

    pair.tap([200, 300])
    pair.exchange(deliver=False)
    with pair.xianyang.session() as session:
        body = session.scalars(select(OutBatch)).one().body
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: _post(pair, body), range(4)))
    assert {a.status_code for a in answers} == {200}  # type: ignore[attr-defined]
    assert len({a.content for a in answers}) == 1  # type: ignore[attr-defined]
    assert count(pair.xian.engine, InBatch) == 1
    assert len(pair.judge.verdicts) == 2 and pair.judge.calls == ["xianyang:xian:1"]
