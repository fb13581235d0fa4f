"""schemathesis against the whole served application with the portal on: no input gets a 500.

The app is ``yikatong.app.create_app`` as ``make run`` serves it (portal pages and ``/api``
on, card login on), on a migrated SQLite database with a key store. Every operation of
``/openapi.json`` under ``/api``, ``/webhooks`` and ``/staff`` gets ``MAX_EXAMPLES``
generated requests; half carry a logged-in citizen's session cookie and CSRF token (so the
generator reaches past authentication into the routes' own checks). Each answer must be a
documented status with the documented content type, and never a 5xx other than the
portal's retryable ``503`` (its payment server is not running here, which is how the portal
meets a payment outage).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from pydantic import SecretStr
from schemathesis.checks import not_a_server_error, positive_data_acceptance

from clearing import db
from clearing.registry import ensure_issuers
from tests.portal.conftest import ALICE
from yikatong.demo import open_keystore
from yikatong.settings import Settings

MAX_EXAMPLES = int(os.environ.get("YIKATONG_FUZZ_EXAMPLES", "25"))
PREFIXES = ("/api", "/webhooks", "/staff")
_state: dict[str, str] = {}


@pytest.fixture(scope="module")
def portal_schema(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from fastapi.testclient import TestClient

    from yikatong.app import create_app

    path: Path = tmp_path_factory.mktemp("portal-fuzz")
    config = Settings(
        database_url=f"sqlite:///{path / 'fuzz.db'}",
        keystore=path / "keystore.json",
        kek=SecretStr("44" * 32),
        redis_url=None,
        portal_enabled=True,
        portal_dev=True,
        portal_origin="http://127.0.0.1:9",
        payments_url="http://127.0.0.1:9",  # nothing listens: the payment outage path
    )
    engine = db.ensure_migrated(config.database_url)
    open_keystore(config)
    with db.session_factory(engine)() as session, session.begin():
        ensure_issuers(session, own_city=config.city)
    app = create_app(config)
    with TestClient(app) as client:
        assert client.post("/api/citizens", json=ALICE).status_code == 201
        login = client.post("/api/sessions", json={"mobile": ALICE["mobile"], "password": ALICE["password"]})
        assert login.status_code == 201, login.text
        _state["cookie"] = f"yk_session={login.cookies['yk_session']}"
        _state["csrf"] = login.json()["csrf_token"]
    return schemathesis.openapi.from_asgi("/openapi.json", app)


def _fuzz(operation: Any, *, logged_in: bool) -> None:
    @given(operation.as_strategy())
    @settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def run(case: Any) -> None:
        if logged_in:
            case.headers = {**(case.headers or {}), "Cookie": _state["cookie"], "X-CSRF-Token": _state["csrf"]}
        response = case.call()
        assert response.status_code < 500 or response.status_code == 503, (
            f"{operation.label}: {response.status_code} {response.text[:300]}"
        )
        case.validate_response(response, excluded_checks=[positive_data_acceptance, not_a_server_error])

    run()


def test_no_generated_portal_request_gets_a_server_error(portal_schema: Any) -> None:
    operations = [r.ok() for r in portal_schema.get_all_operations()]
    ours = [op for op in operations if op.path.startswith(PREFIXES)]
    assert len(ours) >= 8, [op.label for op in ours]
    ours.sort(key=lambda op: op.label == "DELETE /api/sessions/current")  # the logout last: it ends the session
    for operation in ours:
        _fuzz(operation, logged_in=False)
        _fuzz(operation, logged_in=True)
