"""The uploader against a test double of the clearing contract, over real HTTP and a flaky link."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import httpx
import pytest

from clearing.contract import DenylistEntry
from terminals.config import UploadConfig
from terminals.denylist import Denylist
from terminals.errors import UploadError
from terminals.journal import Journal
from terminals.uploader import Uploader
from tests.terminals.test_journal import record
from tests.terminals.test_uploader_double import ClearingContractDouble, Flakiness

TERMINAL = "360486600002"
TOKEN = "tok-360486600002"


def config(url: str, **changes: object) -> UploadConfig:
    settings: dict[str, object] = {
        "clearing_url": url,
        "token": TOKEN,
        "request_timeout_s": 0.2,
        "attempts_max": 40,
        "backoff_base_ms": 1,
        "backoff_cap_ms": 20,
    }
    settings.update(changes)
    return UploadConfig(**settings)  # type: ignore[arg-type]


def filled_journal(path: Path, n: int, fast: bool = False) -> Journal:
    journal = Journal(path)
    if fast:  # test set-up only: skip fsync for bulk fill
        journal._db.execute("PRAGMA synchronous = OFF")
    for seq in range(1, n + 1):
        journal.append(record(seq, asn=f"{seq:020d}", counter=0))
    journal._db.execute("PRAGMA synchronous = FULL")
    return journal


def test_batches_carry_the_bearer_token_and_every_verdict_is_stored(tmp_path: Path) -> None:
    with ClearingContractDouble({TOKEN: TERMINAL}) as server:
        journal = filled_journal(tmp_path / "j.db", 25)
        uploader = Uploader(journal, config(server.url, batch_records_max=10))
        report = uploader.upload_pending()
        assert (report.batches, report.records, report.attempts) == (3, 25, 3)
        assert report.verdicts == {"accepted": 25}
        assert sorted(server.batches) == [(TERMINAL, 1), (TERMINAL, 2), (TERMINAL, 3)]
        assert set(server.posted.values()) == {1} and len(server.posted) == 25
        assert len(journal.verdicts()) == 25 and journal.unanswered_records() == 0
        assert uploader.upload_pending().batches == 0  # nothing new: nothing sent
        uploader.close()
        journal.close()


def test_over_a_flaky_link_every_record_is_posted_exactly_once(tmp_path: Path) -> None:
    flaky = Flakiness(rate=0.6, seed=7, slow_s=0.3)
    with ClearingContractDouble({TOKEN: TERMINAL}, flaky) as server:
        journal = filled_journal(tmp_path / "j.db", 60)
        uploader = Uploader(journal, config(server.url, batch_records_max=4))
        report = uploader.upload_pending()
        assert report.records == 60 and report.attempts > report.batches
        assert set(server.flaked) >= {"drop_before", "drop_after", "http_500", "slow_after"}
        assert len(server.posted) == 60 and set(server.posted.values()) == {1}
        assert {v for v, _ in journal.verdicts().values()} == {"accepted"}  # a replay answered like the first time
        uploader.close()
        journal.close()


def test_ten_thousand_and_one_records_go_in_two_batches(tmp_path: Path) -> None:
    with ClearingContractDouble({TOKEN: TERMINAL}) as server:
        journal = filled_journal(tmp_path / "j.db", 10_001, fast=True)
        uploader = Uploader(journal, config(server.url, request_timeout_s=30))
        report = uploader.upload_pending()
        assert (report.batches, report.records) == (2, 10_001)
        assert len(server.posted) == 10_001
        uploader.close()
        journal.close()


def test_wrong_token_is_not_retried_and_the_batch_stays_for_later(tmp_path: Path) -> None:
    with ClearingContractDouble({"other": TERMINAL}) as server:
        journal = filled_journal(tmp_path / "j.db", 3)
        uploader = Uploader(journal, config(server.url))
        with pytest.raises(UploadError) as caught:
            uploader.upload_pending()
        assert caught.value.status_code == 401 and caught.value.error_code == "E_UNAUTHORIZED"
        assert server.requests == 1 and journal.unanswered_records() == 3
        uploader.close()
        journal.close()


def test_a_conflicting_batch_sequence_is_reported_not_retried(tmp_path: Path) -> None:
    with ClearingContractDouble({TOKEN: TERMINAL}) as server:
        server.batches[(TERMINAL, 1)] = ("something else", b"{}")
        journal = filled_journal(tmp_path / "j.db", 2)
        uploader = Uploader(journal, config(server.url))
        with pytest.raises(UploadError) as caught:
            uploader.upload_pending()
        assert caught.value.status_code == 409 and caught.value.error_code == "E_BATCH_CONFLICT"
        uploader.close()
        journal.close()


def test_retries_give_up_after_the_attempt_limit_and_resume_later(tmp_path: Path) -> None:
    with ClearingContractDouble({TOKEN: TERMINAL}, Flakiness(rate=1.0, modes=("http_503",))) as server:
        journal = filled_journal(tmp_path / "j.db", 2)
        uploader = Uploader(journal, config(server.url, attempts_max=3))
        with pytest.raises(UploadError):
            uploader.upload_pending()
        assert server.requests == 3
        server.flakiness.rate = 0.0
        assert uploader.upload_pending().records == 2
        assert len(server.batches) == 1  # the same batch 1, not a new one
        uploader.close()
        journal.close()


def test_backoff_grows_exponentially_with_full_jitter(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.db")
    uploader = Uploader(journal, config("http://127.0.0.1:9", backoff_base_ms=100, backoff_cap_ms=1_000))
    for attempt, ceiling_s in [(0, 0.1), (1, 0.2), (3, 0.8), (10, 1.0)]:
        delays = [uploader.backoff_s(attempt) for _ in range(200)]
        assert min(delays) >= 0 and max(delays) <= ceiling_s
        assert max(delays) > ceiling_s / 2  # jitter spreads over the whole range
    uploader.close()
    journal.close()


def test_unreachable_clearing_centre_is_retried_then_reported(tmp_path: Path) -> None:
    journal = filled_journal(tmp_path / "j.db", 1)
    slept: list[float] = []
    uploader = Uploader(journal, config("http://127.0.0.1:9", attempts_max=4), sleep=slept.append)
    with pytest.raises(UploadError, match="not answered after 4 attempts"):
        uploader.upload_pending()
    assert len(slept) == 3
    uploader.close()
    journal.close()


def entry(asn: str, reason: str = "lost") -> DenylistEntry:
    return DenylistEntry("01007120ffffffff", asn, reason, "2025-01-01T00:00:00+08:00")


def test_denylist_updates_are_pulled_and_applied_as_full_then_delta(tmp_path: Path) -> None:
    with ClearingContractDouble({TOKEN: TERMINAL}) as server:
        server.add_denylist_version([entry("1" * 20), entry("2" * 20)])
        journal = Journal(tmp_path / "j.db")
        denylist = Denylist(tmp_path / "j.db")
        uploader = Uploader(journal, config(server.url), denylist=denylist)
        assert uploader.pull_denylist(TERMINAL) == 1 and len(denylist) == 2
        server.add_denylist_version([entry("3" * 20)], removed=[entry("1" * 20)])
        assert uploader.pull_denylist(TERMINAL) == 2
        now = dt.datetime(2025, 6, 1, tzinfo=dt.UTC)
        assert denylist.hit("01007120ffffffff", "1" * 20, now) is None
        assert denylist.hit("01007120ffffffff", "3" * 20, now) is not None
        other = Denylist(tmp_path / "j.db")  # another connection (the validator) sees the new version
        assert other.version == 2 and len(other) == 2
        uploader.close()
        journal.close()


def test_a_denylist_answer_that_does_not_decode_changes_nothing(tmp_path: Path) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"version": 9, "full": True, "added": [{"issuer_id": "zz"}], "removed": []})

    journal = Journal(tmp_path / "j.db")
    denylist = Denylist(tmp_path / "j.db")
    client = httpx.Client(base_url="http://clearing", transport=httpx.MockTransport(handler))
    uploader = Uploader(journal, config("http://clearing", attempts_max=2), denylist=denylist, client=client)
    with pytest.raises(UploadError):
        uploader.pull_denylist(TERMINAL)
    assert denylist.version == 0 and len(denylist) == 0
    journal.close()
