"""``yikatong demo``: issue demo cards, ride a simulated bus route, print the taps."""

from __future__ import annotations


def demo() -> None:
    """Issue demo cards and tap them along a simulated bus route."""
    raise SystemExit("demo: not built yet")
