"""Standalone fares for settlement's transfer-discount sharing, from the tariff book clearing prices with.

Settlement never imports ``fares`` (``ARCHITECTURE.md``, "who may import whom"); the
composition root builds its ``settlement.journeys.FareLookup`` here, from the same tariff
versions clearing recomputes tap-off refunds with (``YIKATONG_TARIFFS``, else the example
Xianyang tariff).
"""

from __future__ import annotations

from fares import Tariff, TariffBook


class TariffFares:
    """A leg's product price for its rider category in the tariff version it was priced with."""

    def __init__(self, book: TariffBook, default_version: str | None = None) -> None:
        self.book = book
        self.default_version = default_version

    def _tariff(self, version: str | None) -> Tariff | None:
        key = version if version is not None else self.default_version
        return self.book.get(key) if key is not None else None

    def standalone_fen(self, tariff_version: str | None, product_id: str, rider_category_id: str | None) -> int | None:
        tariff = self._tariff(tariff_version)
        return None if tariff is None else tariff.price_fen(product_id, rider_category_id)

    def default_category(self, tariff_version: str | None) -> str | None:
        tariff = self._tariff(tariff_version)
        return None if tariff is None else tariff.default_rider_category_id


def fare_lookup_of(settings: object) -> TariffFares:
    """The lookup for the settings' tariffs (``tariffs``: a tariff directory or a book of versions)."""
    from clearing.refunds import default_refunds, tariff_refunds

    path = getattr(settings, "tariffs", None)
    pricer = tariff_refunds(path) if path is not None else default_refunds()
    return TariffFares(pricer.book, pricer.default_version)


__all__ = ["TariffFares", "fare_lookup_of"]
