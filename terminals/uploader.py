"""Upload the journal to the clearing centre and pull denylist updates (ARCHITECTURE.md flow 3).

The contract is ``spec/terminal-api.md``: ``POST /v1/terminals/{terminal_id}/batches`` with a
Bearer token, idempotent per ``batch_seq``. Exactly-once rests on two things:

* the journal cuts, numbers and stores a batch before the first attempt
  (``Journal.next_batch``), so every attempt, after a timeout, a restart or a SIGKILL, sends
  the same ``batch_seq`` with the same bytes and a record is never in two batches;
* the clearing centre answers a replayed batch with its original answer and posts nothing.
  A replay is therefore just a success: the answer is checked against the batch (same
  sequence, one verdict per record, in order) and stored.

Transient failures (connection errors, timeouts, 5xx, 408, 429, an answer that does not fit)
are retried with exponential backoff and full jitter; refusals that no retry can fix (401,
403, 409 ``E_BATCH_CONFLICT``, 422) raise ``UploadError`` and leave the batch in place.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Final

import httpx
import msgspec

from clearing.contract import BatchAnswer, DenylistDelta
from terminals.config import UploadConfig
from terminals.denylist import Denylist
from terminals.errors import JournalError, UploadError
from terminals.journal import Journal, StoredBatch

log = logging.getLogger(__name__)

RETRY_STATUS: Final = frozenset({408, 425, 429, 500, 502, 503, 504})
_delta_decoder = msgspec.json.Decoder(DenylistDelta)


@dataclass(slots=True)
class UploadReport:
    batches: int = 0
    records: int = 0
    attempts: int = 0
    verdicts: Counter[str] = field(default_factory=Counter)


@dataclass(frozen=True, slots=True)
class BatchUploaded:
    """One answered batch, for whoever shows uploads (the console of ``terminal run``)."""

    terminal_id: str
    batch_seq: int
    records: int
    verdicts: Counter[str]
    backlog: int  # records still not answered after this batch


BatchListener = Callable[[BatchUploaded], None]


class Uploader:
    """Sends the journal's batches in order, one at a time; see the module docstring."""

    def __init__(
        self,
        journal: Journal,
        config: UploadConfig,
        *,
        denylist: Denylist | None = None,
        client: httpx.Client | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
        on_batch: BatchListener | None = None,
    ) -> None:
        self.journal = journal
        self.config = config
        self.denylist = denylist
        self.on_batch = on_batch
        self._own_client = client is None
        self.client = client or httpx.Client(base_url=config.clearing_url, timeout=config.request_timeout_s)
        self._sleep = sleep
        self._rng = rng or random.Random()  # jitter only; nothing secret

    def close(self) -> None:
        if self._own_client:
            self.client.close()

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.config.token}", "Content-Type": "application/json"}

    def backoff_s(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(cap, base * 2**attempt)]."""
        ceiling_ms = min(self.config.backoff_cap_ms, self.config.backoff_base_ms * (2 ** min(attempt, 30)))
        return self._rng.uniform(0, ceiling_ms) / 1000

    # --- batches ------------------------------------------------------------------------
    def upload_pending(self, stop: threading.Event | None = None) -> UploadReport:
        """Send every batch the journal has (cutting new ones as it goes) until none is left."""
        report = UploadReport()
        while stop is None or not stop.is_set():
            batch = self.journal.next_batch(self.config.batch_records_max)
            if batch is None:
                break
            answer_verdicts = self._send(batch, report, stop)
            report.batches += 1
            report.records += batch.records
            report.verdicts.update(answer_verdicts)
            if self.on_batch is not None:
                counts = Counter(answer_verdicts)
                backlog = self.journal.unanswered_records()
                self.on_batch(BatchUploaded(batch.terminal_id, batch.batch_seq, batch.records, counts, backlog))
        return report

    def _send(self, batch: StoredBatch, report: UploadReport, stop: threading.Event | None) -> list[str]:
        url = f"/v1/terminals/{batch.terminal_id}/batches"
        for attempt in range(self.config.attempts_max):
            if attempt:
                delay = self.backoff_s(attempt - 1)
                if stop is None:
                    self._sleep(delay)
                elif stop.wait(delay):
                    raise UploadError(f"stopped while retrying batch {batch.batch_seq}")
            report.attempts += 1
            outcome = self._attempt(url, batch)
            if isinstance(outcome, BatchAnswer):
                self.journal.note_attempt(batch, None)
                return [v.verdict for v in outcome.verdicts]
            log.warning("batch %s/%s attempt %d failed: %s", batch.terminal_id, batch.batch_seq, attempt + 1, outcome)
            self.journal.note_attempt(batch, outcome)
        raise UploadError(
            f"batch {batch.terminal_id}/{batch.batch_seq} not answered after {self.config.attempts_max} attempts"
        )

    def _attempt(self, url: str, batch: StoredBatch) -> BatchAnswer | str:
        """One POST: the stored answer, or the reason to retry. Raises ``UploadError`` if no retry can help."""
        try:
            response = self.client.post(url, content=batch.body, headers=self._headers())
        except httpx.TransportError as exc:
            return f"{type(exc).__name__}: {exc}"
        if response.status_code in RETRY_STATUS:
            return f"HTTP {response.status_code}"
        if response.status_code != 200:
            raise _refusal(response, f"batch {batch.terminal_id}/{batch.batch_seq}")
        try:
            return self.journal.store_answer(batch, response.content)
        except JournalError as exc:
            return f"answer does not fit the batch: {exc.message}"

    # --- denylist -----------------------------------------------------------------------
    def pull_denylist(self, terminal_id: str) -> int:
        """GET the denylist changes since our version and apply them atomically; returns the version."""
        if self.denylist is None:
            raise UploadError("no local denylist to update")
        since = self.denylist.version
        for attempt in range(self.config.attempts_max):
            if attempt:
                self._sleep(self.backoff_s(attempt - 1))
            try:
                response = self.client.get(
                    f"/v1/terminals/{terminal_id}/denylist", params={"since": since}, headers=self._headers()
                )
            except httpx.TransportError as exc:
                log.warning("denylist pull failed: %s", exc)
                continue
            if response.status_code in RETRY_STATUS:
                continue
            if response.status_code != 200:
                raise _refusal(response, "denylist")
            try:
                delta = _delta_decoder.decode(response.content)
            except msgspec.DecodeError as exc:
                log.warning("denylist answer malformed: %s", exc)
                continue
            self.denylist.apply(delta)
            return self.denylist.version
        raise UploadError(f"denylist not pulled after {self.config.attempts_max} attempts")


def _refusal(response: httpx.Response, what: str) -> UploadError:
    """An answer no retry can fix, with the contract's error code when the body carries one."""
    code: str | None = None
    message = response.text[:300]
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        detail = body.get("detail")
        inner: dict[str, object] = detail if isinstance(detail, dict) else body
        found = inner.get("code")
        code = found if isinstance(found, str) else None
        message = str(inner.get("message") or message)[:300]
    return UploadError(f"{what}: HTTP {response.status_code} {code or ''} {message}", response.status_code, code)


