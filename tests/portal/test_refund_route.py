"""``POST /api/topups/{id}/refund`` and the top-up creation limits, against a real localstripe (SQLite, PostgreSQL).

A citizen asks for the payment of a top-up back: the load is voided, then the payment
refunded, once, however often the citizen asks. Only the citizen the card is bound to may
ask (anyone else is told the top-up does not exist), with the session's CSRF token. Creating
top-ups is rate limited per citizen and per client IP, with ``429 E_RATE_LIMITED``.
"""

# ruff: noqa: F811 - the flow module's fixtures are imported by name

from __future__ import annotations

from sqlalchemy.orm import Session

from clearing.models import PendingLoad
from portal.ratelimit import MemoryLimiter, Rule
from portal.topup_service import TopupRateLimits
from tests.portal.conftest import BOB
from tests.portal.test_portal_topup_flow import (  # noqa: F401 - fixtures
    Rig,
    _Receiver,
    hooks,
    paid_topup,
    register_card,
    rig,
)


def refund(rig: Rig, topup_id: str, **kwargs: object) -> tuple[int, dict[str, object]]:
    answer = rig.client.post(f"/api/topups/{topup_id}/refund", **kwargs)  # type: ignore[arg-type]
    return answer.status_code, answer.json()


def test_a_citizen_gets_a_paid_topup_refunded_once_however_often_they_ask(rig: Rig, hooks: type[_Receiver]) -> None:
    register_card(rig.engine, balance_fen=0)
    topup, body, header = paid_topup(rig, hooks, amount_fen=2200)
    assert rig.deliver(body, header).json() == {"status": "applied"}
    status, got = refund(rig, topup["topup_id"])
    assert status == 200, got
    assert (got["state"], got["refunded_fen"], got["loaded_fen"], got["client_secret"]) == ("refunded", 2200, 0, None)
    for _ in range(2):  # a repeat answers the same, and refunds nothing more
        assert refund(rig, topup["topup_id"]) == (status, got)
    assert [(r.status, r.amount) for r in rig.payments.refunds_of(topup["payment_intent_id"])] == [("succeeded", 2200)]
    with Session(rig.engine) as session:
        load = session.get(PendingLoad, topup["topup_id"])
        assert load is not None and load.state == "refunded"
    assert rig.client.get(f"/api/topups/{topup['topup_id']}").json()["state"] == "refunded"
    rig.balanced()


def test_a_topup_with_nothing_to_refund_is_refused_with_the_code(rig: Rig) -> None:
    register_card(rig.engine, balance_fen=0)
    open_topup = rig.topup(1000).json()
    assert open_topup["state"] == "payment_pending"
    status, got = refund(rig, open_topup["topup_id"])
    assert (status, got["code"]) == (409, "E_TOPUP_NOT_REFUNDABLE")
    assert rig.client.get(f"/api/topups/{open_topup['topup_id']}").json()["state"] == "payment_pending"


def test_only_the_bound_citizen_may_ask_with_the_csrf_token(rig: Rig, hooks: type[_Receiver]) -> None:
    register_card(rig.engine, balance_fen=0)
    topup, body, header = paid_topup(rig, hooks, amount_fen=1300)
    assert rig.deliver(body, header).json() == {"status": "applied"}
    token = rig.client.headers.pop("X-CSRF-Token")
    status, got = refund(rig, topup["topup_id"])
    assert (status, got["code"]) == (403, "E_CSRF")
    rig.client.headers["X-CSRF-Token"] = token
    # another citizen, logged in, with a valid CSRF token of their own
    from fastapi.testclient import TestClient

    with TestClient(rig.client.app) as other:
        assert other.post("/api/citizens", json=BOB).status_code == 201
        login = other.post("/api/sessions", json={"mobile": BOB["mobile"], "password": BOB["password"]})
        other.headers["X-CSRF-Token"] = login.json()["csrf_token"]
        answer = other.post(f"/api/topups/{topup['topup_id']}/refund")
        assert (answer.status_code, answer.json()["code"]) == (404, "E_TOPUP_NOT_FOUND")
    with TestClient(rig.client.app) as anonymous:
        answer = anonymous.post(f"/api/topups/{topup['topup_id']}/refund")
        assert (answer.status_code, answer.json()["code"]) == (401, "E_SESSION_REQUIRED")
    for unknown in ("tu_" + "0" * 32, "tu_nope", "x" * 300):
        status, got = refund(rig, unknown)
        assert (status, got["code"]) == (404, "E_TOPUP_NOT_FOUND"), unknown
    assert rig.payments.refunds_of(topup["payment_intent_id"]) == []
    assert rig.client.get(f"/api/topups/{topup['topup_id']}").json()["state"] == "load_pending"


def test_topup_creation_is_rate_limited_per_citizen(rig: Rig) -> None:
    register_card(rig.engine, balance_fen=0)
    rig.service.limiter = MemoryLimiter()
    rig.service.rate_limits = TopupRateLimits(per_citizen=Rule(3, 3600), per_ip=Rule(1000, 3600))
    assert rig.topup(50).json()["code"] == "E_TOPUP_BELOW_MIN"  # a refused attempt counts too
    assert rig.topup(1000).status_code == 201
    assert rig.topup(1000).status_code == 201
    limited = rig.topup(1000)
    assert (limited.status_code, limited.json()["code"]) == (429, "E_RATE_LIMITED")
    assert len(rig.snapshot()[0]) == 2  # nothing written for the limited attempt


def test_topup_creation_is_rate_limited_per_client_ip(rig: Rig) -> None:
    register_card(rig.engine, balance_fen=0)
    rig.service.limiter = MemoryLimiter()
    rig.service.rate_limits = TopupRateLimits(per_citizen=Rule(1000, 3600), per_ip=Rule(1, 3600))
    assert rig.topup(1000).status_code == 201
    limited = rig.topup(1000)
    assert (limited.status_code, limited.json()["code"]) == (429, "E_RATE_LIMITED")


def test_the_refund_route_is_in_the_openapi_document(rig: Rig) -> None:
    paths = rig.client.get("/openapi.json").json()["paths"]
    assert "post" in paths["/api/topups/{topup_id}/refund"]
    assert "429" in paths["/api/topups"]["post"]["responses"]
