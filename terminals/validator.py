"""A terminal: two readers, a PSAM, a journal and a denylist; the validator loop and POS mode.

``Terminal`` runs one tap (``tap``) or one sale (``sale``) to its end, synchronously: connect
the card, drive the flow of ``terminals.session``, power the card down. ``Validator`` is the
loop of a bus validator: it takes card events from the card reader's queue at its own pace
(the reader callback only enqueued them, STYLE.md) and taps once per presentation.
"""

from __future__ import annotations

import datetime as dt
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from cardos.profile import CardType
from cardos.records import SHANGHAI_TZ, TransitRecord
from clearing.contract import DenylistEntry, FareInfo, TapRecord
from fares import (
    FareDecision,
    FareError,
    TapKind,
    Tariff,
    legs_from_transit_records,
    price_tap,
    rider_category_for_card,
)
from fares import Tap as FareTap
from terminals.config import TerminalConfig
from terminals.denylist import Denylist
from terminals.display import yuan
from terminals.errors import CardRemoved, ReaderError, TerminalError
from terminals.journal import Journal, PendingTap
from terminals.readers import Channel, Reader
from terminals.session import (
    Flow,
    FlowIO,
    Outcome,
    Price,
    Pricer,
    PricingRefused,
    SamInfo,
    TapContext,
    TapResult,
    drive,
    drive_tap,
    open_sam_flow,
    pos_flow,
    validator_flow,
)


def shanghai_now() -> dt.datetime:
    """The card clock: local time to the second (the card stores BCD seconds)."""
    return dt.datetime.now(SHANGHAI_TZ).replace(microsecond=0)


class LocalStore:
    """``LocalState`` over the journal and the denylist."""

    def __init__(self, journal: Journal, denylist: Denylist) -> None:
        self.journal = journal
        self.denylist = denylist

    def pending_for(self, issuer_id: str, card_asn: str) -> PendingTap | None:
        return self.journal.pending_for(issuer_id, card_asn)

    def last_paid_epoch_s(self, issuer_id: str, card_asn: str, tx_type: int, since_epoch_s: int) -> int | None:
        return self.journal.last_paid_epoch_s(issuer_id, card_asn, tx_type, since_epoch_s)

    def denylisted(self, issuer_id: str, card_asn: str, at: dt.datetime) -> DenylistEntry | None:
        return self.denylist.hit(issuer_id, card_asn, at)

    def counter_clash(self, issuer_id: str, card_asn: str, offline_counter: int) -> tuple[str, int, TapRecord] | None:
        return self.journal.counter_clash(issuer_id, card_asn, offline_counter)


@dataclass(frozen=True, slots=True)
class FlatFare:
    """A single fare for every tap: for terminals without a tariff, and for tests (a single tap,
    on no versioned tariff)."""

    amount_fen: int
    product_id: str = "flat"

    def __call__(
        self, *, card_type: CardType, history: Sequence[TransitRecord], moment: dt.datetime, config: TerminalConfig
    ) -> Price:
        fare = FareInfo(
            product_id=self.product_id,
            rider_category_id=str(card_type),
            leg_group_id=None,
            full_fare_fen=self.amount_fen,
            discount_fen=0,
            tap_kind="single",
            tariff_version=None,
        )
        return Price(self.amount_fen, fare)


def fare_reason(decision: FareDecision, tariff: Tariff) -> str | None:
    """Why a tap costs less than its full fare, from what the engine decided; None: the full fare.

    The engine's decision already carries every cause (``transfer_of``, ``capped``, the rider
    category, a tap-off's refund); this only names them, so the rider and the console see why
    a fare is 0.00 instead of guessing.
    """
    reasons: list[str] = []
    if decision.kind is TapKind.TAP_OFF:
        reasons.append("tap-off" + (f", {yuan(decision.refund_due_fen)} due back" if decision.refund_due_fen else ""))
    if decision.transfer_of is not None:
        reasons.append("transfer")
    category, default = decision.rider_category_id, tariff.default_rider_category_id
    if category is not None and category != default:
        own = tariff.price_fen(decision.product_id, category)
        adult = tariff.price_fen(decision.product_id, default)
        if own is not None and (adult is None or own < adult):
            reasons.append(f"concession ({category})")
    if decision.capped:
        reasons.append("daily cap reached")
    if not reasons and decision.amount_fen < decision.full_fare_fen:
        reasons.append(f"product {decision.product_id}")
    return ", ".join(reasons) or None


