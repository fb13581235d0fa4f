"""Card login, modelled on Web eID (issue 10; ``docs/portal.md``, "Card login").

The protocol:

1. ``GET /api/card-login/challenge``: the server makes a nonce (256 random bits, standard
   base64, as Web eID's ``ChallengeNonceGenerator``), binds it to a fresh challenge cookie
   (256 random bits; the store keys it by the cookie's SHA-256, never the cookie) and keeps it
   server-side for ``challenge_ttl_s`` (5 minutes): in the process, or in Redis.
2. The reader agent, after the card's PIN, has the card sign
   ``SHA-256(origin) || SHA-256(nonce)`` with INTERNAL AUTHENTICATE (``card-profile.md``), and
   the browser posts a ``web-eid:1.0`` token: ``unverifiedCertificate`` (base64 DER),
   ``algorithm`` (``ES256``), ``signature`` (base64 of the raw ``r || s``, 64 bytes, as Web eID
   and JWS carry ECDSA; the card's DER is transcoded by the agent), ``format``, ``appVersion``.
3. ``POST /api/card-login``: the nonce of the browser's challenge cookie is **taken** (read and
   deleted in one step) before anything in the token is looked at, so a challenge answers one
   attempt, good or bad. Then ``verify_token`` (pure): the certificate is a card certificate
   directly issued by the CA of one of the key store's issuers, valid now; the algorithm is the
   key's; the signature verifies over the server's **own** origin setting and the taken nonce
   (the token carries neither). Then the shell: the issuer is registered, the card is ours,
   active, not denylisted, not past its expiry date, and the certificate is its current one
   (``cards.auth_cert_serial``: a replaced certificate logs nobody in).

The pure part (``parse_token``, ``challenge_hash``, ``verify_token``) takes plain data and a
clock value; the stores and ``CardLoginService`` are the shell.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import json
import logging
import math
import re
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.x509.oid import NameOID
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from clearing import registry
from clearing.errors import ClearingError
from clearing.keystore import KeyStore
from clearing.models import CardStatus, DenylistEntryRow, Issuer
from portal import identity
from portal.accounts import (
    CARD_LOCAL_ZONE,
    SESSION_TOKEN_BYTES,
    AccountService,
    CitizenView,
    CurrentSession,
    NewSession,
    session_id_of,
)
from portal.errors import Code, PortalError
from portal.models import PortalCardBinding, PortalCitizen, PortalSession
from portal.ratelimit import Rule

log = logging.getLogger(__name__)

NONCE_BYTES: Final = 32  # 256 bits
CHALLENGE_COOKIE_BYTES: Final = 32
CHALLENGE_TTL_S_DEFAULT: Final = 300
TOKEN_FORMAT: Final = "web-eid:1.0"  # noqa: S105 - a format name, not a secret
ALGORITHM: Final = "ES256"  # the card's key: ECDSA P-256, SHA-256
TOKEN_BYTES_MAX: Final = 10_000  # Web eID's validators refuse longer tokens too
CERT_B64_CHARS_MAX: Final = 8_000
SIGNATURE_B64_CHARS_MAX: Final = 200
FIELD_CHARS_MAX: Final = 256  # algorithm, format, appVersion
P256_RAW_SIGNATURE_LEN: Final = 64
# The JWS names Web eID allows; any other is refused the same way, any of these but ES256 is the wrong one.
WEB_EID_ALGORITHMS: Final = frozenset({"ES256", "ES384", "ES512", "PS256", "PS384", "PS512", "RS256", "RS384", "RS512"})
_COOKIE_SHAPE: Final = re.compile(r"[A-Za-z0-9_-]{20,64}")
_ASN_RE: Final = re.compile(r"[0-9a-f]{20}")
_B64_RE: Final = re.compile(r"[A-Za-z0-9+/]+={0,2}")


# --- the pure part ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuthToken:
    """A ``web-eid:1.0`` authentication token as posted (nothing in it verified yet)."""

    unverified_certificate: str
    algorithm: str
    signature: str
    format: str
    app_version: str


@dataclass(frozen=True, slots=True)
class VerifiedCard:
    """What a verified token proves: the holder of this card's key (and PIN) signed our challenge."""

    issuer_id: str  # the key store's issuer whose CA issued the certificate (16 hex)
    card_asn: str  # the certificate's subject serial number (20 hex)
    cert_serial: str  # hex, as ``cards.auth_cert_serial`` holds it
    not_after: dt.datetime


