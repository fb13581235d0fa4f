"""Load and check a tariff: a directory of GTFS-Fares v2 CSV tables plus Yikatong's own files.

The only I/O of the fare engine is ``load_tariff`` reading the files; ``parse_tariff`` does the
work on their texts, so tests and tools can check a tariff without a disk. Every problem is
collected with its file, line and column and raised together as one ``TariffError``: a tariff
is either loaded whole and consistent or not at all (``docs/fares.md``, "Loading a tariff").

Money is parsed from the decimal text to integer fen with integer arithmetic only: the GTFS
reference asks for decimal processing of currency amounts, and Yikatong never uses floats.
"""

from __future__ import annotations

import csv
import datetime as dt
import functools
import hashlib
import io
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from types import MappingProxyType
from typing import Final, TypeVar

from cardos.profile import PURSE_MAX_FEN, CardType
from fares.errors import TariffError, TariffProblem
from fares.tariff import (
    TRANSFER_COUNT_UNLIMITED,
    DurationLimitType,
    FareLegRule,
    FareMedia,
    FareMediaType,
    FareProduct,
    FareTransferRule,
    FareTransferType,
    RiderCategory,
    ServiceCalendar,
    Tariff,
    Timeframe,
)

EXAMPLE_TARIFF_DIR: Final = Path(__file__).parent / "data" / "xianyang_example"

CURRENCY: Final = "CNY"
CURRENCY_DECIMALS: Final = 2  # ISO 4217
CARD_CODE_MIN: Final = 1  # 0 means "no code" in a transit record
CARD_CODE_MAX: Final = 0xFFFE  # FFFF is the erased-flash pattern of an empty record
DURATION_LIMIT_MAX_S: Final = 7 * 86400
TRIP_DURATION_MAX_S_DEFAULT: Final = 4 * 3600
TRIP_DURATION_MAX_S_LIMIT: Final = 86400
FILE_BYTES_MAX: Final = 16 * 1024 * 1024
# A tariff version travels in the wire contract's FareInfo.tariff_version (at most 64 characters).
TARIFF_VERSION_LENGTH_MAX: Final = 64
CONTENT_VERSION_PREFIX: Final = "sha256:"  # reserved for versions derived from the files
CONTENT_VERSION_HEX_DIGITS: Final = 12
DAY_S: Final = 86400

# Problem codes (stable; tests and operators match on them).
E_MISSING_FILE: Final = "E_TARIFF_MISSING_FILE"
E_DUPLICATE_FILE: Final = "E_TARIFF_DUPLICATE_FILE"
E_UNKNOWN_FILE: Final = "E_TARIFF_UNKNOWN_FILE"
E_BAD_ENCODING: Final = "E_TARIFF_BAD_ENCODING"
E_BAD_CSV: Final = "E_TARIFF_BAD_CSV"
E_MISSING_COLUMN: Final = "E_TARIFF_MISSING_COLUMN"
E_UNKNOWN_COLUMN: Final = "E_TARIFF_UNKNOWN_COLUMN"
E_DUPLICATE_COLUMN: Final = "E_TARIFF_DUPLICATE_COLUMN"
E_BAD_ROW: Final = "E_TARIFF_BAD_ROW"
E_MISSING_VALUE: Final = "E_TARIFF_MISSING_VALUE"
E_BAD_VALUE: Final = "E_TARIFF_BAD_VALUE"
E_BAD_INTEGER: Final = "E_TARIFF_BAD_INTEGER"
E_BAD_ENUM: Final = "E_TARIFF_BAD_ENUM"
E_BAD_AMOUNT: Final = "E_TARIFF_BAD_AMOUNT"
E_NEGATIVE_AMOUNT: Final = "E_TARIFF_NEGATIVE_AMOUNT"
E_BAD_CURRENCY: Final = "E_TARIFF_BAD_CURRENCY"
E_BAD_TIME: Final = "E_TARIFF_BAD_TIME"
E_BAD_DATE: Final = "E_TARIFF_BAD_DATE"
E_OUT_OF_RANGE: Final = "E_TARIFF_OUT_OF_RANGE"
E_DUPLICATE_KEY: Final = "E_TARIFF_DUPLICATE_KEY"
E_UNKNOWN_REFERENCE: Final = "E_TARIFF_UNKNOWN_REFERENCE"
E_CONFLICT: Final = "E_TARIFF_CONFLICT"


@dataclass(frozen=True, slots=True)
class _Spec:
    columns: tuple[str, ...]
    required: frozenset[str]


def _spec(*columns: str, required: Iterable[str]) -> _Spec:
    return _Spec(columns, frozenset(required))


_WEEKDAYS: Final = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")

