"""Closing a window with the peer: equal digests make the net instruction final; a mismatch is an alarm."""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from issuerworld import *  # noqa: F403 - the fixtures
from issuerworld import PEER, RECEIVED, T0, IssuerWorld, make_world
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from clearing import accounts, db, registry
from clearing.ledger import account_balance, trial_balance
from clearing.models import AccountCode, Transfer
from interop_xian import netting, window_close
from interop_xian.errors import InteropError
from interop_xian.issuer import peer_issuer_id
from interop_xian.window_close import Line

DAY = T0.date()
LATER = RECEIVED + dt.timedelta(days=1)


@pytest.fixture
def xian(issuer_template: Path, tmp_path: Path) -> Iterator[Engine]:
    """The peer's database (Xi'an's own instance): the same software, Xi'an as its own issuer."""
    path = tmp_path / "xian.db"
    shutil.copyfile(issuer_template, path)
    engine = db.make_engine(f"sqlite:///{path}")
    with Session(engine) as s, s.begin():
        registry.ensure_issuers(s, own_city="xian")
    yield engine
    engine.dispose()


def _two_sided_day(world: IssuerWorld, xian: Engine) -> None:
    """Our cards tapped in Xi'an (judged here, applied there) and Xi'an's cards tapped here (the reverse)."""
    t = world.peer_terminal
    a, b = world.cards[0], world.cards[1]
    verdicts = world.judge([t.tap(a, 500, T0), t.tap(b, 300, T0)])
    with Session(xian) as s, s.begin():  # Xi'an's acquirer applies our verdicts
        for verdict in verdicts:
            assert verdict.window_day == DAY
            netting.book(s, peer_city="xianyang", direction=netting.DUE_FROM, item_id=verdict.item_id,
                         amount_fen=verdict.amount_fen, window_day=verdict.window_day, transfer_id="acq")  # fmt: skip
    # a Xi'an card at our terminal: Xi'an (its issuer) accepts 200 fen; our acquirer side applies it
    theirs = "xianyang:00000b000001:7:0123456789abcdef"
    with Session(xian) as s, s.begin():
        netting.book(s, peer_city="xianyang", direction=netting.DUE_TO, item_id=theirs, amount_fen=200,
                     window_day=DAY, transfer_id="iss-there")  # fmt: skip
    with Session(world.engine) as s, s.begin():
        netting.book(s, peer_city=PEER, direction=netting.DUE_FROM, item_id=theirs, amount_fen=200,
                     window_day=DAY, transfer_id="acq-here")  # fmt: skip


def _propose(engine: Engine, own: str, peer: str, day: dt.date = DAY) -> window_close.Proposal:
    with Session(engine) as s, s.begin():
        return window_close.propose(s, own_city=own, peer_city=peer, window_day=day, now=LATER)


def _conclude(engine: Engine, own: str, peer: str, digest: str, lines: list[Line] | None = None,
              day: dt.date = DAY) -> window_close.Conclusion:  # fmt: skip
    with Session(engine) as s, s.begin():
        return window_close.conclude(s, own_city=own, peer_city=peer, window_day=day, peer_digest=digest,
                                     now=LATER, peer_lines=lines)  # fmt: skip


def test_both_sides_compute_the_same_instruction_and_digest() -> None:
    ours = window_close.instruction_of("xianyang", "xian", DAY, [("due_to", "xian:a", 500), ("due_from", "xy:b", 200)])
    theirs = window_close.instruction_of(
        "xian", "xianyang", DAY, [("due_from", "xian:a", 500), ("due_to", "xy:b", 200)]
    )
    assert ours == theirs and window_close.instruction_digest(ours) == window_close.instruction_digest(theirs)
    assert (ours.payer, ours.payee, ours.net_fen) == ("xianyang", "xian", 300)
    assert window_close.from_document(window_close.document_of(ours)) == ours
    other = window_close.instruction_of("xian", "xianyang", DAY, [("due_from", "xian:a", 501), ("due_to", "xy:b", 200)])
    assert window_close.instruction_digest(other) != window_close.instruction_digest(ours)
    found = window_close.differences(ours.lines, other.lines)
    assert found.other_amount == ((Line("xian:a", "xianyang", 500), Line("xian:a", "xianyang", 501)),)


