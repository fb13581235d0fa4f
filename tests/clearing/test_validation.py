"""Flow 4 validation as pure functions: every reason code, the order of checks, card-counter order."""

from __future__ import annotations

import datetime as dt
import os

import msgspec
import pytest
from tapfactory import OWN_ISSUER, PEER_ISSUER, T0, Card, Terminal, dtk_for, dtk_lookup

from cardos import crypto
from clearing.contract import FareInfo, TapRecord
from clearing.errors import ClearingError
from clearing.ingest import TacKeys, decode_upload
from clearing.validation import (
    CardState,
    Context,
    DenyInterval,
    Judgement,
    Limits,
    Neighbour,
    judge,
    parse_tap_time,
    verify_tacs,
)

NOW = T0 + dt.timedelta(days=1)


def state(card: Card, *, last: int | None = None, shadow: int | None = None, **kw: object) -> CardState:
    return CardState(
        card_id=card.number,
        account_id=1000 + card.number,
        start_date=dt.date(2026, 1, 1),
        shadow_balance_fen=card.balance_fen if shadow is None else shadow,
        last_counter=last,
        **kw,  # type: ignore[arg-type]
    )


def context(term: Terminal, cards: dict[Card, CardState], **kw: object) -> Context:
    base: dict[str, object] = {
        "uploader": term.terminal_id,
        "known_terminals": {term.terminal_id},
        "own_issuers": {OWN_ISSUER},
        "peer_issuers": {PEER_ISSUER},
        "cards": {(OWN_ISSUER, c.asn): s for c, s in cards.items()},
        "seen_terminal_seqs": set(),
        "seen_card_counters": set(),
        "now": NOW,
    }
    base.update(kw)
    return Context(**base)  # type: ignore[arg-type]


def run(records: list[TapRecord], ctx: Context) -> Judgement:
    times = [parse_tap_time(r.tx_time) for r in records]
    keys = TacKeys(dtk_lookup, [OWN_ISSUER])
    return judge(records, ctx, verify_tacs(records, times, keys.for_record), times)


def codes(j: Judgement) -> list[tuple[str, str]]:
    return [(o.verdict, o.code.value) for o in j.outcomes]


@pytest.fixture
def term() -> Terminal:
    return Terminal("0000aa000001")


def test_genuine_taps_in_sequence_are_accepted_and_move_the_shadow(term: Terminal) -> None:
    card = Card(1, balance_fen=1000)
    ctx = context(term, {card: state(card)})
    records = [term.tap(card, 200), term.tap(card, 300)]
    j = run(records, ctx)
    assert codes(j) == [("accepted", "OK"), ("accepted", "OK")]
    assert all(o.posts and o.claims_keys for o in j.outcomes)
    update = j.card_updates[(OWN_ISSUER, card.asn)]
    assert (update.shadow_balance_fen, update.last_counter) == (500, 1)


def test_forged_tac_is_rejected_with_the_card_and_counter_in_the_message(term: Terminal) -> None:
    card = Card(1)
    ctx = context(term, {card: state(card)})
    record = msgspec.structs.replace(term.tap(card), amount_fen=1)
    j = run([record], ctx)
    assert codes(j) == [("rejected", "E_TAC_MISMATCH")]
    assert j.outcomes[0].message == f"E_TAC_MISMATCH: TAC does not verify for card {card.asn}, counter 0"
    assert not j.outcomes[0].claims_keys and not j.outcomes[0].posts
    assert j.card_updates == {}


def test_a_key_version_missing_here_is_key_unavailable_not_a_forgery(term: Terminal) -> None:
    card = Card(1)
    record = msgspec.structs.replace(term.tap(card), key_version=7)
    j = run([record], context(term, {card: state(card)}))
    assert codes(j) == [("rejected", "E_KEY_UNAVAILABLE")]
    assert "kept for re-judging" in j.outcomes[0].message
    assert not j.outcomes[0].claims_keys and not j.outcomes[0].posts


def test_unknown_issuer_card_and_terminal(term: Terminal) -> None:
    known, unknown = Card(1), Card(2)
    stranger = Card(3, issuer_id="0100999900000000")
    other_terminal = Terminal("0000aa000002")
    ctx = context(term, {known: state(known)})
    records = [
        term.tap(unknown),
        term.tap(stranger),
        other_terminal.tap(known),
    ]
    assert codes(run(records, ctx)) == [
        ("rejected", "E_UNKNOWN_CARD"),
        ("rejected", "E_UNKNOWN_ISSUER"),
        ("rejected", "E_UNKNOWN_TERMINAL"),
    ]


