"""In-process composite purchase: card + PSAM + full crypto, taps per second on one core.

The validator APDU sequence of ``epurse-public-sources.md`` section 10 (steps 2, 8, 10-14):
SELECT, GET BALANCE, INITIALIZE FOR CAPP PURCHASE, PSAM INIT SAM FOR PURCHASE, UPDATE CAPP
DATA CACHE, DEBIT FOR CAPP PURCHASE, PSAM CREDIT SAM FOR PURCHASE, every APDU encoded and
parsed, every MAC computed. No image files (persistence is measured by the pcsc benchmark's
emulator path, not here). Goal: >= 5,000 taps/s.

The helpers (``demo_card``, ``demo_psam``, ``composite_purchase``) are reused by
``benchmarks.pcsc`` with pyscard transmit functions in place of the in-process ones.
"""

from __future__ import annotations

import datetime as dt
import statistics
import time
from collections.abc import Callable
from typing import Final

from cardos import crypto
from cardos.card import Card
from cardos.image import CardKeys
from cardos.personalise import personalise
from cardos.profile import AID_PURSE, ISSUER_XIANYANG, CardType
from cardos.psam import Psam, psam_image_for_terminal
from cardos.records import INDUSTRY_BUS, TRANSIT_SINGLE, ManagementInfo, PublicInfo, TransitRecord

Transmit = Callable[[bytes], bytes]

GOAL_TAPS_PER_S: Final = 5_000
MPK: Final = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")
MLK: Final = bytes.fromhex("11223344556677888877665544332211")
MTK: Final = bytes.fromhex("A1A2A3A4A5A6A7A8B1B2B3B4B5B6B7B8")
MAMK: Final = bytes.fromhex("00112233445566778899AABBCCDDEEFF")
KEY_VERSION: Final = 0x01
TERMINAL_ID: Final = bytes.fromhex("360486600002")
ASN: Final = bytes.fromhex("3104712000000000001F")
FARE_FEN: Final = 200


class TapFailed(RuntimeError):
    """An APDU of the benchmark tap did not answer 9000."""


def demo_card(balance_fen: int = 1_000_000, alg: int = crypto.ALG_3DES, asn: bytes = ASN) -> Card:
    """A Xianyang card whose keys are diversified from the benchmark master keys."""

    def key(master: bytes) -> bytes:
        return crypto.derive_card_key(master, ISSUER_XIANYANG, asn, alg)

    keys = CardKeys(dpk=key(MPK), dlk=key(MLK), dtk=key(MTK), damk=key(MAMK), key_version=KEY_VERSION, alg_id=alg)
    public = PublicInfo(ISSUER_XIANYANG, 0x01, 0x01, asn, dt.date(2024, 1, 1), dt.date(2034, 1, 1), CardType.ORDINARY)
    management = ManagementInfo(b"\x00\x00\x01\x56", b"\x61\x00", b"\x71\x20", True, CardType.ORDINARY)
    image = personalise(keys=keys, public=public, management=management, balance_fen=balance_fen)
    return Card.from_image(image)


def demo_psam(alg: int = crypto.ALG_3DES) -> Psam:
    image = psam_image_for_terminal(TERMINAL_ID, bytes(9) + b"\x01", {ISSUER_XIANYANG: (MPK, MAMK, KEY_VERSION, alg)})
    return Psam(image)


def ok(transmit: Transmit, apdu: bytes) -> bytes:
    resp = transmit(apdu)
    if resp[-2:] != b"\x90\x00":
        raise TapFailed(f"{apdu[:4].hex()} -> {resp[-2:].hex()}")
    return resp[:-2]


SELECT_PURSE: Final = bytes.fromhex("00A4040008") + AID_PURSE + b"\x00"
GET_BALANCE: Final = bytes.fromhex("805C000204")
SELECT_PSAM_DF: Final = bytes.fromhex("00A40000028011")


