"""Real pcscd + vpcd for tests: a session fixture, card insertion and reader-state waits.

Used by ``tests/pcsc`` and by any other test directory that needs real PC/SC readers
(terminals): import the fixtures into that directory's ``conftest.py``::

    from tests.pcsc_support import pcscd, vpcd_insert  # noqa: F401

The ``pcscd`` fixture reuses a running pcscd when it answers and lists the two vpcd
readers; otherwise it starts ``pcscd --foreground`` and stops it after the session. A
missing pcscd, vpcd driver or pyscard goes through ``tests.conftest.require``: a skip
locally, a failure under ``CI=true``.

The vpcd slots are one shared resource per machine (one card per TCP port), so the
fixture holds an exclusive ``flock`` on ``/tmp/yikatong-vpcd.lock`` for the whole session:
two pytest sessions (two engineers, or xdist-free parallel runs) queue instead of
inserting cards into each other's readers.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cardos.os import SmartCard
from cardos.vpcd import PORT_CARD, PORT_PSAM, VpcdClient, VpcdHandle
from tests.conftest import require

READER_CARD = "Virtual PCD 00 00"
READER_PSAM = "Virtual PCD 00 01"
PCSCD_CANDIDATES = ("/usr/sbin/pcscd", "/usr/local/sbin/pcscd")
VPCD_DRIVER_GLOB = "/usr/lib/pcsc/drivers/serial/libifdvpcd.so*"
LOCK_PATH = Path(tempfile.gettempdir()) / "yikatong-vpcd.lock"
LOCK_WAIT_S = 600.0
PCSCD_START_S = 15.0
CARD_STATE_S = 5.0


@dataclass(frozen=True, slots=True)
class PcscEnv:
    """Where the two vpcd slots are: slot 0 for the card, slot 1 for the PSAM."""

    card_reader: str
    psam_reader: str
    card_port: int
    psam_port: int
    started_pcscd: bool

    def reader_for_port(self, port: int) -> str:
        return self.card_reader if port == self.card_port else self.psam_reader


def _scard() -> Any:
    from smartcard import scard

    return scard


def list_readers() -> list[str] | None:
    """Reader names, or ``None`` when no pcscd answers on its socket."""
    scard = _scard()
    rv, ctx = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
    if rv != scard.SCARD_S_SUCCESS:
        return None
    try:
        rv, names = scard.SCardListReaders(ctx, [])
        if rv == scard.SCARD_E_NO_READERS_AVAILABLE:
            return []
        return list(names) if rv == scard.SCARD_S_SUCCESS else None
    finally:
        scard.SCardReleaseContext(ctx)


def wait_card_state(reader: str, *, present: bool, timeout_s: float = CARD_STATE_S) -> bool:
    """Block until pcscd reports a card present in (or absent from) ``reader``."""
    scard = _scard()
    rv, ctx = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
    assert rv == scard.SCARD_S_SUCCESS, scard.SCardGetErrorMessage(rv)
    try:
        known = scard.SCARD_STATE_UNAWARE
        deadline = time.monotonic() + timeout_s
        while True:
            left_ms = max(0, int((deadline - time.monotonic()) * 1000))
            rv, states = scard.SCardGetStatusChange(ctx, left_ms, [(reader, known)])
            if rv == scard.SCARD_S_SUCCESS:
                _, event, _ = states[0]
                if bool(event & scard.SCARD_STATE_PRESENT) == present:
                    return True
                known = event & ~scard.SCARD_STATE_CHANGED
            elif rv != scard.SCARD_E_TIMEOUT:
                raise RuntimeError(f"SCardGetStatusChange({reader}): {scard.SCardGetErrorMessage(rv)}")
            if time.monotonic() >= deadline:
                return False
    finally:
        scard.SCardReleaseContext(ctx)


def _prerequisites() -> str:
    """The pcscd binary, after checking pyscard and the vpcd driver (require() otherwise)."""
    try:
        import smartcard.scard  # noqa: F401
    except ImportError as exc:
        require(False, f"pyscard not installed: {exc}")
    pcscd_bin = next((p for p in PCSCD_CANDIDATES if os.access(p, os.X_OK)), None) or shutil.which("pcscd")
    require(pcscd_bin is not None, "pcscd not found (Debian package pcscd)")
    require(bool(glob.glob(VPCD_DRIVER_GLOB)), f"vpcd driver not found at {VPCD_DRIVER_GLOB} (vsmartcard-vpcd)")
    assert pcscd_bin is not None
    return pcscd_bin


@contextlib.contextmanager
def _slots_lock(timeout_s: float = LOCK_WAIT_S) -> Iterator[None]:
    with open(LOCK_PATH, "a+") as lock:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.fail(f"vpcd slots still locked by another session after {timeout_s:.0f} s ({LOCK_PATH})")
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _start_pcscd(pcscd_bin: str, log_path: Path) -> subprocess.Popen[bytes]:
    log = open(log_path, "wb")  # noqa: SIM115 - lives as long as the process
    return subprocess.Popen([pcscd_bin, "--foreground"], stdout=log, stderr=subprocess.STDOUT)


def _wait_vpcd_readers(proc: subprocess.Popen[bytes] | None, log_path: Path) -> list[str]:
    deadline = time.monotonic() + PCSCD_START_S
    readers: list[str] | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            break
        readers = list_readers()
        if readers is not None and READER_CARD in readers and READER_PSAM in readers:
            return readers
        time.sleep(0.1)
    tail = log_path.read_text(errors="replace")[-400:] if log_path.exists() else ""
    pytest.fail(f"pcscd did not show {READER_CARD!r} and {READER_PSAM!r} (readers {readers}); log: {tail}")


@pytest.fixture(scope="session")
def pcscd() -> Iterator[PcscEnv]:
    """Real pcscd with the vpcd driver, its two slots locked for this session."""
    pcscd_bin = _prerequisites()
    with _slots_lock():
        proc: subprocess.Popen[bytes] | None = None
        log_path = Path(tempfile.gettempdir()) / f"yikatong-pcscd-{os.getpid()}.log"
        readers = list_readers()
        if readers is None:
            proc = _start_pcscd(pcscd_bin, log_path)
        elif READER_CARD not in readers or READER_PSAM not in readers:
            require(False, f"the running pcscd has no vpcd readers (readers: {readers})")
        try:
            _wait_vpcd_readers(proc, log_path)
            yield PcscEnv(READER_CARD, READER_PSAM, PORT_CARD, PORT_PSAM, started_pcscd=proc is not None)
        finally:
            if proc is not None:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
                log_path.unlink(missing_ok=True)


Insert = Callable[..., VpcdHandle]


@pytest.fixture
def vpcd_insert(pcscd: PcscEnv) -> Iterator[Insert]:
    """``insert(card, port=PORT_CARD)``: put a card in a vpcd slot until the test ends.

    Returns once pcscd reports the card present; at teardown the card is removed and the
    fixture waits until pcscd sees the slot empty, so the next test starts clean.
    """
    inserted: list[tuple[VpcdHandle, str]] = []

    def insert(card: SmartCard, port: int = PORT_CARD, **client_kwargs: Any) -> VpcdHandle:
        reader = pcscd.reader_for_port(port)
        handle = VpcdClient(card, port=port, **client_kwargs).serve_in_thread()
        inserted.append((handle, reader))
        assert wait_card_state(reader, present=True), f"pcscd did not see the card in {reader}"
        return handle

    yield insert
    for handle, reader in inserted:
        handle.stop()
        wait_card_state(reader, present=False)


# --- validator flows over any transmit function (in-process or pyscard) -----------------------

Transmit = Callable[[bytes], bytes]
MASTER_KEYS = {
    "mpk": bytes.fromhex("0123456789ABCDEFFEDCBA9876543210"),
    "mlk": bytes.fromhex("11223344556677888877665544332211"),
    "mtk": bytes.fromhex("A1A2A3A4A5A6A7A8B1B2B3B4B5B6B7B8"),
    "mamk": bytes.fromhex("00112233445566778899AABBCCDDEEFF"),
}
KEY_VERSION = 0x01
CARD_ASN = bytes.fromhex("03104000000000012345")  # the card of the card_path fixture
OPENING_FEN = 5_000
VALIDATOR_ID = bytes.fromhex("360486600002")
SELECT_PURSE = bytes.fromhex("00A4040008A00000063201010500")
SELECT_PSAM_DF = bytes.fromhex("00A40000028011")


def derived_keys(issuer_id: bytes, asn: bytes, alg: int = 0x00, key_version: int = KEY_VERSION) -> Any:
    """A card's keys diversified from ``MASTER_KEYS``, as issuance derives them."""
    from cardos import crypto
    from cardos.image import CardKeys

    def key(name: str) -> bytes:
        return crypto.derive_card_key(MASTER_KEYS[name], issuer_id, asn, alg)

    return CardKeys(key("mpk"), key("mlk"), key("mtk"), key("mamk"), key_version=key_version, alg_id=alg)