_SPECS: Final[Mapping[str, _Spec]] = {
    "fare_media": _spec(
        "fare_media_id", "fare_media_name", "fare_media_type", required=("fare_media_id", "fare_media_type")
    ),
    "rider_categories": _spec(
        "rider_category_id",
        "rider_category_name",
        "is_default_fare_category",
        "eligibility_url",
        required=("rider_category_id", "rider_category_name"),
    ),
    "fare_products": _spec(
        "fare_product_id",
        "fare_product_name",
        "rider_category_id",
        "fare_media_id",
        "amount",
        "currency",
        required=("fare_product_id", "amount", "currency"),
    ),
    "networks": _spec("network_id", "network_name", required=("network_id",)),
    "route_networks": _spec("network_id", "route_id", required=("network_id", "route_id")),
    "areas": _spec("area_id", "area_name", required=("area_id",)),
    "stop_areas": _spec("area_id", "stop_id", required=("area_id", "stop_id")),
    "calendar": _spec("service_id", *_WEEKDAYS, "start_date", "end_date", required=("service_id", *_WEEKDAYS)),
    "calendar_dates": _spec("service_id", "date", "exception_type", required=("service_id", "date", "exception_type")),
    "timeframes": _spec(
        "timeframe_group_id", "start_time", "end_time", "service_id", required=("timeframe_group_id", "service_id")
    ),
    "fare_leg_rules": _spec(
        "leg_group_id",
        "network_id",
        "from_area_id",
        "to_area_id",
        "from_timeframe_group_id",
        "to_timeframe_group_id",
        "fare_product_id",
        "rule_priority",
        required=("fare_product_id",),
    ),
    "fare_transfer_rules": _spec(
        "from_leg_group_id",
        "to_leg_group_id",
        "transfer_count",
        "duration_limit",
        "duration_limit_type",
        "fare_transfer_type",
        "fare_product_id",
        required=("fare_transfer_type",),
    ),
    # Yikatong extensions (docs/fares.md).
    "yikatong_codes": _spec("kind", "gtfs_id", "code", required=("kind", "gtfs_id", "code")),
    "yikatong_caps": _spec(
        "rider_category_id", "amount", "currency", required=("rider_category_id", "amount", "currency")
    ),
    "yikatong_card_types": _spec("card_type", "rider_category_id", required=("card_type", "rider_category_id")),
    "yikatong_settings": _spec("key", "value", required=("key", "value")),
    # GTFS stops, for the staff console's stop map only (settlement.reports.load_stops); the fare
    # engine does not read it. Every GTFS column is allowed so a feed's own file loads as it is.
    "stops": _spec(
        *("stop_id", "stop_code", "stop_name", "tts_stop_name", "stop_desc", "stop_lat", "stop_lon", "zone_id"),
        *("stop_url", "location_type", "parent_station", "stop_timezone", "wheelchair_boarding", "level_id"),
        "platform_code",
        required=("stop_id",),
    ),
}
_REQUIRED_TABLES: Final = frozenset({"fare_products", "fare_leg_rules", "yikatong_codes"})
_EXTENSIONS: Final = (".csv", ".txt")  # GTFS names its CSV files .txt; both are accepted

_INTEGER = re.compile(r"-?[0-9]{1,12}")
_AMOUNT = re.compile(r"(-?)([0-9]{1,12})(?:\.([0-9]+))?")
_TIME = re.compile(r"([0-9]{1,2}):([0-5][0-9]):([0-5][0-9])")
_DATE = re.compile(r"[0-9]{8}")
_HEX_CITY = re.compile(r"[0-9A-Fa-f]{4}")
# No ':' so that a named version can never look like a content version ("sha256:...").
_VERSION = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._-]{{0,{TARIFF_VERSION_LENGTH_MAX - 1}}}")

_E = TypeVar("_E", bound=IntEnum)


class _Sink:
    """Collects problems; remembers which tables could not be read so that references into a
    broken table are not reported a second time as "unknown"."""

    def __init__(self) -> None:
        self.problems: list[TariffProblem] = []
        self.broken: set[str] = set()
        self.file_of: dict[str, str] = {}

    def add(self, code: str, file: str, line: int | None, column: str | None, message: str) -> None:
        self.problems.append(TariffProblem(code, file, line, column, message))

    def file(self, table: str) -> str:
        return self.file_of.get(table, f"{table}.csv")