@dataclass(frozen=True, slots=True)
class FinalUpload:
    """What a terminal's last upload before it stops did, and what it left in the journal."""

    report: UploadReport
    left: int  # records not answered by clearing: they go up on the next run with a link
    error: str | None  # why it stopped short (unreachable, refused, out of time), if it did


def final_upload(
    journal_path: str | Path, config: UploadConfig, *, budget_s: float = 5.0, on_batch: BatchListener | None = None
) -> FinalUpload:
    """One bounded last upload when the terminal stops, so records are not left behind silently.

    At most ``budget_s`` of waiting: a request may take half of it, and no batch or retry
    starts later than a request before the end (a batch cut but not answered is simply resent
    next run, with the same bytes). Never raises for the link: the caller prints ``left``.
    """
    if budget_s <= 0:
        raise ValueError("the final upload needs a positive time budget")
    hurried = replace(config, request_timeout_s=min(config.request_timeout_s, budget_s / 2))
    stop = threading.Event()
    timer = threading.Timer(budget_s - hurried.request_timeout_s, stop.set)
    timer.daemon = True
    journal = Journal(journal_path)
    uploader = Uploader(journal, hurried, on_batch=on_batch)
    report, error = UploadReport(), None
    timer.start()
    try:
        report = uploader.upload_pending(stop)
        if stop.is_set() and journal.unanswered_records():
            error = f"out of time after {budget_s:.0f} s"
    except UploadError as exc:
        error = exc.message
    except JournalError as exc:  # an answer that does not fit, from a centre that misbehaves
        error = str(exc)
    finally:
        timer.cancel()
        uploader.close()
        left = journal.unanswered_records()
        journal.close()
    return FinalUpload(report, left, error)


class UploaderThread:
    """The background uploader of a running terminal: its own journal and denylist connections."""

    def __init__(
        self, journal_path: str | Path, config: UploadConfig, terminal_id: str, *, on_batch: BatchListener | None = None
    ) -> None:
        self.journal_path = Path(journal_path)
        self.config = config
        self.terminal_id = terminal_id
        self.on_batch = on_batch
        self.stop_event = threading.Event()
        self.wake = threading.Event()
        self.last_error: str | None = None
        self.last_report: UploadReport | None = None
        self._thread = threading.Thread(target=self._run, name="uploader", daemon=True)

    def start(self) -> UploaderThread:
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        self.stop_event.set()
        self.wake.set()
        self._thread.join(timeout_s)

    def _run(self) -> None:
        journal = Journal(self.journal_path)
        denylist = Denylist(self.journal_path)
        uploader = Uploader(journal, self.config, denylist=denylist, on_batch=self.on_batch)
        try:
            while not self.stop_event.is_set():
                try:
                    self.last_report = uploader.upload_pending(self.stop_event)
                    uploader.pull_denylist(self.terminal_id)
                    self.last_error = None
                except UploadError as exc:
                    self.last_error = str(exc)
                    log.error("upload: %s", exc)
                self.wake.wait(self.config.interval_s)
                self.wake.clear()
        finally:
            uploader.close()
            denylist.close()
            journal.close()
