"""The fare engine: GTFS-Fares v2 tariffs priced offline at the tap, from what the card remembers.

Pure functions over frozen dataclasses; the only I/O is reading a tariff directory
(``load_tariff``). The design and every choice made where GTFS is silent are in ``docs/fares.md``.

    tariff = load_example_tariff()
    history = legs_from_transit_records(tariff, records)          # the card's 0x1E records
    category = rider_category_for_card(tariff, public_info.card_type)
    decision = price_tap(tariff, rider_category_id=category, tap=tap, history=history)
"""

from terminals.fares.card_history import legs_from_transit_records, remember, transit_record_for
from terminals.fares.engine import local_time, price_tap, rider_category_for_card
from terminals.fares.errors import FareError, TariffError, TariffProblem
from terminals.fares.loader import EXAMPLE_TARIFF_DIR, load_example_tariff, load_tariff, parse_tariff
from terminals.fares.model import FareDecision, LegKind, LegRef, PastLeg, Tap, TapKind
from terminals.fares.tariff import DurationLimitType, FareTransferType, Tariff

__all__ = [
    "EXAMPLE_TARIFF_DIR",
    "DurationLimitType",
    "FareDecision",
    "FareError",
    "FareTransferType",
    "LegKind",
    "LegRef",
    "PastLeg",
    "Tap",
    "TapKind",
    "Tariff",
    "TariffError",
    "TariffProblem",
    "legs_from_transit_records",
    "load_example_tariff",
    "load_tariff",
    "local_time",
    "parse_tariff",
    "price_tap",
    "remember",
    "rider_category_for_card",
    "transit_record_for",
]
