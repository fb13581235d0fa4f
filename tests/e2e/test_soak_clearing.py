"""Load soak: the clearing benchmark's day of taps, ingested by two workers, must check out.

Bounded in CI (``--quick``: 20,000 records with 1 % duplicates, 0.1 % forgeries and 0.5 %
Xi'an cards); the full million-record run is ``make bench``.
"""

from __future__ import annotations

import pytest


@pytest.mark.soak
@pytest.mark.postgres
def test_a_day_of_taps_clears_with_every_duplicate_and_forgery_caught(pg_url: str) -> None:
    from benchmarks import clearing

    # main() raises SystemExit naming the failed check (ledger, duplicates, forgeries)
    clearing.main(quick=True)
