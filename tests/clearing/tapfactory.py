"""Signed tap records for clearing tests: emulated cards whose TACs verify.

Keys are diversified from a fixed test master TAC key with ``cardos.crypto`` exactly as
issuance does, so ``dtk_lookup`` plays the key store. Nothing here is clever: a card keeps
its balance and offline counter and makes the record a validator would upload.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache

import msgspec
from sqlalchemy import Connection, text

from cardos import crypto
from cardos.records import SHANGHAI_TZ
from clearing.contract import Batch, FareInfo, TapRecord, encode

OWN_ISSUER = "01007120ffffffff"  # Xianyang
PEER_ISSUER = "01007100ffffffff"  # Xi'an
MASTER_TAC = bytes.fromhex("00112233445566778899aabbccddeeff")
KEY_VERSION = 1
T0 = dt.datetime(2026, 11, 24, 8, 0, 0, tzinfo=SHANGHAI_TZ)


@cache
def dtk_for(issuer_id: str, card_asn: str, key_version: int = KEY_VERSION) -> bytes:
    master = bytes(b ^ key_version for b in MASTER_TAC)
    return crypto.derive_card_key(master, bytes.fromhex(issuer_id), bytes.fromhex(card_asn))


def dtk_lookup(issuer_id: str, card_asn: str, key_version: int) -> bytes | None:
    if issuer_id != OWN_ISSUER or key_version not in (1, 2):
        return None
    return dtk_for(issuer_id, card_asn, key_version)


def asn(n: int) -> str:
    return f"3104{n:016d}"


def terminal(n: int) -> str:
    return f"{0x10000000 + n:012x}"


def sign(record: TapRecord) -> TapRecord:
    """The record with the TAC the card would have returned."""
    moment = dt.datetime.fromisoformat(record.tx_time).astimezone(SHANGHAI_TZ)
    tac = crypto.purchase_tac(
        dtk_for(record.issuer_id, record.card_asn, record.key_version),
        record.amount_fen,
        record.tx_type,
        bytes.fromhex(record.terminal_id),
        record.terminal_seq,
        bytes.fromhex(moment.strftime("%Y%m%d")),
        bytes.fromhex(moment.strftime("%H%M%S")),
        record.alg_id,
    )
    return msgspec.structs.replace(record, tac=tac.hex())


@dataclass(eq=False)
class Card:
    """An emulated purse: every ``tap`` debits it and bumps the offline counter."""

    number: int
    balance_fen: int = 10_000
    counter: int = 0
    issuer_id: str = OWN_ISSUER
    card_type: str = "ordinary"
    asn_hex: str | None = None  # an issued card's ASN instead of the numbered one

    @property
    def asn(self) -> str:
        return self.asn_hex or asn(self.number)

    def tap(
        self,
        terminal_id: str,
        terminal_seq: int,
        amount_fen: int = 200,
        when: dt.datetime | None = None,
        *,
        status: str = "normal",
        signed: bool = True,
    ) -> TapRecord:
        when = when or (T0 + dt.timedelta(minutes=terminal_seq % 600))
        record = TapRecord(
            terminal_id=terminal_id,
            terminal_seq=terminal_seq,
            psam_serial="0000000000000001",
            issuer_id=self.issuer_id,
            card_asn=self.asn,
            card_type=self.card_type,
            tx_type=9,
            amount_fen=amount_fen,
            balance_before_fen=self.balance_fen,
            offline_counter=self.counter,
            tx_time=when.astimezone(SHANGHAI_TZ).isoformat(timespec="seconds"),
            key_version=KEY_VERSION,
            alg_id=crypto.ALG_3DES,
            tac="00000000",
            route_id="R1",
            stop_id="S1",
            vehicle_id="V1",
            fare=FareInfo("p1", "adult", None, amount_fen, 0, None),
            status=status,  # type: ignore[arg-type]
        )
        self.balance_fen -= amount_fen
        self.counter += 1
        if signed and self.issuer_id == OWN_ISSUER:
            return sign(record)
        return record


@dataclass
class Terminal:
    terminal_id: str
    seq: int = 1
    batch_seq: int = 1
    pending: list[TapRecord] = field(default_factory=list)

    def tap(self, card: Card, amount_fen: int = 200, when: dt.datetime | None = None, **kw: object) -> TapRecord:
        record = card.tap(self.terminal_id, self.seq, amount_fen, when, **kw)  # type: ignore[arg-type]
        self.seq += 1
        self.pending.append(record)
        return record

    def batch(self, records: list[TapRecord] | None = None) -> Batch:
        if records is None:
            records, self.pending = self.pending, []
        out = Batch(self.batch_seq, T0.isoformat(timespec="seconds"), records)
        self.batch_seq += 1
        return out


def body(batch: Batch) -> bytes:
    return encode(batch)


# --- tap-on / tap-off on the example tariff's intercity route (fares/data/xianyang_example) ------

TARIFF_VERSION = "xianyang-2026.1"
IC_MAX_FEN = 800  # adult, three zones: the most a tap-on at zone 1 can cost
IC_FARES_FEN = {"ic_weicheng": 200, "ic_airport": 500, "ic_xian_center": 800}  # adult, boarding at zone 1


def transit(record: TapRecord, kind: str, stop_id: str, *, claimed_fen: int = 0, product: str = "ic") -> TapRecord:
    """``record`` as a tap of ``kind`` on route ic1 at ``stop_id`` (route, stop and fare are not under the TAC)."""
    fare = FareInfo(
        product, "adult", "intercity", record.amount_fen, 0, None, refund_due_fen=claimed_fen, tap_kind=kind,  # type: ignore[arg-type]
        tariff_version=TARIFF_VERSION,
    )  # fmt: skip
    return msgspec.structs.replace(record, route_id="ic1", stop_id=stop_id, vehicle_id="ic1-bus-07", fare=fare)


def journey(
    term: Terminal,
    card: Card,
    alight: str = "ic_airport",
    *,
    at: dt.datetime = T0,
    minutes: int = 30,
    claimed_fen: int | None = None,
    exit_terminal: Terminal | None = None,
) -> tuple[TapRecord, TapRecord]:
    """A tap-on at Xianyang station (the maximum charged) and a tap-off at ``alight`` claiming its refund."""
    tap_on = transit(term.tap(card, IC_MAX_FEN, at), "tap_on", "ic_xianyang_station")
    term.pending[-1] = tap_on
    out = exit_terminal or term
    claim = IC_MAX_FEN - IC_FARES_FEN[alight] if claimed_fen is None else claimed_fen
    tap_off = transit(out.tap(card, 0, at + dt.timedelta(minutes=minutes)), "tap_off", alight, claimed_fen=claim)
    out.pending[-1] = tap_off
    return tap_on, tap_off


# --- a registered world: issuers, operator, terminals, cards with their opening balance ---------


def register_world(
    session: object,
    cards: list[Card],
    terminal_ids: list[str],
    *,
    operator: str = "bus-1",
    tokens: bool = False,
) -> dict[str, str]:
    """Register issuers, terminals and cards (opening balance sold at a counter); {terminal: token}."""
    from sqlalchemy.orm import Session

    from clearing import accounts, registry
    from clearing.ledger import TransferSpec, post_transfers
    from clearing.models import Card as CardRow
    from clearing.models import Terminal as TerminalRow
    from clearing.models import TransferCode

    assert isinstance(session, Session)
    registry.ensure_issuers(session, own_city="xianyang")
    out: dict[str, str] = {}
    op = registry.ensure_operator(session, operator)
    for terminal_id in terminal_ids:
        if tokens:
            out[terminal_id] = registry.register_terminal(session, terminal_id, operator)
        else:
            session.add(
                TerminalRow(
                    terminal_id=terminal_id,
                    operator_id=op.operator_id,
                    payable_account_id=op.payable_account_id,
                    token_hash="none",
                    active=True,
                )
            )
    float_account = accounts.issuer_float(session, OWN_ISSUER)
    transfers = []
    for card in cards:
        if card.issuer_id != OWN_ISSUER:
            continue
        account = accounts.card_liability(session, card.issuer_id, card.asn)
        session.add(
            CardRow(
                issuer_id=card.issuer_id,
                card_asn=card.asn,
                card_type=card.card_type,
                issued_at=T0 - dt.timedelta(days=30),
                start_date=dt.date(2026, 1, 1),
                expiry_date=dt.date(2036, 1, 1),
                key_version=KEY_VERSION,
                alg_id=crypto.ALG_3DES,
                account_id=account,
                shadow_balance_fen=card.balance_fen,
                last_offline_counter=card.counter - 1 if card.counter else None,
            )
        )
        if card.balance_fen:
            transfers.append(
                TransferSpec.single(
                    f"issue:{card.asn}", float_account, account, card.balance_fen, int(TransferCode.CARD_SALE)
                )
            )
    session.flush()
    post_transfers(session, transfers)
    session.commit()
    return out


def make_keystore(path: object, kek: bytes | None = None) -> object:
    """A key store holding the same TAC master key ``dtk_for`` uses (key version 1), so records
    signed here verify against the store; load keys are the store's own."""
    import os
    from pathlib import Path

    from clearing.keystore import KeyStore

    store = KeyStore.open(Path(str(path)) / "keystore.json", kek or os.urandom(32))
    store.import_ceremony(
        {
            "issuers": [
                {
                    "issuer_id": OWN_ISSUER,
                    "alg_id": 0,
                    "key_version": KEY_VERSION,
                    "mpk": os.urandom(16).hex(),
                    "mlk": os.urandom(16).hex(),
                    "mtk": bytes(b ^ KEY_VERSION for b in MASTER_TAC).hex(),
                    "mamk": os.urandom(16).hex(),
                }
            ]
        }
    )
    return store


def truncate(conn: Connection, tables: Iterable[str]) -> None:
    """Empty PostgreSQL tables between tests; with triggers off, as accounts and batches refuse TRUNCATE."""
    conn.execute(text("SET LOCAL session_replication_role = replica"))
    conn.execute(text(f"TRUNCATE TABLE {', '.join(tables)} RESTART IDENTITY CASCADE"))
