"""A window's transfer-discount adjustments, from its transfer legs and the cards' cleared taps.

For each transfer leg of window W (``settlement_transfer_legs``, written by ingest) the close
walks its journey back: the earlier leg is the card's latest posted tap before this one (by
offline counter) whose ``terminal_seq`` is the leg's ``transfer_of`` — one indexed lookup on
``uq_taps_card_counter`` (issuer, card, counter) per leg and step, never a scan — until a leg
without ``transfer_of``, or ``LEGS_MAX`` legs. With legs 1..k known, the leg brings
``adjustments(1..k) − adjustments(1..k−1)`` (``sharing.added_leg_adjustments``), so a journey
whose legs fall in several windows adds up to exactly its full-journey adjustments.

A leg's standalone fare is its product's price for its rider category in its tariff version,
from a ``FareLookup`` the composition root injects (settlement never imports ``fares``).
Without a lookup, or without a price: the tap's ``full_fare_fen`` (the adult price) for the
default rider category, else what was charged — a concession rider's leg then shares nothing
it cannot prove (``docs/settlement.md``, "Transfer discounts").
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from clearing.ingest_totals import payee_of_tap
from clearing.models import Terminal
from settlement.models import TransferLegRow
from settlement.sharing import LEGS_MAX, JourneyLeg, added_leg_adjustments

DEFAULT_RIDER_CATEGORY: Final = "adult"  # GTFS is_default_fare_category of the city's tariffs
CHUNK: Final = 2000


class FareLookup(Protocol):
    """Standalone prices by tariff version (the composition root builds it from ``fares``)."""

    def standalone_fen(self, tariff_version: str | None, product_id: str, rider_category_id: str | None) -> int | None:
        """The product's price for the rider category in that tariff version; None: not known."""
        ...

    def default_category(self, tariff_version: str | None) -> str | None:
        """The tariff's default rider category (GTFS ``is_default_fare_category``); None: not known."""
        ...


@dataclass(frozen=True, slots=True)
class Leg:
    """One leg of a journey, as the close prices it."""

    tap_id: int
    issuer_id: str
    card_asn: str
    offline_counter: int
    transfer_of: int | None
    product_id: str | None
    rider_category_id: str | None
    tariff_version: str | None
    charged_fen: int
    full_fare_fen: int | None
    payee_account_id: int


def standalone_fen(leg: Leg, fares: FareLookup | None) -> int:
    """The leg's fare as if it were not a transfer (module docstring: the lookup, then the fallback)."""
    category = leg.rider_category_id or None
    if fares is not None and leg.product_id is not None:
        price = fares.standalone_fen(leg.tariff_version, leg.product_id, category)
        if price is not None and price >= 0:
            return price
    default = (fares.default_category(leg.tariff_version) if fares is not None else None) or DEFAULT_RIDER_CATEGORY
    if leg.full_fare_fen is not None and category in (None, default):
        return leg.full_fare_fen
    return leg.charged_fen


# The earlier leg: the card's latest posted tap before ``counter`` with that terminal_seq (a
# tap-off only ends its tap-on's leg). Its payee: the one ingest recorded for a transfer leg,
# else the payable its sale credited.
_EARLIER_COLUMNS: Final = """t.id, t.issuer_id, t.card_asn, t.offline_counter, t.fare_transfer_of, t.fare_product_id,
       t.fare_rider_category_id, t.fare_tariff_version, t.amount_fen, t.fare_full_fen,
       COALESCE(l.payee_account_id, x.credit_account_id), t.terminal_id, t.route_id, t.business_day"""
_EARLIER_WHERE: Final = """t.offline_counter < {counter} AND t.terminal_seq = {seq}
      AND (t.fare_tap_kind IS NULL OR t.fare_tap_kind <> 'tap_off')
      AND (t.transfer_id IS NOT NULL OR (t.amount_fen = 0 AND t.verdict IN ('accepted', 'suspect')))"""
_EARLIER_JOINS: Final = """LEFT JOIN transfers x ON x.id = t.transfer_id
    LEFT JOIN settlement_transfer_legs l ON l.terminal_id = t.terminal_id AND l.terminal_seq = t.terminal_seq"""
_EARLIER_ONE: Final = f"""
SELECT {_EARLIER_COLUMNS} FROM taps t {_EARLIER_JOINS}
WHERE t.issuer_id = :issuer AND t.card_asn = :asn AND {_EARLIER_WHERE.format(counter=":counter", seq=":seq")}
ORDER BY t.offline_counter DESC LIMIT 1
"""  # noqa: S608 - only constant fragments are interpolated
_EARLIER_PG: Final = f"""
SELECT k.n, p.* FROM unnest(CAST(:issuers AS text[]), CAST(:asns AS text[]), CAST(:counters AS int[]),
                            CAST(:seqs AS bigint[])) WITH ORDINALITY AS k(issuer, asn, counter, seq, n)
JOIN LATERAL (
    SELECT {_EARLIER_COLUMNS} FROM taps t {_EARLIER_JOINS}
    WHERE t.issuer_id = k.issuer AND t.card_asn = k.asn AND {_EARLIER_WHERE.format(counter="k.counter", seq="k.seq")}
    ORDER BY t.offline_counter DESC LIMIT 1
) p ON true
"""  # noqa: S608

