"""Registry of issuers, cards, operators and terminals, and terminal bearer tokens.

A terminal's token is ``<terminal_id>.<secret>``: the terminal it belongs to (12 lower-case
hex) and a secret of 256 random bits (urlsafe base64). It is shown once, at registration;
only a salted scrypt hash of the *secret* is stored (``docs/ledger.md``). The prefix lets
the terminal API tell a wrong token (401) from another terminal's valid token (403): it
verifies the secret against the terminal the token names (``check_terminal_token``).

The secrets are 256 random bits, so the KDF is not what protects them against guessing;
scrypt is used so that a leaked table is useless even for a weak token, and successful
verifications are remembered in a small in-process cache so the terminal API does not pay
the KDF on every upload.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import re
import secrets
import threading
from collections import OrderedDict
from collections.abc import Collection
from functools import lru_cache
from typing import Final

from sqlalchemy import select
from sqlalchemy.orm import Session

from cardos.profile import CITY_CODES, ISSUERS
from clearing import accounts
from clearing.contract.codes import Code
from clearing.errors import ClearingError
from clearing.models import Card, Issuer, Operator, Terminal

SCRYPT_N: Final = 2**14
SCRYPT_R: Final = 8
SCRYPT_P: Final = 1
SCRYPT_DKLEN: Final = 32
TOKEN_BYTES: Final = 32
TOKEN_SEPARATOR: Final = "."  # noqa: S105 (a separator, not a secret)
_VERIFIED_MAX: Final = 4096
_TERMINAL_ID_RE: Final = re.compile(r"^[0-9a-f]{12}$")
_OPERATOR_ID_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,63}$")
_ISSUER_ID_RE: Final = re.compile(r"^[0-9a-f]{16}$")
_CITY_RE: Final = re.compile(r"^[a-z][a-z0-9_-]{0,15}$")
_CITY_CODE_RE: Final = re.compile(r"^[0-9a-f]{4}$")

ISSUER_NAMES: Final = {"xianyang": "Xianyang Yikatong", "xian": "Xi'an Chang'an Tong"}


# --- issuers ------------------------------------------------------------------------------


def ensure_issuers(session: Session, *, own_city: str) -> list[Issuer]:
    """Register the built-in issuers (Xianyang, Xi'an) if missing; ``own`` is the configured city's.

    Rows already there are left as they are (ownership is never changed behind the operator's back).
    """
    out = []
    for city, raw in ISSUERS.items():
        issuer = session.get(Issuer, raw.hex())
        if issuer is None:
            issuer = Issuer(
                issuer_id=raw.hex(),
                city=city,
                name=ISSUER_NAMES.get(city, city),
                city_code=CITY_CODES[city].hex(),
                own=city == own_city,
            )
            session.add(issuer)
        out.append(issuer)
    session.flush()
    return out


def register_issuer(
    session: Session, issuer_id: str, *, city: str, name: str, city_code: str | None = None, own: bool
) -> Issuer:
    """Register a card issuer; any issuer registered ``own`` whose keys are in the key store can issue cards.

    ``issuer_id``: 16 hex chars (file 0x15 bytes 0-7). ``city``: a short lower-case name
    (letters, digits, ``_``, ``-``; at most 16). ``name``: 1-64 characters. ``city_code``:
    4 hex digits, file 0x17's city code and the ASN prefix of the issuer's cards; default
    the city code inside the issuer id (hex digits 5-8, ``docs/decisions.md``). ``own``
    must be said: whether this installation issues the issuer's cards (and holds its load
    and TAC keys) or only accepts them as acquirer. Registering the same issuer again with
    the same details returns it; with other details it is refused (``E_ISSUER_EXISTS``).
    """
    issuer_id = issuer_id.strip().lower()
    if not _ISSUER_ID_RE.fullmatch(issuer_id):
        raise ClearingError(Code.E_BAD_ISSUER, "issuer id must be 16 hex chars (file 0x15 bytes 0-7)")
    city = city.strip().lower()
    if not _CITY_RE.fullmatch(city):
        raise ClearingError(
            Code.E_BAD_ISSUER, "city must be 1-16 lower-case letters, digits, '_' or '-', starting with a letter"
        )
    name = name.strip()
    if not 0 < len(name) <= 64 or not name.isprintable():
        raise ClearingError(Code.E_BAD_ISSUER, "issuer name must be 1-64 printable characters")
    code = (issuer_id[4:8] if city_code is None else city_code.strip()).lower()
    if not _CITY_CODE_RE.fullmatch(code):
        raise ClearingError(Code.E_BAD_ISSUER, "city code must be 4 hex digits (file 0x17's city code, the ASN prefix)")
    wanted = {"city": city, "name": name, "city_code": code, "own": own}
    existing = session.get(Issuer, issuer_id)
    if existing is not None:
        differs = [field for field, value in wanted.items() if getattr(existing, field) != value]
        if differs:
            raise ClearingError(
                Code.E_ISSUER_EXISTS,
                f"issuer {issuer_id} is already registered with another {', '.join(differs)} "
                f"({existing.city}, city code {existing.city_code}, {'own' if existing.own else 'peer'})",
            )
        return existing
    issuer = Issuer(issuer_id=issuer_id, city=city, name=name, city_code=code, own=own)
    session.add(issuer)
    session.flush()
    return issuer


def cleared_issuers(session: Session, *, own_city: str) -> dict[str, set[int]]:
    """The issuers whose TACs this centre verifies, with the key versions their registered cards carry.

    Ingest verifies the cards of issuers registered ``own`` and forwards the others, so those
    are the ones whose keys ``serve`` and ``clear`` must hold; before any is registered,
    ``own_city``'s (the issuer ``yikatong init`` registers as ours).
    """
    own = list(session.scalars(select(Issuer.issuer_id).where(Issuer.own.is_(True)).order_by(Issuer.issuer_id)))
    cleared: dict[str, set[int]] = {issuer_id: set() for issuer_id in own or [ISSUERS[own_city].hex()]}
    in_use = select(Card.issuer_id, Card.key_version).where(Card.issuer_id.in_(list(cleared))).distinct()
    for issuer_id, key_version in session.execute(in_use):
        cleared[issuer_id].add(int(key_version))
    return cleared


def get_issuer(session: Session, issuer_id: str) -> Issuer | None:
    return session.get(Issuer, issuer_id.lower())


def list_issuers(session: Session) -> list[Issuer]:
    return list(session.scalars(select(Issuer).order_by(Issuer.issuer_id)))


# --- cards ----------------------------------------------------------------------------------


def get_card(session: Session, issuer_id: str, card_asn: str) -> Card | None:
    return session.execute(
        select(Card).where(Card.issuer_id == issuer_id.lower(), Card.card_asn == card_asn.lower())
    ).scalar_one_or_none()


def find_cards(session: Session, card_asn: str) -> list[Card]:
    """Cards with this ASN under any issuer (``card show --asn`` without an issuer)."""
    return list(session.scalars(select(Card).where(Card.card_asn == card_asn.lower()).order_by(Card.issuer_id)))


# --- operators and terminals ----------------------------------------------------------------


def ensure_operator(
    session: Session, operator_id: str, *, name: str | None = None, kind: str = "bus_operator"
) -> Operator:
    """The operator (created with its payable account if new)."""
    if not _OPERATOR_ID_RE.fullmatch(operator_id):
        raise ClearingError(Code.E_BAD_OPERATOR, "operator must be 1-64 letters, digits, space, '.', '_' or '-'")
    operator = session.get(Operator, operator_id)
    if operator is None:
        payable = accounts.operator_payable(session, operator_id)
        operator = Operator(operator_id=operator_id, name=name or operator_id, kind=kind, payable_account_id=payable)
        session.add(operator)
        session.flush()
    return operator


def get_terminal(session: Session, terminal_id: str) -> Terminal | None:
    return session.get(Terminal, terminal_id.lower())


def register_terminal(
    session: Session,
    terminal_id: str,
    operator: str,
    route: str | None = None,
    *,
    replace_token: bool = False,
    valid_routes: Collection[str] | None = None,
) -> str:
    """Register a terminal and return its bearer token ``<terminal_id>.<secret>``; only the secret's
    hash is stored, so the token cannot be shown again.

    A terminal already registered is refused unless ``replace_token``: then it gets a new
    token, its old one stops working, and its route is updated. A new token never moves the
    terminal to another operator (it used to move its payable silently, mid-day included):
    which operator a terminal pays is settlement's dated assignment (``yikatong operator
    assign-terminal``, ``settlement_terminal_assignments``), so asking for another operator here
    is refused with ``E_TERMINAL_EXISTS``. ``valid_routes``: the tariff's routes; another route
    is refused with the list (``E_BAD_ROUTE``).
    """
    terminal_id = terminal_id.lower()
    if not _TERMINAL_ID_RE.match(terminal_id):
        raise ClearingError(Code.E_BAD_TERMINAL_ID, "terminal id must be 12 hex chars (the PSAM terminal number)")
    if route is not None and not 0 < len(route) <= 64:
        raise ClearingError(Code.E_BAD_ROUTE, "route must be 1-64 characters")
    if route is not None and valid_routes is not None and route not in valid_routes:
        raise ClearingError(
            Code.E_BAD_ROUTE, f"route {route!r} is not in the tariff; its routes are {', '.join(sorted(valid_routes))}"
        )
    existing = session.get(Terminal, terminal_id)
    if existing is not None and not replace_token:
        raise ClearingError(Code.E_TERMINAL_EXISTS, f"terminal {terminal_id} is already registered")
    if existing is not None and existing.operator_id != operator:
        raise ClearingError(
            Code.E_TERMINAL_EXISTS,
            f"terminal {terminal_id} belongs to operator {existing.operator_id!r}; a new token does not move it "
            f"to {operator!r}: assign it from a business day with `yikatong operator assign-terminal "
            f"--terminal {terminal_id} --operator {operator} --from YYYY-MM-DD`",
        )
    op = ensure_operator(session, operator)
    token, secret = new_token(terminal_id)
    if existing is not None:
        existing.token_hash = hash_token(secret)
        existing.route = route
        existing.active = True
    else:
        session.add(
            Terminal(
                terminal_id=terminal_id,
                operator_id=op.operator_id,
                payable_account_id=op.payable_account_id,
                route=route,
                token_hash=hash_token(secret),
                active=True,
            )
        )
    session.flush()
    return token


class TokenCheck(enum.Enum):
    """What a bearer token is for a terminal's path: the API answers 200, 403 or 401."""

    OK = "ok"
    OTHER_TERMINAL = "other_terminal"  # verifies, but for the terminal it names, not this one
    INVALID = "invalid"  # missing, malformed, unknown or inactive terminal, wrong secret


