"""The user card through real pcscd + vpcd + pyscard: card in slot 0, PSAM in slot 1.

The card and the PSAM are served by ``VpcdClient`` threads of this process, with their
images on disk as ``yikatong card emulate`` keeps them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cardos import crypto
from cardos.card import Card
from cardos.image import CardImage
from cardos.os import TearPlan
from cardos.profile import ISSUER_XIANYANG
from cardos.psam import Psam, PsamImage
from cardos.vpcd import PORT_CARD, PORT_PSAM, EndReason
from tests.pcsc_support import (
    CARD_ASN,
    OPENING_FEN,
    SELECT_PSAM_DF,
    SELECT_PURSE,
    Insert,
    PcscEnv,
    application_block,
    composite_purchase,
    connect,
    expect_ok,
    pyscard_transmit,
    wait_card_state,
)

pytestmark = pytest.mark.pcsc

STAMP = bytes.fromhex("20250301083015")


def test_select_read_public_file_and_balance(pcscd: PcscEnv, vpcd_insert: Insert, card_path: Path) -> None:
    vpcd_insert(Card.load(card_path), PORT_CARD)
    conn = connect(pcscd.card_reader)
    try:
        card = pyscard_transmit(conn)
        fci = expect_ok(card, SELECT_PURSE)
        public = expect_ok(card, bytes.fromhex("00B095001E"))
        assert public[10:20] == CARD_ASN and public[0:8] == ISSUER_XIANYANG
        assert b"\x9f\x0c\x1e" + public in fci
        assert expect_ok(card, bytes.fromhex("805C000204")) == OPENING_FEN.to_bytes(4, "big")
    finally:
        conn.disconnect()


def test_composite_purchase_with_the_psam_in_the_second_slot(
    pcscd: PcscEnv, vpcd_insert: Insert, card_path: Path, psam_path: Path
) -> None:
    card_os, psam_os = Card.load(card_path), Psam.from_file(psam_path)
    vpcd_insert(card_os, PORT_CARD)
    vpcd_insert(psam_os, PORT_PSAM)
    card_conn, psam_conn = connect(pcscd.card_reader), connect(pcscd.psam_reader)
    try:
        psam = pyscard_transmit(psam_conn)
        expect_ok(psam, SELECT_PSAM_DF)
        p = composite_purchase(pyscard_transmit(card_conn), psam, 230, STAMP)
    finally:
        card_conn.disconnect()
        psam_conn.disconnect()
    assert p.credit_sam_sw == 0x9000
    dtk = card_os.keys.dtk
    terminal = psam_os.image.terminal_id
    assert p.tac == crypto.purchase_tac(dtk, 230, crypto.TX_CAPP_PURCHASE, terminal, p.ttc, p.date4, p.time3)
    # Both images were written back at their commit points.
    assert CardImage.load(card_path).purse.balance_fen == OPENING_FEN - 230
    assert PsamImage.load(psam_path).ttc_next == p.ttc + 1


def test_load_with_the_issuer_host_played_by_crypto(pcscd: PcscEnv, vpcd_insert: Insert, card_path: Path) -> None:
    card_os = Card.load(card_path)
    dlk, dtk = card_os.keys.dlk, card_os.keys.dtk
    vpcd_insert(card_os, PORT_CARD)
    conn = connect(pcscd.card_reader)
    terminal, amount, date4, time3 = bytes.fromhex("010203040506"), 10_000, STAMP[:4], STAMP[4:]
    try:
        card = pyscard_transmit(conn)
        expect_ok(card, SELECT_PURSE)
        init = expect_ok(card, bytes.fromhex("805000020B01") + amount.to_bytes(4, "big") + terminal + b"\x10")
        balance, online, card_random = int.from_bytes(init[0:4], "big"), int.from_bytes(init[4:6], "big"), init[8:12]
        seslk = crypto.load_session_key(dlk, card_random, online)
        assert init[12:16] == crypto.mac(seslk, crypto.load_mac1_data(balance, amount, crypto.TX_EP_LOAD, terminal))
        mac2 = crypto.mac(seslk, crypto.load_mac2_data(amount, crypto.TX_EP_LOAD, terminal, date4, time3))
        tac = expect_ok(card, bytes.fromhex("805200000B") + date4 + time3 + mac2 + b"\x04")
        assert tac == crypto.load_tac(dtk, balance + amount, online, amount, crypto.TX_EP_LOAD, terminal, date4, time3)
        assert expect_ok(card, bytes.fromhex("805C000204")) == (OPENING_FEN + amount).to_bytes(4, "big")
        # a host that lost that TAC gets it back (project-defined P2 02, online counter + 1)
        assert expect_ok(card, bytes.fromhex("805A000202") + (online + 1).to_bytes(2, "big") + b"\x08") == mac2 + tac
    finally:
        conn.disconnect()
    assert CardImage.load(card_path).purse.balance_fen == OPENING_FEN + amount


def test_a_one_byte_apdu_gets_an_answer_through_pcscd(pcscd: PcscEnv, vpcd_insert: Insert, card_path: Path) -> None:
    """vpcd forwards it as a 1-byte frame; it is not a control byte, so the card answers 6700."""
    vpcd_insert(Card.load(card_path), PORT_CARD)
    conn = connect(pcscd.card_reader)
    try:
        card = pyscard_transmit(conn)
        assert card(b"\x09") == b"\x67\x00"
        assert card(b"\x09\x00") == b"\x67\x00"
        expect_ok(card, SELECT_PURSE)  # and the reader carries on
    finally:
        conn.disconnect()


def test_torn_debit_removes_the_card_and_prove_recovers_it_on_reinsertion(
    pcscd: PcscEnv, vpcd_insert: Insert, card_path: Path, psam_path: Path
) -> None:
    """Section 8 end to end: the card leaves mid-DEBIT (after its commit), comes back, proves."""
    from smartcard.Exceptions import CardConnectionException

    card_os, psam_os = Card.load(card_path), Psam.from_file(psam_path)
    card_handle = vpcd_insert(card_os, PORT_CARD)
    vpcd_insert(psam_os, PORT_PSAM)
    psam_conn = connect(pcscd.psam_reader)
    psam = pyscard_transmit(psam_conn)
    expect_ok(psam, SELECT_PSAM_DF)
    card_conn = connect(pcscd.card_reader)
    # select, balance, init, update cache, DEBIT: the 5th APDU since power on
    card_os.tear = TearPlan(at_apdu=5, phase="after_commit")
    with pytest.raises((AssertionError, CardConnectionException)):
        composite_purchase(pyscard_transmit(card_conn), psam, 120, STAMP)
    assert card_handle.wait_ended() is EndReason.TORN
    assert wait_card_state(pcscd.card_reader, present=False)
    card_conn.release()
    vpcd_insert(card_os, PORT_CARD)  # the rider taps again
    card_conn = connect(pcscd.card_reader)
    try:
        card = pyscard_transmit(card_conn)
        expect_ok(card, SELECT_PURSE)
        proof = expect_ok(card, bytes.fromhex("805A000902") + (0 + 1).to_bytes(2, "big") + b"\x08")
        mac2 = proof[:4]
        assert psam(bytes.fromhex("8072000004") + mac2)[-2:] == b"\x90\x00"  # the debit did happen
    finally:
        card_conn.disconnect()
        psam_conn.disconnect()
    assert CardImage.load(card_path).purse.balance_fen == OPENING_FEN - 120


def test_application_block_through_both_readers(
    pcscd: PcscEnv, vpcd_insert: Insert, card_path: Path, psam_path: Path
) -> None:
    vpcd_insert(Card.load(card_path), PORT_CARD)
    vpcd_insert(Psam.from_file(psam_path), PORT_PSAM)
    card_conn, psam_conn = connect(pcscd.card_reader), connect(pcscd.psam_reader)
    try:
        card, psam = pyscard_transmit(card_conn), pyscard_transmit(psam_conn)
        expect_ok(psam, SELECT_PSAM_DF)
        expect_ok(card, SELECT_PURSE)
        public = expect_ok(card, bytes.fromhex("00B095001E"))
        assert application_block(card, psam, public) == 0x9000
        assert card(SELECT_PURSE)[-2:] == b"\x62\x83"
    finally:
        card_conn.disconnect()
        psam_conn.disconnect()
    assert CardImage.load(card_path).purse.blocked


def test_stopping_the_emulator_removes_the_card_under_an_open_connection(
    pcscd: PcscEnv, vpcd_insert: Insert, card_path: Path
) -> None:
    from smartcard.Exceptions import CardConnectionException

    handle = vpcd_insert(Card.load(card_path), PORT_CARD)
    conn = connect(pcscd.card_reader)
    expect_ok(pyscard_transmit(conn), SELECT_PURSE)
    handle.stop()
    assert handle.wait_ended() is EndReason.STOPPED
    assert wait_card_state(pcscd.card_reader, present=False)
    with pytest.raises(CardConnectionException):
        conn.transmit(list(bytes.fromhex("805C000204")))
    conn.release()
