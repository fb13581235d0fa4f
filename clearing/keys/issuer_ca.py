"""Each issuer's CA: a P-256 key (sealed under the KEK) and a self-signed certificate, and the
card certificates it signs (``card-profile.md``, "Citizen authentication").

The CA private key never leaves the store. CA certificates are public and stored in clear:
``read_ca_certificates`` reads them without the KEK (the portal checks card certificates
with them).
"""

from __future__ import annotations

import datetime as dt
import threading
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from clearing.contract.codes import Code
from clearing.errors import ClearingError
from clearing.keys.common import associated_data, issuer_bytes, utc_now
from clearing.keys.kek import Kek
from clearing.keys.store_file import KeyStoreFile, read_doc

CA_VALIDITY_DAYS: Final = 20 * 366
CARD_CERT_VALIDITY_DAYS: Final = 10 * 366


def _key_usage(*, digital_signature: bool, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _ca_key_ad(issuer_hex: str) -> bytes:
    return associated_data(issuer_hex, "ca", "private_key")


class IssuerCA:
    """The issuer CAs in one key store file; ``ensure`` runs inside ``file.update()``."""

    def __init__(self, file: KeyStoreFile, kek: Kek) -> None:
        self._file = file
        self._kek = kek
        self._lock = threading.Lock()
        self._keys: dict[str, ec.EllipticCurvePrivateKey] = {}

    def __repr__(self) -> str:
        return f"IssuerCA({self._file.path})"

    def has_ca(self, issuer: str | bytes) -> bool:
        entry = self._file.issuers.get(issuer_bytes(issuer).hex())
        return entry is not None and "ca" in entry

    def ensure(self, issuer_hex: str) -> bool:
        """Create the issuer's CA if it has none (the issuer must have keys); True if created."""
        assert self._file.changing, "issuer CAs change only inside KeyStoreFile.update()"
        entry = self._file.entry(issuer_hex)
        if "ca" in entry:
            return False
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Yikatong"),
                x509.NameAttribute(NameOID.COMMON_NAME, f"Yikatong issuer CA {issuer_hex}"),
            ]
        )
        now = utc_now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=CA_VALIDITY_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(digital_signature=False, cert_sign=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        der = key.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        entry["ca"] = {
            "key": self._kek.seal(der, _ca_key_ad(issuer_hex)),
            "certificate_pem": cert.public_bytes(serialization.Encoding.PEM).decode("ascii"),
            "created_at": now.isoformat(),
        }
        return True  # the key is decrypted from the file on first use, once the change is saved

    def forget(self) -> None:
        """Drop decrypted CA keys (after a change that did not save)."""
        with self._lock:
            self._keys.clear()

    def certificate(self, issuer: str | bytes) -> x509.Certificate:
        """The issuer CA's self-signed certificate."""
        issuer_hex = issuer_bytes(issuer).hex()
        ca = self._file.entry(issuer_hex).get("ca")
        if ca is None:
            raise ClearingError(Code.E_NO_CA, f"issuer {issuer_hex} has no CA in this key store")
        return x509.load_pem_x509_certificate(ca["certificate_pem"].encode("ascii"))

    def _private_key(self, issuer_hex: str) -> ec.EllipticCurvePrivateKey:
        key = self._keys.get(issuer_hex)
        if key is not None:
            return key
        ca = self._file.entry(issuer_hex).get("ca")
        if ca is None:
            raise ClearingError(Code.E_NO_CA, f"issuer {issuer_hex} has no CA in this key store")
        der = self._kek.open(ca["key"], _ca_key_ad(issuer_hex), "issuer CA key")
        loaded = serialization.load_der_private_key(der, password=None)
        assert isinstance(loaded, ec.EllipticCurvePrivateKey)
        with self._lock:
            self._keys[issuer_hex] = loaded
        return loaded

    def sign_card_certificate(
        self,
        issuer: str | bytes,
        card_public_key: ec.EllipticCurvePublicKey,
        card_asn_hex: str,
        *,
        now: dt.datetime | None = None,
        validity_days: int = CARD_CERT_VALIDITY_DAYS,
    ) -> x509.Certificate:
        """A card's citizen-auth certificate, subject = card ASN (hex), signed by the issuer CA."""
        issuer_hex = issuer_bytes(issuer).hex()
        ca_cert = self.certificate(issuer_hex)
        ca_key = self._private_key(issuer_hex)
        start = now or utc_now()
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Yikatong"),
                x509.NameAttribute(NameOID.SERIAL_NUMBER, card_asn_hex),
                x509.NameAttribute(NameOID.COMMON_NAME, card_asn_hex),
            ]
        )
        ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca_cert.subject)
            .public_key(card_public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(start - dt.timedelta(minutes=5))
            .not_valid_after(start + dt.timedelta(days=validity_days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(digital_signature=True, cert_sign=False), critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
            .sign(ca_key, hashes.SHA256())
        )


def read_ca_certificates(path: Path | str) -> dict[str, x509.Certificate]:
    """Every issuer CA certificate in a key store file, without the KEK (they are public)."""
    doc = read_doc(Path(path))
    return {
        issuer_hex: x509.load_pem_x509_certificate(entry["ca"]["certificate_pem"].encode("ascii"))
        for issuer_hex, entry in doc["issuers"].items()
        if "ca" in entry
    }


__all__ = ["CARD_CERT_VALIDITY_DAYS", "CA_VALIDITY_DAYS", "IssuerCA", "read_ca_certificates"]