Key = tuple[str, str, int, int]  # issuer, card, counter of the later leg, its transfer_of


def _leg_of(session: Session, row: Sequence[Any]) -> Leg:
    tap_id, issuer, asn, counter, transfer_of, product, category, version, charged, full, payee = row[:11]
    if payee is None:  # a 0-fen first leg credited no payable: the payee its tap would have paid
        terminal_id, route_id, day = row[11], row[12], row[13]
        terminal = session.get(Terminal, terminal_id)
        assert terminal is not None, f"tap {tap_id} names terminal {terminal_id}, which does not exist"
        day = day if isinstance(day, dt.date) else dt.date.fromisoformat(str(day))
        payee = payee_of_tap(session, terminal_id, route_id, day, terminal.payable_account_id)
    return Leg(int(tap_id), str(issuer), str(asn), int(counter), None if transfer_of is None else int(transfer_of),
               product, category, version, int(charged), None if full is None else int(full), int(payee))  # fmt: skip


def earlier_legs(session: Session, keys: Sequence[Key]) -> dict[Key, Leg]:
    """The earlier leg of each key that has one cleared (PostgreSQL: one lateral query per chunk)."""
    found: dict[Key, Leg] = {}
    if session.get_bind().dialect.name == "postgresql":
        for start in range(0, len(keys), CHUNK):
            chunk = list(keys[start : start + CHUNK])
            rows = session.execute(
                text(_EARLIER_PG),
                {"issuers": [k[0] for k in chunk], "asns": [k[1] for k in chunk],
                 "counters": [k[2] for k in chunk], "seqs": [k[3] for k in chunk]},
            ).all()  # fmt: skip
            for row in rows:
                found[chunk[int(row[0]) - 1]] = _leg_of(session, row[1:])
        return found
    statement = text(_EARLIER_ONE)
    for key in keys:  # embedded: a query is a function call
        one = session.execute(statement, {"issuer": key[0], "asn": key[1], "counter": key[2], "seq": key[3]}).first()
        if one is not None:
            found[key] = _leg_of(session, one)
    return found


def journeys(session: Session, day: dt.date) -> list[list[Leg]]:
    """Each transfer leg of window ``day`` with its journey before it, first leg first (walked level by level)."""
    rows = session.scalars(select(TransferLegRow).where(TransferLegRow.window_day == day).order_by(TransferLegRow.id))
    chains = [
        [Leg(r.tap_id, r.issuer_id, r.card_asn, r.offline_counter, r.transfer_of, r.product_id, r.rider_category_id,
             r.tariff_version, r.charged_fen, r.full_fare_fen, r.payee_account_id)]
        for r in rows
    ]  # fmt: skip
    open_chains = list(range(len(chains)))
    while open_chains:
        keys: dict[int, Key] = {}
        for i in open_chains:
            first = chains[i][0]
            if first.transfer_of is not None and len(chains[i]) < LEGS_MAX:
                keys[i] = (first.issuer_id, first.card_asn, first.offline_counter, first.transfer_of)
        found = earlier_legs(session, sorted(set(keys.values())))
        open_chains = []
        for i, key in keys.items():
            leg = found.get(key)
            if leg is not None and all(leg.tap_id != known.tap_id for known in chains[i]):
                chains[i].insert(0, leg)
                open_chains.append(i)
    return chains


def adjustments(chains: Iterable[Sequence[Leg]], fares: FareLookup | None) -> dict[int, int]:
    """Per payee payable, the sum of what each chain's last leg brings (pure; sums to 0)."""
    out: dict[int, int] = {}
    for chain in chains:
        legs = [JourneyLeg(str(leg.payee_account_id), standalone_fen(leg, fares), leg.charged_fen) for leg in chain]
        for leg, fen in zip(chain, added_leg_adjustments(legs), strict=True):
            if fen:
                out[leg.payee_account_id] = out.get(leg.payee_account_id, 0) + fen
    assert sum(out.values()) == 0
    return {payee: fen for payee, fen in out.items() if fen}


def window_adjustments(session: Session, day: dt.date, fares: FareLookup | None) -> dict[int, int]:
    """The transfer-discount adjustments the legs of window ``day`` bring, per payee payable."""
    return adjustments(journeys(session, day), fares)


class StaticFares:
    """A ``FareLookup`` over a plain mapping (tests; a city with one flat price list)."""

    def __init__(self, prices: Mapping[tuple[str | None, str, str | None], int], default: str | None = None) -> None:
        self.prices = dict(prices)
        self.default = default

    def standalone_fen(self, tariff_version: str | None, product_id: str, rider_category_id: str | None) -> int | None:
        return self.prices.get((tariff_version, product_id, rider_category_id))

    def default_category(self, tariff_version: str | None) -> str | None:
        return self.default


__all__ = [
    "DEFAULT_RIDER_CATEGORY",
    "FareLookup",
    "Leg",
    "StaticFares",
    "adjustments",
    "earlier_legs",
    "journeys",
    "standalone_fen",
    "window_adjustments",
]
