"""Validation of uploaded tap records (``ARCHITECTURE.md`` flow 4) as pure functions.

Nothing here touches a database, a socket or a clock: the ingest shell loads a
``Context`` (what the database knows about the batch's cards, terminals and keys), runs
``verify_tacs`` (the only CPU-heavy step, separable so it can run in bulk) and ``judge``,
and writes the ``Judgement`` back in one transaction.

Order of checks for one record; the first failing check decides the verdict:

1. terminal: the record's terminal is the uploading one and is registered — ``E_UNKNOWN_TERMINAL``;
2. issuer known (own or an interop peer) — ``E_UNKNOWN_ISSUER``;
3. own-issuer card registered — ``E_UNKNOWN_CARD``;
4. TAC with the card's DTK (own cards) — ``E_TAC_MISMATCH``; peer cards cannot be verified
   here (only their issuer holds the TAC key) and are *forwarded*, after step 5;
5. duplicates on both natural keys, against the database and earlier in the batch —
   ``E_DUPLICATE_TERMINAL_SEQ`` then ``E_DUPLICATE_CARD_COUNTER``. Only records that passed
   1–4 claim a key, so a forged record can never squat the key of a genuine one that
   arrives later. Peer cards stop here: ``forwarded`` / ``I_FORWARDED_INTEROP``;
6. time — ``E_BAD_TIME`` (after now + skew, or a card-local date before the card's start date);
7. amount — ``E_AMOUNT_LIMIT`` (above ``Limits.amount_fen_max``; a ``blocked`` record must be 0;
   a tap-off's ``fare.refund_due_fen``, which the TAC does not cover, above the same limit or
   on a tap that debited money);
8. denylist as of the tap time — ``E_DENYLISTED``, except the ``blocked`` record that *is* the
   block (the zero-value purchase a validator makes before APPLICATION BLOCK, section 9);
9. counter and balance continuity, per card in offline-counter order (not upload order) —
   suspect ``S_COUNTER_GAP`` / ``S_BALANCE_DISCONTINUITY``.

Decisions (``docs/clearing.md`` explains them at length):

* Suspect records **post**. Their TAC verifies, so the card really was debited; refusing to
  pay the operator would not give the money back to the card. The exception queue gets an
  item so a person looks at the gap or the discontinuity.
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
import hmac
from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Final, NamedTuple

from cardos import crypto
from cardos.records import SHANGHAI_TZ
from clearing.contract import ACCEPTED, FORWARDED, REJECTED, SUSPECT, Code, TapRecord

CardKey = tuple[str, str]  # (issuer_id, card_asn)
TerminalSeqKey = tuple[str, int]  # (terminal_id, terminal_seq)
CardCounterKey = tuple[str, str, int, int]  # (issuer_id, card_asn, offline_counter, tx_type)

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


class Neighbour(NamedTuple):
    """An already cleared purchase of the same card, next to a late record's counter."""

    counter: int
    balance_before_fen: int
    amount_fen: int

    @property
    def balance_after_fen(self) -> int:
        return self.balance_before_fen - self.amount_fen


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


class Outcome(NamedTuple):
    """The verdict for one record and what the shell must write for it.

    Never changed once made: the plain accept is one shared instance (``_ACCEPTED``).
    """

    verdict: str
    code: Code
    message: str
    claims_keys: bool = False  # insert its natural keys (first claim wins)
    posts: bool = False  # post card liability -> operator payable


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


