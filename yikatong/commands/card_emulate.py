"""``yikatong card emulate``: connect a card image (and optionally a PSAM) to vpcd."""

from __future__ import annotations


def emulate() -> None:
    """Connect a card image to the vpcd virtual reader (not built yet)."""
    raise SystemExit("card emulate: not built yet")
