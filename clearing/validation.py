"""Validation of uploaded tap records (``ARCHITECTURE.md`` flow 4) as pure functions.

Nothing here touches a database, a socket or a clock: the ingest shell loads a
``Context`` (what the database knows about the batch's cards, terminals and keys), runs
``verify_tacs`` (the only CPU-heavy step, separable so it can run in bulk) and ``judge``,
and writes the ``Judgement`` back in one transaction.

Order of checks for one record; the first failing check decides the verdict:

1. terminal: the record's terminal is the uploading one and is registered — ``E_UNKNOWN_TERMINAL``;
2. issuer known (own or an interop peer) — ``E_UNKNOWN_ISSUER``;
3. own-issuer card registered — ``E_UNKNOWN_CARD``;
4. TAC with the card's DTK (own cards) — ``E_TAC_MISMATCH``; no key for the card's issuer
   and key version here — ``E_KEY_UNAVAILABLE`` (kept for re-judging, never a forgery);
   peer cards cannot be verified here (only their issuer holds the TAC key): they are
   *forwarded* and claim no key at all (``interop_forwards``), so a forged forward cannot
   make the genuine record a duplicate; only an exact replay of the same record from the
   same terminal is one;
5. duplicates on both natural keys, against the database and earlier in the batch —
   ``E_DUPLICATE_TERMINAL_SEQ`` then ``E_DUPLICATE_CARD_COUNTER``. Only records that passed
   1–4 claim a key, so a forged record can never squat the key of a genuine one that
   arrives later. Peer cards stop here: ``forwarded`` / ``I_FORWARDED_INTEROP``;
6. time — ``E_BAD_TIME`` (after now + skew, or a card-local date before the card's start date);
7. amount — ``E_AMOUNT_LIMIT`` (above ``Limits.amount_fen_max``; a ``blocked`` record must be 0;
   a tap-off, or a refund claim, on a tap that debited money);
8. denylist as of the tap time — ``E_DENYLISTED``, except the ``blocked`` record that *is* the
   block (the zero-value purchase a validator makes before APPLICATION BLOCK, section 9);
9. counter and balance continuity, per card in offline-counter order (not upload order) —
   suspect ``S_COUNTER_GAP`` / ``S_BALANCE_DISCONTINUITY``; and for a tap-off, its refund
   (below) — suspect ``S_TAPOFF_NO_ENTRY`` / ``S_REFUND_MISMATCH``.

Tap-off refunds come from verified legs, not from the terminal's word. ``fare.refund_due_fen``
is outside the TAC, so it is only a claim. Clearing finds the entry leg itself: the same
card's posted tap-on at the previous offline counter, on the same route or vehicle, and has
the tariff the terminal priced with compute what the exit owes back (``Context.refund_pricer``,
``clearing.refunds``: within the tariff's time limit, at most the entry charge less the
minimum fare). The refund is stored with the tap and paid by the operator that received the
entry fare. A tap-off whose entry has not cleared moves no money; when the entry arrives (a
late record), the refund is computed then. A counter gap names its missing counters
(``Outcome.gap``); it becomes an exception item only if still open after an age
(``exceptions_queue.sweep_gaps``): nearly all fill within the day.

Decisions (``docs/clearing.md`` explains them at length):

* Suspect records **post**. Their TAC verifies, so the card really was debited; refusing to
  pay the operator would not give the money back to the card. The exception queue gets an
  item so a person looks at the discontinuity (a gap: once it has stayed open long enough).
* The shadow balance follows the record with the highest offline counter: after it,
  ``shadow_balance_fen == balance_before_fen - amount_fen`` of that record. A record whose
  counter is below the card's last cleared counter arrived late (a terminal that was
  offline longer): it posts, fills the gap, is checked against its cleared neighbours only
  (``before >= prev.after`` and ``next.before >= after``: loads can only raise a balance
  between two purchases) and never moves the shadow back.
* An online load sets the shadow to the card's balance after the load and remembers when
  (``CardState.shadow_load_at``); a tap with a higher counter but an earlier time happened
  before that load, so it advances the counter and leaves the shadow alone.
* Rejected records that are authentic (bad time, amount limit, denylisted) still claim
  their natural keys but do not move the card's state: they are not cleared.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Final, NamedTuple

from cardos import crypto
from cardos.records import SHANGHAI_TZ
from clearing.contract import ACCEPTED, FORWARDED, REJECTED, SUSPECT, Code, TapRecord, encode

CardKey = tuple[str, str]  # (issuer_id, card_asn)
TerminalSeqKey = tuple[str, int]  # (terminal_id, terminal_seq)
CardCounterKey = tuple[str, str, int, int]  # (issuer_id, card_asn, offline_counter, tx_type)

# A tap time outside these years is refused as unreadable (E_BAD_TIME) before anything else
# looks at it: the card's BCD date holds any year, but no instant arithmetic may overflow
# (year 1 at +08:00 is before datetime.min in UTC) and no bus ran in either.
TAP_YEAR_MIN: Final = 2000
TAP_YEAR_MAX: Final = 2099
AMOUNT_FEN_MAX_DEFAULT: Final = 20_000  # 200 CNY: far above any fare, well below the purse maximum
FUTURE_SKEW_S_DEFAULT: Final = 600


@dataclass(frozen=True, slots=True)
class Limits:
    amount_fen_max: int = AMOUNT_FEN_MAX_DEFAULT
    future_skew_s: int = FUTURE_SKEW_S_DEFAULT


class CardState(NamedTuple):
    """What clearing knows of one of its own cards before the batch."""

    card_id: int
    account_id: int
    start_date: dt.date
    shadow_balance_fen: int
    last_counter: int | None
    shadow_load_at: dt.datetime | None = None
    # what the card's liability account can still be debited (debits must not exceed credits);
    # None: not limited
    available_fen: int | None = None
    last_tx_at: dt.datetime | None = None
    card_type: str = "ordinary"  # the registry's, not the record's: it decides the rider category


class Neighbour(NamedTuple):
    """An already cleared purchase of the same card, next to a late record's counter."""

    counter: int
    balance_before_fen: int
    amount_fen: int
    # Set when this neighbour is a stored tap-off still waiting for its entry's refund
    # (``refund_fen`` NULL): a late record at the counter below may be that entry.
    waiting: Leg | None = None

    @property
    def balance_after_fen(self) -> int:
        return self.balance_before_fen - self.amount_fen


