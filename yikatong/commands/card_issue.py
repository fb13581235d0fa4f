"""``yikatong card issue`` and ``card show``: personalise and register cards."""

from __future__ import annotations


def issue() -> None:
    """Personalise a card from the key store and register it (not built yet)."""
    raise SystemExit("card issue: not built yet")


def show() -> None:
    """Show a card's registry entry and shadow balance (not built yet)."""
    raise SystemExit("card show: not built yet")
