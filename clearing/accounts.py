"""Chart of accounts: which ledger account each party and purpose uses, created on first use.

| account | code | owner_ref | normal side | flag |
| --- | --- | --- | --- | --- |
| card stored value | CARD_LIABILITY | ``card:<issuer_id>:<asn>`` | credit | debits must not exceed credits |
| operator/merchant payable | OPERATOR_PAYABLE | ``operator:<operator_id>`` | credit | debits must not exceed credits |
| issuer float (cash, bank) | ISSUER_FLOAT | ``system:issuer_float:<issuer_id>`` | debit | none |
| payment gateway receivable | GATEWAY_RECEIVABLE | ``system:gateway_receivable`` | debit | none |
| fee revenue | FEE_REVENUE | ``system:fee_revenue`` | credit | none |
| write-off income | WRITE_OFF_INCOME | ``system:write_off_income`` | credit | none |
| due from / due to Xi'an | DUE_FROM_XIAN / DUE_TO_XIAN | ``interop:<peer_issuer_id>`` | debit / credit | none |
| medical insurance fund | MEDICAL_FUND | ``system:medical_fund`` | credit | none |

A card's liability can never go negative (the DB CHECK refuses it): a purchase the card
could not have paid is an exception, not an overdraft. ``docs/ledger.md`` gives the
transfers of each flow.
"""

from __future__ import annotations

from typing import Final

from sqlalchemy import select
from sqlalchemy.orm import Session

from clearing.db import conflict_insert
from clearing.models import LEDGER_CNY, Account, AccountCode, AccountFlag, utcnow

GATEWAY_REF: Final = "system:gateway_receivable"
FEE_REVENUE_REF: Final = "system:fee_revenue"
WRITE_OFF_INCOME_REF: Final = "system:write_off_income"
MEDICAL_FUND_REF: Final = "system:medical_fund"

_CREDIT_NORMAL_GUARDED: Final = frozenset({AccountCode.CARD_LIABILITY, AccountCode.OPERATOR_PAYABLE})


def card_ref(issuer_id: str, card_asn: str) -> str:
    return f"card:{issuer_id}:{card_asn}"


def operator_ref(operator_id: str) -> str:
    return f"operator:{operator_id}"


def default_flags(code: AccountCode) -> AccountFlag:
    return AccountFlag.DEBITS_MUST_NOT_EXCEED_CREDITS if code in _CREDIT_NORMAL_GUARDED else AccountFlag.NONE


def get_or_create_account(
    session: Session, code: AccountCode, owner_ref: str, *, flags: AccountFlag | None = None
) -> int:
    """The id of account (code, owner_ref), created if missing; race-free on both databases.

    Uses ``INSERT … ON CONFLICT DO NOTHING`` on the unique (code, owner_ref), so two
    transactions creating the same account both end up with the one row.
    """
    assert 0 < len(owner_ref) <= 80, "owner_ref must be 1..80 characters"
    found = session.execute(
        select(Account.id).where(Account.code == int(code), Account.owner_ref == owner_ref)
    ).scalar_one_or_none()
    if found is not None:
        return int(found)
    values = {
        "ledger": LEDGER_CNY,
        "code": int(code),
        "owner_ref": owner_ref,
        "flags": int(default_flags(code) if flags is None else flags),
        "debits_pending": 0,
        "debits_posted": 0,
        "credits_pending": 0,
        "credits_posted": 0,
        "created_at": utcnow(),
    }
    insert = conflict_insert(session.get_bind().dialect.name)
    session.execute(insert(Account).values(**values).on_conflict_do_nothing())
    account_id = session.execute(
        select(Account.id).where(Account.code == int(code), Account.owner_ref == owner_ref)
    ).scalar_one()
    return int(account_id)


def card_liability(session: Session, issuer_id: str, card_asn: str) -> int:
    return get_or_create_account(session, AccountCode.CARD_LIABILITY, card_ref(issuer_id, card_asn))


def operator_payable(session: Session, operator_id: str) -> int:
    return get_or_create_account(session, AccountCode.OPERATOR_PAYABLE, operator_ref(operator_id))


def issuer_float(session: Session, issuer_id: str) -> int:
    return get_or_create_account(session, AccountCode.ISSUER_FLOAT, f"system:issuer_float:{issuer_id}")


def gateway_receivable(session: Session) -> int:
    return get_or_create_account(session, AccountCode.GATEWAY_RECEIVABLE, GATEWAY_REF)


def fee_revenue(session: Session) -> int:
    return get_or_create_account(session, AccountCode.FEE_REVENUE, FEE_REVENUE_REF)


def write_off_income(session: Session) -> int:
    return get_or_create_account(session, AccountCode.WRITE_OFF_INCOME, WRITE_OFF_INCOME_REF)


def due_from_peer(session: Session, peer_issuer_id: str) -> int:
    """What the peer city's clearing centre owes us (our terminals accepted its cards)."""
    return get_or_create_account(session, AccountCode.DUE_FROM_XIAN, f"interop:{peer_issuer_id}")


def due_to_peer(session: Session, peer_issuer_id: str) -> int:
    """What we owe the peer city's clearing centre (its terminals accepted our cards)."""
    return get_or_create_account(session, AccountCode.DUE_TO_XIAN, f"interop:{peer_issuer_id}")


def medical_fund(session: Session) -> int:
    return get_or_create_account(session, AccountCode.MEDICAL_FUND, MEDICAL_FUND_REF)


__all__ = [
    "card_liability",
    "card_ref",
    "default_flags",
    "due_from_peer",
    "due_to_peer",
    "fee_revenue",
    "gateway_receivable",
    "get_or_create_account",
    "issuer_float",
    "medical_fund",
    "operator_payable",
    "operator_ref",
    "write_off_income",
]
