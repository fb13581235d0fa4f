"""The top-up sweep against a real localstripe and clearing's tables, on SQLite and PostgreSQL.

The rig is the money-path rig of ``test_portal_topup_flow`` (routes, localstripe, captured
webhooks) with the service's clock in the test's hand, so the payment and load windows can
pass. A card that takes its load does so through the real load flow: an emulated card on an
in-process reader, ``terminals.loading.load_card``, and ``clearing.loads`` authorize/complete.
After every step: each top-up loads at most once, what was loaded plus refunded never exceeds
what was paid (at localstripe, to the fen), and the ledger balances.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from cardos.card import Card as EmulatedCard
from clearing import loads as clearing_loads
from clearing import registry
from clearing.api import ApiDeps
from clearing.contract import (
    CardLoads,
    LoadAuthorizeRequest,
    LoadAuthorizeResponse,
    LoadCompleteRequest,
    LoadCompleteResponse,
    LoadResolveRequest,
    LoadResolveResponse,
)
from clearing.issuance import issue_card
from clearing.keystore import KeyStore
from clearing.ledger import trial_balance
from clearing.models import Card, Counter, LoadState, PendingLoad
from portal import topups
from portal.models import PortalOutbox, PortalSession, PortalTopup
from portal.sweep import SweepConfig, Sweeper, SweepReport, clearing_event
from portal.topup_service import LEASE_PREFIX, LEASE_TOKEN_SPREAD
from terminals.loading import LoadOutcome, load_card
from terminals.readers import InProcessReader
from tests.portal.conftest import bind_directly
from tests.portal.test_portal_payments import pay
from tests.portal.test_portal_topup_flow import (  # noqa: F401 - fixtures
    ASN,
    CITIZEN,
    ISSUER,
    Rig,
    _Receiver,
    hooks,
    paid_topup,
    register_card,
    rig,
    webhook_of,
)
from yikatong.app import assemble

PAYMENT_WINDOW_S = 600
LOAD_WINDOW_S = 3600
TERMINAL = "0000aa0000f1"


class Clock:
    def __init__(self) -> None:
        self.now = dt.datetime.now(dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


@dataclass
class SweepRig:
    rig: Rig
    clock: Clock
    sweeper: Sweeper

    def sweep(self) -> SweepReport:
        report = self.sweeper.run()
        assert report.errors == [], report.errors
        self.invariants()
        return report

    def row(self, topup_id: str) -> PortalTopup:
        with Session(self.rig.engine) as session:
            row = session.get(PortalTopup, topup_id)
            assert row is not None
            return row

    def load(self, topup_id: str) -> PendingLoad | None:
        with Session(self.rig.engine) as session:
            return session.get(PendingLoad, topup_id)

    def refunds(self, intent_id: str) -> list[tuple[str, int]]:
        return [(r.status, r.amount) for r in self.rig.payments.refunds_of(intent_id)]

    def invariants(self) -> None:
        """One load at most per top-up; loaded + refunded <= paid, at localstripe too; the ledger balances."""
        with Session(self.rig.engine) as session:
            trial_balance(session)
            rows = list(session.execute(select(PortalTopup)).scalars())
            for row in rows:
                posted = session.execute(
                    select(PendingLoad).where(PendingLoad.id == row.topup_id, PendingLoad.state == "posted")
                ).all()
                assert len(posted) <= 1
                assert row.loaded_fen == (row.amount_fen if posted else 0), row.topup_id
                assert row.loaded_fen + row.refunded_fen <= row.paid_fen, row.topup_id
                if row.payment_intent_id is not None and row.paid_fen:
                    at_provider = sum(a for s, a in self.refunds(row.payment_intent_id) if s == "succeeded")
                    assert at_provider == row.refunded_fen, (row.topup_id, at_provider, row.refunded_fen)
                    assert row.loaded_fen + at_provider <= row.paid_fen

    def idle(self) -> None:
        """Nothing left to do: a further run moves nothing and the outbox holds nothing due."""
        before = self.snapshot()
        report = self.sweep()
        assert (report.effects_requeued, self.snapshot()) == (0, before)
        self.rig.balanced()

    def snapshot(self) -> tuple[Any, ...]:
        with Session(self.rig.engine) as session:
            tops = session.execute(select(PortalTopup.topup_id, PortalTopup.state, PortalTopup.refunded_fen)).all()
            loads = session.execute(select(PendingLoad.id, PendingLoad.state)).all()
        return tuple(sorted(tops)), tuple(sorted(loads))


@pytest.fixture
def sw(rig: Rig) -> Iterator[SweepRig]:  # noqa: F811
    clock = Clock()
    rig.service.clock = clock
    rig.service.load_window_s = LOAD_WINDOW_S
    config = SweepConfig(payment_window_s=PAYMENT_WINDOW_S, load_window_s=LOAD_WINDOW_S, stale_after_s=0, batch_max=20)
    yield SweepRig(rig, clock, Sweeper(rig.service, config))


def delivered_paid_topup(sw: SweepRig, hooks: type[_Receiver], amount_fen: int = 3000) -> dict[str, Any]:  # noqa: F811
    topup, body, header = paid_topup(sw.rig, hooks, amount_fen=amount_fen)
    assert sw.rig.deliver(body, header).json() == {"status": "applied"}
    assert sw.row(topup["topup_id"]).state == "load_pending"
    return topup


# --- the payment window -------------------------------------------------------------------


def test_a_payment_that_never_completes_is_canceled_after_the_window(sw: SweepRig) -> None:
    register_card(sw.rig.engine, balance_fen=0)
    created = sw.rig.topup(2000).json()
    assert created["state"] == "payment_pending"
    sw.clock.advance(PAYMENT_WINDOW_S - 1)
    assert sw.sweep().payments_expired == 0 and sw.row(created["topup_id"]).state == "payment_pending"
    sw.clock.advance(2)
    report = sw.sweep()
    assert report.payments_expired == 1
    assert sw.row(created["topup_id"]).state == "canceled"
    assert sw.rig.payments.retrieve_intent(created["payment_intent_id"]).status == "canceled"
    assert sw.load(created["topup_id"]) is None
    sw.idle()


def test_a_payment_whose_webhook_was_lost_is_loaded_not_canceled(sw: SweepRig) -> None:
    register_card(sw.rig.engine, balance_fen=0)
    created = sw.rig.topup(2000).json()
    assert pay(sw.rig.url, created["payment_intent_id"]).status_code == 200  # its webhook is never delivered
    sw.clock.advance(PAYMENT_WINDOW_S + 1)
    report = sw.sweep()
    assert (report.payments_found, report.payments_expired) == (1, 0)
    row = sw.row(created["topup_id"])
    assert (row.state, row.paid_fen) == ("load_pending", 2000)
    load = sw.load(created["topup_id"])
    assert load is not None and load.state == "pending"
    # clearing's expires_at is the end of the load window, counted from when the load was made
    assert load.expires_at == sw.clock.now + dt.timedelta(seconds=LOAD_WINDOW_S)
    sw.idle()


def test_a_payment_after_the_window_expired_it_is_refunded_not_loaded(sw: SweepRig) -> None:
    """Raced: the citizen pays just as the sweep cancels; the cancel is refused, the success found."""
    register_card(sw.rig.engine, balance_fen=0)
    created = sw.rig.topup(1500).json()
    sw.clock.advance(PAYMENT_WINDOW_S + 1)
    service = sw.rig.service
    service.sweep_apply(created["topup_id"], lambda *_: topups.PaymentWindowExpired())  # the sweep's decision
    assert pay(sw.rig.url, created["payment_intent_id"]).status_code == 200  # then the payment lands
    report = sw.sweep()  # CancelPaymentIntent is refused: the intent is looked at and its success refunded
    assert report.effects_run >= 1
    row = sw.row(created["topup_id"])
    assert row.state == "canceled" and row.unmatched[0]["refunded"] is True
    assert sw.refunds(created["payment_intent_id"]) == [("succeeded", 1500)]
    assert sw.load(created["topup_id"]) is None
    sw.idle()


# --- the load window ----------------------------------------------------------------------


def test_a_paid_topup_never_loaded_is_refunded_once_after_the_load_window(
    sw: SweepRig,
    hooks: type[_Receiver],  # noqa: F811
) -> None:
    register_card(sw.rig.engine, balance_fen=0)
    topup = delivered_paid_topup(sw, hooks)
    sw.clock.advance(LOAD_WINDOW_S - 1)
    assert sw.sweep().loads_expired == 0 and sw.row(topup["topup_id"]).state == "load_pending"
    sw.clock.advance(2)
    reports: list[SweepReport] = []
    start = threading.Barrier(2)

    def run() -> None:
        start.wait()
        reports.append(sw.sweeper.run())

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert [r.errors for r in reports] == [[], []]
    assert sum(r.loads_expired for r in reports) == 1
    sw.sweep()  # whatever a lease made one runner leave, the next run finishes
    row = sw.row(topup["topup_id"])
    assert (row.state, row.refund_reason, row.refunded_fen, row.loaded_fen) == ("refunded", "expired", 3000, 0)
    assert sw.refunds(topup["payment_intent_id"]) == [("succeeded", 3000)]
    load = sw.load(topup["topup_id"])
    assert load is not None and load.state == "refunded"
    sw.idle()


def test_a_crash_after_the_provider_refunded_refunds_once(sw: SweepRig, hooks: type[_Receiver]) -> None:  # noqa: F811
    register_card(sw.rig.engine, balance_fen=0)
    topup = delivered_paid_topup(sw, hooks)
    real = sw.rig.service.payments

    class CrashAfterRefund:
        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

        def refund_once(self, **kwargs: Any) -> Any:
            real.refund_once(**kwargs)
            raise RuntimeError("the process died before the answer was written")

    sw.rig.service.payments = CrashAfterRefund()  # type: ignore[assignment]
    sw.clock.advance(LOAD_WINDOW_S + 1)
    report = sw.sweeper.run()
    assert report.loads_expired == 1
    row = sw.row(topup["topup_id"])
    assert (row.state, row.load_voided, row.refunded_fen) == ("refund_requested", True, 0)
    assert sw.refunds(topup["payment_intent_id"]) == [("succeeded", 3000)]  # refunded; we do not know yet
    sw.rig.service.payments = real
    sw.sweep()
    row = sw.row(topup["topup_id"])
    assert (row.state, row.refunded_fen) == ("refunded", 3000)
    assert sw.refunds(topup["payment_intent_id"]) == [("succeeded", 3000)]  # not a second time
    sw.idle()


def test_a_runner_that_died_holding_the_lease_is_taken_over_after_it_runs_out(
    sw: SweepRig,
    hooks: type[_Receiver],  # noqa: F811
) -> None:
    register_card(sw.rig.engine, balance_fen=0)
    topup = delivered_paid_topup(sw, hooks)
    sw.clock.advance(LOAD_WINDOW_S + 1)
    # The sweep decided and the load was voided; then the runner took the refund's lease and died.
    sw.rig.service.sweep_apply(topup["topup_id"], lambda *_: topups.LoadWindowExpired())
    sw.rig.service.run_effects(topup["topup_id"], batch_max=1)  # the CancelLoad only
    with Session(sw.rig.engine) as session, session.begin():
        (refund_id,) = session.execute(
            select(PortalOutbox.id).where(PortalOutbox.kind == "refund", PortalOutbox.done_at.is_(None))
        ).scalars()
        until_ms = int(sw.clock.now.timestamp() * 1000) + sw.rig.service.lease_s * 1000
        session.add(Counter(name=f"{LEASE_PREFIX}{refund_id}", value=until_ms * LEASE_TOKEN_SPREAD))
    sw.sweep()
    assert sw.row(topup["topup_id"]).state == "refund_requested" and sw.refunds(topup["payment_intent_id"]) == []
    sw.clock.advance(sw.rig.service.lease_s + 1)
    sw.sweep()
    assert sw.row(topup["topup_id"]).state == "refunded"
    assert sw.refunds(topup["payment_intent_id"]) == [("succeeded", 3000)]
    with Session(sw.rig.engine) as session:
        assert session.get(Counter, f"{LEASE_PREFIX}{refund_id}") is None  # released with the answer
    sw.idle()


def test_a_load_clearing_expired_becomes_refunded(sw: SweepRig, hooks: type[_Receiver]) -> None:  # noqa: F811
    register_card(sw.rig.engine, balance_fen=0)
    topup = delivered_paid_topup(sw, hooks, amount_fen=4200)
    sw.clock.advance(LOAD_WINDOW_S)
    with Session(sw.rig.engine) as session, session.begin():
        assert clearing_loads.expire(session, sw.clock.now) == [topup["topup_id"]]  # clearing's own expiry
    report = sw.sweep()
    assert (report.loads_voided, report.loads_expired) == (1, 0)
    row = sw.row(topup["topup_id"])
    assert (row.state, row.refund_reason, row.refunded_fen) == ("refunded", "expired", 4200)
    assert sw.refunds(topup["payment_intent_id"]) == [("succeeded", 4200)]
    load = sw.load(topup["topup_id"])
    assert load is not None and load.state == "refunded"
    sw.idle()


def test_a_refund_made_at_the_provider_whose_webhook_never_came_stops_the_load(
    sw: SweepRig,
    hooks: type[_Receiver],  # noqa: F811
) -> None:
    register_card(sw.rig.engine, balance_fen=0)
    topup = delivered_paid_topup(sw, hooks, amount_fen=2500)
    sw.rig.payments.refund(
        payment_intent_id=topup["payment_intent_id"], amount_fen=2500, idempotency_key="dash", topup_id="x"
    )  # a clerk in the dashboard; its webhook is lost
    report = sw.sweep()
    assert report.refunds_found == 1
    row = sw.row(topup["topup_id"])
    assert (row.state, row.refund_reason, row.refunded_fen) == ("refunded", "external", 2500)
    load = sw.load(topup["topup_id"])
    assert load is not None and load.state == "refunded"
    assert sw.refunds(topup["payment_intent_id"]) == [("succeeded", 2500)]
    sw.idle()


# --- a load taken at a validator -----------------------------------------------------------


class ClearingHost:
    """The load host in process: ``clearing.loads`` in a transaction per call (what the API does)."""

    def __init__(self, engine: Engine, keystore: KeyStore, clock: Clock) -> None:
        self.engine, self.keystore, self.clock = engine, keystore, clock

    def pending(self, issuer_id: str, card_asn: str) -> CardLoads:
        with Session(self.engine) as session:
            return clearing_loads.for_card(session, issuer_id, card_asn)

    def authorize(self, load_id: str, req: LoadAuthorizeRequest) -> LoadAuthorizeResponse:
        with Session(self.engine) as session, session.begin():
            return clearing_loads.authorize(session, self.keystore, load_id, req, self.clock.now)

    def complete(self, load_id: str, req: LoadCompleteRequest) -> LoadCompleteResponse:
        with Session(self.engine) as session, session.begin():
            return clearing_loads.complete(session, self.keystore, load_id, req)

    def resolve(self, load_id: str, req: LoadResolveRequest) -> LoadResolveResponse:
        with Session(self.engine) as session, session.begin():
            return clearing_loads.resolve(session, self.keystore, load_id, req, self.clock.now)


def test_a_load_completed_at_a_validator_is_learned_by_the_sweep(
    sw: SweepRig,
    hooks: type[_Receiver],  # noqa: F811
    tmp_path: Path,
) -> None:
    keystore = KeyStore.open(tmp_path / "validator-keys.json", os.urandom(32))
    keystore.init(["xianyang"])
    with Session(sw.rig.engine) as session, session.begin():
        registry.ensure_issuers(session, own_city="xianyang")
        image, card_row = issue_card(
            session, keystore, issuer_id="xianyang", card_type="ordinary", balance_fen=1000, now=sw.clock.now
        )
        issuer, asn = card_row.issuer_id, card_row.card_asn
    card = EmulatedCard.from_image(image)
    bind_directly(sw.rig.engine, CITIZEN["mobile"], issuer, asn)
    created = sw.rig.client.post(
        "/api/topups", json={"card": {"issuer_id": issuer, "card_asn": asn}, "amount_fen": 800}
    )
    assert created.status_code == 201, created.text
    topup = created.json()
    pay(sw.rig.url, topup["payment_intent_id"])
    assert sw.rig.deliver(*webhook_of(hooks, topup["payment_intent_id"], "payment_intent.succeeded")).json() == {
        "status": "applied"
    }
    sw.clock.advance(60)
    reader = InProcessReader("kiosk", card)
    report = load_card(reader, ClearingHost(sw.rig.engine, keystore, sw.clock), TERMINAL)
    reader.disconnect()
    assert [(r.load_id, r.outcome) for r in report.results] == [(topup["topup_id"], LoadOutcome.LOADED)]
    assert card.registers.balance_fen == 1800
    assert sw.row(topup["topup_id"]).state == "load_pending"  # nobody told the portal
    swept = sw.sweep()
    assert swept.loads_completed == 1
    row = sw.row(topup["topup_id"])
    assert (row.state, row.loaded_fen, row.refunded_fen) == ("loaded", 800, 0)
    sw.clock.advance(LOAD_WINDOW_S + 1)  # the window passing changes nothing for a loaded top-up
    assert sw.sweep().loads_expired == 0 and sw.refunds(topup["payment_intent_id"]) == []
    with Session(sw.rig.engine) as session:
        shadow = session.execute(select(Card.shadow_balance_fen).where(Card.card_asn == asn)).scalar_one()
    assert shadow == card.registers.balance_fen == 1800
    sw.idle()


# --- sessions, the background task, the command ---------------------------------------------


def _session_row(engine: Engine, token_hash: str, expires_at: dt.datetime) -> None:
    from portal.models import PortalCitizen

    with Session(engine) as session, session.begin():
        citizen_id = session.execute(select(PortalCitizen.id).where(PortalCitizen.mobile == CITIZEN["mobile"])).scalar()
        assert citizen_id is not None
        session.add(
            PortalSession(
                id=token_hash, citizen_id=citizen_id, csrf_token="x", expires_at=expires_at, assurance="account"
            )
        )


def _session_ids(engine: Engine) -> set[str]:
    with Session(engine) as session:
        return set(session.execute(select(PortalSession.id)).scalars())


def test_expired_sessions_are_swept_and_live_ones_kept(sw: SweepRig) -> None:
    _session_row(sw.rig.engine, "a" * 64, sw.clock.now - dt.timedelta(seconds=1))
    _session_row(sw.rig.engine, "b" * 64, sw.clock.now + dt.timedelta(hours=1))
    live = _session_ids(sw.rig.engine) - {"a" * 64}
    assert sw.sweep().sessions_deleted == 1
    assert _session_ids(sw.rig.engine) == live
    assert sw.rig.client.get("/api/me").status_code == 200  # the rig's own login still works


def test_the_server_sweeps_in_the_background_while_it_is_up(sw: SweepRig, tmp_path: Path) -> None:
    from tests.portal.conftest import account_service

    _session_row(sw.rig.engine, "c" * 64, sw.clock.now - dt.timedelta(seconds=1))
    deps = ApiDeps(sw.rig.engine, KeyStore.open(tmp_path / "k.json", os.urandom(32)))
    app = assemble(
        deps,
        sw.rig.service,
        portal_enabled=True,
        accounts=account_service(sw.rig.engine),
        sweeper=sw.sweeper,
        sweep_interval_s=0.05,
    )
    with TestClient(app):
        deadline = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=20)
        while "c" * 64 in _session_ids(sw.rig.engine):
            assert dt.datetime.now(dt.UTC) < deadline, "the background sweep never ran"
            threading.Event().wait(0.05)


def test_the_sweep_command_reports_as_json(
    sw: SweepRig, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    from typer.testing import CliRunner

    from yikatong.cli import app
    from yikatong.settings import get_settings

    url = sw.rig.engine.url.render_as_string(hide_password=False)
    if not url.startswith("sqlite"):
        pytest.skip("the command is checked on the SQLite file; PostgreSQL schemas are per module")
    register_card(sw.rig.engine, balance_fen=0)
    created = sw.rig.topup(1000).json()
    with Session(sw.rig.engine) as session, session.begin():  # made two hours ago, never paid
        row = session.get(PortalTopup, created["topup_id"])
        assert row is not None
        row.created_at = dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)
    monkeypatch.setenv("YIKATONG_DATABASE_URL", url)
    monkeypatch.setenv("YIKATONG_PAYMENTS_URL", sw.rig.url)
    get_settings.cache_clear()
    request.addfinalizer(get_settings.cache_clear)
    result = CliRunner().invoke(app, ["portal", "sweep", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["payments_expired"] == 1 and report["errors"] == []
    assert sw.row(created["topup_id"]).state == "canceled"
    result = CliRunner().invoke(app, ["portal", "sweep"])
    assert result.exit_code == 0 and "payments expired" in result.output


def test_the_sweep_command_exits_1_naming_what_it_could_not_sweep(
    sw: SweepRig, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    from typer.testing import CliRunner

    from yikatong.cli import app
    from yikatong.settings import get_settings

    url = sw.rig.engine.url.render_as_string(hide_password=False)
    if not url.startswith("sqlite"):
        pytest.skip("the command is checked on the SQLite file")
    register_card(sw.rig.engine, balance_fen=0)
    created = sw.rig.topup(1000).json()
    with Session(sw.rig.engine) as session, session.begin():
        row = session.get(PortalTopup, created["topup_id"])
        assert row is not None
        row.created_at = dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)
    monkeypatch.setenv("YIKATONG_DATABASE_URL", url)
    monkeypatch.setenv("YIKATONG_PAYMENTS_URL", "http://127.0.0.1:9")  # the provider is down
    get_settings.cache_clear()
    request.addfinalizer(get_settings.cache_clear)
    result = CliRunner().invoke(app, ["portal", "sweep"])
    assert result.exit_code == 1
    assert "E_PAYMENTS_UNAVAILABLE" in result.output and created["topup_id"] in result.output
    assert sw.row(created["topup_id"]).state == "payment_pending"  # not canceled without asking the provider


# --- the pure decision ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "voided", "load_state", "expected"),
    [
        ("paid", False, "pending", topups.LoadCreated()),
        ("paid", False, "authorized", topups.LoadCreated()),
        ("load_pending", False, "pending", None),
        ("load_pending", False, "authorized", None),
        ("load_pending", False, "posted", topups.LoadCompleted()),
        ("refund_requested", False, "posted", topups.LoadCompleted()),
        ("load_pending", False, "expired", topups.LoadVoided()),
        ("paid", False, "cancelled", topups.LoadVoided()),
        ("refund_requested", False, "cancelled", topups.LoadVoided()),
        ("refund_requested", True, "cancelled", None),  # already known
        ("loaded", False, "posted", None),
        ("refunded", True, "refunded", None),
        ("load_pending", False, None, None),
    ],
)
def test_what_clearing_tells_a_topup(
    state: str, voided: bool, load_state: str | None, expected: topups.Event | None
) -> None:
    s = topups.State(state)
    paid = s in topups.HOLDS_PAYMENT
    t = topups.Topup(
        "tu_" + "1" * 32,
        f"{ISSUER}:{ASN}",
        100,
        state=s,
        payment_intent_id="pi_a",
        paid_fen=100 if paid else 0,
        loaded_fen=100 if s is topups.State.LOADED else 0,
        refunded_fen=100 if s is topups.State.REFUNDED else 0,
        load_voided=voided,
    )
    assert clearing_event(t, load_state) == expected
    assert load_state is None or load_state in tuple(LoadState)


def test_the_payment_service_unreachable_leaves_everything_due(sw: SweepRig) -> None:
    """A sweep that cannot ask the provider cancels nothing and says so; the next run finishes."""
    register_card(sw.rig.engine, balance_fen=0)
    created = sw.rig.topup(1000).json()
    sw.clock.advance(PAYMENT_WINDOW_S + 1)
    real = sw.rig.service.payments
    from portal.payments import PaymentsClient, PaymentsConfig

    sw.rig.service.payments = PaymentsClient.connect(PaymentsConfig("http://127.0.0.1:9", "sk_x", timeout_s=1))
    report = sw.sweeper.run()
    assert report.payments_expired == 0 and len(report.errors) == 1 and "E_PAYMENTS_UNAVAILABLE" in report.errors[0]
    assert sw.row(created["topup_id"]).state == "payment_pending"
    sw.rig.service.payments = real
    assert sw.sweep().payments_expired == 1
