"""Disputes in the database: each transition recorded, outcomes posted as new transfers in the open window."""

from __future__ import annotations

import datetime as dt

import pytest
from issuerworld import *  # noqa: F403 - the fixtures
from issuerworld import PEER, RECEIVED, T0, make_world
from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session
from test_disputes_state_machine import weekdays

from clearing.models import Transfer
from interop_xian import disputes, netting
from interop_xian.disputes import Side, State
from interop_xian.errors import InteropError

NOW = RECEIVED + dt.timedelta(hours=1)


def _kw() -> dict[str, object]:
    return {"add_working_days": weekdays}


def _rejected_item(world: object) -> tuple[str, int]:
    """An item of ours the judge refused for the cap: authentic, so worth disputing."""
    from issuerworld import IssuerWorld

    assert isinstance(world, IssuerWorld)
    with Session(world.engine) as s, s.begin():
        netting.set_cap(s, PEER, 100)
    [verdict] = world.judge([world.peer_terminal.tap(world.cards[0], 300, T0)])
    assert verdict.code == "E_NET_DEBIT_CAP"
    return verdict.item_id, 300


def _open(engine: Engine, item_id: str, amount: int, role: Side = Side.ISSUER) -> int:
    with Session(engine) as s, s.begin():
        moved = disputes.open_dispute(s, peer_city=PEER, role=role, item_id=item_id, amount_fen=amount,
                                      reason_code="E_NET_DEBIT_CAP", actor="xian", now=NOW, **_kw())  # type: ignore[arg-type]  # fmt: skip
        return moved.dispute_id


def _move(
    engine: Engine, dispute_id: int, to: State, by: Side, *, at: dt.datetime = NOW, **kw: object
) -> disputes.Moved:
    with Session(engine) as s, s.begin():
        return disputes.move(s, dispute_id, to, by=by, actor="clerk-1", now=at, add_working_days=weekdays, **kw)  # type: ignore[arg-type]


def test_an_issuer_dispute_through_evidence_to_acceptance_posts_once_in_the_open_window(issuer_db: Engine) -> None:
    world = make_world(issuer_db)
    item_id, amount = _rejected_item(world)
    dispute_id = _open(issuer_db, item_id, amount)
    assert _move(issuer_db, dispute_id, State.EVIDENCE_REQUESTED, Side.ISSUER).deadline == weekdays(NOW.date(), 10)
    with pytest.raises(InteropError) as raised:
        _move(issuer_db, dispute_id, State.EVIDENCE_GIVEN, Side.ACQUIRER)  # evidence without evidence
    assert raised.value.code.value == "E_BAD_DISPUTE"
    _move(issuer_db, dispute_id, State.EVIDENCE_GIVEN, Side.ACQUIRER, evidence="journal export 2026-11-24 bus 7")
    later = NOW + dt.timedelta(days=1)
    moved = _move(issuer_db, dispute_id, State.ACCEPTED, Side.ISSUER, at=later)
    assert moved.transfer_id == f"idsp:{PEER}:issuer:{item_id}" and moved.deadline is None
    assert world.due_to_fen() == 300
    bookings = world.bookings()
    assert [(b.direction, b.amount_fen, b.source, b.window_day) for b in bookings] == [
        ("due_to", 300, "dispute", later.date())
    ]
    with pytest.raises(InteropError) as again:
        _move(issuer_db, dispute_id, State.ACCEPTED, Side.ISSUER, at=later)
    assert again.value.code.value == "E_DISPUTE_TRANSITION"
    with Session(issuer_db) as s:
        steps = [(e.from_state, e.to_state, e.actor) for e in disputes.events(s, dispute_id)]
        assert steps == [
            (None, "opened", "xian"),
            ("opened", "evidence_requested", "clerk-1"),
            ("evidence_requested", "evidence_given", "clerk-1"),
            ("evidence_given", "accepted", "clerk-1"),
        ]
        assert disputes.get(s, dispute_id).evidence == "journal export 2026-11-24 bus 7"
    world.balanced()


def test_an_acquirer_dispute_accepted_by_the_issuer_pays_our_operator_in_the_open_window(issuer_sqlite: Engine) -> None:
    world = make_world(issuer_sqlite)
    terminal = world.own_terminal.terminal_id  # a Xi'an card tapped on our terminal, rejected by Xi'an
    item_id = f"xianyang:{terminal}:5:00112233445566aa"
    dispute_id = _open(issuer_sqlite, item_id, 450, Side.ACQUIRER)
    moved = _move(issuer_sqlite, dispute_id, State.ACCEPTED, Side.ISSUER)  # the issuer's decision, received
    with Session(issuer_sqlite) as s:
        transfer = s.get(Transfer, moved.transfer_id)
        assert transfer is not None and transfer.amount_fen == 450
        totals = s.execute(text("SELECT window_day, gross_fen FROM settlement_totals")).all()
        assert [(str(d), g) for d, g in totals] == [(NOW.date().isoformat(), 450)]
        assert netting.position(s, PEER, NOW.date()).due_from_fen == 450
    world.balanced()


