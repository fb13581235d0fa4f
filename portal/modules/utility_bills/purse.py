"""Pay a bill from the purse on the reader page: the portal is the biller's terminal.

``docs/utility-bills.md``, "Paying from the purse". The terminal's own tap session runs here,
server-side: ``terminals.session.pos_flow`` (a plain purchase of the bill's amount), with an
emulated PSAM (``cardos.psam``) whose image is made from the key store for the biller's virtual
terminal, as ``yikatong.demo.make_bus`` makes a bus's. Only the *card's* exchanges leave the
server: each is handed to the reader page, which sends it to the reader agent (whose APDU relay
transmits a whitelist of purse commands only) and posts the card's answer back. PSAM exchanges and
the journal steps run here.

Nothing the browser sends is trusted. A forged card answer cannot make a valid TAC: the record
is ingested as a batch of the biller's terminal through clearing's own pipeline
(``clearing.ingest.prepare`` then ``make_ingestor``), which verifies the TAC with the card's
key and every other rule; only an ``accepted`` verdict marks the bill paid.

**The journal is the database** (``utility_purse_taps``): the record is written ``pending``
before DEBIT goes to the card (the point of no return), ``committed`` with the card's TAC, then
``cleared`` or ``rejected`` with clearing's verdict, or ``void`` once the card shows the debit
never happened. A debit torn at the card (its answer lost) stays ``pending``: the next purse
payment with that card, for any bill, starts with GET TRANSACTION PROVE, exactly as a validator
does (``terminals.session``, section 8), and a proved debit is committed, ingested and pays the
bill it was for; the citizen is never charged twice.

**Terminal sequences** are allocated in the database (``utility_billers.ttc_next``, one row
lock per INIT SAM FOR PURCHASE) and set into the PSAM before it answers, so no two portal
workers and no restart ever hand one out twice (the PSAM's own image is not kept).

**A run lives in the worker that started it** (memory, at most ``RUNS_MAX``, ``RUN_TTL_S``): a
lost run is a torn tap, which the journal settles at the next presentation. Several workers
need the run's id routed to its worker (``docs/decisions.md``, "Utility bills").
"""

from __future__ import annotations

import datetime as dt
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from cardos.psam import Psam, psam_image_for_terminal
from clearing.contract import BatchAnswer, DenylistEntry, TapRecord
from clearing.contract.schemas import Batch
from clearing.ingest import Ingestor, TacKeys, keystore_dtk, prepare
from clearing.keystore import KeyStore
from clearing.models import Card, CardStatus, utcnow
from portal.models import PortalCardBinding as CardBinding
from portal.modules.utility_bills import bills
from portal.modules.utility_bills.errors import BillCode, BillError
from portal.modules.utility_bills.models import UtilityBiller, UtilityPurseTap
from terminals.config import TerminalConfig
from terminals.errors import CardRefused, CardRemoved, ReaderError
from terminals.journal import PendingTap
from terminals.readers import Apdu, Channel, InProcessReader, Reply
from terminals.session import (
    Commit,
    Exchange,
    FlowIO,
    Outcome,
    PricingRefused,
    ResolvePending,
    SamInfo,
    SavePending,
    Step,
    TapContext,
    TapResult,
    Target,
    drive,
    open_sam_flow,
    pos_flow,
)

RUN_TTL_S: Final = 300.0
RUNS_MAX: Final = 256
INIT_SAM: Final = bytes.fromhex("8070")
_DONE: Final = Reply(b"", 0x9000)


def run_id() -> str:
    return "pr_" + secrets.token_hex(16)


def make_psam(keystore: KeyStore, terminal_id: str) -> Psam:
    """The biller terminal's PSAM: its number, a serial from it, the purchase keys of every issuer held."""
    image = psam_image_for_terminal(
        bytes.fromhex(terminal_id),
        bytes.fromhex("0000000000" + terminal_id[-10:]),
        keystore.psam_keys(keystore.issuers()),
    )
    return Psam(image)  # no path: nothing is persisted here, the sequence is the database's


# --- what the flow reads and writes --------------------------------------------------------------


