"""The emulated purse is the oracle: a hypothesis state machine over everything that moves money.

Real card OS purses (``cardos``, issued by ``clearing.issuance`` from the key store) make the
purchases and take the loads; clearing ingests what the terminals upload, decides exceptions,
authorizes, completes, resolves and cancels loads. Steps: genuine taps, amounts above the
limit, counter gaps (records held back), forged and replayed records, re-uploaded batches, an
ingest that crashes before COMMIT, exception decisions of every kind with any amount, loads
completed, torn after the card credited them (TAC lost) or before, resolved from the card,
cancelled.

After every step:
* the ledger balances (debits == credits, pending totals == unresolved reservations);
* no flagged account is below its floor;
* no genuine record is charged to its card more than once, and no forged one at all;
* no load is posted twice, and none is posted that the card does not hold;
* no decision is applied twice;
* whenever a card has nothing in flight (every record uploaded and decided, no load in
  doubt), its ledger balance == its shadow balance == its purse.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session
from tapfactory import OWN_ISSUER, T0, make_keystore, register_world

from cardos.apdu import split_response
from cardos.card import Card as EmulatedCard
from cardos.image import CardKeys
from cardos.os import CardTorn, TearPlan
from cardos.profile import AID_PURSE
from cardos.records import SHANGHAI_TZ
from clearing import db, loads
from clearing.contract import Batch, LoadAuthorizeRequest, LoadCompleteRequest, LoadResolveRequest, TapRecord
from clearing.errors import ClearingError
from clearing.exceptions_queue import Kind, accept, kind_of, write_off
from clearing.ingest import TacKeys, keystore_dtk, make_ingestor, prepare
from clearing.issuance import issue_card
from clearing.keystore import KeyStore
from clearing.ledger import account_balance, trial_balance
from clearing.models import Account, ExceptionItem, LoadState, PendingLoad, Tap, Transfer
from clearing.models import Card as CardRow
from clearing.validation import Limits
from tests.cardos.cardkit import Terminal as CardTerminal

NOW = T0 + dt.timedelta(days=1)
TERMINALS = ("0000aa0000a1", "0000aa0000a2")
LOAD_TERMINAL = "0000aa0000a3"
LIMIT_FEN = 500
OPENING_FEN = 3000
EXAMPLES = int(os.environ.get("YIKATONG_MONEY_EXAMPLES", "40"))
PHASES = [Phase.explicit, Phase.reuse, Phase.generate] + (
    [] if os.environ.get("YIKATONG_MONEY_NOSHRINK") else [Phase.shrink]
)


@dataclass
class Purse:
    """One emulated card and what the test knows it did."""

    card: EmulatedCard
    keys: CardKeys
    asn: str
    # (terminal, seq) -> amount of every genuine purchase the purse made
    purchases: dict[tuple[str, int], int] = field(default_factory=dict)
    credited_loads: dict[str, int] = field(default_factory=dict)  # load id -> amount the purse took

    @property
    def balance(self) -> int:
        return self.card.registers.balance_fen


class Money(RuleBasedStateMachine):
    template: Path

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="ykt-money-"))
        shutil.copyfile(self.template, self.dir / "c.db")
        self.engine: Engine = db.make_engine(f"sqlite:///{self.dir / 'c.db'}")
        keystore = make_keystore(self.dir)
        assert isinstance(keystore, KeyStore)
        self.keystore = keystore
        self.ingestor = make_ingestor(self.engine, clock=lambda: NOW.astimezone(dt.UTC), limits=Limits(LIMIT_FEN))
        self.keys = TacKeys(keystore_dtk(keystore), keystore.issuers())
        self.seq = dict.fromkeys(TERMINALS, 1)
        self.batch_seq = dict.fromkeys(TERMINALS, 1)
        self.journal: dict[str, list[TapRecord]] = {t: [] for t in TERMINALS}  # made, not uploaded yet
        self.last_batch: dict[str, tuple[Batch, bytes]] = {}
        self.uploaded: list[TapRecord] = []
        self.forged: set[tuple[str, int]] = set()
        self.minutes = 0
        self.load_n = 0
        self.purses: list[Purse] = []

    def teardown(self) -> None:
        self.engine.dispose()
        shutil.rmtree(self.dir, ignore_errors=True)

    @initialize()
    def world(self) -> None:
        with Session(self.engine) as session:
            register_world(session, [], [*TERMINALS, LOAD_TERMINAL])
        with Session(self.engine) as session, session.begin():
            for _ in range(2):
                image, row = issue_card(
                    session, self.keystore, issuer_id=OWN_ISSUER, card_type="ordinary", balance_fen=OPENING_FEN,
                    now=T0,
                )  # fmt: skip
                card = EmulatedCard.from_image(image)
                self.purses.append(Purse(card, image.keys, row.card_asn))

    # --- helpers ------------------------------------------------------------------------------

    def _when(self) -> dt.datetime:
        self.minutes += 3
        return (T0 + dt.timedelta(minutes=self.minutes)).astimezone(SHANGHAI_TZ)

    def _select(self, purse: Purse) -> None:
        purse.card.power_off()
        purse.card.power_on()
        select_purse = bytes.fromhex("00A40400") + bytes([len(AID_PURSE)]) + AID_PURSE
        _, sw = split_response(purse.card.transmit(select_purse))
        assert sw in (0x9000, 0x6283), f"{sw:04X}"

    def _ingest(self, terminal_id: str, batch: Batch) -> list[tuple[str, str]]:
        answer = self.ingestor.ingest(prepare(terminal_id, batch, self.keys)).answer
        self.last_batch[terminal_id] = (batch, answer)
        return [(v["verdict"], v["code"]) for v in msgspec.json.decode(answer)["verdicts"]]

    def _new_batch(self, terminal_id: str, records: list[TapRecord]) -> Batch:
        batch = Batch(self.batch_seq[terminal_id], T0.isoformat(), records)
        self.batch_seq[terminal_id] += 1
        return batch

    # --- taps -------------------------------------------------------------------------------------

    @rule(who=st.integers(0, 1), where=st.sampled_from(TERMINALS), amount=st.sampled_from([0, 50, 120, 300, 600]))
    def tap(self, who: int, where: str, amount: int) -> None:
        """A real composite purchase on the purse; the record waits in its terminal's journal."""
        purse = self.purses[who]
        self._select(purse)
        when = self._when()
        term = CardTerminal(purse.card, purse.keys, bytes.fromhex(where), self.seq[where])
        tx = term.purchase(amount, capp=True, moment=when.replace(tzinfo=None), select=False)
        if not tx.ok:
            assert tx.sw == 0x9401  # not enough in the purse: no record
            return
        self.seq[where] += 1
        assert tx.counter is not None and tx.balance_before is not None
        record = TapRecord(
            terminal_id=where, terminal_seq=tx.terminal_seq, psam_serial="00000000000000a1", issuer_id=OWN_ISSUER,
            card_asn=purse.asn, card_type="ordinary", tx_type=9, amount_fen=amount,
            balance_before_fen=tx.balance_before, offline_counter=tx.counter,
            tx_time=when.isoformat(timespec="seconds"), key_version=purse.keys.key_version,
            alg_id=purse.keys.alg_id, tac=tx.tac.hex(),
        )  # fmt: skip
        purse.purchases[(where, tx.terminal_seq)] = amount
        self.journal[where].append(record)

    @rule(where=st.sampled_from(TERMINALS), hold=st.sets(st.integers(0, 5), max_size=2))
    def upload(self, where: str, hold: set[int]) -> None:
        """Upload the journal, holding some records back for a later batch (a counter gap)."""
        records = self.journal[where]
        if not records:
            return
        send = [r for i, r in enumerate(records) if i not in hold]
        if not send:
            return
        verdicts = self._ingest(where, self._new_batch(where, send))
        assert len(verdicts) == len(send)
        self.journal[where] = [r for i, r in enumerate(records) if i in hold]
        self.uploaded.extend(send)

    @precondition(lambda self: bool(self.last_batch))
    @rule(data=st.data())
    def replay_batch(self, data: st.DataObject) -> None:
        """The same batch again: the stored answer, byte for byte, and nothing new."""
        where = data.draw(st.sampled_from(sorted(self.last_batch)))
        batch, answer = self.last_batch[where]
        transfers = self._count(Transfer)
        assert self.ingestor.ingest(prepare(where, batch, self.keys)).answer == answer
        assert self._count(Transfer) == transfers

    @precondition(lambda self: bool(self.uploaded))
    @rule(data=st.data(), forge=st.booleans())
    def resend_record(self, data: st.DataObject, forge: bool) -> None:
        """An old record in a new batch (a duplicate), or the same with its amount changed (a forgery)."""
        record = data.draw(st.sampled_from(self.uploaded))
        if forge:
            record = msgspec.structs.replace(
                record, amount_fen=record.amount_fen + 1, terminal_seq=900_000 + self.minutes
            )
            self.forged.add((record.terminal_id, record.terminal_seq))
            self.minutes += 1
        verdicts = self._ingest(record.terminal_id, self._new_batch(record.terminal_id, [record]))
        expected = "E_TAC_MISMATCH" if forge else "E_DUPLICATE_TERMINAL_SEQ"
        assert verdicts == [("rejected", expected)]

    @rule(where=st.sampled_from(TERMINALS))
    def crash_before_commit(self, where: str) -> None:
        """An ingest that dies before COMMIT leaves nothing; the retry posts once."""
        records = self.journal[where]
        if not records:
            return
        batch = self._new_batch(where, list(records))

        def die(_: object) -> None:
            raise KeyboardInterrupt("worker killed")

        self.ingestor.before_commit = die
        transfers = self._count(Transfer)
        try:
            with pytest.raises(KeyboardInterrupt):
                self.ingestor.ingest(prepare(where, batch, self.keys))
        finally:
            self.ingestor.before_commit = None
        assert self._count(Transfer) == transfers
        self._ingest(where, batch)
        self.journal[where] = []
        self.uploaded.extend(records)

    # --- exception decisions ----------------------------------------------------------------------

    @rule(
        data=st.data(),
        decision=st.sampled_from(["accept", "write_off"]),
        amount=st.one_of(st.none(), st.integers(0, 700)),
    )
    def decide(self, data: st.DataObject, decision: str, amount: int | None) -> None:
        with Session(self.engine) as session:
            ids = list(session.execute(select(ExceptionItem.id).where(ExceptionItem.state == "open")).scalars())
        if not ids:
            return
        item_id = data.draw(st.sampled_from(ids))
        try:
            with Session(self.engine) as session, session.begin():
                if decision == "accept":
                    accept(session, self.keystore, item_id, now=NOW, decided_by="prop")
                else:
                    write_off(session, item_id, now=NOW, note="prop", amount_fen=amount, decided_by="prop")
        except ClearingError as exc:
            assert exc.code in {
                "E_UNVERIFIED_RECORD", "E_DECISION_NOT_ALLOWED", "E_BAD_AMOUNT", "E_DUPLICATE_TAP",
                "E_DEBITS_EXCEED_CREDITS",
            }, exc  # fmt: skip
        with Session(self.engine) as session:
            item = session.get(ExceptionItem, item_id)
            assert item is not None
            still_open = item.state == "open"
        if still_open:
            return  # the decision was refused: nothing moved
        with Session(self.engine) as session, session.begin(), pytest.raises(ClearingError) as again:
            accept(session, self.keystore, item_id, now=NOW)
        assert again.value.code == "E_ALREADY_DECIDED"  # no decision is applied twice

    # --- loads ----------------------------------------------------------------------------------------

    @rule(who=st.integers(0, 1), amount=st.sampled_from([100, 250]), tear=st.sampled_from([None, "before", "after"]))
    def load(self, who: int, amount: int, tear: str | None) -> None:
        """Pay a top-up and load it at a kiosk; the card may be pulled during CREDIT FOR LOAD."""
        purse = self.purses[who]
        self.load_n += 1
        load_id = f"L{self.load_n}"
        with Session(self.engine) as session, session.begin():
            loads.create_pending(session, load_id, OWN_ISSUER, purse.asn, amount, payment_ref=f"pi_{load_id}")
        self._load(purse, load_id, amount, tear)

    def _load(self, purse: Purse, load_id: str, amount: int, tear: str | None) -> None:
        self._select(purse)
        init = bytes.fromhex("805000020B01") + amount.to_bytes(4, "big") + bytes.fromhex(LOAD_TERMINAL) + b"\x10"
        data, sw = split_response(purse.card.transmit(init))
        if sw != 0x9000:
            return
        req = LoadAuthorizeRequest(
            terminal_id=LOAD_TERMINAL, issuer_id=OWN_ISSUER, card_asn=purse.asn, amount_fen=amount,
            balance_before_fen=int.from_bytes(data[0:4], "big"), online_counter=int.from_bytes(data[4:6], "big"),
            card_random=data[8:12].hex(), mac1=data[12:16].hex(), key_version=data[6], alg_id=data[7],
        )  # fmt: skip
        with Session(self.engine) as session, session.begin():
            # the host's clock and the validators' agree: one timeline for taps and loads
            answer = loads.authorize(session, self.keystore, load_id, req, self._when())
        local = dt.datetime.fromisoformat(answer.tx_time)
        credit = bytes.fromhex("805200000B" + local.strftime("%Y%m%d%H%M%S") + answer.mac2 + "04")
        if tear is not None:
            # counted from power-on: SELECT, INITIALIZE FOR LOAD, then CREDIT FOR LOAD is the 3rd
            purse.card.tear = TearPlan(3, "before_commit" if tear == "before" else "after_commit")
        try:
            tac, sw = split_response(purse.card.transmit(credit))
        except CardTorn:
            if tear == "after":
                purse.credited_loads[load_id] = amount
            return
        finally:
            purse.card.tear = None
        assert sw == 0x9000
        purse.credited_loads[load_id] = amount
        with Session(self.engine) as session, session.begin():
            loads.complete(session, self.keystore, load_id, LoadCompleteRequest(tac.hex()))

    @rule(data=st.data())
    def settle_load(self, data: st.DataObject) -> None:
        """A load in doubt: ask the card (GET TRANSACTION PROVE, P2 02) and resolve it; then finish it."""
        with Session(self.engine) as session:
            doubtful = session.execute(
                select(PendingLoad.id, PendingLoad.card_asn, PendingLoad.online_counter, PendingLoad.amount_fen)
                .where(PendingLoad.state == LoadState.AUTHORIZED.value)
                .order_by(PendingLoad.id)
            ).all()
        if not doubtful:
            return
        load_id, asn, counter, amount = data.draw(st.sampled_from(doubtful))
        purse = next(p for p in self.purses if p.asn == asn)
        self._select(purse)
        proof, sw = split_response(
            purse.card.transmit(bytes.fromhex("805A000202") + (counter + 1).to_bytes(2, "big") + b"\x08")
        )
        if sw == 0x9000:
            req = LoadResolveRequest(LOAD_TERMINAL, prove_mac2=proof[:4].hex(), prove_tac=proof[4:].hex())
        else:
            assert sw == 0x6A83
            req = LoadResolveRequest(LOAD_TERMINAL, online_counter=self._online_counter(purse))
        with Session(self.engine) as session, session.begin():
            status = loads.resolve(session, self.keystore, load_id, req, NOW).status
        assert (status == "posted") == (load_id in purse.credited_loads)
        if status == "pending":
            self._load(purse, load_id, amount, None)

    def _online_counter(self, purse: Purse) -> int:
        data, sw = split_response(
            purse.card.transmit(bytes.fromhex("805000020B0100000001") + bytes.fromhex(LOAD_TERMINAL) + b"\x10")
        )
        assert sw == 0x9000
        self._select(purse)  # leave the INITIALIZE unanswered, as a reader that only looks
        return int.from_bytes(data[4:6], "big")

    @rule(data=st.data())
    def cancel_load(self, data: st.DataObject) -> None:
        with Session(self.engine) as session:
            ids = list(
                session.execute(
                    select(PendingLoad.id).where(PendingLoad.state.in_(["pending", "authorized"]))
                ).scalars()
            )
        if not ids:
            return
        load_id = data.draw(st.sampled_from(ids))
        try:
            with Session(self.engine) as session, session.begin():
                loads.cancel(session, load_id)
        except ClearingError as exc:
            assert exc.code == "E_LOAD_IN_DOUBT"  # authorized: the card may hold it

    # --- invariants ---------------------------------------------------------------------------------

    def _count(self, model: Any) -> int:
        with Session(self.engine) as session:
            return int(session.execute(select(func.count()).select_from(model)).scalar_one())

    @invariant()
    def ledger_balances_and_no_account_is_below_its_floor(self) -> None:
        if not self.purses:
            return
        with Session(self.engine) as session:
            trial_balance(session)
            for acc in session.execute(select(Account).where(Account.flags.op("&")(1) == 1)).scalars():
                assert acc.debits_posted + acc.debits_pending <= acc.credits_posted, acc

    @invariant()
    def every_card_is_charged_once_per_genuine_record_and_loaded_once_per_credit(self) -> None:
        with Session(self.engine) as session:
            for purse in self.purses:
                row = session.execute(select(CardRow).where(CardRow.card_asn == purse.asn)).scalar_one()
                debits = session.execute(
                    select(Transfer.id, Transfer.amount_fen, Transfer.source_ref).where(
                        Transfer.debit_account_id == row.account_id, Transfer.state == "posted"
                    )
                ).all()
                charged: dict[tuple[str, int], int] = {}
                for tid, fen, _source in debits:
                    if tid.startswith("tap:"):
                        _, terminal, seq = tid.split(":")
                        key = (terminal, int(seq))
                    else:
                        assert tid.startswith("exc:"), tid
                        item = session.get(ExceptionItem, int(tid.split(":")[1]))
                        assert item is not None and item.terminal_id is not None and item.terminal_seq is not None
                        key = (item.terminal_id, item.terminal_seq)
                    assert key not in self.forged, f"a forged record was charged: {key}"
                    charged[key] = charged.get(key, 0) + fen
                for key, fen in charged.items():
                    assert key in purse.purchases, f"{key} charged but the purse never made it"
                    assert fen <= purse.purchases[key], (
                        f"{key} charged {fen} fen for a purchase of {purse.purchases[key]}"
                    )
                posted = session.execute(
                    select(PendingLoad.id, PendingLoad.amount_fen).where(
                        PendingLoad.card_asn == purse.asn, PendingLoad.state == "posted"
                    )
                ).all()
                for load_id, fen in posted:
                    assert purse.credited_loads.get(load_id) == fen, f"load {load_id} posted but not on the card"

    @invariant()
    def a_card_with_nothing_in_flight_agrees_with_its_purse(self) -> None:
        with Session(self.engine) as session:
            for purse in self.purses:
                if any(r.card_asn == purse.asn for records in self.journal.values() for r in records):
                    continue
                open_items = [
                    kind_of(item, session.get(Tap, item.tap_id) if item.tap_id is not None else None)
                    for item in session.execute(
                        select(ExceptionItem).where(ExceptionItem.card_asn == purse.asn, ExceptionItem.state == "open")
                    ).scalars()
                ]
                held = [k for k in open_items if k is Kind.HELD]
                doubtful = session.execute(
                    select(func.count())
                    .select_from(PendingLoad)
                    .where(PendingLoad.card_asn == purse.asn, PendingLoad.state == "authorized")
                ).scalar_one()
                if held or doubtful:
                    continue
                row = session.execute(select(CardRow).where(CardRow.card_asn == purse.asn)).scalar_one()
                ledger = account_balance(session, row.account_id).credit_balance_fen
                assert ledger == row.shadow_balance_fen == purse.balance, (
                    ledger,
                    row.shadow_balance_fen,
                    purse.balance,
                )


@pytest.fixture(scope="module")
def _template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("money") / "template.db"
    db.upgrade(f"sqlite:///{path}")
    return path


def test_money_is_never_created_or_destroyed(_template: Path) -> None:
    Money.template = _template
    run_state_machine_as_test(
        Money,
        settings=settings(
            max_examples=EXAMPLES, stateful_step_count=30, deadline=None, suppress_health_check=list(HealthCheck),
            database=None, phases=PHASES,
        ),
    )  # fmt: skip
