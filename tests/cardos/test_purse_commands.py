"""E-purse commands byte by byte against cardos.crypto and the published vectors.

epurse-public-sources.md sections 3-9 and 11; card-profile.md for prove and tear.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from cardkit import (
    TERMINAL_ID,
    Terminal,
    apdu,
    card_keys,
    make_card,
    make_image,
    select_apdu,
    transit_record,
)

from cardos import crypto
from cardos.apdu import split_response
from cardos.card import Card
from cardos.image import CardKeys, PurseState
from cardos.profile import AID_PURSE, PURSE_MAX_FEN
from cardos.records import LogRecord

V = json.loads((Path(__file__).parents[1] / "vectors" / "epurse_3des.json").read_text())
VKEY = bytes.fromhex(V["key"])
ALGS = [crypto.ALG_3DES, crypto.ALG_SM4]


def send(card: Card, raw: bytes | str) -> tuple[bytes, int]:
    return split_response(card.transmit(apdu(raw) if isinstance(raw, str) else raw))


def fixed_random(hex_random: str) -> Callable[[int], bytes]:
    value = bytes.fromhex(hex_random)
    return lambda n: (value * 2)[:n]


def vector_card(balance_fen: int) -> Card:
    """DPK = DLK = DTK = the published vector key; the card random is always 11223344."""
    keys = CardKeys(dpk=VKEY, dlk=VKEY, dtk=VKEY, damk=VKEY, key_version=1, alg_id=crypto.ALG_3DES)
    image = make_image(balance_fen=balance_fen)
    card = Card(dataclasses.replace(image, keys=keys), random_bytes=fixed_random("11223344"))
    card.power_on()
    send(card, select_apdu(AID_PURSE))
    return card


def selected(alg: int = crypto.ALG_3DES, **kw: object) -> tuple[Card, Terminal]:
    card = make_card(alg_id=alg, **kw)
    assert send(card, select_apdu(AID_PURSE))[1] == 0x9000
    return card, Terminal(card, card.keys)


# --- published vectors, end to end through the card ---------------------------------------


def test_purchase_reproduces_the_published_bl_pur_vector() -> None:
    card = vector_card(balance_fen=0x2000)
    data, sw = send(card, "805001020B" + "01" + "00001000" + "001122334455" + "0F")
    assert sw == 0x9000
    assert data == bytes.fromhex("00002000" + "0000" + "000000" + "01" + "00" + "11223344")
    data, sw = send(card, "805401000F" + "00000001" + "20120229" + "135100" + "F15CAB75" + "08")
    assert sw == 0x9000
    assert data == bytes.fromhex("F5B221C9" + "56988A13")  # TAC (derived vector) then MAC2 (published)
    assert card.balance_fen == 0x1000 and card.offline_counter == 1


def test_load_tac_reproduces_the_derived_vector() -> None:
    card = vector_card(balance_fen=0)
    data, sw = send(card, "805000020B" + "01" + "00001000" + "001122334455" + "10")
    assert sw == 0x9000 and len(data) == 16
    assert data[:12] == bytes.fromhex("00000000" + "0000" + "01" + "00" + "11223344")
    sk = crypto.load_session_key(VKEY, bytes.fromhex("11223344"), 0)
    assert sk.hex() == V["load"]["session_key"]  # same SESLK as the published ED example
    assert data[12:] == crypto.mac(sk, crypto.load_mac1_data(0, 0x1000, crypto.TX_EP_LOAD, TERMINAL_ID))
    mac2 = crypto.mac(
        sk, crypto.load_mac2_data(0x1000, 2, TERMINAL_ID, bytes.fromhex("20111221"), bytes.fromhex("214822"))
    )
    data, sw = send(card, "805200000B" + "20111221" + "214822" + mac2.hex() + "04")
    assert (data.hex(), sw) == ("c4e6a3a3", 0x9000)
    assert card.balance_fen == 0x1000 and card.online_counter == 1
    # byte level, GET TRANSACTION PROVE of that load: P2 02, online counter 0000 + 1 -> MAC2 || TAC
    assert send(card, "805A000202" + "0001" + "08") == (mac2 + bytes.fromhex("c4e6a3a3"), 0x9000)


# --- GET BALANCE -------------------------------------------------------------------------------


def test_get_balance() -> None:
    card, _ = selected(balance_fen=12_345)
    assert send(card, "805C000204") == ((12_345).to_bytes(4, "big"), 0x9000)
    assert send(card, "805C030204") == ((12_345).to_bytes(4, "big"), 0x9000)
    assert send(card, "805C010204") == (bytes(4), 0x9000)  # no overdraft on Yikatong purses
    assert send(card, "805C000104")[1] == 0x6A86
    assert send(card, "805C040204")[1] == 0x6A86
    assert send(card, "805C000208")[1] == 0x6C04
    assert send(card, "805C00020100")[1] == 0x6700


# --- purchase ------------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ALGS)
def test_purchase_commits_balance_counter_log_and_verifiable_tac(alg: int) -> None:
    card, terminal = selected(alg)
    tx = terminal.purchase(250, select=False)
    assert tx.ok and tx.counter == 0 and tx.balance_before == 10_000
    assert terminal.purchase_verifies(tx, tx.mac2, tx.tac)
    assert (card.balance_fen, card.offline_counter, card.online_counter) == (9_750, 1, 0)
    log = LogRecord.decode(send(card, "00B201C417")[0])
    assert log == LogRecord(0, 0, 250, 0x06, TERMINAL_ID, tx.date4, tx.time3)
    assert send(card, "00B201F430")[1] == 0x6A83  # a plain purchase writes no 0x1E record


def test_initialize_for_purchase_errors() -> None:
    card, _ = selected(balance_fen=100)
    base = "805001020B01{amount}001122334455"
    assert send(card, base.format(amount="00000065") + "0F")[1] == 0x9401  # 101 > 100
    assert send(card, "805001020B02000000010011223344550F")[1] == 0x9403  # key index 02
    assert send(card, "805001010B01000000010011223344550F")[1] == 0x6A86  # P2 01: ED
    assert send(card, "805002020B01000000010011223344550F")[1] == 0x6A86  # P1 02
    assert send(card, "805001020A010000000100112233440F")[1] == 0x6700  # Lc 10
    assert send(card, "805001020B01000000010011223344550E")[1] == 0x6C0F  # Le 0E
    assert send(card, base.format(amount="00000064") + "0F")[1] == 0x9000  # exactly the balance
    assert send(card, base.format(amount="00000000"))[1] == 0x9000  # zero (an entry tap), no Le


def test_debit_without_initialize_is_6901_and_after_a_select_too() -> None:
    card, _ = selected()
    debit = "805401000F" + "00000001" + "20250301" + "083015" + "00000000" + "08"
    assert send(card, debit)[1] == 0x6901
    assert send(card, "805001020B01000000010011223344550F")[1] == 0x9000
    send(card, select_apdu(AID_PURSE))
    assert send(card, debit)[1] == 0x6901
    # a load session does not open a debit either
    assert send(card, "805000020B010000000100112233445510")[1] == 0x9000
    assert send(card, debit)[1] == 0x6901
    assert card.offline_counter == 0


def test_debit_after_power_cycle_is_6901() -> None:
    card, _ = selected()
    assert send(card, "805001020B01000000010011223344550F")[1] == 0x9000
    card.power_off()
    card.power_on()
    send(card, select_apdu(AID_PURSE))
    assert send(card, "805401000F" + "00000001" + "20250301083015" + "00000000" + "08")[1] == 0x6901


def test_wrong_mac1_is_9302_changes_nothing_and_closes_the_session() -> None:
    card, terminal = selected()
    before = card.image
    tx = terminal.purchase(100, bad_mac1=True, select=False)
    assert tx.sw == 0x9302
    assert card.image == before
    # no second try with the same INITIALIZE
    debit = "805401000F" + "00000001" + "20250301083015" + "00000000" + "08"
    assert send(card, debit)[1] == 0x6901


def test_debit_bad_p1_p2_and_lengths() -> None:
    card, _ = selected()
    assert send(card, "805001020B01000000010011223344550F")[1] == 0x9000
    assert send(card, "805402000F" + "00" * 15 + "08")[1] == 0x6A86
    assert send(card, "805401010F" + "00" * 15 + "08")[1] == 0x6A86
    assert send(card, "805401000E" + "00" * 14 + "08")[1] == 0x6700
    assert send(card, "805401000F" + "00" * 15 + "04")[1] == 0x6C08
    assert card.offline_counter == 0


# --- composite purchase ----------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ALGS)
def test_composite_purchase_commits_the_cached_0x1e_record_with_the_debit(alg: int) -> None:
    card, terminal = selected(alg)
    record = transit_record(200, 9_800)
    tx = terminal.purchase(200, capp=True, record=record, select=False)
    assert tx.ok and tx.steps == [0x9000, 0x9000, 0x9000]
    assert terminal.purchase_verifies(tx, tx.mac2, tx.tac)
    assert card.balance_fen == 9_800 and card.offline_counter == 1
    assert send(card, "00B201F430") == (record, 0x9000)
    assert LogRecord.decode(send(card, "00B201C417")[0]).tx_type == 0x09


def test_capp_cache_is_not_committed_by_the_update_alone_nor_by_a_failed_debit() -> None:
    card, terminal = selected()
    record = transit_record(200, 9_800)
    assert send(card, "805003020B01000000C80011223344550F")[1] == 0x9000
    assert send(card, apdu("80DC00F030") + record)[1] == 0x9000
    assert send(card, "00B201F430")[1] == 0x6A83
    tx = terminal.purchase(200, capp=True, record=record, bad_mac1=True, select=False)
    assert tx.sw == 0x9302
    assert send(card, "00B201F430")[1] == 0x6A83 and card.balance_fen == 10_000


def test_capp_without_cache_commits_no_transit_record() -> None:
    card, terminal = selected()
    assert terminal.purchase(0, capp=True, select=False).ok
    assert card.offline_counter == 1 and card.balance_fen == 10_000
    assert send(card, "00B201F430")[1] == 0x6A83


def test_update_capp_data_cache_errors() -> None:
    card, _ = selected()
    record = transit_record(1, 1)
    assert send(card, apdu("80DC00F030") + record)[1] == 0x6901  # no INITIALIZE
    assert send(card, "805001020B01000000010011223344550F")[1] == 0x9000
    assert send(card, apdu("80DC00F030") + record)[1] == 0x6901  # plain purchase, not CAPP
    assert send(card, "805003020B01000000010011223344550F")[1] == 0x9000
    assert send(card, apdu("80DC00D030") + record)[1] == 0x6A86  # SFI 0x1A
    assert send(card, apdu("80DC01F030") + record)[1] == 0x6A86
    assert send(card, apdu("80DC00F02F") + record[:47])[1] == 0x6700
    assert send(card, apdu("80DC00F030") + record)[1] == 0x9000


# --- load ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ALGS)
def test_load_commits_balance_online_counter_and_log(alg: int) -> None:
    card, terminal = selected(alg, balance_fen=500)
    tx = terminal.load(1_500, select=False)
    assert tx.ok and terminal.load_tac_verifies(tx, tx.tac)
    assert (card.balance_fen, card.online_counter, card.offline_counter) == (2_000, 1, 0)
    log = LogRecord.decode(send(card, "00B201C417")[0])
    assert log == LogRecord(0, 0, 1_500, 0x02, TERMINAL_ID, tx.date4, tx.time3)


def test_load_refused_above_the_purse_maximum() -> None:
    card, terminal = selected(balance_fen=PURSE_MAX_FEN - 100)
    assert terminal.load(101, select=False).sw == 0x9501
    assert terminal.load(100, select=False).ok
    assert card.balance_fen == PURSE_MAX_FEN
    assert terminal.load(0xFFFFFFFF, select=False).sw == 0x9501


def test_wrong_mac2_is_9302_and_changes_nothing() -> None:
    card, terminal = selected()
    before = card.image
    assert terminal.load(100, bad_mac2=True, select=False).sw == 0x9302
    assert card.image == before
    assert send(card, "805200000B" + "20250301083015" + "00000000" + "04")[1] == 0x6901


def test_credit_without_initialize_for_load_is_6901() -> None:
    card, _ = selected()
    assert send(card, "805200000B" + "20250301083015" + "00000000" + "04")[1] == 0x6901
    assert send(card, "805001020B01000000010011223344550F")[1] == 0x9000
    assert send(card, "805200000B" + "20250301083015" + "00000000" + "04")[1] == 0x6901


def test_credit_bad_p1_p2_and_lengths() -> None:
    card, _ = selected()
    assert send(card, "805000020B010000000100112233445510")[1] == 0x9000
    assert send(card, "805201000B" + "00" * 11 + "04")[1] == 0x6A86
    assert send(card, "805200000A" + "00" * 10 + "04")[1] == 0x6700
    assert send(card, "805000020B010000000100112233445504")[1] == 0x6C10


def test_counter_exhaustion_is_refused_before_it_wraps() -> None:
    image = make_image()
    image = dataclasses.replace(image, purse=PurseState(balance_fen=100, online_counter=0xFFFF, offline_counter=0xFFFE))
    card = make_card(image)
    terminal = Terminal(card, card.keys)
    assert terminal.purchase(1).ok
    assert card.offline_counter == 0xFFFF
    assert terminal.purchase(1).sw == 0x9402
    assert terminal.load(1).sw == 0x9402


# --- GET TRANSACTION PROVE ------------------------------------------------------------------------


@pytest.mark.parametrize("capp", [False, True])
def test_prove_answers_mac2_then_tac_for_a_committed_purchase(capp: bool) -> None:
    _, terminal = selected()
    tx = terminal.purchase(300, capp=capp, record=transit_record(300, 9_700) if capp else None)
    assert tx.ok and tx.counter is not None
    data, sw = terminal.prove(tx.tx_type, tx.counter + 1)
    assert sw == 0x9000 and data == tx.mac2 + tx.tac  # MAC2 first, unlike DEBIT
    assert terminal.purchase_verifies(tx, data[:4], data[4:])
    other = 0x06 if capp else 0x09
    assert terminal.prove(other, tx.counter + 1)[1] == 0x6A83  # wrong type
    assert terminal.prove(tx.tx_type, tx.counter)[1] == 0x6A83  # the INITIALIZE counter itself
    assert terminal.prove(tx.tx_type, tx.counter + 2)[1] == 0x6A83  # not yet


def test_prove_keeps_the_last_transactions_only() -> None:
    _, terminal = selected()
    txs = [terminal.purchase(1) for _ in range(10)]
    assert all(t.ok for t in txs)
    for tx in txs[:2]:
        assert tx.counter is not None and terminal.prove(0x06, tx.counter + 1)[1] == 0x6A83
    for tx in txs[2:]:
        assert tx.counter is not None and terminal.prove(0x06, tx.counter + 1) == (tx.mac2 + tx.tac, 0x9000)


def test_prove_survives_power_cycles_and_bad_parameters() -> None:
    card, terminal = selected()
    tx = terminal.purchase(5)
    card.power_off()
    card.power_on()
    send(card, select_apdu(AID_PURSE))
    assert terminal.prove(0x06, 1) == (tx.mac2 + tx.tac, 0x9000)
    assert send(card, "805A000202000108")[1] == 0x6A83  # P2 02 is a load: none committed
    for p1p2 in ("0001", "0000", "0003", "0012", "0106", "0102"):  # ED load, other types, P1 01
        assert send(card, "805A" + p1p2 + "02000108")[1] == 0x6A86
    assert send(card, "805A00060300000108")[1] == 0x6700
    assert send(card, "805A00060200010A")[1] == 0x6C08


# --- GET TRANSACTION PROVE of loads (project-defined: P2 02, online counter + 1) --------------------


@pytest.mark.parametrize("alg", ALGS)
def test_prove_answers_the_host_mac2_then_the_credit_tac_for_a_committed_load(alg: int) -> None:
    card, terminal = selected(alg, balance_fen=500)
    tx = terminal.load(1_500, select=False)
    assert tx.ok and tx.counter == 0 and tx.mac2
    data, sw = terminal.prove(crypto.TX_EP_LOAD, tx.counter + 1)
    assert sw == 0x9000 and len(data) == 8
    assert data[:4] == tx.mac2  # the MAC2 the host sent and the card accepted
    assert data[4:] == tx.tac  # exactly CREDIT FOR LOAD's TAC ...
    # ... which the host verifies with crypto.load_tac: balance after, the online counter
    # INITIALIZE FOR LOAD returned (before the load), amount, type 02, terminal, date, time
    assert data[4:] == crypto.load_tac(
        card.keys.dtk, 2_000, 0, 1_500, crypto.TX_EP_LOAD, TERMINAL_ID, tx.date4, tx.time3, alg
    )
    # a second load is proved by its own counter; the first one still is
    tx2 = terminal.load(100, select=False)
    assert terminal.prove(0x02, 2) == (tx2.mac2 + tx2.tac, 0x9000)
    assert terminal.prove(0x02, 1) == (data, 0x9000)


def test_prove_of_a_load_needs_its_exact_online_counter_and_type() -> None:
    card, terminal = selected()
    assert terminal.purchase(300, select=False).ok  # offline counter 0 -> 1
    tx = terminal.load(1_000, select=False)  # online counter 0 -> 1
    assert tx.ok
    assert terminal.prove(0x02, 0)[1] == 0x6A83  # the INITIALIZE counter itself
    assert terminal.prove(0x02, 2)[1] == 0x6A83  # not yet
    assert terminal.prove(0x02, 0xFFFF)[1] == 0x6A83
    # the purchase with offline counter 1 and the load with online counter 1 are apart
    assert terminal.prove(0x06, 1)[0][4:] != tx.tac
    assert terminal.prove(0x09, 1)[1] == 0x6A83
    assert terminal.prove(0x02, 1) == (tx.mac2 + tx.tac, 0x9000)
    assert send(card, "805A000202000110")[1] == 0x6C08
    assert send(card, "805A00020300000108")[1] == 0x6700


def test_an_uncommitted_load_is_not_provable() -> None:
    card, terminal = selected()
    # INITIALIZE FOR LOAD only: the host never sent MAC2
    assert send(card, "805000020B010000006400112233445510")[1] == 0x9000
    assert terminal.prove(0x02, 1)[1] == 0x6A83
    # a MAC2 the card refused
    assert terminal.load(100, bad_mac2=True, select=False).sw == 0x9302
    assert terminal.prove(0x02, 1)[1] == 0x6A83
    # refused for the purse maximum
    assert terminal.load(PURSE_MAX_FEN, select=False).sw == 0x9501
    assert terminal.prove(0x02, 1)[1] == 0x6A83
    assert card.online_counter == 0 and card.image.load_prove == ()


def test_loads_keep_their_last_proofs_apart_from_purchases() -> None:
    card, terminal = selected()
    loads = [terminal.load(1, select=False) for _ in range(10)]
    assert all(t.ok for t in loads)
    purchases = [terminal.purchase(1, select=False) for _ in range(10)]  # bus taps do not evict loads
    assert all(t.ok for t in purchases)
    for tx in loads[:2]:
        assert tx.counter is not None and terminal.prove(0x02, tx.counter + 1)[1] == 0x6A83
    for tx in loads[2:]:
        assert tx.counter is not None and terminal.prove(0x02, tx.counter + 1) == (tx.mac2 + tx.tac, 0x9000)
    assert len(card.image.load_prove) == len(card.image.prove) == 8


def test_a_blocked_card_still_proves_its_loads() -> None:
    card, terminal = selected()
    tx = terminal.load(700, select=False)
    assert terminal.block() == 0x9000
    card.power_off()
    card.power_on()
    assert send(card, select_apdu(AID_PURSE))[1] == 0x6283
    assert terminal.prove(0x02, 1) == (tx.mac2 + tx.tac, 0x9000)


# --- GET CHALLENGE + APPLICATION BLOCK ------------------------------------------------------------


@pytest.mark.parametrize("alg", ALGS)
def test_application_block_with_the_damk_mac_blocks_the_purse_for_good(alg: int) -> None:
    card, terminal = selected(alg)
    assert terminal.block() == 0x9000
    assert card.blocked
    fci, sw = send(card, select_apdu(AID_PURSE))
    assert sw == 0x6283 and fci[:2] == b"\x6f\x31"  # the FCI still comes with the warning
    assert terminal.purchase(1, select=False).sw == 0x9303
    assert terminal.purchase(1, capp=True, select=False).sw == 0x9303
    assert terminal.load(1, select=False).sw == 0x9303
    assert send(card, "805C000204") == ((10_000).to_bytes(4, "big"), 0x9000)  # reads still work
    assert send(card, "00B095001E")[1] == 0x9000
    assert send(card, "00B201C417")[1] == 0x6A83
    card.power_off()
    card.power_on()
    assert send(card, select_apdu(AID_PURSE))[1] == 0x6283
    assert send(card, "00A40000021001")[1] == 0x6283
    assert terminal.block() == 0x9303


def test_application_block_wrong_mac_is_6988_and_the_challenge_is_consumed() -> None:
    card, terminal = selected()
    assert terminal.block(bad_mac=True) == 0x6988
    assert not card.blocked
    challenge, _ = send(card, "0084000004")
    mac = crypto.secure_messaging_mac(card.keys.damk, challenge, bytes.fromhex("841E000004"))
    assert send(card, apdu("841E000004") + mac)[1] == 0x9000 and card.blocked is True
    # replaying the same MAC: the challenge was consumed
    card2, _ = selected()
    challenge2, _ = send(card2, "0084000004")
    mac2 = crypto.secure_messaging_mac(card2.keys.damk, challenge2, bytes.fromhex("841E000004"))
    assert send(card2, "0084000004")[1] == 0x9000  # a new challenge replaces the old
    assert send(card2, apdu("841E000004") + mac2)[1] == 0x6988
    assert send(card2, apdu("841E000004") + mac2)[1] == 0x6985  # no challenge left


def test_application_block_with_8_byte_challenge() -> None:
    card, _ = selected()
    challenge, _ = send(card, "0084000008")
    mac = crypto.secure_messaging_mac(card.keys.damk, challenge, bytes.fromhex("841E000004"))
    assert send(card, apdu("841E000004") + mac)[1] == 0x9000


def test_application_block_parameters() -> None:
    card, _ = selected()
    send(card, "0084000004")
    assert send(card, "841E000104" + "00000000")[1] == 0x6A86
    assert send(card, "041E000004" + "00000000")[1] == 0x6E00
    assert send(card, "841E000003" + "000000")[1] == 0x6700
    assert not card.blocked


def test_purse_commands_need_the_purse_selected() -> None:
    card = make_card()
    for cmd in ("805C000204", "805001020B01000000010011223344550F", "805A000602000108"):
        assert send(card, cmd)[1] == 0x6985


def test_test_keys_have_distinct_roles() -> None:
    keys = card_keys()
    assert len({keys.dpk, keys.dlk, keys.dtk, keys.damk}) == 4