class BillJournal:
    """``LocalState`` and ``Journaling`` of the portal terminal, over ``utility_purse_taps``.

    ``pending_for`` is also where the card on the reader meets the citizen: a card not bound to
    the session's citizen, or not active, ends the run before anything is debited.
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        ingest: Callable[[TapRecord], tuple[str, str]],
        *,
        citizen_id: int,
        bill_id: int,
        clock: Callable[[], dt.datetime],
    ) -> None:
        self.sessions = sessions
        self.ingest = ingest
        self.citizen_id = citizen_id
        self.bill_id = bill_id
        self.clock = clock
        self.paid_bill_id: int | None = None  # the bill a committed record paid (a recovery pays its own)
        self.verdict: tuple[str, str] | None = None

    # LocalState
    def pending_for(self, issuer_id: str, card_asn: str) -> PendingTap | None:
        with self.sessions() as session:
            bound = session.execute(
                select(CardBinding.id).where(
                    CardBinding.citizen_id == self.citizen_id,
                    CardBinding.issuer_id == issuer_id,
                    CardBinding.card_asn == card_asn,
                )
            ).first()
            if bound is None:
                raise BillError(BillCode.E_BILL_CARD_NOT_BOUND, "the card on the reader is not bound to your account")
            card = session.execute(
                select(Card.status).where(Card.issuer_id == issuer_id, Card.card_asn == card_asn)
            ).scalar_one_or_none()
            if card != CardStatus.ACTIVE:
                raise BillError(BillCode.E_BILL_CARD_REFUSED, "this card cannot pay: it is not active")
            row = session.scalars(
                select(UtilityPurseTap)
                .where(UtilityPurseTap.issuer_id == issuer_id, UtilityPurseTap.card_asn == card_asn,
                       UtilityPurseTap.state == "pending")
                .order_by(UtilityPurseTap.created_at.desc())
                .limit(1)
            ).first()  # fmt: skip
            if row is None:
                return None
            return PendingTap(msgspec.json.decode(row.record, type=TapRecord), row.created_at.isoformat())

    def last_paid_epoch_s(self, issuer_id: str, card_asn: str, tx_type: int, since_epoch_s: int) -> int | None:
        return None  # a bill is paid once by its state, not by a repeat window

    def denylisted(self, issuer_id: str, card_asn: str, at: dt.datetime) -> DenylistEntry | None:
        return None  # an inactive card is refused in pending_for; clearing holds a denylisted one anyway

    def counter_clash(self, issuer_id: str, card_asn: str, offline_counter: int) -> tuple[str, int, TapRecord] | None:
        return None  # clearing's duplicate check is the one that decides for the portal

    # Journaling
    def save_pending(self, record: TapRecord) -> None:
        """Before DEBIT: the bill must still be open and have no other purse payment in flight."""
        with self.sessions() as session, session.begin():
            bill, _ = bills.bill_of(session, self.bill_id, lock=True)
            if bill.state != "open":
                raise BillError(BillCode.E_BILL_PAID, "the bill was paid meanwhile: nothing was taken from the card")
            busy = session.execute(
                select(UtilityPurseTap.terminal_seq).where(
                    UtilityPurseTap.bill_id == bill.id, UtilityPurseTap.state.in_(("pending", "committed"))
                )
            ).first()
            if busy is not None:
                raise BillError(BillCode.E_BILL_IN_PAYMENT, "another purse payment of this bill is not settled yet")
            if record.amount_fen != bill.amount_fen:
                raise BillError(BillCode.E_BILL_MALFORMED, "the purchase is not for the bill's amount")
            now = self.clock()
            session.add(UtilityPurseTap(
                terminal_id=record.terminal_id, terminal_seq=record.terminal_seq, bill_id=bill.id,
                issuer_id=record.issuer_id, card_asn=record.card_asn, amount_fen=record.amount_fen,
                record=msgspec.json.encode(record).decode(), state="pending", created_at=now, updated_at=now,
            ))  # fmt: skip

    def append(self, record: TapRecord, *, mac2_ok: bool = True, interop: bool = False) -> int:
        """The card's TAC is here: commit the record, clear it, and mark its bill paid if accepted."""
        with self.sessions() as session, session.begin():
            row = self._row(session, record)
            if row.state == "pending":
                row.record = msgspec.json.encode(record).decode()
                row.state, row.updated_at = "committed", self.clock()
        settle(self.sessions, self.ingest, record, clock=self.clock)
        with self.sessions() as session:
            row = self._row(session, record)
            self.paid_bill_id = row.bill_id if row.state == "cleared" else None
            self.verdict = (row.state, row.verdict_code or "")
        return record.terminal_seq

    def resolve_pending(self, record: TapRecord, outcome: str) -> None:
        with self.sessions() as session, session.begin():
            row = session.get(UtilityPurseTap, (record.terminal_id, record.terminal_seq), with_for_update=True)
            if row is not None and row.state == "pending":
                row.state, row.verdict_code, row.updated_at = "void", outcome[:64], self.clock()

    def append_fraud(self, record: TapRecord, kind: str, earlier_tap_id: int, earlier: TapRecord, *,
                     mac2_ok: bool = True, interop: bool = False) -> int:  # fmt: skip
        raise AssertionError("counter_clash is never reported here")

    @staticmethod
    def _row(session: Session, record: TapRecord) -> UtilityPurseTap:
        row = session.get(UtilityPurseTap, (record.terminal_id, record.terminal_seq), with_for_update=True)
        if row is None:
            raise BillError(BillCode.E_BILL_SESSION_STEP, "no purse record of this terminal and sequence")
        return row


