"""Issuing cards: keys from the key store, registry row, ledger posting, auth certificate."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from sqlalchemy import select
from sqlalchemy.orm import Session

from cardos.crypto import derive_card_key
from cardos.image import CardImage
from cardos.profile import ISSUER_XIAN, ISSUER_XIANYANG, CardType
from cardos.records import ManagementInfo, PublicInfo
from clearing import accounts
from clearing.errors import ClearingError
from clearing.issuance import HolderInfo, issue_card
from clearing.keystore import KEY_NAMES, KeyStore
from clearing.ledger import account_balance, trial_balance
from clearing.models import Card, Issuer, Transfer, TransferCode
from clearing.registry import ensure_issuers, register_issuer

XY = ISSUER_XIANYANG.hex()
XA = ISSUER_XIAN.hex()
BAOJI = "01007210ffffffff"  # an issuer that is not built in
NOW = dt.datetime(2026, 11, 24, 1, 0, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def keystore(tmp_path_factory: pytest.TempPathFactory) -> KeyStore:
    ks = KeyStore.open(tmp_path_factory.mktemp("ks") / "keystore.json", bytes(32))
    ks.init(["xianyang", "xian"])
    return ks


@pytest.fixture
def session(db_session: Session) -> Session:
    ensure_issuers(db_session, own_city="xianyang")
    db_session.commit()
    return db_session


def test_issued_card_has_keys_diversified_from_the_issuers_master_keys(session: Session, keystore: KeyStore) -> None:
    image, card = issue_card(session, keystore, issuer_id="xianyang", card_type="ordinary", now=NOW)
    session.commit()
    masters = {n: keystore._master(XY, 1, n) for n in KEY_NAMES}
    asn = bytes.fromhex(card.card_asn)
    assert image.keys.dpk == derive_card_key(masters["mpk"], ISSUER_XIANYANG, asn)
    assert image.keys.dlk == derive_card_key(masters["mlk"], ISSUER_XIANYANG, asn)
    assert image.keys.dtk == derive_card_key(masters["mtk"], ISSUER_XIANYANG, asn)
    assert image.keys.damk == derive_card_key(masters["mamk"], ISSUER_XIANYANG, asn)
    public = PublicInfo.decode(image.public)
    assert (public.issuer_id, public.asn, public.card_type) == (ISSUER_XIANYANG, asn, CardType.ORDINARY)
    assert public.start_date == dt.date(2026, 11, 24) and public.expiry_date == dt.date(2036, 11, 24)
    management = ManagementInfo.decode(image.management)
    assert management.interoperable and management.city_code == bytes.fromhex("7120")
    assert image.auth is None and image.holder is None
    assert card.card_asn.startswith("7120") and card.key_version == 1 and card.status == "active"


def test_value_sold_with_the_card_is_posted_from_float_to_card_liability(
    session: Session, keystore: KeyStore, tmp_path: Path
) -> None:
    image, card = issue_card(session, keystore, issuer_id=XY, card_type=CardType.STUDENT, balance_fen=5000, now=NOW)
    session.commit()
    transfer = session.get(Transfer, f"issue:{card.card_asn}")
    assert transfer is not None and transfer.amount_fen == 5000 and transfer.code == TransferCode.CARD_SALE
    assert transfer.debit_account_id == accounts.issuer_float(session, XY)
    assert transfer.credit_account_id == card.account_id
    assert account_balance(session, card.account_id).credit_balance_fen == 5000 == card.shadow_balance_fen
    assert image.purse.balance_fen == 5000
    trial_balance(session)
    image.save_atomic(tmp_path / "card.json")
    assert CardImage.load(tmp_path / "card.json") == image


def test_social_security_card_gets_a_certificate_from_the_issuer_ca(session: Session, keystore: KeyStore) -> None:
    holder = HolderInfo(name="张三", id_number="610402199001011234")
    image, card = issue_card(session, keystore, issuer_id=XY, card_type="social-security", holder=holder, now=NOW)
    session.commit()
    assert image.auth is not None and image.holder is not None
    assert len(image.auth.pin) == 6 and image.auth.pin.isdigit()
    cert = x509.load_der_x509_certificate(image.auth.certificate_der)
    cert.verify_directly_issued_by(keystore.ca_certificate(XY))
    cn = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value
    assert cn == card.card_asn
    assert card.auth_cert_serial == format(cert.serial_number, "x")
    assert image.holder[2:6] == "张三".encode("gbk")


def test_a_pin_gives_an_ordinary_card_a_login_certificate(session: Session, keystore: KeyStore) -> None:
    image, _ = issue_card(session, keystore, issuer_id=XY, card_type="ordinary", pin="123456", now=NOW)
    assert image.auth is not None and image.auth.pin == "123456"


def test_asns_are_allocated_in_sequence_and_duplicates_refused(session: Session, keystore: KeyStore) -> None:
    _, a = issue_card(session, keystore, issuer_id=XY, card_type="ordinary", now=NOW)
    _, b = issue_card(session, keystore, issuer_id=XY, card_type="ordinary", now=NOW)
    assert int(b.card_asn) == int(a.card_asn) + 1
    with pytest.raises(ClearingError, match="E_CARD_EXISTS"):
        issue_card(session, keystore, issuer_id=XY, card_type="ordinary", asn=a.card_asn, now=NOW)
    _, c = issue_card(session, keystore, issuer_id=XY, card_type="ordinary", asn="71209999999999999999", now=NOW)
    assert c.card_asn == "71209999999999999999"
    session.commit()
    assert len(session.scalars(select(Card)).all()) == 3


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"issuer_id": "xian"}, "E_NOT_OUR_ISSUER"),
        ({"card_type": "gold"}, "E_BAD_CARD_TYPE"),
        ({"balance_fen": 1_000_001}, "E_BAD_BALANCE"),
        ({"pin": "12ab56"}, "E_BAD_PIN"),
        ({"asn": "7120"}, "E_BAD_ASN"),
    ],
)
def test_bad_issue_requests_are_refused(
    session: Session, keystore: KeyStore, kwargs: dict[str, object], code: str
) -> None:
    args: dict[str, object] = {"issuer_id": XY, "card_type": "ordinary", **kwargs}
    with pytest.raises(ClearingError) as info:
        issue_card(session, keystore, now=NOW, **args)  # type: ignore[arg-type]
    assert info.value.code == code


def test_cards_issued_after_rotation_get_the_new_key_version(session: Session, tmp_path: Path) -> None:
    ks = KeyStore.open(tmp_path / "ks.json", bytes(32))
    ks.init(["xianyang"])
    ks.rotate("xianyang")
    image, card = issue_card(session, ks, issuer_id=XY, card_type="ordinary", now=NOW)
    assert card.key_version == image.keys.key_version == 2
    assert image.keys.dtk == ks.dtk(XY, card.card_asn, 2) != ks.dtk(XY, card.card_asn, 1)


# --- issuers are data -----------------------------------------------------------------------


def test_an_unregistered_issuer_is_refused_and_never_registered_on_the_fly(
    db_session: Session, keystore: KeyStore
) -> None:
    with pytest.raises(ClearingError) as info:
        issue_card(db_session, keystore, issuer_id="xianyang", card_type="ordinary", now=NOW)
    assert info.value.code == "E_UNKNOWN_ISSUER" and "issuer add" in info.value.message
    assert db_session.get(Issuer, XY) is None  # ownership is not inferred from the card's issuer


def test_a_newly_registered_own_issuer_with_keys_issues_cards(db_session: Session, tmp_path: Path) -> None:
    ks = KeyStore.open(tmp_path / "ks.json", bytes(32))
    ks.init([BAOJI])
    issuer = register_issuer(db_session, BAOJI.upper(), city="Baoji", name="宝鸡公交卡", city_code="7210", own=True)
    assert (issuer.issuer_id, issuer.city, issuer.city_code, issuer.own) == (BAOJI, "baoji", "7210", True)
    image, card = issue_card(db_session, ks, issuer_id=BAOJI, card_type="social-security", now=NOW)
    db_session.commit()
    assert card.issuer_id == BAOJI and card.card_asn == "7210" + "0" * 15 + "1"
    public = PublicInfo.decode(image.public)
    assert public.issuer_id == bytes.fromhex(BAOJI) and public.asn == bytes.fromhex(card.card_asn)
    assert ManagementInfo.decode(image.management).city_code == bytes.fromhex("7210")
    masters = {n: ks._master(BAOJI, 1, n) for n in KEY_NAMES}
    assert image.keys.dtk == derive_card_key(masters["mtk"], bytes.fromhex(BAOJI), public.asn)
    assert image.auth is not None
    x509.load_der_x509_certificate(image.auth.certificate_der).verify_directly_issued_by(ks.ca_certificate(BAOJI))
    trial_balance(db_session)


def test_an_own_issuer_without_keys_and_a_peer_issuer_are_refused(db_session: Session, keystore: KeyStore) -> None:
    register_issuer(db_session, BAOJI, city="baoji", name="Baoji", own=True)  # keystore holds no Baoji keys
    with pytest.raises(ClearingError) as info:
        issue_card(db_session, keystore, issuer_id=BAOJI, card_type="ordinary", now=NOW)
    assert info.value.code == "E_KEY_MISSING" and f"keys init --issuer {BAOJI}" in info.value.message
    register_issuer(db_session, "01007300ffffffff", city="weinan", name="Weinan", own=False)
    with pytest.raises(ClearingError) as info:
        issue_card(db_session, keystore, issuer_id="01007300ffffffff", card_type="ordinary", now=NOW)
    assert info.value.code == "E_NOT_OUR_ISSUER" and "peer" in info.value.message


def test_configured_as_xian_the_same_software_issues_xian_cards(db_session: Session, keystore: KeyStore) -> None:
    ensure_issuers(db_session, own_city="xian")
    assert {i.issuer_id: (i.city_code, i.own) for i in db_session.query(Issuer)} == {
        XY: ("7120", False),
        XA: ("7100", True),
    }
    image, card = issue_card(db_session, keystore, issuer_id="xian", card_type="ordinary", now=NOW)
    assert card.issuer_id == XA and card.card_asn.startswith("7100")
    assert ManagementInfo.decode(image.management).city_code == bytes.fromhex("7100")
    assert image.keys.dtk == keystore.dtk(XA, card.card_asn, 1)
    with pytest.raises(ClearingError, match="E_NOT_OUR_ISSUER"):
        issue_card(db_session, keystore, issuer_id="xianyang", card_type="ordinary", now=NOW)


def test_register_issuer_defaults_repeats_and_conflicts(db_session: Session) -> None:
    first = register_issuer(db_session, BAOJI, city="baoji", name="Baoji", own=True)
    assert first.city_code == "7210"  # the city code inside the issuer id
    assert register_issuer(db_session, BAOJI, city="baoji", name="Baoji", city_code="7210", own=True) is first
    with pytest.raises(ClearingError) as info:
        register_issuer(db_session, BAOJI, city="baoji", name="Baoji", own=False)
    assert info.value.code == "E_ISSUER_EXISTS" and "own" in info.value.message
    db_session.commit()
    assert db_session.get(Issuer, BAOJI) is not None


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"issuer_id": "01007210ffff"}, "issuer id"),
        ({"issuer_id": "01007210ffffffzz"}, "issuer id"),
        ({"city": "Bao ji"}, "city"),
        ({"city": ""}, "city"),
        ({"name": "  "}, "name"),
        ({"name": "x" * 65}, "name"),
        ({"city_code": "721"}, "city code"),
        ({"city_code": "72g0"}, "city code"),
        ({"city_code": "72100"}, "city code"),
    ],
)
def test_register_issuer_refuses_bad_details(db_session: Session, kwargs: dict[str, str], field: str) -> None:
    args: dict[str, object] = {"issuer_id": BAOJI, "city": "baoji", "name": "Baoji", "own": True, **kwargs}
    with pytest.raises(ClearingError) as info:
        register_issuer(db_session, **args)  # type: ignore[arg-type]
    assert info.value.code == "E_BAD_ISSUER" and field in info.value.message