class Leg(NamedTuple):
    """A tap of one card as the refund rule sees it: where, when, what it debited, and who was paid.

    Built from a record of the batch (``leg_of``) or from a stored tap (the ingest shell).
    ``payer_account_id`` is the operator payable its fare went to: None for a record of the
    batch being judged (the uploading terminal's operator, known to the write plan).
    """

    counter: int
    terminal_id: str
    terminal_seq: int
    route_id: str | None
    vehicle_id: str | None
    stop_id: str | None
    at: dt.datetime
    amount_fen: int
    tap_kind: str | None
    tariff_version: str | None
    rider_category_id: str | None
    refund_claimed_fen: int = 0
    payer_account_id: int | None = None
    tap_id: int | None = None  # a stored tap's row id


class RefundQuote(NamedTuple):
    """What a tap-off owes back, as clearing computed it from the tariff; ``note`` says how."""

    refund_fen: int
    note: str


RefundPricer = Callable[["Leg", "Leg", Sequence["Leg"], str], "RefundQuote | str"]
"""(entry, exit, the card's earlier legs that day, the registry's card type) -> the refund, or why none."""


class RefundDue(NamedTuple):
    """A refund to pay as a pending load ``refund:<terminal_id>:<terminal_seq>`` of the tap-off (none at 0 fen)."""

    issuer_id: str
    card_asn: str
    exit_terminal_id: str
    exit_terminal_seq: int
    amount_fen: int
    payer_account_id: int | None  # None: the uploading terminal's operator (the entry is in this batch)
    exit_tap_id: int | None = None  # a tap-off stored earlier whose ``refund_fen`` is filled in now


class Resolution(NamedTuple):
    """The open S_TAPOFF_NO_ENTRY item of a stored tap-off that clearing closes itself, and why."""

    note: str
    tap_id: int


@dataclass(frozen=True, slots=True)
class DenyInterval:
    effective_at: dt.datetime
    removed_at: dt.datetime | None = None

    def covers(self, moment: dt.datetime) -> bool:
        return self.effective_at <= moment and (self.removed_at is None or moment < self.removed_at)


@dataclass(frozen=True, slots=True)
class Context:
    """Everything ``judge`` may know besides the records; loaded by the ingest shell."""

    uploader: str
    known_terminals: Container[str]
    own_issuers: Container[str]
    peer_issuers: Container[str]
    cards: Mapping[CardKey, CardState]
    seen_terminal_seqs: Container[TerminalSeqKey]
    seen_card_counters: Container[CardCounterKey]
    now: dt.datetime
    limits: Limits = Limits()
    denylist: Mapping[CardKey, Sequence[DenyInterval]] = field(default_factory=dict)
    # (issuer, asn, counter) of a late record -> (cleared purchase at or below, cleared purchase above);
    # "at" means the counter was already used by a purchase of the other type
    neighbours: Mapping[tuple[str, str, int], tuple[Neighbour | None, Neighbour | None]] = field(default_factory=dict)
    # exact forwarded records already received: (terminal_id, terminal_seq, record digest)
    seen_forwards: Container[tuple[str, int, str]] = frozenset()
    # (issuer, asn, counter) of a tap-off -> the card's posted tap at the counter below (its entry?)
    entries: Mapping[tuple[str, str, int], Leg] = field(default_factory=dict)
    # per card with a tap-off to price: its posted legs of the days concerned, in counter order
    day_legs: Mapping[CardKey, Sequence[Leg]] = field(default_factory=dict)
    refund_pricer: RefundPricer | None = None
    # Set (to the acquirer's city) when the records come from a foreign acquirer (interop): their
    # terminals are the acquirer's, registered there and authenticated by its signed batch and by
    # the TAC (which covers the terminal id), so step 1 is skipped (``clearing.foreign``).
    acquirer: str | None = None


