"""``yikatong denylist add|remove|list``: versioned, published at once, refusals with their codes."""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from pathlib import Path
from typing import Any

import pytest
from clirun import run
from fastapi.testclient import TestClient

from clearing.redis_bus import RedisBus
from yikatong.app import create_app
from yikatong.settings import get_settings

XIANYANG = "01007120ffffffff"
XIAN = "01007100ffffffff"
ASN = "71200000000000000001"
TERMINAL = "0a0000000001"


@pytest.fixture
def card(city: Path) -> str:
    """One issued card of our city (the denylist refuses our ASNs that were never issued)."""
    result = run("card", "issue", "--type", "ordinary", "--asn", ASN, "--out", str(city / "card.json"))
    assert result.exit_code == 0, result.output
    return ASN


def _listed() -> dict[str, Any]:
    result = run("denylist", "list", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert isinstance(doc, dict)
    return doc


def test_add_list_remove_with_versions_and_shanghai_times(card: str) -> None:
    before = dt.datetime.now(dt.UTC).replace(microsecond=0)
    result = run("denylist", "add", "--card-asn", card.upper(), "--reason", "reported lost at the counter")
    assert result.exit_code == 0, result.output
    assert f"card {card} (issuer {XIANYANG}) denylisted: reported lost at the counter" in result.stdout
    assert "denylist version 1;" in result.stdout and "next denylist poll" in result.stdout
    doc = _listed()
    assert doc["version"] == 1
    [entry] = doc["entries"]
    assert entry["issuer_id"] == XIANYANG and entry["card_asn"] == card
    assert entry["reason"] == "reported lost at the counter"
    assert entry["effective_at"].endswith("+08:00")
    assert before <= dt.datetime.fromisoformat(entry["effective_at"]) <= dt.datetime.now(dt.UTC)
    table = run("denylist", "list")
    assert table.exit_code == 0, table.output
    assert max(len(line) for line in table.stdout.splitlines()) <= 80
    assert "denylist version 1: 1 card(s)" in table.stdout and card in table.stdout and XIANYANG in table.stdout
    assert re.search(r"\d{2}:\d{2}:\d{2} \+08:00", table.stdout), table.stdout
    assert "reported lost" in table.stdout
    # adding it again changes nothing
    again = run("denylist", "add", "--card-asn", card, "--reason", "lost twice")
    assert again.exit_code == 0 and "already on the denylist; version 1, nothing changed" in again.stdout
    assert _listed()["version"] == 1
    removed = run("denylist", "remove", "--card-asn", card)
    assert removed.exit_code == 0, removed.output
    assert "removed from the denylist" in removed.stdout and "denylist version 2;" in removed.stdout
    assert _listed() == {"version": 2, "entries": []}
    assert "the denylist is empty (version 2)" in run("denylist", "list").stdout


def test_a_peer_card_is_listed_under_its_issuer(city: Path) -> None:
    peer_asn = "71000000000000000042"  # a Xi'an card: not in our registry, its issuer is
    result = run("denylist", "add", "--issuer-id", "xian", "--card-asn", peer_asn, "--reason", "cloned")
    assert result.exit_code == 0, result.output
    [entry] = _listed()["entries"]
    assert (entry["issuer_id"], entry["card_asn"], entry["reason"]) == (XIAN, peer_asn, "cloned")


def test_refusals_name_their_code_and_change_nothing(card: str) -> None:
    cases = [
        (["--card-asn", "7120", "--reason", "x"], "E_BAD_CARD_ID", "is not 20 hex digits"),
        (["--card-asn", "g" * 20, "--reason", "x"], "E_BAD_CARD_ID", "is not 20 hex digits"),
        (["--card-asn", card, "--reason", "   "], "E_BAD_REASON", "1..64 printable"),
        (["--card-asn", card, "--reason", "x" * 65], "E_BAD_REASON", "1..64 printable"),
        (["--card-asn", card, "--reason", "two\nlines"], "E_BAD_REASON", "no tabs or newlines"),
        (["--card-asn", "71200000000000000999", "--reason", "x"], "E_UNKNOWN_CARD", "card show"),
        (["--issuer-id", "01007210ffffffff", "--card-asn", card, "--reason", "x"], "E_UNKNOWN_ISSUER", "issuer add"),
        (["--issuer-id", "gotham", "--card-asn", card, "--reason", "x"], "E_BAD_ISSUER", "neither a city name"),
    ]
    for args, code, why in cases:
        result = run("denylist", "add", *args)
        assert result.exit_code == 1, (args, result.output)
        assert f"error: {code}: " in result.stderr and why in result.stderr, (args, result.stderr)
    assert _listed() == {"version": 0, "entries": []}
    result = run("denylist", "remove", "--card-asn", card)
    assert result.exit_code == 1
    assert f"error: E_NOT_LISTED: card {card} of issuer {XIANYANG} is not on the denylist" in result.stderr
    result = run("denylist", "remove", "--card-asn", "12")
    assert result.exit_code == 1 and "error: E_BAD_CARD_ID" in result.stderr
    result = run("denylist", "add", "--card-asn", card)
    assert result.exit_code == 2 and "Missing option" in result.output and "--reason" in result.output
    assert _listed() == {"version": 0, "entries": []}


def test_without_redis_the_commit_is_what_terminals_download(card: str) -> None:
    token = run("terminal", "register", "--terminal-id", TERMINAL, "--operator", "Xianyang Bus").stdout.split()[-1]
    client = TestClient(create_app(get_settings()))
    headers = {"Authorization": f"Bearer {token}"}
    assert client.get(f"/v1/terminals/{TERMINAL}/denylist?since=0", headers=headers).json()["version"] == 0
    assert run("denylist", "add", "--card-asn", card, "--reason", "stolen").exit_code == 0
    delta = client.get(f"/v1/terminals/{TERMINAL}/denylist?since=0", headers=headers).json()
    assert delta["version"] == 1 and [e["card_asn"] for e in delta["added"]] == [card]
    assert run("denylist", "remove", "--card-asn", card).exit_code == 0
    delta = client.get(f"/v1/terminals/{TERMINAL}/denylist?since=1", headers=headers).json()
    assert delta["version"] == 2 and [e["card_asn"] for e in delta["removed"]] == [card]


@pytest.mark.redis
def test_with_redis_the_mirror_is_published_at_once(card: str, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    prefix = f"yikatong-test-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("YIKATONG_REDIS_URL", redis_url)
    monkeypatch.setenv("YIKATONG_REDIS_PREFIX", prefix)
    get_settings.cache_clear()
    bus = RedisBus.from_url(redis_url, prefix=prefix)
    try:
        result = run("denylist", "add", "--card-asn", card, "--reason", "stolen")
        assert result.exit_code == 0, result.output
        assert f"published to Redis ({prefix}, version 1)" in result.stdout
        assert bus.denylist_version() == 1 and bus.denylisted(XIANYANG, card)
        result = run("denylist", "remove", "--card-asn", card)
        assert result.exit_code == 0, result.output
        assert bus.denylist_version() == 2 and not bus.denylisted(XIANYANG, card)
    finally:
        for key in bus.client.scan_iter(f"{prefix}:*"):
            bus.client.delete(key)
        bus.close()


def test_an_unreachable_redis_leaves_the_change_committed_and_says_so(
    card: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("YIKATONG_REDIS_URL", "redis://127.0.0.1:1/0")  # nothing listens on port 1
    get_settings.cache_clear()
    result = run("denylist", "add", "--card-asn", card, "--reason", "stolen")
    assert result.exit_code == 0, result.output
    assert "warning: E_UNAVAILABLE: the change is committed but Redis was not updated" in result.stderr
    assert "within 30 s" in result.stdout
    assert _listed()["version"] == 1
