"""schemathesis against ``/interop/v1`` of the served application: no input gets a 500.

The app is ``yikatong.app.create_app`` (the real issuer judge behind the endpoint) on a migrated
SQLite database with a key store and a signing key. Generated bodies and headers never carry a
valid signature, so every answer must be one of the channel's documented refusals; a 5xx is a
failure except the judge's retryable 503, which generated input cannot reach.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from pydantic import SecretStr
from schemathesis.checks import not_a_server_error, positive_data_acceptance

from clearing import db
from clearing.registry import ensure_issuers
from interop_xian.keys import SigningKeys
from yikatong.demo import open_keystore
from yikatong.settings import Settings

MAX_EXAMPLES = 60


@pytest.fixture(scope="module")
def interop_schema(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from yikatong.app import create_app

    path: Path = tmp_path_factory.mktemp("interop-fuzz")
    config = Settings(
        database_url=f"sqlite:///{path / 'fuzz.db'}", keystore=path / "keystore.json", kek=SecretStr("45" * 32),
        redis_url=None, city="xian",
    )  # fmt: skip
    engine = db.ensure_migrated(config.database_url)
    open_keystore(config)
    with db.session_factory(engine)() as session, session.begin():
        ensure_issuers(session, own_city=config.city)
    SigningKeys.from_settings(config).rotate(now=dt.datetime.now(dt.UTC), overlap=dt.timedelta(days=1))
    return schemathesis.openapi.from_asgi("/openapi.json", create_app(config))


def test_no_generated_interop_request_gets_a_server_error(interop_schema: Any) -> None:
    operations = [r.ok() for r in interop_schema.get_all_operations()]
    ours = [op for op in operations if op.path.startswith("/interop/")]
    assert sorted(op.label for op in ours) == ["POST /interop/v1/batches", "POST /interop/v1/messages"]
    for operation in ours:
        _fuzz(operation)


def _fuzz(operation: Any) -> None:
    @given(operation.as_strategy())
    @settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def run(case: Any) -> None:
        response = case.call()
        assert response.status_code < 500, f"{operation.label}: {response.status_code} {response.text[:300]}"
        case.validate_response(response, excluded_checks=[positive_data_acceptance, not_a_server_error])

    run()