def test_peer_issuer_cards_are_forwarded_not_rejected(term: Terminal) -> None:
    xian = Card(9, issuer_id=PEER_ISSUER)
    j = run([term.tap(xian)], context(term, {}))
    assert codes(j) == [("forwarded", "I_FORWARDED_INTEROP")]
    assert j.outcomes[0].forwards and not j.outcomes[0].claims_keys and not j.outcomes[0].posts


def test_duplicates_within_the_batch_and_against_the_database(term: Terminal) -> None:
    card, other = Card(1), Card(2)
    first = term.tap(card)
    replay_same_seq = msgspec.structs.replace(term.tap(other), terminal_seq=first.terminal_seq)
    replay_same_seq = _resign(replay_same_seq)
    seen_before = term.tap(other)
    ctx = context(
        term,
        {card: state(card, shadow=10_000), other: state(other, shadow=10_000)},
        seen_terminal_seqs={(term.terminal_id, seen_before.terminal_seq)},
    )
    j = run([first, first, replay_same_seq, seen_before], ctx)
    assert codes(j) == [
        ("accepted", "OK"),
        ("rejected", "E_DUPLICATE_TERMINAL_SEQ"),
        ("rejected", "E_DUPLICATE_TERMINAL_SEQ"),
        ("rejected", "E_DUPLICATE_TERMINAL_SEQ"),
    ]


def test_card_counter_reused_on_another_terminal_is_a_duplicate(term: Terminal) -> None:
    card = Card(1)
    original = term.tap(card)
    card.counter -= 1  # a clone replays counter 0 on another sequence number
    card.balance_fen += 200
    clone = term.tap(card)
    ctx = context(term, {card: state(card, shadow=10_000)})
    assert codes(run([original, clone], ctx)) == [("accepted", "OK"), ("rejected", "E_DUPLICATE_CARD_COUNTER")]
    ctx = context(term, {card: state(card, shadow=10_000)}, seen_card_counters={(OWN_ISSUER, card.asn, 0, 9)})
    assert codes(run([clone], ctx)) == [("rejected", "E_DUPLICATE_CARD_COUNTER")]


def test_a_forged_record_cannot_squat_the_key_of_a_genuine_one(term: Terminal) -> None:
    card = Card(1)
    genuine = term.tap(card)
    forged = msgspec.structs.replace(genuine, amount_fen=1)
    ctx = context(term, {card: state(card, shadow=10_000)})
    assert codes(run([forged, genuine], ctx)) == [("rejected", "E_TAC_MISMATCH"), ("accepted", "OK")]


def test_bad_time_in_the_future_or_before_the_start_date(term: Terminal) -> None:
    card = Card(1)
    future = term.tap(card, when=NOW + dt.timedelta(hours=1))
    early = term.tap(card, when=dt.datetime(2025, 12, 31, 23, 0, tzinfo=dt.UTC))  # 2026-01-01 07:00 local
    too_early = term.tap(card, when=dt.datetime(2025, 12, 31, 15, 0, tzinfo=dt.UTC))  # 23:00 local, 12-31
    ctx = context(term, {card: state(card, shadow=10_000)})
    verdicts = codes(run([future, early, too_early], ctx))
    assert verdicts[0] == ("rejected", "E_BAD_TIME")
    assert verdicts[1][0] != "rejected"
    assert verdicts[2] == ("rejected", "E_BAD_TIME")


def test_rejected_authentic_records_claim_keys_but_do_not_clear(term: Terminal) -> None:
    card = Card(1)
    record = term.tap(card, when=NOW + dt.timedelta(hours=1))
    j = run([record], context(term, {card: state(card, shadow=10_000)}))
    assert j.outcomes[0].claims_keys and not j.outcomes[0].posts
    assert j.card_updates == {}


def test_amount_limit_and_blocked_records_must_be_zero(term: Terminal) -> None:
    card = Card(1)
    ctx = context(term, {card: state(card)}, limits=Limits(amount_fen_max=500))
    big = term.tap(card, 501)
    assert codes(run([big], ctx)) == [("rejected", "E_AMOUNT_LIMIT")]
    blocked_with_amount = term.tap(card, 1, status="blocked")
    assert codes(run([blocked_with_amount], ctx)) == [("rejected", "E_AMOUNT_LIMIT")]


