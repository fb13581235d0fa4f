"""The report per window with the peer: sent, acknowledged, accepted, rejected, disputed, net position."""

from __future__ import annotations

import datetime as dt

from issuerworld import *  # noqa: F403 - the fixtures
from issuerworld import PEER, RECEIVED, T0, make_world
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from clearing.models import BatchRow, InteropForward
from interop_xian import disputes, netting, reports
from interop_xian.models import OutboxItem

DAY = T0.date()


def _forward(s: Session, terminal_id: str, seq: int, amount: int, state: str, batch_id: int) -> None:
    forward = InteropForward(
        batch_id=batch_id, batch_seq=1, terminal_id=terminal_id, terminal_seq=seq, record_digest=f"{seq:064x}",
        issuer_id="01007100ffffffff", card_asn="31000000000000000009", offline_counter=seq, tx_type=9,
        amount_fen=amount, tx_time=T0, business_day=DAY, record={}, received_at=RECEIVED,
    )  # fmt: skip
    s.add(forward)
    s.flush()
    s.add(OutboxItem(forward_id=forward.id, item_id=f"xianyang:{terminal_id}:{seq}:{seq:016x}", peer_city=PEER,
                     peer_issuer_id="01007100ffffffff", amount_fen=amount, state=state,
                     batch_sequence=None if state == "pending" else 1,
                     verdict_amount_fen=amount if state == "accepted" else None))  # fmt: skip


def test_the_window_report_counts_each_way_and_gives_the_net(issuer_sqlite: Engine) -> None:
    world = make_world(issuer_sqlite, cards=2)
    t = world.peer_terminal
    with Session(issuer_sqlite) as s, s.begin():
        netting.set_cap(s, PEER, 300)
    verdicts = world.judge([t.tap(world.cards[0], 300, T0), t.tap(world.cards[1], 200, T0)])
    assert [v.code for v in verdicts] == ["OK", "E_NET_DEBIT_CAP"]
    own = world.own_terminal.terminal_id
    with Session(issuer_sqlite) as s, s.begin():
        batch = BatchRow(terminal_id=own, batch_seq=1, content_hash="0" * 64, status="done", answer="{}",
                         received_at=RECEIVED)  # fmt: skip
        s.add(batch)
        s.flush()
        _forward(s, own, 1, 150, "accepted", batch.id)
        _forward(s, own, 2, 90, "rejected", batch.id)
        _forward(s, own, 3, 60, "sent", batch.id)
        _forward(s, own, 4, 10, "pending", batch.id)
        netting.book(s, peer_city=PEER, direction=netting.DUE_FROM, item_id=f"xianyang:{own}:1:{1:016x}",
                     amount_fen=150, window_day=DAY, transfer_id="acq:1")  # fmt: skip
        disputes.open_dispute(s, peer_city=PEER, role=disputes.Side.ISSUER, item_id=verdicts[1].item_id,
                              amount_fen=200, reason_code="E_NET_DEBIT_CAP", actor="xian",
                              now=T0 + dt.timedelta(hours=1), add_working_days=lambda d, n: d)  # fmt: skip
    with Session(issuer_sqlite) as s:
        r = reports.window_report(s, PEER, DAY)
    assert (r.sent, r.acknowledged) == (reports.Tally(3, 300), reports.Tally(2, 240))
    assert (r.accepted, r.rejected) == (reports.Tally(1, 150), reports.Tally(1, 90))
    assert r.judged_accepted == reports.Tally(1, 300) and r.judged_rejected == {"E_NET_DEBIT_CAP": 1}
    assert r.disputes == {"opened": 1} and r.disputed == 1
    assert r.position == netting.Position(PEER, DAY, 300, 150) and r.instruction_state == "open"
    csv = reports.report_csv([r]).decode()
    assert csv.splitlines()[1] == f"{DAY},xian,3,300,2,240,1,150,1,90,1,300,1,1,300,150,150,open"
    assert "net 150 fen" in reports.report_lines(r)[-1]


def test_items_the_acquirer_applied_as_accepted_join_the_position_even_unbooked(issuer_sqlite: Engine) -> None:
    """``netting.sync_acquired``: the position holds every accepted outbox item once, in its tap day's window."""
    world = make_world(issuer_sqlite, cards=1)
    own = world.own_terminal.terminal_id
    with Session(issuer_sqlite) as s, s.begin():
        batch = BatchRow(terminal_id=own, batch_seq=1, content_hash="0" * 64, status="done", answer="{}",
                         received_at=RECEIVED)  # fmt: skip
        s.add(batch)
        s.flush()
        _forward(s, own, 1, 400, "accepted", batch.id)
        _forward(s, own, 2, 99, "rejected", batch.id)
        netting.set_cap(s, PEER, 500)
    # what Xi'an owes us (400) lets 900 fen of our cards' taps in under a cap of 500
    [verdict] = world.judge([world.peer_terminal.tap(world.cards[0], 900, T0)])
    assert verdict.code == "OK"
    with Session(issuer_sqlite) as s, s.begin():
        assert netting.sync_acquired(s, PEER) == 0  # booked once, by the judge's sync
        assert netting.position(s, PEER, DAY) == netting.Position(PEER, DAY, 900, 400)
