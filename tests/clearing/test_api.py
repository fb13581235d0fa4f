"""The terminal API over HTTP (in-process TestClient): contract, auth, idempotency, denylist, loads."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session
from tapfactory import OWN_ISSUER, T0, Card, Terminal, body, journey, make_keystore, register_world

from cardos.apdu import split_response
from cardos.card import Card as EmulatedCard
from cardos.profile import AID_PURSE
from clearing import denylist, loads
from clearing.api import ApiDeps, create_app
from clearing.contract import Batch, LoadAuthorizeRequest
from clearing.issuance import issue_card
from clearing.ledger import account_balance, trial_balance
from clearing.models import BatchRow, PendingLoad, Tap
from clearing.models import Card as CardRow

NOW = T0 + dt.timedelta(days=1)
TERMINAL = "0000aa000001"
OTHER = "0000aa000002"


class Api:
    def __init__(self, engine: Engine, keystore: Any, tokens: dict[str, str]) -> None:
        self.engine = engine
        self.keystore = keystore
        self.tokens = tokens
        self.client = TestClient(create_app(ApiDeps(engine, keystore, clock=lambda: NOW.astimezone(dt.UTC))))

    def headers(self, terminal_id: str = TERMINAL) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[terminal_id]}"}

    def upload(self, batch: Batch | bytes, terminal_id: str = TERMINAL, **kw: Any) -> Any:
        data = batch if isinstance(batch, bytes) else body(batch)
        headers = kw.pop("headers") if "headers" in kw else self.headers(terminal_id)
        return self.client.post(f"/v1/terminals/{terminal_id}/batches", content=data, headers=headers, **kw)

    def count(self, model: Any) -> int:
        with Session(self.engine) as session:
            return int(session.execute(select(func.count()).select_from(model)).scalar_one())


@pytest.fixture
def api(db_engine: Engine, tmp_path: Path) -> Iterator[Api]:
    keystore = make_keystore(tmp_path)
    cards = [Card(n, balance_fen=5000) for n in range(3)]
    with Session(db_engine) as session:
        tokens = register_world(session, cards, [TERMINAL, OTHER], tokens=True)
    yield Api(db_engine, keystore, tokens)


def verdicts(response: Any) -> list[tuple[str, str]]:
    return [(v["verdict"], v["code"]) for v in response.json()["verdicts"]]


def test_openapi_lists_the_terminal_and_load_paths(api: Api) -> None:
    doc = api.client.get("/openapi.json").json()
    assert {
        "/v1/terminals/{terminal_id}/batches",
        "/v1/terminals/{terminal_id}/denylist",
        "/v1/loads/{load_id}/authorize",
        "/v1/loads/{load_id}/complete",
    } <= set(doc["paths"])
    upload = doc["paths"]["/v1/terminals/{terminal_id}/batches"]["post"]
    assert upload["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/Batch")
    assert {"200", "401", "403", "409", "422"} <= set(upload["responses"])
    schemas = doc["components"]["schemas"]
    assert schemas["TapRecord"]["additionalProperties"] is False  # unknown fields refused
    assert {"Batch", "BatchAnswer", "ErrorBody", "DenylistDelta", "LoadAuthorizeRequest"} <= set(schemas)


def test_upload_answers_one_verdict_per_record_in_order(api: Api) -> None:
    term, card = Terminal(TERMINAL), Card(0, balance_fen=5000)
    good = term.tap(card)
    forged = msgspec.structs.replace(term.tap(card), amount_fen=1)
    third = term.tap(card)
    response = api.upload(term.batch([good, forged, third]))
    assert response.status_code == 200
    answer = response.json()
    assert answer["batch_seq"] == 1
    assert [v["terminal_seq"] for v in answer["verdicts"]] == [1, 2, 3]
    assert verdicts(response) == [("accepted", "OK"), ("rejected", "E_TAC_MISMATCH"), ("suspect", "S_COUNTER_GAP")]
    assert answer["verdicts"][1]["message"].startswith("E_TAC_MISMATCH: TAC does not verify for card")


def test_replay_returns_the_original_bytes_and_other_content_conflicts(api: Api) -> None:
    term, card = Terminal(TERMINAL), Card(0, balance_fen=5000)
    batch = Batch(1, T0.isoformat(), [term.tap(card)])
    first = api.upload(batch)
    again = api.upload(batch)
    assert again.status_code == 200 and again.content == first.content
    # same content, other JSON spelling (whitespace): still the same batch
    spaced = msgspec.json.format(body(batch), indent=2)
    assert api.upload(spaced).content == first.content
    conflict = api.upload(Batch(1, T0.isoformat(), [term.tap(card)]))
    assert conflict.status_code == 409
    assert conflict.json()["code"] == "E_BATCH_CONFLICT"
    with Session(api.engine) as session:
        assert trial_balance(session).transfers_posted_fen == 3 * 5000 + 200


def test_a_record_replayed_in_a_later_batch_is_rejected(api: Api) -> None:
    term, card = Terminal(TERMINAL), Card(0, balance_fen=5000)
    record = term.tap(card)
    api.upload(Batch(1, T0.isoformat(), [record]))
    response = api.upload(Batch(2, T0.isoformat(), [record]))
    assert verdicts(response) == [("rejected", "E_DUPLICATE_TERMINAL_SEQ")]


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_upload_without_a_token_is_401(api: Api) -> None:
    batch = Terminal(TERMINAL).batch([])
    for headers in ({}, {"Authorization": "Basic abc"}, {"Authorization": "Bearer "}):
        response = api.upload(batch, headers=headers)
        assert response.status_code == 401
        assert response.json()["code"] == "E_UNAUTHORIZED"
        assert response.headers["WWW-Authenticate"] == "Bearer"
    assert api.count(BatchRow) == 0


def test_upload_with_a_wrong_secret_is_401(api: Api) -> None:
    batch = Terminal(TERMINAL).batch([])
    own = api.tokens[TERMINAL]
    assert own.startswith(f"{TERMINAL}.")
    wrong = [
        f"{TERMINAL}.{'A' * 43}",  # own prefix, wrong secret
        own + "x",
        own.partition(".")[2],  # the secret without its prefix
        "nope",
        f"{OTHER}.{own.partition('.')[2]}",  # another terminal's prefix, a secret that is not its
        f"ffffffffffff.{own.partition('.')[2]}",  # a terminal that does not exist
    ]
    for token in wrong:
        response = api.upload(batch, headers=_bearer(token))
        assert response.status_code == 401, token
        assert response.json()["code"] == "E_UNAUTHORIZED"
    assert api.count(BatchRow) == 0


def test_upload_with_another_terminals_valid_token_is_403(api: Api) -> None:
    batch = Terminal(TERMINAL).batch([])
    response = api.upload(batch, headers=api.headers(OTHER))
    assert response.status_code == 403
    assert response.json()["code"] == "E_FORBIDDEN"
    assert OTHER in response.json()["message"]
    assert api.count(BatchRow) == 0


def test_upload_with_its_own_token_is_200(api: Api) -> None:
    term, card = Terminal(TERMINAL), Card(0, balance_fen=5000)
    response = api.upload(term.batch([term.tap(card)]), headers=_bearer(api.tokens[TERMINAL]))
    assert response.status_code == 200
    assert verdicts(response) == [("accepted", "OK")]
    assert api.count(BatchRow) == 1


@pytest.mark.parametrize(
    ("data", "path"),
    [
        (b'{"batch_seq": 1, "created_at": "2026-11-24T08:00:00+08:00", "records": [{"terminal_id": 1}]}',
         "$.records[0].terminal_id"),
        (b'{"batch_seq": 1, "created_at": "2026-11-24T08:00:00+08:00", "records": [], "more": 1}', "$"),
        (b'{"batch_seq": 1, "created_at": "2026-11-24T08:00', "$"),
        (b"not json", "$"),
    ],
)  # fmt: skip
def test_malformed_or_truncated_bodies_are_422_and_store_nothing(api: Api, data: bytes, path: str) -> None:
    response = api.upload(data)
    assert response.status_code == 422
    error = response.json()
    assert error["code"] == "E_MALFORMED" and error["errors"][0]["path"] == path
    assert set(error["errors"][0]) == {"path", "code", "message"}
    assert api.count(BatchRow) == 0 and api.count(Tap) == 0


def test_a_nul_character_in_any_string_is_422_and_stores_nothing(api: Api) -> None:
    """PostgreSQL text cannot hold NUL: refused at the door, not halfway through a COPY."""
    term, card = Terminal(TERMINAL), Card(0)
    data = body(term.batch([term.tap(card)])).replace(b'"normal"', b'"nor\\u0000mal"')
    assert b"\\u0000" in data
    response = api.upload(data)
    assert response.status_code == 422
    assert response.json()["errors"][0]["code"] == "E_NUL"
    assert api.count(BatchRow) == 0 and api.count(Tap) == 0


def test_a_backslash_before_u0000_is_text_not_nul(api: Api) -> None:
    term, card = Terminal(TERMINAL), Card(0, balance_fen=5000)
    record = msgspec.structs.replace(term.tap(card), route_id="R\\u0000")
    data = body(term.batch([record]))
    assert b"\\u0000" in data
    response = api.upload(data)
    assert response.status_code == 200
    assert verdicts(response) == [("accepted", "OK")]


def test_a_hex_field_with_a_trailing_newline_is_422_and_stores_nothing(api: Api) -> None:
    """``$`` alone would let "…\\n" through the contract's hex patterns (and break the COPY)."""
    term, card = Terminal(TERMINAL), Card(0)
    record = msgspec.structs.replace(term.tap(card), psam_serial="0102030405060708\n")
    response = api.upload(body(term.batch([record])))
    assert response.status_code == 422
    assert response.json()["errors"][0]["path"] == "$.records[0].psam_serial"
    assert api.count(BatchRow) == 0 and api.count(Tap) == 0


