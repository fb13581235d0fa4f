"""Settlement's ledger transfer ids, built in one place (``clearing/transfer_ids.py``'s rule: the id is the key).

A close posts at most one fee and one payout per payee and window, so ``<kind>:<yyyymmdd>:<payee id>``
(at most 79 characters with a 64-character payee id) is posted once whatever happens to the
close: a rerun after a crash finds the same ids and the ledger answers ``exists``.
"""

from __future__ import annotations

import datetime as dt
import hashlib

from clearing.transfer_ids import TRANSFER_ID_LEN_MAX


def fee(business_day: dt.date, payee_id: str) -> str:
    """A window's fee: payee payable → fee revenue."""
    transfer_id = f"sfee:{business_day:%Y%m%d}:{payee_id}"
    assert len(transfer_id) <= TRANSFER_ID_LEN_MAX
    return transfer_id


def payout(business_day: dt.date, payee_id: str) -> str:
    """A window's payout instruction: payee payable → bank settlement."""
    transfer_id = f"spay:{business_day:%Y%m%d}:{payee_id}"
    assert len(transfer_id) <= TRANSFER_ID_LEN_MAX
    return transfer_id


def sharing(business_day: dt.date, from_payee_id: str, to_payee_id: str) -> str:
    """A window's transfer-discount sharing from one payee to another: payable → payable.

    Two payee ids do not fit in 80 characters, so the pair is named by the first 32 hex digits of
    SHA-256 over both ids (a close pairs each two payees at most once: ``sharing.pair_moves``).
    """
    pair = hashlib.sha256(f"{from_payee_id}\n{to_payee_id}".encode()).hexdigest()[:32]
    transfer_id = f"sshr:{business_day:%Y%m%d}:{pair}"
    assert len(transfer_id) <= TRANSFER_ID_LEN_MAX
    return transfer_id


__all__ = ["fee", "payout", "sharing"]
