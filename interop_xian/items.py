"""What an acquirer sends its peer issuer, and what the issuer answers, one forwarded record each.

The contract between the two halves of interop: the batch exchange (acquirer side, the wire,
``/interop/v1/batches``) carries ``InteropItem``s and hands them to the issuer's judge, which
returns one ``ItemVerdict`` per item in the same order. Pure data: no I/O here.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

ITEM_ID_LEN_MAX: Final = 96


class ItemOutcome(enum.StrEnum):
    ACCEPTED = "accepted"
    REJECTED = "rejected"


@dataclass(frozen=True, slots=True)
class InteropItem:
    """One forwarded record (``clearing.models.InteropForward``) as the acquirer sends it.

    ``item_id`` is stable across resends: ``<acquirer city>:<terminal_id>:<terminal_seq>:<first 16
    hex of record_digest>``. ``record`` is the terminal-contract tap record exactly as the terminal
    uploaded it (``spec/terminal-api.md``), the ``record`` column of ``interop_forwards``; only the
    issuer can verify its TAC.
    """

    item_id: str
    terminal_id: str
    terminal_seq: int
    record_digest: str
    record: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class ItemVerdict:
    """The issuer's answer to one item: accepted for ``amount_fen``, or rejected with a reason code.

    ``code`` is ``"OK"`` when accepted, else a stable error code (clearing's, e.g.
    ``E_TAC_MISMATCH``, ``E_DUPLICATE_COUNTER``, or interop's, e.g. ``E_NET_DEBIT_CAP``).
    ``amount_fen`` is 0 for a rejection.
    """

    item_id: str
    outcome: ItemOutcome
    code: str
    amount_fen: int
    message: str = ""
    # Accepted: the window (business day) the issuer booked it in (``interop_xian.netting``); the
    # acquirer books its DUE_FROM in the same one. None for a rejection.
    window_day: dt.date | None = None


class IssuerJudge(Protocol):
    """The issuer side: validate a verified, in-sequence batch's items as its own clearing would.

    Called once per new batch (a replayed batch is answered from the stored acknowledgement
    before this is reached). Posts the accepted items (card liability → DUE_TO the peer) in one
    transaction with the verdicts, and returns them in item order. Judging the same item again in
    a later batch must not accept it twice.
    """

    def judge(
        self, *, peer_city: str, batch_id: str, items: Sequence[InteropItem], received_at: dt.datetime
    ) -> list[ItemVerdict]: ...


__all__ = ["ITEM_ID_LEN_MAX", "InteropItem", "IssuerJudge", "ItemOutcome", "ItemVerdict"]