class Outcome(NamedTuple):
    """The verdict for one record and what the shell must write for it.

    Never changed once made: the plain accept is one shared instance (``_ACCEPTED``).
    """

    verdict: str
    code: Code
    message: str
    claims_keys: bool = False  # insert its natural keys (first claim wins)
    posts: bool = False  # post card liability -> operator payable
    gap: tuple[int, int] | None = None  # S_COUNTER_GAP: the missing counters, first..last
    forwards: bool = False  # another issuer's card: stored in interop_forwards, claims no key


class CardUpdate(NamedTuple):
    """A card's state after the batch; emitted for every card with a posted record, even if unchanged.

    Writing the row even when nothing changed is deliberate: a concurrent batch of the same
    card then sees a new row version (``ingest_pg`` compares them) and re-judges.
    """

    shadow_balance_fen: int
    last_counter: int | None  # None: no record moved it yet (only an over-balance suspect posted)
    last_tx_at: dt.datetime | None
    shadow_load_at: dt.datetime | None
    blocked: bool = False


class CardResult(NamedTuple):
    """What step 9 decided for one card besides its records' verdicts."""

    update: CardUpdate | None
    refunds: tuple[RefundDue, ...] = ()
    resolutions: tuple[Resolution, ...] = ()
    record_refunds: tuple[tuple[int, int], ...] = ()  # (record index, refund computed for that tap-off)


@dataclass(frozen=True, slots=True)
class Judgement:
    outcomes: list[Outcome]
    per_card: dict[CardKey, CardResult]
    tx_times: list[dt.datetime | None]  # parsed tap times (UTC-aware), None if unparseable
    # per card, the records that reached step 9 (the only verdicts a card's state decides)
    card_records: dict[CardKey, list[int]] = field(default_factory=dict)

    @property
    def card_updates(self) -> dict[CardKey, CardUpdate]:
        return {key: r.update for key, r in self.per_card.items() if r.update is not None}

    @property
    def refunds(self) -> list[RefundDue]:
        return [due for r in self.per_card.values() for due in r.refunds]

    @property
    def resolutions(self) -> list[Resolution]:
        return [res for r in self.per_card.values() for res in r.resolutions]

    @property
    def record_refunds(self) -> dict[int, int]:
        return {index: fen for r in self.per_card.values() for index, fen in r.record_refunds}


# --- time --------------------------------------------------------------------------------


class TapTime(NamedTuple):
    at: dt.datetime  # aware
    date4: bytes  # card-local (Asia/Shanghai) BCD date the TAC covers
    time3: bytes  # card-local BCD time
    local_date: dt.date


def parse_tap_time(tx_time: str) -> TapTime | None:
    """The instant and the card-local BCD date/time that the TAC signs, or None if invalid.

    The terminal sends the local time the card signed with its offset; a record sent with
    another offset is converted to Asia/Shanghai, the only card-local zone.
    """
    try:
        moment = dt.datetime.fromisoformat(tx_time)
    except ValueError:
        return None
    if moment.tzinfo is None or not TAP_YEAR_MIN <= moment.year <= TAP_YEAR_MAX:
        return None
    if len(tx_time) == 25 and tx_time.endswith("+08:00"):  # the usual form: the digits are card-local
        date4 = _bcd_date(tx_time[0:10])
        time3 = bytes.fromhex(tx_time[11:13] + tx_time[14:16] + tx_time[17:19])
        return TapTime(moment, date4, time3, moment.date())
    if not tx_time.endswith("+08:00"):
        moment = moment.astimezone(SHANGHAI_TZ)
        if not TAP_YEAR_MIN <= moment.year <= TAP_YEAR_MAX:
            return None
    try:
        date4 = bytes.fromhex(f"{moment.year:04d}{moment.month:02d}{moment.day:02d}")
        time3 = bytes.fromhex(f"{moment.hour:02d}{moment.minute:02d}{moment.second:02d}")
    except ValueError:
        return None
    return TapTime(moment, date4, time3, moment.date())


@lru_cache(maxsize=1024)
def _bcd_date(yyyy_mm_dd: str) -> bytes:
    """The BCD date of ``YYYY-MM-DD``; cached, as a batch holds only a few dates."""
    return bytes.fromhex(yyyy_mm_dd[0:4] + yyyy_mm_dd[5:7] + yyyy_mm_dd[8:10])


# --- TAC ---------------------------------------------------------------------------------