def new_token(terminal_id: str) -> tuple[str, str]:
    """A fresh ``(token, secret)`` for a terminal; only the secret's hash is stored."""
    secret = secrets.token_urlsafe(TOKEN_BYTES)
    return f"{terminal_id.lower()}{TOKEN_SEPARATOR}{secret}", secret


def split_token(token: str) -> tuple[str, str] | None:
    """``(terminal_id, secret)`` of a well-formed ``<terminal_id>.<secret>`` token, else None."""
    named, sep, secret = token.partition(TOKEN_SEPARATOR)
    if not sep or not secret or not _TERMINAL_ID_RE.match(named):
        return None
    return named, secret


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))


def _verify_secret(session: Session, terminal_id: str, secret: str) -> Terminal | None:
    """The active terminal if ``secret`` is its; always pays one scrypt check, so an unknown or
    inactive terminal cannot be told from a wrong secret by timing."""
    terminal = session.get(Terminal, terminal_id)
    if terminal is None or not terminal.active:
        check_token(_dummy_hash(), secret)
        return None
    return terminal if check_token(terminal.token_hash, secret) else None


def check_terminal_token(session: Session, terminal_id: str, token: str) -> tuple[TokenCheck, Terminal | None]:
    """Judge a bearer token presented on ``terminal_id``'s path.

    ``OK`` with the terminal when the token is its own; ``OTHER_TERMINAL`` (no terminal)
    when the token names another terminal *and its secret verifies for that terminal*;
    ``INVALID`` for everything else (a prefix naming another terminal with a wrong secret
    is just a wrong token).
    """
    terminal_id = terminal_id.lower()
    parts = split_token(token)
    if parts is None:
        check_token(_dummy_hash(), token)  # same cost as a wrong secret
        return TokenCheck.INVALID, None
    named, secret = parts
    if _same(named, terminal_id):
        terminal = _verify_secret(session, terminal_id, secret)
        return (TokenCheck.OK, terminal) if terminal is not None else (TokenCheck.INVALID, None)
    if _verify_secret(session, named, secret) is not None:
        return TokenCheck.OTHER_TERMINAL, None
    return TokenCheck.INVALID, None