@dataclass(frozen=True, slots=True)
class Judgement:
    outcomes: list[Outcome]
    card_updates: dict[CardKey, CardUpdate]
    tx_times: list[dt.datetime | None]  # parsed tap times (UTC-aware), None if unparseable
    # per card, the records that reached step 9 (the only verdicts a card's state decides)
    card_records: dict[CardKey, list[int]] = field(default_factory=dict)


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
    if moment.tzinfo is None:
        return None
    if len(tx_time) == 25 and tx_time.endswith("+08:00"):  # the usual form: the digits are card-local
        date4 = _bcd_date(tx_time[0:10])
        time3 = bytes.fromhex(tx_time[11:13] + tx_time[14:16] + tx_time[17:19])
        return TapTime(moment, date4, time3, moment.date())
    if not tx_time.endswith("+08:00"):
        moment = moment.astimezone(SHANGHAI_TZ)
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
    latest = ctx.now + dt.timedelta(seconds=ctx.limits.future_skew_s)
    if latest.tzinfo is not None:
        # the same instant at the taps' usual offset: comparing equal offsets is cheaper
        latest = latest.astimezone(SHANGHAI_TZ)
    by_card: dict[CardKey, list[int]] = {}

    for index, (record, when, tac_ok) in enumerate(zip(records, times, tacs, strict=True)):
        outcome = _judge_one(record, when, tac_ok, ctx, latest, claimed_seq, claimed_counter)
        if outcome is None:
            by_card.setdefault((record.issuer_id, record.card_asn), []).append(index)
        else:
            outcomes[index] = outcome

    card_updates: dict[CardKey, CardUpdate] = {}
    for key, indices in by_card.items():
        update = _judge_card(records, times, indices, ctx.cards[key], ctx, outcomes)
        if update is not None:
            card_updates[key] = update

    final = [o for o in outcomes if o is not None]
    assert len(final) == len(records), "every record has a verdict"
    return Judgement(final, card_updates, [None if t is None else t.at for t in times], by_card)


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
    neighbours), and step 9 of one card reads only that card's, so re-running step 9 for the
    moved cards gives exactly what ``judge`` would give against ``ctx`` (a property test
    holds it to that).
    """
    outcomes: list[Outcome | None] = list(judgement.outcomes)
    updates = dict(judgement.card_updates)
    for key in keys:
        indices = judgement.card_records.get(key)
        if not indices:
            continue
        updates.pop(key, None)
        update = _judge_card(records, times, list(indices), ctx.cards[key], ctx, outcomes)
        if update is not None:
            updates[key] = update
    final = [o for o in outcomes if o is not None]
    assert len(final) == len(records), "every record has a verdict"
    return Judgement(final, updates, judgement.tx_times, judgement.card_records)


def _judge_one(
    record: TapRecord,
    when: TapTime | None,
    tac_ok: bool | None,
    ctx: Context,
    latest: dt.datetime,
    claimed_seq: set[TerminalSeqKey],
    claimed_counter: set[CardCounterKey],
) -> Outcome | None:
    """Steps 1–8 for one record: its outcome, or None when step 9 (per card) decides."""
    asn, counter = record.card_asn, record.offline_counter
    if record.terminal_id != ctx.uploader or record.terminal_id not in ctx.known_terminals:
        why = "is not registered" if record.terminal_id not in ctx.known_terminals else "is not the uploading terminal"
        return _rejected(Code.E_UNKNOWN_TERMINAL, f"terminal {record.terminal_id} {why} ({ctx.uploader})")
    issuer = record.issuer_id
    own = issuer in ctx.own_issuers
    if not own and issuer not in ctx.peer_issuers:
        return _rejected(Code.E_UNKNOWN_ISSUER, f"issuer {issuer} is not known, card {asn}, counter {counter}")
    if when is None:
        return _rejected(Code.E_BAD_TIME, f"time {record.tx_time} is not a valid date-time, card {asn}")
    card = (issuer, asn)
    state = ctx.cards.get(card) if own else None
    if own:
        if state is None:
            return _rejected(Code.E_UNKNOWN_CARD, f"card {asn} of issuer {issuer} is not registered")
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

    if not own:
        return Outcome(
            FORWARDED,
            Code.I_FORWARDED_INTEROP,
            f"{Code.I_FORWARDED_INTEROP.value}: card {asn} of issuer {issuer} is forwarded to its issuer",
            claims_keys=True,
        )
    assert state is not None
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
    # The tap-off refund is not covered by the TAC (only amount, type, terminal, sequence and
    # time are): bound it like an amount, or one record could credit the card any sum.
    # A refund belongs only to a tap-off, which debits nothing (docs/fares.md).
    refund = record.fare.refund_due_fen if record.fare is not None else 0
    if refund > ctx.limits.amount_fen_max or (refund > 0 and record.amount_fen > 0):
        return _rejected(
            Code.E_AMOUNT_LIMIT,
            f"refund {refund} fen on a tap of {record.amount_fen} fen (refunds are only for zero-amount tap-offs, "
            f"at most {ctx.limits.amount_fen_max} fen), card {asn}, counter {counter}",
            authentic=True,
        )
    denied = ctx.denylist.get(card)
    if denied and not blocked and any(interval.covers(when.at) for interval in denied):
        return _rejected(
            Code.E_DENYLISTED, f"card {asn} was denylisted at {record.tx_time}, counter {counter}", authentic=True
        )
    return None


def _judge_card(
    records: Sequence[TapRecord],
    times: Sequence[TapTime | None],
    indices: list[int],
    state: CardState,
    ctx: Context,
    outcomes: list[Outcome | None],
) -> CardUpdate | None:
    """Step 9 for one card's surviving records, in (offline counter, type) order."""
    if len(indices) > 1:
        indices.sort(key=lambda i: (records[i].offline_counter, records[i].tx_type))
    shadow = state.shadow_balance_fen
    last = state.last_counter
    load_at = state.shadow_load_at
    last_tx_at = state.last_tx_at
    blocked = False
    posted = False
    # cleared purchases of this batch by counter, so two late records in one batch see each other
    cleared_here: dict[int, TapRecord] = {}
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
            outcome = _late(record, ctx, cleared_here, last)
        else:
            moves_shadow = True
            before_load = load_at is not None and when.at < load_at
            if last is not None and counter > last + 1:
                outcome = _suspect(
                    Code.S_COUNTER_GAP,
                    f"card {asn}, counter {counter}: counters {last + 1}..{counter - 1} not received yet",
                )
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
        cleared_here[counter] = record
        blocked = blocked or record.status == "blocked"
        outcomes[index] = outcome
    if not posted:
        return None
    # ``last`` stays None when only an amount-above-balance suspect posted: the balance before
    # is not covered by the TAC, so a genuine TAC can arrive with it understated.
    assert shadow >= 0
    return CardUpdate(shadow, last, last_tx_at, load_at, blocked)


def _late(record: TapRecord, ctx: Context, cleared_here: Mapping[int, TapRecord], last: int) -> Outcome:
    """A record below the last cleared counter: fills a gap, checked against its neighbours."""
    counter, asn = record.offline_counter, record.card_asn
    before, after = record.balance_before_fen, record.balance_before_fen - record.amount_fen
    below, above = ctx.neighbours.get((record.issuer_id, asn, counter), (None, None))
    if counter in cleared_here or (below is not None and below.counter == counter):
        return _counter_reused(record)
    here_below = cleared_here.get(counter - 1)
    if here_below is not None:
        below = _neighbour(here_below)
    here_above = cleared_here.get(counter + 1)
    if here_above is not None:
        above = _neighbour(here_above)
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
    "CardState",
    "CardUpdate",
    "Context",
    "DenyInterval",
    "Judgement",
    "Limits",
    "Neighbour",
    "Outcome",
    "TapTime",
    "TerminalSeqKey",
    "judge",
    "late_record_keys",
    "parse_tap_time",
    "rejudge_cards",
    "tac_data",
    "verify_tacs",
]
