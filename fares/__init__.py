"""The fare engine: GTFS-Fares v2 tariffs priced offline at the tap, from what the card remembers.

Pure functions over frozen dataclasses; the only I/O is reading tariff directories
(``load_tariff``, ``load_tariff_book``). Imports only ``cardos`` and the standard library, so that
both the terminals (which price taps) and the clearing centre (which recomputes tap-off refunds
from TAC-verified legs) can use it. The design and every choice made where GTFS is silent are
in ``docs/fares.md``.

    tariff = load_example_tariff()
    history = legs_from_transit_records(tariff, records)          # the card's 0x1E records
    category = rider_category_for_card(tariff, public_info.card_type)
    decision = price_tap(tariff, rider_category_id=category, tap=tap, history=history)

    # clearing: the same engine over cleared taps and the tariff version the terminal used
    tariff = book[fare.tariff_version]
    refund = tap_off_refund(tariff, rider_category_id=..., entry=EntryLeg(...), exit_tap=ExitTap(...),
                            history=legs_from_cleared_taps(tariff, taps_before_entry))
"""

from fares.book import TariffBook, load_tariff_book
from fares.card_history import legs_from_transit_records, remember, transit_record_for
from fares.cleared import ClearedTap, legs_from_cleared_taps
from fares.engine import local_time, price_tap, rider_category_for_card
from fares.errors import FareError, TariffError, TariffProblem, UnknownTariffVersion
from fares.loader import EXAMPLE_TARIFF_DIR, content_version, load_example_tariff, load_tariff, parse_tariff
from fares.model import FareDecision, LegKind, LegRef, PastLeg, Tap, TapKind
from fares.refund import EntryLeg, ExitTap, RefundReason, TapOffRefund, minimum_fare_fen, tap_off_refund
from fares.tariff import DurationLimitType, FareTransferType, Tariff

__all__ = [
    "EXAMPLE_TARIFF_DIR",
    "ClearedTap",
    "DurationLimitType",
    "EntryLeg",
    "ExitTap",
    "FareDecision",
    "FareError",
    "FareTransferType",
    "LegKind",
    "LegRef",
    "PastLeg",
    "RefundReason",
    "Tap",
    "TapKind",
    "TapOffRefund",
    "Tariff",
    "TariffBook",
    "TariffError",
    "TariffProblem",
    "UnknownTariffVersion",
    "content_version",
    "legs_from_cleared_taps",
    "legs_from_transit_records",
    "load_example_tariff",
    "load_tariff",
    "load_tariff_book",
    "local_time",
    "minimum_fare_fen",
    "parse_tariff",
    "price_tap",
    "remember",
    "rider_category_for_card",
    "tap_off_refund",
    "transit_record_for",
]
