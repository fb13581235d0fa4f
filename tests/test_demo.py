"""``yikatong demo`` runs the whole city on SQLite: every card's purse equals its shadow balance."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

from terminals.session import Outcome
from yikatong.demo import run_demo
from yikatong.settings import Settings


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        database_url=f"sqlite:///{tmp_path / 'demo.db'}",
        keystore=tmp_path / "keystore.json",
        kek=SecretStr("11" * 32),
        redis_url=None,
        settlement_dir=tmp_path / "var" / "settlement",
    )


def test_demo_city_clears_every_tap_and_balances(settings: Settings, tmp_path: Path) -> None:
    report = run_demo(settings, seed=7, workdir=tmp_path / "demo", use_pcsc=False)
    outcomes = [line.result.outcome for line in report.taps]
    assert Outcome.RECOVERED in outcomes and Outcome.ALREADY_PAID in outcomes and Outcome.BLOCKED in outcomes
    assert report.verdicts.get("forwarded") == 2  # the Xi'an card, yesterday and today
    assert report.verdicts.get("rejected", 0) == 0 and report.verdicts.get("suspect", 0) == 0
    assert report.trial_balance_ok
    own = [(purse, shadow) for _label, _asn, purse, shadow in report.balances if shadow is not None]
    assert len(own) == 5 and all(purse == shadow for purse, shadow in own)
    # yesterday's morning has ended: the demo closed it, and its payout is in the files
    assert [c.newly_closed for c in report.closes] == [True] and report.closes[0].payout_fen > 0
    assert all(path.is_file() for path in report.closes[0].files.values())


def test_demo_runs_again_in_the_same_place(settings: Settings, tmp_path: Path) -> None:
    run_demo(settings, seed=1, workdir=tmp_path / "demo", use_pcsc=False)
    again = run_demo(settings, seed=2, workdir=tmp_path / "demo", use_pcsc=False)
    assert again.trial_balance_ok
    assert all(purse == shadow for _l, _a, purse, shadow in again.balances if shadow is not None)


def test_todays_demo_rides_stay_in_today_even_just_after_midnight() -> None:
    import datetime as dt

    from yikatong.demo import RIDE_SPAN, ride_start

    tz = dt.timezone(dt.timedelta(hours=8))
    midnight = dt.datetime(2026, 12, 4, tzinfo=tz)
    assert ride_start(midnight + dt.timedelta(hours=9), midnight) == (midnight + dt.timedelta(hours=8), 1.0)
    start, squeeze = ride_start(midnight + dt.timedelta(minutes=21), midnight)
    assert start == midnight + dt.timedelta(minutes=1) and 0 < squeeze < 1
    assert start + RIDE_SPAN * squeeze == midnight + dt.timedelta(minutes=21)  # the last tap is not in the future
    assert ride_start(midnight + dt.timedelta(minutes=2), midnight)[1] == 1.0  # too early: yesterday it is
