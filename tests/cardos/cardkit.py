"""Test helpers for the user card: cards with known keys and a tiny in-test terminal.

``Terminal`` plays validator, PSAM and issuer host at once: it computes MAC1, checks
MAC2 and TAC, and authorises loads with direct ``cardos.crypto`` calls using the card's
own (diversified) keys, so card tests need neither a PSAM nor a key store.

Import it as ``from cardkit import ...`` from tests in this directory (pytest puts it on
``sys.path``), or as ``tests.cardos.cardkit`` when pytest runs as ``python -m pytest``
(``make test``) so that the repository root is on ``sys.path``.
"""

from __future__ import annotations

import datetime as dt
import functools
import random
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from cardos import crypto
from cardos.apdu import split_response
from cardos.card import Card
from cardos.image import CardImage, CardKeys
from cardos.os import SmartCard
from cardos.personalise import AuthMaterial, personalise
from cardos.profile import AID_AUTH, AID_PURSE, CITY_CODES, ISSUER_XIANYANG, PURSE_KEY_INDEX, CardType
from cardos.records import INDUSTRY_BUS, TRANSIT_SINGLE, ManagementInfo, PublicInfo, TransitRecord, datetime7

PIN = "123456"
ASN = bytes.fromhex("03104000000000012345")
TERMINAL_ID = bytes.fromhex("001122334455")
MOMENT = dt.datetime(2025, 3, 1, 8, 30, 15)
BLOCK_HEADER = bytes.fromhex("841E000004")


def card_keys(alg_id: int = crypto.ALG_3DES, key_version: int = 1) -> CardKeys:
    """Fixed, distinct per-role keys; DPK is the published vector key."""
    return CardKeys(
        dpk=bytes.fromhex("11223344556677888877665544332211"),
        dlk=bytes.fromhex("2233445566778899AABBCCDDEEFF0011"),
        dtk=bytes.fromhex("0123456789ABCDEFFEDCBA9876543210"),
        damk=bytes.fromhex("A1A2A3A4A5A6A7A8B1B2B3B4B5B6B7B8"),
        key_version=key_version,
        alg_id=alg_id,
    )


def public_info(card_type: CardType = CardType.ORDINARY, asn: bytes = ASN) -> PublicInfo:
    return PublicInfo(
        issuer_id=ISSUER_XIANYANG,
        app_type=0x01,
        app_version=0x02,
        asn=asn,
        start_date=dt.date(2024, 1, 1),
        expiry_date=dt.date(2034, 12, 31),
        card_type=card_type,
    )


def management_info(card_type: CardType = CardType.ORDINARY) -> ManagementInfo:
    return ManagementInfo(
        country_code=bytes.fromhex("00000156"),
        province_code=bytes.fromhex("6100"),
        city_code=CITY_CODES["xianyang"],
        interoperable=True,
        card_type=card_type,
    )


HOLDER = bytes([0x01, 0x00]) + b"ZHANG SAN".ljust(20, b"\x00") + b"610402199001011234".ljust(32, b"\x00") + b"\x00"


