"""Settlement: business-day windows, merchant and operator payouts, reconciliation (ARCHITECTURE.md, flow 6).

Built so far is the pure core (``docs/settlement.md``): fees (``fees``), payout bank
accounts (``bank``), transfer discount sharing (``sharing``) and payout files (``payouts``),
all in integer fen. Windows, running totals, the close and reconciliation build on these.
"""

from settlement.bank import BankAccount, CnapsParts, bank_account_problems, cnaps_parts
from settlement.errors import SettlementCode, SettlementError
from settlement.fees import FeeAssessment, FeeBook, FeeSchedule, Rounding, assess, fee
from settlement.payouts import (
    PayeeNet,
    Payer,
    PayoutBatch,
    PayoutLine,
    payout_batch,
    payout_csv,
    payout_pain001,
    validate_pain001,
)
from settlement.sharing import JourneyLeg, LegSettlement, settle_journey, share_discount

__all__ = [
    "BankAccount",
    "CnapsParts",
    "FeeAssessment",
    "FeeBook",
    "FeeSchedule",
    "JourneyLeg",
    "LegSettlement",
    "PayeeNet",
    "Payer",
    "PayoutBatch",
    "PayoutLine",
    "Rounding",
    "SettlementCode",
    "SettlementError",
    "assess",
    "bank_account_problems",
    "cnaps_parts",
    "fee",
    "payout_batch",
    "payout_csv",
    "payout_pain001",
    "settle_journey",
    "share_discount",
    "validate_pain001",
]
