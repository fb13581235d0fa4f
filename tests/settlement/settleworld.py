"""A small city for settlement tests: operators, a merchant, terminals, cards, signed batches, closes."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session
from tapfactory import OWN_ISSUER, T0, Card, Terminal, dtk_lookup, register_world

from cardos.records import SHANGHAI_TZ
from clearing import registry
from clearing.contract import FareInfo, TapRecord
from clearing.ingest import TacKeys, make_ingestor, prepare
from clearing.models import Account, Operator, Transfer, TransferCode
from clearing.validation import Limits
from settlement.bank import BankAccount
from settlement.close import CloseResult, close_window
from settlement.fees import FeeSchedule
from settlement.models import PostingRow, StatementRow
from settlement.parties import add_payee, set_account, set_fee_schedule
from settlement.payouts import Payer

PAYER = Payer("Xianyang Yikatong Co., Ltd.", BankAccount("Xianyang Yikatong Settlement", "6222020000000000001",
                                                        "102791000013"))  # fmt: skip
DAY0 = T0.date()  # 2026-11-24
ACCOUNT_A = BankAccount("Xianyang Bus Co", "6222020000000000101", "102791000021")
ACCOUNT_SHOP = BankAccount("Weicheng Tea House", "6222020000000000202", "105791000034")


@dataclass
class World:
    engine: Engine
    out_dir: Path
    cards: list[Card]
    terminals: dict[str, Terminal]  # name -> terminal
    now: dt.datetime = field(default_factory=lambda: T0 + dt.timedelta(days=40))
    amount_fen_max: int = 500_000

    def ingest(self, name: str, when: dt.datetime, amounts: list[int], *, received: dt.datetime | None = None) -> bytes:
        """One batch from terminal ``name``: a tap per amount, card i % len(cards), at ``when`` (+1 min each)."""
        term = self.terminals[name]
        for i, amount in enumerate(amounts):
            term.tap(self.cards[(term.seq + i) % len(self.cards)], amount, when + dt.timedelta(minutes=i))
        return self.send(name, received=received)

    def ride(
        self,
        name: str,
        card: int,
        when: dt.datetime,
        charged_fen: int,
        *,
        standalone_fen: int,
        product: str = "p1",
        transfer_of: int | None = None,
        category: str = "adult",
        version: str | None = None,
    ) -> TapRecord:
        """A bus leg on terminal ``name`` by card ``card``, queued: its fare says what a transfer needs.

        The fare is outside the TAC, so it is set on the signed record (``tapfactory``).
        """
        term = self.terminals[name]
        record = term.tap(self.cards[card], charged_fen, when)
        fare = FareInfo(product, category, None, standalone_fen, max(0, standalone_fen - charged_fen), transfer_of,
                        tap_kind="single", tariff_version=version)  # fmt: skip
        replaced: TapRecord = msgspec.structs.replace(record, fare=fare)
        term.pending[-1] = replaced
        return replaced

    def send(self, name: str, *, received: dt.datetime | None = None) -> bytes:
        """The taps queued on terminal ``name`` as one batch, ingested."""
        term = self.terminals[name]
        batch = term.batch()
        ingestor = make_ingestor(
            self.engine, clock=lambda: received or self.now, limits=Limits(amount_fen_max=self.amount_fen_max)
        )
        return ingestor.ingest(prepare(term.terminal_id, batch, TacKeys(dtk_lookup, [OWN_ISSUER]))).answer

    def close(self, day: dt.date, **kw: object) -> CloseResult:
        return close_window(self.engine, day, now=self.now, payer=PAYER, out_dir=self.out_dir, **kw)  # type: ignore[arg-type]

    def session(self) -> Session:
        return Session(self.engine)


def make_world(engine: Engine, out_dir: Path, *, cards: int = 6) -> World:
    """Operators bus-a (account) and bus-b (none), merchant shop-1 (catering 38 bps, min 1.00, cap 50.00)."""
    deck = [Card(n, balance_fen=500_000) for n in range(1, cards + 1)]
    terminals = {"a1": Terminal("0000a0000001"), "b1": Terminal("0000b0000001"), "shop": Terminal("0000c0000001")}
    with Session(engine) as session:
        register_world(session, deck, [terminals["a1"].terminal_id], operator="bus-a")
    with Session(engine) as session, session.begin():
        add_payee(session, "bus-b", name="Xingping Bus", kind="bus_operator", category="transit", actor="test")
        set_fee_schedule(session, "catering", FeeSchedule(38, 100, 5000), actor="test")
        add_payee(session, "shop-1", name="Weicheng Tea House", kind="merchant", category="catering", actor="test")
        set_account(session, "shop-1", ACCOUNT_SHOP, actor="test")
        set_account(session, "bus-a", ACCOUNT_A, actor="test")
        for name, operator in (("b1", "bus-b"), ("shop", "shop-1")):
            registry.register_terminal(session, terminals[name].terminal_id, operator)
    return World(engine, out_dir, deck, terminals)


def day_at(day: dt.date, hour: int = 9) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(hour), SHANGHAI_TZ)


def payable(session: Session, operator_id: str) -> int:
    account = session.scalar(select(Operator.payable_account_id).where(Operator.operator_id == operator_id))
    row = session.get(Account, account)
    assert row is not None
    return row.credits_posted - row.debits_posted


def money_check(session: Session) -> tuple[int, int]:
    """(accepted purchases − refunds into payables, payouts + fees + carried) over all closed windows."""
    sales = session.scalar(select(func.coalesce(func.sum(PostingRow.amount_fen), 0)).where(PostingRow.kind == "sale"))
    refunds = session.scalar(
        select(func.coalesce(func.sum(PostingRow.amount_fen), 0)).where(PostingRow.kind == "refund")
    )
    purchases = session.scalar(
        select(func.coalesce(func.sum(Transfer.amount_fen), 0)).where(Transfer.code == int(TransferCode.PURCHASE))
    )
    assert purchases == sales, "every purchase transfer is in the running totals, once"
    out = session.execute(
        select(func.coalesce(func.sum(StatementRow.payout_fen), 0), func.coalesce(func.sum(StatementRow.fee_fen), 0))
    ).one()
    return int(sales or 0) - int(refunds or 0), int(out[0]) + int(out[1])
