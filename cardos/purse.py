"""The transit e-purse application of the user card (``epurse-public-sources.md`` sections 2-9).

Handlers take a parsed ``Command`` and return response data or raise ``StatusError``.
They never write persistent state directly: every commit (balance, counters, 0x18 log,
0x1E transit record, prove data of purchases and loads, the block flag) is one closure
handed to ``stage``, which ``CardOS`` runs at the commit point (``card-profile.md``,
"Atomicity and tear").
The open INITIALIZE session, the CAPP cache and the challenge are volatile: they live
here and are dropped by ``reset_volatile`` (power loss, reset, SELECT).

All cryptography is ``cardos.crypto``; this module only chooses inputs.
"""

from __future__ import annotations

import hmac
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from cardos import crypto
from cardos.apdu import Command
from cardos.filesystem import CyclicEF
from cardos.image import COUNTER_MAX, CardKeys, ProveEntry, PurseState
from cardos.profile import PURSE_KEY_INDEX, PURSE_MAX_FEN
from cardos.records import LogRecord
from cardos.sw import (
    SW_APP_LOCKED,
    SW_BAD_P1P2,
    SW_CONDITIONS_NOT_SATISFIED,
    SW_INSUFFICIENT_BALANCE,
    SW_INVALID_STATE,
    SW_KEY_NOT_FOUND,
    SW_MAC_ERROR,
    SW_RECORD_NOT_FOUND,
    SW_SM_WRONG,
    SW_WRONG_LENGTH,
    StatusError,
    sw_wrong_le,
)

# Not in section 11's table; from JC (9501, load above the maximum) and PBOC practice (9402).
SW_LOAD_OVER_MAX: Final = 0x9501
SW_COUNTER_EXHAUSTED: Final = 0x9402

INIT_LOAD: Final = 0x00  # P1 of 80 50
INIT_PURCHASE: Final = 0x01
INIT_CAPP_PURCHASE: Final = 0x03
P2_EP: Final = 0x02  # the EP (01 would be the ED, which Yikatong cards do not have)

INIT_PURCHASE_RESPONSE_LEN: Final = 15
INIT_LOAD_RESPONSE_LEN: Final = 16
CAPP_CACHE_P2: Final = 0x1E << 3  # 80 DC 00 F0: SFI 0x1E, the only CAPP file we keep
BLOCK_HEADER: Final = bytes.fromhex("841E000004")  # the MAC input of APPLICATION BLOCK (section 9)
SHORT_LE_MAX: Final = 256
OVERDRAFT_NONE: Final = b"\x00\x00\x00"  # Yikatong purses have no overdraft


def _expect_le(cmd: Command, length: int) -> None:
    """Le absent, 00 or exactly ``length``; anything else is 6Cxx (section 11)."""
    le = cmd.le
    if le is not None and le != length and le != SHORT_LE_MAX:
        raise StatusError(sw_wrong_le(length), f"response is {length} bytes")


def _expect_lc(cmd: Command, length: int) -> None:
    if len(cmd.data) != length:
        raise StatusError(SW_WRONG_LENGTH, f"data must be {length} bytes, got {len(cmd.data)}")


@dataclass(slots=True)
class Registers:
    """The purse's mutable persistent registers (the committed state)."""

    balance_fen: int
    online_counter: int
    offline_counter: int
    blocked: bool

    @classmethod
    def of(cls, state: PurseState) -> Registers:
        return cls(state.balance_fen, state.online_counter, state.offline_counter, state.blocked)

    def snapshot(self) -> PurseState:
        return PurseState(self.balance_fen, self.online_counter, self.offline_counter, self.blocked)


@dataclass(slots=True)
class Session:
    """An open INITIALIZE: what the following DEBIT or CREDIT must match."""

    kind: int  # INIT_LOAD, INIT_PURCHASE or INIT_CAPP_PURCHASE
    tx_type: int
    amount_fen: int
    terminal_id: bytes
    counter: int  # the CTC INITIALIZE returned (before the commit)
    card_random: bytes
    balance_fen: int
    load_key: bytes = b""  # SESLK, computed at INITIALIZE FOR LOAD (it needs MAC1)


