"""``yikatong exceptions list``: readable at 80 columns, JSON for scripts, filters; items from real ingest.

The queue is filled the way production fills it: signed records uploaded through the ingest
path (``tapfactory``), one batch received on day 0 and one five days later, and the CLI asked
six days on (its clock fixed), so ages are known: 6 and 1 business days.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session
from tapfactory import T0, Card, Terminal, make_keystore, register_world
from typer.testing import CliRunner

from clearing.ingest import TacKeys, keystore_dtk, make_ingestor, prepare
from clearing.keystore import KeyStore
from clearing.models import ExceptionItem
from clearing.validation import Limits
from yikatong.cli import app
from yikatong.commands import exceptions
from yikatong.settings import get_settings

DAY0 = T0 + dt.timedelta(hours=12)  # 2026-11-24 20:00 Asia/Shanghai, 12:00 UTC
DAY5 = DAY0 + dt.timedelta(days=5)
CLI_NOW = DAY0 + dt.timedelta(days=6)
JSON_KEYS = {
    "id", "code", "kind", "state", "age_days", "amount_fen", "issuer_id", "card_asn", "terminal_id",
    "terminal_seq", "batch_seq", "offline_counter", "message", "moved", "accept", "write_off", "created_at",
    "decided_at", "decided_by", "note", "decision_transfer_id", "decision_amount_fen",
}  # fmt: skip


class Queue:
    """Three cards, one bus, real ingest; ``items`` maps each code to its item."""

    def __init__(self, engine: Engine, keystore: KeyStore) -> None:
        self.engine = engine
        self.cards = [Card(n, balance_fen=3000) for n in range(3)]
        self.bus = Terminal("0000aa000001")
        with Session(engine) as session:
            register_world(session, self.cards, [self.bus.terminal_id])
        self.keys = TacKeys(keystore_dtk(keystore), keystore.issuers())

    def upload(self, at: dt.datetime, records: list[Any]) -> list[str]:
        ingestor = make_ingestor(self.engine, clock=lambda: at.astimezone(dt.UTC), limits=Limits(amount_fen_max=500))
        result = ingestor.ingest(prepare(self.bus.terminal_id, self.bus.batch(records), self.keys))
        return [v["code"] for v in msgspec.json.decode(result.answer)["verdicts"]]

    def items(self) -> dict[str, ExceptionItem]:
        with Session(self.engine) as session:
            rows = list(session.scalars(select(ExceptionItem)))
            session.expunge_all()
        return {i.code: i for i in rows}


@pytest.fixture
def queue(sqlite_engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Queue]:
    kek = os.urandom(32)
    keystore = make_keystore(tmp_path, kek)
    assert isinstance(keystore, KeyStore)
    q = Queue(sqlite_engine, keystore)
    gap_card, held_card, forged_card = q.cards
    bus = q.bus
    assert q.upload(DAY0, [bus.tap(gap_card, 100)]) == ["OK"]
    bus.tap(gap_card, 100)  # counter 1 never arrives: a gap, queued by the list's sweep
    assert q.upload(DAY0, [bus.tap(gap_card, 100), bus.tap(held_card, 600)]) == ["S_COUNTER_GAP", "E_AMOUNT_LIMIT"]
    forged = msgspec.structs.replace(bus.tap(forged_card, 150), amount_fen=15)
    assert q.upload(DAY5, [forged]) == ["E_TAC_MISMATCH"]
    monkeypatch.setenv("YIKATONG_KEK", kek.hex())
    monkeypatch.setenv("YIKATONG_DATABASE_URL", str(sqlite_engine.url))
    monkeypatch.setenv("YIKATONG_KEYSTORE", str(keystore.path))
    monkeypatch.delenv("YIKATONG_REDIS_URL", raising=False)
    monkeypatch.setattr(exceptions, "_now", lambda: CLI_NOW.astimezone(dt.UTC))
    get_settings.cache_clear()
    yield q
    get_settings.cache_clear()


def _list(*args: str, columns: int = 80) -> Any:
    result = CliRunner().invoke(app, ["exceptions", "list", *args], env={"COLUMNS": str(columns)})
    return result


def _json(*args: str) -> list[dict[str, Any]]:
    result = _list("--json", *args)
    assert result.exit_code == 0, result.output
    listed = json.loads(result.stdout)
    assert isinstance(listed, list)
    return listed


def test_the_list_fits_80_columns_and_keeps_id_code_amount_age_on_one_line(queue: Queue) -> None:
    result = _list()
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80, "\n".join(line for line in lines if len(line) > 80)
    assert all(line == line.rstrip() for line in lines)
    items = queue.items()
    assert set(items) == {"S_COUNTER_GAP", "E_AMOUNT_LIMIT", "E_TAC_MISMATCH"}  # the gap was swept in
    ages = {"S_COUNTER_GAP": 6, "E_AMOUNT_LIMIT": 6, "E_TAC_MISMATCH": 1}
    for code, item in items.items():
        head = [line for line in lines if line.startswith(f"#{item.id} ")]
        assert len(head) == 1, result.stdout
        assert re.fullmatch(rf"#{item.id}  {code}  {item.amount_fen} fen  age {ages[code]} d  \w+", head[0]), head
    said = " ".join(result.stdout.split())  # what wrapped at 80 columns is still all there
    for item in items.values():
        assert f"message: {' '.join(item.message.split())}" in said
    assert "queued 2026-11-24 20:00:00 +08:00" in said and "queued 2026-11-29 20:00:00 +08:00" in said
    assert "moved: posted 100 fen, card → operator" in said
    assert "accept: re-verifies the TAC, then posts 600 fen card → operator" in said
    assert "withholds N fen from the operator (operator → write-off income)" in said
    assert f"card {queue.cards[2].asn} · terminal 0000aa000001 seq 5 · counter 0" in said
    assert "open per code: E_AMOUNT_LIMIT 1, E_TAC_MISMATCH 1, S_COUNTER_GAP 1" in said


def test_a_narrow_terminal_wraps_instead_of_truncating(queue: Queue) -> None:
    assert "gaps: 1 newly queued" in _list().stdout  # the sweep, out of the way of the comparison
    wide, narrow = _list(columns=200), _list(columns=50)
    assert wide.exit_code == narrow.exit_code == 0
    assert max(len(line) for line in narrow.stdout.splitlines()) <= 50
    assert len(narrow.stdout.splitlines()) > len(wide.stdout.splitlines())
    assert " ".join(narrow.stdout.split()) == " ".join(wide.stdout.split())  # the same words, only wrapped
    assert "…" not in narrow.stdout


def test_json_is_a_list_of_objects_with_stable_keys_and_integer_fen(queue: Queue) -> None:
    listed = _json()
    # oldest first: the gap was received with the amount-limit record (its item queued later, by the sweep)
    assert [i["code"] for i in listed] == ["E_AMOUNT_LIMIT", "S_COUNTER_GAP", "E_TAC_MISMATCH"]
    for i in listed:
        assert set(i) == JSON_KEYS
        assert type(i["amount_fen"]) is int and type(i["id"]) is int and type(i["age_days"]) is int
        assert i["created_at"].endswith("+08:00") and i["decided_at"] is None
        assert set(i["accept"]) == set(i["write_off"]) == {"allowed", "moves_fen", "sentence"}
    by_code = {i["code"]: i for i in listed}
    assert by_code["E_AMOUNT_LIMIT"]["amount_fen"] == 600 and by_code["E_AMOUNT_LIMIT"]["kind"] == "held"
    assert by_code["E_AMOUNT_LIMIT"]["age_days"] == 6 and by_code["E_TAC_MISMATCH"]["age_days"] == 1
    assert by_code["E_TAC_MISMATCH"]["amount_fen"] == 15 and by_code["E_TAC_MISMATCH"]["kind"] == "unverified"
    assert by_code["E_TAC_MISMATCH"]["created_at"] == "2026-11-29T20:00:00+08:00"
    assert dt.datetime.fromisoformat(by_code["E_TAC_MISMATCH"]["created_at"]) == DAY5


def test_filters_by_code_card_and_age_before_the_limit(queue: Queue) -> None:
    gap_card, held_card, forged_card = queue.cards
    assert [i["code"] for i in _json("--code", "E_AMOUNT_LIMIT")] == ["E_AMOUNT_LIMIT"]
    assert [i["code"] for i in _json("--code", "s_counter_gap")] == ["S_COUNTER_GAP"]  # any case
    assert _json("--code", "E_DENYLISTED") == []
    assert [i["card_asn"] for i in _json("--card", forged_card.asn.upper())] == [forged_card.asn]
    assert {i["code"] for i in _json("--card", gap_card.asn)} == {"S_COUNTER_GAP"}
    assert {i["code"] for i in _json("--age", "2")} == {"S_COUNTER_GAP", "E_AMOUNT_LIMIT"}  # at least 2 days old
    assert {i["code"] for i in _json("--age", "1")} == {"S_COUNTER_GAP", "E_AMOUNT_LIMIT", "E_TAC_MISMATCH"}
    assert _json("--age", "7") == []
    assert [i["code"] for i in _json("--age", "6", "--card", held_card.asn)] == ["E_AMOUNT_LIMIT"]
    # the limit counts the filtered items: the newest is found even behind two older ones
    assert [i["code"] for i in _json("--code", "E_TAC_MISMATCH", "--limit", "1")] == ["E_TAC_MISMATCH"]
    result = _list("--code", "E_DENYLISTED", "--card", gap_card.asn)
    assert result.exit_code == 0 and f"no open exceptions (--code E_DENYLISTED --card {gap_card.asn})" in result.stdout


def test_bad_filters_are_refused_before_anything_is_read(queue: Queue) -> None:
    result = _list("--card", "3104")
    assert result.exit_code == 1 and "error: E_BAD_CARD_ID: card ASN '3104' is not 20 hex digits" in result.stderr
    result = _list("--card", "zz" * 10)
    assert result.exit_code == 1 and "E_BAD_CARD_ID" in result.stderr
    result = _list("--code", "E_NO_SUCH_CODE")
    said = " ".join(result.output.replace("│", " ").split())
    assert result.exit_code == 2 and "Invalid value for '--code'" in said and "S_COUNTER_GAP" in said
    result = _list("--age", "-1")
    assert result.exit_code == 2 and "Invalid value for '--age'" in " ".join(result.output.replace("│", " ").split())
