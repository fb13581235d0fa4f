"""The PSAM through real pcscd + vpcd + pyscard, in slot 1."""

from __future__ import annotations

import pytest

from cardos import crypto
from cardos.psam import Psam, psam_image_for_terminal
from cardos.vpcd import PORT_PSAM
from tests.pcsc_support import Insert, PcscEnv, wait_card_state

pytestmark = pytest.mark.pcsc

ISSUER = bytes.fromhex("01007120FFFFFFFF")
MPK = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")
TERMINAL = bytes.fromhex("360486600002")
ASN8 = bytes.fromhex("2016122100001003")


def transmit(connection: object, apdu: bytes) -> tuple[bytes, int]:
    data, sw1, sw2 = connection.transmit(list(apdu))  # type: ignore[attr-defined]
    return bytes(data), (sw1 << 8) | sw2


def test_psam_answers_select_files_and_init_sam_through_pcscd(pcscd: PcscEnv, vpcd_insert: Insert) -> None:
    from smartcard.System import readers

    psam = Psam(psam_image_for_terminal(TERMINAL, bytes(9) + b"\x07", {ISSUER: (MPK, MPK, 1, crypto.ALG_3DES)}))
    vpcd_insert(psam, PORT_PSAM)
    reader = next(r for r in readers() if str(r) == pcscd.psam_reader)
    conn = reader.createConnection()
    conn.connect()
    try:
        assert bytes(conn.getATR()) == Psam.ATR
        assert transmit(conn, bytes.fromhex("00A40000028011")) == (b"", 0x9000)
        assert transmit(conn, bytes.fromhex("00B0960006")) == (TERMINAL, 0x9000)
        assert transmit(conn, bytes.fromhex("00B0970001")) == (b"\x01", 0x9000)
        data = (
            bytes.fromhex("11223344")
            + (3).to_bytes(2, "big")
            + (150).to_bytes(4, "big")
            + b"\x09"
            + bytes.fromhex("20240301081500")
            + b"\x01\x00"
            + ASN8
            + ISSUER
        )
        out, sw = transmit(conn, bytes.fromhex("8070000024") + data + b"\x08")
        assert sw == 0x9000
        dpk = crypto.derive_card_key(MPK, ISSUER, ASN8)
        sespk = crypto.purchase_session_key(dpk, bytes.fromhex("11223344"), 3, 1)
        mac1 = crypto.mac(
            sespk, crypto.purchase_mac1_data(150, 9, TERMINAL, bytes.fromhex("20240301"), bytes.fromhex("081500"))
        )
        assert out == (1).to_bytes(4, "big") + mac1
    finally:
        conn.disconnect()


def test_stopping_the_emulator_removes_the_card(pcscd: PcscEnv, vpcd_insert: Insert) -> None:
    from smartcard.Exceptions import NoCardException
    from smartcard.System import readers

    handle = vpcd_insert(Psam(psam_image_for_terminal(TERMINAL, bytes(10), {})), PORT_PSAM)
    handle.stop()
    assert wait_card_state(pcscd.psam_reader, present=False)
    reader = next(r for r in readers() if str(r) == pcscd.psam_reader)
    with pytest.raises(NoCardException):
        reader.createConnection().connect()