def settle(
    sessions: sessionmaker[Session],
    ingest: Callable[[TapRecord], tuple[str, str]],
    record: TapRecord,
    *,
    clock: Callable[[], dt.datetime],
) -> str:
    """Clear a committed record and mark its bill: safe to run again (the batch's stored answer)."""
    verdict, code = ingest(record)
    with sessions() as session, session.begin():
        row = session.get(UtilityPurseTap, (record.terminal_id, record.terminal_seq), with_for_update=True)
        assert row is not None
        if row.state not in ("committed", "pending"):
            return row.state
        if verdict == "accepted":
            bill, _ = bills.bill_of(session, row.bill_id, lock=True)
            if bill.state == "open":
                bills.mark_paid(bill, via="purse", ref=f"tap:{record.terminal_id}:{record.terminal_seq}", at=clock())
            row.state = "cleared"
        else:
            row.state = "rejected"
        row.verdict_code, row.updated_at = code[:64], clock()
        return row.state


def clearing_ingest(
    ingestor: Ingestor, keys: Callable[[], TacKeys], clock: Callable[[], dt.datetime]
) -> Callable[[TapRecord], tuple[str, str]]:
    """One record as one batch of its terminal (batch number = terminal sequence), through clearing's pipeline."""

    def ingest(record: TapRecord) -> tuple[str, str]:
        batch = Batch(batch_seq=record.terminal_seq, created_at=clock().isoformat(), records=[record])
        answer = msgspec.json.decode(
            ingestor.ingest(prepare(record.terminal_id, batch, keys())).answer, type=BatchAnswer
        )
        [verdict] = answer.verdicts
        return verdict.verdict, verdict.code

    return ingest


# --- one run of the tap session ----------------------------------------------------------------


