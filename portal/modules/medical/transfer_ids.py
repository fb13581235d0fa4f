"""Every ledger transfer id and load id of the medical module, built in one place (the id is the idempotency key).

A visit is named by its row id, so replaying any step of it (open, confirm, cancel, reverse)
can only meet its own transfer again (``docs/ledger.md``, "Transfers per flow").
"""

from __future__ import annotations


def visit_reserve(visit_id: int) -> str:
    """The fund's share reserved when a visit is priced (pending): medical fund → clinic payable."""
    return f"med:{visit_id}:reserve"


def visit_post(visit_id: int) -> str:
    """The reservation posted once the purse has paid the patient's share."""
    return f"med:{visit_id}"


def visit_void(visit_id: int) -> str:
    """The reservation voided: the visit was cancelled before the purse paid."""
    return f"med:{visit_id}:void"


def visit_fund_back(visit_id: int) -> str:
    """A settled visit reversed: the fund's share back, clinic payable → medical fund."""
    return f"med:{visit_id}:reversal"


def visit_refund_load(visit_id: int) -> str:
    """The pending load that gives the patient's share back to the purse (payer: the clinic)."""
    return f"med-refund:{visit_id}"


def claim_payout_load(claim_id: int) -> str:
    """The pending load that pays a claim to the holder's purse (payer: the medical fund)."""
    return f"med-claim:{claim_id}"


__all__ = [
    "claim_payout_load",
    "visit_fund_back",
    "visit_post",
    "visit_refund_load",
    "visit_reserve",
    "visit_void",
]