def test_a_dispute_rejected_and_written_off_moves_nothing(issuer_sqlite: Engine) -> None:
    world = make_world(issuer_sqlite)
    item_id, amount = _rejected_item(world)
    dispute_id = _open(issuer_sqlite, item_id, amount)
    assert _move(issuer_sqlite, dispute_id, State.REJECTED, Side.ISSUER).transfer_id is None
    assert _move(issuer_sqlite, dispute_id, State.WRITTEN_OFF, Side.ACQUIRER).transfer_id is None
    assert world.due_to_fen() == 0 and world.bookings() == []
    with pytest.raises(InteropError) as raised:
        _open(issuer_sqlite, item_id, amount)  # a final dispute is not opened again
    assert raised.value.code.value == "E_DISPUTE_EXISTS"


def test_opening_an_open_dispute_again_returns_it_and_bad_input_is_refused(issuer_sqlite: Engine) -> None:
    world = make_world(issuer_sqlite)
    item_id, amount = _rejected_item(world)
    assert _open(issuer_sqlite, item_id, amount) == _open(issuer_sqlite, item_id, amount)
    with pytest.raises(InteropError) as unknown:
        _move(issuer_sqlite, 999, State.ACCEPTED, Side.ISSUER)
    assert unknown.value.code.value == "E_UNKNOWN_DISPUTE" and unknown.value.status == 404
    with pytest.raises(InteropError) as bad:
        _open(issuer_sqlite, "", 1)
    assert bad.value.code.value == "E_BAD_DISPUTE"
    with pytest.raises(InteropError) as note:
        _move(issuer_sqlite, 1, State.REJECTED, Side.ISSUER, note="x" * 501)
    assert note.value.code.value == "E_BAD_DISPUTE"


def test_the_sweep_ends_our_own_late_disputes_against_us(issuer_sqlite: Engine) -> None:
    world = make_world(issuer_sqlite, cards=2)
    with Session(issuer_sqlite) as s, s.begin():
        netting.set_cap(s, PEER, 0)
    t = world.peer_terminal
    verdicts = world.judge([t.tap(world.cards[0], 100, T0), t.tap(world.cards[1], 200, T0)])
    unanswered = _open(issuer_sqlite, verdicts[0].item_id, 100)
    no_evidence = _open(issuer_sqlite, verdicts[1].item_id, 200)
    _move(issuer_sqlite, no_evidence, State.EVIDENCE_REQUESTED, Side.ISSUER)
    with Session(issuer_sqlite) as s, s.begin():
        assert disputes.sweep(s, now=NOW + dt.timedelta(days=2), add_working_days=weekdays) == []  # not late yet
    late = NOW + dt.timedelta(days=30)
    with Session(issuer_sqlite) as s, s.begin():
        moved = {m.dispute_id: m.to_state for m in disputes.sweep(s, now=late, add_working_days=weekdays)}
    # Each side ends only its own late states: the issuer's unanswered dispute is accepted; the
    # acquirer's missing evidence is the acquirer's to write off (its sweep, over the channel).
    assert moved == {unanswered: State.ACCEPTED}
    with Session(issuer_sqlite) as s:
        assert disputes.get(s, no_evidence).state == State.EVIDENCE_REQUESTED.value
    assert world.due_to_fen() == 100  # the unanswered dispute was accepted and posted
    with pytest.raises(InteropError) as raised:
        _move(issuer_sqlite, unanswered, State.REJECTED, Side.ISSUER, at=late)
    assert raised.value.code.value == "E_DISPUTE_TRANSITION"  # final now


def test_a_rejected_outbox_item_opens_an_acquirer_dispute_whose_acceptance_pays_the_taps_operator(
    issuer_sqlite: Engine,
) -> None:
    from test_netting_reports import _forward

    from clearing.models import BatchRow
    from interop_xian.models import OutboxItem

    world = make_world(issuer_sqlite)
    own = world.own_terminal.terminal_id
    with Session(issuer_sqlite) as s, s.begin():
        batch = BatchRow(terminal_id=own, batch_seq=1, content_hash="0" * 64, status="done", answer="{}",
                         received_at=RECEIVED)  # fmt: skip
        s.add(batch)
        s.flush()
        _forward(s, own, 3, 180, "rejected", batch.id)
        item = s.execute(select(OutboxItem)).scalar_one()
        item.code, item.message = "E_TAC_MISMATCH", "E_TAC_MISMATCH: TAC does not verify\nfor card …"
        disputes.open_for_rejected_item(s, item, NOW)
        item_id = item.item_id
    with Session(issuer_sqlite) as s:
        [d] = disputes.listing(s)
        assert (d.role, d.item_id, d.amount_fen, d.reason_code, d.state) == (
            "acquirer",
            item_id,
            180,
            "E_TAC_MISMATCH",
            "opened",
        )
    moved = _move(issuer_sqlite, d.id, State.ACCEPTED, Side.ISSUER)
    with Session(issuer_sqlite) as s:
        transfer = s.get(Transfer, moved.transfer_id)
        terminal_payable = s.execute(text("SELECT payable_account_id FROM terminals")).scalar_one()
        assert transfer is not None and transfer.credit_account_id == terminal_payable