def tac_data(record: TapRecord, when: TapTime) -> bytes:
    """The purchase TAC input of section 6 for this record."""
    return crypto.purchase_tac_data(
        record.amount_fen,
        record.tx_type,
        bytes.fromhex(record.terminal_id),
        record.terminal_seq,
        when.date4,
        when.time3,
    )


MacKeyLookup = Callable[[TapRecord], "crypto.MacKey | None"]


def verify_tacs(
    records: Sequence[TapRecord], times: Sequence[TapTime | None], mac_key_for: MacKeyLookup
) -> list[bool | None]:
    """For each record: True/False whether its TAC verifies; None when no key applies.

    ``mac_key_for`` returns the card's TAC ``MacKey`` for the record's key version, or
    None (peer issuer, unknown card or key version). Unparseable times verify as False.
    """
    results: list[bool | None] = []
    terminal_bytes: dict[str, bytes] = {}
    for record, when in zip(records, times, strict=True):
        key = mac_key_for(record)
        if key is None:
            results.append(None)
            continue
        if when is None:
            results.append(False)
            continue
        terminal = terminal_bytes.get(record.terminal_id)
        if terminal is None:
            terminal = terminal_bytes[record.terminal_id] = bytes.fromhex(record.terminal_id)
        data = crypto.purchase_tac_data(
            record.amount_fen, record.tx_type, terminal, record.terminal_seq, when.date4, when.time3
        )
        results.append(hmac.compare_digest(key.mac(data), bytes.fromhex(record.tac)))
    return results


# --- the judge ---------------------------------------------------------------------------


def _rejected(code: Code, message: str, *, authentic: bool = False) -> Outcome:
    return Outcome(REJECTED, code, f"{code.value}: {message}", claims_keys=authentic)


def _accepted(message: str = "") -> Outcome:
    return Outcome(ACCEPTED, Code.OK, message, claims_keys=True, posts=True)


_ACCEPTED: Final = _accepted()  # the verdict of most records: made once, shared, never changed


def _suspect(code: Code, message: str) -> Outcome:
    return Outcome(SUSPECT, code, f"{code.value}: {message}", claims_keys=True, posts=True)


def judge(
    records: Sequence[TapRecord],
    ctx: Context,
    tacs: Sequence[bool | None],
    times: Sequence[TapTime | None] | None = None,
) -> Judgement:
    """Verdicts for a batch, one per record in upload order, and the resulting card states.

    ``tacs`` is ``verify_tacs`` of the same records (``times`` their ``parse_tap_time``,
    parsed here when not given). Pure: the same inputs give the same judgement, which is
    what makes the SQLite and PostgreSQL paths agree.
    """
    assert len(tacs) == len(records), "one TAC result per record"
    if times is None:
        times = [parse_tap_time(r.tx_time) for r in records]
    assert len(times) == len(records), "one parsed time per record"
    outcomes: list[Outcome | None] = [None] * len(records)
    claimed_seq: set[TerminalSeqKey] = set()
    claimed_counter: set[CardCounterKey] = set()
    claimed_forwards: set[tuple[str, int, str]] = set()
    latest = ctx.now + dt.timedelta(seconds=ctx.limits.future_skew_s)
    if latest.tzinfo is not None:
        # the same instant at the taps' usual offset: comparing equal offsets is cheaper
        latest = latest.astimezone(SHANGHAI_TZ)
    by_card: dict[CardKey, list[int]] = {}

    for index, (record, when, tac_ok) in enumerate(zip(records, times, tacs, strict=True)):
        outcome = _judge_one(record, when, tac_ok, ctx, latest, claimed_seq, claimed_counter, claimed_forwards)
        if outcome is None:
            by_card.setdefault((record.issuer_id, record.card_asn), []).append(index)
        else:
            outcomes[index] = outcome

    per_card: dict[CardKey, CardResult] = {}
    for key, indices in by_card.items():
        per_card[key] = _judge_card(records, times, indices, ctx.cards[key], ctx, outcomes)

    final = [o for o in outcomes if o is not None]
    assert len(final) == len(records), "every record has a verdict"
    return Judgement(final, per_card, [None if t is None else t.at for t in times], by_card)


def rejudge_cards(
    records: Sequence[TapRecord],
    times: Sequence[TapTime | None],
    judgement: Judgement,
    ctx: Context,
    keys: Iterable[CardKey],
) -> Judgement:
    """``judgement`` with step 9 run again for the cards ``keys`` against a newer ``ctx``.

    For when those cards moved after the batch was judged (another worker cleared them):
    steps 1–8 never read a card's changing state (shadow, counters, available value,
    neighbours, entries, gaps), and step 9 of one card reads only that card's, so re-running
    step 9 for the moved cards gives exactly what ``judge`` would give against ``ctx`` (a
    property test holds it to that).
    """
    outcomes: list[Outcome | None] = list(judgement.outcomes)
    per_card = dict(judgement.per_card)
    moved = set(keys)
    for key in moved:
        indices = judgement.card_records.get(key)
        if not indices:
            continue
        per_card[key] = _judge_card(records, times, list(indices), ctx.cards[key], ctx, outcomes)
    final = [o for o in outcomes if o is not None]
    assert len(final) == len(records), "every record has a verdict"
    return Judgement(final, per_card, judgement.tx_times, judgement.card_records)


