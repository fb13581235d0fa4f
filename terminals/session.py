"""The tap: a state machine that prepares every APDU without I/O (STYLE.md, the Keyple row).

A flow (``validator_flow``, ``pos_flow``, ``open_sam_flow``) is a generator. It yields
*steps* and receives their results:

* ``Exchange(target, apdu)``: send a prepared ``Apdu`` to the card or the PSAM; the answer
  comes back as a ``Reply``, or the typed error (``CardRemoved``, ``ReaderError``,
  ``CardRefused``) is thrown into the flow at that point, so a step can handle it locally
  (a lost DEBIT answer is a pending torn tap, a lost MAC2 check is a suspect record).
* ``SavePending(record)``, ``Commit(record, ...)``, ``ResolvePending(record, outcome)``: the
  durable journal writes, in the order the money needs them.

``run_flow`` is the one place that does I/O: it feeds the steps to the readers and the
journal. Reading local state (the pending torn tap of a card, when it last paid here, the
denylist) goes through the ``LocalState`` protocol passed in the ``TapContext``.

The validator flow (``epurse-public-sources.md`` section 10 with the Yikatong profile):

1. SELECT the purse AID (6283/6284/9303: the card is already blocked); file 0x15 from the
   FCI's tag 9F0C, else READ BINARY 0x15; READ BINARY 0x17.
2. A pending torn tap of this card (section 8): GET TRANSACTION PROVE with its offline
   counter + 1. Proved: check MAC2 with the PSAM (80 72), journal the record with the
   card's TAC as ``recovered`` and stop: the rider is not charged again. 6A83: the debit
   did not happen; the pending is closed when INITIALIZE shows the counter unchanged.
   This runs before the validity and denylist checks (section 10 puts it after the
   denylist) so that a debit the card already made is journaled even if the card is now
   expired or about to be blocked.
3. Application version (FF invalid), start and expiry dates, issuer accepted here and, for
   another issuer's card, the interop flag of 0x17.
4. Denylist hit: a zero-amount composite purchase writing a 0x12 transit record (as SH
   does), journaled as ``blocked``, then APPLICATION BLOCK (section 9: PSAM 80 1A 45, card
   GET CHALLENGE, PSAM 80 FA 05, card 84 1E).
5. The same card paid here less than ``repeat_window_s`` ago: "already paid", no charge.
6. READ RECORD 0x1E from the newest until a slot is empty, 6A83, older than the look-back,
   or ``history_records_max``; price the tap with the fare engine.
7. Composite purchase (section 4): INITIALIZE FOR CAPP PURCHASE, PSAM INIT SAM FOR
   PURCHASE, UPDATE CAPP DATA CACHE with this tap's 48-byte transit record, the pending
   record written durably, DEBIT FOR CAPP PURCHASE, PSAM CREDIT SAM FOR PURCHASE (MAC2),
   the record appended durably: only then is the tap reported as paid. A MAC2 that does
   not verify is still journaled (the card has debited) and reported as suspect.
   An offline counter at or below one journaled here for the card (a copied or rolled-back
   card image, ``Journal.counter_clash``) refuses the card: the purchase is redone for 0 fen,
   its record (the card's own TAC, a fresh terminal sequence) is kept as a fraud event with
   the record it clashes with, and uploaded for clearing to refuse as a duplicate.

``pos_flow`` is the same up to the denylist, then a plain purchase (section 3) of the
amount entered.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from enum import Enum, StrEnum
from functools import cache
from typing import Final, Protocol

import msgspec

from cardos import crypto
from cardos.profile import (
    AID_PURSE,
    LOG_RECORDS,
    PSAM_DF_TUNION,
    SFI_LOG,
    SFI_MANAGEMENT,
    SFI_PUBLIC,
    SFI_TRANSIT,
    CardType,
)
from cardos.records import (
    TRANSIT_BLOCK,
    LogRecord,
    ManagementInfo,
    PublicInfo,
    RecordFormatError,
    TransitRecord,
    date4,
    is_empty_record,
    local,
    time3,
)
from clearing.contract import DenylistEntry, FareInfo, TapRecord
from terminals.config import TerminalConfig
from terminals.display import shanghai_clock, yuan
from terminals.errors import CardRefused, CardRemoved, DuplicateCardRecord, ReaderError, TerminalError
from terminals.journal import PendingTap
from terminals.readers import SW_OK, Apdu, Channel, Reply

# --- status words the flows decide on (epurse-public-sources.md section 11) ----------------
SW_BLOCKED: Final = frozenset({0x6283, 0x6284, 0x9303})
SW_NOT_FOUND: Final = frozenset({0x6A81, 0x6A82})
SW_RECORD_NOT_FOUND: Final = 0x6A83
SW_INSUFFICIENT: Final = 0x9401
SW_MAC_ERROR: Final = 0x9302
OK: Final = frozenset({SW_OK})
PURCHASE_TYPES: Final = frozenset({0x05, crypto.TX_EP_PURCHASE, crypto.TX_CAPP_PURCHASE})

KEY_USAGE_MAINTENANCE: Final = 0x45
BLOCK_HEADER: Final = bytes.fromhex("841E000004")
NO_TAC: Final = "00000000"  # a pending record's TAC, until the card gives it


# --- prepared commands: bytes only, no I/O ---------------------------------------------------


def _apdu(head: str, data: bytes = b"", le: int | None = None) -> bytes:
    body = bytes([len(data)]) + data if data else b""
    return bytes.fromhex(head) + body + (bytes([le & 0xFF]) if le is not None else b"")


class Cmd:
    """Builders of every command a terminal sends, named as the spec names them."""

    @staticmethod
    @cache  # the same bytes every tap; Apdu is frozen
    def select_purse() -> Apdu:
        return Apdu(_apdu("00A40400", AID_PURSE, 0x00), "SELECT purse", OK | SW_BLOCKED | SW_NOT_FOUND)

    @staticmethod
    @cache  # the same bytes every tap; Apdu is frozen
    def read_binary(sfi: int, length: int) -> Apdu:
        return Apdu(_apdu(f"00B0{0x80 | sfi:02X}00", le=length), f"READ BINARY {sfi:02X}")

    @staticmethod
    @cache  # the same bytes every tap; Apdu is frozen
    def read_record(sfi: int, number: int, length: int) -> Apdu:
        return Apdu(
            _apdu(f"00B2{number:02X}{(sfi << 3) | 4:02X}", le=length),
            f"READ RECORD {sfi:02X}/{number}",
            OK | {SW_RECORD_NOT_FOUND},
        )

    @staticmethod
    @cache  # the same bytes every tap; Apdu is frozen
    def get_balance() -> Apdu:
        return Apdu(_apdu("805C0002", le=4), "GET BALANCE")

    @staticmethod
    def initialize_purchase(capp: bool, key_index: int, amount_fen: int, terminal_id: bytes) -> Apdu:
        data = bytes([key_index]) + amount_fen.to_bytes(4, "big") + terminal_id
        what = "INITIALIZE FOR CAPP PURCHASE" if capp else "INITIALIZE FOR PURCHASE"
        return Apdu(_apdu("80500302" if capp else "80500102", data, 0x0F), what, OK | {SW_INSUFFICIENT})

    @staticmethod
    def update_capp_data_cache(record: bytes) -> Apdu:
        return Apdu(_apdu(f"80DC00{SFI_TRANSIT << 3:02X}", record), "UPDATE CAPP DATA CACHE")

    @staticmethod
    def debit(capp: bool, terminal_seq: int, day: bytes, clock: bytes, mac1: bytes) -> Apdu:
        data = terminal_seq.to_bytes(4, "big") + day + clock + mac1
        return Apdu(_apdu("80540100", data, 0x08), "DEBIT FOR CAPP PURCHASE" if capp else "DEBIT FOR PURCHASE")

    @staticmethod
    def get_transaction_prove(tx_type: int, counter: int) -> Apdu:
        return Apdu(
            _apdu(f"805A00{tx_type:02X}", counter.to_bytes(2, "big"), 0x08),
            "GET TRANSACTION PROVE",
            OK | {SW_RECORD_NOT_FOUND},
        )

    @staticmethod
    def get_challenge() -> Apdu:
        return Apdu(_apdu("00840000", le=4), "GET CHALLENGE")

    @staticmethod
    def application_block(mac: bytes) -> Apdu:
        return Apdu(_apdu("841E0000", mac), "APPLICATION BLOCK")

    # PSAM (section 7)
    @staticmethod
    @cache  # the same bytes every tap; Apdu is frozen
    def sam_select() -> Apdu:
        return Apdu(_apdu("00A40000", PSAM_DF_TUNION), "PSAM SELECT 8011")

    @staticmethod
    @cache  # the same bytes every tap; Apdu is frozen
    def sam_read(sfi: int, length: int) -> Apdu:
        return Apdu(_apdu(f"00B0{0x80 | sfi:02X}00", le=length), f"PSAM READ BINARY {sfi:02X}")

    @staticmethod
    def init_sam_for_purchase(data: bytes) -> Apdu:
        return Apdu(_apdu("80700000", data, 0x08), "PSAM INIT SAM FOR PURCHASE")

    @staticmethod
    def credit_sam_for_purchase(mac2: bytes) -> Apdu:
        return Apdu(_apdu("80720000", mac2), "PSAM CREDIT SAM FOR PURCHASE")

    @staticmethod
    def delivery_key(usage: int, key_version: int, factor: bytes) -> Apdu:
        return Apdu(_apdu(f"801A{usage:02X}{key_version:02X}", factor), "PSAM DELIVERY KEY")

    @staticmethod
    def cipher_data_mac(iv: bytes, data: bytes) -> Apdu:
        return Apdu(_apdu("80FA0500", iv + crypto.pad_iso9797_m2(data, 8)), "PSAM CIPHER DATA")


# --- parsing -----------------------------------------------------------------------------------


def find_tlv(data: bytes, wanted: int) -> bytes | None:
    """The value of BER-TLV tag ``wanted`` anywhere in ``data`` (descending into constructed tags)."""
    i = 0
    while i < len(data):
        tag = data[i]
        i += 1
        if tag & 0x1F == 0x1F:
            if i >= len(data):
                return None
            tag = (tag << 8) | data[i]
            i += 1
        if i >= len(data):
            return None
        length = data[i]
        i += 1
        if length & 0x80:
            n = length & 0x7F
            if n == 0 or n > 2 or i + n > len(data):
                return None
            length = int.from_bytes(data[i : i + n], "big")
            i += n
        if i + length > len(data):
            return None
        value = data[i : i + length]
        if tag == wanted:
            return value
        first = tag >> 8 if tag > 0xFF else tag
        if first & 0x20:
            inner = find_tlv(value, wanted)
            if inner is not None:
                return inner
        i += length
    return None


@dataclass(frozen=True, slots=True)
class InitAnswer:
    """INITIALIZE FOR (CAPP) PURCHASE, 15 bytes (section 3)."""

    balance_fen: int
    offline_counter: int
    key_version: int
    alg_id: int
    card_random: bytes

    @classmethod
    def parse(cls, data: bytes) -> InitAnswer:
        if len(data) != 15:
            raise ReaderError(f"INITIALIZE answered {len(data)} bytes, not 15")
        return cls(
            balance_fen=int.from_bytes(data[0:4], "big"),
            offline_counter=int.from_bytes(data[4:6], "big"),
            key_version=data[9],
            alg_id=data[10],
            card_random=data[11:15],
        )


@dataclass(frozen=True, slots=True)
class SamInfo:
    """What the terminal reads once from its PSAM (section 7)."""

    terminal_id: bytes  # 6
    serial: bytes  # 10
    key_index: int

    @property
    def terminal_hex(self) -> str:
        return self.terminal_id.hex()


@dataclass(frozen=True, slots=True)
class CardInfo:
    public: PublicInfo
    management: ManagementInfo

    @property
    def issuer_hex(self) -> str:
        return self.public.issuer_id.hex()

    @property
    def asn_hex(self) -> str:
        return self.public.asn.hex()


# --- steps, results and the context -----------------------------------------------------------------


class Target(Enum):
    CARD = "card"
    SAM = "sam"


@dataclass(frozen=True, slots=True)
class Exchange:
    target: Target
    apdu: Apdu


@dataclass(frozen=True, slots=True)
class SavePending:
    record: TapRecord


@dataclass(frozen=True, slots=True)
class Suspicion:
    """Why a record cannot be genuine: ``kind`` (``Journal.counter_clash``) and the record it clashes with."""

    kind: str
    earlier_tap_id: int
    earlier: TapRecord


@dataclass(frozen=True, slots=True)
class Commit:
    record: TapRecord
    mac2_ok: bool
    interop: bool
    suspicion: Suspicion | None = None  # set: kept as a fraud event, not a tap


@dataclass(frozen=True, slots=True)
class ResolvePending:
    record: TapRecord
    outcome: str


Step = Exchange | SavePending | Commit | ResolvePending
Flow = Generator[Step, Reply, "TapResult"]
_DONE: Final = Reply(b"", SW_OK)  # what a journal step sends back


class Outcome(StrEnum):
    """What the validator shows; stable codes (STYLE.md)."""

    PAID = "T_PAID"
    RECOVERED = "T_RECOVERED"  # an earlier torn tap completed: not charged again
    ALREADY_PAID = "T_ALREADY_PAID"
    BLOCKED = "T_CARD_BLOCKED"
    SUSPECT = "T_MAC2_FAILED"  # debited and journaled, but the card's MAC2 did not verify
    INSUFFICIENT = "T_INSUFFICIENT_BALANCE"
    EXPIRED = "T_CARD_EXPIRED"
    NOT_YET_VALID = "T_CARD_NOT_YET_VALID"
    INVALID = "T_CARD_INVALID"
    NOT_ACCEPTED = "T_CARD_NOT_ACCEPTED"
    NO_FARE = "T_NO_FARE"
    TAP_AGAIN = "T_TAP_AGAIN"  # the card left mid-tap
    CARD_ERROR = "T_CARD_ERROR"
    READER_ERROR = "T_READER_ERROR"
    SUSPECTED_CLONE = "T_SUSPECTED_CLONE"  # an offline counter already journaled here: refused, reported

    @property
    def charged(self) -> bool:
        return self in (Outcome.PAID, Outcome.SUSPECT)

    @property
    def tally(self) -> str:
        """The count a run's summary puts this in: ``paid``, ``recovered``, ``repeated``,
        ``refused`` (the card was turned away) or ``failed`` (tap again: reader or card I/O)."""
        return _TALLY.get(self, "refused")


_TALLY: Final = {
    Outcome.PAID: "paid",
    Outcome.SUSPECT: "paid",  # the card was debited; clearing judges the record by its TAC
    Outcome.RECOVERED: "recovered",  # an earlier torn tap completed: no new charge
    Outcome.ALREADY_PAID: "repeated",
    Outcome.TAP_AGAIN: "failed",
    Outcome.READER_ERROR: "failed",
    Outcome.CARD_ERROR: "failed",
}


@dataclass(frozen=True, slots=True)
class TapResult:
    outcome: Outcome
    message: str
    record: TapRecord | None = None
    card_asn: str | None = None
    issuer_id: str | None = None
    interop: bool = False
    amount_fen: int = 0
    balance_after_fen: int | None = None
    elapsed_ms: float = 0.0
    journal_id: int | None = None
    fare_reason: str | None = None  # why the fare is below the full fare (transfer, concession, cap)
    fraud_id: int | None = None  # the fraud event this tap's record was kept as


@dataclass(frozen=True, slots=True)
class Price:
    """The fare engine's answer for one tap, and the card codes of where it happened.

    ``line_code``/``station_code`` (the tariff's 2-byte codes for the route and stop) go
    into the transit record; None keeps the terminal's configured codes. ``reason`` says
    why the amount is below the full fare (``transfer``, ``concession (senior)``, ``daily
    cap``), for the rider and the console; None when it is the full fare.
    """

    amount_fen: int
    fare: FareInfo | None
    line_code: int | None = None
    station_code: int | None = None
    reason: str | None = None


class Pricer(Protocol):
    def __call__(
        self, *, card_type: CardType, history: Sequence[TransitRecord], moment: dt.datetime, config: TerminalConfig
    ) -> Price: ...


class PricingRefused(TerminalError):
    """The fare engine cannot price this tap (unknown route, no rule, ...)."""

    code = "E_FARE"


class LocalState(Protocol):
    """The terminal's local knowledge the flow reads (journal and denylist)."""

    def pending_for(self, issuer_id: str, card_asn: str) -> PendingTap | None: ...

    def last_paid_epoch_s(self, issuer_id: str, card_asn: str, tx_type: int, since_epoch_s: int) -> int | None: ...

    def denylisted(self, issuer_id: str, card_asn: str, at: dt.datetime) -> DenylistEntry | None: ...

    def counter_clash(self, issuer_id: str, card_asn: str, offline_counter: int) -> tuple[str, int, TapRecord] | None:
        """``(kind, tap id, record)`` when this counter cannot be genuine here (``Journal.counter_clash``)."""
        ...


@dataclass(frozen=True, slots=True)
class TapContext:
    config: TerminalConfig
    sam: SamInfo
    local: LocalState
    now: dt.datetime  # aware; the card signs it as Asia/Shanghai local time
    pricer: Pricer | None = None

    def __post_init__(self) -> None:
        if self.now.tzinfo is None:
            raise ValueError("the tap time must be timezone-aware")


def _card(apdu: Apdu) -> Exchange:
    return Exchange(Target.CARD, apdu)


def _sam(apdu: Apdu) -> Exchange:
    return Exchange(Target.SAM, apdu)


def _result(
    outcome: Outcome,
    message: str,
    info: CardInfo | None = None,
    *,
    record: TapRecord | None = None,
    amount_fen: int = 0,
    balance_after_fen: int | None = None,
    interop: bool = False,
) -> TapResult:
    return TapResult(
        outcome,
        message,
        record=record,
        card_asn=None if info is None else info.asn_hex,
        issuer_id=None if info is None else info.issuer_hex,
        interop=interop,
        amount_fen=amount_fen,
        balance_after_fen=balance_after_fen,
    )


# --- the flows ------------------------------------------------------------------------------


def open_sam_flow() -> Generator[Step, Reply, SamInfo]:
    """Select the PSAM's T-Union DF and read its terminal number, serial and key index."""
    yield _sam(Cmd.sam_select())
    terminal = (yield _sam(Cmd.sam_read(0x16, 6))).data
    serial = (yield _sam(Cmd.sam_read(0x15, 14))).data[:10]
    key_index = (yield _sam(Cmd.sam_read(0x17, 1))).data
    if len(terminal) != 6 or len(serial) != 10 or len(key_index) != 1:
        raise ReaderError("PSAM files 0x15/0x16/0x17 have unexpected lengths")
    return SamInfo(terminal, serial, key_index[0])


def _read_card(ctx: TapContext) -> Generator[Step, Reply, CardInfo | TapResult]:
    selected = yield _card(Cmd.select_purse())
    if selected.sw in SW_BLOCKED:
        return _result(Outcome.BLOCKED, "card blocked")
    if selected.sw != SW_OK:
        return _result(Outcome.INVALID, "not a transit card")
    public_raw = find_tlv(selected.data, 0x9F0C)
    if public_raw is None or len(public_raw) != 30:
        public_raw = (yield _card(Cmd.read_binary(SFI_PUBLIC, 30))).data
    management_raw = (yield _card(Cmd.read_binary(SFI_MANAGEMENT, 60))).data
    try:
        return CardInfo(PublicInfo.decode(public_raw), ManagementInfo.decode(management_raw))
    except RecordFormatError as exc:
        return _result(Outcome.INVALID, f"card files unreadable: {exc}")


def _check_validity(ctx: TapContext, info: CardInfo) -> TapResult | None:
    public, config = info.public, ctx.config
    today = local(ctx.now).date()
    if public.app_version == 0xFF:
        return _result(Outcome.INVALID, "card application invalid", info)
    if today < public.start_date:
        return _result(Outcome.NOT_YET_VALID, f"card valid from {public.start_date}", info)
    if today > public.expiry_date:
        return _result(Outcome.EXPIRED, f"card expired on {public.expiry_date}", info)
    if public.issuer_id not in config.accepted_issuers:
        return _result(Outcome.NOT_ACCEPTED, "card not accepted here", info)
    if public.issuer_id != config.home_issuer_id and not info.management.interoperable:
        return _result(Outcome.NOT_ACCEPTED, "card not interoperable", info)
    return None


def _interop(ctx: TapContext, info: CardInfo) -> bool:
    return info.public.issuer_id != ctx.config.home_issuer_id


def _recover(ctx: TapContext, info: CardInfo, pending: PendingTap) -> Generator[Step, Reply, TapResult | None]:
    """Section 8: did the torn debit happen? If so, journal it with the card's TAC and charge nothing.

    GET TRANSACTION PROVE names a transaction only by type and counter, and another
    terminal may have used the same counter after our debit failed to commit. The card's
    log (0x18) settles it: the entry with our offline counter carries the terminal number,
    amount, date and time of the purchase that used it. When that entry has rotated out
    of the log, MAC2 verified by our PSAM (still holding that purchase's session) also
    proves it is ours; failing both, the proof is taken as ours, so that the rider is never
    charged twice (the clearing centre's TAC check catches the rare wrong guess).
    Returns None when the debit did not happen: the caller charges normally.
    """
    rec = pending.record
    proved = yield _card(Cmd.get_transaction_prove(rec.tx_type, rec.offline_counter + 1))
    if proved.sw == SW_RECORD_NOT_FOUND:
        return None  # not debited (confirmed by the counter at INITIALIZE)
    if len(proved.data) != 8:
        raise ReaderError(f"GET TRANSACTION PROVE answered {len(proved.data)} bytes, not 8")
    owner = yield from _log_owner(rec)
    if owner == "other":
        yield ResolvePending(rec, "not_debited")
        return None
    mac2, tac = proved.data[:4], proved.data[4:8]
    mac2_ok = yield from _verify_mac2(mac2)
    status = "blocked" if rec.status == "blocked" else "recovered"
    record = msgspec.structs.replace(rec, tac=tac.hex(), status=status)
    yield Commit(record, mac2_ok, _interop(ctx, info))
    note = "" if mac2_ok else " (MAC2 not verified)"
    return _result(
        Outcome.RECOVERED,
        f"previous tap completed, not charged again{note}",
        info,
        record=record,
        amount_fen=rec.amount_fen,
        balance_after_fen=rec.balance_before_fen - rec.amount_fen,
        interop=_interop(ctx, info),
    )


def _log_owner(rec: TapRecord) -> Generator[Step, Reply, str]:
    """Whose purchase used offline counter ``rec.offline_counter``: ``ours``, ``other`` or ``unknown``."""
    moment = dt.datetime.fromisoformat(rec.tx_time)
    for number in range(1, LOG_RECORDS + 1):
        reply = yield _card(Cmd.read_record(SFI_LOG, number, 23))
        if reply.sw == SW_RECORD_NOT_FOUND or is_empty_record(reply.data):
            break
        try:
            entry = LogRecord.decode(reply.data)
        except RecordFormatError:
            break
        if entry.tx_type not in PURCHASE_TYPES or entry.counter != rec.offline_counter:
            continue
        ours = (
            entry.tx_type == rec.tx_type
            and entry.terminal_id.hex() == rec.terminal_id
            and entry.amount_fen == rec.amount_fen
            and entry.date == date4(moment)
            and entry.time == time3(moment)
        )
        return "ours" if ours else "other"
    return "unknown"


def _verify_mac2(mac2: bytes) -> Generator[Step, Reply, bool]:
    """PSAM CREDIT SAM FOR PURCHASE; any failure means "not verified", never "not debited"."""
    try:
        yield _sam(Cmd.credit_sam_for_purchase(mac2))
    except (CardRefused, ReaderError, CardRemoved):
        return False
    return True


def _balance(ctx: TapContext) -> Generator[Step, Reply, int | None]:
    try:
        reply = yield _card(Cmd.get_balance())
    except CardRefused:
        return None
    return int.from_bytes(reply.data, "big") if len(reply.data) == 4 else None


def _history(ctx: TapContext) -> Generator[Step, Reply, list[TransitRecord]]:
    """The card's recent transit records, newest first, stopping at the first one not needed.

    The fare engine needs today's legs (the daily cap) and the legs of the look-back (open
    tap-ons, transfers across midnight); a record older than both ends the read, so a rider
    who last travelled yesterday costs one READ RECORD, not thirty.
    """
    out: list[TransitRecord] = []
    now = local(ctx.now)
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    oldest = min(midnight, now - dt.timedelta(seconds=ctx.config.history_lookback_s))
    for number in range(1, ctx.config.history_records_max + 1):
        reply = yield _card(Cmd.read_record(SFI_TRANSIT, number, 48))
        if reply.sw == SW_RECORD_NOT_FOUND or is_empty_record(reply.data):
            break
        try:
            record = TransitRecord.decode(reply.data)
        except RecordFormatError:
            break  # a slot we cannot read ends the history; the fare engine sees what came before
        if record.moment < oldest:
            break
        out.append(record)
    return out


def _purchase(
    ctx: TapContext,
    info: CardInfo,
    pending: PendingTap | None,
    *,
    capp: bool,
    amount_fen: int,
    fare: FareInfo | None,
    transit_type: int,
    status: str,
    codes: tuple[int, int] | None = None,
) -> Generator[Step, Reply, TapResult]:
    """Sections 3-4: INITIALIZE, PSAM MAC1, (cache,) pending, DEBIT, PSAM MAC2, journal.

    A counter that cannot be genuine (``LocalState.counter_clash``) turns the purchase into a
    zero-amount one before anything is debited: the card's TAC over it is the evidence that a
    second card signs under this card's keys and counter, and it costs the rider nothing if
    the second card is the genuine one (its counter moves on, so its next tap pays).
    """
    sam, config = ctx.sam, ctx.config
    interop = _interop(ctx, info)
    init_reply = yield _card(Cmd.initialize_purchase(capp, sam.key_index, amount_fen, sam.terminal_id))
    if init_reply.sw == SW_INSUFFICIENT:
        return _result(Outcome.INSUFFICIENT, "insufficient balance", info, interop=interop)
    init = InitAnswer.parse(init_reply.data)
    if init.balance_fen < amount_fen:
        return _result(
            Outcome.INSUFFICIENT, "insufficient balance", info, balance_after_fen=init.balance_fen, interop=interop
        )
    if pending is not None:
        # The card could not prove the earlier debit. An unchanged counter proves it never happened.
        unchanged = init.offline_counter == pending.record.offline_counter
        yield ResolvePending(pending.record, "not_debited" if unchanged else "unproven")
    suspicion: Suspicion | None = None
    clash = ctx.local.counter_clash(info.issuer_hex, info.asn_hex, init.offline_counter)
    if clash is not None:
        suspicion = Suspicion(*clash)
        if amount_fen:
            # A new session for 0 fen (INITIALIZE again restarts it; nothing was debited).
            amount_fen, fare, transit_type, codes = 0, None, TRANSIT_BLOCK, None
            init_reply = yield _card(Cmd.initialize_purchase(capp, sam.key_index, 0, sam.terminal_id))
            init = InitAnswer.parse(init_reply.data)
    moment = local(ctx.now).replace(microsecond=0)
    day, clock = date4(moment), time3(moment)
    tx_type = crypto.TX_CAPP_PURCHASE if capp else crypto.TX_EP_PURCHASE
    sam_data = (
        init.card_random
        + init.offline_counter.to_bytes(2, "big")
        + amount_fen.to_bytes(4, "big")
        + bytes([tx_type])
        + day
        + clock
        + bytes([init.key_version, init.alg_id])
        + info.public.asn[2:]
        + info.public.issuer_id
    )
    sam_reply = yield _sam(Cmd.init_sam_for_purchase(sam_data))
    if len(sam_reply.data) != 8:
        raise ReaderError(f"PSAM INIT SAM answered {len(sam_reply.data)} bytes, not 8")
    terminal_seq, mac1 = int.from_bytes(sam_reply.data[:4], "big"), sam_reply.data[4:8]
    balance_after = init.balance_fen - amount_fen
    record = TapRecord(
        terminal_id=sam.terminal_hex,
        terminal_seq=terminal_seq,
        psam_serial=sam.serial.hex(),
        issuer_id=info.issuer_hex,
        card_asn=info.asn_hex,
        card_type=str(info.public.card_type),
        tx_type=tx_type,  # type: ignore[arg-type]  # 6 or 9 by construction
        amount_fen=amount_fen,
        balance_before_fen=init.balance_fen,
        offline_counter=init.offline_counter,
        tx_time=moment.isoformat(),
        key_version=init.key_version,
        alg_id=init.alg_id,
        tac=NO_TAC,
        route_id=config.route_id if capp else None,
        stop_id=config.stop_id if capp else None,
        vehicle_id=config.vehicle_id if capp else None,
        fare=fare,
        status=status,  # type: ignore[arg-type]
    )
    if capp:
        transit = TransitRecord(
            tx_type=transit_type,
            terminal_id=sam.terminal_id,
            industry=config.industry,
            line=config.line_code if codes is None else codes[0],
            station=config.station_code if codes is None else codes[1],
            operator=config.operator_code,
            amount_fen=amount_fen,
            balance_after_fen=balance_after,
            moment=moment,
            acquirer_city=config.acquirer_city,
            acquirer_id=config.acquirer_id,
            terminal_seq=terminal_seq,  # docs/decisions.md: the TTC in the RFU bytes, for transfer_of
        )
        yield _card(Cmd.update_capp_data_cache(transit.encode()))
    # Past this point the card may debit without us seeing it: write ahead, durably.
    yield SavePending(record)
    try:
        debited = yield _card(Cmd.debit(capp, terminal_seq, day, clock, mac1))
    except CardRefused as exc:
        # A refused command changes nothing on the card (card-profile.md, "Atomicity and tear").
        yield ResolvePending(record, f"refused_{exc.sw:04X}")
        raise
    if len(debited.data) != 8:
        raise ReaderError(f"DEBIT answered {len(debited.data)} bytes, not TAC || MAC2")
    tac, mac2 = debited.data[:4], debited.data[4:8]
    mac2_ok = yield from _verify_mac2(mac2)
    record = msgspec.structs.replace(record, tac=tac.hex())
    try:
        yield Commit(record, mac2_ok, interop, suspicion)
    except DuplicateCardRecord as exc:  # the journal saw the clash the check above did not
        suspicion = Suspicion("duplicate_card_counter", 0, exc.earlier)
    if status == "blocked":
        outcome, message = Outcome.BLOCKED, "card blocked"
    elif suspicion is not None:
        outcome, message = Outcome.SUSPECTED_CLONE, _clone_message(record, suspicion)
    elif not mac2_ok:
        outcome, message = Outcome.SUSPECT, "paid, but the card's MAC2 did not verify"
    else:
        outcome, message = Outcome.PAID, "paid"
    return _result(
        outcome, message, info, record=record, amount_fen=amount_fen, balance_after_fen=balance_after, interop=interop
    )


def _clone_message(record: TapRecord, suspicion: Suspicion) -> str:
    earlier = suspicion.earlier
    when = shanghai_clock(dt.datetime.fromisoformat(earlier.tx_time))
    if suspicion.kind == "duplicate_card_counter":
        seen = f"offline counter {record.offline_counter} was already used here"
    else:
        seen = f"offline counter {record.offline_counter} is below counter {earlier.offline_counter} used here"
    charged = f"charged {yuan(record.amount_fen)}, " if record.amount_fen else ""
    return (
        f"card refused: {seen} (sequence {earlier.terminal_seq}, {when}); suspected clone, "
        f"{charged}reported to clearing"
    )


def _block(ctx: TapContext, info: CardInfo, pending: PendingTap | None) -> Generator[Step, Reply, TapResult]:
    """Section 9, after a zero-amount record (type 12) that tells clearing when and where."""
    result = yield from _purchase(
        ctx, info, pending, capp=True, amount_fen=0, fare=None, transit_type=TRANSIT_BLOCK, status="blocked"
    )
    key_version = 0 if result.record is None else result.record.key_version  # 00: the PSAM's newest
    yield _sam(Cmd.delivery_key(KEY_USAGE_MAINTENANCE, key_version, info.public.asn[2:] + info.public.issuer_id))
    challenge = (yield _card(Cmd.get_challenge())).data
    mac = (yield _sam(Cmd.cipher_data_mac(challenge + bytes(4), BLOCK_HEADER))).data
    yield _card(Cmd.application_block(mac))
    return result


def _common_checks(ctx: TapContext) -> Generator[Step, Reply, tuple[CardInfo, PendingTap | None] | TapResult]:
    """Steps 1-4 of both flows; returns the card and its unproven pending, or a final result."""
    read = yield from _read_card(ctx)
    if isinstance(read, TapResult):
        return read
    info = read
    pending = ctx.local.pending_for(info.issuer_hex, info.asn_hex)
    if pending is not None:
        recovered = yield from _recover(ctx, info, pending)
        if recovered is not None:
            return recovered
    refused = _check_validity(ctx, info)
    if refused is not None:
        return refused
    entry = ctx.local.denylisted(info.issuer_hex, info.asn_hex, ctx.now)
    if entry is not None:
        return (yield from _block(ctx, info, pending))
    return info, pending


def validator_flow(ctx: TapContext) -> Flow:
    """A bus validator tap (module docstring)."""
    checked = yield from _common_checks(ctx)
    if isinstance(checked, TapResult):
        return checked
    info, pending = checked
    interop = _interop(ctx, info)
    now_s = int(ctx.now.timestamp())
    since = now_s - ctx.config.repeat_window_s + 1
    last = ctx.local.last_paid_epoch_s(info.issuer_hex, info.asn_hex, crypto.TX_CAPP_PURCHASE, since)
    if ctx.config.repeat_window_s > 0 and last is not None and last <= now_s:
        balance = yield from _balance(ctx)
        return _result(Outcome.ALREADY_PAID, "already paid", info, balance_after_fen=balance, interop=interop)
    history = yield from _history(ctx)
    if ctx.pricer is None:
        raise PricingRefused("this terminal has no fare engine")
    try:
        price = ctx.pricer(card_type=info.public.card_type, history=history, moment=ctx.now, config=ctx.config)
    except PricingRefused as exc:
        return _result(Outcome.NO_FARE, f"no fare: {exc.message}", info, interop=interop)
    codes = None
    if price.line_code is not None and price.station_code is not None:
        codes = (price.line_code, price.station_code)
    result = yield from _purchase(
        ctx,
        info,
        pending,
        capp=True,
        amount_fen=price.amount_fen,
        fare=price.fare,
        transit_type=ctx.config.transit_type,
        status="normal",
        codes=codes,
    )
    if result.outcome.charged and price.reason is not None:
        result = dataclasses.replace(result, fare_reason=price.reason)
    return result


def pos_flow(ctx: TapContext, amount_fen: int) -> Flow:
    """A merchant sale of ``amount_fen`` (plain purchase, section 3)."""
    if not 0 < amount_fen <= 0xFFFFFFFF:
        raise ValueError("a sale is a positive amount of fen")
    checked = yield from _common_checks(ctx)
    if isinstance(checked, TapResult):
        return checked
    info, pending = checked
    return (
        yield from _purchase(
            ctx, info, pending, capp=False, amount_fen=amount_fen, fare=None, transit_type=0, status="normal"
        )
    )


# --- the one place that does I/O ----------------------------------------------------------


class Journaling(Protocol):
    def save_pending(self, record: TapRecord) -> None: ...

    def append(self, record: TapRecord, *, mac2_ok: bool = True, interop: bool = False) -> int: ...

    def resolve_pending(self, record: TapRecord, outcome: str) -> None: ...

    def append_fraud(
        self,
        record: TapRecord,
        kind: str,
        earlier_tap_id: int,
        earlier: TapRecord,
        *,
        mac2_ok: bool = True,
        interop: bool = False,
    ) -> int: ...


@dataclass(slots=True)
class FlowIO:
    """The readers and the journal a flow's steps are carried out on.

    ``pending_saved`` says the tap passed the point of no return (a debit may be on the card):
    before it, a tap can be run again from the start (after reopening a lost PSAM).
    """

    card: Channel
    sam: Channel
    journal: Journaling
    sam_lost: bool = False
    journal_id: int | None = None
    fraud_id: int | None = None
    pending_saved: bool = False
    trace: list[str] | None = None  # step names, when a test or the CLI wants them


def drive(flow: Generator[Step, Reply, object], io: FlowIO) -> object:
    """Run a flow to its end; typed reader and card errors are thrown back into the flow.

    A PSAM that vanishes (``CardRemoved`` on the SAM reader) is a reader fault for the tap,
    not a removed card: it is thrown as ``ReaderError`` and flagged so the PSAM is reopened.
    """
    to_send: Reply | None = None
    to_throw: Exception | None = None
    while True:
        try:
            step = flow.throw(to_throw) if to_throw is not None else flow.send(to_send)  # type: ignore[arg-type]
        except StopIteration as stop:
            return stop.value
        to_send, to_throw = _DONE, None
        if isinstance(step, Exchange):
            if io.trace is not None:
                io.trace.append(f"{step.target.value}:{step.apdu.what}")
            try:
                to_send = (io.card if step.target is Target.CARD else io.sam).run(step.apdu)
            except CardRemoved as exc:
                if step.target is Target.SAM:
                    io.sam_lost = True
                    to_throw = ReaderError(f"PSAM lost: {exc.message}")
                else:
                    to_throw = exc
            except ReaderError as exc:
                if step.target is Target.SAM:
                    io.sam_lost = True
                to_throw = exc
            except CardRefused as exc:
                to_throw = exc
        elif isinstance(step, SavePending):
            io.journal.save_pending(step.record)
            io.pending_saved = True
        elif isinstance(step, Commit):
            if step.suspicion is not None:
                suspicion = step.suspicion
                io.fraud_id = io.journal.append_fraud(
                    step.record,
                    suspicion.kind,
                    suspicion.earlier_tap_id,
                    suspicion.earlier,
                    mac2_ok=step.mac2_ok,
                    interop=step.interop,
                )
            else:
                try:
                    io.journal_id = io.journal.append(step.record, mac2_ok=step.mac2_ok, interop=step.interop)
                except DuplicateCardRecord as exc:
                    io.fraud_id = exc.fraud_id
                    to_throw = exc
        elif isinstance(step, ResolvePending):
            io.journal.resolve_pending(step.record, step.outcome)
        else:  # pragma: no cover - the Step union is closed
            raise TypeError(f"unknown step {step!r}")


def run_tap(flow: Flow, io: FlowIO, clock: Callable[[], float]) -> TapResult:
    """Drive a tap flow and turn a typed error that escaped it into the result a rider sees."""
    started = clock()
    result = drive_tap(flow, io)
    elapsed_ms = (clock() - started) * 1000
    return dataclasses.replace(result, elapsed_ms=elapsed_ms, journal_id=io.journal_id, fraud_id=io.fraud_id)


def drive_tap(flow: Flow, io: FlowIO) -> TapResult:
    """``run_tap`` without the timing: the caller stamps ``elapsed_ms`` and ``io.journal_id``."""
    try:
        result = drive(flow, io)
        assert isinstance(result, TapResult)
    except CardRemoved as exc:
        result = TapResult(Outcome.TAP_AGAIN, f"tap again ({exc.message})")
    except ReaderError as exc:
        result = TapResult(Outcome.READER_ERROR, f"reader error, tap again ({exc.message})")
    except CardRefused as exc:
        result = TapResult(Outcome.CARD_ERROR, f"card error: {exc.what} answered {exc.sw:04X}")
    except PricingRefused as exc:
        result = TapResult(Outcome.NO_FARE, exc.message)
    except DuplicateCardRecord as exc:  # a flow step that did not expect it (a recovered tap)
        result = TapResult(Outcome.SUSPECTED_CLONE, f"card refused: {exc.message}")
    return result
