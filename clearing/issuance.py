"""Issue a card (``ARCHITECTURE.md`` flow 1): keys, files, auth certificate, image, registry, ledger.

``issue_card`` works in the caller's transaction and returns the card image without
writing it: the caller writes the image (``CardImage.save_atomic``) and then commits, and
deletes the file if the commit fails, so a registered card always has an image and an
image always belongs to a registered card.

Project-defined choices (``card-profile.md`` leaves them to the issuer), kept here:
* ASN: 20 digits, ``<the issuer's city code, 4 digits><16-digit serial>``; serials come
  from the counter ``asn:<issuer_id>`` and skip ASNs registered by hand (``--asn``);
* file 0x15: application type 01, version 01, valid from the issue date for
  ``VALIDITY_YEARS`` years; file 0x17: country 0156, province 6100 (Shaanxi), the issuer's
  city code, interoperable;
* which issuers we issue for is data: the issuer's row in the registry (``issuers``) must
  exist and be ``own`` (``clearing.registry.register_issuer``, or ``ensure_issuers`` for the
  built-in cities), and the key store must hold its keys. Nothing is inferred from the
  issuer id;
* file 0x16 (holder): flag, staff flag, name (20 bytes GBK), id number (32), id type (1);
* the citizen-auth certificate: P-256 key made here, certificate signed by the issuer CA
  in the key store, subject = card ASN (hex); made for social security cards and for any
  card given a PIN.
"""

from __future__ import annotations

import datetime as dt
import re
import secrets
from dataclasses import dataclass
from typing import Final

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy.orm import Session

from cardos.image import HOLDER_LEN, CardImage
from cardos.personalise import AuthMaterial, personalise
from cardos.profile import PURSE_MAX_FEN, CardType
from cardos.records import SHANGHAI_TZ, ManagementInfo, PublicInfo
from clearing import accounts, transfer_ids
from clearing.contract.codes import Code
from clearing.db import bump_counter
from clearing.errors import ClearingError
from clearing.keystore import KeyStore, issuer_bytes
from clearing.ledger import TransferSpec, post_transfers
from clearing.models import Card, CardStatus, Issuer, TransferCode
from clearing.registry import get_card

VALIDITY_YEARS: Final = 10
APP_TYPE: Final = 0x01
APP_VERSION: Final = 0x01
COUNTRY_CODE: Final = bytes.fromhex("00000156")
PROVINCE_CODE: Final = bytes.fromhex("6100")
ASN_SERIAL_DIGITS: Final = 16
_ASN_RE: Final = re.compile(r"^[0-9a-f]{20}$")
_PIN_RE: Final = re.compile(r"^[0-9]{6}$")


@dataclass(frozen=True, slots=True)
class HolderInfo:
    """File 0x16 contents (``epurse-public-sources.md``, "SFI 0x16"; layout project-defined)."""

    name: str = ""
    id_number: str = ""
    id_type: int = 0  # 0: resident identity card
    staff: bool = False

    def encode(self) -> bytes:
        try:
            name = self.name.encode("gbk")
        except UnicodeEncodeError:
            raise ClearingError(Code.E_BAD_HOLDER, "holder name is not representable in GBK") from None
        id_number = self.id_number.encode("ascii", errors="strict") if self.id_number.isascii() else b""
        if len(name) > 20 or len(id_number) > 32 or not self.id_number.isascii():
            raise ClearingError(Code.E_BAD_HOLDER, "holder name must fit 20 bytes (GBK) and id number 32 ASCII chars")
        out = (
            bytes([0x01 if self.name else 0x00, 0x01 if self.staff else 0x00])
            + name.ljust(20, b"\x00")
            + id_number.ljust(32, b"\x00")
            + bytes([self.id_type])
        )
        assert len(out) == HOLDER_LEN
        return out


def parse_card_type(text: str) -> CardType:
    try:
        return CardType(text.lower().replace("-", "_"))
    except ValueError:
        names = ", ".join(t.value.replace("_", "-") for t in CardType)
        raise ClearingError(Code.E_BAD_CARD_TYPE, f"card type {text!r}: expected one of {names}") from None


def _own_issuer(session: Session, issuer_hex: str) -> Issuer:
    """The registry row of an issuer we issue cards for; refuses one not registered or not ours."""
    issuer = session.get(Issuer, issuer_hex)
    if issuer is None:
        raise ClearingError(
            Code.E_UNKNOWN_ISSUER,
            f"issuer {issuer_hex} is not registered; register it with `yikatong issuer add` "
            "(the built-in cities: `yikatong init`)",
        )
    if not issuer.own:
        raise ClearingError(
            Code.E_NOT_OUR_ISSUER,
            f"issuer {issuer_hex} ({issuer.city}) is registered as a peer issuer, not ours: we accept its cards "
            "but do not issue them",
        )
    return issuer


def allocate_asn(session: Session, issuer_hex: str) -> str:
    """The next free ASN of an issuer: its city code + 16-digit serial from a DB counter."""
    issuer = session.get(Issuer, issuer_hex)
    if issuer is None:
        raise ClearingError(Code.E_UNKNOWN_ISSUER, f"issuer {issuer_hex} is not registered")
    prefix = issuer.city_code.lower()
    for _ in range(1000):
        serial = bump_counter(session, f"asn:{issuer_hex}")
        asn = f"{prefix}{serial:0{ASN_SERIAL_DIGITS}d}"
        assert len(asn) == 20
        if get_card(session, issuer_hex, asn) is None:
            return asn
    raise ClearingError(Code.E_ASN_EXHAUSTED, f"no free ASN after 1000 tries for issuer {issuer_hex}")