def record_digest(record: TapRecord) -> str:
    """sha256 of a record's canonical encoding: what makes two forwards the same record."""
    return hashlib.sha256(encode(record)).hexdigest()


def _judge_one(
    record: TapRecord,
    when: TapTime | None,
    tac_ok: bool | None,
    ctx: Context,
    latest: dt.datetime,
    claimed_seq: set[TerminalSeqKey],
    claimed_counter: set[CardCounterKey],
    claimed_forwards: set[tuple[str, int, str]],
) -> Outcome | None:
    """Steps 1–8 for one record: its outcome, or None when step 9 (per card) decides."""
    asn, counter = record.card_asn, record.offline_counter
    if (record.terminal_id != ctx.uploader or record.terminal_id not in ctx.known_terminals) and ctx.acquirer is None:
        why = "is not registered" if record.terminal_id not in ctx.known_terminals else "is not the uploading terminal"
        return _rejected(Code.E_UNKNOWN_TERMINAL, f"terminal {record.terminal_id} {why} ({ctx.uploader})")
    issuer = record.issuer_id
    own = issuer in ctx.own_issuers
    if not own and issuer not in ctx.peer_issuers:
        return _rejected(Code.E_UNKNOWN_ISSUER, f"issuer {issuer} is not known, card {asn}, counter {counter}")
    if when is None:
        return _rejected(
            Code.E_BAD_TIME,
            f"time {record.tx_time} is not a valid date-time in {TAP_YEAR_MIN}..{TAP_YEAR_MAX}, card {asn}",
        )
    if not own:
        # Only its issuer can verify it, so it claims nothing here; the issuer's verdict decides.
        forward_key = (record.terminal_id, record.terminal_seq, record_digest(record))
        if forward_key in claimed_forwards or forward_key in ctx.seen_forwards:
            return _rejected(
                Code.E_DUPLICATE_TERMINAL_SEQ,
                f"terminal {record.terminal_id} sequence {record.terminal_seq}: this record was already forwarded",
            )
        claimed_forwards.add(forward_key)
        return Outcome(
            FORWARDED,
            Code.I_FORWARDED_INTEROP,
            f"{Code.I_FORWARDED_INTEROP.value}: card {asn} of issuer {issuer} is forwarded to its issuer",
            forwards=True,
        )
    card = (issuer, asn)
    state = ctx.cards.get(card)
    if state is None:
        return _rejected(Code.E_UNKNOWN_CARD, f"card {asn} of issuer {issuer} is not registered")
    if tac_ok is None:
        return _rejected(
            Code.E_KEY_UNAVAILABLE,
            f"no TAC key here for issuer {issuer}, key version {record.key_version}, algorithm {record.alg_id}: "
            f"card {asn}, counter {counter} is kept for re-judging",
        )
    if not tac_ok:
        return _rejected(Code.E_TAC_MISMATCH, f"TAC does not verify for card {asn}, counter {counter}")

    seq_key = (record.terminal_id, record.terminal_seq)
    if seq_key in claimed_seq or seq_key in ctx.seen_terminal_seqs:
        return _rejected(
            Code.E_DUPLICATE_TERMINAL_SEQ,
            f"terminal {record.terminal_id} sequence {record.terminal_seq} was already received",
        )
    counter_key = (issuer, asn, counter, record.tx_type)
    if counter_key in claimed_counter or counter_key in ctx.seen_card_counters:
        return _rejected(
            Code.E_DUPLICATE_CARD_COUNTER,
            f"card {asn}, counter {counter}, type {record.tx_type} was already received",
        )
    claimed_seq.add(seq_key)
    claimed_counter.add(counter_key)

    if when.at > latest:
        return _rejected(
            Code.E_BAD_TIME, f"time {record.tx_time} is in the future, card {asn}, counter {counter}", authentic=True
        )
    if when.local_date < state.start_date:
        return _rejected(
            Code.E_BAD_TIME,
            f"time {record.tx_time} is before the card's start date {state.start_date}, card {asn}, counter {counter}",
            authentic=True,
        )
    blocked = record.status == "blocked"
    if record.amount_fen > ctx.limits.amount_fen_max or (blocked and record.amount_fen != 0):
        limit = 0 if blocked else ctx.limits.amount_fen_max
        return _rejected(
            Code.E_AMOUNT_LIMIT,
            f"amount {record.amount_fen} fen is above the limit {limit} fen, card {asn}, counter {counter}",
            authentic=True,
        )
    # A tap-off debits nothing (docs/fares.md): what it is owed back comes from its entry leg.
    if record.amount_fen > 0 and (is_tap_off(record) or _claimed(record) > 0):
        return _rejected(
            Code.E_AMOUNT_LIMIT,
            f"a tap-off or refund claim ({_claimed(record)} fen) on a tap of {record.amount_fen} fen: tap-offs "
            f"debit nothing, card {asn}, counter {counter}",
            authentic=True,
        )
    denied = ctx.denylist.get(card)
    if denied and not blocked and any(interval.covers(when.at) for interval in denied):
        return _rejected(
            Code.E_DENYLISTED, f"card {asn} was denylisted at {record.tx_time}, counter {counter}", authentic=True
        )
    return None


