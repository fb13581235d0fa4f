"""The issuer's judge (issue 12, "Inbound"): Xi'an's forwarded records of our cards, judged as our clearing would."""

from __future__ import annotations

import datetime as dt

import msgspec
from issuerworld import *  # noqa: F403 - the fixtures
from issuerworld import RECEIVED, T0, item_of, make_world
from sqlalchemy import Engine
from sqlalchemy.orm import Session
from tapfactory import OWN_ISSUER, Terminal

from clearing import denylist
from clearing.models import TransferCode
from interop_xian.items import InteropItem, ItemOutcome


def _codes(verdicts: list) -> list[tuple[str, str]]:  # type: ignore[type-arg]
    return [(v.outcome.value, v.code) for v in verdicts]


def test_an_accepted_genuine_tap_moves_the_shadow_and_posts_card_liability_to_due_to_the_peer(
    issuer_db: Engine,
) -> None:
    world = make_world(issuer_db)
    card = world.cards[0]
    tap = world.peer_terminal.tap(card, 250, T0)
    [verdict] = world.judge([tap])
    assert verdict.outcome is ItemOutcome.ACCEPTED and verdict.code == "OK" and verdict.amount_fen == 250
    assert verdict.window_day == T0.date()
    assert world.shadow(card) == (10_000 - 250, 0)
    [transfer] = world.interop_transfers()
    assert transfer.amount_fen == 250 and transfer.code == int(TransferCode.INTEROP)
    assert world.due_to_fen() == 250
    [booking] = world.bookings()
    assert (booking.direction, booking.amount_fen, booking.window_day) == ("due_to", 250, T0.date())
    world.balanced()


def test_a_forged_tac_is_rejected_and_moves_nothing(issuer_db: Engine) -> None:
    world = make_world(issuer_db)
    card = world.cards[0]
    forged = msgspec.structs.replace(world.peer_terminal.tap(card, 250, T0), amount_fen=1)  # changed after signing
    [verdict] = world.judge([forged])
    assert _codes([verdict]) == [("rejected", "E_TAC_MISMATCH")] and verdict.amount_fen == 0
    assert world.interop_transfers() == [] and world.bookings() == []
    assert world.shadow(card) == (10_000, None)


def test_a_card_counter_used_twice_is_a_duplicate_across_peer_terminals_and_our_own_clearing(
    issuer_db: Engine,
) -> None:
    world = make_world(issuer_db)
    card = world.cards[0]
    first = world.peer_terminal.tap(card, 200, T0)
    card.counter -= 1  # a clone replays counter 0 on another Xi'an terminal
    card.balance_fen += 200
    clone = Terminal("00000a000002").tap(card, 200, T0 + dt.timedelta(minutes=5))
    assert _codes(world.judge([first, clone])) == [("accepted", "OK"), ("rejected", "E_DUPLICATE_CARD_COUNTER")]
    # counter 1 cleared by our own terminal first: the peer's record of counter 1 is then a duplicate
    own = world.own_terminal.tap(card, 100, T0 + dt.timedelta(minutes=10))
    card.counter -= 1
    card.balance_fen += 100
    peer = world.peer_terminal.tap(card, 100, T0 + dt.timedelta(minutes=11))
    assert b'"verdict":"accepted"' in world.ingest_own([own])
    assert _codes(world.judge([peer])) == [("rejected", "E_DUPLICATE_CARD_COUNTER")]
    assert world.due_to_fen() == 200
    world.balanced()


def test_the_same_item_in_two_batches_is_accepted_once(issuer_db: Engine) -> None:
    world = make_world(issuer_db)
    tap = world.peer_terminal.tap(world.cards[0], 300, T0)
    first = world.judge([tap])
    again = world.judge([tap], at=RECEIVED + dt.timedelta(hours=1))
    twice_in_one = world.judge([tap, tap])
    assert again == first and twice_in_one == first + first
    assert len(world.interop_transfers()) == 1 and world.due_to_fen() == 300
    assert world.shadow(world.cards[0]) == (9_700, 0)


def test_a_forged_record_arriving_before_the_genuine_one_does_not_block_it(issuer_db: Engine) -> None:
    world = make_world(issuer_db)
    card = world.cards[0]
    genuine = world.peer_terminal.tap(card, 200, T0)
    forged = msgspec.structs.replace(genuine, amount_fen=2, tac="00000000")  # same terminal, seq and counter
    assert _codes(world.judge([forged])) == [("rejected", "E_TAC_MISMATCH")]
    assert _codes(world.judge([genuine])) == [("accepted", "OK")]
    # a forged item sent under the genuine item's id is not its record: refused and not kept
    lying = InteropItem(
        item_of(genuine).item_id, forged.terminal_id, forged.terminal_seq, item_of(forged).record_digest,
        msgspec.to_builtins(forged),
    )  # fmt: skip
    assert _codes(world.judge_items([lying])) == [("rejected", "E_INTEROP_ITEM_MISMATCH")]
    assert _codes(world.judge([genuine])) == [("accepted", "OK")]
    assert world.due_to_fen() == 200


