"""Records of our cards from a foreign acquirer (``clearing.foreign``): judged like our own, minus step 1."""

from __future__ import annotations

import datetime as dt

import msgspec
from tapfactory import OWN_ISSUER, PEER_ISSUER, T0, Card, Terminal, dtk_lookup, register_world, sign
from test_validation import NOW, codes, context, run, state

from clearing import foreign
from clearing.ingest import TacKeys


def test_a_foreign_acquirers_terminals_pass_step_1_and_the_rest_is_judged_as_ours() -> None:
    xian = Terminal("00000a000001")
    card = Card(1)
    records = [xian.tap(card, 200), xian.tap(card, 200)]
    forged = msgspec.structs.replace(xian.tap(card, 200), amount_fen=1)
    ours = context(Terminal("0000aa000001"), {card: state(card)})
    assert [c for c, _ in codes(run(records, ours))] == ["rejected", "rejected"]  # not the uploading terminal
    card = Card(1)
    theirs = context(Terminal("0000aa000001"), {card: state(card)}, acquirer="xian", peer_issuers=frozenset())
    assert codes(run([*records, forged], theirs)) == [
        ("accepted", "OK"),
        ("accepted", "OK"),
        ("rejected", "E_TAC_MISMATCH"),
    ]


def test_a_peer_issuers_card_in_a_foreign_batch_is_an_unknown_issuer_never_forwarded() -> None:
    xian = Terminal("00000a000001")
    peer_card = Card(9, issuer_id=PEER_ISSUER)
    ctx = context(xian, {}, acquirer="xian", peer_issuers=frozenset())
    assert codes(run([xian.tap(peer_card, 200)], ctx)) == [("rejected", "E_UNKNOWN_ISSUER")]


def test_foreign_context_scopes_the_terminal_key_to_the_acquirer_and_keeps_the_card_key_global(
    sqlite_engine: object,
) -> None:
    from sqlalchemy import Engine
    from sqlalchemy.orm import Session

    from clearing.ingest import make_ingestor, prepare

    assert isinstance(sqlite_engine, Engine)
    card = Card(1)
    own = Terminal("00000b000001")
    with Session(sqlite_engine) as s:
        register_world(s, [card], [own.terminal_id])
    ours = own.tap(card, 100, T0)
    make_ingestor(sqlite_engine, clock=lambda: NOW).ingest(
        prepare(own.terminal_id, own.batch([ours]), TacKeys(dtk_lookup, [OWN_ISSUER]))
    )
    twin = Terminal(own.terminal_id)  # Xi'an's terminal with our terminal's id: sequence 1 again
    theirs = twin.tap(card, 100, T0 + dt.timedelta(minutes=1))
    clone = sign(msgspec.structs.replace(ours, terminal_seq=50))  # counter 0 again, another Xi'an sequence
    keys = TacKeys(dtk_lookup, [OWN_ISSUER])
    with Session(sqlite_engine) as s:
        verified = foreign.verify([theirs, clone], keys)
        ctx = foreign.foreign_context(
            s, verified.records, acquirer="xian", seen_terminal_seqs=(), seen_card_counters=(), now=NOW
        )
        j = foreign.judge_foreign(verified, ctx)
    assert codes(j) == [("accepted", "OK"), ("rejected", "E_DUPLICATE_CARD_COUNTER")]
    assert j.card_updates[(OWN_ISSUER, card.asn)].shadow_balance_fen == 10_000 - 200
