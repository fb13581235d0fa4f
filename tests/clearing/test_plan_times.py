"""The write plan's business day and UTC offset: the Asia/Shanghai day of the instant, whatever the offset sent."""

from __future__ import annotations

import datetime as dt

import msgspec
import pytest
from tapfactory import OWN_ISSUER, PEER_ISSUER, Card, Terminal, dtk_lookup

from cardos.records import SHANGHAI_TZ
from clearing.contract import TapRecord
from clearing.ingest import Parties, TacKeys, business_day, decide, prepare
from clearing.validation import CardState, Context

# 2026-11-24 23:59:59 and 2026-11-25 00:00:00 in Shanghai, each sent in several forms
BEFORE_MIDNIGHT = dt.datetime(2026, 11, 24, 23, 59, 59, tzinfo=SHANGHAI_TZ)
AFTER_MIDNIGHT = BEFORE_MIDNIGHT + dt.timedelta(seconds=1)
RECEIVED_AT = dt.datetime(2026, 11, 26, 1, 0, tzinfo=dt.UTC)


def plan_for(records: list[TapRecord], card: Card, term: Terminal) -> list[tuple[str, str, dt.date, int]]:
    """(verdict, code, business day, UTC offset in minutes) of each record's tap row."""
    batch = term.batch(records)
    ctx = Context(
        uploader=term.terminal_id,
        known_terminals={term.terminal_id},
        own_issuers={OWN_ISSUER},
        peer_issuers={PEER_ISSUER},
        cards={(OWN_ISSUER, card.asn): CardState(1, 1001, dt.date(2026, 1, 1), 10_000, None)},
        seen_terminal_seqs=set(),
        seen_card_counters=set(),
        now=RECEIVED_AT,
    )
    prepared = prepare(term.terminal_id, batch, TacKeys(dtk_lookup, [OWN_ISSUER]))
    plan = decide(prepared, ctx, Parties(1, {(OWN_ISSUER, card.asn): 1001}), RECEIVED_AT)
    return [(t.verdict, t.code, t.business_day, t.tx_utc_offset_min) for t in plan.taps]


def sent_as(record: TapRecord, tx_time: str) -> TapRecord:
    """The same signed tap with its time written at another offset (same second, same TAC)."""
    assert dt.datetime.fromisoformat(tx_time).replace(microsecond=0) == dt.datetime.fromisoformat(record.tx_time)
    return msgspec.structs.replace(record, tx_time=tx_time)


@pytest.mark.parametrize(
    ("tx_time", "day", "offset_min"),
    [
        ("2026-11-24T23:59:59+08:00", dt.date(2026, 11, 24), 480),
        ("2026-11-24T15:59:59Z", dt.date(2026, 11, 24), 0),
        ("2026-11-24T10:59:59-05:00", dt.date(2026, 11, 24), -300),
        ("2026-11-25T01:29:59+09:30", dt.date(2026, 11, 24), 570),
        ("2026-11-25T00:00:00+08:00", dt.date(2026, 11, 25), 480),
        ("2026-11-24T16:00:00Z", dt.date(2026, 11, 25), 0),
        ("2026-11-24T16:00:00+00:00", dt.date(2026, 11, 25), 0),
        ("2026-11-24T11:00:00-05:00", dt.date(2026, 11, 25), -300),
        ("2026-11-24T23:00:00+07:00", dt.date(2026, 11, 25), 420),
        ("2026-11-25T00:00:00.250+08:00", dt.date(2026, 11, 25), 480),
    ],
)
def test_a_tap_near_midnight_belongs_to_its_shanghai_day_whatever_its_offset(
    tx_time: str, day: dt.date, offset_min: int
) -> None:
    card, term = Card(1), Terminal("0000aa000001")
    moment = dt.datetime.fromisoformat(tx_time).astimezone(SHANGHAI_TZ).replace(microsecond=0)
    record = sent_as(term.tap(card, 200, moment), tx_time)
    assert plan_for([record], card, term) == [("accepted", "OK", day, offset_min)]


def test_an_unparseable_time_is_planned_on_the_day_it_was_received() -> None:
    card, term = Card(1), Terminal("0000aa000001")
    record = msgspec.structs.replace(term.tap(card, 200, BEFORE_MIDNIGHT), tx_time="2026-11-24T24:00:00+08:00")
    assert plan_for([record], card, term) == [("rejected", "E_BAD_TIME", dt.date(2026, 11, 26), 480)]


@pytest.mark.parametrize(
    "moment",
    [
        BEFORE_MIDNIGHT,
        AFTER_MIDNIGHT,
        BEFORE_MIDNIGHT.astimezone(dt.UTC),
        AFTER_MIDNIGHT.astimezone(dt.UTC),
        AFTER_MIDNIGHT.astimezone(dt.timezone(dt.timedelta(hours=8))),
        AFTER_MIDNIGHT.astimezone(dt.timezone(dt.timedelta(hours=-11))),
        BEFORE_MIDNIGHT.astimezone(dt.timezone(dt.timedelta(hours=14))),
    ],
)
def test_business_day_is_the_shanghai_calendar_day_of_the_instant(moment: dt.datetime) -> None:
    expected = dt.date(2026, 11, 24) if moment < AFTER_MIDNIGHT else dt.date(2026, 11, 25)
    assert business_day(moment) == expected