def test_a_truncated_valid_batch_stores_nothing(api: Api) -> None:
    term, card = Terminal(TERMINAL), Card(0)
    data = body(term.batch([term.tap(card), term.tap(card)]))
    for cut in (1, len(data) // 2, len(data) - 1):
        assert api.upload(data[:cut]).status_code == 422
    assert api.count(BatchRow) == 0


def test_bad_terminal_id_in_the_path_is_422(api: Api) -> None:
    response = api.client.post("/v1/terminals/XYZ/batches", content=b"{}", headers=api.headers())
    assert response.status_code == 422
    assert response.json()["code"] == "E_MALFORMED"


def test_denylist_full_then_delta(api: Api) -> None:
    cards = [Card(n) for n in range(3)]
    with Session(api.engine) as session, session.begin():
        denylist.add(session, OWN_ISSUER, cards[0].asn, "lost")
        v2 = denylist.add(session, OWN_ISSUER, cards[1].asn, "stolen")
    full = api.client.get(f"/v1/terminals/{TERMINAL}/denylist", params={"since": 0}, headers=api.headers()).json()
    assert full["full"] and full["version"] == v2
    assert {e["card_asn"] for e in full["added"]} == {cards[0].asn, cards[1].asn}
    with Session(api.engine) as session, session.begin():
        denylist.remove(session, OWN_ISSUER, cards[0].asn)
        denylist.add(session, OWN_ISSUER, cards[2].asn, "lost")
    delta = api.client.get(f"/v1/terminals/{TERMINAL}/denylist", params={"since": v2}, headers=api.headers()).json()
    assert not delta["full"] and delta["version"] == v2 + 2
    assert [e["card_asn"] for e in delta["added"]] == [cards[2].asn]
    assert [e["card_asn"] for e in delta["removed"]] == [cards[0].asn]
    same = api.client.get(f"/v1/terminals/{TERMINAL}/denylist", params={"since": v2 + 2}, headers=api.headers()).json()
    assert same == {"version": v2 + 2, "full": False, "added": [], "removed": []}
    assert api.client.get(f"/v1/terminals/{TERMINAL}/denylist").status_code == 401


# --- online loads with an emulated card ------------------------------------------------------


def _apdu(card: EmulatedCard, hex_apdu: str) -> bytes:
    data, sw = split_response(card.transmit(bytes.fromhex(hex_apdu)))
    assert sw == 0x9000, f"{hex_apdu[:8]}: {sw:04X}"
    return data


def _issued(api: Api, balance_fen: int = 1000) -> tuple[EmulatedCard, str]:
    with Session(api.engine) as session, session.begin():
        image, row = issue_card(
            session, api.keystore, issuer_id=OWN_ISSUER, card_type="ordinary", balance_fen=balance_fen,  # type: ignore[arg-type]
            now=NOW,
        )  # fmt: skip
        asn = row.card_asn
    card = EmulatedCard.from_image(image)
    card.power_on()
    _apdu(card, "00A40400" + f"{len(AID_PURSE):02X}" + AID_PURSE.hex())
    return card, asn


def _initialize_load(card: EmulatedCard, amount: int, asn: str) -> LoadAuthorizeRequest:
    data = _apdu(card, "805000020B01" + f"{amount:08X}" + TERMINAL + "10")
    return LoadAuthorizeRequest(
        terminal_id=TERMINAL, issuer_id=OWN_ISSUER, card_asn=asn, amount_fen=amount,
        balance_before_fen=int.from_bytes(data[0:4], "big"), online_counter=int.from_bytes(data[4:6], "big"),
        card_random=data[8:12].hex(), mac1=data[12:16].hex(), key_version=data[6], alg_id=data[7],
    )  # fmt: skip


def _pending(api: Api, load_id: str, asn: str, amount: int) -> None:
    with Session(api.engine) as session, session.begin():
        loads.create_pending(session, load_id, OWN_ISSUER, asn, amount, payment_ref=f"pi_{load_id}")


def test_online_load_authorize_credit_complete_posts_once(api: Api) -> None:
    card, asn = _issued(api, 1000)
    _pending(api, "L1", asn, 500)
    req = _initialize_load(card, 500, asn)
    answer = api.client.post("/v1/loads/L1/authorize", content=msgspec.json.encode(req), headers=api.headers())
    assert answer.status_code == 200, answer.text
    mac2, tx_time = answer.json()["mac2"], answer.json()["tx_time"]
    local = dt.datetime.fromisoformat(tx_time)
    tac = _apdu(card, "805200000B" + local.strftime("%Y%m%d%H%M%S") + mac2 + "04").hex()
    assert card.registers.balance_fen == 1500
    done = api.client.post("/v1/loads/L1/complete", json={"tac": tac}, headers=api.headers())
    assert done.status_code == 200 and done.json() == {"status": "posted"}
    again = api.client.post("/v1/loads/L1/complete", json={"tac": tac}, headers=api.headers())
    assert again.status_code == 200
    with Session(api.engine) as session:
        row = session.execute(select(CardRow).where(CardRow.card_asn == asn)).scalar_one()
        assert row.shadow_balance_fen == 1500 and row.last_online_counter == 0
        assert account_balance(session, row.account_id).credit_balance_fen == 1500
        assert session.get(PendingLoad, "L1").state == "posted"  # type: ignore[union-attr]
        assert trial_balance(session).debits_posted == 3 * 5000 + 1000 + 500


def test_load_refusals_404_409_and_forged_tac(api: Api) -> None:
    card, asn = _issued(api, 1000)
    _pending(api, "L2", asn, 300)
    req = _initialize_load(card, 300, asn)
    assert (
        api.client.post("/v1/loads/nope/authorize", content=msgspec.json.encode(req), headers=api.headers()).status_code
        == 404
    )
    wrong_amount = msgspec.structs.replace(req, amount_fen=301)
    response = api.client.post(
        "/v1/loads/L2/authorize", content=msgspec.json.encode(wrong_amount), headers=api.headers()
    )
    assert response.status_code == 409 and response.json()["code"] == "E_WRONG_AMOUNT"
    bad_mac = msgspec.structs.replace(req, mac1="00000000")
    response = api.client.post("/v1/loads/L2/authorize", content=msgspec.json.encode(bad_mac), headers=api.headers())
    assert response.status_code == 409 and response.json()["code"] == "E_MAC1_MISMATCH"
    complete_early = api.client.post("/v1/loads/L2/complete", json={"tac": "00000000"}, headers=api.headers())
    assert complete_early.status_code == 409
    ok = api.client.post("/v1/loads/L2/authorize", content=msgspec.json.encode(req), headers=api.headers())
    assert ok.status_code == 200
    forged = api.client.post("/v1/loads/L2/complete", json={"tac": "00000000"}, headers=api.headers())
    assert forged.status_code == 409 and forged.json()["code"] == "E_TAC_MISMATCH"
    assert api.client.post("/v1/loads/L2/complete", json={"tac": "0"}, headers=api.headers()).status_code == 422
    with Session(api.engine) as session:
        assert session.get(PendingLoad, "L2").state == "authorized"  # type: ignore[union-attr]


def test_a_tap_off_refund_becomes_a_pending_credit_paid_by_the_operator(api: Api) -> None:
    from clearing.ingest import refund_load_id
    from clearing.models import Account

    emulated, asn = _issued(api, 1000)
    card = Card(0, balance_fen=1000, asn_hex=asn)
    term = Terminal(TERMINAL)
    # the maximum (800) at entry, the exit one zone on: clearing computes 300 back itself
    tap_on, tap_off = journey(term, card, "ic_airport", at=NOW - dt.timedelta(minutes=40))
    response = api.upload(term.batch([tap_on, tap_off]))
    assert verdicts(response) == [("accepted", "OK"), ("accepted", "OK")]
    load_id = refund_load_id(TERMINAL, tap_off.terminal_seq)
    with Session(api.engine) as session:
        pending = session.get(PendingLoad, load_id)
        payable = session.execute(select(Account.id).where(Account.owner_ref == "operator:bus-1")).scalar_one()
        assert pending is not None and (pending.amount_fen, pending.state, pending.kind) == (300, "pending", "refund")
        assert pending.payer_account_id == payable  # a column, not parsed from the load id
        tap = session.execute(select(Tap).where(Tap.terminal_seq == tap_off.terminal_seq)).scalar_one()
        assert (tap.refund_fen, tap.fare_refund_claimed_fen, tap.fare_tap_kind) == (300, 300, "tap_off")
    req = _initialize_load(emulated, 300, asn)
    answer = api.client.post(f"/v1/loads/{load_id}/authorize", content=msgspec.json.encode(req), headers=api.headers())
    assert answer.status_code == 200, answer.text
    local = dt.datetime.fromisoformat(answer.json()["tx_time"])
    tac = _apdu(emulated, "805200000B" + local.strftime("%Y%m%d%H%M%S") + answer.json()["mac2"] + "04").hex()
    done = api.client.post(f"/v1/loads/{load_id}/complete", json={"tac": tac}, headers=api.headers())
    assert done.status_code == 200, done.text
    with Session(api.engine) as session:
        payable = session.execute(select(Account).where(Account.owner_ref == "operator:bus-1")).scalar_one()
        assert (payable.credits_posted, payable.debits_posted) == (800, 300)
        trial_balance(session)


def test_a_load_credited_with_its_tac_withheld_is_never_authorized_again(api: Api) -> None:
    """The card used the first MAC2 (its online counter moved); a second MAC2 would credit it twice."""
    card, asn = _issued(api, 1000)
    _pending(api, "L3", asn, 400)
    first = _initialize_load(card, 400, asn)
    answer = api.client.post("/v1/loads/L3/authorize", content=msgspec.json.encode(first), headers=api.headers())
    assert answer.status_code == 200, answer.text
    local = dt.datetime.fromisoformat(answer.json()["tx_time"])
    _apdu(card, "805200000B" + local.strftime("%Y%m%d%H%M%S") + answer.json()["mac2"] + "04")  # TAC withheld
    assert card.registers.balance_fen == 1400
    second = _initialize_load(card, 400, asn)
    assert second.online_counter == first.online_counter + 1
    again = api.client.post("/v1/loads/L3/authorize", content=msgspec.json.encode(second), headers=api.headers())
    assert again.status_code == 409 and again.json()["code"] == "E_LOAD_IN_DOUBT"
    with Session(api.engine) as session:
        assert session.get(PendingLoad, "L3").state == "authorized"  # type: ignore[union-attr]


def test_a_load_whose_card_never_credited_may_be_authorized_again(api: Api) -> None:
    """The card left before CREDIT FOR LOAD: same counter, new random, a fresh MAC2 is safe."""
    card, asn = _issued(api, 1000)
    _pending(api, "L4", asn, 250)
    first = _initialize_load(card, 250, asn)
    assert (
        api.client.post("/v1/loads/L4/authorize", content=msgspec.json.encode(first), headers=api.headers()).status_code
        == 200
    )
    card.power_off()
    card.power_on()
    _apdu(card, "00A40400" + f"{len(AID_PURSE):02X}" + AID_PURSE.hex())
    second = _initialize_load(card, 250, asn)
    assert second.online_counter == first.online_counter and second.card_random != first.card_random
    again = api.client.post("/v1/loads/L4/authorize", content=msgspec.json.encode(second), headers=api.headers())
    assert again.status_code == 200, again.text
    local = dt.datetime.fromisoformat(again.json()["tx_time"])
    tac = _apdu(card, "805200000B" + local.strftime("%Y%m%d%H%M%S") + again.json()["mac2"] + "04").hex()
    done = api.client.post("/v1/loads/L4/complete", json={"tac": tac}, headers=api.headers())
    assert done.status_code == 200 and card.registers.balance_fen == 1250
