"""Bad input at the terminal API: a clear refusal in the contract's shape, never a 500, nothing lost.

Each test here failed on the code before issue 8 (a 500, a stalled terminal, or an upper-case
TAC refused for the whole batch).
"""

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
from tapfactory import T0, Card, Terminal, body, make_keystore, register_world

from clearing import validation
from clearing.api import ApiDeps, create_app
from clearing.contract import Batch
from clearing.ledger import trial_balance
from clearing.models import BatchRow, ExceptionItem, Tap, Transfer

NOW = T0 + dt.timedelta(days=1)
TERMINAL = "0000aa000001"


class Api:
    def __init__(self, engine: Engine, keystore: Any, tokens: dict[str, str]) -> None:
        self.engine = engine
        self.tokens = tokens
        self.client = TestClient(
            create_app(ApiDeps(engine, keystore, clock=lambda: NOW.astimezone(dt.UTC))), raise_server_exceptions=False
        )

    def post(self, data: bytes, *, token: str | None = None, path: str | None = None, **kw: Any) -> Any:
        headers = {"Authorization": f"Bearer {token or self.tokens[TERMINAL]}", **kw.pop("headers", {})}
        return self.client.post(path or f"/v1/terminals/{TERMINAL}/batches", content=data, headers=headers, **kw)

    def count(self, model: Any) -> int:
        with Session(self.engine) as session:
            return int(session.execute(select(func.count()).select_from(model)).scalar_one())


@pytest.fixture
def api(db_engine: Engine, tmp_path: Path) -> Iterator[Api]:
    cards = [Card(n, balance_fen=5000) for n in range(2)]
    with Session(db_engine) as session:
        tokens = register_world(session, cards, [TERMINAL], tokens=True)
    yield Api(db_engine, make_keystore(tmp_path), tokens)


def _record(terminal: Terminal, card: Card, when: dt.datetime | None = None) -> Any:
    return terminal.tap(card, 150, when)


@pytest.mark.parametrize(
    "tx_time", ["9999-12-31T23:59:59+08:00", "0001-01-01T00:00:00+08:00", "9999-12-31T23:59:59-08:00"]
)
def test_a_time_at_the_end_of_the_calendar_is_a_bad_time_not_a_500(api: Api, tx_time: str) -> None:
    terminal = Terminal(TERMINAL)
    good = _record(terminal, Card(0, balance_fen=5000))
    odd = msgspec.structs.replace(_record(terminal, Card(1, balance_fen=5000)), tx_time=tx_time)
    response = api.post(body(Batch(1, T0.isoformat(), [good, odd])))
    assert response.status_code == 200, response.text
    verdicts = response.json()["verdicts"]
    assert [v["code"] for v in verdicts] == ["OK", "E_BAD_TIME"]
    assert "2000..2099" in verdicts[1]["message"]
    assert api.count(Tap) == 1  # the genuine record is kept


def test_a_deeply_nested_body_is_malformed_not_a_500(api: Api) -> None:
    nested = b"[" * 50_000 + b"]" * 50_000
    for data in (nested, b'{"batch_seq": 1, "x": "\\u0000", "y": ' + nested + b"}"):
        response = api.post(data)
        assert response.status_code == 422, response.text
        assert response.json()["code"] == "E_MALFORMED"
    assert api.count(BatchRow) == 0


def test_upper_case_hex_is_accepted_and_stored_lower_case(api: Api) -> None:
    terminal = Terminal(TERMINAL)
    record = _record(terminal, Card(0, balance_fen=5000))
    shouting = msgspec.structs.replace(
        record, tac=record.tac.upper(), card_asn=record.card_asn.upper(), issuer_id=record.issuer_id.upper()
    )
    response = api.post(body(Batch(1, T0.isoformat(), [shouting])))
    assert response.status_code == 200, response.text
    assert response.json()["verdicts"][0]["code"] == "OK"
    with Session(api.engine) as session:
        tap = session.execute(select(Tap)).scalar_one()
    assert (tap.tac, tap.card_asn, tap.issuer_id) == (record.tac, record.card_asn, record.issuer_id)
    # the same batch written in lower case is the same batch: its stored answer, nothing new
    again = api.post(body(Batch(1, T0.isoformat(), [record])))
    assert again.content == response.content
    assert api.count(Transfer) == 2 + 1  # two cards sold with value, one tap


