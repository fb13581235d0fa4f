"""Judging again only the cards that moved gives exactly what judging the whole batch again gives."""

from __future__ import annotations

import datetime as dt
import random

from hypothesis import given, settings
from hypothesis import strategies as st
from tapfactory import OWN_ISSUER, T0, Card, Terminal, dtk_lookup
from test_validation import context, state

from clearing.contract import TapRecord
from clearing.ingest import TacKeys
from clearing.validation import (
    CardState,
    Judgement,
    Neighbour,
    judge,
    parse_tap_time,
    rejudge_cards,
    verify_tacs,
)


def _judge(records: list[TapRecord], ctx: object) -> tuple[Judgement, list[object]]:
    times = [parse_tap_time(r.tx_time) for r in records]
    keys = TacKeys(dtk_lookup, [OWN_ISSUER])
    tacs = verify_tacs(records, times, keys.for_record)
    return judge(records, ctx, tacs, times), times  # type: ignore[arg-type]


def _state_for(card: Card, rng: random.Random, counters: int) -> CardState:
    """A plausible state the card could have been left in by earlier batches."""
    last = rng.choice([None, *range(counters + 2)])
    return state(
        card,
        last=last,
        shadow=rng.choice([max(card.balance_fen, 0), rng.randrange(0, 3000)]),
        available_fen=rng.choice([None, rng.randrange(0, 3000)]),
    )


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n_cards=st.integers(1, 5), n_taps=st.integers(1, 25))
def test_rejudging_the_moved_cards_equals_judging_everything_again(seed: int, n_cards: int, n_taps: int) -> None:
    rng = random.Random(seed)
    term = Terminal("0000aa000001")
    cards = [Card(n + 1, balance_fen=rng.randrange(500, 3000), counter=rng.randrange(0, 5)) for n in range(n_cards)]
    start = {c: c.counter for c in cards}
    records = []
    for _ in range(n_taps):
        card = rng.choice(cards)
        records.append(term.tap(card, min(card.balance_fen, rng.choice([0, 100, 200, 300]))))
    records += rng.sample(records, k=min(2, len(records)))  # in-batch duplicates
    rng.shuffle(records)
    before = {c: _state_for(c, rng, c.counter - start[c]) for c in cards}
    moved = {c for c in cards if rng.random() < 0.5}
    after = {c: (_state_for(c, rng, c.counter - start[c]) if c in moved else before[c]) for c in cards}
    neighbours = {
        (OWN_ISSUER, c.asn, k): (Neighbour(k - 1, 1000, 100), None)
        for c in moved
        for k in range(start[c], c.counter)
        if rng.random() < 0.3
    }

    first, times = _judge(records, context(term, before))
    ctx_after = context(term, after, neighbours=neighbours)
    again = rejudge_cards(records, times, first, ctx_after, [(OWN_ISSUER, c.asn) for c in moved])  # type: ignore[arg-type]
    whole, _ = _judge(records, ctx_after)

    assert again.outcomes == whole.outcomes
    assert again.card_updates == whole.card_updates


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n_cards=st.integers(1, 3), n_trips=st.integers(1, 6))
def test_rejudging_tap_offs_equals_judging_everything_again(seed: int, n_cards: int, n_trips: int) -> None:
    """The same with tap-on/tap-off journeys: refunds priced from entries in the batch or cleared before."""
    from tapfactory import journey

    from clearing.refunds import default_refunds

    rng = random.Random(seed)
    term = Terminal("0000aa000001")
    cards = [Card(n + 1, balance_fen=rng.randrange(2000, 6000), counter=rng.randrange(0, 3)) for n in range(n_cards)]
    start = {c: c.counter for c in cards}
    records: list[TapRecord] = []
    for trip in range(n_trips):
        card = rng.choice(cards)
        at = T0 + dt.timedelta(minutes=40 * trip)
        tap_on, tap_off = journey(term, card, rng.choice(["ic_weicheng", "ic_airport", "ic_xian_center"]), at=at)
        records += [tap_on, tap_off] if rng.random() < 0.8 else [tap_off]
    rng.shuffle(records)

    before = {c: _state_for(c, rng, c.counter - start[c]) for c in cards}
    moved = {c for c in cards if rng.random() < 0.5}
    after = {c: (_state_for(c, rng, c.counter - start[c]) if c in moved else before[c]) for c in cards}
    pricer = default_refunds()

    first, times = _judge(records, context(term, before, refund_pricer=pricer))
    ctx_after = context(term, after, refund_pricer=pricer)
    again = rejudge_cards(records, times, first, ctx_after, [(OWN_ISSUER, c.asn) for c in moved])  # type: ignore[arg-type]
    whole, _ = _judge(records, ctx_after)

    assert again.outcomes == whole.outcomes
    assert again.card_updates == whole.card_updates
    assert sorted(again.refunds) == sorted(whole.refunds)
    assert sorted(again.resolutions) == sorted(whole.resolutions)
    assert again.record_refunds == whole.record_refunds
