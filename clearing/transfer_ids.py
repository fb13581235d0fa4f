"""Every ledger transfer id, built in one place: the id *is* the idempotency key.

A transfer posted twice under one id is refused by the ledger (``E_TRANSFER_CONFLICT``, or
``exists`` for an exact replay), so each source of money gets exactly one id per event, and
nothing else may spell it (``docs/ledger.md``, "Transfers per flow"). The payer of a load is
a column of the load, never parsed from any of these.
"""

from __future__ import annotations

from typing import Final

TRANSFER_ID_LEN_MAX: Final = 80


def tap(terminal_id: str, terminal_seq: int) -> str:
    """A cleared tap (at ingest, or accepted from the exception queue): card → operator."""
    return f"tap:{terminal_id}:{terminal_seq}"


def refund_load(terminal_id: str, terminal_seq: int) -> str:
    """The pending load that pays a tap-off's refund (named by the tap-off)."""
    return f"refund:{terminal_id}:{terminal_seq}"


def load(load_id: str) -> str:
    """A load posted: the reservation's post."""
    return f"load:{load_id}"


def load_reserve(load_id: str) -> str:
    """A load reserved at authorize (pending): payer → card."""
    return f"load:{load_id}:reserve"


def load_void(load_id: str) -> str:
    """A load cancelled or expired: the reservation's void."""
    return f"load:{load_id}:void"


def write_off(item_id: int) -> str:
    """An exception item written off with an amount."""
    return f"exc:{item_id}:write-off"


def card_sale(card_asn: str) -> str:
    """Value sold with a new card at a counter: float → card."""
    return f"issue:{card_asn}"


def balance_move(issuer_id: str, old_card_asn: str) -> str:
    """A lost card's balance moved to its replacement: old card → new card (once per old card)."""
    return f"move:{issuer_id}:{old_card_asn}"


__all__ = [
    "TRANSFER_ID_LEN_MAX",
    "balance_move",
    "card_sale",
    "load",
    "load_reserve",
    "load_void",
    "refund_load",
    "tap",
    "write_off",
]