def field_psam_image(issuers: dict[bytes, int], terminal_id: bytes = VALIDATOR_ID) -> Any:
    """A validator PSAM holding MPK and MAMK of ``issuers`` (issuer id -> alg id)."""
    from cardos.psam import psam_image_for_terminal

    held = {issuer: (MASTER_KEYS["mpk"], MASTER_KEYS["mamk"], KEY_VERSION, alg) for issuer, alg in issuers.items()}
    return psam_image_for_terminal(terminal_id, bytes.fromhex("00000000000000000001"), held)


def pyscard_transmit(connection: Any) -> Transmit:
    """A pyscard connection as ``bytes -> data || SW1 SW2``."""

    def transmit(apdu: bytes) -> bytes:
        data, sw1, sw2 = connection.transmit(list(apdu))
        return bytes(data) + bytes((sw1, sw2))

    return transmit


def connect(reader_name: str) -> Any:
    from smartcard.System import readers

    reader = next(r for r in readers() if str(r) == reader_name)
    connection = reader.createConnection()
    connection.connect()
    return connection


def expect_ok(transmit: Transmit, apdu: bytes) -> bytes:
    resp = transmit(apdu)
    assert resp[-2:] == b"\x90\x00", f"{apdu.hex()} -> {resp.hex()}"
    return resp[:-2]


