"""A city made the operator's way for the CLI tests: ``yikatong init`` on a fresh SQLite database."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from clirun import run

from yikatong.settings import get_settings


@pytest.fixture
def city(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """``yikatong init`` in ``tmp_path/city`` (KEK from the environment, no Redis); the directory."""
    home = tmp_path / "city"
    monkeypatch.setenv("YIKATONG_DATABASE_URL", f"sqlite:///{home / 'yikatong.db'}")
    monkeypatch.setenv("YIKATONG_KEYSTORE", str(home / "keystore.json"))
    monkeypatch.setenv("YIKATONG_KEK", os.urandom(32).hex())
    monkeypatch.setenv("YIKATONG_CITY", "xianyang")
    monkeypatch.delenv("YIKATONG_REDIS_URL", raising=False)
    home.mkdir()
    get_settings.cache_clear()
    result = run("init")
    assert result.exit_code == 0, result.output
    yield home
    get_settings.cache_clear()
