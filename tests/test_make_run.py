"""``make run`` (``yikatong demo --serve``) keeps a whole city running for a newcomer.

The real command in a child process, on SQLite in a temporary directory: it prints the
portal's address and the demo citizen's login, the portal logs that citizen in, the demo card
is bound, localstripe answers, bus 1 keeps tapping (its taps reach clearing), and a SIGTERM
stops everything, localstripe included.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from yikatong import live_demo

READY_S = 90.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _taps(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT count(*) FROM taps").fetchone()[0])


@pytest.mark.timeout(240)
def test_make_run_serves_the_portal_the_demo_citizen_and_a_tapping_bus(tmp_path: Path) -> None:
    port, payments_port = _free_port(), _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("YIKATONG_")}
    env["YIKATONG_KEK"] = "22" * 32
    cmd = [sys.executable, "-m", "yikatong.cli", "demo", "--serve", "--no-pcsc"]
    cmd += ["--port", str(port), "--payments-port", str(payments_port)]
    out = tmp_path / "out.txt"
    with out.open("wb") as sink:
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=sink, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + READY_S
        while "The city is running" not in out.read_text(errors="replace"):
            assert proc.poll() is None, out.read_text(errors="replace")[-3000:]
            assert time.monotonic() < deadline, "make run did not come up"
            time.sleep(0.5)
        text = out.read_text(errors="replace")
        url = f"http://127.0.0.1:{port}"
        assert f"portal:          {url}/" in text
        assert live_demo.DEMO_MOBILE in text and live_demo.DEMO_PASSWORD in text
        assert re.search(r"demo card:\s+\d{20}\s+PIN 123456", text)
        with httpx.Client(base_url=url, timeout=10) as client:
            login = client.post(
                "/api/sessions", json={"mobile": live_demo.DEMO_MOBILE, "password": live_demo.DEMO_PASSWORD}
            )
            assert login.status_code == 201, login.text
            cards = client.get("/api/me/cards")
            assert cards.status_code == 200 and len(cards.json()) == 1
        assert (
            httpx.get(
                f"http://127.0.0.1:{payments_port}/v1/balance", headers={"Authorization": "Bearer sk_test_yikatong"}
            ).status_code
            == 200
        )
        before = _taps(tmp_path / "yikatong.db")
        deadline = time.monotonic() + 4 * live_demo.TAP_INTERVAL_S * live_demo.UPLOAD_EVERY_TAPS
        while _taps(tmp_path / "yikatong.db") == before:
            assert time.monotonic() < deadline, "bus 1 uploaded no tap"
            time.sleep(1)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert live_demo.port_free(payments_port), "localstripe outlived make run"
    assert live_demo.port_free(port)
