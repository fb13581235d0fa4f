"""Card login through the API, with tokens made by the emulated card itself.

Cards are issued by ``clearing.issuance`` from a real key store (its issuer CA signs the
card certificate); the token is made as the reader agent will make it: SELECT the citizen-auth
application, READ BINARY the certificate, VERIFY the PIN, INTERNAL AUTHENTICATE over
``SHA-256(origin) || SHA-256(nonce)``, DER signature transcoded to ``r || s``. SQLite and
PostgreSQL, the real app (``yikatong.app.assemble``) under FastAPI's TestClient; the nonce
store in the process, and once in a real Redis (db 15, own prefix).
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib
import json
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, select, text, update
from sqlalchemy.orm import Session

from cardos.apdu import split_response
from cardos.card import Card
from cardos.image import AuthState, CardImage
from cardos.profile import AID_AUTH
from clearing import db, denylist, registry
from clearing.api import ApiDeps
from clearing.issuance import issue_card, make_auth_material
from clearing.keystore import KeyStore
from clearing.models import Base
from clearing.models import Card as CardRow
from portal.card_login import (
    CardLoginLimits,
    CardLoginService,
    Challenge,
    MemoryNonceStore,
    NonceStore,
    RedisNonceStore,
    challenge_hash,
    check_origin,
    keystore_anchors,
)
from portal.models import PortalCardBinding, PortalSession
from portal.payments import PaymentsClient, PaymentsConfig
from portal.ratelimit import MemoryLimiter, Rule
from portal.topup_service import TopupService
from tests.portal.conftest import ALICE, BOB, LOCALSTRIPE_KEY, account_service
from yikatong.app import assemble

ORIGIN = "https://portal.yikatong.test"
PIN = "246810"
XY = "01007120ffffffff"
APP_VERSION = "https://yikatong.test/reader-agent/0.1"


# --- the database, the key stores -------------------------------------------------------------


@pytest.fixture(scope="module")
def pg_schema(pg_url: str) -> Iterator[tuple[str, str]]:
    with db.isolated_schema(pg_url, prefix="t_card_login_") as schema:
        db.upgrade(pg_url, schema=schema)
        yield pg_url, schema


def _engine(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Engine:
    if kind == "sqlite":
        return db.ensure_migrated(f"sqlite:///{tmp_path / 'card_login.db'}")
    url, schema = request.getfixturevalue("pg_schema")
    eng = db.make_engine(url, schema=schema)
    with eng.begin() as conn:
        conn.execute(text("SET LOCAL session_replication_role = replica"))  # accounts refuse TRUNCATE
        names = ", ".join(t for t in Base.metadata.tables if t != "taps_default")
        conn.execute(text(f"TRUNCATE TABLE {names} RESTART IDENTITY CASCADE"))
    return eng


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    eng = _engine(request.param, tmp_path, request)
    yield eng
    eng.dispose()


@pytest.fixture
def sqlite_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    eng = _engine("sqlite", tmp_path, request)
    yield eng
    eng.dispose()


@pytest.fixture(scope="module")
def keystore(tmp_path_factory: pytest.TempPathFactory) -> KeyStore:
    ks = KeyStore.open(tmp_path_factory.mktemp("ks") / "keystore.json", os.urandom(32))
    ks.init(["xianyang"])
    return ks


@pytest.fixture(scope="module")
def other_keystore(tmp_path_factory: pytest.TempPathFactory) -> KeyStore:
    """Another store with a CA for the same issuer: same subject name, another key."""
    ks = KeyStore.open(tmp_path_factory.mktemp("ks_other") / "keystore.json", os.urandom(32))
    ks.init(["xianyang"])
    return ks


# --- the rig --------------------------------------------------------------------------------------


@dataclass
class Clock:
    now: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


@dataclass
class Rig:
    engine: Engine
    keystore: KeyStore
    clock: Clock
    app: Any
    card_login: CardLoginService

    def client(self) -> TestClient:
        return TestClient(self.app)

    def issue(self) -> tuple[Card, str]:
        """A social security card with the citizen-auth application, issued now."""
        with Session(self.engine) as session, session.begin():
            registry.ensure_issuers(session, own_city="xianyang")
            image, row = issue_card(
                session, self.keystore, issuer_id="xianyang", card_type="social_security", pin=PIN, now=self.clock.now
            )
            asn = row.card_asn
        return Card.from_image(image), asn

    def bindings(self) -> list[tuple[int, str, str]]:
        with Session(self.engine) as session:
            rows = session.execute(
                select(PortalCardBinding.citizen_id, PortalCardBinding.card_asn, PortalCardBinding.how)
            ).all()
            return [(r[0], r[1], r[2]) for r in rows]

    def sessions(self) -> list[tuple[str, int, str]]:
        with Session(self.engine) as session:
            rows = session.execute(select(PortalSession.id, PortalSession.citizen_id, PortalSession.assurance)).all()
            return [(r[0], r[1], r[2]) for r in rows]


def make_rig(
    engine: Engine, keystore: KeyStore, tmp_path: Path, *, store: NonceStore | None = None, limits: Rule | None = None
) -> Rig:
    clock = Clock()
    limiter = MemoryLimiter(clock=lambda: clock.now.timestamp())
    accounts = account_service(engine, limiter=limiter, clock=clock)
    card_limits = CardLoginLimits(limits, limits) if limits is not None else CardLoginLimits()
    card_login = CardLoginService(
        accounts=accounts,
        origin=ORIGIN,
        anchors=keystore_anchors(keystore),
        store=store or MemoryNonceStore(clock=lambda: clock.now.timestamp()),
        limits=card_limits,
    )
    payments = PaymentsClient.connect(PaymentsConfig("http://127.0.0.1:9", LOCALSTRIPE_KEY, timeout_s=0.5))
    topups = TopupService(sessions=db.session_factory(engine), payments=payments, webhook_secrets=["whsec_t"])
    deps = ApiDeps(engine, keystore)
    app = assemble(deps, topups, portal_enabled=True, accounts=accounts, portal_dev=True, card_login=card_login)
    return Rig(engine, keystore, clock, app, card_login)


@pytest.fixture
def rig(engine: Engine, keystore: KeyStore, tmp_path: Path) -> Rig:
    return make_rig(engine, keystore, tmp_path)


def register_and_login(client: TestClient, who: dict[str, str]) -> str:
    assert client.post("/api/citizens", json=who).status_code == 201
    answer = client.post("/api/sessions", json={"mobile": who["mobile"], "password": who["password"]})
    assert answer.status_code == 201, answer.text
    client.headers["X-CSRF-Token"] = answer.json()["csrf_token"]
    return str(client.cookies["yk_session"])


def challenge(client: TestClient) -> str:
    answer = client.get("/api/card-login/challenge")
    assert answer.status_code == 200, answer.text
    assert answer.headers["cache-control"] == "no-store"
    nonce = answer.json()["nonce"]
    assert isinstance(nonce, str)
    return nonce


# --- the card's side: what the reader agent will do -------------------------------------------------


def _send(card: Card, apdu: bytes) -> bytes:
    data, sw = split_response(card.transmit(apdu))
    assert sw == 0x9000, f"{apdu.hex()} -> {sw:04X}"
    return data


def card_token(card: Card, origin: str, nonce: str, *, pin: str = PIN) -> dict[str, str]:
    """A web-eid:1.0 token from the emulated card: the certificate and its signature of our challenge."""
    card.power_on()
    try:
        _send(card, bytes([0x00, 0xA4, 0x04, 0x00, len(AID_AUTH)]) + AID_AUTH + b"\x00")
        der = _send(card, bytes.fromhex("00B08100000000"))  # SFI 0x01, extended Le: the whole certificate
        _send(card, bytes.fromhex("0020000106") + pin.encode("ascii"))
        signature_der = _send(card, bytes.fromhex("0088000040") + challenge_hash(origin, nonce) + b"\x00")
    finally:
        card.power_off()
    r, s = decode_dss_signature(signature_der)
    return {
        "unverifiedCertificate": base64.b64encode(der).decode(),
        "algorithm": "ES256",
        "signature": base64.b64encode(r.to_bytes(32, "big") + s.to_bytes(32, "big")).decode(),
        "format": "web-eid:1.0",
        "appVersion": APP_VERSION,
    }


def post_token(client: TestClient, token: dict[str, str]) -> Any:
    return client.post("/api/card-login", json=token)


def refused(answer: Any, status: int, code: str) -> None:
    assert (answer.status_code, answer.json()["code"]) == (status, code), answer.text
    assert "set-cookie" not in answer.headers or "yk_session" not in answer.headers["set-cookie"]


# --- logging in ---------------------------------------------------------------------------------------


def test_card_login_binds_the_card_rotates_the_session_and_logs_in_at_card_level(rig: Rig) -> None:
    card, asn = rig.issue()
    client = rig.client()
    account_token = register_and_login(client, ALICE)
    token = card_token(card, ORIGIN, challenge(client))
    answer = post_token(client, token)
    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert body["assurance"] == "card" and body["newly_bound"] is True
    assert body["card"] == {"issuer_id": XY, "card_asn": asn}
    assert body["citizen"]["mobile_masked"] == "139****5678"
    cookies = answer.headers.get_list("set-cookie")
    session_cookie = next(c for c in cookies if c.startswith("yk_session="))
    assert "HttpOnly" in session_cookie and "SameSite=lax" in session_cookie
    assert any(c.startswith("yk_card_challenge=") and "Max-Age=0" in c for c in cookies)
    # rotation: the account session is gone, the card session is the only one
    new_token = client.cookies["yk_session"]
    assert new_token != account_token
    sessions = rig.sessions()
    assert [(sid, assurance) for sid, _, assurance in sessions] == [(hashlib.sha256(new_token.encode()).hexdigest(),
                                                                      "card")]  # fmt: skip
    me = client.get("/api/me")
    assert me.status_code == 200 and me.json()["assurance"] == "card"
    old = TestClient(rig.app, cookies={"yk_session": account_token})
    assert old.get("/api/me").json()["code"] == "E_SESSION_REQUIRED"
    citizen_id = sessions[0][1]
    assert rig.bindings() == [(citizen_id, asn, "card_login")]
    cards = client.get("/api/me/cards").json()["cards"]
    assert [(c["card_asn"], c["how"]) for c in cards] == [(asn, "card_login")]

    # a later card login needs no password: the bound card names its citizen
    other_browser = rig.client()
    again = post_token(other_browser, card_token(card, ORIGIN, challenge(other_browser)))
    assert again.status_code == 201, again.text
    assert (again.json()["assurance"], again.json()["newly_bound"]) == ("card", False)
    assert {c for _, c, _ in rig.sessions()} == {citizen_id}
    assert len(rig.sessions()) == 2  # each browser its own session


def test_an_unbound_card_without_an_account_session_is_refused(rig: Rig) -> None:
    card, _ = rig.issue()
    client = rig.client()
    refused(post_token(client, card_token(card, ORIGIN, challenge(client))), 403, "E_CARD_LOGIN_UNBOUND")
    assert rig.bindings() == [] and rig.sessions() == []


def test_a_card_bound_to_another_citizen_is_refused_to_a_logged_in_citizen(rig: Rig) -> None:
    card, asn = rig.issue()
    alice = rig.client()
    register_and_login(alice, ALICE)
    assert post_token(alice, card_token(card, ORIGIN, challenge(alice))).status_code == 201
    bob = rig.client()
    bob_token = register_and_login(bob, BOB)
    refused(post_token(bob, card_token(card, ORIGIN, challenge(bob))), 409, "E_CARD_BOUND_ELSEWHERE")
    assert [a for _, a, _ in rig.bindings()] == [asn]
    assert bob.cookies["yk_session"] == bob_token and bob.get("/api/me").json()["assurance"] == "account"


# --- what must be refused --------------------------------------------------------------------------


def test_a_replayed_token_is_refused(rig: Rig) -> None:
    card, _ = rig.issue()
    client = rig.client()
    register_and_login(client, ALICE)
    nonce = challenge(client)
    cookie_before = client.cookies["yk_card_challenge"]
    token = card_token(card, ORIGIN, nonce)
    assert post_token(client, token).status_code == 201
    refused(post_token(client, token), 401, "E_CARD_LOGIN_NO_CHALLENGE")  # the cookie was dropped
    replay = TestClient(rig.app, cookies={"yk_card_challenge": cookie_before})  # kept by an attacker
    refused(post_token(replay, token), 401, "E_CARD_LOGIN_NO_CHALLENGE")
    fresh = rig.client()
    challenge(fresh)  # a new challenge: the old signature is not over its nonce
    refused(post_token(fresh, token), 401, "E_CARD_LOGIN_SIGNATURE")


def test_a_failed_attempt_spends_the_challenge(rig: Rig) -> None:
    card, _ = rig.issue()
    client = rig.client()
    register_and_login(client, ALICE)
    token = card_token(card, ORIGIN, challenge(client))
    refused(post_token(client, {**token, "algorithm": "ES384"}), 422, "E_CARD_LOGIN_ALGORITHM")
    refused(post_token(client, token), 401, "E_CARD_LOGIN_NO_CHALLENGE")
    garbage = rig.client()
    challenge(garbage)
    refused(garbage.post("/api/card-login", content=b"not json", headers={"content-type": "application/json"}),
            422, "E_CARD_LOGIN_MALFORMED")  # fmt: skip
    refused(post_token(garbage, token), 401, "E_CARD_LOGIN_NO_CHALLENGE")


def test_a_signature_over_another_origin_is_refused(rig: Rig) -> None:
    card, _ = rig.issue()
    client = rig.client()
    register_and_login(client, ALICE)
    nonce = challenge(client)
    token = card_token(card, "https://portal.yikatong.test.evil.example", nonce)
    refused(post_token(client, token), 401, "E_CARD_LOGIN_SIGNATURE")
    assert rig.bindings() == []


def test_an_expired_challenge_is_refused(rig: Rig) -> None:
    card, _ = rig.issue()
    client = rig.client()
    register_and_login(client, ALICE)
    token = card_token(card, ORIGIN, challenge(client))
    rig.clock.advance(300)
    refused(post_token(client, token), 401, "E_CARD_LOGIN_CHALLENGE_EXPIRED")
    token = card_token(card, ORIGIN, challenge(client))
    rig.clock.advance(299)
    assert post_token(client, token).status_code == 201


def test_a_nonce_of_another_browser_is_refused(rig: Rig) -> None:
    card, _ = rig.issue()
    victim, attacker = rig.client(), rig.client()
    register_and_login(victim, ALICE)
    register_and_login(attacker, BOB)
    victims_nonce = challenge(victim)
    token = card_token(card, ORIGIN, victims_nonce)
    refused(post_token(attacker, token), 401, "E_CARD_LOGIN_NO_CHALLENGE")  # no challenge of its own
    challenge(attacker)
    refused(post_token(attacker, token), 401, "E_CARD_LOGIN_SIGNATURE")  # its own challenge is another nonce
    assert post_token(victim, token).status_code == 201  # the victim's own challenge was never touched


def test_a_certificate_from_another_ca_is_refused(rig: Rig, other_keystore: KeyStore) -> None:
    card, asn = rig.issue()
    forged, _ = make_auth_material(other_keystore, XY, asn, PIN, rig.clock.now)
    ours = x509.load_der_x509_certificate(card.image.auth.certificate_der)  # type: ignore[union-attr]
    theirs = x509.load_der_x509_certificate(forged.certificate_der)
    assert theirs.issuer == ours.issuer and theirs.subject == ours.subject  # same names, another CA key
    image: CardImage = dataclasses.replace(
        card.image, auth=AuthState(forged.private_key_pem, forged.certificate_der, PIN)
    )
    client = rig.client()
    register_and_login(client, ALICE)
    refused(post_token(client, card_token(Card.from_image(image), ORIGIN, challenge(client))), 401,
            "E_CARD_LOGIN_CERT_UNTRUSTED")  # fmt: skip
    assert rig.bindings() == []


@pytest.mark.parametrize("how", ["lost", "blocked", "denylisted", "replaced certificate"])
def test_a_lost_or_denylisted_card_is_refused(rig: Rig, how: str) -> None:
    card, asn = rig.issue()
    client = rig.client()
    register_and_login(client, ALICE)
    assert post_token(client, card_token(card, ORIGIN, challenge(client))).status_code == 201  # bound, works
    with Session(rig.engine) as session, session.begin():
        where = (CardRow.issuer_id == XY) & (CardRow.card_asn == asn)
        if how == "denylisted":
            denylist.add(session, XY, asn, "reported lost")
        elif how == "replaced certificate":
            session.execute(update(CardRow).where(where).values(auth_cert_serial="1"))
        else:
            session.execute(update(CardRow).where(where).values(status=how))
    refused(post_token(client, card_token(card, ORIGIN, challenge(client))), 403, "E_CARD_LOGIN_CARD_INACTIVE")


def test_a_tampered_signature_or_certificate_is_refused(rig: Rig) -> None:
    card, _ = rig.issue()
    other_card, _ = rig.issue()
    client = rig.client()
    register_and_login(client, ALICE)
    token = card_token(card, ORIGIN, challenge(client))
    raw = bytearray(base64.b64decode(token["signature"]))
    raw[10] ^= 0x01
    refused(post_token(client, {**token, "signature": base64.b64encode(raw).decode()}), 401, "E_CARD_LOGIN_SIGNATURE")
    token = card_token(card, ORIGIN, challenge(client))
    swapped = card_token(other_card, ORIGIN, "another nonce")["unverifiedCertificate"]
    refused(post_token(client, {**token, "unverifiedCertificate": swapped}), 401, "E_CARD_LOGIN_SIGNATURE")
    token = card_token(card, ORIGIN, challenge(client))
    short = base64.b64encode(base64.b64decode(token["signature"])[:63]).decode()
    refused(post_token(client, {**token, "signature": short}), 401, "E_CARD_LOGIN_SIGNATURE")
    assert rig.bindings() == []


def test_a_certificate_outside_its_validity_is_refused(rig: Rig) -> None:
    card, _ = rig.issue()
    cert = x509.load_der_x509_certificate(card.image.auth.certificate_der)  # type: ignore[union-attr]
    client = rig.client()
    register_and_login(client, ALICE)
    rig.clock.now = cert.not_valid_before_utc - dt.timedelta(seconds=1)
    refused(post_token(client, card_token(card, ORIGIN, challenge(client))), 401, "E_CARD_LOGIN_CERT_EXPIRED")
    rig.clock.now = cert.not_valid_after_utc + dt.timedelta(seconds=1)
    refused(post_token(client, card_token(card, ORIGIN, challenge(client))), 401, "E_CARD_LOGIN_CERT_EXPIRED")


@pytest.mark.parametrize("algorithm", ["ES384", "RS256", "none", "es256"])
def test_an_algorithm_other_than_the_keys_is_refused(rig: Rig, algorithm: str) -> None:
    card, _ = rig.issue()
    client = rig.client()
    token = card_token(card, ORIGIN, challenge(client))
    refused(post_token(client, {**token, "algorithm": algorithm}), 422, "E_CARD_LOGIN_ALGORITHM")


def test_another_format_and_a_form_body_are_refused(rig: Rig) -> None:
    card, _ = rig.issue()
    client = rig.client()
    token = card_token(card, ORIGIN, challenge(client))
    refused(post_token(client, {**token, "format": "web-eid:2"}), 422, "E_CARD_LOGIN_MALFORMED")
    challenge(client)
    form = client.post("/api/card-login", content=json.dumps(token), headers={"content-type": "text/plain"})
    refused(form, 422, "E_PORTAL_MALFORMED")


def test_challenges_and_logins_are_rate_limited(engine: Engine, keystore: KeyStore, tmp_path: Path) -> None:
    rig = make_rig(engine, keystore, tmp_path, limits=Rule(3, 60))
    client = rig.client()
    for _ in range(3):
        challenge(client)
    refused(client.get("/api/card-login/challenge"), 429, "E_RATE_LIMITED")
    codes = [client.post("/api/card-login", json={}).json()["code"] for _ in range(3)]
    assert codes == ["E_CARD_LOGIN_MALFORMED"] + ["E_CARD_LOGIN_NO_CHALLENGE"] * 2  # the last challenge, then none
    refused(client.post("/api/card-login", json={}), 429, "E_RATE_LIMITED")


# --- malformed tokens: a 4xx with a code, never a 500 -------------------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
_FIELDS = ["unverifiedCertificate", "algorithm", "signature", "format", "appVersion"]


@st.composite
def _bodies(draw: st.DrawFn, token: dict[str, str]) -> tuple[bytes, str]:
    kind = draw(st.sampled_from(["bytes", "json", "mutated"]))
    content_type = draw(st.sampled_from(["application/json", "application/json; charset=utf-8", "text/plain", ""]))
    if kind == "bytes":
        return draw(st.binary(max_size=300)), content_type
    if kind == "json":
        return json.dumps(draw(_json)).encode(), content_type
    mutated: dict[str, Any] = dict(token)
    for name in draw(st.lists(st.sampled_from(_FIELDS), min_size=1, max_size=3, unique=True)):
        action = draw(st.sampled_from(["drop", "json", "text", "b64", "long"]))
        if action == "drop":
            mutated.pop(name)
        elif action == "json":
            mutated[name] = draw(_json)
        elif action == "text":
            mutated[name] = draw(st.text(max_size=40))
        elif action == "b64":
            mutated[name] = base64.b64encode(draw(st.binary(max_size=120))).decode()
        else:
            mutated[name] = "A" * 20_000
    return json.dumps(mutated).encode(), content_type


def test_malformed_tokens_get_a_4xx_with_a_code(sqlite_engine: Engine, keystore: KeyStore, tmp_path: Path) -> None:
    rig = make_rig(sqlite_engine, keystore, tmp_path, limits=Rule(100_000, 60))
    card, _ = rig.issue()
    client = rig.client()
    register_and_login(client, ALICE)
    template = card_token(card, ORIGIN, "a nonce the server never issued")

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(_bodies(template))
    def check(case: tuple[bytes, str]) -> None:
        body, content_type = case
        challenge(client)
        answer = client.post("/api/card-login", content=body, headers={"content-type": content_type})
        assert 400 <= answer.status_code < 500, answer.text
        shown = answer.json()
        assert set(shown) == {"code", "message"} and shown["code"].startswith("E_")
        assert "Traceback" not in answer.text

    check()
    assert rig.bindings() == []


# --- the stores and the pure checks -------------------------------------------------------------------


def test_the_nonce_is_256_bits_and_the_store_keeps_only_the_cookies_hash(rig: Rig) -> None:
    store = rig.card_login.store
    assert isinstance(store, MemoryNonceStore)
    client = rig.client()
    nonces = {challenge(client) for _ in range(5)}
    assert len(nonces) == 5 and all(len(base64.b64decode(n, validate=True)) == 32 for n in nonces)
    assert len(store) == 1  # a browser's new challenge drops its previous one
    cookie = client.cookies["yk_card_challenge"]
    assert cookie not in store._items and hashlib.sha256(cookie.encode()).hexdigest() in store._items


def test_the_memory_store_is_bounded() -> None:
    store = MemoryNonceStore(keys_max=3, clock=lambda: 100.0)
    for i in range(5):
        store.put(f"b{i}", Challenge(f"n{i}", 200.0), 100)
    assert len(store) == 3 and store.take("b0") is None and store.take("b4") == Challenge("n4", 200.0)
    assert store.take("b4") is None


@pytest.mark.redis
def test_the_redis_store_takes_once_and_expires(redis_url: str) -> None:
    import redis

    prefix = f"t-card-login-{secrets.token_hex(4)}"
    store = RedisNonceStore.from_url(redis_url, prefix=prefix)
    try:
        store.put("b1", Challenge("n1", 1234.5), 0.2)
        assert store.client.pttl(f"{prefix}:card-challenge:b1") > 0
        assert store.take("b1") == Challenge("n1", 1234.5)
        assert store.take("b1") is None
        store.put("b2", Challenge("n2", 1.0), 300)
        assert store.client.keys(f"{prefix}:*") == [f"{prefix}:card-challenge:b2".encode()]
    finally:
        client = redis.Redis.from_url(redis_url)
        for key in client.scan_iter(f"{prefix}:*"):
            client.delete(key)
        client.close()


@pytest.mark.redis
def test_card_login_with_nonces_in_redis(
    redis_url: str, sqlite_engine: Engine, keystore: KeyStore, tmp_path: Path
) -> None:
    import redis

    prefix = f"t-card-login-{secrets.token_hex(4)}"
    rig = make_rig(sqlite_engine, keystore, tmp_path, store=RedisNonceStore.from_url(redis_url, prefix=prefix))
    try:
        card, _ = rig.issue()
        client = rig.client()
        register_and_login(client, ALICE)
        token = card_token(card, ORIGIN, challenge(client))
        assert post_token(client, token).status_code == 201
        refused(post_token(client, token), 401, "E_CARD_LOGIN_NO_CHALLENGE")
        token = card_token(card, ORIGIN, challenge(client))
        rig.clock.advance(301)
        refused(post_token(client, token), 401, "E_CARD_LOGIN_CHALLENGE_EXPIRED")
    finally:
        client_r = redis.Redis.from_url(redis_url)
        for key in client_r.scan_iter(f"{prefix}:*"):
            client_r.delete(key)
        client_r.close()


def test_the_challenge_hash_is_what_web_eid_signs() -> None:
    expected = hashlib.sha256(ORIGIN.encode()).digest() + hashlib.sha256(b"abc=").digest()
    assert challenge_hash(ORIGIN, "abc=") == expected and len(expected) == 64


@pytest.mark.parametrize(
    "origin",
    ["http://portal.yikatong.test", "https://portal.yikatong.test/", "https://portal.yikatong.test/login",
     "ftp://x", "https://", "https://u@portal.yikatong.test", " https://portal.yikatong.test"],
)  # fmt: skip
def test_the_origin_setting_is_scheme_host_port_only(origin: str) -> None:
    with pytest.raises(ValueError, match="origin"):
        check_origin(origin)


def test_loopback_may_be_plain_http() -> None:
    assert check_origin("http://127.0.0.1:8000") == "http://127.0.0.1:8000"
    assert check_origin("https://portal.yikatong.test:8443") == "https://portal.yikatong.test:8443"


def test_the_routes_are_in_the_openapi_document(rig: Rig) -> None:
    paths = rig.client().get("/openapi.json").json()["paths"]
    assert "get" in paths["/api/card-login/challenge"]
    schema = paths["/api/card-login"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert set(schema["required"]) == set(_FIELDS)
