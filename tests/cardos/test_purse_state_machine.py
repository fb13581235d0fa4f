"""A model of the purse against the card over random purchases, loads, tears, proves and bad MACs.

Invariants (card-profile.md, "Atomicity and tear"): balance == initial + committed loads
- committed purchases; each commit moves its counter by exactly one; the 0x18 log is the
newest ten commits; a torn transaction, purchase or load, is committed iff GET TRANSACTION
PROVE says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from cardkit import Terminal, Tx, make_card, select_apdu, transit_record
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from cardos import crypto
from cardos.apdu import split_response
from cardos.os import CardTorn, TearPlan
from cardos.profile import AID_PURSE, LOG_RECORDS, PURSE_MAX_FEN
from cardos.records import LogRecord

INITIAL_FEN = 5_000
FLOW_APDUS = {"purchase": 3, "capp": 4, "load": 3}


@dataclass(frozen=True)
class Committed:
    kind: str
    amount_fen: int
    counter: int  # CTC from INITIALIZE
    tx: Tx


class PurseMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.alg = crypto.ALG_3DES
        self.card = make_card(balance_fen=INITIAL_FEN, seed=3)
        self.terminal = Terminal(self.card, self.card.keys)
        self.loads_fen = 0
        self.purchases_fen = 0
        self.offline = 0
        self.online = 0
        self.log: list[Committed] = []  # newest first

    # --- helpers --------------------------------------------------------------------------
    def model_balance(self) -> int:
        return INITIAL_FEN + self.loads_fen - self.purchases_fen

    def commit(self, kind: str, tx: Tx) -> None:
        if kind == "load":
            assert self.card.online_counter == self.online + 1
            self.online += 1
            self.loads_fen += tx.amount_fen
            counter = self.online - 1
        else:
            assert self.card.offline_counter == self.offline + 1
            self.offline += 1
            self.purchases_fen += tx.amount_fen
            counter = self.offline - 1
        self.log.insert(0, Committed(kind, tx.amount_fen, counter, tx))

    def run(self, kind: str, amount: int, *, bad_mac: bool = False) -> Tx:
        if kind == "load":
            return self.terminal.load(amount, bad_mac2=bad_mac)
        record = transit_record(amount, max(0, self.model_balance() - amount)) if kind == "capp" else None
        return self.terminal.purchase(amount, capp=kind == "capp", record=record, bad_mac1=bad_mac)

    # --- rules ----------------------------------------------------------------------------
    @rule(kind=st.sampled_from(["purchase", "capp"]), amount=st.integers(0, 3_000))
    def purchase(self, kind: str, amount: int) -> None:
        tx = self.run(kind, amount)
        if amount > self.model_balance():
            assert tx.sw == 0x9401
            return
        assert tx.ok and self.terminal.purchase_verifies(tx, tx.mac2, tx.tac)
        self.commit(kind, tx)

    @rule(amount=st.integers(0, 400_000))
    def load(self, amount: int) -> None:
        tx = self.run("load", amount)
        if amount > PURSE_MAX_FEN - self.model_balance():
            assert tx.sw == 0x9501
            return
        assert tx.ok and self.terminal.load_tac_verifies(tx, tx.tac)
        self.commit("load", tx)

    @rule(kind=st.sampled_from(["purchase", "capp", "load"]), amount=st.integers(0, 2_000))
    def wrong_mac(self, kind: str, amount: int) -> None:
        before = self.card.image
        tx = self.run(kind, amount, bad_mac=True)
        assert tx.sw in (0x9302, 0x9401, 0x9501)
        assert self.card.image == before

    @rule(
        kind=st.sampled_from(["purchase", "capp", "load"]),
        amount=st.integers(0, 2_000),
        at=st.integers(1, 4),
        phase=st.sampled_from(["before_commit", "after_commit"]),
    )
    def torn(self, kind: str, amount: int, at: int, phase: Literal["before_commit", "after_commit"]) -> None:
        fits = amount <= self.model_balance() if kind != "load" else amount <= PURSE_MAX_FEN - self.model_balance()
        self.card.tear = TearPlan(self.card.apdu_index + at, phase)
        try:
            tx = self.run(kind, amount)
        except CardTorn:
            tx = self.terminal.last
            assert tx is not None
            self.card.power_on()
            self.resolve_torn(kind, tx, fits, could_commit=at == FLOW_APDUS[kind] and phase == "after_commit")
            return
        self.card.tear = None  # the tear point lay beyond this flow
        if tx.ok:
            self.commit(kind, tx)
        else:
            assert not fits

    def resolve_torn(self, kind: str, tx: Tx, fits: bool, could_commit: bool) -> None:
        committed = (
            self.card.online_counter == self.online + 1
            if kind == "load"
            else self.card.offline_counter == self.offline + 1
        )
        assert committed == (could_commit and fits)
        self.terminal.select_purse()
        loading = kind == "load"
        data, sw = self.terminal.prove(tx.tx_type, (self.online if loading else self.offline) + 1)
        if not committed:
            assert sw == 0x6A83
            return
        assert sw == 0x9000
        if loading:
            assert data[:4] == tx.mac2 and self.terminal.load_tac_verifies(tx, data[4:])
        else:
            assert self.terminal.purchase_verifies(tx, data[:4], data[4:])
        tx.mac2, tx.tac = data[:4], data[4:]
        self.commit(kind, tx)

    @precondition(lambda self: bool(self.log))
    @rule(data=st.data(), loads=st.booleans())
    def prove_recent(self, data: st.DataObject, loads: bool) -> None:
        """Purchases and loads each keep their own newest PROVE_ENTRIES_MAX proofs."""
        same_kind = [c for c in self.log if (c.kind == "load") == loads]
        if not same_kind:
            return
        index = data.draw(st.integers(0, len(same_kind) - 1))
        entry = same_kind[index]
        self.terminal.select_purse()
        answer, sw = self.terminal.prove(entry.tx.tx_type, entry.counter + 1)
        if index < 8:  # PROVE_ENTRIES_MAX
            assert sw == 0x9000 and answer == entry.tx.mac2 + entry.tx.tac
        else:
            assert sw == 0x6A83

    @rule()
    def power_cycle(self) -> None:
        self.card.power_off()
        self.card.power_on()

    # --- invariants -----------------------------------------------------------------------
    @invariant()
    def balance_and_counters_match_the_model(self) -> None:
        assert self.card.balance_fen == self.model_balance()
        assert 0 <= self.card.balance_fen <= PURSE_MAX_FEN
        assert (self.card.offline_counter, self.card.online_counter) == (self.offline, self.online)

    @invariant()
    def log_holds_the_newest_commits(self) -> None:
        if not self.card.powered:
            return
        split_response(self.card.transmit(select_apdu(AID_PURSE)))
        for number in range(1, LOG_RECORDS + 1):
            data, sw = split_response(self.card.transmit(bytes([0x00, 0xB2, number, 0xC4, 0x17])))
            if number > len(self.log):
                assert sw == 0x6A83
                break
            expected = self.log[number - 1]
            record = LogRecord.decode(data)
            assert (record.tx_type, record.amount_fen, record.counter) == (
                expected.tx.tx_type,
                expected.amount_fen,
                expected.counter,
            )


PurseMachine.TestCase.settings = settings(max_examples=250, stateful_step_count=40, deadline=None)
test_purse_state_machine = PurseMachine.TestCase