def _malformed(why: str) -> PortalError:
    return PortalError(Code.E_CARD_LOGIN_MALFORMED, f"the card-login token {why}")


def parse_token(body: bytes) -> AuthToken:
    """The token of a request body (JSON object; unknown members ignored, as Web eID does)."""
    if len(body) > TOKEN_BYTES_MAX:
        raise _malformed(f"is longer than {TOKEN_BYTES_MAX} bytes")
    try:
        doc: Any = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _malformed("is not JSON") from None
    if not isinstance(doc, dict):
        raise _malformed("is not a JSON object")
    limits = {
        "unverifiedCertificate": CERT_B64_CHARS_MAX,
        "algorithm": FIELD_CHARS_MAX,
        "signature": SIGNATURE_B64_CHARS_MAX,
        "format": FIELD_CHARS_MAX,
        "appVersion": FIELD_CHARS_MAX,
    }
    values: dict[str, str] = {}
    for name, most in limits.items():
        value = doc.get(name)
        if not isinstance(value, str) or not value or len(value) > most:
            raise _malformed(f"needs {name}: a non-empty string of at most {most} characters")
        values[name] = value
    if values["format"] != TOKEN_FORMAT:
        raise _malformed(f"format must be {TOKEN_FORMAT!r}")
    return AuthToken(
        values["unverifiedCertificate"],
        values["algorithm"],
        values["signature"],
        values["format"],
        values["appVersion"],
    )


def challenge_hash(origin: str, nonce: str) -> bytes:
    """The 64 bytes the card signs: ``SHA-256(origin) || SHA-256(nonce)``, both as UTF-8 text."""
    return hashlib.sha256(origin.encode("utf-8")).digest() + hashlib.sha256(nonce.encode("utf-8")).digest()


def _b64(text: str, what: str) -> bytes:
    if _B64_RE.fullmatch(text) is None:
        raise _malformed(f"{what} is not base64")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise _malformed(f"{what} is not base64") from None


def _untrusted(why: str) -> PortalError:
    return PortalError(Code.E_CARD_LOGIN_CERT_UNTRUSTED, f"the card's certificate {why}")


def _issuing_ca(cert: x509.Certificate, anchors: Mapping[str, x509.Certificate], now: dt.datetime) -> str:
    """The issuer (key of ``anchors``) whose CA signed ``cert`` directly, and is a valid CA now."""
    for issuer_hex, ca in sorted(anchors.items()):
        if ca.subject != cert.issuer:
            continue
        try:
            cert.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature):
            continue  # same name, another key: a CA of the same name made elsewhere
        try:
            constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            continue
        if constraints.ca and ca.not_valid_before_utc <= now <= ca.not_valid_after_utc:
            return issuer_hex
    raise _untrusted("is not issued by the CA of any issuer this portal knows")


def _card_public_key(cert: x509.Certificate) -> ec.EllipticCurvePublicKey:
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except (x509.ExtensionNotFound, ValueError):
        raise _untrusted("is not a card certificate (no basic constraints or key usage)") from None
    if constraints.ca or not usage.digital_signature:
        raise _untrusted("is not a card certificate (a CA, or not for signatures)")
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise _untrusted("does not hold an EC P-256 key")
    return key


