"""A terminal's configuration: where it stands, what it accepts, and the limits it works within.

Plain frozen dataclasses, no I/O (the CLI builds them from its options). Limits carry their
unit last in the name (STYLE.md, TigerBeetle row): ``repeat_window_s``, ``apdu_timeout_ms``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final, Literal

from cardos.profile import CITY_CODES, ISSUER_XIAN, ISSUER_XIANYANG, TRANSIT_RECORDS
from cardos.records import INDUSTRY_BUS, TRANSIT_ENTRY, TRANSIT_EXIT, TRANSIT_SINGLE
from clearing.contract import BATCH_RECORDS_MAX

REPEAT_WINDOW_S_DEFAULT: Final = 60
# Beyond today's legs (the daily cap): an open tap-on (trip_duration_max_s, 4 h in the example
# tariff) plus a transfer window (1 h) back from the tap.
HISTORY_LOOKBACK_S_DEFAULT: Final = 6 * 3600


@dataclass(frozen=True, slots=True)
class TerminalConfig:
    """Where the validator stands and the rules it applies at the card.

    ``line_code``/``station_code`` are the 2-byte numeric codes written into the card's
    transit record (``cardos.records.TransitRecord``); ``route_id``/``stop_id`` are the GTFS
    ids that go into the journal and the fare engine.
    """

    route_id: str | None = None
    stop_id: str | None = None
    # How riders validate on this route: one tap per ride, or a tap-on and a tap-off validator.
    tap_kind: Literal["single", "tap_on", "tap_off"] = "single"
    vehicle_id: str | None = None
    line_code: int = 0
    station_code: int = 0
    operator_code: int = 0
    industry: int = INDUSTRY_BUS
    acquirer_city: bytes = CITY_CODES["xianyang"]
    acquirer_id: bytes = ISSUER_XIANYANG
    home_issuer_id: bytes = ISSUER_XIANYANG
    accepted_issuers: frozenset[bytes] = field(default_factory=lambda: frozenset({ISSUER_XIANYANG, ISSUER_XIAN}))
    repeat_window_s: int = REPEAT_WINDOW_S_DEFAULT
    history_lookback_s: int = HISTORY_LOOKBACK_S_DEFAULT
    history_records_max: int = TRANSIT_RECORDS
    apdu_timeout_ms: int = 500
    sam_timeout_ms: int = 500

    def __post_init__(self) -> None:
        if not 0 <= self.line_code <= 0xFFFF or not 0 <= self.station_code <= 0xFFFF:
            raise ValueError("line and station codes are 2-byte numbers")
        if not 0 <= self.operator_code <= 0xFFFF:
            raise ValueError("operator code is a 2-byte number")
        if len(self.acquirer_city) != 2 or len(self.acquirer_id) != 8 or len(self.home_issuer_id) != 8:
            raise ValueError("acquirer city is 2 bytes, acquirer and issuer ids 8 bytes")
        if self.repeat_window_s < 0 or self.history_lookback_s < 0:
            raise ValueError("windows cannot be negative")
        if not 0 <= self.history_records_max <= TRANSIT_RECORDS:
            raise ValueError(f"a card holds at most {TRANSIT_RECORDS} transit records")
        if self.apdu_timeout_ms <= 0 or self.sam_timeout_ms <= 0:
            raise ValueError("timeouts must be positive")
        if self.tap_kind not in ("single", "tap_on", "tap_off"):
            raise ValueError(f"tap kind {self.tap_kind!r} is not single, tap_on or tap_off")

    @property
    def transit_type(self) -> int:
        """The 0x1E record type this validator writes (``epurse-public-sources.md`` section 2)."""
        return {"single": TRANSIT_SINGLE, "tap_on": TRANSIT_ENTRY, "tap_off": TRANSIT_EXIT}[self.tap_kind]


@dataclass(frozen=True, slots=True)
class UploadConfig:
    """Where and how the journal is uploaded (``spec/terminal-api.md``)."""

    clearing_url: str
    token: str
    batch_records_max: int = BATCH_RECORDS_MAX
    request_timeout_s: float = 10.0
    attempts_max: int = 8  # per batch per ``upload_pending`` call; the loop tries again later
    backoff_base_ms: int = 200
    backoff_cap_ms: int = 30_000
    interval_s: float = 15.0  # how often the background loop looks for new records

    def __post_init__(self) -> None:
        if not 1 <= self.batch_records_max <= BATCH_RECORDS_MAX:
            raise ValueError(f"a batch holds 1 to {BATCH_RECORDS_MAX} records")
        if self.attempts_max < 1 or self.backoff_base_ms <= 0 or self.backoff_cap_ms < self.backoff_base_ms:
            raise ValueError("bad retry policy")