def _claimed(record: TapRecord) -> int:
    return record.fare.refund_due_fen if record.fare is not None else 0


def is_tap_off(record: TapRecord) -> bool:
    """A tap-off: said so by the terminal, or a zero-amount tap that claims a refund (older terminals)."""
    fare = record.fare
    if fare is None:
        return False
    return fare.tap_kind == "tap_off" or (fare.tap_kind is None and fare.refund_due_fen > 0)


def leg_of(record: TapRecord, at: dt.datetime) -> Leg:
    """A record of the batch being judged as a leg (its payer is the uploading terminal's operator)."""
    fare = record.fare
    return Leg(
        counter=record.offline_counter,
        terminal_id=record.terminal_id,
        terminal_seq=record.terminal_seq,
        route_id=record.route_id,
        vehicle_id=record.vehicle_id,
        stop_id=record.stop_id,
        at=at,
        amount_fen=record.amount_fen,
        tap_kind=fare.tap_kind if fare is not None else None,
        tariff_version=fare.tariff_version if fare is not None else None,
        rider_category_id=fare.rider_category_id if fare is not None else None,
        refund_claimed_fen=fare.refund_due_fen if fare is not None else 0,
    )


class _CardRun:
    """The running state of step 9 for one card (``_judge_card``)."""

    __slots__ = ("cleared", "record_refunds", "refunds", "resolutions")

    def __init__(self) -> None:
        # cleared purchases of this batch by counter, so two late records in one batch see each other
        self.cleared: dict[int, tuple[TapRecord, dt.datetime]] = {}
        self.refunds: list[RefundDue] = []
        self.resolutions: list[Resolution] = []
        self.record_refunds: list[tuple[int, int]] = []


def _judge_card(
    records: Sequence[TapRecord],
    times: Sequence[TapTime | None],
    indices: list[int],
    state: CardState,
    ctx: Context,
    outcomes: list[Outcome | None],
) -> CardResult:
    """Step 9 for one card's surviving records, in (offline counter, type) order."""
    if len(indices) > 1:
        indices.sort(key=lambda i: (records[i].offline_counter, records[i].tx_type))
    shadow = state.shadow_balance_fen
    last = state.last_counter
    load_at = state.shadow_load_at
    last_tx_at = state.last_tx_at
    blocked = False
    posted = False
    run = _CardRun()
    available = state.available_fen
    for index in indices:
        record = records[index]
        when = times[index]
        assert when is not None
        counter = record.offline_counter
        before, amount = record.balance_before_fen, record.amount_fen
        asn = record.card_asn
        after = before - amount
        moves_shadow = before_load = False
        if after < 0:
            outcome = _suspect(
                Code.S_BALANCE_DISCONTINUITY,
                f"card {asn}, counter {counter}: amount {amount} fen exceeds the balance before {before} fen",
            )
        elif last is not None and counter == last:
            outcome = _counter_reused(record)
        elif last is not None and counter < last:
            outcome = _late(record, ctx, run.cleared, last)
        else:
            moves_shadow = True
            before_load = before_the_load(when.at, before, shadow, load_at)
            if last is not None and counter > last + 1:
                outcome = _suspect(
                    Code.S_COUNTER_GAP,
                    f"card {asn}, counter {counter}: counters {last + 1}..{counter - 1} not received yet",
                )._replace(gap=(last + 1, counter - 1))
            elif not before_load and before != shadow:
                outcome = _suspect(
                    Code.S_BALANCE_DISCONTINUITY,
                    f"card {asn}, counter {counter}: balance before {before} fen, "
                    f"shadow balance after the last cleared record {shadow} fen",
                )
            else:
                outcome = _ACCEPTED
        if not outcome.posts:
            outcomes[index] = outcome
            continue
        if available is not None and amount > available:
            # The ledger refuses to take the card's liability below zero: the card spent value
            # we never recorded it receiving. Stored and queued, not posted, not cleared.
            outcomes[index] = Outcome(
                SUSPECT,
                Code.S_BALANCE_DISCONTINUITY,
                f"{Code.S_BALANCE_DISCONTINUITY.value}: card {asn}, counter {counter}: amount {amount} fen "
                f"exceeds the {available} fen its liability account holds; not posted",
                claims_keys=True,
            )
            continue
        if available is not None:
            available -= amount
        if moves_shadow:
            last = counter
            if not before_load:
                shadow = after
                load_at = None
            last_tx_at = when.at
        posted = True
        if is_tap_off(record):
            outcome = _price_tap_off(record, when.at, index, outcome, ctx, run)
        run.cleared[counter] = (record, when.at)
        blocked = blocked or record.status == "blocked"
        outcomes[index] = outcome
        _pay_waiting_tap_off(record, when.at, ctx, run)
    # ``last`` stays None when only an amount-above-balance suspect posted: the balance before
    # is not covered by the TAC, so a genuine TAC can arrive with it understated.
    assert shadow >= 0
    update = CardUpdate(shadow, last, last_tx_at, load_at, blocked) if posted else None
    return CardResult(update, tuple(run.refunds), tuple(run.resolutions), tuple(run.record_refunds))


