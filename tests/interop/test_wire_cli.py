"""``yikatong interop keys|exchange`` the operator's way: two cities made with ``yikatong init``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from yikatong.cli import app
from yikatong.settings import get_settings


def _run(*args: str) -> Result:
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "160"})


def _city(monkeypatch: pytest.MonkeyPatch, home: Path, city: str, kek: str, **env: str) -> None:
    monkeypatch.setenv("YIKATONG_DATABASE_URL", f"sqlite:///{home / 'yikatong.db'}")
    monkeypatch.setenv("YIKATONG_KEYSTORE", str(home / "keystore.json"))
    monkeypatch.setenv("YIKATONG_KEK", kek)
    monkeypatch.setenv("YIKATONG_CITY", city)
    monkeypatch.delenv("YIKATONG_REDIS_URL", raising=False)
    monkeypatch.delenv("YIKATONG_PEER_URL", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()


def test_keys_are_made_exported_imported_and_listed_and_a_round_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keks = {"xianyang": os.urandom(32).hex(), "xian": os.urandom(32).hex()}
    homes = {c: tmp_path / c for c in keks}
    for city, home in homes.items():
        home.mkdir()
        _city(monkeypatch, home, city, keks[city])
        assert _run("init").exit_code == 0
        refused = _run("interop", "keys", "export")
        assert refused.exit_code == 1 and "E_INTEROP_NO_SIGNING_KEY" in refused.stderr
        rotated = _run("interop", "keys", "rotate")
        assert rotated.exit_code == 0 and "new signing key" in rotated.stdout
        assert _run("interop", "keys", "export", "--out", str(tmp_path / f"{city}.json")).exit_code == 0
    document = json.loads((tmp_path / "xian.json").read_text())
    assert document["city"] == "xian" and len(document["keys"]) == 1
    assert (
        "private" not in (tmp_path / "xian.json").read_text() and "sealed" not in (tmp_path / "xian.json").read_text()
    )

    _city(monkeypatch, homes["xianyang"], "xianyang", keks["xianyang"])
    own = _run("interop", "keys", "import", str(tmp_path / "xianyang.json"))
    assert own.exit_code == 1 and "E_INTEROP_BAD_KEY_FILE" in own.stderr  # our own export is not a peer's
    imported = _run("interop", "keys", "import", str(tmp_path / "xian.json"))
    assert imported.exit_code == 0 and document["keys"][0]["key_id"] in imported.stdout
    assert "nothing new" in _run("interop", "keys", "import", str(tmp_path / "xian.json")).stdout
    listed = _run("interop", "keys", "list")
    assert listed.exit_code == 0 and document["keys"][0]["key_id"] in listed.stdout and "signing" in listed.stdout

    offline = _run("interop", "exchange", "--no-send", "--json")
    assert offline.exit_code == 0 and json.loads(offline.stdout)["built"] == []
    no_peer = _run("interop", "exchange")
    assert no_peer.exit_code == 1 and "E_INTEROP_NOT_CONFIGURED" in no_peer.stderr

    _city(monkeypatch, homes["xianyang"], "xianyang", os.urandom(32).hex())  # the wrong KEK
    wrong = _run("interop", "keys", "rotate")
    assert wrong.exit_code == 1 and "E_" in wrong.stderr
    get_settings.cache_clear()