@functools.cache
def auth_material(pin: str = PIN) -> AuthMaterial:
    """An EC P-256 key and a self-signed certificate whose subject is the ASN."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ASN.hex().upper())])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(dt.datetime(2024, 1, 1, tzinfo=dt.UTC))
        .not_valid_after(dt.datetime(2034, 1, 1, tzinfo=dt.UTC))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("card.yikatong.test")] * 8), critical=False)
        .sign(key, hashes.SHA256())
    )
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return AuthMaterial(pem, cert.public_bytes(serialization.Encoding.DER), pin)


def make_image(
    *,
    alg_id: int = crypto.ALG_3DES,
    balance_fen: int = 10_000,
    card_type: CardType = CardType.ORDINARY,
    with_auth: bool | None = None,
) -> CardImage:
    """A fresh image; social security cards get the holder file and auth material."""
    social = card_type is CardType.SOCIAL_SECURITY
    auth = auth_material() if (with_auth if with_auth is not None else social) else None
    return personalise(
        keys=card_keys(alg_id),
        public=public_info(card_type),
        management=management_info(card_type),
        holder=HOLDER if social else None,
        balance_fen=balance_fen,
        auth=auth,
    )


def make_card(image: CardImage | None = None, *, seed: int | None = 1, **image_args: object) -> Card:
    """A powered card; ``seed`` makes its randoms reproducible (None: os.urandom)."""
    image = image or make_image(**image_args)  # type: ignore[arg-type]
    if seed is None:
        card = Card(image)
    else:
        rng = random.Random(seed)
        card = Card(image, random_bytes=rng.randbytes)
    card.power_on()
    return card


def apdu(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


def select_apdu(aid: bytes) -> bytes:
    return bytes([0x00, 0xA4, 0x04, 0x00, len(aid)]) + aid + b"\x00"


@dataclass(slots=True)
class Tx:
    """What the terminal knows of one transaction, filled in step by step (so a tear leaves it)."""

    kind: str  # "purchase", "capp" or "load"
    amount_fen: int
    date4: bytes
    time3: bytes
    terminal_seq: int = 0
    counter: int | None = None  # CTC / online counter INITIALIZE returned
    balance_before: int | None = None
    card_random: bytes = b""
    session_key: bytes = b""
    sw: int | None = None  # of the final step
    tac: bytes = b""
    mac2: bytes = b""  # purchase: the card's, from DEBIT; load: the host's, sent in CREDIT FOR LOAD
    steps: list[int] = field(default_factory=list)  # SW of every APDU that answered

    @property
    def tx_type(self) -> int:
        return {
            "purchase": crypto.TX_EP_PURCHASE,
            "capp": crypto.TX_CAPP_PURCHASE,
            "load": crypto.TX_EP_LOAD,
        }[self.kind]

    @property
    def ok(self) -> bool:
        return self.sw == 0x9000


class Terminal:
    """Validator + PSAM + issuer host in one, computing with ``cardos.crypto`` directly."""

    def __init__(self, card: SmartCard, keys: CardKeys, terminal_id: bytes = TERMINAL_ID, terminal_seq: int = 1):
        self.card = card
        self.keys = keys
        self.terminal_id = terminal_id
        self.terminal_seq = terminal_seq
        self.last: Tx | None = None

    def send(self, raw: bytes) -> tuple[bytes, int]:
        return split_response(self.card.transmit(raw))

    def select_purse(self) -> tuple[bytes, int]:
        return self.send(select_apdu(AID_PURSE))

    def select_auth(self) -> tuple[bytes, int]:
        return self.send(select_apdu(AID_AUTH))

    def _step(self, tx: Tx, raw: bytes) -> tuple[bytes, int]:
        data, sw = self.send(raw)
        tx.steps.append(sw)
        return data, sw

    # --- purchase and composite purchase (sections 3, 4) ----------------------------------
    def purchase(
        self,
        amount_fen: int,
        *,
        capp: bool = False,
        record: bytes | None = None,
        moment: dt.datetime = MOMENT,
        bad_mac1: bool = False,
        select: bool = True,
    ) -> Tx:
        """SELECT, INITIALIZE [, UPDATE CAPP DATA CACHE], DEBIT; raises CardTorn on a tear."""
        stamp = datetime7(moment)
        tx = Tx("capp" if capp else "purchase", amount_fen, stamp[:4], stamp[4:])
        self.last = tx
        if select:
            _, sw = self._step(tx, select_apdu(AID_PURSE))
            if sw != 0x9000:
                tx.sw = sw
                return tx
        p1 = 0x03 if capp else 0x01
        init = bytes([0x80, 0x50, p1, 0x02, 0x0B, PURSE_KEY_INDEX]) + amount_fen.to_bytes(4, "big")
        data, sw = self._step(tx, init + self.terminal_id + b"\x0f")
        if sw != 0x9000:
            tx.sw = sw
            return tx
        assert len(data) == 15, data.hex()
        assert data[9] == self.keys.key_version and data[10] == self.keys.alg_id
        tx.balance_before = int.from_bytes(data[0:4], "big")
        tx.counter = int.from_bytes(data[4:6], "big")
        tx.card_random = data[11:15]
        # PSAM: INIT SAM FOR PURCHASE -> terminal sequence and MAC1
        tx.terminal_seq = self.terminal_seq
        self.terminal_seq += 1
        alg = self.keys.alg_id
        sk = crypto.purchase_session_key(self.keys.dpk, tx.card_random, tx.counter, tx.terminal_seq, alg)
        tx.session_key = sk
        mac1 = crypto.mac(
            sk, crypto.purchase_mac1_data(amount_fen, tx.tx_type, self.terminal_id, tx.date4, tx.time3), alg
        )
        if bad_mac1:
            mac1 = bytes([mac1[0] ^ 0x01]) + mac1[1:]
        if capp and record is not None:
            _, sw = self._step(tx, apdu("80DC00F030") + record)
            if sw != 0x9000:
                tx.sw = sw
                return tx
        debit = apdu("805401000F") + tx.terminal_seq.to_bytes(4, "big") + stamp + mac1 + b"\x08"
        data, sw = self._step(tx, debit)
        tx.sw = sw
        if sw == 0x9000:
            assert len(data) == 8
            tx.tac, tx.mac2 = data[:4], data[4:]
        return tx

    def purchase_verifies(self, tx: Tx, mac2: bytes, tac: bytes) -> bool:
        """PSAM CREDIT SAM FOR PURCHASE (MAC2) and the clearing centre's TAC check."""
        assert tx.counter is not None
        alg = self.keys.alg_id
        want_mac2 = crypto.mac(tx.session_key, crypto.purchase_mac2_data(tx.amount_fen), alg)
        want_tac = crypto.purchase_tac(
            self.keys.dtk, tx.amount_fen, tx.tx_type, self.terminal_id, tx.terminal_seq, tx.date4, tx.time3, alg
        )
        return mac2 == want_mac2 and tac == want_tac

    # --- load (section 5) -------------------------------------------------------------------
    def load(self, amount_fen: int, *, moment: dt.datetime = MOMENT, bad_mac2: bool = False, select: bool = True) -> Tx:
        """SELECT, INITIALIZE FOR LOAD, (host checks MAC1, makes MAC2), CREDIT FOR LOAD."""
        stamp = datetime7(moment)
        tx = Tx("load", amount_fen, stamp[:4], stamp[4:])
        self.last = tx
        if select:
            _, sw = self._step(tx, select_apdu(AID_PURSE))
            if sw != 0x9000:
                tx.sw = sw
                return tx
        init = bytes([0x80, 0x50, 0x00, 0x02, 0x0B, PURSE_KEY_INDEX]) + amount_fen.to_bytes(4, "big")
        data, sw = self._step(tx, init + self.terminal_id + b"\x10")
        if sw != 0x9000:
            tx.sw = sw
            return tx
        assert len(data) == 16, data.hex()
        tx.balance_before = int.from_bytes(data[0:4], "big")
        tx.counter = int.from_bytes(data[4:6], "big")
        assert data[6] == self.keys.key_version and data[7] == self.keys.alg_id
        tx.card_random = data[8:12]
        alg = self.keys.alg_id
        sk = crypto.load_session_key(self.keys.dlk, tx.card_random, tx.counter, alg)
        tx.session_key = sk
        mac1 = crypto.mac(sk, crypto.load_mac1_data(tx.balance_before, amount_fen, tx.tx_type, self.terminal_id), alg)
        assert data[12:16] == mac1, "card MAC1 does not verify at the host"
        mac2 = crypto.mac(sk, crypto.load_mac2_data(amount_fen, tx.tx_type, self.terminal_id, tx.date4, tx.time3), alg)
        if bad_mac2:
            mac2 = bytes([mac2[0] ^ 0x80]) + mac2[1:]
        tx.mac2 = mac2
        data, sw = self._step(tx, apdu("805200000B") + stamp + mac2 + b"\x04")
        tx.sw = sw
        if sw == 0x9000:
            tx.tac = data
        return tx

    def load_tac_verifies(self, tx: Tx, tac: bytes) -> bool:
        assert tx.counter is not None and tx.balance_before is not None
        want = crypto.load_tac(
            self.keys.dtk,
            tx.balance_before + tx.amount_fen,
            tx.counter,
            tx.amount_fen,
            tx.tx_type,
            self.terminal_id,
            tx.date4,
            tx.time3,
            self.keys.alg_id,
        )
        return tac == want

    # --- tear recovery, denylist ------------------------------------------------------------
    def prove(self, tx_type: int, counter: int) -> tuple[bytes, int]:
        """GET TRANSACTION PROVE with counter = INITIALIZE's CTC + 1 (section 8).

        For a load (``tx_type`` 02) the counter is the online counter INITIALIZE FOR LOAD
        returned + 1.
        """
        return self.send(bytes([0x80, 0x5A, 0x00, tx_type, 0x02]) + counter.to_bytes(2, "big") + b"\x08")

    def block(self, *, bad_mac: bool = False) -> int:
        """GET CHALLENGE then APPLICATION BLOCK with the DAMK MAC (section 9)."""
        challenge, sw = self.send(apdu("0084000004"))
        assert sw == 0x9000 and len(challenge) == 4
        mac = crypto.secure_messaging_mac(self.keys.damk, challenge, BLOCK_HEADER, self.keys.alg_id)
        if bad_mac:
            mac = bytes([mac[0] ^ 0xFF]) + mac[1:]
        _, sw = self.send(BLOCK_HEADER + mac)
        return sw


def transit_record(amount_fen: int, balance_after_fen: int, station: int = 7) -> bytes:
    """A 48-byte 0x1E record as a bus validator would cache it."""
    return TransitRecord(
        tx_type=TRANSIT_SINGLE,
        terminal_id=TERMINAL_ID,
        industry=INDUSTRY_BUS,
        line=12,
        station=station,
        operator=3,
        amount_fen=amount_fen,
        balance_after_fen=balance_after_fen,
        moment=MOMENT,
        acquirer_city=CITY_CODES["xianyang"],
        acquirer_id=ISSUER_XIANYANG,
    ).encode()