class _Row:
    """One data row; the typed getters report what is wrong and return None, marking the row bad."""

    __slots__ = ("_sink", "file", "line", "ok", "values")

    def __init__(self, sink: _Sink, file: str, line: int, values: dict[str, str]) -> None:
        self._sink = sink
        self.file = file
        self.line = line
        self.values = values
        self.ok = True

    def problem(self, code: str, column: str | None, message: str) -> None:
        self.ok = False
        self._sink.add(code, self.file, self.line, column, message)

    def optional(self, column: str) -> str | None:
        value = self.values.get(column, "")
        if value != value.strip():
            self.problem(E_BAD_VALUE, column, f"{value!r} has leading or trailing spaces")
            return None
        return value or None

    def required(self, column: str) -> str | None:
        value = self.optional(column)
        if value is None and self.ok:
            self.problem(E_MISSING_VALUE, column, "a value is required")
        return value

    def integer(self, column: str, *, required: bool, minimum: int, maximum: int) -> int | None:
        text = self.required(column) if required else self.optional(column)
        if text is None:
            return None
        if not _INTEGER.fullmatch(text):
            self.problem(E_BAD_INTEGER, column, f"{text!r} is not an integer")
            return None
        value = int(text)
        if not minimum <= value <= maximum:
            self.problem(E_OUT_OF_RANGE, column, f"{value} is outside {minimum}..{maximum}")
            return None
        return value

    def enum(self, column: str, kind: type[_E], *, required: bool) -> _E | None:
        text = self.required(column) if required else self.optional(column)
        if text is None:
            return None
        allowed = ", ".join(f"{member.value} ({member.name.lower()})" for member in kind)
        if not _INTEGER.fullmatch(text):
            self.problem(E_BAD_ENUM, column, f"{text!r} is not one of {allowed}")
            return None
        try:
            return kind(int(text))
        except ValueError:
            self.problem(E_BAD_ENUM, column, f"{text!r} is not one of {allowed}")
            return None

    def flag(self, column: str, *, required: bool) -> bool | None:
        text = self.required(column) if required else self.optional(column)
        if text is None:
            return None if required else False
        if text not in ("0", "1"):
            self.problem(E_BAD_ENUM, column, f"{text!r} is not 0 or 1")
            return None
        return text == "1"

    def amount_fen(self, column: str, currency_column: str) -> int | None:
        """Decimal CNY text to integer fen, exactly; more than 2 decimals is refused, not rounded."""
        text = self.required(column)
        currency = self.required(currency_column)
        if currency is not None and currency != CURRENCY:
            self.problem(E_BAD_CURRENCY, currency_column, f"{currency!r} is not {CURRENCY}, the purse's currency")
        if text is None:
            return None
        match = _AMOUNT.fullmatch(text)
        if match is None:
            self.problem(E_BAD_AMOUNT, column, f"{text!r} is not a decimal amount such as 2.50")
            return None
        sign, whole, fraction = match.group(1), match.group(2), match.group(3) or ""
        if len(fraction) > CURRENCY_DECIMALS:
            self.problem(
                E_BAD_AMOUNT,
                column,
                f"{text!r} has {len(fraction)} decimal places; {CURRENCY} has {CURRENCY_DECIMALS} "
                "(amounts are refused, not rounded)",
            )
            return None
        fen = int(whole) * 10**CURRENCY_DECIMALS + int(fraction.ljust(CURRENCY_DECIMALS, "0"))
        if fen > PURSE_MAX_FEN:
            self.problem(E_OUT_OF_RANGE, column, f"{text} {CURRENCY} is more than a purse can hold")
            return None
        return -fen if sign else fen

    def time_s(self, column: str) -> int | None:
        text = self.optional(column)
        if text is None:
            return None
        match = _TIME.fullmatch(text)
        if match is None:
            self.problem(E_BAD_TIME, column, f"{text!r} is not a time HH:MM:SS")
            return None
        seconds = int(match.group(1)) * 3600 + int(match.group(2)) * 60 + int(match.group(3))
        if seconds > DAY_S:
            self.problem(E_BAD_TIME, column, f"{text!r} is after 24:00:00, which timeframes forbid")
            return None
        return seconds

    def date(self, column: str) -> dt.date | None:
        text = self.required(column)
        if text is None:
            return None
        if _DATE.fullmatch(text):
            try:
                return dt.date(int(text[0:4]), int(text[4:6]), int(text[6:8]))
            except ValueError:
                pass
        self.problem(E_BAD_DATE, column, f"{text!r} is not a date YYYYMMDD")
        return None