def _entry_for(record: TapRecord, ctx: Context, run: _CardRun) -> Leg | None:
    """The card's posted tap at the counter below a tap-off: in this batch, or cleared before."""
    here = run.cleared.get(record.offline_counter - 1)
    if here is not None:
        return leg_of(*here)
    return ctx.entries.get((record.issuer_id, record.card_asn, record.offline_counter - 1))


def _refund_for(
    entry: Leg | None, exit_leg: Leg, history: Sequence[Leg], card_type: str, ctx: Context
) -> RefundQuote | str:
    """The refund an exit is owed from its entry leg, or why there is none (pure)."""
    if entry is None:
        return f"no cleared tap at counter {exit_leg.counter - 1} (its entry) yet"
    if entry.tap_kind != "tap_on":
        return f"the tap at counter {entry.counter} is not a tap-on ({entry.tap_kind or 'single'})"
    same_route = entry.route_id is not None and entry.route_id == exit_leg.route_id
    same_vehicle = entry.vehicle_id is not None and entry.vehicle_id == exit_leg.vehicle_id
    if not (same_route or same_vehicle):
        return f"the tap-on at counter {entry.counter} was on route {entry.route_id}, vehicle {entry.vehicle_id}"
    if exit_leg.at < entry.at:
        return f"the tap-off is before its tap-on at counter {entry.counter}"
    if ctx.refund_pricer is None:
        return "no tariff is configured to price it"
    return ctx.refund_pricer(entry, exit_leg, history, card_type)


def _history(record_counter: int, key: CardKey, ctx: Context, run: _CardRun) -> list[Leg]:
    """The card's posted legs below ``record_counter`` (stored ones and this batch's), in counter order."""
    legs = {leg.counter: leg for leg in ctx.day_legs.get(key, ()) if leg.counter < record_counter}
    for counter, (record, at) in run.cleared.items():
        if counter < record_counter:
            legs[counter] = leg_of(record, at)
    return [legs[c] for c in sorted(legs)]


def _price_tap_off(
    record: TapRecord, at: dt.datetime, index: int, outcome: Outcome, ctx: Context, run: _CardRun
) -> Outcome:
    """A posted tap-off of this batch: compute its refund from the entry, or hold it (no money moves)."""
    exit_leg = leg_of(record, at)
    key = (record.issuer_id, record.card_asn)
    entry = _entry_for(record, ctx, run)
    history = _history(entry.counter if entry is not None else record.offline_counter, key, ctx, run)
    quote = _refund_for(entry, exit_leg, history, ctx.cards[key].card_type, ctx)
    asn, counter, claimed = record.card_asn, record.offline_counter, exit_leg.refund_claimed_fen
    if isinstance(quote, str):
        if outcome.code is not Code.OK:
            return outcome  # already a suspect (a gap: the entry is missing); the refund waits for it
        return _suspect(
            Code.S_TAPOFF_NO_ENTRY, f"card {asn}, counter {counter}: tap-off without a matching entry: {quote}"
        )
    assert entry is not None
    run.record_refunds.append((index, quote.refund_fen))
    if quote.refund_fen > 0:
        run.refunds.append(
            RefundDue(
                record.issuer_id, asn, record.terminal_id, record.terminal_seq, quote.refund_fen,
                entry.payer_account_id,
            )
        )  # fmt: skip
    if claimed != quote.refund_fen and outcome.code is Code.OK:
        return _suspect(
            Code.S_REFUND_MISMATCH,
            f"card {asn}, counter {counter}: the terminal claims {claimed} fen back, clearing computed "
            f"{quote.refund_fen} fen ({quote.note}); {quote.refund_fen} fen is paid",
        )
    return outcome