def verify_terminal_token(session: Session, terminal_id: str, token: str) -> Terminal | None:
    """The active terminal whose token this is, or None (another terminal's, unknown, inactive, wrong)."""
    verdict, terminal = check_terminal_token(session, terminal_id, token)
    return terminal if verdict is TokenCheck.OK else None


# --- token hashing ------------------------------------------------------------------------

_verified: OrderedDict[tuple[str, bytes], None] = OrderedDict()
_verified_lock = threading.Lock()


@lru_cache(maxsize=1)
def _dummy_hash() -> str:
    return hash_token(secrets.token_urlsafe(TOKEN_BYTES))


def hash_token(token: str, *, salt: bytes | None = None) -> str:
    """``scrypt$N$r$p$<salt hex>$<hash hex>``; the parameters travel with the hash."""
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(
        token.encode("utf-8"), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=SCRYPT_DKLEN, maxmem=64 * 2**20
    )
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${salt.hex()}${digest.hex()}"


def check_token(stored: str, token: str) -> bool:
    """Constant-time check of ``token`` against a stored hash; successes are cached in memory."""
    fingerprint = hashlib.sha256(token.encode("utf-8")).digest()
    key = (stored, fingerprint)
    with _verified_lock:
        if key in _verified:
            _verified.move_to_end(key)
            return True
    try:
        scheme, n, r, p, salt_hex, digest_hex = stored.split("$")
        if scheme != "scrypt":
            return False
        digest = hashlib.scrypt(
            token.encode("utf-8"), salt=bytes.fromhex(salt_hex), n=int(n), r=int(r), p=int(p),
            dklen=len(digest_hex) // 2, maxmem=64 * 2**20,
        )  # fmt: skip
    except ValueError:
        return False
    ok = hmac.compare_digest(digest, bytes.fromhex(digest_hex))
    if ok:
        with _verified_lock:
            _verified[key] = None
            while len(_verified) > _VERIFIED_MAX:
                _verified.popitem(last=False)
    return ok


__all__ = [
    "TOKEN_SEPARATOR",
    "ClearingError",
    "TokenCheck",
    "check_terminal_token",
    "check_token",
    "cleared_issuers",
    "ensure_issuers",
    "ensure_operator",
    "find_cards",
    "get_card",
    "get_issuer",
    "get_terminal",
    "hash_token",
    "list_issuers",
    "new_token",
    "register_issuer",
    "register_terminal",
    "split_token",
    "verify_terminal_token",
]