def _card_asn(cert: x509.Certificate) -> str:
    try:
        names = cert.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)
    except ValueError:
        names = []
    asn = names[0].value if len(names) == 1 else None
    if not isinstance(asn, str) or _ASN_RE.fullmatch(asn) is None:
        raise _untrusted("does not name a card (subject serial number: 20 hex digits)")
    return asn


def verify_token(
    token: AuthToken, *, origin: str, nonce: str, anchors: Mapping[str, x509.Certificate], now: dt.datetime
) -> VerifiedCard:
    """Check a token against our origin and the nonce we issued; pure (``now`` is passed in).

    In this order, each with its code: the certificate reads (``E_CARD_LOGIN_MALFORMED``), was
    issued by a known issuer CA and is a card certificate (``_CERT_UNTRUSTED``), is valid at
    ``now`` (``_CERT_EXPIRED``); the algorithm is the key's (``_ALGORITHM``); the signature
    verifies over ``challenge_hash(origin, nonce)`` (``_SIGNATURE``).
    """
    assert now.tzinfo is not None, "now must be timezone-aware"
    der = _b64(token.unverified_certificate, "certificate")
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError:
        raise _malformed("certificate is not an X.509 certificate (DER)") from None
    issuer_hex = _issuing_ca(cert, anchors, now)
    key = _card_public_key(cert)
    asn = _card_asn(cert)
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise PortalError(Code.E_CARD_LOGIN_CERT_EXPIRED, "the card's certificate is not valid now")
    if token.algorithm != ALGORITHM:
        known = token.algorithm in WEB_EID_ALGORITHMS
        raise PortalError(
            Code.E_CARD_LOGIN_ALGORITHM,
            f"the card's key signs with {ALGORITHM}" + ("" if known else "; the token names no Web eID algorithm"),
        )
    raw = _b64(token.signature, "signature")
    bad = PortalError(Code.E_CARD_LOGIN_SIGNATURE, "the card's signature does not verify for this challenge")
    if len(raw) != P256_RAW_SIGNATURE_LEN:
        raise bad
    half = P256_RAW_SIGNATURE_LEN // 2
    signature = encode_dss_signature(int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big"))
    try:
        key.verify(signature, challenge_hash(origin, nonce), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise bad from None
    return VerifiedCard(issuer_hex, asn, format(cert.serial_number, "x"), cert.not_valid_after_utc)


def check_origin(origin: str) -> str:
    """The origin setting as Web eID takes it: ``scheme://host[:port]``, https (http only for loopback)."""
    parts = urlsplit(origin)
    if (
        parts.scheme not in ("https", "http")
        or not parts.hostname
        or parts.path not in ("",)
        or parts.query
        or parts.fragment
        or parts.username is not None
        or origin != origin.strip()
    ):
        raise ValueError(f"the portal origin must be scheme://host[:port], nothing after it: {origin!r}")
    if parts.scheme == "http" and parts.hostname not in ("localhost", "127.0.0.1", "::1"):
        raise ValueError(f"the portal origin must be https outside a loopback host: {origin!r}")
    return origin


# --- the nonce stores -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Challenge:
    nonce: str
    expires_at: float  # POSIX seconds


class NonceStore(Protocol):
    """One outstanding challenge per binding (the SHA-256 of a challenge cookie)."""

    def put(self, binding: str, challenge: Challenge, ttl_s: float) -> None: ...

    def take(self, binding: str) -> Challenge | None:
        """The binding's challenge, removed in the same step (a second take finds nothing)."""
        ...


@dataclass
class MemoryNonceStore:
    """In the process (one worker, or tests): at most ``keys_max`` challenges, the oldest dropped first."""

    keys_max: int = 100_000
    clock: Callable[[], float] = lambda: dt.datetime.now(dt.UTC).timestamp()
    _items: OrderedDict[str, Challenge] = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def put(self, binding: str, challenge: Challenge, ttl_s: float) -> None:
        del ttl_s  # the expiry is in the challenge
        with self._lock:
            self._items.pop(binding, None)
            self._items[binding] = challenge
            if len(self._items) > self.keys_max:
                now = self.clock()
                for key in [k for k, c in self._items.items() if c.expires_at <= now]:
                    del self._items[key]
                while len(self._items) > self.keys_max:
                    self._items.popitem(last=False)

    def take(self, binding: str) -> Challenge | None:
        with self._lock:
            return self._items.pop(binding, None)

    def __len__(self) -> int:
        return len(self._items)


REDIS_GRACE_MS: Final = 60_000  # kept a minute past expiry so a late answer says "expired", not "none"


@dataclass
class RedisNonceStore:
    """Shared by every worker: ``<prefix>:card-challenge:<binding>`` = JSON, taken with GETDEL.

    A Redis that cannot be reached is an error (503), not a fallback: a nonce kept in one
    worker's memory would not be found by the worker that gets the token.
    """

    client: Any  # redis.Redis
    prefix: str

    @classmethod
    def from_url(cls, url: str, *, prefix: str) -> RedisNonceStore:
        import redis

        return cls(redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1), prefix)

    def _key(self, binding: str) -> str:
        return f"{self.prefix}:card-challenge:{binding}"

    def put(self, binding: str, challenge: Challenge, ttl_s: float) -> None:
        value = json.dumps({"nonce": challenge.nonce, "expires_at": challenge.expires_at})
        self.client.set(self._key(binding), value, px=math.ceil(ttl_s * 1000) + REDIS_GRACE_MS)

    def take(self, binding: str) -> Challenge | None:
        raw = self.client.getdel(self._key(binding))
        if raw is None:
            return None
        doc = json.loads(raw)
        return Challenge(str(doc["nonce"]), float(doc["expires_at"]))


# --- trust anchors ----------------------------------------------------------------------------------


def keystore_anchors(keystore: KeyStore) -> Callable[[], dict[str, x509.Certificate]]:
    """The issuer CA certificates of a key store, read when asked (public: no KEK involved)."""

    def anchors() -> dict[str, x509.Certificate]:
        found: dict[str, x509.Certificate] = {}
        for issuer_hex in keystore.issuers():
            try:
                found[issuer_hex] = keystore.ca_certificate(issuer_hex)
            except ClearingError:  # an issuer with keys but no CA yet: none of its cards has a certificate
                continue
        return found

    return anchors


# --- the shell ----------------------------------------------------------------------------------------


_CHALLENGE_PER_IP: Final = Rule(120, 15 * 60)
_LOGIN_PER_IP: Final = Rule(60, 15 * 60)


@dataclass(frozen=True, slots=True)
class CardLoginLimits:
    """Rate limits per client IP (the PIN's own limit is the card's: 3 tries, then blocked)."""

    challenge_per_ip: Rule = _CHALLENGE_PER_IP
    login_per_ip: Rule = _LOGIN_PER_IP


@dataclass(frozen=True, slots=True)
class IssuedChallenge:
    cookie: str  # the challenge cookie's value (shown once; the store holds its hash)
    nonce: str
    expires_at: dt.datetime


@dataclass(frozen=True, slots=True)
class CardLogin:
    new: NewSession
    card: VerifiedCard
    newly_bound: bool


def _binding_of(cookie: str) -> str:
    return hashlib.sha256(cookie.encode("ascii")).hexdigest()


def _json_media_type(content_type: str | None) -> bool:
    media = (content_type or "").split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


@dataclass
class CardLoginService:
    """Built by the composition root (``yikatong.app``) or a test; time and sessions are the accounts'."""

    accounts: AccountService
    origin: str
    anchors: Callable[[], Mapping[str, x509.Certificate]]
    store: NonceStore = field(default_factory=MemoryNonceStore)
    challenge_ttl_s: int = CHALLENGE_TTL_S_DEFAULT
    limits: CardLoginLimits = field(default_factory=CardLoginLimits)

    def __post_init__(self) -> None:
        check_origin(self.origin)
        assert self.challenge_ttl_s > 0

    def _now(self) -> dt.datetime:
        return self.accounts.clock()

    def _limit(self, key: str, rule: Rule) -> None:
        if not self.accounts.limiter.hit(key, rule):
            raise PortalError(Code.E_RATE_LIMITED, f"too many attempts; try again in {int(rule.window_s)} s at most")

    def challenge(self, *, previous_cookie: str | None, client_ip: str) -> IssuedChallenge:
        """A new nonce under a new challenge cookie; the browser's previous challenge, if any, is dropped."""
        self._limit(f"card-challenge:ip:{client_ip}", self.limits.challenge_per_ip)
        if previous_cookie is not None and _COOKIE_SHAPE.fullmatch(previous_cookie):
            self.store.take(_binding_of(previous_cookie))
        cookie = secrets.token_urlsafe(CHALLENGE_COOKIE_BYTES)
        nonce = base64.b64encode(secrets.token_bytes(NONCE_BYTES)).decode("ascii")
        expires_at = self._now() + dt.timedelta(seconds=self.challenge_ttl_s)
        self.store.put(_binding_of(cookie), Challenge(nonce, expires_at.timestamp()), self.challenge_ttl_s)
        return IssuedChallenge(cookie, nonce, expires_at)

    def _take_nonce(self, challenge_cookie: str | None) -> str:
        missing = PortalError(Code.E_CARD_LOGIN_NO_CHALLENGE, "ask for a card-login challenge first")
        if challenge_cookie is None or _COOKIE_SHAPE.fullmatch(challenge_cookie) is None:
            raise missing
        taken = self.store.take(_binding_of(challenge_cookie))
        if taken is None:
            raise missing
        if taken.expires_at <= self._now().timestamp():
            raise PortalError(Code.E_CARD_LOGIN_CHALLENGE_EXPIRED, "the challenge has expired; ask for a new one")
        return taken.nonce

    def login(
        self,
        body: bytes,
        *,
        content_type: str | None,
        challenge_cookie: str | None,
        session_cookie: str | None,
        client_ip: str,
    ) -> CardLogin:
        """A card session for the holder of a verified token (module docstring); the nonce is spent first."""
        self._limit(f"card-login:ip:{client_ip}", self.limits.login_per_ip)
        nonce = self._take_nonce(challenge_cookie)
        if not _json_media_type(content_type):
            raise PortalError(Code.E_PORTAL_MALFORMED, "the token is sent as application/json")
        now = self._now()
        try:
            verified = verify_token(parse_token(body), origin=self.origin, nonce=nonce, anchors=self.anchors(), now=now)
        except PortalError as exc:
            log.info("card login refused: %s", exc.code.value)
            raise
        previous: CurrentSession | None
        try:
            previous = self.accounts.current(session_cookie)
        except PortalError:
            previous = None
        return self._open_session(verified, previous, session_cookie, now)

    def _open_session(
        self, card: VerifiedCard, previous: CurrentSession | None, session_cookie: str | None, now: dt.datetime
    ) -> CardLogin:
        with self.accounts.sessions() as session, session.begin():
            self._require_active(session, card, now)
            citizen_id, newly_bound = self._citizen_of(session, card, previous, now)
            citizen = session.get(PortalCitizen, citizen_id)
            assert citizen is not None
            token = secrets.token_urlsafe(SESSION_TOKEN_BYTES)
            current = CurrentSession(
                session_id_of(token),
                citizen_id,
                secrets.token_urlsafe(SESSION_TOKEN_BYTES),
                "card",
                now + dt.timedelta(seconds=self.accounts.session_ttl_s),
            )
            if session_cookie is not None and _COOKIE_SHAPE.fullmatch(session_cookie):
                session.execute(delete(PortalSession).where(PortalSession.id == session_id_of(session_cookie)))
            session.execute(
                delete(PortalSession).where(PortalSession.citizen_id == citizen_id, PortalSession.expires_at <= now)
            )
            session.add(
                PortalSession(
                    id=current.session_id,
                    citizen_id=citizen_id,
                    csrf_token=current.csrf_token,
                    created_at=now,
                    expires_at=current.expires_at,
                    assurance=current.assurance,
                )
            )
            view = CitizenView(
                citizen.id,
                identity.Mobile(citizen.mobile).masked,
                identity.mask_real_name(citizen.real_name),
                citizen.id_number_masked,
            )
        log.info("citizen %d logged in with a card%s", citizen_id, " and bound it" if newly_bound else "")
        return CardLogin(NewSession(token, current, view), card, newly_bound)

    @staticmethod
    def _require_active(session: Session, card: VerifiedCard, now: dt.datetime) -> None:
        inactive = PortalError(Code.E_CARD_LOGIN_CARD_INACTIVE, "this card cannot log in")
        if session.get(Issuer, card.issuer_id) is None:
            raise _untrusted("is issued by an issuer that is not registered")
        row = registry.get_card(session, card.issuer_id, card.card_asn)
        if row is None or row.auth_cert_serial != card.cert_serial:
            log.info("card login refused: unknown card or not its current certificate")
            raise inactive
        listed = session.scalar(
            select(DenylistEntryRow.id).where(
                DenylistEntryRow.issuer_id == card.issuer_id,
                DenylistEntryRow.card_asn == card.card_asn,
                DenylistEntryRow.removed_version.is_(None),
            )
        )
        today = now.astimezone(CARD_LOCAL_ZONE).date()
        if row.status != CardStatus.ACTIVE.value or listed is not None or row.expiry_date < today:
            log.info("card login refused: card %s%s", row.status, ", denylisted" if listed is not None else "")
            raise inactive

    @staticmethod
    def _citizen_of(
        session: Session, card: VerifiedCard, previous: CurrentSession | None, now: dt.datetime
    ) -> tuple[int, bool]:
        """Whose session this is; binds the card to the logged-in citizen when it is bound to nobody."""
        elsewhere = PortalError(Code.E_CARD_BOUND_ELSEWHERE, "the card is bound to another account")

        def bound_to() -> int | None:
            return session.scalar(
                select(PortalCardBinding.citizen_id).where(
                    PortalCardBinding.issuer_id == card.issuer_id, PortalCardBinding.card_asn == card.card_asn
                )
            )

        owner = bound_to()
        if owner is not None:
            if previous is not None and previous.citizen_id != owner:
                raise elsewhere
            return owner, False
        if previous is None:
            raise PortalError(Code.E_CARD_LOGIN_UNBOUND, "log in with your account first to bind this card")
        try:
            with session.begin_nested():  # a racing bind of the same card may insert first
                session.add(
                    PortalCardBinding(
                        citizen_id=previous.citizen_id,
                        issuer_id=card.issuer_id,
                        card_asn=card.card_asn,
                        bound_at=now,
                        how="card_login",
                    )
                )
        except IntegrityError:
            if bound_to() != previous.citizen_id:
                raise elsewhere from None
            return previous.citizen_id, False
        return previous.citizen_id, True


__all__ = [
    "ALGORITHM",
    "CHALLENGE_TTL_S_DEFAULT",
    "NONCE_BYTES",
    "TOKEN_FORMAT",
    "AuthToken",
    "CardLogin",
    "CardLoginLimits",
    "CardLoginService",
    "Challenge",
    "IssuedChallenge",
    "MemoryNonceStore",
    "NonceStore",
    "RedisNonceStore",
    "VerifiedCard",
    "challenge_hash",
    "check_origin",
    "keystore_anchors",
    "parse_token",
    "verify_token",
]
