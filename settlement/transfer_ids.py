"""Settlement's ledger transfer ids, built in one place (``clearing/transfer_ids.py``'s rule: the id is the key).

A close posts at most one fee and one payout per payee and window, so ``<kind>:<yyyymmdd>:<payee id>``
(at most 79 characters with a 64-character payee id) is posted once whatever happens to the
close: a rerun after a crash finds the same ids and the ledger answers ``exists``.
"""

from __future__ import annotations

import datetime as dt

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


__all__ = ["fee", "payout"]