@dataclass
class PurseRun:
    id: str
    citizen_id: int
    bill_id: int
    flow: Generator[Step, Reply, TapResult]
    sam: Channel
    journal: BillJournal
    allocate_ttc: Callable[[], int]
    psam: Psam
    created_s: float
    seq: int = 0
    waiting: Apdu | None = None
    result: TapResult | None = None
    error: BillError | None = None
    answered: dict[int, dict[str, Any]] = field(default_factory=dict)  # seq -> the answer given (replays)

    def start(self) -> dict[str, Any]:
        return self._advance(None, None)

    def reply(self, seq: int, *, sw: int | None, data: bytes, error: str | None) -> dict[str, Any]:
        if seq in self.answered:
            return self.answered[seq]  # a replayed post: the same answer, nothing run again
        if self.waiting is None or seq != self.seq:
            raise BillError(BillCode.E_BILL_SESSION_STEP, f"the purse payment waits for the answer to step {self.seq}")
        apdu, self.waiting = self.waiting, None
        if error is not None:
            thrown: Exception = CardRemoved("the card left the reader") if error == "card_removed" else ReaderError(
                f"the reader failed ({error[:40]})")  # fmt: skip
            out = self._advance(None, thrown)
        elif sw is None:
            raise BillError(BillCode.E_BILL_MALFORMED, "an answer carries the status word or an error")
        elif sw not in apdu.accept:
            out = self._advance(None, CardRefused(sw, apdu.what))
        else:
            out = self._advance(Reply(data, sw), None)
        self.answered[seq] = out
        return out

    def _advance(self, to_send: Reply | None, to_throw: Exception | None) -> dict[str, Any]:
        try:
            while True:
                try:
                    step = self.flow.throw(to_throw) if to_throw is not None else self.flow.send(to_send)  # type: ignore[arg-type]
                except StopIteration as stop:
                    self.result = stop.value
                    return self.view()
                to_send, to_throw = _DONE, None
                if isinstance(step, Exchange) and step.target is Target.CARD:
                    self.seq += 1
                    self.waiting = step.apdu
                    return self.view()
                if isinstance(step, Exchange):
                    if step.apdu.command[:2] == INIT_SAM:
                        self.psam.image.ttc_next = self.allocate_ttc()
                    try:
                        to_send = self.sam.run(step.apdu)
                    except (CardRefused, ReaderError, CardRemoved) as exc:
                        to_throw = exc if not isinstance(exc, CardRemoved) else ReaderError(exc.message)
                elif isinstance(step, SavePending):
                    self.journal.save_pending(step.record)
                elif isinstance(step, Commit):
                    self.journal.append(step.record, mac2_ok=step.mac2_ok, interop=step.interop)
                elif isinstance(step, ResolvePending):
                    self.journal.resolve_pending(step.record, step.outcome)
        except BillError as exc:
            self.flow.close()
            self.error = exc
            return self.view()
        except CardRemoved as exc:
            self.result = TapResult(Outcome.TAP_AGAIN, f"tap again ({exc.message})")
        except ReaderError as exc:
            self.result = TapResult(Outcome.READER_ERROR, f"reader error, try again ({exc.message})")
        except CardRefused as exc:
            self.result = TapResult(Outcome.CARD_ERROR, f"card error: {exc.what} answered {exc.sw:04X}")
        except PricingRefused as exc:  # pragma: no cover - pos_flow prices nothing
            self.result = TapResult(Outcome.NO_FARE, exc.message)
        return self.view()

    @property
    def done(self) -> bool:
        return self.result is not None or self.error is not None

    def view(self) -> dict[str, Any]:
        """What the page sees: the next card command, or the end (the bill's state is re-read from the server)."""
        if self.error is not None:
            return {"run_id": self.id, "state": "failed", "code": self.error.code.value, "message": self.error.message}
        if self.result is not None:
            r, journal = self.result, self.journal
            return {
                "run_id": self.id,
                "state": "done",
                "outcome": r.outcome.value,
                "message": r.message,
                "paid_bill_id": journal.paid_bill_id,
                "verdict": None
                if journal.verdict is None
                else {"state": journal.verdict[0], "code": journal.verdict[1]},
                "balance_after_fen": r.balance_after_fen,
            }
        assert self.waiting is not None
        return {"run_id": self.id, "state": "card", "seq": self.seq, "apdu": self.waiting.command.hex(),
                "what": self.waiting.what}  # fmt: skip