def _pay_waiting_tap_off(record: TapRecord, at: dt.datetime, ctx: Context, run: _CardRun) -> None:
    """A posted record whose next counter is a stored tap-off still waiting for its entry: price it now."""
    below_above = ctx.neighbours.get((record.issuer_id, record.card_asn, record.offline_counter))
    if below_above is None:
        return
    above = below_above[1]
    if above is None or above.waiting is None or above.counter != record.offline_counter + 1:
        return
    exit_leg = above.waiting
    key = (record.issuer_id, record.card_asn)
    history = _history(record.offline_counter, key, ctx, run)
    quote = _refund_for(leg_of(record, at), exit_leg, history, ctx.cards[key].card_type, ctx)
    if isinstance(quote, str):
        return  # still no matching entry: the tap-off's item stays open for a person
    assert exit_leg.tap_id is not None
    # Also at 0 fen: the stored tap-off gets its computed refund filled in.
    run.refunds.append(
        RefundDue(
            record.issuer_id, record.card_asn, exit_leg.terminal_id, exit_leg.terminal_seq, quote.refund_fen,
            None, exit_tap_id=exit_leg.tap_id,
        )
    )  # fmt: skip
    run.resolutions.append(
        Resolution(
            f"entry at counter {record.offline_counter} (terminal {record.terminal_id} sequence "
            f"{record.terminal_seq}) arrived: refund {quote.refund_fen} fen ({quote.note})",
            tap_id=exit_leg.tap_id,
        )
    )


def before_the_load(at: dt.datetime, balance_before_fen: int, shadow_fen: int, load_at: dt.datetime | None) -> bool:
    """Whether a tap newer by counter happened before the online load that set the shadow.

    Timed before that load, it did (its balance is the pre-load one) and must not overwrite
    the loaded shadow — unless its balance before *is* the loaded shadow: then the terminal's
    clock is only behind the host's, and the tap followed the load. The judge and the
    exception queue decide with this one rule.
    """
    return load_at is not None and at < load_at and balance_before_fen != shadow_fen


def _late(
    record: TapRecord, ctx: Context, cleared_here: Mapping[int, tuple[TapRecord, dt.datetime]], last: int
) -> Outcome:
    """A record below the last cleared counter: fills a gap, checked against its neighbours."""
    counter, asn = record.offline_counter, record.card_asn
    before, after = record.balance_before_fen, record.balance_before_fen - record.amount_fen
    below, above = ctx.neighbours.get((record.issuer_id, asn, counter), (None, None))
    if counter in cleared_here or (below is not None and below.counter == counter):
        return _counter_reused(record)
    here_below = cleared_here.get(counter - 1)
    if here_below is not None:
        below = _neighbour(here_below[0])
    here_above = cleared_here.get(counter + 1)
    if here_above is not None:
        above = _neighbour(here_above[0])
    if below is not None and below.counter == counter - 1 and before < below.balance_after_fen:
        return _suspect(
            Code.S_BALANCE_DISCONTINUITY,
            f"card {asn}, counter {counter} (late): balance before {before} fen is below "
            f"{below.balance_after_fen} fen after counter {below.counter}",
        )
    if above is not None and above.counter == counter + 1 and above.balance_before_fen < after:
        return _suspect(
            Code.S_BALANCE_DISCONTINUITY,
            f"card {asn}, counter {counter} (late): balance after {after} fen is above "
            f"{above.balance_before_fen} fen before counter {above.counter}",
        )
    return _accepted(f"late record: card {asn}, counter {counter} is below the last cleared counter {last}")


def _neighbour(cleared: TapRecord) -> Neighbour:
    return Neighbour(cleared.offline_counter, cleared.balance_before_fen, cleared.amount_fen)


def _counter_reused(record: TapRecord) -> Outcome:
    """The card's offline counter (CTC) counts purchases of both types: one value, one purchase."""
    return _rejected(
        Code.E_DUPLICATE_CARD_COUNTER,
        f"card {record.card_asn}, counter {record.offline_counter} was already used by a purchase of another type",
        authentic=True,
    )


def late_record_keys(records: Sequence[TapRecord], cards: Mapping[CardKey, CardState]) -> list[tuple[str, str, int]]:
    """The (issuer, asn, counter) of records that arrive below their card's last counter.

    The shell loads their cleared neighbours (``Context.neighbours``) only for these.
    """
    keys = []
    for record in records:
        state = cards.get((record.issuer_id, record.card_asn))
        if state is not None and state.last_counter is not None and record.offline_counter <= state.last_counter:
            keys.append((record.issuer_id, record.card_asn, record.offline_counter))
    return keys


__all__ = [
    "AMOUNT_FEN_MAX_DEFAULT",
    "FUTURE_SKEW_S_DEFAULT",
    "CardCounterKey",
    "CardKey",
    "CardResult",
    "CardState",
    "CardUpdate",
    "Context",
    "DenyInterval",
    "Judgement",
    "Leg",
    "Limits",
    "Neighbour",
    "Outcome",
    "RefundDue",
    "RefundPricer",
    "RefundQuote",
    "Resolution",
    "TapTime",
    "TerminalSeqKey",
    "before_the_load",
    "is_tap_off",
    "judge",
    "late_record_keys",
    "leg_of",
    "parse_tap_time",
    "record_digest",
    "rejudge_cards",
    "tac_data",
    "verify_tacs",
]
