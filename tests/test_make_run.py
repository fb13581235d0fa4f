"""``make run`` (``yikatong demo --serve``) keeps a whole city running for a newcomer.

The real command in a child process, on SQLite in a temporary directory: it prints the
portal's address and the demo citizen's login, the portal logs that citizen in, the demo card
is bound, localstripe answers, bus 1 keeps tapping (its taps reach clearing), Xi'an runs as a
second instance and accepts the Xi'an card's forwarded taps (both net positions equal and
opposite), and a SIGTERM stops everything, localstripe and Xi'an included.
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
import pyotp
import pytest

from yikatong import live_demo, live_interop

READY_S = 90.0
INTEROP_S = 12 * live_interop.EXCHANGE_INTERVAL_S  # a few exchange rounds, with retries under load


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _taps(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT count(*) FROM taps").fetchone()[0])


def _rows(db: Path, sql: str, *params: object) -> list[tuple[object, ...]]:
    with sqlite3.connect(db) as conn:
        return [tuple(row) for row in conn.execute(sql, params)]


def _position(db: Path, direction: str) -> dict[str, int]:
    """One side's bilateral position per window (``interop_bookings``)."""
    sql = "SELECT window_day, sum(amount_fen) FROM interop_bookings WHERE direction = ? GROUP BY 1"
    rows = _rows(db, sql, direction)
    return {str(day): int(str(fen)) for day, fen in rows}


@pytest.mark.timeout(240)
def test_make_run_serves_the_portal_the_demo_citizen_and_a_tapping_bus(tmp_path: Path) -> None:
    port, payments_port, xian_port = _free_port(), _free_port(), _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("YIKATONG_")}
    env["YIKATONG_KEK"] = "22" * 32
    cmd = [sys.executable, "-m", "yikatong.cli", "demo", "--serve", "--no-pcsc"]
    cmd += ["--port", str(port), "--payments-port", str(payments_port), "--xian-port", str(xian_port)]
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
        # the demo's finance officer logs in to the staff console with the printed TOTP URI
        uri = re.search(r"finance\.demo \(finance\): (otpauth://\S+)", text)
        assert uri is not None, text[-2000:]
        with httpx.Client(base_url=url, timeout=10) as staff:
            totp = pyotp.parse_uri(uri.group(1))
            assert isinstance(totp, pyotp.TOTP)
            code = totp.now()
            body = {"username": "finance.demo", "password": live_demo.DEMO_PASSWORD, "totp": code}
            assert staff.post("/staff/api/sessions", json=body).status_code == 201
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
        # issue 12: Xi'an runs beside the city and accepts the Xi'an card's taps Xianyang forwarded
        assert f"Xi'an:           http://127.0.0.1:{xian_port}" in text
        xian_asn = re.search(r"the Xi'an card (\d{20})'s taps", text)
        assert xian_asn is not None, text[-2000:]
        xianyang_db, xian_db = tmp_path / "yikatong.db", tmp_path / "var" / "demo" / "xian" / "yikatong.db"
        forwarded = _rows(xianyang_db, "SELECT count(*) FROM interop_forwards WHERE card_asn = ?", xian_asn.group(1))
        assert forwarded == [(2,)]  # the morning's two taps, yesterday's and today's
        accepted_there = "SELECT count(*) FROM interop_issuer_items WHERE card_asn = ? AND outcome = 'accepted'"
        accepted_here = "SELECT count(*) FROM interop_outbox WHERE state = 'accepted'"

        def settled() -> bool:
            there = _rows(xian_db, accepted_there, xian_asn.group(1))
            return there == [(2,)] and _rows(xianyang_db, accepted_here) == [(2,)]

        deadline = time.monotonic() + INTEROP_S
        while not settled():
            assert proc.poll() is None, out.read_text(errors="replace")[-3000:]
            logs = out.read_text(errors="replace")[-2000:], (xian_db.parent / "server.log").read_text(errors="replace")
            assert time.monotonic() < deadline, "\n--- Xi'an ---\n".join((logs[0], logs[1][-2000:]))
            time.sleep(0.5)
        owed_to_xianyang, xian_owes = _position(xianyang_db, "due_from"), _position(xian_db, "due_to")
        assert owed_to_xianyang == xian_owes and sum(xian_owes.values()) > 0  # equal and opposite, window by window
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert live_demo.port_free(payments_port), "localstripe outlived make run"
    assert live_demo.port_free(xian_port), "the Xi'an instance outlived make run"
    assert live_demo.port_free(port)
