"""``yikatong clear`` and ``yikatong serve`` (the command functions; ``yikatong/cli.py`` wires them)."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from clearing.keystore import KeyStore
from yikatong.app import create_app
from yikatong.commands import clear, serve
from yikatong.settings import get_settings


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command("clear")(clear.clear)
    app.command("serve")(serve.serve)
    return app


def test_clear_without_redis_says_there_is_nothing_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("YIKATONG_REDIS_URL", raising=False)
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(_app(), ["clear", "--workers", "3"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0
    assert "nothing to do" in result.output and "synchronously" in result.output


@pytest.mark.parametrize(
    ("args", "why"),
    [
        (["--workers", "0"], "greater than or equal to 1"),
        (["--workers", "65"], "less than or equal to 64"),
        (["--workers", "two"], "integer"),
        (["--claim-idle-s", "0.5"], "greater than or equal to 1"),
    ],
)
def test_clear_refuses_a_silly_worker_count(args: list[str], why: str) -> None:
    result = CliRunner().invoke(_app(), ["clear", *args])
    assert result.exit_code == 2, result.output  # click's usage error, before anything starts
    said = " ".join(result.output.replace("│", " ").split())  # the rich error box, unwrapped
    assert f"Invalid value for '{args[0]}'" in said and why in said, result.output
    assert "clearing with" not in said  # refused before a worker was spawned


def test_serve_assembles_the_clearing_api(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("YIKATONG_DATABASE_URL", f"sqlite:///{tmp_path / 'y.db'}")
    monkeypatch.setenv("YIKATONG_KEYSTORE", str(tmp_path / "keystore.json"))
    monkeypatch.setenv("YIKATONG_KEK", "00" * 32)
    monkeypatch.delenv("YIKATONG_REDIS_URL", raising=False)
    KeyStore.open(tmp_path / "keystore.json", bytes(32)).ensure_file()  # an existing store: only init creates one
    get_settings.cache_clear()
    try:
        app = create_app(get_settings())
    finally:
        get_settings.cache_clear()
    paths = set(app.openapi()["paths"])
    assert "/v1/terminals/{terminal_id}/batches" in paths and "/v1/loads/{load_id}/complete" in paths
