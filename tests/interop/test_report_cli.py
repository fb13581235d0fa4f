"""``yikatong interop report`` (the demo's "both net positions"), and the peer URL rule of the sender."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session
from typer.testing import CliRunner, Result

from clearing.db import open_migrated
from interop_xian import netting
from interop_xian.config import InteropConfig
from interop_xian.errors import InteropError
from interop_xian.sender import check_peer_url, peer_client
from yikatong.cli import app
from yikatong.settings import get_settings

DAY = dt.date(2026, 3, 2)


def _run(*args: str) -> Result:
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "160"})


@pytest.fixture
def city(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    url = f"sqlite:///{tmp_path / 'yikatong.db'}"
    monkeypatch.setenv("YIKATONG_DATABASE_URL", url)
    monkeypatch.setenv("YIKATONG_KEYSTORE", str(tmp_path / "keystore.json"))
    monkeypatch.setenv("YIKATONG_KEK", os.urandom(32).hex())
    monkeypatch.setenv("YIKATONG_CITY", "xian")
    monkeypatch.delenv("YIKATONG_REDIS_URL", raising=False)
    monkeypatch.delenv("YIKATONG_PEER_URL", raising=False)
    get_settings.cache_clear()
    assert _run("init").exit_code == 0
    yield url
    get_settings.cache_clear()


def _book(url: str, direction: str, item: str, fen: int, day: dt.date) -> None:
    engine = open_migrated(url)
    try:
        with Session(engine) as session, session.begin():
            netting.book(session, peer_city="xianyang", direction=direction, item_id=item, amount_fen=fen,
                         window_day=day, transfer_id=f"t:{item}")  # fmt: skip
    finally:
        engine.dispose()


def test_the_report_shows_every_window_with_a_position_and_the_net(city: str) -> None:
    assert "no window with xianyang yet" in _run("interop", "report").stdout
    _book(city, netting.DUE_TO, "xianyang:a:1:00", 300, DAY)
    _book(city, netting.DUE_TO, "xianyang:a:2:00", 200, DAY + dt.timedelta(days=1))
    _book(city, netting.DUE_FROM, "xian:b:1:00", 50, DAY + dt.timedelta(days=1))
    shown = _run("interop", "report")
    assert shown.exit_code == 0, shown.output
    assert f"window {DAY} with xianyang (open)" in shown.stdout
    assert "we owe 300 fen, owed 0 fen, net 300 fen" in shown.stdout
    assert "we owe 200 fen, owed 50 fen, net 150 fen" in shown.stdout
    assert "net over these windows: 450 fen (xian owes xianyang 450 fen)" in shown.stdout
    one = _run("interop", "report", "--day", DAY.isoformat(), "--csv")
    lines = one.stdout.splitlines()
    assert one.exit_code == 0 and lines[0].startswith("window_day,peer_city,") and len(lines) == 2
    assert lines[1].startswith(f"{DAY},xianyang,") and lines[1].endswith(",300,0,300,open")
    bad = _run("interop", "report", "--day", "2026-13-01")
    assert bad.exit_code == 1 and "E_BAD_DAY" in bad.stderr


@pytest.mark.parametrize("url", ["https://xian.example", "http://127.0.0.1:8410", "http://[::1]:8410"])
def test_a_peer_is_https_or_plain_http_on_loopback_only(url: str) -> None:
    check_peer_url(url)
    peer_client(InteropConfig(city="xianyang", peer_url=url)).close()


@pytest.mark.parametrize("url", ["http://xian.example", "http://10.0.0.7:8410", "http://localhost:8410", "ftp://x"])
def test_any_other_peer_url_is_refused(url: str) -> None:
    with pytest.raises(InteropError) as refused:
        peer_client(InteropConfig(city="xianyang", peer_url=url))
    assert refused.value.code == "E_INTEROP_NOT_CONFIGURED"