@dataclass(frozen=True, slots=True)
class Purchase:
    """What the validator keeps of one composite purchase (section 10, "Fields recorded")."""

    public: bytes  # file 0x15 from the FCI
    balance_before_fen: int
    ctc: int
    ttc: int
    date4: bytes
    time3: bytes
    tac: bytes
    mac2: bytes
    credit_sam_sw: int  # PSAM's answer to MAC2


def composite_purchase(card: Transmit, psam: Transmit, amount_fen: int, date_time7: bytes) -> Purchase:
    """SELECT, GET BALANCE, 80 50 03, PSAM 80 70, 80 DC, 80 54, PSAM 80 72 (section 10)."""
    fci = expect_ok(card, SELECT_PURSE)
    at = fci.index(b"\x9f\x0c\x1e") + 3
    public = fci[at : at + 30]
    expect_ok(card, bytes.fromhex("805C000204"))
    init = expect_ok(card, bytes.fromhex("805003020B01") + amount_fen.to_bytes(4, "big") + VALIDATOR_ID + b"\x0f")
    balance, ctc = int.from_bytes(init[0:4], "big"), int.from_bytes(init[4:6], "big")
    sam_data = (
        init[11:15]
        + init[4:6]
        + amount_fen.to_bytes(4, "big")
        + b"\x09"
        + date_time7
        + init[9:11]
        + public[12:20]
        + public[0:8]
    )
    sam = expect_ok(psam, bytes.fromhex("8070000024") + sam_data + b"\x08")
    record = b"\x06" + bytes(2) + VALIDATOR_ID + bytes(39)
    expect_ok(card, bytes.fromhex("80DC00F030") + record)
    debit = expect_ok(card, bytes.fromhex("805401000F") + sam[0:4] + date_time7 + sam[4:8] + b"\x08")
    credit = psam(bytes.fromhex("8072000004") + debit[4:8])
    return Purchase(
        public=public,
        balance_before_fen=balance,
        ctc=ctc,
        ttc=int.from_bytes(sam[0:4], "big"),
        date4=date_time7[:4],
        time3=date_time7[4:],
        tac=debit[0:4],
        mac2=debit[4:8],
        credit_sam_sw=int.from_bytes(credit[-2:], "big"),
    )


def application_block(card: Transmit, psam: Transmit, public: bytes) -> int:
    """Section 9 with the PSAM computing the MAC; returns the card's status word."""
    expect_ok(psam, bytes.fromhex("801A4500 10") + public[12:20] + public[0:8])
    challenge = expect_ok(card, bytes.fromhex("0084000004"))
    header = bytes.fromhex("841E000004")
    mac = expect_ok(psam, bytes.fromhex("80FA0500 10") + challenge + bytes(4) + header + bytes.fromhex("800000"))
    return int.from_bytes(card(header + mac)[-2:], "big")


@contextlib.contextmanager
def reader_agent_process(origin: str, port: int, reader: str, start_s: float = 20.0) -> Iterator[str]:
    """``yikatong reader-agent`` as a citizen starts it, for ``origin`` and ``reader``; its URL once it answers."""
    import sys

    import httpx

    url = f"http://127.0.0.1:{port}"
    args = ["reader-agent", "--origin", origin, "--port", str(port), "--reader", reader]
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen([sys.executable, "-m", "yikatong.cli", *args], stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + start_s
            while True:
                if proc.poll() is not None:
                    log.seek(0)
                    pytest.fail(f"the agent exited with {proc.returncode}: {log.read().decode(errors='replace')}")
                with contextlib.suppress(httpx.TransportError):
                    if httpx.get(f"{url}/status", timeout=1).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    pytest.fail(f"the agent did not answer on {url} within {start_s} s")
                time.sleep(0.1)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
