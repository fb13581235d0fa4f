"""The last upload when a terminal stops: bounded in time, and it says what stays behind."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from terminals.uploader import BatchUploaded, Uploader, final_upload
from tests.terminals.test_uploader import TERMINAL, TOKEN, config, filled_journal
from tests.terminals.test_uploader_double import ClearingContractDouble


def test_each_answered_batch_is_announced_with_its_verdicts_and_the_backlog(tmp_path: Path) -> None:
    seen: list[BatchUploaded] = []
    with ClearingContractDouble({TOKEN: TERMINAL}) as server:
        journal = filled_journal(tmp_path / "j.db", 25)
        uploader = Uploader(journal, config(server.url, batch_records_max=10), on_batch=seen.append)
        uploader.upload_pending()
        uploader.close()
        journal.close()
    assert [(n.batch_seq, n.records, n.backlog) for n in seen] == [(1, 10, 15), (2, 10, 5), (3, 5, 0)]
    assert all(n.verdicts == {"accepted": n.records} and n.terminal_id == TERMINAL for n in seen)


def test_the_final_upload_sends_what_is_left_and_reports_nothing_left(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    filled_journal(path, 7).close()
    seen: list[BatchUploaded] = []
    with ClearingContractDouble({TOKEN: TERMINAL}) as server:
        done = final_upload(path, config(server.url), budget_s=5.0, on_batch=seen.append)
        assert len(server.posted) == 7
    assert (done.left, done.error, done.report.records) == (0, None, 7)
    assert [n.backlog for n in seen] == [0]


def test_the_final_upload_to_an_unreachable_centre_gives_up_in_time_and_counts_what_is_left(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    filled_journal(path, 3).close()
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}"
    started = time.monotonic()
    done = final_upload(path, config(url, backoff_base_ms=200, backoff_cap_ms=400), budget_s=1.0)
    assert time.monotonic() - started < 2.0
    assert done.left == 3 and done.error is not None


@pytest.fixture
def silent_server() -> Iterator[str]:
    """Accepts connections and never answers: the worst link, a request that only times out."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            held.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join(2)
    for conn in held:
        conn.close()
    server.close()


def test_the_final_upload_to_a_centre_that_never_answers_is_bounded(tmp_path: Path, silent_server: str) -> None:
    path = tmp_path / "j.db"
    filled_journal(path, 2).close()
    started = time.monotonic()
    done = final_upload(path, config(silent_server, request_timeout_s=30.0), budget_s=1.0)
    elapsed = time.monotonic() - started
    assert elapsed < 1.8, elapsed  # the budget, not the configured 30 s request timeout
    assert done.left == 2 and done.error is not None
