"""The finance console's figures (settlement.reports), on SQLite and PostgreSQL (docs/finance-console.md)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path

import msgspec
import pytest
from settleworld import DAY0, World, day_at, make_world
from sqlalchemy import Engine, func, select
from tapfactory import OWN_ISSUER, dtk_lookup

from clearing.business_day import BusinessDayClock
from clearing.ingest import TacKeys, make_ingestor, prepare
from clearing.models import Tap
from clearing.validation import Limits
from fares.loader import EXAMPLE_TARIFF_DIR, load_example_tariff
from settlement import reports
from settlement.bank_statements import Entry, import_entries
from settlement.models import PayoutResultRow, StatementRow

DAY1 = DAY0 + dt.timedelta(days=1)


def _ingest(world: World, name: str, taps: list[tuple[dt.datetime, int, str, str]], *, forged: int = 0) -> None:
    """One batch from terminal ``name``: (time, amount, route, stop) each, and ``forged`` taps with a bad TAC."""
    term = world.terminals[name]
    for i, (when, amount, route, stop) in enumerate(taps):
        record = term.tap(world.cards[(term.seq + i) % len(world.cards)], amount, when)
        term.pending[-1] = msgspec.structs.replace(record, route_id=route, stop_id=stop)  # not under the TAC
    for i in range(forged):
        term.tap(world.cards[i % len(world.cards)], 300, taps[0][0], signed=False)
    ingestor = make_ingestor(world.engine, clock=lambda: world.now, limits=Limits(amount_fen_max=world.amount_fen_max))
    ingestor.ingest(prepare(term.terminal_id, term.batch(), TacKeys(dtk_lookup, [OWN_ISSUER])))


def test_taps_per_hour_route_and_stop_are_the_days_taps_in_local_hours(db_engine: Engine, tmp_path: Path) -> None:
    world = make_world(db_engine, tmp_path / "out")
    _ingest(world, "a1", [(day_at(DAY0, 0).replace(minute=5), 200, "1", "u_city_hall"),
                          (day_at(DAY0, 8), 200, "1", "u_city_hall"),
                          (day_at(DAY0, 8).replace(minute=40), 150, "1", "u_hospital"),
                          (day_at(DAY0, 23).replace(minute=59), 100, "6", "u_hospital")])  # fmt: skip
    _ingest(world, "b1", [(day_at(DAY1, 0).replace(minute=1), 100, "6", "u_university")])  # the next day
    with world.session() as s:
        hours = reports.taps_per_hour(s, DAY0)
        routes, stops, route_stops = reports.route_and_stop_figures(s, DAY0)
        report = reports.day_report(s, DAY0)
    assert [h.hour for h in hours] == list(range(24))
    by_hour = {h.hour: (h.accepted, h.posted_fen) for h in hours if h.taps}
    assert by_hour == {0: (1, 200), 8: (2, 350), 23: (1, 100)}
    assert routes == (reports.RouteFigures("1", 3, 3, 550), reports.RouteFigures("6", 1, 1, 100))
    assert stops == (reports.StopFigures("u_city_hall", 2, 400), reports.StopFigures("u_hospital", 2, 250))
    assert route_stops == {"1": ("u_city_hall", "u_hospital"), "6": ("u_hospital",)}
    assert (report.taps, report.posted_fen) == (4, 650)


def test_hours_follow_the_cutoff_of_the_business_day() -> None:
    clock = BusinessDayClock(dt.time(3, 0))
    assert reports.hour_order(clock)[:3] == (3, 4, 5) and reports.hour_order(clock)[-1] == 2
    assert sorted(reports.hour_order(clock)) == list(range(24))


def test_payees_read_running_totals_until_the_close_then_the_statements(db_engine: Engine, tmp_path: Path) -> None:
    world = make_world(db_engine, tmp_path / "out")
    _ingest(world, "a1", [(day_at(DAY0, 8), 200, "1", "u_city_hall"), (day_at(DAY0, 9), 150, "1", "u_hospital")])
    _ingest(world, "b1", [(day_at(DAY0, 10), 100, "6", "u_hospital")])
    _ingest(world, "shop", [(day_at(DAY0, 11), 123_455, "shop", "shop")])
    with world.session() as s:
        open_ = reports.day_report(s, DAY0)
    assert open_.state == reports.OPEN
    assert [(p.payee_id, p.count, p.gross_fen, p.fee_fen) for p in open_.operators] == [
        ("bus-a", 2, 350, None), ("bus-b", 1, 100, None)]  # fmt: skip
    assert [(p.payee_id, p.sales_fen, p.fee_fen) for p in open_.merchants] == [("shop-1", 123_455, None)]
    assert {p.status for p in open_.payouts} == {reports.NOT_CLOSED}

    world.close(DAY0)
    with world.session() as s:
        closed = reports.day_report(s, DAY0)
        statements = {r.payee_id: r for r in s.scalars(select(StatementRow).where(StatementRow.window_day == DAY0))}
    assert closed.state == reports.CLOSED and closed.closed_at is not None
    for p in (*closed.operators, *closed.merchants):
        st = statements[p.payee_id]
        assert (p.gross_fen, p.refunds_fen, p.fee_fen, p.net_fen) == (st.gross_fen, st.refunds_fen, st.fee_fen,
                                                                       st.net_fen)  # fmt: skip
    status = {p.payee_id: p for p in closed.payouts}
    assert status["bus-a"].status == reports.INSTRUCTED and status["bus-a"].payout_fen == 350
    assert status["bus-b"].status == reports.HELD and status["bus-b"].held_reason == "no payout account"
    shop = statements["shop-1"]
    assert status["shop-1"].payout_fen == shop.payout_fen == 123_455 - shop.fee_fen

    with world.session() as s, s.begin():
        import_entries(s, [Entry(status["bus-a"].end_to_end_id or "", 350, "cleared", DAY1),
                           Entry(shop.end_to_end_id or "", shop.payout_fen, "returned", DAY1, "account closed")],
                       statement_ref="camt-1", now=world.now)  # fmt: skip
    with world.session() as s:
        answered = {p.payee_id: p for p in reports.payout_statuses(s, DAY0)}
        assert s.scalar(select(func.count()).select_from(PayoutResultRow)) == 2
    assert (answered["bus-a"].status, answered["bus-a"].booked_on) == (reports.CLEARED, DAY1)
    assert answered["shop-1"].status == reports.RETURNED
    with world.session() as s:
        days = reports.recent_days(s, DAY1)
    assert [(d.business_day, d.state, d.gross_fen) for d in days] == [
        (DAY1, reports.OPEN, 0), (DAY0, reports.CLOSED, 350 + 100 + 123_455)]  # fmt: skip


def test_late_suspect_and_rejected_records_are_listed_with_their_codes(db_engine: Engine, tmp_path: Path) -> None:
    world = make_world(db_engine, tmp_path / "out")
    world.now = day_at(DAY0, 20)  # received the same evening: the forgeries' items are made on DAY0
    _ingest(world, "a1", [(day_at(DAY0, 8), 200, "1", "u_city_hall")], forged=2)
    world.now = day_at(DAY1, 12)
    world.close(DAY0)
    _ingest(world, "a1", [(day_at(DAY0, 9), 150, "1", "u_city_hall")])  # after the close: late, into DAY1
    with world.session() as s:
        day0 = reports.record_issues(s, DAY0, BusinessDayClock())
        day1 = reports.record_issues(s, DAY1, BusinessDayClock())
        forged_items = s.scalar(select(func.count()).select_from(Tap).where(Tap.verdict == "rejected"))
    assert [i for i in day0 if i.kind == reports.REJECTED] == [
        reports.RecordIssue(reports.REJECTED, "E_TAC_MISMATCH", 2, 600)
    ]
    assert not [i for i in day1 if i.kind == reports.REJECTED]
    assert forged_items == 0  # forgeries get no tap row: they are counted from the exception queue
    assert reports.RecordIssue(reports.LATE, f"from {DAY0.isoformat()}", 1, 150) in day1
    assert not [i for i in day0 if i.kind == reports.LATE]


@pytest.mark.parametrize(
    ("payout", "carry", "held", "results", "status"),
    [
        (500, 0, None, {}, reports.INSTRUCTED),
        (500, 0, None, {"cleared": "x"}, reports.CLEARED),
        (500, 0, None, {"cleared": "x", "returned": "y"}, reports.RETURNED),
        (0, 300, "no payout account", {}, reports.HELD),
        (0, -200, None, {}, reports.CARRIED),
        (0, 0, None, {}, reports.NOTHING_DUE),
    ],
)
def test_payout_status_of_a_statement(payout: int, carry: int, held: str | None, results: dict[str, str],
                                      status: str) -> None:  # fmt: skip
    statement = StatementRow(payout_fen=payout, carry_out_fen=carry, held_reason=held)
    answers = {k: PayoutResultRow(status=k, booked_on=DAY1) for k in results}
    assert reports.payout_status(statement, answers)[0] == status
    assert reports.payout_status(None, {}) == (reports.NOT_CLOSED, None)


def test_the_example_feed_places_every_stop_it_codes_and_says_they_are_examples() -> None:
    stops = reports.load_stops(EXAMPLE_TARIFF_DIR)
    assert {s.stop_id for s in stops} == set(load_example_tariff().stop_codes)
    assert all("EXAMPLE" in s.description and "(example)" in s.name for s in stops)
    assert all(Decimal(34) < s.lat < Decimal(35) and Decimal(108) < s.lon < Decimal(109) for s in stops)


def test_stops_without_a_position_are_not_placed() -> None:
    text = "\ufeffstop_id,stop_name,stop_lat,stop_lon\na,A,34.1,108.2\nb,B,,\nc,C,91,108\n,D,34,108\ne,,34.2,abc\n"
    assert reports.parse_stops(text) == [reports.Stop("a", "A", Decimal("34.1"), Decimal("108.2"))]
    assert reports.load_stops(Path("/nonexistent")) == []