def composite_purchase(card: Transmit, psam: Transmit, amount_fen: int, moment: dt.datetime) -> tuple[bytes, bytes]:
    """One validator tap (section 10); returns (TAC, MAC2) after the PSAM verified MAC2."""
    fci = ok(card, SELECT_PURSE)
    at = fci.index(b"\x9f\x0c\x1e") + 3
    public = fci[at : at + 30]
    ok(card, GET_BALANCE)
    init = ok(card, bytes.fromhex("805003020B01") + amount_fen.to_bytes(4, "big") + TERMINAL_ID + b"\x0f")
    balance, ctc = int.from_bytes(init[0:4], "big"), init[4:6]
    key_version, alg, card_random = init[9], init[10], init[11:15]
    date_time = bytes.fromhex(moment.strftime("%Y%m%d%H%M%S"))
    sam_data = (
        card_random
        + ctc
        + amount_fen.to_bytes(4, "big")
        + bytes([crypto.TX_CAPP_PURCHASE])
        + date_time
        + bytes([key_version, alg])
        + public[12:20]
        + public[0:8]
    )
    sam = ok(psam, bytes.fromhex("8070000024") + sam_data + b"\x08")
    ttc, mac1 = sam[0:4], sam[4:8]
    record = TransitRecord(
        TRANSIT_SINGLE,
        TERMINAL_ID,
        INDUSTRY_BUS,
        line=12,
        station=3,
        operator=1,
        amount_fen=amount_fen,
        balance_after_fen=balance - amount_fen,
        moment=moment,
        acquirer_city=b"\x71\x20",
        acquirer_id=ISSUER_XIANYANG,
    ).encode()
    ok(card, bytes.fromhex("80DC00F030") + record)
    debit = ok(card, bytes.fromhex("805401000F") + ttc + date_time + mac1 + b"\x08")
    tac, mac2 = debit[0:4], debit[4:8]
    ok(psam, bytes.fromhex("8072000004") + mac2)
    return tac, mac2


def asn_of(index: int) -> bytes:
    return bytes.fromhex(f"31047120{index:012d}")


def taps_per_second(taps: int, alg: int = crypto.ALG_3DES, *, distinct_cards: bool = False) -> float:
    """One PSAM; one card tapped ``taps`` times, or ``taps`` different cards once each.

    Distinct cards is the validator's real load: the PSAM derives a new DPK every tap and
    the crypto module's cipher cache holds nothing for the card's keys.
    """
    cards = [demo_card(alg=alg, asn=asn_of(i)) for i in range(taps)] if distinct_cards else [demo_card(alg=alg)]
    for card in cards:
        card.power_on()
    psam = demo_psam(alg)
    psam.power_on()
    ok(psam.transmit, SELECT_PSAM_DF)
    moment = dt.datetime(2024, 3, 1, 8, 15, 0)
    started = time.perf_counter()
    for i in range(taps):
        card = cards[i % len(cards)]
        composite_purchase(card.transmit, psam.transmit, 1, moment)
    elapsed = time.perf_counter() - started
    assert sum(card.balance_fen for card in cards) == len(cards) * 1_000_000 - taps
    return taps / elapsed


def main(quick: bool) -> None:
    taps = 300 if quick else 3_000
    rounds = 1 if quick else 3
    for alg, name in ((crypto.ALG_3DES, "3DES"), (crypto.ALG_SM4, "SM4")):
        for distinct, label in ((False, "same card"), (True, "a new card every tap")):
            rates = [taps_per_second(taps, alg, distinct_cards=distinct) for _ in range(rounds)]
            best, median = max(rates), statistics.median(rates)
            verdict = "meets" if median >= GOAL_TAPS_PER_S else "BELOW"
            print(
                f"in-process composite purchase, {name}, {label}: {median:,.0f} taps/s median "
                f"({best:,.0f} best) of {rounds} x {taps} (goal >= {GOAL_TAPS_PER_S:,}/s on one core: {verdict})"
            )


if __name__ == "__main__":
    main(quick=False)
