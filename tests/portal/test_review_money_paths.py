"""Adversarial review of the portal's money paths (issue 10): each test is a finding, fixed.

The reader page relays the load host's calls through the citizen's own browser, so every body
it posts is the citizen's to forge; the tests below post what a hostile page would.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from cardos.os import TearPlan
from clearing import db
from clearing.keystore import KeyStore
from clearing.models import PendingLoad
from tests.portal.test_online_load import OPENING_FEN, TERMINAL, LoadRig, make_rig, outcomes


@pytest.fixture(scope="module")
def keystore(tmp_path_factory: pytest.TempPathFactory) -> KeyStore:
    ks = KeyStore.open(tmp_path_factory.mktemp("ks") / "keystore.json", os.urandom(32))
    ks.init(["xianyang"])
    return ks


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    eng = db.ensure_migrated(f"sqlite:///{tmp_path / 'review.db'}")
    yield eng
    eng.dispose()


@pytest.fixture
def rig(engine: Engine, keystore: KeyStore) -> LoadRig:
    return make_rig(engine, keystore)


def _authorized_counter(rig: LoadRig, load_id: str) -> int:
    with Session(rig.engine) as session:
        load = session.get(PendingLoad, load_id)
        assert load is not None and load.state == "authorized" and load.online_counter is not None
        return load.online_counter


def test_a_forged_resolve_cannot_reopen_a_load_the_card_already_holds(rig: LoadRig) -> None:
    """The card credited the load and the page withheld the TAC; the page then claims, with no proof,
    that the card's online counter never moved. Before the fix clearing believed it, made the load
    pending again, and the next presentation credited the card a second time (purse 2x, ledger 1x)."""
    rig.pending("tu_forged", 500)
    first = rig.present(TearPlan(at_apdu=4, phase="after_commit"))  # the card credited; no TAC reached us
    assert outcomes(first) == [("tu_forged", "in_doubt")]
    assert rig.card.registers.balance_fen == OPENING_FEN + 500
    counter = _authorized_counter(rig, "tu_forged")
    # the hostile page: "the card is still at the load's counter", nothing proved
    forged = rig.browser.portal.post(
        "/api/loads/tu_forged/resolve", json={"terminal_id": TERMINAL, "online_counter": counter}
    )
    assert forged.status_code in (200, 409), forged.text
    assert rig.state("tu_forged") == "authorized"  # still in doubt: only the card can settle it
    # the next (honest) presentation proves the load from the card: posted once, never credited twice
    second = rig.present()
    assert outcomes(second) == [("tu_forged", "recovered")]
    assert rig.card.registers.balance_fen == OPENING_FEN + 500
    assert rig.state("tu_forged") == "posted" and rig.agree() == OPENING_FEN + 500


def test_a_load_torn_before_credit_still_loads_at_the_next_presentation(rig: LoadRig) -> None:
    """The honest twin: torn before CREDIT FOR LOAD's commit, the card never took it; the next
    presentation loads it once (the fresh INITIALIZE's MAC1 is what proves the counter)."""
    rig.pending("tu_before", 300)
    first = rig.present(TearPlan(at_apdu=4, phase="before_commit"))
    assert outcomes(first) == [("tu_before", "in_doubt")]
    assert rig.card.registers.balance_fen == OPENING_FEN and rig.state("tu_before") == "authorized"
    second = rig.present()
    assert outcomes(second) == [("tu_before", "loaded")]
    assert rig.state("tu_before") == "posted" and rig.agree() == OPENING_FEN + 300


# --- a replacement while a top-up of the lost card is paid but not yet a load ------------------------


def _paid_topup(engine: Engine, issuer_id: str, asn: str, amount_fen: int, state: str = "paid") -> str:
    """A top-up whose payment succeeded and whose ``CreateLoad`` has not run yet (the outbox is behind)."""
    import secrets

    from portal.models import PortalOutbox, PortalTopup

    topup_id = "tu_" + secrets.token_hex(16)
    now = dt.datetime.now(dt.UTC)
    paid = state != "payment_pending"
    with Session(engine) as session, session.begin():
        session.add(PortalTopup(
            topup_id=topup_id, issuer_id=issuer_id, card_asn=asn, amount_fen=amount_fen, state=state,
            payment_intent_id="pi_" + secrets.token_hex(8), paid_fen=amount_fen if paid else 0, loaded_fen=0,
            refunded_fen=0, load_voided=False, unmatched=[], created_at=now, updated_at=now,
        ))  # fmt: skip
        if paid:
            session.add(PortalOutbox(topup_id=topup_id, kind="create_load", created_at=now, attempts=1, payload={
                "load_id": topup_id, "card_id": f"{issuer_id}:{asn}", "amount_fen": amount_fen,
                "payment_intent_id": "pi_x"}))  # fmt: skip
    return topup_id


@pytest.mark.parametrize("state", ["paid", "payment_pending"])
def test_a_card_is_not_replaced_while_a_top_up_of_it_may_still_land(
    engine: Engine, keystore: KeyStore, tmp_path: Path, state: str
) -> None:
    """Clearing's check sees only ``pending_loads``: a top-up paid whose load is not made yet (or still
    being paid) slipped through, the replacement moved the balance, and the load was then made on the
    replaced card, which can never take it: the citizen's money sat there until the 30-day window."""
    from clearing.models import PendingLoad as Load
    from tests.portal.conftest import ALICE
    from tests.portal.test_lost_cards import OWN, WAIT_S, citizen, make_rig, report

    lrig = make_rig(engine, keystore, tmp_path)
    try:
        _, asn = lrig.issue(5_000)
        alice = citizen(lrig, ALICE, asn)
        topup_id = _paid_topup(engine, OWN, asn, 1_000, state)
        assert report(alice, asn).status_code == 201
        lrig.clock.advance(WAIT_S)
        clerk = lrig.clerk()
        refused = clerk.post("/staff/api/replacements", json={"issuer_id": OWN, "card_asn": asn})
        assert refused.status_code == 409 and refused.json()["code"] == "E_LOST_LOADS_OPEN", refused.text
        assert lrig.card_row(asn)[0] == "lost"
        if state == "paid":
            # finance refunds it (the load is voided, the refund waits for the provider): then it is replaced
            finance = lrig.clerk("finance", "fin1")
            assert finance.post("/staff/api/refunds", json={"topup_id": topup_id}).status_code == 200
            with Session(engine) as session:
                load = session.get(Load, topup_id)
                assert load is not None and load.state == "cancelled"
            done = clerk.post("/staff/api/replacements", json={"issuer_id": OWN, "card_asn": asn})
            assert done.status_code == 201, done.text
            assert done.json()["moved_fen"] == 5_000
    finally:
        lrig.terminal.journal.close()
        lrig.terminal.denylist.close()


# --- the state machine: an intent set aside as unmatched never becomes the top-up's payment ---------


def test_an_intent_already_refunded_as_unmatched_is_never_the_paid_one() -> None:
    """A success of the intent in use whose amount differs (``amount_received`` short, say) is set aside
    and refunded in full. The sweep's payment window then asks the provider, whose intent shows the
    full ``amount``: before the fix that second success made the top-up paid with the very intent being
    refunded, so the card would be loaded and the payment refunded both."""
    from portal import topups

    t, _ = topups.new_topup("tu_" + "a" * 32, "issuer:card", 1_000)
    t, _ = topups.apply(t, topups.PaymentCreated("pi_one"))
    t, effects = topups.apply(t, topups.PaymentSucceeded("pi_one", 900, "cny"))  # short: set aside
    assert [u.payment_intent_id for u in t.unmatched] == ["pi_one"]
    assert topups.Refund("pi_one", 900) in effects
    t, effects = topups.apply(t, topups.PaymentSucceeded("pi_one", 1_000, "cny"))  # the same intent, read again
    assert t.state is not topups.State.PAID and t.paid_fen == 0
    assert not any(isinstance(e, topups.CreateLoad) for e in effects)


class _Provider:
    """A payment service that knows one succeeded intent (for the sweep's payment window)."""

    def __init__(self, intent_id: str, topup_id: str, amount_fen: int) -> None:
        from portal.payments import PaymentIntent

        self.intent = PaymentIntent(intent_id, amount_fen, "cny", "succeeded", None, {"topup_id": topup_id})

    def retrieve_intent(self, intent_id: str) -> object:
        return self.intent


def test_the_payment_window_ends_a_top_up_whose_only_payment_was_set_aside(engine: Engine) -> None:
    """With the intent in use set aside as unmatched, the sweep must not keep finding "its" success
    every run (a provider call each time, and the top-up counted as about to land for ever)."""
    from portal import topups
    from portal.models import PortalTopup
    from portal.sweep import SweepConfig, Sweeper, SweepReport
    from portal.topup_service import TopupService

    topup_id = "tu_" + "b" * 32
    made = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    with Session(engine) as session, session.begin():
        session.add(PortalTopup(
            topup_id=topup_id, issuer_id="01007120ffffffff", card_asn="7120" + "0" * 16, amount_fen=1_000,
            state="payment_pending", payment_intent_id="pi_one", paid_fen=0, loaded_fen=0, refunded_fen=0,
            load_voided=False, unmatched=[{"payment_intent_id": "pi_one", "amount_fen": 900, "refunded": True,
                                           "refunded_fen": 900}], created_at=made, updated_at=made,
        ))  # fmt: skip
    service = TopupService(sessions=db.session_factory(engine), payments=_Provider("pi_one", topup_id, 1_000),  # type: ignore[arg-type]
                           webhook_secrets=["whsec_t"], clock=lambda: made + dt.timedelta(days=1))  # fmt: skip
    sweeper = Sweeper(service, SweepConfig())
    report = SweepReport()
    sweeper._payment_window(service.clock(), report, set())
    with Session(engine) as session:
        row = session.get(PortalTopup, topup_id)
        assert row is not None and row.state == topups.State.CANCELED.value and row.paid_fen == 0
    assert report.payments_found == 0 and report.payments_expired == 1
