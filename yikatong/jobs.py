"""The server's background jobs (top-up sweep, nightly close, interop exchange): one loop each.

Each job is a plain synchronous callable run every ``interval_s`` in a worker thread while the
app is up, so a slow close or a peer that does not answer never blocks a request. A failing run
is logged and retried at the next interval; the server keeps serving. Every job is idempotent
(its own module says why), so two servers running the same schedule, or a run cut short by a
stop, change nothing twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

log = logging.getLogger("yikatong.jobs")


@dataclass(frozen=True, slots=True)
class Job:
    name: str
    interval_s: float
    run: Callable[[], object]
    wait_first: bool = False  # the first run after one interval, not at start

    def __post_init__(self) -> None:
        if not self.interval_s > 0:
            raise ValueError(f"job {self.name}: the interval is positive")


async def run_forever(job: Job) -> None:
    if job.wait_first:
        await asyncio.sleep(job.interval_s)
    while True:
        try:
            await run_in_threadpool(job.run)
        except asyncio.CancelledError:
            raise
        except Exception:  # the next run tries again; the server keeps serving
            log.exception("background job %s failed", job.name)
        await asyncio.sleep(job.interval_s)


def jobs_lifespan(jobs: Sequence[Job]) -> Callable[[FastAPI], contextlib.AbstractAsyncContextManager[None]]:
    """A FastAPI lifespan that starts ``jobs`` with the app and cancels them when it stops."""

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        tasks = [asyncio.create_task(run_forever(job), name=f"job:{job.name}") for job in jobs]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    return lifespan


__all__ = ["Job", "jobs_lifespan", "run_forever"]
