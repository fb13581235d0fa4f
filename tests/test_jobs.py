"""The server's background jobs (yikatong/jobs.py): they run, survive a failure, and stop with the app."""

from __future__ import annotations

import threading

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from yikatong.jobs import Job, jobs_lifespan


def test_a_failing_job_is_retried_and_the_jobs_stop_with_the_app() -> None:
    runs: list[int] = []
    twice = threading.Event()

    def flaky() -> None:
        runs.append(1)
        if len(runs) == 1:
            raise RuntimeError("the first run fails")
        twice.set()

    app = FastAPI(lifespan=jobs_lifespan([Job("flaky", 0.01, flaky)]))
    with TestClient(app):
        assert twice.wait(5), "the job was not run again after its failure"
    stopped = len(runs)
    twice.clear()
    assert not twice.wait(0.1) and len(runs) == stopped


def test_a_job_that_waits_first_does_not_run_at_start() -> None:
    ran = threading.Event()
    app = FastAPI(lifespan=jobs_lifespan([Job("later", 60, ran.set, wait_first=True)]))
    with TestClient(app):
        assert not ran.wait(0.2)


def test_a_job_needs_a_positive_interval() -> None:
    with pytest.raises(ValueError, match="positive"):
        Job("never", 0, lambda: None)
