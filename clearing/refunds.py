"""Tap-off refunds computed by clearing, from the TAC-verified entry leg and the tariff version.

``validation`` finds the entry (the same card's posted tap-on at the previous offline counter,
on the same route or vehicle) and asks a ``RefundPricer`` what the exit owes back. This is
the one that prices with the fare engine the terminals use (``fares``): the tariff is the one
the terminal priced with (``fare.tariff_version``, from the book of tariffs clearing knows),
the rider category comes from the card type in clearing's own registry (the record's
category is the terminal's word), and the card's legs before the entry come from its cleared
taps. The result is bounded: never more than the entry charged less the minimum fare the
route can cost that rider, unless the daily cap — which clearing sees in full, where a card
remembers only its last 30 records — makes the fare lower still (``fares.tap_off_refund``).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

from cardos.profile import CardType
from clearing.validation import Leg, RefundQuote
from fares import (
    EXAMPLE_TARIFF_DIR,
    ClearedTap,
    EntryLeg,
    ExitTap,
    FareError,
    LegRef,
    RefundReason,
    TapKind,
    Tariff,
    TariffBook,
    legs_from_cleared_taps,
    load_tariff,
    load_tariff_book,
    local_time,
    rider_category_for_card,
    tap_off_refund,
)


class TariffRefunds:
    """A ``validation.RefundPricer`` over a book of tariff versions (``fares.TariffBook``)."""

    def __init__(self, book: TariffBook, default_version: str | None = None) -> None:
        self.book = book
        self.default_version = default_version if default_version is not None else _only_version(book)

    def __call__(self, entry: Leg, exit_leg: Leg, history: Sequence[Leg], card_type: str) -> RefundQuote | str:
        version = exit_leg.tariff_version or entry.tariff_version or self.default_version
        if version is None:
            return "the tap names no tariff version and clearing has no default tariff"
        tariff = self.book.get(version)
        if tariff is None:
            return f"tariff version {version} is not known to clearing ({', '.join(self.book.versions) or 'none'})"
        if entry.route_id is None or entry.stop_id is None or exit_leg.route_id is None or exit_leg.stop_id is None:
            return "the entry or the exit names no route and stop"
        try:
            category = rider_category_for_card(tariff, CardType(card_type))
        except ValueError:
            return f"card type {card_type!r} is not one the tariff knows"
        try:
            result = tap_off_refund(
                tariff,
                rider_category_id=category,
                entry=EntryLeg(
                    entry.route_id,
                    entry.stop_id,
                    entry.at,
                    entry.amount_fen,
                    LegRef(entry.terminal_id.upper(), entry.terminal_seq, local_time(entry.at)),
                ),
                exit_tap=ExitTap(exit_leg.route_id, exit_leg.stop_id, exit_leg.at),
                history=legs_from_cleared_taps(tariff, [_cleared(leg) for leg in history]),
            )
        except FareError as exc:
            return f"the tariff cannot price it ({exc.code}: {exc.message})"
        if result.reason is not RefundReason.CLOSED:
            return f"tariff {version} does not close this entry ({result.reason.value})"
        refund = result.refund_fen
        if not result.capped:
            refund = min(refund, max(0, result.charged_fen - result.minimum_fare_fen))
        return RefundQuote(
            refund,
            f"tariff {version}, {category}: entry {result.charged_fen} fen, final fare {result.fare_fen} fen",
        )


def _cleared(leg: Leg) -> ClearedTap:
    kind = TapKind(leg.tap_kind) if leg.tap_kind is not None and leg.tap_kind in tuple(TapKind) else None
    return ClearedTap(leg.route_id, leg.stop_id, leg.at, leg.amount_fen, kind, leg.terminal_id, leg.terminal_seq)


def _only_version(book: TariffBook) -> str | None:
    versions = book.versions
    return versions[0] if len(versions) == 1 else None


def tariff_refunds(path: Path | str | None = None) -> TariffRefunds:
    """The pricer for a tariff directory, or a directory of tariff versions (one per subdirectory).

    No path: the example Xianyang tariff, the demo city's.
    """
    directory = Path(path) if path is not None else EXAMPLE_TARIFF_DIR
    tariffs: list[Tariff]
    if (directory / "fare_products.csv").exists():
        tariffs = [load_tariff(directory)]
        return TariffRefunds(TariffBook(tariffs, source=str(directory)), tariffs[0].version)
    return TariffRefunds(load_tariff_book(directory))


@functools.cache
def default_refunds() -> TariffRefunds:
    """The example Xianyang tariff's pricer, loaded once per process."""
    return tariff_refunds(None)


__all__ = ["TariffRefunds", "default_refunds", "tariff_refunds"]