def _add_years(day: dt.date, years: int) -> dt.date:
    try:
        return day.replace(year=day.year + years)
    except ValueError:  # 29 February
        return day.replace(year=day.year + years, day=28)


def make_auth_material(
    keystore: KeyStore, issuer_hex: str, asn_hex: str, pin: str, now: dt.datetime
) -> tuple[AuthMaterial, str]:
    """A fresh P-256 key pair and its certificate from the issuer CA; returns (material, cert serial hex)."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = keystore.sign_card_certificate(issuer_hex, key.public_key(), asn_hex, now=now)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    der = cert.public_bytes(serialization.Encoding.DER)
    return AuthMaterial(private_key_pem=pem, certificate_der=der, pin=pin), format(cert.serial_number, "x")


def issue_card(
    session: Session,
    keystore: KeyStore,
    *,
    issuer_id: str,
    card_type: CardType | str,
    asn: str | None = None,
    balance_fen: int = 0,
    holder: HolderInfo | None = None,
    pin: str | None = None,
    now: dt.datetime,
    sale: bool = True,
) -> tuple[CardImage, Card]:
    """Personalise and register a new card; post the value sold with it (issuer float → card liability).

    Social security cards (and any card given a PIN) get a citizen-auth key pair and a
    certificate from the issuer CA; a social security card issued without a PIN gets a
    random one, readable once from ``image.auth.pin``. Nothing is committed here.

    ``sale=False``: the opening balance is not sold here; the caller posts where it comes from
    in the same transaction (a replacement's ``BALANCE_MOVE``, ``clearing.replacement``).
    """
    if now.tzinfo is None:
        raise ClearingError(Code.E_BAD_TIME, "now must be timezone-aware")
    issuer_hex = issuer_bytes(issuer_id).hex()
    kind = card_type if isinstance(card_type, CardType) else parse_card_type(card_type)
    if not 0 <= balance_fen <= PURSE_MAX_FEN:
        raise ClearingError(Code.E_BAD_BALANCE, f"opening balance {balance_fen} fen outside 0..{PURSE_MAX_FEN}")
    if pin is not None and not _PIN_RE.match(pin):
        raise ClearingError(Code.E_BAD_PIN, "the PIN must be 6 digits")

    issuer = _own_issuer(session, issuer_hex)
    if not keystore.has_issuer(issuer_hex):
        raise ClearingError(
            Code.E_KEY_MISSING,
            f"issuer {issuer_hex} ({issuer.city}) is ours but the key store holds no keys for it; "
            f"run `yikatong keys init --issuer {issuer_hex}` or `yikatong keys import`",
        )

    if asn is None:
        asn = allocate_asn(session, issuer_hex)
    asn = asn.lower()
    if not _ASN_RE.match(asn):
        raise ClearingError(Code.E_BAD_ASN, "the ASN must be 20 hex digits (10 bytes)")
    if get_card(session, issuer_hex, asn) is not None:
        raise ClearingError(Code.E_CARD_EXISTS, f"card {asn} of issuer {issuer_hex} is already registered")

    key_version = keystore.current_version(issuer_hex)
    keys = keystore.card_keys(issuer_hex, asn, key_version)
    start = now.astimezone(SHANGHAI_TZ).date()
    public = PublicInfo(
        issuer_id=bytes.fromhex(issuer_hex),
        app_type=APP_TYPE,
        app_version=APP_VERSION,
        asn=bytes.fromhex(asn),
        start_date=start,
        expiry_date=_add_years(start, VALIDITY_YEARS),
        card_type=kind,
    )
    management = ManagementInfo(
        country_code=COUNTRY_CODE,
        province_code=PROVINCE_CODE,
        city_code=bytes.fromhex(issuer.city_code),
        interoperable=True,
        card_type=kind,
    )
    social = kind is CardType.SOCIAL_SECURITY
    holder_file = (holder or HolderInfo()).encode() if (social or holder is not None) else None
    auth = None
    cert_serial = None
    if social or pin is not None:
        auth, cert_serial = make_auth_material(keystore, issuer_hex, asn, pin or f"{secrets.randbelow(10**6):06d}", now)
    image = personalise(
        keys=keys, public=public, management=management, holder=holder_file, balance_fen=balance_fen, auth=auth
    )

    liability = accounts.card_liability(session, issuer_hex, asn)
    card = Card(
        issuer_id=issuer_hex,
        card_asn=asn,
        card_type=kind.value,
        status=CardStatus.ACTIVE.value,
        issued_at=now,
        start_date=public.start_date,
        expiry_date=public.expiry_date,
        key_version=key_version,
        alg_id=keys.alg_id,
        account_id=liability,
        shadow_balance_fen=balance_fen,
        auth_cert_serial=cert_serial,
        holder_name=holder.name if holder and holder.name else None,
    )
    session.add(card)
    session.flush()
    if balance_fen > 0 and sale:
        float_account = accounts.issuer_float(session, issuer_hex)
        post_transfers(
            session,
            [
                TransferSpec.single(
                    transfer_ids.card_sale(asn), float_account, liability, balance_fen, TransferCode.CARD_SALE,
                    source_ref=f"card-sale:{issuer_hex}:{asn}",
                )
            ],
        )  # fmt: skip
    assert image.purse.balance_fen == card.shadow_balance_fen == balance_fen
    return image, card


__all__ = [
    "ClearingError",
    "HolderInfo",
    "allocate_asn",
    "issue_card",
    "make_auth_material",
    "parse_card_type",
]
