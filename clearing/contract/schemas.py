"""msgspec structs for every message of ``spec/terminal-api.md``."""

from __future__ import annotations

import re
from typing import Annotated, Final, Literal, TypeVar

import msgspec
from msgspec import Meta, Struct

BATCH_RECORDS_MAX = 10_000


def _whole(regex: str) -> str:
    """A pattern for the whole string, the same in Python and in the published JSON Schema.

    msgspec matches with ``re.search``, where ``$`` also matches before a final newline, so
    ``^[0-9a-f]{8}$`` would pass ``"deadbeef\\n"`` (and break a COPY later); the lookahead
    refuses it. ``\\A``/``\\Z`` would do in Python but mean something else in ECMA-262.
    """
    return f"^(?:{regex})$(?!\\n)"


# Hex in either case, as terminals write it; ``normalise`` lowers it before anything is hashed or stored.
Hex12 = Annotated[str, Meta(pattern=_whole("[0-9a-fA-F]{12}"))]
Hex16 = Annotated[str, Meta(pattern=_whole("[0-9a-fA-F]{16}"))]
Hex20 = Annotated[str, Meta(pattern=_whole("[0-9a-fA-F]{20}"))]
Hex8 = Annotated[str, Meta(pattern=_whole("[0-9a-fA-F]{8}"))]
HexAny = Annotated[str, Meta(pattern=_whole("([0-9a-fA-F]{2}){0,32}"))]
U32 = Annotated[int, Meta(ge=0, le=0xFFFFFFFF)]
U16 = Annotated[int, Meta(ge=0, le=0xFFFF)]
U8 = Annotated[int, Meta(ge=0, le=0xFF)]
# ISO 8601 with an explicit offset, e.g. 2026-11-24T08:15:00+08:00
IsoTime = Annotated[str, Meta(pattern=_whole(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?([+-]\d{2}:\d{2}|Z)"))]
ShortText = Annotated[str, Meta(max_length=64)]


class FareInfo(Struct, forbid_unknown_fields=True, frozen=True):
    product_id: ShortText
    rider_category_id: ShortText
    leg_group_id: ShortText | None
    full_fare_fen: U32
    discount_fen: U32
    transfer_of: U32 | None = None
    # Tap-off of a distance fare: what the terminal claims the maximum charged at entry owes
    # back (docs/fares.md). Not under the TAC: clearing computes the refund itself from the
    # verified entry leg and the tariff version, and only compares it with this claim.
    refund_due_fen: U32 = 0
    # How the rider validated (fares.TapKind): "single", "tap_on" or "tap_off"; None: single.
    tap_kind: Literal["single", "tap_on", "tap_off"] | None = None
    # The tariff version the terminal priced with (fares.Tariff.version); None: unversioned.
    tariff_version: ShortText | None = None


class TapRecord(Struct, forbid_unknown_fields=True, frozen=True):
    terminal_id: Hex12
    terminal_seq: U32
    psam_serial: HexAny
    issuer_id: Hex16
    card_asn: Hex20
    card_type: ShortText
    tx_type: Literal[6, 9]
    amount_fen: U32
    balance_before_fen: U32
    offline_counter: U16
    tx_time: IsoTime
    key_version: U8
    alg_id: U8
    tac: Hex8
    route_id: ShortText | None = None
    stop_id: ShortText | None = None
    vehicle_id: ShortText | None = None
    fare: FareInfo | None = None
    status: Literal["normal", "recovered", "blocked"] = "normal"


class Batch(Struct, forbid_unknown_fields=True, frozen=True):
    batch_seq: U32
    created_at: IsoTime
    records: Annotated[list[TapRecord], Meta(max_length=BATCH_RECORDS_MAX)]


class Verdict(Struct, forbid_unknown_fields=True, frozen=True):
    terminal_seq: U32
    verdict: Literal["accepted", "rejected", "suspect", "forwarded"]
    code: str
    message: str


class BatchAnswer(Struct, forbid_unknown_fields=True, frozen=True):
    batch_seq: U32
    received_at: IsoTime
    verdicts: list[Verdict]


class DenylistEntry(Struct, forbid_unknown_fields=True, frozen=True):
    issuer_id: Hex16
    card_asn: Hex20
    reason: ShortText
    effective_at: IsoTime


class DenylistDelta(Struct, forbid_unknown_fields=True, frozen=True):
    version: Annotated[int, Meta(ge=0)]
    full: bool
    added: list[DenylistEntry]
    removed: list[DenylistEntry]


class LoadAuthorizeRequest(Struct, forbid_unknown_fields=True, frozen=True):
    terminal_id: Hex12
    issuer_id: Hex16
    card_asn: Hex20
    amount_fen: U32
    balance_before_fen: U32
    online_counter: U16
    card_random: Hex8
    mac1: Hex8
    key_version: U8
    alg_id: U8


class LoadAuthorizeResponse(Struct, forbid_unknown_fields=True, frozen=True):
    mac2: Hex8
    tx_time: IsoTime


class LoadCompleteRequest(Struct, forbid_unknown_fields=True, frozen=True):
    tac: Hex8


class LoadCompleteResponse(Struct, forbid_unknown_fields=True, frozen=True):
    status: Literal["posted"]


class LoadResolveRequest(Struct, forbid_unknown_fields=True, frozen=True):
    """A load in doubt, settled from the card: GET TRANSACTION PROVE (P2 02) at the load's online
    counter + 1 answered ``prove_mac2 ‖ prove_tac`` (the load happened), or ``6A83`` and the card's
    online counter now is ``online_counter`` (docs/card-image.md, "GET TRANSACTION PROVE")."""

    terminal_id: Hex12
    online_counter: U16 | None = None
    prove_mac2: Hex8 | None = None
    prove_tac: Hex8 | None = None


class LoadResolveResponse(Struct, forbid_unknown_fields=True, frozen=True):
    # posted: the card holds the load and it is posted; pending: the card never credited it,
    # so it may be authorized again (with a fresh MAC2)
    status: Literal["posted", "pending"]


class CardLoad(Struct, forbid_unknown_fields=True, frozen=True):
    load_id: str
    amount_fen: U32
    state: Literal["pending", "authorized"]
    online_counter: U16 | None  # an authorized load: the counter INITIALIZE FOR LOAD returned for it


class CardLoads(Struct, forbid_unknown_fields=True, frozen=True):
    """The loads waiting for a card: what a load-capable terminal does at the card's presentation."""

    loads: list[CardLoad]


class ErrorItem(Struct, forbid_unknown_fields=True, frozen=True):
    path: str
    code: str
    message: str


class ErrorBody(Struct, forbid_unknown_fields=True, frozen=True):
    code: str
    message: str
    errors: list[ErrorItem] = []


_batch_decoder = msgspec.json.Decoder(Batch)
_encoder = msgspec.json.Encoder()


_HEX_FIELDS: Final = ("terminal_id", "psam_serial", "issuer_id", "card_asn", "tac")
_UPPER_HEX: Final = re.compile(rb"[A-F]")


_MessageT = TypeVar("_MessageT", bound=Struct)


def _lower(message: _MessageT, names: tuple[str, ...]) -> _MessageT:
    changed = {
        name: value.lower()
        for name in names
        if (value := getattr(message, name)) is not None and value != value.lower()
    }
    return msgspec.structs.replace(message, **changed) if changed else message


def _lower_record(record: TapRecord) -> TapRecord:
    return _lower(record, _HEX_FIELDS)


_REQUEST_HEX_FIELDS: Final[dict[type[Struct], tuple[str, ...]]] = {
    LoadAuthorizeRequest: ("terminal_id", "issuer_id", "card_asn", "card_random", "mac1"),
    LoadCompleteRequest: ("tac",),
    LoadResolveRequest: ("terminal_id", "prove_mac2", "prove_tac"),
}


def decode_request(body: bytes, kind: type[_MessageT]) -> _MessageT:
    """Decode a request body of ``kind``, its hex fields lowered; raises msgspec's errors."""
    message = msgspec.json.decode(body, type=kind)
    names = _REQUEST_HEX_FIELDS.get(kind)
    return _lower(message, names) if names else message


def normalise(batch: Batch) -> Batch:
    """The batch with every hex field in lower case: the one form that is hashed, compared and stored."""
    records = [_lower_record(r) for r in batch.records]
    if all(new is old for new, old in zip(records, batch.records, strict=True)):
        return batch
    return msgspec.structs.replace(batch, records=records)


def decode_batch(body: bytes) -> Batch:
    """Decode an upload body, hex normalised; raises ``msgspec.ValidationError`` or ``msgspec.DecodeError``."""
    batch = _batch_decoder.decode(body)
    # Only a body with an upper-case A-F anywhere can hold upper-case hex: most never pay for the check.
    return normalise(batch) if _UPPER_HEX.search(body) else batch


def encode(message: Struct) -> bytes:
    return _encoder.encode(message)
