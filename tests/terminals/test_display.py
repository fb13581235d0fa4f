"""What the terminal's console says: amounts typed at a till, times, why a fare is 0.00, the tally."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cardos.profile import PURSE_MAX_FEN, CardType
from fares import Tariff, load_example_tariff
from terminals.display import AmountError, Tally, parse_yuan, shanghai_clock, shanghai_stamp, yuan
from terminals.session import Outcome, TapResult
from terminals.uploader import BatchUploaded
from terminals.validator import TariffFare
from tests.terminals.test_tap_kit import ASN_B, NOW, Rig, make_card, make_psam, make_rig
from yikatong.commands.terminal_run import tap_line, upload_line

# --- the POS prompt ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("typed", "fen"),
    [("12.50", 1250), ("12.5", 1250), ("12", 1200), (" 0.01 ", 1), ("10000.00", PURSE_MAX_FEN), ("007.00", 700)],
)
def test_a_sale_is_typed_in_yuan_with_at_most_two_decimals(typed: str, fen: int) -> None:
    assert parse_yuan(typed) == fen


@pytest.mark.parametrize(
    ("typed", "says"),
    [
        ("12.505", "more than two decimals"),
        ("1250.001", "more than two decimals"),
        ("-3", "negative"),
        ("-0.50", "negative"),
        ("abc", "not an amount"),
        ("12,50", "not an amount"),
        ("1e3", "not an amount"),
        ("12.", "not an amount"),
        (".5", "not an amount"),
        ("１２", "not an amount"),  # full-width digits are not ASCII digits
        ("0", "more than 0.00"),
        ("0.00", "more than 0.00"),
        ("10000.01", "more than a purse can hold"),
    ],
)
def test_amounts_that_are_not_a_sale_are_refused_with_a_reason(typed: str, says: str) -> None:
    with pytest.raises(AmountError) as caught:
        parse_yuan(typed)
    assert says in str(caught.value) and str(caught.value).startswith("E_AMOUNT: ")


@given(st.integers(1, PURSE_MAX_FEN))
def test_what_the_console_shows_reads_back_as_the_same_fen(fen: int) -> None:
    assert parse_yuan(yuan(fen)) == fen


# --- times --------------------------------------------------------------------------------------


def test_times_are_shown_in_shanghai_with_the_offset() -> None:
    utc = dt.datetime(2026, 12, 2, 0, 15, 2, tzinfo=dt.UTC)
    assert shanghai_clock(utc) == "08:15:02 +08:00"
    assert shanghai_stamp(utc) == "2026-12-02 08:15:02 +08:00"
    with pytest.raises(ValueError, match="naive"):
        shanghai_clock(dt.datetime(2026, 12, 2, 8, 15, 2))


# --- why a fare is what it is -------------------------------------------------------------------


@pytest.fixture(scope="module")
def tariff() -> Tariff:
    return load_example_tariff()


def validator(tmp_path: Path, tariff: Tariff, route: str, stop: str, terminal: str) -> Rig:
    rig = make_rig(
        tmp_path,
        psam=make_psam(terminal_id=bytes.fromhex(terminal)),
        journal_name=f"{terminal}.db",
        route_id=route,
        stop_id=stop,
    )
    rig.terminal.pricer = TariffFare(tariff)
    return rig


def test_a_full_fare_gives_no_reason_and_a_transfer_says_so(tmp_path: Path, tariff: Tariff) -> None:
    first = validator(tmp_path, tariff, "1", "u_railway_station", "360486600002")
    second = validator(tmp_path, tariff, "K26", "u_city_hall", "360486600003")
    card = make_card()
    paid = first.present(card)
    assert paid.outcome is Outcome.PAID and paid.fare_reason is None
    transfer = second.present(card, NOW + dt.timedelta(minutes=20))
    assert transfer.amount_fen == 0 and transfer.fare_reason == "transfer"
    assert "fare   0.00 (transfer)" in tap_line(transfer, at="08:20:00 +08:00")
    first.close()
    second.close()


def test_a_free_senior_ride_says_concession(tmp_path: Path, tariff: Tariff) -> None:
    rig = validator(tmp_path, tariff, "1", "u_railway_station", "360486600002")
    result = rig.present(make_card(ASN_B, card_type=CardType.SENIOR), NOW + dt.timedelta(hours=2))
    assert result.amount_fen == 0 and result.fare_reason == "concession (senior)"
    assert "fare   0.00 (concession (senior))" in tap_line(result, at="10:00:00 +08:00")
    rig.close()


def test_the_ride_past_the_daily_cap_says_cap(tmp_path: Path, tariff: Tariff) -> None:
    rig = validator(tmp_path, tariff, "K26", "u_city_hall", "360486600002")
    card = make_card(balance_fen=50_000)
    start = NOW.replace(hour=6)
    fares = [rig.present(card, start + dt.timedelta(hours=2 * n)) for n in range(6)]  # no transfers
    assert [f.amount_fen for f in fares] == [200, 200, 200, 200, 200, 0]  # adult cap 10.00
    assert fares[-1].fare_reason == "daily cap reached" and fares[0].fare_reason is None
    rig.close()


def test_the_pos_console_says_sale_not_fare() -> None:
    result = TapResult(Outcome.PAID, "paid", card_asn="03104000000000012345", amount_fen=1250, balance_after_fen=3750)
    line = tap_line(result, pos=True, at="08:15:02 +08:00")
    assert "sale  12.50" in line and "fare" not in line and line.startswith("08:15:02 +08:00")


# --- uploads and the tally ------------------------------------------------------------------------


def test_each_upload_shows_its_batch_verdicts_and_backlog() -> None:
    notice = BatchUploaded("360486600002", 7, 12, Counter(accepted=10, rejected=1, suspect=1), backlog=3)
    line = upload_line(notice, at="08:15:02 +08:00")
    assert "batch 7: 12 records" in line
    assert "accepted 10, suspect 1, rejected 1, forwarded 0; backlog 3" in line


def test_the_tally_counts_paid_taps_apart_from_refused_and_repeated_ones() -> None:
    tally = Tally()
    outcomes = [Outcome.PAID, Outcome.PAID, Outcome.SUSPECT, Outcome.ALREADY_PAID, Outcome.INSUFFICIENT]
    outcomes += [Outcome.SUSPECTED_CLONE, Outcome.BLOCKED, Outcome.TAP_AGAIN, Outcome.RECOVERED]
    for outcome in outcomes:
        tally.add(TapResult(outcome, "", amount_fen=200 if outcome.charged else 0))
    assert tally.summary() == "paid 3 (6.00 CNY), recovered 1, repeated 1, refused 3, failed 1"
    assert tally.taps == len(outcomes)