def test_upper_case_terminal_id_in_the_path_is_the_same_terminal(api: Api) -> None:
    record = _record(Terminal(TERMINAL), Card(0, balance_fen=5000))
    response = api.post(body(Batch(1, T0.isoformat(), [record])), path=f"/v1/terminals/{TERMINAL.upper()}/batches")
    assert response.status_code == 200, response.text
    assert response.json()["verdicts"][0]["code"] == "OK"


def test_a_body_declared_too_large_is_refused_before_it_is_read(api: Api) -> None:
    response = api.client.post(
        f"/v1/terminals/{TERMINAL}/batches", content=b"{}", headers={"Content-Length": str(64 * 1024 * 1024)}
    )
    assert response.status_code == 413
    assert response.json()["code"] == "E_TOO_LARGE"


def test_the_token_is_checked_before_the_body(api: Api) -> None:
    response = api.post(b"not json at all", token=f"{TERMINAL}.wrong")
    assert response.status_code == 401
    assert response.json()["code"] == "E_UNAUTHORIZED"


def test_an_unknown_path_answers_in_the_contract_shape(api: Api) -> None:
    response = api.client.get("/v1/terminals/0000aa000001/nothing-here")
    assert response.status_code == 404
    assert response.json()["code"] == "E_NOT_FOUND"


def test_a_batch_that_cannot_be_judged_gets_a_final_answer_and_loses_nothing(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    terminal = Terminal(TERMINAL)
    records = [_record(terminal, Card(0, balance_fen=5000)), _record(terminal, Card(1, balance_fen=5000))]
    data = body(Batch(1, T0.isoformat(), records))

    def broken(*_: object, **__: object) -> None:
        raise ZeroDivisionError("a bug in the judge")

    monkeypatch.setattr("clearing.ingest.judge", broken)
    response = api.post(data)
    assert response.status_code == 200, response.text
    verdicts = response.json()["verdicts"]
    assert [v["code"] for v in verdicts] == ["E_UNJUDGEABLE", "E_UNJUDGEABLE"]
    assert all(v["verdict"] == "rejected" for v in verdicts)
    with Session(api.engine) as session:
        item = session.execute(select(ExceptionItem)).scalar_one()
        batch = session.execute(select(BatchRow)).scalar_one()
        assert item.kind == "batch" and item.code == "E_UNJUDGEABLE" and item.state == "open"
        assert "ZeroDivisionError" in item.message
        assert batch.status == "done" and batch.body == data  # the records are kept for re-judging
        trial_balance(session)
    assert api.count(Tap) == 0
    assert api.count(Transfer) == 2  # only the cards' opening value
    # the terminal's retry gets the same answer, and nothing is queued twice
    monkeypatch.setattr("clearing.ingest.judge", validation.judge)
    assert api.post(data).content == response.content
    assert api.count(ExceptionItem) == 1


def test_a_store_that_stays_down_is_a_503_to_retry(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    from sqlalchemy.exc import OperationalError

    def down(*_: object, **__: object) -> None:
        raise OperationalError("select 1", {}, Exception("connection refused"))

    record = _record(Terminal(TERMINAL), Card(0, balance_fen=5000))
    monkeypatch.setattr("clearing.ingest.with_retries", down)
    monkeypatch.setattr("clearing.ingest_sqlite.with_retries", down)
    monkeypatch.setattr("clearing.ingest_pg.with_retries", down)
    response = api.post(body(Batch(1, T0.isoformat(), [record])))
    assert response.status_code == 503
    assert response.json()["code"] == "E_UNAVAILABLE"
    assert api.count(BatchRow) == 0
