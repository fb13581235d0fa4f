"""Citizen accounts through the API: register, log in and out, sessions, CSRF, binding, limits, logs.

SQLite and PostgreSQL, the real app (``yikatong.app.assemble``) under FastAPI's TestClient.
The top-up service behind ``/api/topups`` talks to a payment server that is not there
(port 9): a top-up is then answered ``created`` with its intent still due, which is all the
session and binding checks need.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from clearing import accounts, db, registry
from clearing.api import ApiDeps
from clearing.keystore import KeyStore
from clearing.ledger import TransferSpec, post_transfers
from clearing.models import Card, Tap, TransferCode
from portal.accounts import AccountLimits, AccountService, session_id_of
from portal.errors import PortalError
from portal.models import PortalCardBinding, PortalCitizen, PortalSession
from portal.payments import PaymentsClient, PaymentsConfig
from portal.ratelimit import MemoryLimiter, Rule
from portal.topup_service import TopupService
from tests.portal.conftest import ALICE, BOB, LOCALSTRIPE_KEY, account_service
from yikatong.app import assemble

ISSUER = "01007120ffffffff"
ASN = "71200000000000000077"
OTHER_ASN = "71200000000000000078"
TERMINAL = "t00000000001"


@dataclass
class Clock:
    now: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))

    def __call__(self) -> dt.datetime:
        return self.now


@dataclass
class Portal:
    engine: Engine
    accounts: AccountService
    app: Any
    clock: Clock

    def client(self) -> TestClient:
        return TestClient(self.app)

    def citizens(self) -> int:
        with Session(self.engine) as session:
            return int(session.scalar(select(func.count()).select_from(PortalCitizen)) or 0)


def make_portal(engine: Engine, tmp_path: Path, *, limits: AccountLimits | None = None, dev: bool = True) -> Portal:
    clock = Clock()
    limiter = MemoryLimiter(clock=lambda: clock.now.timestamp())
    service = account_service(engine, limiter=limiter, limits=limits or AccountLimits(), clock=clock)
    payments = PaymentsClient.connect(PaymentsConfig("http://127.0.0.1:9", LOCALSTRIPE_KEY, timeout_s=0.5))
    topups = TopupService(sessions=db.session_factory(engine), payments=payments, webhook_secrets=["whsec_t"])
    keystore = KeyStore.open(tmp_path / "keystore.json", os.urandom(32))
    app = assemble(ApiDeps(engine, keystore), topups, portal_enabled=True, accounts=service, portal_dev=dev)
    return Portal(engine, service, app, clock)


@pytest.fixture
def portal(engine: Engine, tmp_path: Path) -> Portal:
    return make_portal(engine, tmp_path)


def register(client: TestClient, who: dict[str, str]) -> Any:
    answer = client.post("/api/citizens", json=who)
    assert answer.status_code == 201, answer.text
    return answer.json()


def login(client: TestClient, who: dict[str, str]) -> str:
    """Log in; the client keeps the cookie and sends the CSRF token from now on. Answers the token."""
    answer = client.post("/api/sessions", json={"mobile": who["mobile"], "password": who["password"]})
    assert answer.status_code == 201, answer.text
    client.headers["X-CSRF-Token"] = answer.json()["csrf_token"]
    token = client.cookies.get("yk_session")
    assert token
    return token


# --- a card with cleared transactions -------------------------------------------------------

# (amount_fen, card-local time) of the card's taps, oldest first; the opening sale is older still.
TAPS = [
    (200, dt.datetime(2026, 11, 20, 8, 0)),
    (150, dt.datetime(2026, 11, 25, 7, 45)),
    (300, dt.datetime(2026, 11, 28, 23, 30)),  # 15:30 UTC: the same card-local date
    (250, dt.datetime(2026, 11, 29, 0, 30)),  # 16:30 UTC on the 28th: card-local the 29th
]
LOCAL = dt.timezone(dt.timedelta(hours=8))


def card_with_taps(engine: Engine, asn: str = ASN) -> None:
    """Registered card, opening balance sold today, then the taps of ``TAPS`` cleared in order."""
    with Session(engine) as session, session.begin():
        registry.ensure_issuers(session, own_city="xianyang")
        account = accounts.card_liability(session, ISSUER, asn)
        session.add(
            Card(
                issuer_id=ISSUER,
                card_asn=asn,
                card_type="ordinary",
                issued_at=dt.datetime(2026, 11, 1, tzinfo=dt.UTC),
                start_date=dt.date(2026, 1, 1),
                expiry_date=dt.date(2036, 1, 1),
                key_version=1,
                alg_id=0,
                account_id=account,
                shadow_balance_fen=10_000,
            )
        )
        session.flush()
        sale = TransferSpec.single(f"issue:{asn}", accounts.issuer_float(session, ISSUER), account, 10_900,
                                   int(TransferCode.CARD_SALE))  # fmt: skip
        post_transfers(session, [sale])
    for i, (amount, local) in enumerate(TAPS, start=1):
        seq = int(asn[-4:]) * 100 + i
        with Session(engine) as session, session.begin():
            payable = accounts.operator_payable(session, "op-1")
            tid = f"tap:{TERMINAL}:{seq}"
            post_transfers(session, [TransferSpec.single(tid, account, payable, amount, int(TransferCode.PURCHASE))])
            at = local.replace(tzinfo=LOCAL).astimezone(dt.UTC)
            session.add(
                Tap(
                    business_day=local.date(),
                    terminal_id=TERMINAL,
                    terminal_seq=seq,
                    psam_serial="p",
                    issuer_id=ISSUER,
                    card_asn=asn,
                    card_type="ordinary",
                    tx_type=6,
                    amount_fen=amount,
                    balance_before_fen=5000,
                    offline_counter=i,
                    tx_time=at,
                    tx_utc_offset_min=480,
                    key_version=1,
                    alg_id=0,
                    tac="00000000",
                    verdict="accepted",
                    code="OK",
                    transfer_id=tid,
                    received_at=dt.datetime.now(dt.UTC),
                )
            )


def proof(amount_fen: int, on: str, asn: str = ASN, **extra: Any) -> dict[str, Any]:
    return {"card_asn": asn, "amount_fen": amount_fen, "date": on, **extra}


def bindings(engine: Engine) -> list[tuple[int, str]]:
    with Session(engine) as session:
        rows = session.execute(select(PortalCardBinding.citizen_id, PortalCardBinding.card_asn)).all()
        return [(r[0], r[1]) for r in rows]


# --- register -------------------------------------------------------------------------------


def test_registration_stores_the_id_number_only_hashed_and_masked(portal: Portal) -> None:
    shown = register(portal.client(), ALICE)
    assert shown == {"mobile_masked": "139****5678", "real_name_masked": "欧阳**",
                     "id_number_masked": "6104**********" + ALICE["id_number"][-4:]}  # fmt: skip
    with Session(portal.engine) as session:
        row = session.execute(select(PortalCitizen)).scalar_one()
        stored = " ".join(
            str(v) for v in (row.mobile, row.password_hash, row.real_name, row.id_number_hash, row.id_number_masked)
        )
    assert ALICE["id_number"] not in stored and ALICE["password"] not in stored
    assert row.password_hash.startswith("$argon2id$")
    assert len(row.id_number_hash or "") == 64


def test_a_wrong_id_check_digit_is_refused_with_its_code(portal: Portal) -> None:
    good = ALICE["id_number"]
    wrong = good[:17] + ("0" if good[17] != "0" else "1")
    answer = portal.client().post("/api/citizens", json={**ALICE, "id_number": wrong})
    assert (answer.status_code, answer.json()["code"]) == (422, "E_ID_NUMBER_CHECK_DIGIT")
    assert portal.citizens() == 0


@pytest.mark.parametrize(
    ("password", "code"),
    [("short1!", "E_PASSWORD_POLICY"), ("1234567890", "E_PASSWORD_POLICY"), ("x" * 129, "E_PASSWORD_POLICY"),
     ("１２３４５６７８", None), ("abcdefgh", None), ("密码是八个字符啊", None)],
)  # fmt: skip
def test_the_password_policy(portal: Portal, password: str, code: str | None) -> None:
    answer = portal.client().post("/api/citizens", json={**ALICE, "password": password})
    assert (answer.json().get("code"), answer.status_code) == (code, 422 if code else 201)


def test_a_taken_mobile_or_id_number_is_refused_saying_only_that(portal: Portal) -> None:
    client = portal.client()
    register(client, ALICE)
    again = client.post("/api/citizens", json={**BOB, "mobile": ALICE["mobile"]})
    assert (again.status_code, again.json()["code"]) == (409, "E_MOBILE_TAKEN")
    same_person = client.post("/api/citizens", json={**BOB, "id_number": ALICE["id_number"]})
    assert (same_person.status_code, same_person.json()["code"]) == (409, "E_ID_NUMBER_TAKEN")
    for answer in (again, same_person):
        assert set(answer.json()) == {"code", "message"}
        assert "欧阳" not in answer.text and "5678" not in answer.text and "6104" not in answer.text
    assert portal.citizens() == 1


def test_a_replayed_register_form_creates_one_citizen(portal: Portal) -> None:
    client = portal.client()
    register(client, ALICE)
    replay = client.post("/api/citizens", json=ALICE)
    assert replay.json()["code"] == "E_MOBILE_TAKEN"
    assert portal.citizens() == 1


def test_racing_registrations_of_one_form_create_one_citizen(portal: Portal) -> None:
    outcomes: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(6)

    def submit() -> None:
        start.wait()
        try:
            portal.accounts.register(**ALICE, client_ip="10.0.0.1")
            outcome = "created"
        except PortalError as exc:
            outcome = exc.code.value
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=submit) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(outcomes) == ["E_MOBILE_TAKEN"] * 5 + ["created"]
    assert portal.citizens() == 1


# --- log in, sessions, CSRF -------------------------------------------------------------------


def test_a_wrong_password_and_an_unknown_mobile_get_the_same_answer(portal: Portal) -> None:
    client = portal.client()
    register(client, ALICE)
    wrong = client.post("/api/sessions", json={"mobile": ALICE["mobile"], "password": "not the password"})
    unknown = client.post("/api/sessions", json={"mobile": "13700000000", "password": ALICE["password"]})
    malformed = client.post("/api/sessions", json={"mobile": "12", "password": ALICE["password"]})
    for answer in (wrong, unknown, malformed):
        assert (answer.status_code, answer.json()) == (401, wrong.json())
        assert answer.json()["code"] == "E_LOGIN_FAILED" and "set-cookie" not in answer.headers
    with Session(portal.engine) as session:
        assert session.scalar(select(func.count()).select_from(PortalSession)) == 0


def test_login_sets_an_httponly_lax_cookie_and_stores_only_its_hash(portal: Portal) -> None:
    client = portal.client()
    register(client, ALICE)
    answer = client.post("/api/sessions", json={"mobile": " 139-1234-5678 ", "password": ALICE["password"]})
    assert answer.status_code == 201
    cookie = answer.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Path=/" in cookie and "Secure" not in cookie
    token = client.cookies["yk_session"]
    assert len(token) >= 43  # 256 bits, base64url
    with Session(portal.engine) as session:
        row = session.execute(select(PortalSession)).scalar_one()
    assert row.id == session_id_of(token) == hashlib.sha256(token.encode()).hexdigest() and row.id != token
    assert (row.assurance, row.csrf_token) == ("account", answer.json()["csrf_token"])


def test_outside_development_the_cookie_is_secure(engine: Engine, tmp_path: Path) -> None:
    client = make_portal(engine, tmp_path, dev=False).client()
    register(client, ALICE)
    answer = client.post("/api/sessions", json={"mobile": ALICE["mobile"], "password": ALICE["password"]})
    assert "Secure" in answer.headers["set-cookie"]


def test_each_login_rotates_the_session(portal: Portal) -> None:
    client = portal.client()
    register(client, ALICE)
    first = login(client, ALICE)
    first_csrf = client.headers["X-CSRF-Token"]
    second = login(client, ALICE)
    assert second != first and client.headers["X-CSRF-Token"] != first_csrf
    with Session(portal.engine) as session:
        ids = session.scalars(select(PortalSession.id)).all()
    assert ids == [session_id_of(second)]  # the browser's old session is gone
    stale = portal.client()
    stale.cookies.set("yk_session", first)
    assert stale.get("/api/me").json()["code"] == "E_SESSION_REQUIRED"
    assert client.get("/api/me").status_code == 200


def test_logging_out_ends_the_session(portal: Portal) -> None:
    client = portal.client()
    register(client, ALICE)
    token = login(client, ALICE)
    assert client.delete("/api/sessions/current").status_code == 204
    replayed = portal.client()
    replayed.cookies.set("yk_session", token)
    assert (replayed.get("/api/me").status_code, replayed.get("/api/me").json()["code"]) == (401, "E_SESSION_REQUIRED")


def test_a_session_ends_at_its_expiry(portal: Portal) -> None:
    client = portal.client()
    register(client, ALICE)
    login(client, ALICE)
    portal.clock.now += dt.timedelta(seconds=portal.accounts.session_ttl_s + 1)
    assert client.get("/api/me").json()["code"] == "E_SESSION_REQUIRED"
    with Session(portal.engine) as session:
        assert session.scalar(select(func.count()).select_from(PortalSession)) == 0


def test_state_changes_without_the_csrf_token_are_refused(portal: Portal) -> None:
    card_with_taps(portal.engine)
    client = portal.client()
    register(client, ALICE)
    login(client, ALICE)
    good = client.headers.pop("X-CSRF-Token")
    topup = {"card": {"issuer_id": ISSUER, "card_asn": ASN}, "amount_fen": 1000}
    for headers in ({}, {"X-CSRF-Token": "x" * len(good)}, {"X-CSRF-Token": good + "x"}, {"X-CSRF-Token": ""}):
        for answer in (
            client.delete("/api/sessions/current", headers=headers),
            client.post("/api/me/cards", json=proof(250, "2026-11-29"), headers=headers),
            client.post("/api/topups", json=topup, headers=headers),
        ):
            assert (answer.status_code, answer.json()["code"]) == (403, "E_CSRF"), headers
    assert bindings(portal.engine) == []
    assert client.get("/api/me").status_code == 200  # still logged in
    assert client.delete("/api/sessions/current", headers={"X-CSRF-Token": good}).status_code == 204


def test_me_shows_masked_data_and_the_csrf_token(portal: Portal) -> None:
    client = portal.client()
    register(client, ALICE)
    login(client, ALICE)
    me = client.get("/api/me")
    assert me.json()["citizen"] == {"mobile_masked": "139****5678", "real_name_masked": "欧阳**",
                                    "id_number_masked": "6104**********" + ALICE["id_number"][-4:]}  # fmt: skip
    assert me.json()["csrf_token"] == client.headers["X-CSRF-Token"] and me.json()["assurance"] == "account"
    for clear in (ALICE["mobile"], ALICE["id_number"], ALICE["real_name"]):
        assert clear not in me.text
    assert portal.client().get("/api/me").json()["code"] == "E_SESSION_REQUIRED"


# --- binding a card -----------------------------------------------------------------------------


def test_a_card_binds_by_one_of_its_last_three_transactions(portal: Portal) -> None:
    card_with_taps(portal.engine)
    client = portal.client()
    register(client, ALICE)
    login(client, ALICE)
    # the newest tap: 2026-11-28 16:30 UTC, on the card's clock the 29th
    bound = client.post("/api/me/cards", json=proof(250, "2026-11-29"))
    assert bound.status_code == 201, bound.text
    assert (bound.json()["card_asn"], bound.json()["issuer_id"], bound.json()["how"]) == (ASN, ISSUER, "transaction")
    assert client.post("/api/me/cards", json=proof(150, "2026-11-25", issuer_id=ISSUER.upper())).status_code == 201
    assert [c["card_asn"] for c in client.get("/api/me/cards").json()["cards"]] == [ASN]


@pytest.mark.parametrize(
    "wrong",
    [proof(250, "2026-11-28"),  # the UTC date, not the card's
     proof(251, "2026-11-29"),  # amount off by one fen
     proof(200, "2026-11-20"),  # the fourth newest tap
     proof(10_900, dt.datetime.now(LOCAL).date().isoformat()),  # the opening sale: older than three taps
     proof(250, "2026-11-29", asn=OTHER_ASN),  # no such card
     proof(250, "2026-11-29", issuer_id="01007120fffffffe")],  # another issuer
)  # fmt: skip
def test_a_wrong_proof_binds_nothing(portal: Portal, wrong: dict[str, Any]) -> None:
    card_with_taps(portal.engine)
    client = portal.client()
    register(client, ALICE)
    login(client, ALICE)
    answer = client.post("/api/me/cards", json=wrong)
    assert (answer.status_code, answer.json()["code"]) == (422, "E_BIND_PROOF_WRONG")
    assert bindings(portal.engine) == []


def test_a_card_bound_to_another_citizen_is_refused_without_saying_who(portal: Portal) -> None:
    card_with_taps(portal.engine)
    alice, bob = portal.client(), portal.client()
    register(alice, ALICE)
    register(bob, BOB)
    login(alice, ALICE)
    login(bob, BOB)
    assert alice.post("/api/me/cards", json=proof(300, "2026-11-28")).status_code == 201
    taken = bob.post("/api/me/cards", json=proof(300, "2026-11-28"))
    assert (taken.status_code, taken.json()["code"]) == (409, "E_CARD_BOUND_ELSEWHERE")
    assert "139" not in taken.text and "欧阳" not in taken.text and "5678" not in taken.text
    # without the proof, a bound card looks like any wrong proof: no probing which cards are bound
    assert bob.post("/api/me/cards", json=proof(301, "2026-11-28")).json()["code"] == "E_BIND_PROOF_WRONG"
    assert bob.get("/api/me/cards").json()["cards"] == []
    assert len(bindings(portal.engine)) == 1


# --- rate limits ---------------------------------------------------------------------------------


def test_login_attempts_per_mobile_are_limited(engine: Engine, tmp_path: Path) -> None:
    portal = make_portal(engine, tmp_path, limits=AccountLimits(login_per_mobile=Rule(3, 600)))
    client = portal.client()
    register(client, ALICE)
    for _ in range(3):
        assert (
            client.post("/api/sessions", json={"mobile": ALICE["mobile"], "password": "guess!guess"}).status_code == 401
        )
    right = {"mobile": ALICE["mobile"], "password": ALICE["password"]}
    tripped = client.post("/api/sessions", json=right)
    assert (tripped.status_code, tripped.json()["code"]) == (429, "E_RATE_LIMITED")
    spelled_otherwise = client.post("/api/sessions", json={**right, "mobile": "+86 139 1234 5678"})
    assert spelled_otherwise.json()["code"] == "E_RATE_LIMITED"  # the key is the number, not its spelling
    assert (
        client.post("/api/sessions", json={"mobile": BOB["mobile"], "password": "x"}).json()["code"] == "E_LOGIN_FAILED"
    )
    portal.clock.now += dt.timedelta(seconds=601)
    assert client.post("/api/sessions", json=right).status_code == 201


def test_login_attempts_per_client_ip_are_limited(engine: Engine, tmp_path: Path) -> None:
    portal = make_portal(engine, tmp_path, limits=AccountLimits(login_per_ip=Rule(5, 600)))
    client = portal.client()
    for i in range(5):
        assert client.post("/api/sessions", json={"mobile": f"1380000000{i}", "password": "x"}).status_code == 401
    assert (
        client.post("/api/sessions", json={"mobile": "13800000009", "password": "x"}).json()["code"] == "E_RATE_LIMITED"
    )


def test_binding_attempts_are_limited(engine: Engine, tmp_path: Path) -> None:
    portal = make_portal(engine, tmp_path, limits=AccountLimits(bind_per_citizen=Rule(2, 3600)))
    card_with_taps(portal.engine)
    client = portal.client()
    register(client, ALICE)
    login(client, ALICE)
    assert client.post("/api/me/cards", json=proof(1, "2026-11-29")).json()["code"] == "E_BIND_PROOF_WRONG"
    assert client.post("/api/me/cards", json=proof(2, "2026-11-29")).json()["code"] == "E_BIND_PROOF_WRONG"
    tripped = client.post("/api/me/cards", json=proof(250, "2026-11-29"))
    assert (tripped.status_code, tripped.json()["code"]) == (429, "E_RATE_LIMITED")
    assert bindings(portal.engine) == []


# --- top-ups need a session and a bound card ------------------------------------------------------


def test_a_topup_needs_a_session_and_a_card_bound_to_its_citizen(portal: Portal) -> None:
    card_with_taps(portal.engine)
    card_with_taps(portal.engine, OTHER_ASN)
    body = {"card": {"issuer_id": ISSUER, "card_asn": ASN}, "amount_fen": 1000}
    anonymous = portal.client().post("/api/topups", json=body)
    assert (anonymous.status_code, anonymous.json()["code"]) == (401, "E_SESSION_REQUIRED")
    alice, bob = portal.client(), portal.client()
    register(alice, ALICE)
    register(bob, BOB)
    login(alice, ALICE)
    login(bob, BOB)
    not_bound = alice.post("/api/topups", json=body)
    assert (not_bound.status_code, not_bound.json()["code"]) == (403, "E_CARD_NOT_BOUND")
    assert alice.post("/api/me/cards", json=proof(250, "2026-11-29")).status_code == 201
    created = alice.post("/api/topups", json=body)
    assert created.status_code == 201, created.text
    assert created.json()["state"] == "created"  # the payment server is not there: the intent stays due
    topup_id = created.json()["topup_id"]
    assert alice.get(f"/api/topups/{topup_id}").json()["topup_id"] == topup_id
    assert bob.get(f"/api/topups/{topup_id}").json()["code"] == "E_TOPUP_NOT_FOUND"
    assert bob.post("/api/topups", json=body).json()["code"] == "E_CARD_NOT_BOUND"
    assert portal.client().get(f"/api/topups/{topup_id}").json()["code"] == "E_SESSION_REQUIRED"


# --- personal data stays out of the logs ------------------------------------------------------------


def test_register_login_and_bind_log_no_personal_data(portal: Portal, caplog: pytest.LogCaptureFixture) -> None:
    card_with_taps(portal.engine)
    caplog.set_level(logging.DEBUG)
    client = portal.client()
    register(client, ALICE)
    client.post("/api/citizens", json=ALICE)  # refused: taken
    client.post("/api/sessions", json={"mobile": ALICE["mobile"], "password": "wrong password"})
    client.post("/api/sessions", json={"mobile": "13700000000", "password": ALICE["password"]})
    login(client, ALICE)
    client.post("/api/me/cards", json=proof(1, "2026-11-29"))
    assert client.post("/api/me/cards", json=proof(250, "2026-11-29")).status_code == 201
    client.get("/api/me")
    client.delete("/api/sessions/current")
    logged = caplog.text + " ".join(repr(r.args) for r in caplog.records)
    assert "citizen 1 logged in" in logged  # the logs do say what happened, by row id
    clear = [ALICE["mobile"], ALICE["mobile"][3:], ALICE["id_number"], ALICE["id_number"][6:14], ALICE["real_name"],
             ALICE["password"], "13700000000"]  # fmt: skip
    for value in clear:
        assert value not in logged, value


def test_the_openapi_document_names_the_routes_the_cookie_and_the_csrf_header(portal: Portal) -> None:
    doc = portal.client().get("/openapi.json").json()
    assert {"/api/citizens", "/api/sessions", "/api/sessions/current", "/api/me", "/api/me/cards"} <= set(doc["paths"])
    params = {(p["in"], p["name"]) for p in doc["paths"]["/api/topups"]["post"]["parameters"]}
    assert {("cookie", "yk_session"), ("header", "x-csrf-token")} <= params


def test_racing_binds_of_one_card_bind_it_once(portal: Portal) -> None:
    card_with_taps(portal.engine)
    for who in (ALICE, BOB):
        portal.accounts.register(**who, client_ip="10.0.0.1")
    alice = portal.accounts.login(ALICE["mobile"], ALICE["password"], client_ip="10.0.0.1", previous_token=None)
    bob = portal.accounts.login(BOB["mobile"], BOB["password"], client_ip="10.0.0.2", previous_token=None)
    outcomes: dict[str, list[str]] = {"alice": [], "bob": []}
    start = threading.Barrier(4)

    def bind(name: str, current: Any) -> None:
        start.wait()
        try:
            portal.accounts.bind_card(current, ASN, issuer_id=None, amount_fen=250, on=dt.date(2026, 11, 29),
                                      client_ip="10.0.0.3")  # fmt: skip
            outcome = "bound"
        except PortalError as exc:
            outcome = exc.code.value
        outcomes[name].append(outcome)

    threads = [threading.Thread(target=bind, args=(n, s.session)) for n, s in
               [("alice", alice), ("alice", alice), ("bob", bob), ("bob", bob)]]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    results = {name: set(got) for name, got in outcomes.items()}
    assert sorted(results.values(), key=sorted) == sorted([{"bound"}, {"E_CARD_BOUND_ELSEWHERE"}], key=sorted)
    assert len(bindings(portal.engine)) == 1
