"""The issuer's PostgreSQL reads (issue 12, benchmark): set-based, in the judge's transaction, plans restored.

``clearing.foreign`` reads the records' cards, keys and denylist through clearing's own
``PgReads`` (keys staged in a temporary table) and locks the cards with one statement; these
pin what that must keep: the cards locked until commit, the same context as the chunked
reads give, and the rest of the transaction planned with the server's defaults.
"""

from __future__ import annotations

import datetime as dt

import pytest
from issuerworld import *  # noqa: F403 - the fixtures
from issuerworld import RECEIVED, T0, make_world
from sqlalchemy import Engine, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session
from tapfactory import OWN_ISSUER

from clearing import denylist, foreign
from clearing.ingest_reads import read_cards
from clearing.ingest_sqlite import SqlReads

pytestmark = pytest.mark.postgres


def test_lock_cards_holds_our_cards_until_commit_and_skips_unknown_ones(issuer_pg: Engine) -> None:
    world = make_world(issuer_pg, cards=2)
    locked, free = world.cards
    with Session(issuer_pg) as s, s.begin():
        foreign.lock_cards(s, [(OWN_ISSUER, locked.asn), (OWN_ISSUER, "31049999999999999999")])
        with issuer_pg.connect() as other:
            assert other.execute(
                text("SELECT id FROM cards WHERE card_asn = :a FOR UPDATE NOWAIT"), {"a": free.asn}
            ).all()
            other.rollback()
            with pytest.raises(OperationalError, match="could not obtain lock"):
                other.execute(text("SELECT id FROM cards WHERE card_asn = :a FOR UPDATE NOWAIT"), {"a": locked.asn})


def test_the_pg_context_equals_the_chunked_reads_and_leaves_default_plans(issuer_pg: Engine) -> None:
    world = make_world(issuer_pg, cards=3)
    listed = world.cards[0]
    with Session(issuer_pg) as s, s.begin():
        denylist.add(s, OWN_ISSUER, listed.asn, "lost", effective_at=T0 - dt.timedelta(hours=1))
    records = [world.peer_terminal.tap(card, 200, T0 + dt.timedelta(minutes=n)) for n, card in enumerate(world.cards)]
    world.ingest_own([world.own_terminal.tap(world.cards[1], 100, T0 + dt.timedelta(minutes=9))])
    with Session(issuer_pg) as s, s.begin():
        ctx = foreign.foreign_context(s, records, acquirer="xian", seen_terminal_seqs=[], seen_card_counters=[],
                                      now=RECEIVED)  # fmt: skip
        assert s.execute(text("SHOW enable_hashjoin")).scalar() == "on"
        assert s.execute(text("SHOW enable_mergejoin")).scalar() == "on"
        chunked = SqlReads(s)
        snap = chunked.snapshot(records)
        per_card = read_cards(chunked, records, snap.cards, snap.own_issuers)
    assert ctx.cards == snap.cards
    assert set(ctx.denylist) == set(snap.denylist) == {(OWN_ISSUER, listed.asn)}
    assert ctx.seen_card_counters == set(snap.seen_card_counters)
    assert ctx.neighbours == per_card.neighbours