class Purse:
    """E-purse logic over the card's registers, keys and record files."""

    def __init__(
        self,
        *,
        keys: CardKeys,
        registers: Registers,
        log: CyclicEF,
        transit: CyclicEF,
        prove: deque[ProveEntry],
        load_prove: deque[ProveEntry],
        stage: Callable[[Callable[[], None]], None],
        random_bytes: Callable[[int], bytes],
    ) -> None:
        self.keys = keys
        self.registers = registers
        self.log = log
        self.transit = transit
        self.prove = prove  # purchases (06, 09), newest first
        self.load_prove = load_prove  # loads (02), newest first, bounded apart from purchases
        self._stage = stage
        self._random = random_bytes
        # TAC = mac(tac_key(DTK), data): one reusable cipher context per card (crypto.tac_mac_key).
        self._tac_mac = crypto.tac_mac_key(keys.dtk, keys.alg_id)
        self.session: Session | None = None
        self.capp_cache: bytes | None = None

    def reset_volatile(self) -> None:
        self.session = None
        self.capp_cache = None

    def _not_blocked(self) -> None:
        if self.registers.blocked:
            raise StatusError(SW_APP_LOCKED, "application blocked")

    # --- GET BALANCE (section 2) -------------------------------------------------------------
    def get_balance(self, cmd: Command) -> bytes:
        """80 5C P1 02 04. P1 00/03: the balance; 01/02: the overdraft part, always 0 here."""
        if cmd.p2 != P2_EP or cmd.p1 > 0x03:
            raise StatusError(SW_BAD_P1P2, "GET BALANCE needs P1 00..03 and P2 02")
        if cmd.data:
            raise StatusError(SW_WRONG_LENGTH, "GET BALANCE takes no data")
        _expect_le(cmd, 4)
        balance = self.registers.balance_fen if cmd.p1 in (0x00, 0x03) else 0
        return balance.to_bytes(4, "big")

    # --- INITIALIZE FOR PURCHASE / CAPP PURCHASE / LOAD (sections 3-5) ------------------------
    def initialize(self, cmd: Command) -> bytes:
        kind = cmd.p1
        if cmd.p2 != P2_EP or kind not in (INIT_LOAD, INIT_PURCHASE, INIT_CAPP_PURCHASE):
            raise StatusError(SW_BAD_P1P2, "INITIALIZE needs P1 00/01/03 and P2 02")
        _expect_lc(cmd, 11)
        loading = kind == INIT_LOAD
        _expect_le(cmd, INIT_LOAD_RESPONSE_LEN if loading else INIT_PURCHASE_RESPONSE_LEN)
        self.session = None
        self.capp_cache = None
        self._not_blocked()
        data = cmd.data
        if data[0] != PURSE_KEY_INDEX:
            raise StatusError(SW_KEY_NOT_FOUND, f"no key with index {data[0]:02X}")
        amount = int.from_bytes(data[1:5], "big")
        terminal_id = bytes(data[5:11])
        regs = self.registers
        balance = regs.balance_fen
        keys = self.keys
        card_random = self._random(4)
        if loading:
            if amount > PURSE_MAX_FEN - balance:
                raise StatusError(SW_LOAD_OVER_MAX, f"load of {amount} fen would pass {PURSE_MAX_FEN} fen")
            counter = regs.online_counter
            if counter >= COUNTER_MAX:
                raise StatusError(SW_COUNTER_EXHAUSTED, "online counter exhausted")
            sk = crypto.load_session_key(keys.dlk, card_random, counter, keys.alg_id)
            mac1 = crypto.mac(sk, crypto.load_mac1_data(balance, amount, crypto.TX_EP_LOAD, terminal_id), keys.alg_id)
            self.session = Session(kind, crypto.TX_EP_LOAD, amount, terminal_id, counter, card_random, balance, sk)
            return (
                balance.to_bytes(4, "big")
                + counter.to_bytes(2, "big")
                + bytes((keys.key_version, keys.alg_id))
                + card_random
                + mac1
            )
        if amount > balance:
            raise StatusError(SW_INSUFFICIENT_BALANCE, f"balance {balance} fen < amount {amount} fen")
        counter = regs.offline_counter
        if counter >= COUNTER_MAX:
            raise StatusError(SW_COUNTER_EXHAUSTED, "offline counter exhausted")
        tx_type = crypto.TX_CAPP_PURCHASE if kind == INIT_CAPP_PURCHASE else crypto.TX_EP_PURCHASE
        self.session = Session(kind, tx_type, amount, terminal_id, counter, card_random, balance)
        return (
            balance.to_bytes(4, "big")
            + counter.to_bytes(2, "big")
            + OVERDRAFT_NONE
            + bytes((keys.key_version, keys.alg_id))
            + card_random
        )

    # --- UPDATE CAPP DATA CACHE (section 4) -----------------------------------------------------
    def update_capp_data_cache(self, cmd: Command) -> bytes:
        """80 DC 00 F0 30 <48-byte 0x1E record>: cached until DEBIT FOR CAPP PURCHASE commits it."""
        if cmd.p1 != 0x00 or cmd.p2 != CAPP_CACHE_P2:
            raise StatusError(SW_BAD_P1P2, "UPDATE CAPP DATA CACHE needs P1 00 and P2 F0 (SFI 0x1E)")
        _expect_lc(cmd, self.transit.record_len)
        self._not_blocked()
        session = self.session
        if session is None or session.kind != INIT_CAPP_PURCHASE:
            raise StatusError(SW_INVALID_STATE, "no INITIALIZE FOR CAPP PURCHASE open")
        self.capp_cache = bytes(cmd.data)
        return b""

    # --- DEBIT FOR PURCHASE / CAPP PURCHASE (sections 3-4) -------------------------------------
    def debit(self, cmd: Command) -> bytes:
        """80 54 01 00 0F: termSeq(4) date(4) time(3) MAC1(4) -> TAC(4) MAC2(4)."""
        if cmd.p1 != 0x01 or cmd.p2 != 0x00:
            raise StatusError(SW_BAD_P1P2, "DEBIT needs P1 01 and P2 00")
        _expect_lc(cmd, 15)
        _expect_le(cmd, 8)
        self._not_blocked()
        session = self.session
        if session is None or session.kind == INIT_LOAD:
            raise StatusError(SW_INVALID_STATE, "no INITIALIZE FOR PURCHASE open")
        # One try per INITIALIZE: a refused MAC1 closes the session.
        self.session = None
        cache, self.capp_cache = self.capp_cache, None
        data = cmd.data
        terminal_seq = int.from_bytes(data[0:4], "big")
        date4, time3, mac1 = bytes(data[4:8]), bytes(data[8:11]), data[11:15]
        keys, alg = self.keys, self.keys.alg_id
        amount, tx_type, terminal_id = session.amount_fen, session.tx_type, session.terminal_id
        sk = crypto.purchase_session_key(keys.dpk, session.card_random, session.counter, terminal_seq, alg)
        session_mac = crypto.MacKey(sk, alg)  # MAC1 and MAC2 under one cipher context
        expected = session_mac.mac(crypto.purchase_mac1_data(amount, tx_type, terminal_id, date4, time3))
        if not hmac.compare_digest(expected, mac1):
            raise StatusError(SW_MAC_ERROR, "MAC1 does not verify")
        regs = self.registers
        # Nothing commits between INITIALIZE and DEBIT, so the balance it checked still holds.
        assert regs.balance_fen == session.balance_fen and regs.offline_counter == session.counter
        mac2 = session_mac.mac(crypto.purchase_mac2_data(amount))
        tac = self._tac_mac.mac(crypto.purchase_tac_data(amount, tx_type, terminal_id, terminal_seq, date4, time3))
        new_balance = session.balance_fen - amount
        new_counter = session.counter + 1
        assert 0 <= new_balance <= PURSE_MAX_FEN
        log_record = LogRecord(session.counter, 0, amount, tx_type, terminal_id, date4, time3).encode()
        proof = ProveEntry(tx_type, new_counter, mac2, tac)
        transit_record = cache if tx_type == crypto.TX_CAPP_PURCHASE else None
        log, transit, prove = self.log, self.transit, self.prove

        def commit() -> None:
            regs.balance_fen = new_balance
            regs.offline_counter = new_counter
            log.push(log_record)
            if transit_record is not None:
                transit.push(transit_record)
            prove.appendleft(proof)

        self._stage(commit)
        return tac + mac2

    # --- CREDIT FOR LOAD (section 5) -------------------------------------------------------------
    def credit_for_load(self, cmd: Command) -> bytes:
        """80 52 00 00 0B: date(4) time(3) MAC2(4) -> TAC(4)."""
        if cmd.p1 != 0x00 or cmd.p2 != 0x00:
            raise StatusError(SW_BAD_P1P2, "CREDIT FOR LOAD needs P1 00 and P2 00")
        _expect_lc(cmd, 11)
        _expect_le(cmd, 4)
        self._not_blocked()
        session = self.session
        if session is None or session.kind != INIT_LOAD:
            raise StatusError(SW_INVALID_STATE, "no INITIALIZE FOR LOAD open")
        self.session = None
        data = cmd.data
        date4, time3, mac2 = bytes(data[0:4]), bytes(data[4:7]), data[7:11]
        alg = self.keys.alg_id
        amount, tx_type, terminal_id = session.amount_fen, session.tx_type, session.terminal_id
        expected = crypto.mac(session.load_key, crypto.load_mac2_data(amount, tx_type, terminal_id, date4, time3), alg)
        if not hmac.compare_digest(expected, mac2):
            raise StatusError(SW_MAC_ERROR, "MAC2 does not verify")
        regs = self.registers
        assert regs.balance_fen == session.balance_fen and regs.online_counter == session.counter
        new_balance = session.balance_fen + amount
        assert 0 <= new_balance <= PURSE_MAX_FEN
        tac_data = crypto.load_tac_data(new_balance, session.counter, amount, tx_type, terminal_id, date4, time3)
        tac = self._tac_mac.mac(tac_data)
        new_counter = session.counter + 1
        log_record = LogRecord(session.counter, 0, amount, tx_type, terminal_id, date4, time3).encode()
        # The host's MAC2 as accepted and this TAC: what a host that lost the response needs
        # to post the load (GET TRANSACTION PROVE P2 02). Committed with the credit, or not at all.
        proof = ProveEntry(tx_type, new_counter, bytes(mac2), tac)
        log, load_prove = self.log, self.load_prove

        def commit() -> None:
            regs.balance_fen = new_balance
            regs.online_counter = new_counter
            log.push(log_record)
            load_prove.appendleft(proof)

        self._stage(commit)
        return tac

    # --- GET TRANSACTION PROVE (section 8, card-profile.md) ---------------------------------------
    def _proofs(self, tx_type: int) -> deque[ProveEntry] | None:
        """The store GET TRANSACTION PROVE searches for P2 = ``tx_type``; None: not provable.

        Purchases (06, 09) are named by the offline counter, loads (02, project-defined)
        by the online counter: two counter spaces, so two stores.
        """
        if tx_type in (crypto.TX_EP_PURCHASE, crypto.TX_CAPP_PURCHASE):
            return self.prove
        if tx_type == crypto.TX_EP_LOAD:
            return self.load_prove
        return None

    def get_transaction_prove(self, cmd: Command) -> bytes:
        """80 5A 00 P2 02 counter -> MAC2(4) TAC(4) (MAC2 first), or 6A83 if never committed.

        P2 06/09: a purchase, counter = the offline counter INITIALIZE returned + 1.
        P2 02 (project-defined): a load, counter = the online counter INITIALIZE FOR LOAD
        returned + 1; MAC2 is the host's MAC2 the card accepted, TAC the CREDIT's TAC.
        """
        proofs = self._proofs(cmd.p2)
        if cmd.p1 != 0x00 or proofs is None:
            raise StatusError(SW_BAD_P1P2, "GET TRANSACTION PROVE needs P1 00 and P2 02, 06 or 09")
        _expect_lc(cmd, 2)
        _expect_le(cmd, 8)
        counter = int.from_bytes(cmd.data, "big")
        for entry in proofs:
            if entry.counter == counter and entry.tx_type == cmd.p2:
                return entry.mac2 + entry.tac
        raise StatusError(SW_RECORD_NOT_FOUND, f"no committed type {cmd.p2:02X} transaction with counter {counter}")

    # --- APPLICATION BLOCK (section 9) ------------------------------------------------------------
    def application_block(self, cmd: Command, challenge: bytes | None) -> bytes:
        """84 1E 00 00 04 MAC: MAC over the header under DAMK with the consumed challenge as IV."""
        if cmd.p1 != 0x00 or cmd.p2 != 0x00:
            raise StatusError(SW_BAD_P1P2, "APPLICATION BLOCK needs P1 00 and P2 00 (permanent)")
        _expect_lc(cmd, crypto.MAC_LEN)
        if cmd.le is not None:
            raise StatusError(SW_WRONG_LENGTH, "APPLICATION BLOCK returns no data")
        self._not_blocked()
        if challenge is None:
            raise StatusError(SW_CONDITIONS_NOT_SATISFIED, "GET CHALLENGE first")
        expected = crypto.secure_messaging_mac(self.keys.damk, challenge, BLOCK_HEADER, self.keys.alg_id)
        if not hmac.compare_digest(expected, cmd.data):
            raise StatusError(SW_SM_WRONG, "APPLICATION BLOCK MAC does not verify")
        regs = self.registers

        def commit() -> None:
            regs.blocked = True

        self.session = None
        self.capp_cache = None
        self._stage(commit)
        return b""