def test_a_refund_on_a_tap_that_debited_money_is_rejected(term: Terminal) -> None:
    """Only a tap-off, which debits nothing, is owed a refund (docs/fares.md)."""
    card = Card(1, balance_fen=1000)
    ctx = context(term, {card: state(card, shadow=1000)})
    fare = FareInfo("metro", "adult", None, 200, 0, None, refund_due_fen=100)
    j = run([msgspec.structs.replace(term.tap(card, 200), fare=fare)], ctx)
    assert codes(j) == [("rejected", "E_AMOUNT_LIMIT")]
    assert not j.outcomes[0].posts


def test_denylist_applies_as_of_the_tap_time_and_not_to_the_block_itself(term: Terminal) -> None:
    card = Card(1, balance_fen=1000)
    listed_at = T0 + dt.timedelta(hours=1)
    before = term.tap(card, 100, when=T0 + dt.timedelta(minutes=30))
    after = term.tap(card, 100, when=T0 + dt.timedelta(hours=2))
    block = term.tap(card, 0, when=T0 + dt.timedelta(hours=3), status="blocked")
    ctx = context(term, {card: state(card, shadow=1000)}, denylist={(OWN_ISSUER, card.asn): [DenyInterval(listed_at)]})
    j = run([before, after, block], ctx)
    assert codes(j)[0] == ("accepted", "OK")
    assert codes(j)[1] == ("rejected", "E_DENYLISTED")
    assert codes(j)[2][0] == "suspect"  # counter 1 never cleared: a gap, but the block is recorded
    assert j.card_updates[(OWN_ISSUER, card.asn)].blocked


def test_counter_gap_is_suspect_posts_and_moves_the_shadow(term: Terminal) -> None:
    card = Card(1, balance_fen=1000)
    term.tap(card, 100)  # never uploaded
    second = term.tap(card, 100)
    j = run([second], context(term, {card: state(card, last=None, shadow=1000)}))
    # last None means no purchase cleared yet: counter 1 is not a gap, but the balance is off
    assert codes(j) == [("suspect", "S_BALANCE_DISCONTINUITY")]
    card2 = Card(2, balance_fen=1000, counter=5)
    term.tap(card2, 100)  # counter 5 missing
    late = term.tap(card2, 100)  # counter 6
    j = run([late], context(term, {card2: state(card2, last=4, shadow=1000)}))
    assert codes(j) == [("suspect", "S_COUNTER_GAP")]
    assert "counters 5..5 not received yet" in j.outcomes[0].message
    assert j.outcomes[0].posts
    assert j.card_updates[(OWN_ISSUER, card2.asn)].shadow_balance_fen == 800


def test_balance_discontinuity_is_suspect_and_follows_the_card(term: Terminal) -> None:
    card = Card(1, balance_fen=900, counter=3)
    record = term.tap(card, 100)
    j = run([record], context(term, {card: state(card, last=2, shadow=1000)}))
    assert codes(j) == [("suspect", "S_BALANCE_DISCONTINUITY")]
    assert j.outcomes[0].posts
    assert j.card_updates[(OWN_ISSUER, card.asn)].shadow_balance_fen == 800


def test_records_are_judged_in_counter_order_not_upload_order(term: Terminal) -> None:
    card = Card(1, balance_fen=1000)
    a, b, c = term.tap(card, 100), term.tap(card, 100), term.tap(card, 100)
    j = run([c, a, b], context(term, {card: state(card, shadow=1000)}))
    assert codes(j) == [("accepted", "OK")] * 3
    update = j.card_updates[(OWN_ISSUER, card.asn)]
    assert (update.shadow_balance_fen, update.last_counter) == (700, 2)


def test_a_late_record_fills_its_gap_without_moving_the_shadow_back(term: Terminal) -> None:
    card = Card(1, balance_fen=1000)
    records = [term.tap(card, 100) for _ in range(4)]  # counters 0..3; 2 arrives late
    neighbours = {(OWN_ISSUER, card.asn, 2): (Neighbour(1, 900, 100), Neighbour(3, 700, 100))}
    ctx = context(term, {card: state(card, last=3, shadow=600)}, neighbours=neighbours)
    j = run([records[2]], ctx)
    assert codes(j) == [("accepted", "OK")]
    assert "late record" in j.outcomes[0].message
    unchanged = j.card_updates[(OWN_ISSUER, card.asn)]
    assert (unchanged.shadow_balance_fen, unchanged.last_counter) == (600, 3)
    # the same late counter with a balance its neighbours contradict
    forged_balance = _resign(msgspec.structs.replace(records[2], balance_before_fen=950))
    assert codes(run([forged_balance], ctx)) == [("suspect", "S_BALANCE_DISCONTINUITY")]