def test_the_denylist_applies_as_of_the_tap_time(issuer_db: Engine) -> None:
    world = make_world(issuer_db, cards=2)
    listed, later = world.cards
    with Session(issuer_db) as s, s.begin():
        denylist.add(s, OWN_ISSUER, listed.asn, "lost", effective_at=T0 - dt.timedelta(hours=1))
        denylist.add(s, OWN_ISSUER, later.asn, "lost", effective_at=T0 + dt.timedelta(hours=1))
    before_listing = world.peer_terminal.tap(later, 200, T0)  # tapped before its card was listed
    after_listing = world.peer_terminal.tap(listed, 200, T0)
    assert _codes(world.judge([after_listing, before_listing])) == [
        ("rejected", "E_DENYLISTED"),
        ("accepted", "OK"),
    ]
    assert world.due_to_fen() == 200


def test_a_peer_terminal_id_equal_to_ours_is_scoped_to_the_peer(issuer_db: Engine) -> None:
    """Xi'an's terminal 00000b000001 is not our 00000b000001: its sequence numbers are its own."""
    world = make_world(issuer_db, cards=2)
    ours = world.own_terminal.tap(world.cards[0], 100, T0)
    assert b'"verdict":"accepted"' in world.ingest_own([ours])
    twin = Terminal(world.own_terminal.terminal_id)  # the same id and sequence 1, at Xi'an
    theirs = twin.tap(world.cards[1], 100, T0)
    assert (theirs.terminal_id, theirs.terminal_seq) == (ours.terminal_id, ours.terminal_seq)
    assert _codes(world.judge([theirs])) == [("accepted", "OK")]
    # ...but the same peer terminal and sequence again (another record) is a duplicate
    again = twin.tap(world.cards[1], 50, T0 + dt.timedelta(minutes=1))
    again = msgspec.structs.replace(again, terminal_seq=theirs.terminal_seq)
    from tapfactory import sign

    assert _codes(world.judge([sign(again)])) == [("rejected", "E_DUPLICATE_TERMINAL_SEQ")]


def test_another_issuers_card_and_a_missing_key_are_refused_and_a_missing_key_is_judged_again(
    issuer_sqlite: Engine,
) -> None:
    world = make_world(issuer_sqlite)
    card = world.cards[0]
    other = msgspec.structs.replace(world.peer_terminal.tap(card, 100, T0), issuer_id="01007100ffffffff")
    card.counter -= 1
    card.balance_fen += 100
    v3 = msgspec.structs.replace(world.peer_terminal.tap(card, 100, T0), key_version=3)  # no such key here
    assert _codes(world.judge([other, v3])) == [("rejected", "E_UNKNOWN_ISSUER"), ("rejected", "E_KEY_UNAVAILABLE")]
    assert world.items_stored() == 1  # E_KEY_UNAVAILABLE is not kept: the resent item is judged again
    assert _codes(world.judge([v3])) == [("rejected", "E_KEY_UNAVAILABLE")]


def test_suspect_records_are_accepted_with_their_message_and_a_debit_the_card_cannot_cover_is_refused(
    issuer_sqlite: Engine,
) -> None:
    world = make_world(issuer_sqlite, balance_fen=300)
    card = world.cards[0]
    world.peer_terminal.tap(card, 100, T0)  # counter 0, never forwarded: counter 1's balance does not follow
    jump = world.peer_terminal.tap(card, 100, T0 + dt.timedelta(minutes=1))
    [verdict] = world.judge([jump])
    assert verdict.outcome is ItemOutcome.ACCEPTED and verdict.code == "OK"
    assert verdict.message.startswith("S_BALANCE_DISCONTINUITY") and verdict.amount_fen == 100
    card.balance_fen = 500  # the purse claims more than the card ever held here
    over = world.peer_terminal.tap(card, 450, T0 + dt.timedelta(minutes=2))
    assert _codes(world.judge([over])) == [("rejected", "S_BALANCE_DISCONTINUITY")]
    assert world.due_to_fen() == 100
    world.balanced()


def test_a_crash_before_commit_leaves_nothing_and_the_batch_judged_again_posts_once(issuer_sqlite: Engine) -> None:
    import pytest

    from interop_xian.issuer import IssuerJudgeDb

    world = make_world(issuer_sqlite)
    tap = world.peer_terminal.tap(world.cards[0], 250, T0)

    def crash(_: object) -> None:
        raise RuntimeError("killed before COMMIT")

    crashing = IssuerJudgeDb(issuer_sqlite, world.judge_with().keys, before_commit=crash)
    with pytest.raises(RuntimeError):
        crashing.judge(peer_city="xian", batch_id="xian:1", items=[item_of(tap)], received_at=RECEIVED)
    assert world.interop_transfers() == [] and world.items_stored() == 0 and world.bookings() == []
    assert world.shadow(world.cards[0]) == (10_000, None)
    assert _codes(world.judge([tap])) == [("accepted", "OK")]
    assert world.due_to_fen() == 250 and world.items_stored() == 1
