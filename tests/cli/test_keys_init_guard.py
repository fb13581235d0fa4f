"""``keys init`` never mints keys for an issuer whose cards are registered (like ``init``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from clirun import run

from yikatong.settings import get_settings


def test_keys_init_refuses_an_issuer_with_cards_and_leaves_the_store(
    city: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    issued = run("card", "issue", "--type", "ordinary", "--out", str(tmp_path / "card.json"))
    assert issued.exit_code == 0, issued.output
    other = tmp_path / "other"  # the wrong key store: it holds only Xi'an's keys
    monkeypatch.setenv("YIKATONG_DATABASE_URL", f"sqlite:///{other / 'yikatong.db'}")
    monkeypatch.setenv("YIKATONG_KEYSTORE", str(other / "keystore.json"))
    get_settings.cache_clear()
    assert run("init", "--issuer", "xian").exit_code == 0
    monkeypatch.setenv("YIKATONG_DATABASE_URL", f"sqlite:///{city / 'yikatong.db'}")
    get_settings.cache_clear()
    before = (other / "keystore.json").read_bytes()

    result = run("keys", "init")

    assert result.exit_code == 1
    assert "E_KEY_MISSING" in result.stderr and str(other / "keystore.json") in result.stderr
    assert (other / "keystore.json").read_bytes() == before


def test_keys_init_adds_an_issuer_without_cards(city: Path) -> None:
    result = run("keys", "init", "--issuer", "xian")
    assert result.exit_code == 0, result.output
    assert "master keys version 1" in result.stdout
