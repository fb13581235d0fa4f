"""Taps priced by the real fare engine with the example Xianyang tariff."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import pytest

from cardos.profile import CardType
from clearing.contract import TapRecord
from fares import (
    ClearedTap,
    EntryLeg,
    ExitTap,
    RefundReason,
    TapKind,
    Tariff,
    legs_from_cleared_taps,
    load_example_tariff,
    rider_category_for_card,
    tap_off_refund,
)
from terminals.session import Outcome
from terminals.validator import TariffFare
from tests.terminals.test_tap_kit import ASN_B, NOW, Rig, make_card, make_psam, make_rig, transit_history


@pytest.fixture(scope="module")
def tariff() -> Tariff:
    return load_example_tariff()


def validator(tmp_path: Path, tariff: Tariff, route: str, stop: str, terminal: str = "360486600002") -> Rig:
    rig = make_rig(
        tmp_path,
        psam=make_psam(terminal_id=bytes.fromhex(terminal)),
        journal_name=f"{terminal}.db",
        route_id=route,
        stop_id=stop,
    )
    rig.terminal.pricer = TariffFare(tariff)
    return rig


def test_the_fare_comes_from_the_tariff_and_the_record_carries_its_codes(tmp_path: Path, tariff: Tariff) -> None:
    rig = validator(tmp_path, tariff, "K26", "u_city_hall")
    card = make_card()
    result = rig.present(card)
    assert result.outcome is Outcome.PAID and result.amount_fen == 200
    fare = result.record.fare
    assert fare is not None
    assert (fare.product_id, fare.rider_category_id, fare.leg_group_id) == ("urban_2y", "adult", "urban")
    assert (fare.full_fare_fen, fare.discount_fen, fare.transfer_of) == (200, 0, None)
    assert (fare.tap_kind, fare.tariff_version) == ("single", "xianyang-2026.1")
    assert rig.records()[0].fare == fare  # journaled as priced
    [leg] = transit_history(card)
    assert (leg.line, leg.station, leg.terminal_seq) == (1026, 103, result.record.terminal_seq)
    rig.close()


def test_a_transfer_within_the_hour_names_the_earlier_leg(tmp_path: Path, tariff: Tariff) -> None:
    first = validator(tmp_path, tariff, "1", "u_railway_station", "360486600002")
    second = validator(tmp_path, tariff, "K26", "u_city_hall", "360486600003")
    card = make_card()
    paid = first.present(card)
    assert paid.amount_fen == 100
    transfer = second.present(card, NOW + dt.timedelta(minutes=20))
    assert transfer.outcome is Outcome.PAID
    fare = transfer.record.fare
    assert fare is not None and fare.transfer_of == paid.record.terminal_seq
    assert fare.discount_fen == fare.full_fare_fen - transfer.amount_fen
    later = second.present(card, NOW + dt.timedelta(hours=3))  # outside the transfer window
    assert later.amount_fen == 200 and later.record.fare.transfer_of is None
    first.close()
    second.close()


def test_senior_off_peak_ride_is_free_and_still_journaled(tmp_path: Path, tariff: Tariff) -> None:
    rig = validator(tmp_path, tariff, "1", "u_railway_station")
    card = make_card(ASN_B, card_type=CardType.SENIOR)
    result = rig.present(card, NOW + dt.timedelta(hours=2))  # Monday 10:00
    assert result.outcome is Outcome.PAID and result.amount_fen == 0
    assert result.record.fare.rider_category_id == "senior"
    assert card.balance_fen == 5_000 and card.offline_counter == 1
    rig.close()


def test_a_route_the_tariff_does_not_know_is_refused_without_a_charge(tmp_path: Path, tariff: Tariff) -> None:
    rig = validator(tmp_path, tariff, "no-such-route", "u_railway_station")
    card = make_card()
    result = rig.present(card)
    assert result.outcome is Outcome.NO_FARE and "E_FARE_UNKNOWN_ROUTE" in result.message
    assert card.balance_fen == 5_000 and rig.records() == []
    rig.close()


def test_intercity_tap_on_charges_the_maximum_and_tap_off_owes_the_refund(tmp_path: Path, tariff: Tariff) -> None:
    on = validator(tmp_path, tariff, "ic1", "ic_xianyang_station", "360486600011")
    off = validator(tmp_path, tariff, "ic1", "ic_airport", "360486600012")
    on.terminal.config = dataclasses.replace(on.terminal.config, tap_kind="tap_on")
    off.terminal.config = dataclasses.replace(off.terminal.config, tap_kind="tap_off")
    card = make_card()
    entry = on.present(card)
    assert entry.outcome is Outcome.PAID and entry.amount_fen > 0
    exit_ = off.present(card, NOW + dt.timedelta(minutes=40))
    assert exit_.outcome is Outcome.PAID and exit_.amount_fen == 0
    fare = exit_.record.fare
    assert fare is not None and fare.refund_due_fen == entry.amount_fen - (fare.full_fare_fen - fare.discount_fen)
    assert [leg.tx_type for leg in transit_history(card)] == [0x04, 0x03]
    assert entry.record.fare.tap_kind == "tap_on" and fare.tap_kind == "tap_off"
    assert entry.record.fare.tariff_version == fare.tariff_version == tariff.version

    # The clearing centre's view: the two journaled records, the tariff of the version they
    # name, and the same engine give the refund the terminal claimed.
    [on_record] = on.records()
    [off_record] = off.records()
    assert off_record.fare == fare
    refund = tap_off_refund(
        tariff,
        rider_category_id=rider_category_for_card(tariff, CardType.ORDINARY),
        entry=EntryLeg(str(on_record.route_id), str(on_record.stop_id), _when(on_record), on_record.amount_fen),
        exit_tap=ExitTap(str(off_record.route_id), str(off_record.stop_id), _when(off_record)),
        history=legs_from_cleared_taps(tariff, []),
    )
    assert refund.reason is RefundReason.CLOSED and refund.refund_fen == fare.refund_due_fen > 0
    assert 0 < refund.refund_fen <= refund.charged_fen - refund.minimum_fare_fen
    legs = legs_from_cleared_taps(tariff, [_cleared(on_record), _cleared(off_record)])
    assert [(leg.kind.value, leg.charged_fen) for leg in legs] == [("closed", entry.amount_fen)]
    on.close()
    off.close()


def _when(record: TapRecord) -> dt.datetime:
    return dt.datetime.fromisoformat(record.tx_time)


def _cleared(record: TapRecord) -> ClearedTap:
    """What clearing holds of a tap, as ``legs_from_cleared_taps`` takes it."""
    kind = TapKind(record.fare.tap_kind) if record.fare is not None and record.fare.tap_kind is not None else None
    when = _when(record)
    return ClearedTap(
        record.route_id, record.stop_id, when, record.amount_fen, kind, record.terminal_id, record.terminal_seq
    )


def test_a_flat_fare_is_a_single_tap_on_no_tariff_version(tmp_path: Path) -> None:
    rig = make_rig(tmp_path)  # FlatFare
    result = rig.present(make_card())
    assert result.outcome is Outcome.PAID
    fare = result.record.fare
    assert fare is not None and (fare.tap_kind, fare.tariff_version) == ("single", None)
    rig.close()