def test_a_tap_before_an_online_load_does_not_overwrite_the_loaded_shadow(term: Terminal) -> None:
    card = Card(1, balance_fen=1000, counter=6)
    early = term.tap(card, 100, when=T0)  # counter 6: 1000 -> 900, then a load of 500 at T0+1h
    card.balance_fen += 500
    later = term.tap(card, 100, when=T0 + dt.timedelta(hours=2))  # counter 7: 1400 -> 1300
    ctx = context(term, {card: state(card, last=5, shadow=1400, shadow_load_at=T0 + dt.timedelta(hours=1))})
    j = run([early], ctx)
    assert codes(j) == [("accepted", "OK")]
    update = j.card_updates[(OWN_ISSUER, card.asn)]
    assert (update.shadow_balance_fen, update.last_counter) == (1400, 6)
    ctx = context(term, {card: state(card, last=6, shadow=1400, shadow_load_at=update.shadow_load_at)})
    j = run([later], ctx)
    assert codes(j) == [("accepted", "OK")]
    assert j.card_updates[(OWN_ISSUER, card.asn)].shadow_balance_fen == 1300


def test_a_purchase_the_liability_account_cannot_cover_is_suspect_and_not_posted(term: Terminal) -> None:
    card = Card(1, balance_fen=1000)
    first, second = term.tap(card, 300), term.tap(card, 300)
    j = run([first, second], context(term, {card: state(card, shadow=1000, available_fen=500)}))
    assert codes(j) == [("accepted", "OK"), ("suspect", "S_BALANCE_DISCONTINUITY")]
    assert j.outcomes[0].posts and not j.outcomes[1].posts and j.outcomes[1].claims_keys
    assert j.card_updates[(OWN_ISSUER, card.asn)].shadow_balance_fen == 700


def test_tac_covers_the_card_local_time_whatever_offset_the_terminal_sends(term: Terminal) -> None:
    card = Card(1)
    record = term.tap(card)
    utc = dt.datetime.fromisoformat(record.tx_time).astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
    moved = msgspec.structs.replace(record, tx_time=utc)
    assert codes(run([moved], context(term, {card: state(card, shadow=10_000)}))) == [("accepted", "OK")]


def test_mac_key_agrees_with_the_reference_mac() -> None:
    for alg in (crypto.ALG_3DES, crypto.ALG_SM4):
        dtk = os.urandom(16)
        fast = crypto.tac_mac_key(dtk, alg)
        for length in range(0, 40):
            data = os.urandom(length)
            assert fast.mac(data) == crypto.mac(crypto.tac_key(dtk, alg), data, alg)


def test_mac_key_reproduces_the_derived_tac_vector() -> None:
    dtk = bytes.fromhex("11223344556677888877665544332211")
    data = crypto.purchase_tac_data(
        0x1000, 6, bytes.fromhex("001122334455"), 1, bytes.fromhex("20120229"), bytes.fromhex("135100")
    )
    assert crypto.tac_mac_key(dtk).mac(data).hex().upper() == "F5B221C9"


@pytest.mark.parametrize(
    ("body", "path"),
    [
        (b'{"batch_seq": 1, "created_at": "2026-11-24T08:00:00+08:00", "records": [{"terminal_id": 5}]}',
         "$.records[0].terminal_id"),
        (b'{"batch_seq": 1, "created_at": "2026-11-24T08:00:00+08:00", "records": [], "extra": 1}', "$"),
        (b'{"batch_seq": 1, "created_at": "2026-11-24T08:0', "$"),
        (b"", "$"),
    ],
)  # fmt: skip
def test_malformed_uploads_name_the_path(body: bytes, path: str) -> None:
    with pytest.raises(ClearingError) as caught:
        decode_upload(body)
    assert caught.value.errors[0].path == path
    assert caught.value.code.value == "E_MALFORMED"


def _resign(record: TapRecord) -> TapRecord:
    from tapfactory import sign

    assert dtk_for(record.issuer_id, record.card_asn)
    return sign(record)


def test_an_understated_balance_on_a_card_never_cleared_is_suspect_not_a_crash(term: Terminal) -> None:
    """The TAC does not cover the balance before: a genuine record can claim less than the amount."""
    card = Card(1, balance_fen=1000)
    record = _resign(msgspec.structs.replace(term.tap(card, 300), balance_before_fen=100))
    j = run([record], context(term, {card: state(card, last=None, shadow=1000)}))
    assert codes(j) == [("suspect", "S_BALANCE_DISCONTINUITY")]
    update = j.card_updates[(OWN_ISSUER, card.asn)]
    assert (update.shadow_balance_fen, update.last_counter) == (1000, None)