class TariffFare:
    """The GTFS-Fares v2 engine (``fares``) as the validator's ``Pricer``.

    The card's transit records become past legs, the card type a rider category, and the
    tap one of the terminal's ``tap_kind`` at its route and stop; ``FareError`` refuses the tap.
    The fare names the tap kind and the tariff's version, with which clearing recomputes a
    tap-off's refund (``fares.tap_off_refund``).
    """

    def __init__(self, tariff: Tariff) -> None:
        self.tariff = tariff

    def __call__(
        self, *, card_type: CardType, history: Sequence[TransitRecord], moment: dt.datetime, config: TerminalConfig
    ) -> Price:
        tariff = self.tariff
        if config.route_id is None or config.stop_id is None:
            raise PricingRefused("the validator has no route and stop")
        try:
            category = rider_category_for_card(tariff, card_type)
            legs = legs_from_transit_records(tariff, history)
            tap = FareTap(TapKind(config.tap_kind), config.route_id, config.stop_id, moment)
            decision = price_tap(tariff, rider_category_id=category, tap=tap, history=legs)
        except FareError as exc:
            raise PricingRefused(f"{exc.code}: {exc.message}") from None
        fare = FareInfo(
            product_id=decision.product_id,
            rider_category_id=decision.rider_category_id or "",
            leg_group_id=decision.leg_group_id,
            full_fare_fen=decision.full_fare_fen,
            discount_fen=decision.discount_fen,
            transfer_of=None if decision.transfer_of is None else decision.transfer_of.terminal_seq,
            refund_due_fen=decision.refund_due_fen,
            tap_kind=config.tap_kind,
            tariff_version=tariff.version,
        )
        return Price(
            decision.amount_fen,
            fare,
            line_code=tariff.route_codes.get(config.route_id),
            station_code=tariff.stop_codes.get(config.stop_id),
            reason=fare_reason(decision, tariff),
        )


