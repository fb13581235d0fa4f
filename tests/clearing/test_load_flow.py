"""Online loads end to end: a load-capable terminal (``terminals.loading``) against the real clearing API.

Reserved at authorize, posted at complete, voided at cancel; a load whose TAC never reached
the host is settled from the card at its next presentation (GET TRANSACTION PROVE, P2 02),
never by a second MAC2. After each step: the purse, the card's ledger balance and its shadow
agree, and the ledger balances (pending totals included).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session
from tapfactory import OWN_ISSUER, T0, make_keystore, register_world

from cardos.card import Card as EmulatedCard
from cardos.os import TearPlan
from clearing import denylist, loads
from clearing.api import ApiDeps, create_app
from clearing.issuance import issue_card
from clearing.ledger import account_balance, trial_balance
from clearing.models import Account, LoadKind, PendingLoad, Transfer
from clearing.models import Card as CardRow
from terminals.loading import HttpLoadHost, LoadOutcome, load_card
from terminals.readers import InProcessReader

NOW = T0 + dt.timedelta(days=1)
TERMINAL = "0000aa0000f1"


class Rig:
    def __init__(self, engine: Engine, keystore: Any, token: str) -> None:
        self.engine = engine
        self.keystore = keystore
        client = TestClient(create_app(ApiDeps(engine, keystore, clock=lambda: NOW.astimezone(dt.UTC))))
        self.host = HttpLoadHost(client, TERMINAL, token)
        with Session(engine) as session, session.begin():
            image, row = issue_card(
                session, keystore, issuer_id=OWN_ISSUER, card_type="ordinary", balance_fen=1000, now=NOW
            )
            self.asn = row.card_asn
        self.card = EmulatedCard.from_image(image)
        self.reader = InProcessReader("kiosk", self.card)

    def pending(self, load_id: str, amount: int, **kw: Any) -> None:
        with Session(self.engine) as session, session.begin():
            kw.setdefault("payment_ref", f"pi_{load_id}")
            loads.create_pending(session, load_id, OWN_ISSUER, self.asn, amount, **kw)

    def present(self, tear: TearPlan | None = None) -> Any:
        self.card.tear = tear
        try:
            return load_card(self.reader, self.host, TERMINAL)
        finally:
            self.card.tear = None
            self.reader.disconnect()

    def state(self, load_id: str) -> str:
        with Session(self.engine) as session:
            load = session.get(PendingLoad, load_id)
            assert load is not None
            return load.state

    def agree(self) -> None:
        with Session(self.engine) as session:
            row = session.execute(select(CardRow).where(CardRow.card_asn == self.asn)).scalar_one()
            ledger = account_balance(session, row.account_id)
            assert ledger.credit_balance_fen == row.shadow_balance_fen == self.card.registers.balance_fen
            trial_balance(session)

    def transfers(self, prefix: str) -> list[tuple[str, str, int]]:
        with Session(self.engine) as session:
            rows = session.execute(
                select(Transfer.id, Transfer.state, Transfer.amount_fen)
                .where(Transfer.id.like(prefix + "%"))
                .order_by(Transfer.id)
            )
            return [tuple(r) for r in rows]  # type: ignore[misc]


@pytest.fixture
def rig(db_engine: Engine, tmp_path: Path) -> Iterator[Rig]:
    keystore = make_keystore(tmp_path)
    with Session(db_engine) as session:
        tokens = register_world(session, [], [TERMINAL], tokens=True)
    yield Rig(db_engine, keystore, tokens[TERMINAL])


def test_a_paid_top_up_is_reserved_credited_and_posted_once(rig: Rig) -> None:
    rig.pending("T1", 500)
    report = rig.present()
    assert [(r.load_id, r.outcome) for r in report.results] == [("T1", LoadOutcome.LOADED)]
    assert report.balance_fen == 1500 == rig.card.registers.balance_fen
    assert rig.transfers("load:T1") == [("load:T1", "posted", 500), ("load:T1:reserve", "pending", 500)]
    rig.agree()
    assert rig.present().results == []  # nothing waits any more


def test_a_load_torn_after_the_card_credited_it_is_proved_and_posted_at_the_next_tap(rig: Rig) -> None:
    rig.pending("T2", 500)
    # SELECT, READ BINARY, INITIALIZE FOR LOAD, CREDIT FOR LOAD: the 4th commits, its answer is lost
    report = rig.present(TearPlan(at_apdu=4, phase="after_commit"))
    assert report.results[0].outcome is LoadOutcome.IN_DOUBT
    assert rig.card.registers.balance_fen == 1500 and rig.state("T2") == "authorized"
    again = rig.present()
    assert [r.outcome for r in again.results] == [LoadOutcome.RECOVERED]
    assert rig.card.registers.balance_fen == 1500  # credited once
    assert rig.state("T2") == "posted"
    rig.agree()


def test_a_load_torn_before_the_card_credited_it_is_loaded_at_the_next_tap(rig: Rig) -> None:
    rig.pending("T3", 300)
    report = rig.present(TearPlan(at_apdu=4, phase="before_commit"))
    assert report.results[0].outcome is LoadOutcome.IN_DOUBT
    assert rig.card.registers.balance_fen == 1000 and rig.state("T3") == "authorized"
    again = rig.present()
    assert [r.outcome for r in again.results] == [LoadOutcome.LOADED]
    assert rig.card.registers.balance_fen == 1300
    assert rig.transfers("load:T3") == [("load:T3", "posted", 300), ("load:T3:reserve", "pending", 300)]
    rig.agree()


def test_a_cancelled_load_voids_its_reservation_and_cannot_be_loaded(rig: Rig) -> None:
    rig.pending("T4", 200)
    with Session(rig.engine) as session, session.begin():
        load = session.get(PendingLoad, "T4")
        card = session.execute(select(CardRow).where(CardRow.card_asn == rig.asn)).scalar_one()
        assert load is not None
        loads._reserve(session, load, card)  # as an authorize would
        assert account_balance(session, card.account_id).credits_pending == 200
    with Session(rig.engine) as session, session.begin():
        assert loads.cancel(session, "T4").state == "cancelled"
    with Session(rig.engine) as session, session.begin():
        assert loads.mark_refunded(session, "T4").state == "refunded"
    assert rig.transfers("load:T4") == [("load:T4:reserve", "pending", 200), ("load:T4:void", "voided", 200)]
    assert rig.present().results == []
    rig.agree()


def test_an_authorized_load_cannot_be_cancelled_while_the_card_may_hold_it(rig: Rig) -> None:
    rig.pending("T5", 200)
    rig.present(TearPlan(at_apdu=4, phase="after_commit"))
    with Session(rig.engine) as session, session.begin(), pytest.raises(Exception) as refused:
        loads.cancel(session, "T5")
    assert getattr(refused.value, "code", None) == "E_LOAD_IN_DOUBT"


def test_a_denylisted_card_is_refused_and_nothing_is_reserved(rig: Rig) -> None:
    rig.pending("T6", 200)
    with Session(rig.engine) as session, session.begin():
        denylist.add(session, OWN_ISSUER, rig.asn, "lost")
    report = rig.present()
    assert report.results[0].outcome is LoadOutcome.REFUSED and "E_CARD_NOT_ACTIVE" in report.results[0].reason
    assert rig.transfers("load:T6") == [] and rig.state("T6") == "pending"
    rig.agree()


def test_a_refund_load_is_reserved_from_the_operator_that_received_the_entry(rig: Rig) -> None:
    from clearing.ledger import TransferSpec, post_transfers
    from clearing.models import TransferCode

    with Session(rig.engine) as session, session.begin():
        _, rider = issue_card(
            session, rig.keystore, issuer_id=OWN_ISSUER, card_type="ordinary", balance_fen=2000, now=NOW
        )
        payable_id = session.execute(select(Account.id).where(Account.owner_ref == "operator:bus-1")).scalar_one()
        # the entry fare the operator received from another rider's tap-on
        post_transfers(
            session, [TransferSpec.single("tap:x:1", rider.account_id, payable_id, 800, TransferCode.PURCHASE)]
        )
    rig.pending("refund:0000aa0000f1:7", 300, payment_ref=None, kind=LoadKind.REFUND, payer_account_id=payable_id)
    assert rig.present().results[0].outcome is LoadOutcome.LOADED
    with Session(rig.engine) as session:
        balance = account_balance(session, payable_id)
        assert (balance.credits_posted, balance.debits_posted) == (800, 300)
    rig.agree()


def test_the_loads_of_another_terminals_card_need_this_terminals_token(rig: Rig) -> None:
    response = rig.host.client.get(
        f"/v1/terminals/{TERMINAL}/cards/{OWN_ISSUER}/{rig.asn}/loads", headers={"Authorization": "Bearer x.y"}
    )
    assert response.status_code == 401 and response.json()["code"] == "E_UNAUTHORIZED"


def test_a_payer_that_cannot_cover_the_reservation_is_a_clear_refusal_not_a_500(rig: Rig) -> None:
    """The ledger refuses to reserve a refund from an operator with nothing on its payable."""
    with Session(rig.engine) as session:
        payable_id = session.execute(select(Account.id).where(Account.owner_ref == "operator:bus-1")).scalar_one()
    rig.pending("refund:0000aa0000f1:9", 300, payment_ref=None, kind=LoadKind.REFUND, payer_account_id=payable_id)
    report = rig.present()
    assert report.results[0].outcome is LoadOutcome.REFUSED
    assert "E_DEBITS_EXCEED_CREDITS" in report.results[0].reason
    assert rig.state("refund:0000aa0000f1:9") == "pending" and rig.card.registers.balance_fen == 1000
    assert rig.transfers("load:refund") == []
    rig.agree()