def test_matching_digests_make_the_instruction_final_post_it_and_the_positions_are_equal_and_opposite(
    issuer_db: Engine, xian: Engine, tmp_path: Path
) -> None:
    """Xianyang on SQLite or PostgreSQL, Xi'an on SQLite: two databases, one instruction."""
    issuer_sqlite = issuer_db
    world = make_world(issuer_sqlite, cards=2)
    _two_sided_day(world, xian)
    here, there = _propose(issuer_sqlite, "xianyang", PEER), _propose(xian, "xian", "xianyang")
    assert here.digest == there.digest and here.instruction == there.instruction
    assert (here.instruction.payer, here.instruction.net_fen) == ("xianyang", 600)
    with Session(issuer_sqlite) as s, Session(xian) as t:
        ours, peers = netting.position(s, PEER, DAY), netting.position(t, "xianyang", DAY)
    assert ours.net_fen == 600 == -peers.net_fen
    assert _conclude(issuer_sqlite, "xianyang", PEER, there.digest).final
    assert _conclude(xian, "xian", "xianyang", here.digest).final
    with Session(issuer_sqlite) as s, s.begin():
        issuer = peer_issuer_id(s, PEER)
        due_to = accounts.due_to_peer(s, issuer)
        bank = accounts.get_or_create_account(s, AccountCode.BANK_SETTLEMENT, "system:bank_settlement")
        assert account_balance(s, due_to).credit_balance_fen == 0  # the 800 fen we owed is settled
        assert account_balance(s, bank).credit_balance_fen == 600  # paid net to Xi'an
        legs = s.execute(select(Transfer.id, Transfer.amount_fen).where(Transfer.id.like("inet:%"))).all()
        assert sorted(legs) == [("inet:xian:20261124:offset", 200), ("inet:xian:20261124:pay", 600)]
        tb = trial_balance(s)
        assert tb.debits_posted == tb.credits_posted
        assert netting.open_net_debit(s, PEER) == 0  # a final window no longer counts against the cap
    # concluding again changes nothing; another digest cannot change a final window
    assert _conclude(issuer_sqlite, "xianyang", PEER, there.digest).final
    with pytest.raises(InteropError) as raised:
        _conclude(issuer_sqlite, "xianyang", PEER, "0" * 64)
    assert raised.value.code.value == "E_WINDOW_FINAL"
    # the final instruction is in the next settlement close's files
    from settlement.bank import BankAccount
    from settlement.close import close_window
    from settlement.payouts import Payer

    payer = Payer("Xianyang Yikatong", BankAccount("Xianyang Yikatong Settlement", "6222020000000000001",
                                                   "102791000013"))  # fmt: skip
    result = close_window(issuer_sqlite, DAY, now=LATER + dt.timedelta(hours=1), payer=payer, out_dir=tmp_path)
    csv = (tmp_path / DAY.isoformat() / f"interop-{DAY.isoformat()}.csv").read_text()
    assert f"{DAY},xian,{DAY},xianyang,xian,600,800,200,{here.digest}" in csv
    assert f"interop-{DAY.isoformat()}.csv" in result.files


def test_a_mismatch_settles_nothing_and_raises_an_alarm_with_both_itemised_lists(
    issuer_sqlite: Engine, xian: Engine
) -> None:
    world = make_world(issuer_sqlite, cards=2)
    _two_sided_day(world, xian)
    late = world.judge([world.peer_terminal.tap(world.cards[0], 50, T0 + dt.timedelta(minutes=9))])  # not applied there
    here, there = _propose(issuer_sqlite, "xianyang", PEER), _propose(xian, "xian", "xianyang")
    assert here.digest != there.digest
    conclusion = _conclude(issuer_sqlite, "xianyang", PEER, there.digest, list(there.instruction.lines))
    assert not conclusion.final and conclusion.differences is not None
    assert [line.item_id for line in conclusion.differences.only_ours] == [late[0].item_id]
    with Session(issuer_sqlite) as s:
        assert s.execute(select(Transfer.id).where(Transfer.id.like("inet:%"))).all() == []
        [alarm] = [a for a in netting.alarms(s, PEER) if a.kind == "digest_mismatch"]
        assert len(alarm.details["ours"]) == 4 and len(alarm.details["theirs"]) == 3
        assert alarm.details["only_ours"] == [[late[0].item_id, "xianyang", 50]]
        assert window_close.window(s, PEER, DAY).state == "mismatch"  # type: ignore[union-attr]
    # Xi'an applies the missing verdict: the next exchange agrees and the window is final
    with Session(xian) as s, s.begin():
        netting.book(s, peer_city="xianyang", direction=netting.DUE_FROM, item_id=late[0].item_id, amount_fen=50,
                     window_day=DAY, transfer_id="acq")  # fmt: skip
    there = _propose(xian, "xian", "xianyang")
    assert _conclude(issuer_sqlite, "xianyang", PEER, there.digest).final


def test_a_final_window_takes_no_more_items_and_windows_close_in_day_order(issuer_sqlite: Engine) -> None:
    world = make_world(issuer_sqlite, cards=1)
    t = world.peer_terminal
    card = world.cards[0]
    world.judge([t.tap(card, 100, T0)])
    world.judge([t.tap(card, 100, T0 + dt.timedelta(days=1))], at=LATER)
    with pytest.raises(InteropError) as raised:
        _propose(issuer_sqlite, "xianyang", PEER, DAY + dt.timedelta(days=1))
    assert raised.value.code.value == "E_WINDOW_NOT_PROPOSED"
    proposal = _propose(issuer_sqlite, "xianyang", PEER)
    assert _conclude(issuer_sqlite, "xianyang", PEER, proposal.digest).final
    # a tap of the final day arriving now joins the next open window
    [late] = world.judge([t.tap(card, 70, T0 + dt.timedelta(hours=3))], at=LATER)
    assert late.window_day == DAY + dt.timedelta(days=1)
    with Session(issuer_sqlite) as s:
        assert netting.position(s, PEER, DAY).due_to_fen == 100
        assert netting.position(s, PEER, DAY + dt.timedelta(days=1)).due_to_fen == 170
