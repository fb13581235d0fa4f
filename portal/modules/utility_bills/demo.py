"""The demo city's billers and bills (``yikatong demo``, ``make run``): one call, idempotent."""

from __future__ import annotations

import datetime as dt
from typing import Final

from sqlalchemy import select
from sqlalchemy.orm import Session

from portal.modules.utility_bills import bills
from portal.modules.utility_bills.models import UtilityBill

# (payee id, name, kind, virtual terminal): example companies, clearly not real ones
DEMO_BILLERS: Final = (
    ("xianyang-water", "Xianyang Water Supply (demo)", "water", "0000fe010001"),
    ("xianyang-power", "Xianyang Electricity (demo)", "electricity", "0000fe010002"),
    ("xianyang-gas", "Xianyang Gas (demo)", "gas", "0000fe010003"),
)
# the demo citizen's account numbers at each biller, and the last two months' amounts (fen)
DEMO_ACCOUNTS: Final = {
    "xianyang-water": ("W-61040001", (3_450, 2_980)),
    "xianyang-power": ("E-61040001", (12_360, 9_870)),
    "xianyang-gas": ("G-61040001", (4_200, 5_150)),
}


def _due(period: str) -> dt.date:
    """A period's bill is due on the 20th of the month after it (a fixed rule: a re-run seeds the same)."""
    year, month = int(period[:4]), int(period[5:])
    return dt.date(year + month // 12, month % 12 + 1, 20)


def seed_demo_bills(session: Session, *, holder_name: str, today: dt.date) -> list[int]:
    """Three billers and two open bills each for the demo citizen; the bill ids (existing ones kept)."""
    ids: list[int] = []
    first = today.replace(day=1)
    periods = [(first - dt.timedelta(days=1)).strftime("%Y-%m"), first.strftime("%Y-%m")]
    for biller_id, name, kind, terminal_id in DEMO_BILLERS:
        bills.ensure_biller(session, biller_id, name=name, kind=kind, terminal_id=terminal_id, actor="demo")
        account, amounts = DEMO_ACCOUNTS[biller_id]
        rows = "\n".join(
            f"{account},{holder_name},{period},{amount},{_due(period).isoformat()}"
            for period, amount in zip(periods, amounts, strict=True)
        )
        bills.import_bills(session, biller_id, ",".join(bills.CSV_COLUMNS) + "\n" + rows + "\n")
        ids += session.scalars(
            select(UtilityBill.id).where(UtilityBill.biller_id == biller_id, UtilityBill.account_no == account)
        ).all()
    return ids


__all__ = ["DEMO_ACCOUNTS", "DEMO_BILLERS", "seed_demo_bills"]