class Terminal:
    """One validator or POS: its readers, PSAM, journal, denylist, tariff and configuration."""

    def __init__(
        self,
        *,
        card_reader: Reader,
        sam_reader: Reader,
        journal: Journal,
        denylist: Denylist,
        config: TerminalConfig,
        pricer: Pricer | None = None,
        clock: Callable[[], dt.datetime] = shanghai_now,
        monotonic: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.card_reader = card_reader
        self.sam_reader = sam_reader
        self.card = Channel(card_reader, config.apdu_timeout_ms)
        self.sam = Channel(sam_reader, config.sam_timeout_ms)
        self.journal = journal
        self.denylist = denylist
        self.local = LocalStore(journal, denylist)
        self.config = config
        self.pricer = pricer
        self.clock = clock
        self.monotonic = monotonic
        self.sam_info: SamInfo | None = None
        self.trace: list[str] | None = None

    def open_sam(self) -> SamInfo:
        """Power the PSAM and read its terminal number, serial and key index."""
        self._sam_reader_changed()  # what happened in the slot before this open is now moot
        self.sam_reader.connect(self.config.sam_timeout_ms)
        io = FlowIO(self.card, self.sam, self.journal, trace=self.trace)
        info = drive(open_sam_flow(), io)
        assert isinstance(info, SamInfo)
        self.sam_info = info
        return info

    def _sam_reader_changed(self) -> bool:
        """Whether the PSAM left or entered its slot since last asked (the reader's events)."""
        changed = False
        while True:
            try:
                self.sam_reader.events.get_nowait()
            except queue.Empty:
                return changed
            changed = True

    def _ready_sam(self) -> SamInfo:
        """The open PSAM, reopened first if its slot saw it go or come back (an emulator restart,
        a reseated SAM): a stale handle would fail this tap, not the next."""
        if self._sam_reader_changed():
            self.sam_info = None
        if self.sam_info is None:
            return self.open_sam()
        return self.sam_info

    def tap(self, now: dt.datetime | None = None) -> TapResult:
        """One validator tap of the card in the field (``terminals.session.validator_flow``)."""
        return self._run(lambda ctx: validator_flow(ctx), now)

    def sale(self, amount_fen: int, now: dt.datetime | None = None) -> TapResult:
        """One POS sale of ``amount_fen`` to the card in the field."""
        return self._run(lambda ctx: pos_flow(ctx, amount_fen), now)

    def _run(self, make_flow: Callable[[TapContext], Flow], now: dt.datetime | None) -> TapResult:
        """One presentation. A PSAM lost before the point of no return (no debit can be on the
        card yet) is reopened and the tap run once more from the start, with the card still in
        the field: the rider does not pay for the PSAM's slot losing it."""
        started = self.monotonic()
        moment = now or self.clock()
        for attempt in range(2):
            result, io = self._attempt(make_flow, moment)
            if io is None or not io.sam_lost:
                break
            self.sam_info = None  # reopen (and reselect) the PSAM before the next tap
            if io.pending_saved or result.outcome is not Outcome.READER_ERROR or attempt:
                break
        fraud_id = None if io is None else io.fraud_id
        journal_id = None if io is None else io.journal_id
        return replace(result, elapsed_ms=(self.monotonic() - started) * 1000, journal_id=journal_id, fraud_id=fraud_id)

    def _attempt(self, make_flow: Callable[[TapContext], Flow], now: dt.datetime) -> tuple[TapResult, FlowIO | None]:
        try:
            sam = self._ready_sam()
        except (ReaderError, CardRemoved, TerminalError) as exc:
            self.sam_info = None
            return TapResult(Outcome.READER_ERROR, f"PSAM not available: {exc}"), None
        try:
            self.card_reader.connect(self.config.apdu_timeout_ms)
        except CardRemoved as exc:
            return TapResult(Outcome.TAP_AGAIN, f"tap again ({exc.message})"), None
        except ReaderError as exc:
            return TapResult(Outcome.READER_ERROR, f"reader error ({exc.message})"), None
        ctx = TapContext(config=self.config, sam=sam, local=self.local, now=now, pricer=self.pricer)
        io = FlowIO(self.card, self.sam, self.journal, trace=self.trace)
        try:
            result = drive_tap(make_flow(ctx), io)
        finally:
            self.card_reader.disconnect()
        return result, io


class Validator:
    """The terminal loop: card events are taken from the reader's queue at the loop's own pace.

    ``run`` is a bus validator: one tap per presentation. ``run_pos`` is a till: an amount
    is entered first, then the next presentation pays it.
    """

    def __init__(self, terminal: Terminal, on_result: Callable[[TapResult], None], *, poll_s: float = 0.2) -> None:
        self.terminal = terminal
        self.on_result = on_result
        self.poll_s = poll_s
        self.taps = 0

    def _next_insertion(self, stop: threading.Event) -> bool:
        while not stop.is_set():
            try:
                event = self.terminal.card_reader.events.get(timeout=self.poll_s)
            except queue.Empty:
                continue
            if event.kind == "inserted":
                return True
        return False

    def _forget_stale_events(self) -> None:
        """Cards that came and went while the amount was typed do not pay; one still there does."""
        events = self.terminal.card_reader.events
        last = None
        while True:
            try:
                last = events.get_nowait()
            except queue.Empty:
                break
        if last is not None and last.kind == "inserted":
            events.put(last)

    def _done(self, result: TapResult) -> None:
        self.taps += 1
        self.on_result(result)

    def run(self, stop: threading.Event, taps_max: int | None = None) -> None:
        while (taps_max is None or self.taps < taps_max) and self._next_insertion(stop):
            self._done(self.terminal.tap())

    def run_pos(
        self, stop: threading.Event, next_amount: Callable[[], int | None], taps_max: int | None = None
    ) -> None:
        """``next_amount`` returns the amount of the next sale in fen, or None to close the till."""
        while (taps_max is None or self.taps < taps_max) and not stop.is_set():
            amount = next_amount()
            if amount is None:
                return
            self._forget_stale_events()
            if not self._next_insertion(stop):
                return
            self._done(self.terminal.sale(amount))