class _Keys:
    """Primary-key bookkeeping: the second row with a key already seen is a problem."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self._names = names
        self._seen: dict[tuple[object, ...], int] = {}

    def fresh(self, row: _Row, key: tuple[object, ...]) -> bool:
        first = self._seen.get(key)
        if first is None:
            self._seen[key] = row.line
            return True
        shown = ", ".join(f"{name}={value or ''}" for name, value in zip(self._names, key, strict=True))
        row.problem(E_DUPLICATE_KEY, None, f"duplicate key ({shown}); first defined on line {first}")
        return False


def _read_table(files: Mapping[str, str], table: str, sink: _Sink) -> list[_Row] | None:
    """Rows of one table, or None when its file is absent."""
    present = [table + ext for ext in _EXTENSIONS if table + ext in files]
    if not present:
        return None
    name = present[0]
    sink.file_of[table] = name
    if len(present) > 1:
        sink.add(E_DUPLICATE_FILE, name, None, None, f"both {present[0]} and {present[1]} exist; keep one")
    spec = _SPECS[table]
    text = files[name].removeprefix("\ufeff")
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    rows: list[_Row] = []
    try:
        header = next(reader, None)
        if header is None:
            sink.add(E_MISSING_COLUMN, name, 1, None, "the file is empty; the first line must name the columns")
            sink.broken.add(table)
            return rows
        if not _check_header(name, header, spec, sink):
            sink.broken.add(table)
            return rows
        for fields in reader:
            if not fields or fields == [""]:
                continue  # blank line
            if len(fields) != len(header):
                sink.add(
                    E_BAD_ROW, name, reader.line_num, None, f"has {len(fields)} fields, the header has {len(header)}"
                )
                continue
            rows.append(_Row(sink, name, reader.line_num, dict(zip(header, fields, strict=True))))
    except csv.Error as exc:
        sink.add(E_BAD_CSV, name, reader.line_num, None, f"not valid CSV: {exc}")
        sink.broken.add(table)
    return rows


def _check_header(name: str, header: list[str], spec: _Spec, sink: _Sink) -> bool:
    good = True
    seen: set[str] = set()
    for column in header:
        if column in seen:
            sink.add(E_DUPLICATE_COLUMN, name, 1, column, "the column appears twice")
            good = False
        seen.add(column)
        if column not in spec.columns:
            sink.add(E_UNKNOWN_COLUMN, name, 1, column, f"unknown column; known: {', '.join(spec.columns)}")
            good = False
    for column in spec.columns:
        if column in spec.required and column not in seen:
            sink.add(E_MISSING_COLUMN, name, 1, column, "required column is missing")
            good = False
    return good


class _Builder:
    def __init__(self, files: Mapping[str, str], source: str) -> None:
        self.source = source
        self.sink = _Sink()
        self.tables: dict[str, list[_Row] | None] = {}
        self.product_rows: dict[FareProduct, _Row] = {}
        known = {table + ext for table in _SPECS for ext in _EXTENSIONS}
        for name in sorted(files):
            if name.endswith(_EXTENSIONS) and name not in known:
                self.sink.add(E_UNKNOWN_FILE, name, None, None, "not a table Yikatong reads; remove or rename it")
        for table in _SPECS:
            rows = _read_table(files, table, self.sink)
            if rows is None and table in _REQUIRED_TABLES:
                self.sink.add(E_MISSING_FILE, f"{table}.csv", None, None, "required file is missing")
                self.sink.broken.add(table)
            self.tables[table] = rows

    def rows(self, table: str) -> list[_Row]:
        return self.tables.get(table) or []

    def ref(
        self, row: _Row, column: str, value: str | None, known: Mapping[str, object] | set[str], table: str
    ) -> bool:
        """Check a foreign key; a reference into a broken table is not reported again."""
        if value is None or value in known or table in self.sink.broken:
            return True
        if self.tables.get(table) is None:
            row.problem(E_UNKNOWN_REFERENCE, column, f"unknown {column} {value!r}: there is no {table} file")
        else:
            row.problem(E_UNKNOWN_REFERENCE, column, f"unknown {column} {value!r} (not in {self.sink.file(table)})")
        return False

    # --- Yikatong extensions ------------------------------------------------------------

    def codes(self) -> tuple[dict[str, int], dict[str, int]]:
        routes: dict[str, int] = {}
        stops: dict[str, int] = {}
        by_code: dict[tuple[str, int], tuple[str, int]] = {}
        keys = _Keys(("kind", "gtfs_id"))
        for row in self.rows("yikatong_codes"):
            kind = row.required("kind")
            gtfs_id = row.required("gtfs_id")
            code = row.integer("code", required=True, minimum=CARD_CODE_MIN, maximum=CARD_CODE_MAX)
            if kind is not None and kind not in ("route", "stop"):
                row.problem(E_BAD_ENUM, "kind", f"{kind!r} is not route or stop")
            if not row.ok or kind is None or gtfs_id is None or code is None:
                continue
            if not keys.fresh(row, (kind, gtfs_id)):
                continue
            taken = by_code.get((kind, code))
            if taken is not None:
                row.problem(E_DUPLICATE_KEY, "code", f"{kind} code {code} is already {taken[0]!r} on line {taken[1]}")
                continue
            by_code[(kind, code)] = (gtfs_id, row.line)
            (routes if kind == "route" else stops)[gtfs_id] = code
        return routes, stops

    def settings(self) -> tuple[int, bytes | None, str | None]:
        trip_duration_max_s = TRIP_DURATION_MAX_S_DEFAULT
        acquirer_city: bytes | None = None
        version: str | None = None
        keys = _Keys(("key",))
        for row in self.rows("yikatong_settings"):
            key = row.required("key")
            if key is None or not keys.fresh(row, (key,)):
                continue
            if key == "trip_duration_max_s":
                value = row.integer("value", required=True, minimum=60, maximum=TRIP_DURATION_MAX_S_LIMIT)
                if value is not None:
                    trip_duration_max_s = value
            elif key == "acquirer_city":
                text = row.required("value")
                if text is not None and not _HEX_CITY.fullmatch(text):
                    row.problem(E_BAD_VALUE, "value", f"{text!r} is not a 2-byte city code in hex, such as 7120")
                elif text is not None:
                    acquirer_city = bytes.fromhex(text)
            elif key == "tariff_version":
                text = row.required("value")
                if text is not None and not _VERSION.fullmatch(text):
                    row.problem(
                        E_BAD_VALUE,
                        "value",
                        f"{text!r} is not a tariff version: 1 to {TARIFF_VERSION_LENGTH_MAX} letters, digits, "
                        "'.', '_' or '-', starting with a letter or digit (such as xianyang-2026.1)",
                    )
                elif text is not None:
                    version = text
            else:
                row.problem(
                    E_BAD_ENUM,
                    "key",
                    f"unknown setting {key!r}; known: trip_duration_max_s, acquirer_city, tariff_version",
                )
        return trip_duration_max_s, acquirer_city, version

    # --- GTFS tables ----------------------------------------------------------------------

    def fare_media(self) -> tuple[dict[str, FareMedia], str | None]:
        media: dict[str, FareMedia] = {}
        keys = _Keys(("fare_media_id",))
        card: list[tuple[str, _Row]] = []
        for row in self.rows("fare_media"):
            media_id = row.required("fare_media_id")
            name = row.optional("fare_media_name") or ""
            media_type = row.enum("fare_media_type", FareMediaType, required=True)
            if not row.ok or media_id is None or media_type is None or not keys.fresh(row, (media_id,)):
                continue
            media[media_id] = FareMedia(media_id, name, media_type)
            if media_type is FareMediaType.TRANSIT_CARD:
                card.append((media_id, row))
        for media_id, row in card[1:]:
            row.problem(
                E_CONFLICT,
                "fare_media_type",
                f"{media_id!r} is a second transit card (type 2) after {card[0][0]!r}; "
                "a Yikatong tariff prices exactly one card",
            )
        return media, (card[0][0] if card else None)

    def rider_categories(self) -> tuple[dict[str, RiderCategory], str | None]:
        categories: dict[str, RiderCategory] = {}
        keys = _Keys(("rider_category_id",))
        defaults: list[str] = []
        for row in self.rows("rider_categories"):
            category_id = row.required("rider_category_id")
            name = row.required("rider_category_name")
            is_default = row.flag("is_default_fare_category", required=False)
            row.optional("eligibility_url")
            if not row.ok or category_id is None or name is None or is_default is None:
                continue
            if not keys.fresh(row, (category_id,)):
                continue
            categories[category_id] = RiderCategory(category_id, name, is_default)
            if is_default:
                if defaults:
                    row.problem(
                        E_CONFLICT, "is_default_fare_category", f"a second default category after {defaults[0]!r}"
                    )
                defaults.append(category_id)
        if categories and not defaults and "rider_categories" not in self.sink.broken:
            self.sink.add(
                E_CONFLICT,
                self.sink.file("rider_categories"),
                None,
                "is_default_fare_category",
                "no category is the default (is_default_fare_category=1); exactly one must be",
            )
        return categories, (defaults[0] if defaults else None)

    def fare_products(
        self, media: Mapping[str, FareMedia], categories: Mapping[str, RiderCategory]
    ) -> list[FareProduct]:
        products: list[FareProduct] = []
        keys = _Keys(("fare_product_id", "rider_category_id", "fare_media_id"))
        for row in self.rows("fare_products"):
            product_id = row.required("fare_product_id")
            name = row.optional("fare_product_name") or ""
            category_id = row.optional("rider_category_id")
            media_id = row.optional("fare_media_id")
            amount_fen = row.amount_fen("amount", "currency")
            self.ref(row, "rider_category_id", category_id, categories, "rider_categories")
            self.ref(row, "fare_media_id", media_id, media, "fare_media")
            if not row.ok or product_id is None or amount_fen is None:
                continue
            if keys.fresh(row, (product_id, category_id, media_id)):
                product = FareProduct(product_id, name, category_id, media_id, amount_fen)
                products.append(product)
                self.product_rows[product] = row
        return products

    def _names(self, table: str, id_column: str, name_column: str) -> dict[str, str]:
        """A table of unique ids with optional names (networks, areas)."""
        names: dict[str, str] = {}
        keys = _Keys((id_column,))
        for row in self.rows(table):
            ident = row.required(id_column)
            name = row.optional(name_column) or ""
            if row.ok and ident is not None and keys.fresh(row, (ident,)):
                names[ident] = name
        return names

    def networks(self) -> dict[str, str]:
        return self._names("networks", "network_id", "network_name")

    def route_networks(self, networks: Mapping[str, str], routes: Mapping[str, int]) -> dict[str, str]:
        result: dict[str, str] = {}
        keys = _Keys(("route_id",))
        for row in self.rows("route_networks"):
            network_id = row.required("network_id")
            route_id = row.required("route_id")
            self.ref(row, "network_id", network_id, networks, "networks")
            self.ref(row, "route_id", route_id, routes, "yikatong_codes")
            if row.ok and network_id is not None and route_id is not None and keys.fresh(row, (route_id,)):
                result[route_id] = network_id
        return result

    def areas(self) -> dict[str, str]:
        return self._names("areas", "area_id", "area_name")

    def stop_areas(self, areas: Mapping[str, str], stops: Mapping[str, int]) -> dict[str, frozenset[str]]:
        result: dict[str, set[str]] = {}
        keys = _Keys(("area_id", "stop_id"))
        for row in self.rows("stop_areas"):
            area_id = row.required("area_id")
            stop_id = row.required("stop_id")
            self.ref(row, "area_id", area_id, areas, "areas")
            self.ref(row, "stop_id", stop_id, stops, "yikatong_codes")
            if row.ok and area_id is not None and stop_id is not None and keys.fresh(row, (area_id, stop_id)):
                result.setdefault(stop_id, set()).add(area_id)
        return {stop_id: frozenset(area_ids) for stop_id, area_ids in result.items()}

    def calendar(self) -> tuple[dict[str, ServiceCalendar], dict[str, dict[dt.date, bool]]]:
        services: dict[str, ServiceCalendar] = {}
        keys = _Keys(("service_id",))
        for row in self.rows("calendar"):
            service_id = row.required("service_id")
            flags = [row.flag(day, required=True) for day in _WEEKDAYS]
            start = row.date("start_date")
            end = row.date("end_date")
            if start is not None and end is not None and end < start:
                row.problem(E_CONFLICT, "end_date", f"end_date {end:%Y%m%d} is before start_date {start:%Y%m%d}")
            if not row.ok or service_id is None or start is None or end is None or not keys.fresh(row, (service_id,)):
                continue
            weekdays = frozenset(number for number, flag in enumerate(flags) if flag)
            services[service_id] = ServiceCalendar(service_id, weekdays, start, end)
        exceptions: dict[str, dict[dt.date, bool]] = {}
        keys = _Keys(("service_id", "date"))
        for row in self.rows("calendar_dates"):
            service_id = row.required("service_id")
            day = row.date("date")
            exception_type = row.integer("exception_type", required=True, minimum=1, maximum=2)
            if not row.ok or service_id is None or day is None or exception_type is None:
                continue
            if keys.fresh(row, (service_id, day)):
                exceptions.setdefault(service_id, {})[day] = exception_type == 1
        return services, exceptions

    def timeframes(self, service_ids: set[str]) -> dict[str, tuple[Timeframe, ...]]:
        frames: dict[str, list[Timeframe]] = {}
        lines: dict[Timeframe, int] = {}
        for row in self.rows("timeframes"):
            group = row.required("timeframe_group_id")
            start = row.time_s("start_time")
            end = row.time_s("end_time")
            service_id = row.required("service_id")
            broken_calendar = {"calendar", "calendar_dates"} & self.sink.broken
            if service_id is not None and service_id not in service_ids and not broken_calendar:
                row.problem(
                    E_UNKNOWN_REFERENCE,
                    "service_id",
                    f"unknown service_id {service_id!r} (not in calendar or calendar_dates)",
                )
            start_text, end_text = row.values.get("start_time", ""), row.values.get("end_time", "")
            if bool(start_text) != bool(end_text):
                row.problem(
                    E_MISSING_VALUE, "end_time" if start_text else "start_time", "start_time and end_time go together"
                )
            if start is not None and end is not None and start >= end:
                row.problem(E_CONFLICT, "end_time", "end_time must be after start_time")
            if not row.ok or group is None or service_id is None:
                continue
            frame = Timeframe(group, start if start is not None else 0, end if end is not None else DAY_S, service_id)
            for other in frames.get(group, []):
                if other.service_id == service_id and frame.start_s < other.end_s and other.start_s < frame.end_s:
                    row.problem(
                        E_CONFLICT,
                        "start_time",
                        f"overlaps the interval on line {lines[other]} of the same timeframe_group_id and service_id",
                    )
                    break
            else:
                frames.setdefault(group, []).append(frame)
                lines[frame] = row.line
        return {group: tuple(group_frames) for group, group_frames in frames.items()}

    def leg_rules(
        self,
        networks: Mapping[str, str],
        areas: Mapping[str, str],
        timeframes: Mapping[str, object],
        product_ids: set[str],
    ) -> tuple[list[FareLegRule], bool]:
        rules: list[FareLegRule] = []
        table = self.tables.get("fare_leg_rules")
        prioritised = False
        if table:
            prioritised = "rule_priority" in table[0].values
        keys = _Keys(
            (
                "network_id",
                "from_area_id",
                "to_area_id",
                "from_timeframe_group_id",
                "to_timeframe_group_id",
                "fare_product_id",
            )
        )
        for row in self.rows("fare_leg_rules"):
            leg_group_id = row.optional("leg_group_id")
            network_id = row.optional("network_id")
            from_area = row.optional("from_area_id")
            to_area = row.optional("to_area_id")
            from_frame = row.optional("from_timeframe_group_id")
            to_frame = row.optional("to_timeframe_group_id")
            product_id = row.required("fare_product_id")
            priority = row.integer("rule_priority", required=False, minimum=0, maximum=2**31 - 1)
            self.ref(row, "network_id", network_id, networks, "networks")
            self.ref(row, "from_area_id", from_area, areas, "areas")
            self.ref(row, "to_area_id", to_area, areas, "areas")
            self.ref(row, "from_timeframe_group_id", from_frame, timeframes, "timeframes")
            self.ref(row, "to_timeframe_group_id", to_frame, timeframes, "timeframes")
            self.ref(row, "fare_product_id", product_id, product_ids, "fare_products")
            if not row.ok or product_id is None:
                continue
            if keys.fresh(row, (network_id, from_area, to_area, from_frame, to_frame, product_id)):
                rule = FareLegRule(
                    row.line,
                    leg_group_id,
                    network_id,
                    from_area,
                    to_area,
                    from_frame,
                    to_frame,
                    product_id,
                    priority or 0,
                )
                rules.append(rule)
        return rules, prioritised

    def transfer_rules(self, leg_group_ids: set[str], product_ids: set[str]) -> list[FareTransferRule]:
        rules: list[FareTransferRule] = []
        keys = _Keys(("from_leg_group_id", "to_leg_group_id", "fare_product_id", "transfer_count", "duration_limit"))
        for row in self.rows("fare_transfer_rules"):
            from_group = row.optional("from_leg_group_id")
            to_group = row.optional("to_leg_group_id")
            count = row.integer("transfer_count", required=False, minimum=TRANSFER_COUNT_UNLIMITED, maximum=1000)
            limit = row.integer("duration_limit", required=False, minimum=1, maximum=DURATION_LIMIT_MAX_S)
            limit_type = row.enum("duration_limit_type", DurationLimitType, required=False)
            transfer_type = row.enum("fare_transfer_type", FareTransferType, required=True)
            product_id = row.optional("fare_product_id")
            for column, group in (("from_leg_group_id", from_group), ("to_leg_group_id", to_group)):
                if group is not None and group not in leg_group_ids and "fare_leg_rules" not in self.sink.broken:
                    row.problem(
                        E_UNKNOWN_REFERENCE, column, f"unknown leg group {group!r} (no fare_leg_rules row has it)"
                    )
            self.ref(row, "fare_product_id", product_id, product_ids, "fare_products")
            count_text = row.values.get("transfer_count", "")
            if count == 0:
                row.problem(E_OUT_OF_RANGE, "transfer_count", "0 is not allowed: -1 (no limit) or 1 or more")
            if from_group == to_group and not count_text:
                row.problem(E_MISSING_VALUE, "transfer_count", "required when from_leg_group_id equals to_leg_group_id")
            if from_group != to_group and count_text:
                row.problem(
                    E_CONFLICT, "transfer_count", "forbidden when from_leg_group_id differs from to_leg_group_id"
                )
            limit_text, limit_type_text = (
                row.values.get("duration_limit", ""),
                row.values.get("duration_limit_type", ""),
            )
            if limit_text and not limit_type_text:
                row.problem(E_MISSING_VALUE, "duration_limit_type", "required when duration_limit is set")
            if limit_type_text and not limit_text:
                row.problem(E_CONFLICT, "duration_limit_type", "forbidden when duration_limit is empty")
            if not row.ok or transfer_type is None:
                continue
            if keys.fresh(row, (from_group, to_group, product_id, count, limit)):
                rules.append(
                    FareTransferRule(
                        row.line, from_group, to_group, count, limit, limit_type, transfer_type, product_id
                    )
                )
        return rules

    def caps(self, categories: Mapping[str, RiderCategory]) -> dict[str, int]:
        caps: dict[str, int] = {}
        keys = _Keys(("rider_category_id",))
        for row in self.rows("yikatong_caps"):
            category_id = row.required("rider_category_id")
            amount_fen = row.amount_fen("amount", "currency")
            self.ref(row, "rider_category_id", category_id, categories, "rider_categories")
            if amount_fen is not None and amount_fen < 0:
                row.problem(E_NEGATIVE_AMOUNT, "amount", "a daily cap cannot be negative")
            if row.ok and category_id is not None and amount_fen is not None and keys.fresh(row, (category_id,)):
                caps[category_id] = amount_fen
        return caps

    def card_types(self, categories: Mapping[str, RiderCategory]) -> dict[CardType, str]:
        result: dict[CardType, str] = {}
        keys = _Keys(("card_type",))
        names = ", ".join(card_type.value for card_type in CardType)
        for row in self.rows("yikatong_card_types"):
            text = row.required("card_type")
            category_id = row.required("rider_category_id")
            self.ref(row, "rider_category_id", category_id, categories, "rider_categories")
            card_type: CardType | None = None
            if text is not None:
                try:
                    card_type = CardType(text)
                except ValueError:
                    row.problem(E_BAD_ENUM, "card_type", f"{text!r} is not a card type ({names})")
            if row.ok and card_type is not None and category_id is not None and keys.fresh(row, (card_type,)):
                result[card_type] = category_id
        return result

    def check_signs(
        self, products: list[FareProduct], leg_rules: list[FareLegRule], transfer_rules: list[FareTransferRule]
    ) -> None:
        """GTFS lets a product be negative "to represent transfer discounts"; a leg cannot be."""
        transfer_only = {rule.fare_product_id for rule in transfer_rules if rule.fare_product_id is not None}
        transfer_only -= {rule.fare_product_id for rule in leg_rules}
        for product in products:
            if product.amount_fen >= 0 or product.fare_product_id in transfer_only:
                continue
            self.product_rows[product].problem(
                E_NEGATIVE_AMOUNT,
                "amount",
                f"{product.fare_product_id!r} costs {_cny(product.amount_fen)}; only a product used solely as a "
                "transfer product in fare_transfer_rules may be negative",
            )


def _cny(fen: int) -> str:
    sign = "-" if fen < 0 else ""
    return f"{sign}{abs(fen) // 100}.{abs(fen) % 100:02d} {CURRENCY}"


def _card_prices(products: Iterable[FareProduct], card_media_id: str | None) -> dict[tuple[str, str | None], int]:
    """Prices for a tap with the card: its own media row wins over a media-less row."""
    prices: dict[tuple[str, str | None], int] = {}
    for product in products:
        if product.fare_media_id is None:
            prices.setdefault((product.fare_product_id, product.rider_category_id), product.amount_fen)
    for product in products:
        if product.fare_media_id is not None and product.fare_media_id == card_media_id:
            prices[(product.fare_product_id, product.rider_category_id)] = product.amount_fen
    return prices


_K = TypeVar("_K")
_V = TypeVar("_V")


def _frozen(mapping: dict[_K, _V]) -> Mapping[_K, _V]:
    return MappingProxyType(mapping)


def content_version(files: Mapping[str, str]) -> str:
    """The version of a tariff that names none: ``sha256:`` and the first 12 hex digits of the
    SHA-256 over its table files (the ``.csv``/``.txt`` names in sorted order, each name and
    UTF-8 text, a BOM removed, length-prefixed). Other files (a README) do not count, so the
    same tables give the same version wherever they are loaded from."""
    digest = hashlib.sha256()
    for name in sorted(files):
        if not name.endswith(_EXTENSIONS):
            continue
        for part in (name.encode("utf-8"), files[name].removeprefix("\ufeff").encode("utf-8")):
            digest.update(len(part).to_bytes(8, "big"))
            digest.update(part)
    return CONTENT_VERSION_PREFIX + digest.hexdigest()[:CONTENT_VERSION_HEX_DIGITS]


def parse_tariff(files: Mapping[str, str], *, source: str = "<memory>") -> Tariff:
    """Check and index a tariff given as ``{file name: CSV text}``; raise ``TariffError`` listing
    every problem, or return a ``Tariff`` that the engine can trust."""
    builder = _Builder(files, source)
    routes, stops = builder.codes()
    trip_duration_max_s, acquirer_city, version = builder.settings()
    media, card_media_id = builder.fare_media()
    categories, default_category = builder.rider_categories()
    products = builder.fare_products(media, categories)
    product_ids = {product.fare_product_id for product in products}
    if "fare_products" in builder.sink.broken:
        product_ids = set()
    networks = builder.networks()
    route_networks = builder.route_networks(networks, routes)
    areas = builder.areas()
    stop_areas = builder.stop_areas(areas, stops)
    services, exceptions = builder.calendar()
    timeframes = builder.timeframes(set(services) | set(exceptions))
    leg_rules, prioritised = builder.leg_rules(networks, areas, timeframes, product_ids)
    leg_group_ids = {rule.leg_group_id for rule in leg_rules if rule.leg_group_id is not None}
    transfer_rules = builder.transfer_rules(leg_group_ids, product_ids)
    caps = builder.caps(categories)
    card_types = builder.card_types(categories)
    builder.check_signs(products, leg_rules, transfer_rules)
    if builder.sink.problems:
        raise TariffError(source, tuple(builder.sink.problems))

    area_sets = {stop_areas.get(stop_id, frozenset()) for stop_id in stops}
    return Tariff(
        source=source,
        version=version if version is not None else content_version(files),
        fare_media=_frozen(media),
        card_fare_media_id=card_media_id,
        rider_categories=_frozen(categories),
        default_rider_category_id=default_category,
        products=tuple(products),
        card_prices=_frozen(_card_prices(products, card_media_id)),
        networks=_frozen(networks),
        route_networks=_frozen(route_networks),
        areas=_frozen(areas),
        stop_areas=_frozen(stop_areas),
        services=_frozen(services),
        service_exceptions=_frozen({key: _frozen(value) for key, value in exceptions.items()}),
        timeframes=_frozen(timeframes),
        leg_rules=tuple(leg_rules),
        leg_rules_prioritised=prioritised,
        transfer_rules=tuple(transfer_rules),
        route_codes=_frozen(routes),
        routes_by_code=_frozen({code: route_id for route_id, code in routes.items()}),
        stop_codes=_frozen(stops),
        stops_by_code=_frozen({code: stop_id for stop_id, code in stops.items()}),
        daily_caps=_frozen(caps),
        card_type_categories=_frozen(card_types),
        trip_duration_max_s=trip_duration_max_s,
        acquirer_city=acquirer_city,
        listed_networks=frozenset(rule.network_id for rule in leg_rules if rule.network_id is not None),
        listed_from_areas=frozenset(rule.from_area_id for rule in leg_rules if rule.from_area_id is not None),
        listed_to_areas=frozenset(rule.to_area_id for rule in leg_rules if rule.to_area_id is not None),
        listed_transfer_from=frozenset(r.from_leg_group_id for r in transfer_rules if r.from_leg_group_id is not None),
        listed_transfer_to=frozenset(r.to_leg_group_id for r in transfer_rules if r.to_leg_group_id is not None),
        alight_area_sets=tuple(sorted(area_sets, key=lambda areas_: sorted(areas_))),
    )


def load_tariff(directory: str | os.PathLike[str]) -> Tariff:
    """Read every ``.csv``/``.txt`` file of a tariff directory (UTF-8, a BOM is allowed) and parse it."""
    path = Path(directory)
    source = str(path)
    if not path.is_dir():
        raise TariffError(source, (TariffProblem(E_MISSING_FILE, source, None, None, "not a directory"),))
    files: dict[str, str] = {}
    problems: list[TariffProblem] = []
    for entry in sorted(path.iterdir()):
        if not entry.is_file() or not entry.name.endswith(_EXTENSIONS):
            continue
        data = entry.read_bytes()
        if len(data) > FILE_BYTES_MAX:
            problems.append(
                TariffProblem(E_OUT_OF_RANGE, entry.name, None, None, f"larger than {FILE_BYTES_MAX} bytes")
            )
            continue
        try:
            files[entry.name] = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            line = data[: exc.start].count(b"\n") + 1
            problems.append(TariffProblem(E_BAD_ENCODING, entry.name, line, None, f"not UTF-8: {exc.reason}"))
    if problems:
        raise TariffError(source, tuple(problems))
    return parse_tariff(files, source=source)


@functools.lru_cache(maxsize=1)
def load_example_tariff() -> Tariff:
    """The example Xianyang tariff shipped with the package (example values, not real fares)."""
    return load_tariff(EXAMPLE_TARIFF_DIR)
