"""Helpers for terminal tests (no tests here): cards, a PSAM and a terminal wired in process.

Cards and the PSAM use the master keys of ``tests/pcsc_support.py``, so a card's TAC can
be recomputed here the way the clearing centre will (``tap_tac_verifies``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cardos import crypto
from cardos.card import Card
from cardos.os import SmartCard
from cardos.personalise import personalise
from cardos.profile import ISSUER_XIAN, ISSUER_XIANYANG, CardType
from cardos.psam import Psam
from cardos.records import SHANGHAI_TZ, TRANSIT_SINGLE, TransitRecord, datetime7
from clearing.contract import TapRecord
from terminals.config import TerminalConfig
from terminals.denylist import Denylist
from terminals.journal import Journal
from terminals.readers import InProcessReader
from terminals.validator import FlatFare, Terminal
from tests.cardos.cardkit import management_info, public_info
from tests.pcsc_support import MASTER_KEYS, derived_keys, field_psam_image

NOW = dt.datetime(2025, 6, 2, 8, 0, 0, tzinfo=SHANGHAI_TZ)
FARE_FEN = 200
ASN_A = bytes.fromhex("03104000000000000001")
ASN_B = bytes.fromhex("03104000000000000002")


def make_card(
    asn: bytes = ASN_A,
    *,
    issuer: bytes = ISSUER_XIANYANG,
    balance_fen: int = 5_000,
    card_type: CardType = CardType.ORDINARY,
    interoperable: bool = True,
    alg: int = crypto.ALG_3DES,
    path: Path | None = None,
    **public_changes: Any,
) -> Card:
    """A city card with keys diversified from the test master keys (not powered)."""
    public = dataclasses.replace(public_info(card_type, asn=asn), issuer_id=issuer, **public_changes)
    management = dataclasses.replace(management_info(card_type), interoperable=interoperable)
    image = personalise(
        keys=derived_keys(issuer, asn, alg), public=public, management=management, balance_fen=balance_fen
    )
    if path is not None:
        image.save_atomic(path)
        return Card.load(path)
    return Card.from_image(image)


def make_psam(
    issuers: dict[bytes, int] | None = None, path: Path | None = None, terminal_id: bytes | None = None
) -> Psam:
    held = issuers or {ISSUER_XIANYANG: crypto.ALG_3DES, ISSUER_XIAN: crypto.ALG_3DES}
    image = field_psam_image(held) if terminal_id is None else field_psam_image(held, terminal_id)
    if path is not None:
        if not path.exists():
            image.save(path)
        return Psam.from_file(path)
    return Psam(image)


@dataclass
class Rig:
    terminal: Terminal
    card_reader: InProcessReader
    sam_reader: InProcessReader
    journal: Journal
    denylist: Denylist
    psam: SmartCard
    path: Path

    def present(self, card: SmartCard, now: dt.datetime = NOW) -> Any:
        """The rider taps: the card enters the field and the validator runs one tap."""
        self.card_reader.insert(card)
        return self.terminal.tap(now)

    def sell(self, card: SmartCard, amount_fen: int, now: dt.datetime = NOW) -> Any:
        self.card_reader.insert(card)
        return self.terminal.sale(amount_fen, now)

    def records(self) -> list[TapRecord]:
        return [t.record for t in self.journal.iter_taps()]

    def close(self) -> None:
        self.journal.close()
        self.denylist.close()


def make_rig(
    tmp_path: Path,
    *,
    psam: SmartCard | None = None,
    fare_fen: int = FARE_FEN,
    journal_name: str = "journal.db",
    **config: Any,
) -> Rig:
    path = tmp_path / journal_name
    journal, denylist = Journal(path), Denylist(path)
    psam = psam if psam is not None else make_psam()
    sam_reader = InProcessReader("sam", psam)
    card_reader = InProcessReader("card")
    settings = {"route_id": "R12", "stop_id": "S7", "line_code": 12, "station_code": 7, "operator_code": 3}
    settings.update(config)
    terminal = Terminal(
        card_reader=card_reader,
        sam_reader=sam_reader,
        journal=journal,
        denylist=denylist,
        config=TerminalConfig(**settings),
        pricer=FlatFare(fare_fen),
    )
    return Rig(terminal, card_reader, sam_reader, journal, denylist, psam, path)


def tap_tac_verifies(record: TapRecord) -> bool:
    """The clearing centre's check: the TAC under the card's DTK from the issuer's MTK."""
    issuer, asn = bytes.fromhex(record.issuer_id), bytes.fromhex(record.card_asn)
    dtk = crypto.derive_card_key(MASTER_KEYS["mtk"], issuer, asn, record.alg_id)
    stamp = datetime7(dt.datetime.fromisoformat(record.tx_time))
    tac = crypto.purchase_tac(
        dtk,
        record.amount_fen,
        record.tx_type,
        bytes.fromhex(record.terminal_id),
        record.terminal_seq,
        stamp[:4],
        stamp[4:],
        record.alg_id,
    )
    return tac.hex() == record.tac


def transit_history(card: Card) -> list[TransitRecord]:
    return [TransitRecord.decode(r) for r in card.transit.records]


def earlier_leg(moment: dt.datetime, amount_fen: int = FARE_FEN) -> bytes:
    return TransitRecord(
        tx_type=TRANSIT_SINGLE,
        terminal_id=bytes.fromhex("360486600009"),
        industry=0x02,
        line=5,
        station=1,
        operator=3,
        amount_fen=amount_fen,
        balance_after_fen=4_000,
        moment=moment,
        acquirer_city=bytes.fromhex("7120"),
        acquirer_id=ISSUER_XIANYANG,
    ).encode()


class ScriptedCard:
    """A card double that rewrites chosen answers of a real card (``rewrite(apdu, answer) -> answer``)."""

    def __init__(self, card: SmartCard, rewrite: Any) -> None:
        self.card = card
        self.rewrite = rewrite

    def power_on(self) -> bytes:
        return self.card.power_on()

    def power_off(self) -> None:
        self.card.power_off()

    def transmit(self, apdu: bytes) -> bytes:
        answer: bytes = self.rewrite(apdu, self.card.transmit(apdu))
        return answer
