"""The issuer's judge: a peer's forwarded records of our cards, validated as our own clearing would.

``IssuerJudgeDb`` implements ``interop_xian.items.IssuerJudge``. The batch channel
(``interop_xian.api``) calls it once per new, verified, in-sequence batch; it answers one
``ItemVerdict`` per item, in item order, and commits the verdicts with their money in one
transaction:

1. **the same item again** (its ``(peer, item_id)`` already judged, in an earlier batch or
   earlier in this one) gets the stored verdict and moves nothing. ``E_KEY_UNAVAILABLE`` is the
   one verdict not kept: a key imported later lets the resent item be judged again;
2. **an item that is not its record** (the record does not decode, or its terminal, sequence
   or digest differ from the item's, or the item id does not end in them) is rejected
   ``E_INTEROP_ITEM_MISMATCH`` and *not* kept, so a forged item under a genuine item's id
   cannot decide the genuine one's verdict;
3. **the rest is judged by clearing** (``clearing.foreign``): TAC with our keys, both
   duplicate keys (the terminal key scoped to the peer, the card key global), time, amount,
   denylist as of the tap time, counters and the shadow balance, per card in counter order.
   Only authentic, non-duplicate records claim the keys, so a forged record arriving first
   cannot make the genuine one a duplicate;
4. **the net debit cap** (``netting``): the items clearing would post are taken in item order
   while the net debit stays within the cap; one that would pass it is rejected
   ``E_NET_DEBIT_CAP`` and the batch is judged again without it (a card's later records then
   see the counter it left), until nothing more is refused;
5. **posting**: an accepted item of *n* fen posts card liability → DUE_TO the peer
   (``iss:<peer>:<item id>``, code INTEROP), books ``due_to`` in its window and moves the
   card's shadow balance and counter. A *suspect* record (a counter gap, a balance
   discontinuity) is accepted — its TAC verified, the card was debited — with ``code`` OK and
   the suspect's message; a debit the card's liability cannot cover is rejected
   ``S_BALANCE_DISCONTINUITY`` and posts nothing.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, cast

import msgspec
from sqlalchemy import Engine, Table, insert, select, text, tuple_
from sqlalchemy.orm import Session

from clearing import accounts, foreign
from clearing.business_day import DEFAULT_CLOCK, BusinessDayClock
from clearing.contract import TapRecord
from clearing.contract.codes import Code
from clearing.db import on_postgres
from clearing.ingest import TacKeys
from clearing.ingest_pg import copy_text
from clearing.ledger import TransferSpec, pg_int_array, pg_text_array, post_transfers, post_transfers_bulk
from clearing.models import Issuer, TransferCode
from clearing.validation import (
    CardCounterKey,
    Limits,
    Outcome,
    TapTime,
    TerminalSeqKey,
    parse_tap_time,
    record_digest,
)
from interop_xian import netting
from interop_xian.errors import InteropCode, InteropError
from interop_xian.items import ITEM_ID_LEN_MAX, InteropItem, ItemOutcome, ItemVerdict
from interop_xian.models import IssuerItem

log = logging.getLogger(__name__)
MESSAGE_LEN_MAX: Final = 500  # the acknowledgement's (``interop_xian.batch``); msgspec quotes the peer's field names

_CHUNK: Final = 400
_ITEMS: Final = cast(Table, IssuerItem.__table__)
NOT_KEPT: Final = frozenset({Code.E_KEY_UNAVAILABLE.value})  # judged again when the item comes back
OK: Final = "OK"


@dataclass(frozen=True, slots=True)
class _Fresh:
    """An item to judge now: its position in the batch and its decoded record."""

    position: int
    item: InteropItem
    record: TapRecord


def check_item(item: InteropItem, peer_city: str) -> TapRecord | str:
    """The item's record, or why the item is not its record (pure).

    The id must be exactly ``<peer>:<terminal>:<seq>:<digest16>`` of its record: one record, one
    id. An id that only *ends* in them (``xian:zz:<terminal>:…``) would be a second id for the
    same record, judged afresh whenever the first verdict claimed no keys (a cap refusal).
    """
    if not 0 < len(item.item_id) <= ITEM_ID_LEN_MAX:
        return f"item id of {len(item.item_id)} characters (1..{ITEM_ID_LEN_MAX})"
    try:
        record = foreign.decode_record(item.record)
        # a lone surrogate (JSON's "\ud800" is ASCII, canonical) decodes but encodes to no UTF-8:
        # UnicodeEncodeError, a ValueError; raised here it would fail the whole batch, resent for ever
        digest = record_digest(record)
    except (msgspec.ValidationError, TypeError, ValueError) as exc:
        return f"item {item.item_id}: the record is not a terminal-contract record ({exc})"[:MESSAGE_LEN_MAX]
    if record.terminal_id != item.terminal_id or record.terminal_seq != item.terminal_seq:
        return f"item {item.item_id}: the record is of terminal {record.terminal_id} sequence {record.terminal_seq}"
    if digest != item.record_digest:
        return f"item {item.item_id}: the record's digest is {digest[:16]}…, not the item's"
    if item.item_id != f"{peer_city}:{record.terminal_id}:{record.terminal_seq}:{digest[:16]}":
        return f"item {item.item_id}: the id is not {peer_city}:<the record's terminal>:<sequence>:<digest16>"
    return record


def verdict_of(item_id: str, outcome: Outcome, amount_fen: int) -> ItemVerdict:
    """Clearing's outcome as the peer's verdict: what posts is accepted (suspects too), the rest rejected."""
    if outcome.posts:
        return ItemVerdict(item_id, ItemOutcome.ACCEPTED, OK, amount_fen, outcome.message)
    return ItemVerdict(item_id, ItemOutcome.REJECTED, outcome.code.value, 0, outcome.message)


def _rejected(item_id: str, code: str, message: str) -> ItemVerdict:
    return ItemVerdict(item_id, ItemOutcome.REJECTED, code, 0, f"{code}: {message}")


class IssuerJudgeDb:
    """Our ``IssuerJudge`` over a database and our TAC keys (module docstring)."""

    def __init__(
        self,
        engine: Engine,
        keys: TacKeys,
        *,
        limits: Limits | None = None,
        days: BusinessDayClock = DEFAULT_CLOCK,
        before_commit: Callable[[Session], None] | None = None,
    ) -> None:
        self.engine = engine
        self.keys = keys
        self.limits = limits or Limits()
        self.days = days
        self.before_commit = before_commit  # test hook: a crash here must leave nothing
        self._keys_lock = threading.Lock()  # TacKeys' MAC contexts are not thread-safe; the API may call from threads

    def judge(
        self, *, peer_city: str, batch_id: str, items: Sequence[InteropItem], received_at: dt.datetime
    ) -> list[ItemVerdict]:
        verdicts: list[ItemVerdict | None] = [None] * len(items)
        checked: dict[int, TapRecord] = {}
        for position, item in enumerate(items):
            result = check_item(item, peer_city)
            if isinstance(result, str):
                verdicts[position] = _rejected(item.item_id, InteropCode.E_INTEROP_ITEM_MISMATCH.value, result)
            else:
                checked[position] = result
        with self._keys_lock:  # CPU, before any database lock
            verified = foreign.verify([checked[p] for p in sorted(checked)], self.keys)
        tacs = dict(zip(sorted(checked), zip(verified.times, verified.tacs, strict=True), strict=True))
        with Session(self.engine) as session, session.begin():
            netting.lock_peer(session, peer_city)
            stored = _stored_verdicts(session, peer_city, [items[p].item_id for p in checked])
            fresh: list[_Fresh] = []
            first_of: dict[str, int] = {}
            for position in sorted(checked):
                item = items[position]
                if item.item_id in stored:
                    verdicts[position] = stored[item.item_id]
                elif item.item_id in first_of:  # the same item twice in one batch: one verdict
                    continue
                else:
                    first_of[item.item_id] = position
                    fresh.append(_Fresh(position, item, checked[position]))
            if fresh:
                new = self._judge_fresh(session, peer_city, batch_id, fresh, tacs, received_at)
                for f, verdict in zip(fresh, new, strict=True):
                    verdicts[f.position] = verdict
            for position in sorted(checked):
                if verdicts[position] is None:
                    verdicts[position] = verdicts[first_of[items[position].item_id]]
            if self.before_commit is not None:
                self.before_commit(session)
        out = [v for v in verdicts if v is not None]
        assert len(out) == len(items), "one verdict per item"
        return out

    def _judge_fresh(
        self,
        session: Session,
        peer_city: str,
        batch_id: str,
        fresh: list[_Fresh],
        tacs: Mapping[int, tuple[TapTime | None, bool | None]],
        received_at: dt.datetime,
    ) -> list[ItemVerdict]:
        records = [f.record for f in fresh]
        foreign.lock_cards(session, {(r.issuer_id, r.card_asn) for r in records})
        seen_seqs, seen_counters = _claimed_keys(session, peer_city, records)
        ctx = foreign.foreign_context(
            session, records, acquirer=peer_city, seen_terminal_seqs=seen_seqs, seen_card_counters=seen_counters,
            now=received_at, limits=self.limits,
        )  # fmt: skip
        cap = netting.read_cap(session, peer_city)
        netting.sync_acquired(session, peer_city, now=received_at)  # what the peer owes us counts too
        net_before = netting.open_net_debit(session, peer_city)
        capped: set[int] = set()  # indexes into ``fresh`` refused for the cap
        while True:
            keep = [i for i in range(len(fresh)) if i not in capped]
            verified = foreign.Verified(
                [records[i] for i in keep],
                [tacs[fresh[i].position][0] for i in keep],
                [tacs[fresh[i].position][1] for i in keep],
            )
            judgement = foreign.judge_foreign(verified, ctx)
            posting = [(i, o) for i, o in zip(keep, judgement.outcomes, strict=True) if o.posts]
            fits = netting.fits_under_cap(net_before, [records[i].amount_fen for i, _ in posting], cap.cap_fen)
            refused = {i for (i, _), ok in zip(posting, fits, strict=True) if not ok}
            if not refused:
                break
            capped |= refused
        outcomes = dict(zip(keep, judgement.outcomes, strict=True))
        times = dict(zip(keep, judgement.tx_times, strict=True))
        latest_closed = netting.latest_closed(session, peer_city)  # proposed windows take no more
        verdicts: list[ItemVerdict] = []
        rows: list[dict[str, object]] = []
        transfers: list[TransferSpec] = []
        bookings: list[tuple[str, int, dt.date, str]] = []
        accepted_fen = 0
        due_to = _due_to_account(session, peer_city)
        source = f"interop:{peer_city}:{batch_id}"[:120]
        for i, f in enumerate(fresh):
            record = f.record
            tx_at = times[i] if i in times else ctx_time(record)
            window = None
            transfer_id = None
            if i in capped:
                net_now = net_before + accepted_fen
                verdict = _rejected(
                    f.item.item_id,
                    InteropCode.E_NET_DEBIT_CAP.value,
                    f"accepting {record.amount_fen} fen would take the net debit towards {peer_city} from "
                    f"{net_now} fen past its cap of {cap.cap_fen} fen (card {record.card_asn}, counter "
                    f"{record.offline_counter})",
                )
                claims = False
            else:
                outcome = outcomes[i]
                verdict = verdict_of(f.item.item_id, outcome, record.amount_fen)
                claims = outcome.claims_keys
                if outcome.posts:
                    assert tx_at is not None
                    window = netting.window_for(self.days.day_of(tx_at), latest_closed)
                    verdict = _with_window(verdict, window)
                    if record.amount_fen > 0:
                        transfer_id = netting.issuer_item_transfer_id(peer_city, f.item.item_id)
                        card_account = ctx.cards[(record.issuer_id, record.card_asn)].account_id
                        transfers.append(
                            TransferSpec.single(
                                transfer_id, card_account, due_to, record.amount_fen, int(TransferCode.INTEROP),
                                source_ref=source,
                            )
                        )  # fmt: skip
                        accepted_fen += record.amount_fen
                        bookings.append((f.item.item_id, record.amount_fen, window, transfer_id))
            verdicts.append(verdict)
            if verdict.code in NOT_KEPT:
                continue
            rows.append(
                {
                    "peer_city": peer_city, "item_id": f.item.item_id, "batch_id": batch_id[:128],
                    "terminal_id": record.terminal_id, "terminal_seq": record.terminal_seq,
                    "record_digest": f.item.record_digest, "issuer_id": record.issuer_id, "card_asn": record.card_asn,
                    "offline_counter": record.offline_counter, "tx_type": record.tx_type,
                    "amount_fen": verdict.amount_fen if verdict.outcome is ItemOutcome.ACCEPTED else record.amount_fen,
                    "tx_time": tx_at, "outcome": verdict.outcome.value, "code": verdict.code,
                    "message": verdict.message, "claims_keys": claims, "window_day": window,
                    "transfer_id": transfer_id, "record": dict(f.item.record), "received_at": received_at,
                }
            )  # fmt: skip
        write = _write_verdicts_pg if on_postgres(session) else _write_verdicts
        write(session, peer_city, transfers, bookings, rows, received_at)
        foreign.write_card_updates(session, ctx, judgement)
        _alarms(session, peer_city, cap, net_before, accepted_fen, len(capped), received_at)
        return verdicts


def _write_verdicts(
    session: Session, peer_city: str, transfers: Sequence[TransferSpec],
    bookings: Sequence[tuple[str, int, dt.date, str]], rows: Sequence[Mapping[str, object]], now: dt.datetime,
) -> None:  # fmt: skip
    """The money, the bookings and the verdict rows through the generic paths (SQLite)."""
    if transfers:
        post_transfers(session, transfers)
    netting.book_many(session, peer_city=peer_city, direction=netting.DUE_TO, rows=bookings, now=now)
    if rows:
        session.execute(insert(_ITEMS), rows)  # Core executemany: no ORM bulk bookkeeping


def _write_verdicts_pg(
    session: Session, peer_city: str, transfers: Sequence[TransferSpec],
    bookings: Sequence[tuple[str, int, dt.date, str]], rows: Sequence[Mapping[str, object]], now: dt.datetime,
) -> None:  # fmt: skip
    """``_write_verdicts`` as clearing's PostgreSQL ingest writes (COPY, one statement over arrays each).

    The same rows and rules: the ledger's decisions, locks and flags (``post_transfers_bulk``),
    ``netting.book_many``'s conflict rule, and a duplicate verdict row fails the batch.
    """
    if transfers:
        post_transfers_bulk(session, transfers)
    netting.book_many(session, peer_city=peer_city, direction=netting.DUE_TO, rows=bookings, now=now)
    _copy_items(session, rows)


_ITEM_COLUMNS: Final = (
    "peer_city", "item_id", "batch_id", "terminal_id", "terminal_seq", "record_digest", "issuer_id", "card_asn",
    "offline_counter", "tx_type", "amount_fen", "tx_time", "outcome", "code", "message", "claims_keys", "window_day",
    "transfer_id", "record", "received_at",
)  # fmt: skip


def _opt_time(value: dt.date | None) -> str:
    return "\\N" if value is None else value.isoformat()


def _item_line(r: Mapping[str, Any]) -> str:
    """One verdict row as a COPY text line, in ``_ITEM_COLUMNS`` order (the types of ``IssuerItem``).

    Free text through ``copy_text``; the record as the text SQLAlchemy's JSON type binds
    (``json.dumps``), so the stored JSON is the generic path's to the byte.
    """
    t = copy_text
    return (
        f"{t(r['peer_city'])}\t{t(r['item_id'])}\t{t(r['batch_id'])}\t{t(r['terminal_id'])}\t{int(r['terminal_seq'])}"
        f"\t{t(r['record_digest'])}\t{t(r['issuer_id'])}\t{t(r['card_asn'])}\t{int(r['offline_counter'])}"
        f"\t{int(r['tx_type'])}\t{int(r['amount_fen'])}\t{_opt_time(r['tx_time'])}\t{t(r['outcome'])}\t{t(r['code'])}"
        f"\t{t(r['message'])}\t{'t' if r['claims_keys'] else 'f'}\t{_opt_time(r['window_day'])}\t{t(r['transfer_id'])}"
        f"\t{t(json.dumps(r['record']))}\t{_opt_time(r['received_at'])}\n"
    )


def _copy_items(session: Session, rows: Sequence[Mapping[str, Any]]) -> None:
    """The verdict rows by COPY (the Core insert's rows; a duplicate item fails the batch as it would)."""
    if not rows:
        return
    driver = session.connection().connection.driver_connection
    assert driver is not None
    data = "".join(map(_item_line, rows))
    with driver.cursor() as cur, cur.copy(f"COPY interop_issuer_items ({', '.join(_ITEM_COLUMNS)}) FROM STDIN") as copy:
        copy.write(data)


def ctx_time(record: TapRecord) -> dt.datetime | None:
    when = parse_tap_time(record.tx_time)
    return None if when is None else when.at


def _with_window(verdict: ItemVerdict, window: dt.date) -> ItemVerdict:
    """The verdict naming the window the item is booked in (``ItemVerdict.window_day``)."""
    return ItemVerdict(verdict.item_id, verdict.outcome, verdict.code, verdict.amount_fen, verdict.message, window)


def _alarms(
    session: Session, peer_city: str, cap: netting.Cap, net_before: int, accepted_fen: int, refused: int,
    now: dt.datetime,
) -> None:  # fmt: skip
    net_after = net_before + accepted_fen
    details = {"net_before_fen": net_before, "net_after_fen": net_after, "cap_fen": cap.cap_fen,
               "alarm_pct": cap.alarm_pct, "refused": refused}  # fmt: skip
    if refused:
        netting.raise_alarm(
            session, peer_city=peer_city, kind="net_debit_cap", details=details, now=now,
            message=f"{refused} item(s) of {peer_city} refused: the net debit {net_after} fen is at its cap of "
            f"{cap.cap_fen} fen",
        )  # fmt: skip
    elif netting.crossed_alarm(net_before, net_after, cap):
        netting.raise_alarm(
            session, peer_city=peer_city, kind="net_debit_cap", details=details, now=now,
            message=f"the net debit towards {peer_city} reached {net_after} fen, {cap.alarm_pct} % or more of its "
            f"cap of {cap.cap_fen} fen",
        )  # fmt: skip


def _due_to_account(session: Session, peer_city: str) -> int:
    return accounts.due_to_peer(session, peer_issuer_id(session, peer_city))


def peer_issuer_id(session: Session, peer_city: str) -> str:
    """The peer city's issuer: issuers are data (``clearing.registry``; ``yikatong init`` registers both)."""
    found = session.execute(
        select(Issuer.issuer_id).where(Issuer.city == peer_city, Issuer.own.is_(False)).order_by(Issuer.issuer_id)
    ).first()
    if found is None:
        raise InteropError(
            InteropCode.E_INTEROP_NOT_CONFIGURED, f"no peer issuer of city {peer_city} is registered (yikatong init)"
        )
    return str(found[0])


_STORED_PG: Final = text("""
SELECT i.item_id, i.outcome, i.code, i.amount_fen, i.message, i.window_day
FROM unnest(CAST(:ids AS text[])) AS k(id) JOIN interop_issuer_items i ON i.peer_city = :peer AND i.item_id = k.id
""")  # ``unnest``, not ``= ANY``: probed through the (peer, item) index, never a scan of every verdict


def _stored_verdicts(session: Session, peer_city: str, item_ids: Sequence[str]) -> dict[str, ItemVerdict]:
    wanted = sorted(set(item_ids))
    rows: list[Any] = []
    if on_postgres(session):  # one array, not chunked IN lists
        rows.extend(session.execute(_STORED_PG, {"peer": peer_city, "ids": pg_text_array(wanted)}))
    else:
        for start in range(0, len(wanted), _CHUNK):
            rows.extend(
                session.execute(
                    select(
                        IssuerItem.item_id, IssuerItem.outcome, IssuerItem.code, IssuerItem.amount_fen,
                        IssuerItem.message, IssuerItem.window_day,
                    ).where(IssuerItem.peer_city == peer_city, IssuerItem.item_id.in_(wanted[start : start + _CHUNK]))
                )
            )  # fmt: skip
    out: dict[str, ItemVerdict] = {}
    for item_id, outcome, code, amount, message, window in rows:
        accepted = outcome == ItemOutcome.ACCEPTED.value
        out[item_id] = ItemVerdict(item_id, ItemOutcome(outcome), code, int(amount) if accepted else 0, message, window)
    return out


_CLAIMED_SEQS_PG: Final = """
SELECT i.terminal_id, i.terminal_seq FROM unnest(CAST(:t AS text[]), CAST(:s AS bigint[])) AS k(t, s)
JOIN interop_issuer_items i ON i.peer_city = :peer AND i.terminal_id = k.t AND i.terminal_seq = k.s AND i.claims_keys
"""
_CLAIMED_COUNTERS_PG: Final = """
SELECT i.issuer_id, i.card_asn, i.offline_counter, i.tx_type
FROM unnest(CAST(:i AS text[]), CAST(:a AS text[]), CAST(:c AS int[]), CAST(:x AS smallint[])) AS k(i, a, c, x)
JOIN interop_issuer_items i ON i.issuer_id = k.i AND i.card_asn = k.a AND i.offline_counter = k.c
     AND i.tx_type = k.x AND i.claims_keys
"""


def _claimed_keys(
    session: Session, peer_city: str, records: Sequence[TapRecord]
) -> tuple[set[TerminalSeqKey], set[CardCounterKey]]:
    """The keys foreign records already claimed: terminal keys from this peer, card keys from any."""
    seqs = sorted({(r.terminal_id, r.terminal_seq) for r in records})
    counters = sorted({(r.issuer_id, r.card_asn, r.offline_counter, r.tx_type) for r in records})
    seen_seqs: set[TerminalSeqKey] = set()
    seen_counters: set[CardCounterKey] = set()
    if on_postgres(session):  # two statements over arrays, not chunked IN lists
        rows_pg = session.execute(
            text(_CLAIMED_SEQS_PG),
            {"peer": peer_city, "t": pg_text_array(t for t, _ in seqs), "s": pg_int_array(s for _, s in seqs)},
        )
        seen_seqs.update((str(t), int(s)) for t, s in rows_pg)
        rows_pg = session.execute(
            text(_CLAIMED_COUNTERS_PG),
            {"i": pg_text_array(c[0] for c in counters), "a": pg_text_array(c[1] for c in counters),
             "c": pg_int_array(c[2] for c in counters), "x": pg_int_array(c[3] for c in counters)},
        )  # fmt: skip
        seen_counters.update((str(i), str(a), int(c), int(t)) for i, a, c, t in rows_pg)
        return seen_seqs, seen_counters
    for start in range(0, len(seqs), _CHUNK):
        rows = session.execute(
            select(IssuerItem.terminal_id, IssuerItem.terminal_seq).where(
                IssuerItem.peer_city == peer_city,
                IssuerItem.claims_keys.is_(True),
                tuple_(IssuerItem.terminal_id, IssuerItem.terminal_seq).in_(seqs[start : start + _CHUNK]),
            )
        )
        seen_seqs.update((str(t), int(s)) for t, s in rows)
    columns = (IssuerItem.issuer_id, IssuerItem.card_asn, IssuerItem.offline_counter, IssuerItem.tx_type)
    for start in range(0, len(counters), _CHUNK):
        rows2 = session.execute(
            select(*columns).where(
                IssuerItem.claims_keys.is_(True), tuple_(*columns).in_(counters[start : start + _CHUNK])
            )
        )
        seen_counters.update((str(i), str(a), int(c), int(t)) for i, a, c, t in rows2)
    return seen_seqs, seen_counters


def judged(session: Session, peer_city: str, item_id: str) -> IssuerItem | None:
    """The stored judgement of one item (disputes and reports read it)."""
    return session.execute(
        select(IssuerItem).where(IssuerItem.peer_city == peer_city, IssuerItem.item_id == item_id)
    ).scalar_one_or_none()


__all__ = ["NOT_KEPT", "IssuerJudgeDb", "check_item", "judged", "peer_issuer_id", "verdict_of"]
