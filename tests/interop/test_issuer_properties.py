"""Whatever the order and repetition of the peer's items, no record is accepted twice and the ledger balances."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from issuerworld import *  # noqa: F403 - the fixtures
from issuerworld import T0, item_of, make_world
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from tapfactory import Terminal

from clearing import db
from clearing.models import Transfer
from interop_xian.items import ItemOutcome
from interop_xian.models import Booking


def _records() -> list:  # type: ignore[type-arg]
    """Two cards, three genuine taps each on two Xi'an terminals, a forgery of each and a clone of one."""
    from tapfactory import Card

    cards = [Card(1), Card(2)]
    terms = [Terminal("00000a000001"), Terminal("00000a000002")]
    genuine = []
    for n in range(3):
        for c, card in enumerate(cards):
            genuine.append(terms[(n + c) % 2].tap(card, 100 + 10 * n, T0 + dt.timedelta(minutes=10 * n + c)))
    forged = [msgspec.structs.replace(r, amount_fen=r.amount_fen + 1) for r in genuine]
    clone = msgspec.structs.replace(genuine[0], terminal_seq=99)  # the same TAC under another sequence
    return [*genuine, *forged, clone]


RECORDS = _records()


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    order=st.lists(st.integers(min_value=0, max_value=len(RECORDS) - 1), min_size=1, max_size=30),
    cuts=st.lists(st.integers(min_value=1, max_value=30), max_size=4),
)
def test_any_order_and_repetition_accepts_each_record_at_most_once(
    order: list[int], cuts: list[int], issuer_template: Path, tmp_path_factory: object
) -> None:
    path = Path(str(tmp_path_factory.mktemp("prop"))) / "issuer.db"  # type: ignore[attr-defined]
    shutil.copyfile(issuer_template, path)
    engine = db.make_engine(f"sqlite:///{path}")
    try:
        world = make_world(engine, cards=2)
        items = [item_of(RECORDS[i]) for i in order]
        bounds = sorted({c for c in cuts if c < len(items)})
        batches = [items[a:b] for a, b in zip([0, *bounds], [*bounds, len(items)], strict=True)]
        accepted: dict[str, int] = {}
        counters: set[tuple[str, int]] = set()
        for batch in batches:
            for item, verdict in zip(batch, world.judge_items(batch), strict=True):
                if verdict.outcome is ItemOutcome.ACCEPTED:
                    key = (item.record["card_asn"], item.record["offline_counter"])
                    if item.item_id in accepted:
                        assert accepted[item.item_id] == verdict.amount_fen  # the same answer again
                    else:
                        assert key not in counters, f"counter {key} accepted twice"
                        counters.add(key)
                        accepted[item.item_id] = verdict.amount_fen
        world.balanced()
        with Session(engine) as s:
            moved = s.execute(select(func.coalesce(func.sum(Transfer.amount_fen), 0)).where(Transfer.id.like("iss:%")))
            assert moved.scalar_one() == sum(accepted.values())
            assert s.execute(select(func.count(Booking.id))).scalar_one() == len(accepted)
        assert world.due_to_fen() == sum(accepted.values())
        for card in world.cards:
            shadow, _ = world.shadow(card)
            assert shadow >= 0
    finally:
        engine.dispose()