class PurseRuns:
    """The runs of this worker, bounded and expiring, and the service that starts them."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        keystore: KeyStore,
        ingestor: Ingestor,
        *,
        clock: Callable[[], dt.datetime] = utcnow,
        monotonic: Callable[[], float] = time.monotonic,
        config: TerminalConfig | None = None,
    ) -> None:
        self.sessions = sessions
        self.keystore = keystore
        self.clock = clock
        self.monotonic = monotonic
        self.config = config or TerminalConfig()
        self._local = threading.local()
        self.ingest = clearing_ingest(ingestor, self._keys, clock)
        self._runs: OrderedDict[str, PurseRun] = OrderedDict()
        self._lock = threading.Lock()
        self._run_locks: dict[str, threading.Lock] = {}

    def _keys(self) -> TacKeys:
        keys = getattr(self._local, "keys", None)  # MAC contexts are not thread-safe: one cache per thread
        if keys is None:
            keys = self._local.keys = TacKeys(keystore_dtk(self.keystore), self.keystore.issuers())
        assert isinstance(keys, TacKeys)
        return keys

    def _allocator(self, terminal_id: str) -> Callable[[], int]:
        def allocate() -> int:
            with self.sessions() as session, session.begin():
                row = session.execute(
                    select(UtilityBiller).where(UtilityBiller.terminal_id == terminal_id).with_for_update()
                ).scalar_one()
                ttc = row.ttc_next
                session.execute(update(UtilityBiller).where(UtilityBiller.id == row.id).values(ttc_next=ttc + 1))
                return int(ttc)

        return allocate

    def start(self, citizen_id: int, bill_id: int) -> dict[str, Any]:
        self.settle_committed(bill_id)  # a record committed before a crash: cleared first, never lost
        with self.sessions() as session:
            bill, biller = bills.bill_of(session, bill_id)
            if bill.state != "open":
                raise BillError(BillCode.E_BILL_PAID, "the bill is already paid")
            amount_fen, terminal_id = bill.amount_fen, biller.terminal_id
        psam = make_psam(self.keystore, terminal_id)
        sam = Channel(InProcessReader(f"PSAM {terminal_id}", psam), 2000)
        sam.reader.connect(2000)
        journal = BillJournal(self.sessions, self.ingest, citizen_id=citizen_id, bill_id=bill_id, clock=self.clock)
        sam_info = drive(open_sam_flow(), FlowIO(sam, sam, journal))  # the open flow talks to the PSAM only
        assert isinstance(sam_info, SamInfo)
        now = self.clock().astimezone(dt.UTC).replace(microsecond=0)
        ctx = TapContext(config=self.config, sam=sam_info, local=journal, now=now)
        run = PurseRun(run_id(), citizen_id, bill_id, pos_flow(ctx, amount_fen), sam, journal,
                       self._allocator(terminal_id), psam, self.monotonic())  # fmt: skip
        with self._lock:
            self._expire()
            self._runs[run.id] = run
            self._run_locks[run.id] = threading.Lock()
            while len(self._runs) > RUNS_MAX:
                old, _ = self._runs.popitem(last=False)
                self._run_locks.pop(old, None)
        with self._run_locks[run.id]:
            return run.start()

    def reply(
        self, citizen_id: int, rid: str, seq: int, *, sw: int | None, data: bytes, error: str | None
    ) -> dict[str, Any]:
        with self._lock:
            self._expire()
            run = self._runs.get(rid)
            lock = self._run_locks.get(rid)
        if run is None or lock is None or run.citizen_id != citizen_id:
            raise BillError(BillCode.E_BILL_SESSION_UNKNOWN, "this purse payment has ended or never existed")
        with lock:
            return run.reply(seq, sw=sw, data=data, error=error)

    def _expire(self) -> None:
        now = self.monotonic()
        for key in [k for k, r in self._runs.items() if now - r.created_s > RUN_TTL_S]:
            run = self._runs.pop(key)
            self._run_locks.pop(key, None)
            run.flow.close()

    def settle_committed(self, bill_id: int | None = None) -> int:
        """Clear the records committed but not yet cleared (a crash between the TAC and the verdict)."""
        query = select(UtilityPurseTap).where(UtilityPurseTap.state == "committed")
        if bill_id is not None:
            query = query.where(UtilityPurseTap.bill_id == bill_id)
        with self.sessions() as session:
            rows = session.scalars(query.limit(100)).all()
            records = [msgspec.json.decode(r.record, type=TapRecord) for r in rows]
        for record in records:
            settle(self.sessions, self.ingest, record, clock=self.clock)
        return len(records)


__all__ = ["BillJournal", "PurseRun", "PurseRuns", "clearing_ingest", "make_psam", "settle"]
