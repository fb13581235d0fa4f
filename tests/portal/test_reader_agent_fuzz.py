"""The reader agent's HTTP surface under generated input: no request gets a 500, every answer is documented.

schemathesis reads the agent's own OpenAPI document (its JSON endpoints) and sends valid and
invalid requests, each as the portal page would (the loopback ``Host``, the portal's
``Origin``), so the generator gets past the origin rules into the bodies, the request registry
and the card. The PIN form is not in the document (it is the agent's page, not an API):
hypothesis sends it any body and content type instead. The reader holds no card, so every
card operation ends in a worded error, never a fault.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import positive_data_acceptance

from portal.reader_agent import AgentConfig, FixedSource, create_app
from terminals.readers import InProcessReader

ORIGIN = "https://portal.yikatong.test"
HOST = "127.0.0.1:8465"
MAX_EXAMPLES = int(os.environ.get("YIKATONG_FUZZ_EXAMPLES", "30"))


@pytest.fixture(scope="module")
def agent_app() -> Any:
    return create_app(AgentConfig(origin=ORIGIN, host_timeout_s=0.05), FixedSource(InProcessReader("desk")))


def test_no_generated_request_gets_a_server_error(agent_app: Any) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", agent_app, headers={"Host": HOST})
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 8, [op.label for op in operations]
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def run(case: Any) -> None:
            case.headers = {**(case.headers or {}), "Host": HOST, "Origin": ORIGIN}
            # pydantic refuses what JSON Schema calls valid (1.0 as an integer): left out, as in clearing's run
            case.call_and_validate(excluded_checks=[positive_data_acceptance])

        run()


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(
    body=st.one_of(st.binary(max_size=3000), st.text(max_size=300).map(str.encode)),
    content_type=st.sampled_from(["application/x-www-form-urlencoded", "text/plain", "multipart/form-data", ""]),
    origin=st.sampled_from(["http://127.0.0.1:8465", ORIGIN, "null"]),
)
def test_any_pin_form_body_is_answered_without_a_fault(
    agent_app: Any, body: bytes, content_type: str, origin: str
) -> None:
    client = TestClient(agent_app, base_url="http://127.0.0.1:8465")
    answer = client.post("/pin", content=body, headers={"Content-Type": content_type, "Origin": origin})
    assert answer.status_code in (200, 403, 404, 422), answer.text
