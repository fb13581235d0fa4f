"""The accounts slice's leaves: the password policy and hashing, the two rate limiters, bad bodies.

The Redis limiter runs against the real Redis of ``tests.conftest`` (db 15) under a key prefix
of its own, so runs and other tests sharing that Redis never meet.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from argon2 import PasswordHasher, Type
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clearing import db
from clearing.api import ApiDeps
from clearing.keystore import KeyStore
from portal.accounts import AccountLimits
from portal.errors import CODES, Code, PortalError
from portal.passwords import Passwords, check_policy
from portal.payments import PaymentsClient, PaymentsConfig
from portal.ratelimit import MemoryLimiter, RedisLimiter, Rule
from portal.topup_service import TopupService
from tests.portal.conftest import LOCALSTRIPE_KEY, account_service, fast_passwords
from yikatong.app import assemble

# --- passwords ---------------------------------------------------------------------------------


def test_the_default_hasher_is_argon2id_at_rfc_9106_low_memory_cost() -> None:
    hasher = Passwords().hasher
    assert (hasher.type, hasher.time_cost, hasher.memory_cost, hasher.parallelism) == (Type.ID, 3, 65536, 4)


def test_a_hasher_other_than_argon2id_is_refused() -> None:
    with pytest.raises(ValueError, match="argon2id"):
        Passwords(PasswordHasher(time_cost=1, memory_cost=8, parallelism=1, type=Type.I))


def test_verify_answers_a_new_hash_when_the_parameters_went_up() -> None:
    weak = fast_passwords()
    stored = weak.hash("a good passphrase")
    stronger = Passwords(PasswordHasher(time_cost=2, memory_cost=16, parallelism=1))
    ok, rehashed = stronger.verify(stored, "a good passphrase")
    assert ok and rehashed is not None and stronger.verify(rehashed, "a good passphrase") == (True, None)
    assert stronger.verify(stored, "another passphrase") == (False, None)
    assert stronger.verify("not a hash", "a good passphrase") == (False, None)


@pytest.mark.parametrize("password", ["", "seven77", "12345678", "0" * 128, "a" * 129, "pass\x00word"])
def test_passwords_the_policy_refuses(password: str) -> None:
    with pytest.raises(PortalError) as refused:
        check_policy(password)
    assert refused.value.code is Code.E_PASSWORD_POLICY
    assert not password or password not in refused.value.message


@pytest.mark.parametrize("password", ["eightch!", "1234567a", "a" * 128, "长城长城长城长城"])
def test_passwords_the_policy_takes(password: str) -> None:
    assert check_policy(password) == password


# --- rate limiters ------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_the_memory_window_slides() -> None:
    clock = FakeClock()
    limiter = MemoryLimiter(clock=clock)
    rule = Rule(3, 60)
    assert [limiter.hit("k", rule) for _ in range(4)] == [True, True, True, False]
    assert limiter.hit("other", rule)  # keys are apart
    clock.t += 30
    assert not limiter.hit("k", rule)  # refused attempts are not counted, but the window has not passed
    clock.t += 30.001
    assert limiter.hit("k", rule) and limiter.hit("k", rule) and limiter.hit("k", rule)
    assert not limiter.hit("k", rule)


def test_the_memory_limiter_holds_at_most_keys_max_keys() -> None:
    clock = FakeClock()
    limiter = MemoryLimiter(clock=clock, keys_max=10)
    rule = Rule(1, 60)
    for i in range(25):
        assert limiter.hit(f"k{i}", rule)
    assert len(limiter._log) <= 10
    assert not limiter.hit("k24", rule)  # the newest keys are kept


@pytest.fixture
def redis_limiter(redis_url: str) -> Iterator[RedisLimiter]:
    client = redis.Redis.from_url(redis_url)
    prefix = f"t_ratelimit_{secrets.token_hex(6)}"
    yield RedisLimiter(client, prefix)
    for key in client.scan_iter(f"{prefix}:*"):
        client.delete(key)
    client.close()


def test_the_redis_window_slides_and_is_shared(redis_limiter: RedisLimiter) -> None:
    now = [1_000_000]
    redis_limiter.clock_ms = lambda: now[0]
    rule = Rule(3, 60)
    other_worker = RedisLimiter(redis_limiter.client, redis_limiter.prefix, clock_ms=lambda: now[0])
    assert [redis_limiter.hit("k", rule), other_worker.hit("k", rule), redis_limiter.hit("k", rule)] == [True] * 3
    assert not other_worker.hit("k", rule) and not redis_limiter.hit("k", rule)
    assert redis_limiter.hit("another", rule)
    now[0] += 60_001
    assert redis_limiter.hit("k", rule)
    ttl_ms = redis_limiter.client.pttl(f"{redis_limiter.prefix}:ratelimit:k")
    assert 0 < ttl_ms <= 60_000  # keys expire: a quiet Redis does not fill up


def test_an_unreachable_redis_falls_back_to_the_process() -> None:
    limiter = RedisLimiter(redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2), "t")
    rule = Rule(2, 60)
    assert [limiter.hit("k", rule) for _ in range(3)] == [True, True, False]


# --- any body that does not read: a 4xx with a portal code, never a 500 ----------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=12,
)
FIELDS = ["mobile", "password", "real_name", "id_number", "card_asn", "issuer_id", "amount_fen", "date", "card"]
OBJECTS = st.dictionaries(st.sampled_from(FIELDS), JSON_VALUES, max_size=6)
BODIES = st.one_of(
    st.binary(max_size=200),
    JSON_VALUES.map(lambda v: json.dumps(v).encode()),
    OBJECTS.map(lambda v: json.dumps(v).encode()),
)


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    tmp: Path = tmp_path_factory.mktemp("bodies")
    engine = db.ensure_migrated(f"sqlite:///{tmp / 'portal.db'}")
    wide = Rule(10**9, 1)
    accounts = account_service(engine, limits=AccountLimits(wide, wide, wide, wide, wide))
    payments = PaymentsClient.connect(PaymentsConfig("http://127.0.0.1:9", LOCALSTRIPE_KEY, timeout_s=0.2))
    topups = TopupService(sessions=db.session_factory(engine), payments=payments, webhook_secrets=["whsec_t"])
    app = assemble(ApiDeps(engine, KeyStore.open(tmp / "k.json", os.urandom(32))), topups, portal_enabled=True,
                   accounts=accounts, portal_dev=True)  # fmt: skip
    with TestClient(app) as c:
        who = {"mobile": "13512345678", "password": "a fine passphrase", "real_name": "王五",
               "id_number": "11010519491231002X"}  # fmt: skip
        assert c.post("/api/citizens", json=who).status_code == 201
        login = c.post("/api/sessions", json={"mobile": who["mobile"], "password": who["password"]})
        c.headers["X-CSRF-Token"] = login.json()["csrf_token"]
        yield c
    engine.dispose()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(["/api/citizens", "/api/me/cards", "/api/topups"]), body=BODIES,
       content_type=st.sampled_from(["application/json", "text/plain", None]))  # fmt: skip
def test_a_body_that_does_not_read_is_a_4xx_with_a_code(
    client: TestClient, path: str, body: bytes, content_type: str | None
) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    answer = client.post(path, content=body, headers=headers)
    assert 400 <= answer.status_code < 500 or answer.status_code == 201, (answer.status_code, answer.text)
    if answer.status_code != 201:
        payload: dict[str, Any] = answer.json()
        assert Code(payload["code"]) in CODES and payload["message"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=BODIES)
def test_a_login_body_that_does_not_read_never_logs_in_or_fails(client: TestClient, body: bytes) -> None:
    fresh = TestClient(client.app)
    answer = fresh.post("/api/sessions", content=body, headers={"Content-Type": "application/json"})
    assert answer.status_code in (401, 422, 429), answer.text
    assert "set-cookie" not in answer.headers
