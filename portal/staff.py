"""Staff accounts of the console: roles, argon2id passwords, TOTP (pyotp), sessions.

Issue 10, "Staff console"; ``docs/portal.md``, "Staff console". The pure parts are the
username rule, the role table (``ROLE_ACTIONS``) and ``totp_step`` (which 30 s step a code
belongs to); ``StaffService`` is the shell around them.

- **Roles.** ``counter_clerk`` (card search and view, replacement, unblock), ``finance``
  (top-up refunds, the notices), ``administrator`` (staff accounts, the audit log). One role
  per account, nothing inherited: an administrator who also serves at the counter has two
  accounts, so each audit line says in which capacity it was done.
- **Two factors.** The password (argon2id, ``portal.passwords``) and a TOTP code (RFC 6238:
  SHA-1, 6 digits, 30 s; the step before and after are accepted, pyotp's ``valid_window=1``).
  A code is accepted only for a step later than the last one accepted for the account
  (``totp_last_step``, moved with a conditional UPDATE, so two racing logins cannot both
  spend one code): a code seen over a shoulder is worth nothing once used.
- **The TOTP secret** is stored encrypted (AES-256-GCM, the key derived from the portal's
  lookup key with its own label, the username as associated data); the provisioning URI is
  shown once, when the account is made or its TOTP reset (``yikatong staff add|reset-totp``).
- **Login** answers one code, ``E_STAFF_LOGIN_FAILED``, for an unknown username, a wrong
  password, a wrong or replayed code and a disabled account, spending one argon2 verify on
  each; limited per username (hashed) and per client IP. Every login makes a new session
  (256-bit token, the id stored is its SHA-256) and deletes the one the browser sent
  (rotation). Sessions are short: ``STAFF_SESSION_TTL_S_DEFAULT`` (30 min), absolute.
- Every login and failed login is an audit line (``portal.audit``).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import logging
import os
import re
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Final

import pyotp
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from portal import identity
from portal.audit import AuditLog
from portal.errors import Code, PortalError
from portal.models import STAFF_ROLES, PortalStaff, PortalStaffSession
from portal.passwords import Passwords, check_policy
from portal.ratelimit import MemoryLimiter, RateLimiter, Rule

log = logging.getLogger(__name__)

TOTP_INTERVAL_S: Final = 30
TOTP_DIGITS: Final = 6
TOTP_VALID_WINDOW: Final = 1  # steps either side of now (pyotp's valid_window)
TOTP_ISSUER: Final = "Yikatong Xianyang"
STAFF_SESSION_TTL_S_DEFAULT: Final = 30 * 60
SESSION_TOKEN_BYTES: Final = 32
_TOKEN_SHAPE: Final = re.compile(r"[A-Za-z0-9_-]{20,64}")
_USERNAME: Final = re.compile(r"[a-z][a-z0-9._-]{2,31}")
_CODE_SHAPE: Final = re.compile(r"[0-9]{6}")
_TOTP_KEY_LABEL: Final = b"yikatong/portal/staff-totp/v1"
_RATE_KEY_LABEL: Final = b"yikatong/portal/ratelimit-staff/v1\x00"

COUNTER_CLERK: Final = "counter_clerk"
FINANCE: Final = "finance"
ADMINISTRATOR: Final = "administrator"

# What each role may do (the routes check it; ``may`` is the one question they ask).
ROLE_ACTIONS: Final[dict[str, frozenset[str]]] = {
    COUNTER_CLERK: frozenset(
        {
            "card_search", "card_view", "replacement", "unblock",  # cards at the counter
            "permit_review",  # portal.modules.permits
            "ss_entries_view", "ss_correction",  # portal.modules.social_security
            "medical_claim_review",  # portal.modules.medical
        }
    ),
    FINANCE: frozenset(
        {
            "refund", "notices_view",  # top-ups
            "finance_view", "parties_view", "parties_edit", "statement_download",  # settlement
            "disputes_view", "dispute_move",  # interop with Xi'an
            "medical_reversal",  # a settled clinic visit reversed
            "bills_file",  # a biller's daily file of payments
        }
    ),
    ADMINISTRATOR: frozenset({"staff_add", "staff_list", "staff_reset_totp", "audit_view", "parties_view"}),
}  # fmt: skip
assert set(ROLE_ACTIONS) == set(STAFF_ROLES)


def may(role: str, action: str) -> bool:
    return action in ROLE_ACTIONS.get(role, frozenset())


def parse_username(text: str) -> str:
    name = text.strip().lower()
    # no mobile number as a name, nor 20 hex letters in a row (the audit log reads them as a card number)
    if not _USERNAME.fullmatch(name) or re.search(r"[0-9]{11}", name) or re.search(r"[0-9a-f]{20}", name):
        raise PortalError(Code.E_STAFF_USERNAME, "3 to 32 characters: a-z first, then a-z, 0-9, '.', '_' or '-'")
    return name


def parse_role(text: str) -> str:
    if text not in STAFF_ROLES:
        raise PortalError(Code.E_STAFF_ROLE, f"the role is one of {', '.join(STAFF_ROLES)}")
    return text


def totp_step(secret: str, code: str, now_s: float, *, window: int = TOTP_VALID_WINDOW) -> int | None:
    """The time step (``now_s // 30`` ± ``window``) whose code ``code`` is, or None (constant time per step)."""
    if not _CODE_SHAPE.fullmatch(code):
        return None
    totp = pyotp.TOTP(secret, digits=TOTP_DIGITS, interval=TOTP_INTERVAL_S)
    now_step = int(now_s // TOTP_INTERVAL_S)
    found = None
    for step in range(now_step - window, now_step + window + 1):
        if hmac.compare_digest(totp.generate_otp(step).encode(), code.encode()):
            found = step
    return found


def provisioning_uri(secret: str, username: str) -> str:
    return pyotp.TOTP(secret, digits=TOTP_DIGITS, interval=TOTP_INTERVAL_S).provisioning_uri(
        name=username, issuer_name=TOTP_ISSUER
    )


def session_id_of(token: str) -> str:
    return hashlib.sha256(token.encode("ascii")).hexdigest()


@dataclass(frozen=True, slots=True)
class StaffView:
    staff_id: int
    username: str
    role: str
    active: bool
    created_at: dt.datetime


@dataclass(frozen=True, slots=True)
class NewStaff:
    staff: StaffView
    provisioning_uri: str  # shown once: the secret is not readable again


@dataclass(frozen=True, slots=True)
class StaffSession:
    session_id: str
    staff_id: int
    username: str
    role: str
    csrf_token: str
    expires_at: dt.datetime

    @property
    def actor(self) -> str:
        return f"staff:{self.username}"


@dataclass(frozen=True, slots=True)
class NewStaffSession:
    token: str
    session: StaffSession


_LOGIN_PER_USERNAME: Final = Rule(5, 15 * 60)
_LOGIN_PER_IP: Final = Rule(50, 15 * 60)


@dataclass(frozen=True, slots=True)
class StaffLimits:
    login_per_username: Rule = _LOGIN_PER_USERNAME
    login_per_ip: Rule = _LOGIN_PER_IP


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _view(row: PortalStaff) -> StaffView:
    return StaffView(row.id, row.username, row.role, row.active, row.created_at)


@dataclass
class StaffService:
    sessions: sessionmaker[Session]
    lookup_key: bytes
    audit: AuditLog
    passwords: Passwords = field(default_factory=Passwords)
    limiter: RateLimiter = field(default_factory=MemoryLimiter)
    limits: StaffLimits = field(default_factory=StaffLimits)
    session_ttl_s: int = STAFF_SESSION_TTL_S_DEFAULT
    clock: Callable[[], dt.datetime] = _utcnow
    _aead: AESGCM = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if len(self.lookup_key) < identity.LOOKUP_KEY_BYTES_MIN:
            raise ValueError(f"the lookup key must be at least {identity.LOOKUP_KEY_BYTES_MIN} bytes")
        assert self.session_ttl_s > 0
        self._aead = AESGCM(hmac.new(self.lookup_key, _TOTP_KEY_LABEL, hashlib.sha256).digest())

    @contextmanager
    def _tx(self) -> Iterator[Session]:
        with self.sessions() as session, session.begin():
            yield session

    # --- the TOTP secret at rest ----------------------------------------------------------------

    def _seal(self, username: str, secret: str) -> str:
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, secret.encode("ascii"), b"staff-totp:" + username.encode())
        return base64.urlsafe_b64encode(nonce + sealed).decode("ascii")

    def _open(self, username: str, sealed: str) -> str:
        raw = base64.urlsafe_b64decode(sealed.encode("ascii"))
        return self._aead.decrypt(raw[:12], raw[12:], b"staff-totp:" + username.encode()).decode("ascii")

    # --- accounts -------------------------------------------------------------------------------

    def add(self, username: str, role: str, password: str, *, actor: str) -> NewStaff:
        """A staff account; answers the TOTP provisioning URI once (``E_STAFF_EXISTS`` if taken)."""
        name, the_role = parse_username(username), parse_role(role)
        check_policy(password)
        password_hash = self.passwords.hash(password)
        secret = pyotp.random_base32()
        try:
            with self._tx() as session:
                row = PortalStaff(
                    username=name, role=the_role, password_hash=password_hash, totp_secret_enc=self._seal(name, secret),
                    totp_last_step=0, active=True, created_at=self.clock(),
                )  # fmt: skip
                session.add(row)
                session.flush()
                view = _view(row)
                self.audit.record(session, actor=actor, action="staff_add", target=f"staff:{name}",
                                  detail=f"role {the_role}")  # fmt: skip
        except IntegrityError:
            self.audit.record_now(actor=actor, action="staff_add", target=f"staff:{name}", outcome="E_STAFF_EXISTS")
            raise PortalError(Code.E_STAFF_EXISTS, "a staff account with this username exists") from None
        log.info("staff account %d added (%s)", view.staff_id, the_role)
        return NewStaff(view, provisioning_uri(secret, name))

    def accounts(self, *, actor: str | None = None) -> list[StaffView]:
        with self.sessions() as session:
            rows = [_view(r) for r in session.scalars(select(PortalStaff).order_by(PortalStaff.username))]
        if actor is not None:
            self.audit.record_now(actor=actor, action="staff_list", detail=f"{len(rows)} accounts")
        return rows

    def reset_totp(self, username: str, *, actor: str) -> NewStaff:
        """A new TOTP secret (the old codes stop working); the account's sessions end."""
        name = parse_username(username)
        secret = pyotp.random_base32()
        with self._tx() as session:
            row = session.scalar(select(PortalStaff).where(PortalStaff.username == name).with_for_update())
            if row is None:
                raise PortalError(Code.E_STAFF_NOT_FOUND, "no such staff account")
            row.totp_secret_enc = self._seal(name, secret)
            row.totp_last_step = 0
            session.execute(delete(PortalStaffSession).where(PortalStaffSession.staff_id == row.id))
            view = _view(row)
            self.audit.record(session, actor=actor, action="staff_reset_totp", target=f"staff:{name}")
        return NewStaff(view, provisioning_uri(secret, name))

    # --- sessions -------------------------------------------------------------------------------

    def _limit(self, key: str, rule: Rule) -> None:
        if not self.limiter.hit(key, rule):
            raise PortalError(Code.E_RATE_LIMITED, f"too many attempts; try again in {int(rule.window_s)} s at most")

    def _user_key(self, text: str) -> str:
        digest = hmac.new(self.lookup_key, _RATE_KEY_LABEL + text.encode("utf-8", "replace"), hashlib.sha256)
        return digest.hexdigest()[:32]

    def login(
        self, username: str, password: str, totp_code: str, *, client_ip: str, previous_token: str | None
    ) -> NewStaffSession:
        """A fresh staff session for the right username, password and unused TOTP code."""
        typed = username.strip().lower()[:64]
        known = bool(_USERNAME.fullmatch(typed)) and not re.search(r"[0-9]{11}", typed)
        target = f"staff:{typed}" if known else "staff:?"
        try:
            self._limit(f"staff-login:ip:{client_ip}", self.limits.login_per_ip)
            self._limit(f"staff-login:user:{self._user_key(typed)}", self.limits.login_per_username)
        except PortalError:
            self.audit.record_now(actor="anonymous", action="staff_login", target=target, outcome="E_RATE_LIMITED")
            raise
        failed = PortalError(Code.E_STAFF_LOGIN_FAILED, "the username, the password or the one-time code is wrong")
        with self.sessions() as session:
            row = session.scalar(select(PortalStaff).where(PortalStaff.username == typed)) if known else None
        if row is None:
            self.passwords.dummy_verify(password)
            self.audit.record_now(actor="anonymous", action="staff_login", target="staff:?",
                                  outcome="E_STAFF_LOGIN_FAILED", detail="no such account")  # fmt: skip
            raise failed
        ok, rehashed = self.passwords.verify(row.password_hash, password)
        why = None if ok else "wrong password"
        step = None
        if why is None and not row.active:
            why = "account disabled"
        if why is None:
            try:
                secret = self._open(row.username, row.totp_secret_enc)
            except (InvalidTag, ValueError):
                why = "TOTP secret unreadable"
            else:
                step = totp_step(secret, totp_code.strip(), self.clock().timestamp())
                if step is None:
                    why = "wrong one-time code"
        if why is not None or step is None:
            self.audit.record_now(actor=f"staff:{row.username}", action="staff_login", target=target,
                                  outcome="E_STAFF_LOGIN_FAILED", detail=why or "")  # fmt: skip
            log.info("staff login failed for %d: %s", row.id, why)
            raise failed
        token = secrets.token_urlsafe(SESSION_TOKEN_BYTES)
        now = self.clock()
        current = StaffSession(
            session_id_of(token), row.id, row.username, row.role, secrets.token_urlsafe(SESSION_TOKEN_BYTES),
            now + dt.timedelta(seconds=self.session_ttl_s),
        )  # fmt: skip
        with self._tx() as session:
            spent = session.execute(
                update(PortalStaff)
                .where(PortalStaff.id == row.id, PortalStaff.totp_last_step < step)
                .values(totp_last_step=step)
            )
            if spent.rowcount != 1:  # type: ignore[attr-defined]
                replayed = True
            else:
                replayed = False
                if previous_token is not None and _TOKEN_SHAPE.fullmatch(previous_token):
                    session.execute(
                        delete(PortalStaffSession).where(PortalStaffSession.id == session_id_of(previous_token))
                    )
                session.execute(
                    delete(PortalStaffSession).where(
                        PortalStaffSession.staff_id == row.id, PortalStaffSession.expires_at <= now
                    )
                )
                session.add(
                    PortalStaffSession(id=current.session_id, staff_id=row.id, csrf_token=current.csrf_token,
                                       created_at=now, expires_at=current.expires_at)
                )  # fmt: skip
                if rehashed is not None:
                    session.execute(update(PortalStaff).where(PortalStaff.id == row.id).values(password_hash=rehashed))
                self.audit.record(session, actor=current.actor, action="staff_login", target=target)
        if replayed:
            self.audit.record_now(actor=f"staff:{row.username}", action="staff_login", target=target,
                                  outcome="E_STAFF_LOGIN_FAILED", detail="one-time code already used")  # fmt: skip
            raise failed
        log.info("staff %d logged in", row.id)
        return NewStaffSession(token, current)

    def current(self, token: str | None) -> StaffSession:
        missing = PortalError(Code.E_STAFF_SESSION_REQUIRED, "log in to the staff console first")
        if token is None or _TOKEN_SHAPE.fullmatch(token) is None:
            raise missing
        with self.sessions() as session:
            found = session.execute(
                select(PortalStaffSession, PortalStaff)
                .join(PortalStaff, PortalStaff.id == PortalStaffSession.staff_id)
                .where(PortalStaffSession.id == session_id_of(token))
            ).one_or_none()
            if found is None:
                raise missing
            row, staff = found
            if row.expires_at <= self.clock() or not staff.active:
                session.execute(delete(PortalStaffSession).where(PortalStaffSession.id == row.id))
                session.commit()
                raise PortalError(Code.E_STAFF_SESSION_REQUIRED, "the staff session has ended; log in again")
            return StaffSession(row.id, staff.id, staff.username, staff.role, row.csrf_token, row.expires_at)

    def logout(self, current: StaffSession) -> None:
        with self._tx() as session:
            session.execute(delete(PortalStaffSession).where(PortalStaffSession.id == current.session_id))
            self.audit.record(session, actor=current.actor, action="staff_logout")

    def require(self, current: StaffSession, action: str) -> None:
        """``E_STAFF_FORBIDDEN`` unless the session's role may do ``action`` (the refusal is audited)."""
        if not may(current.role, action):
            self.audit.record_now(actor=current.actor, action=action, outcome="E_STAFF_FORBIDDEN",
                                  detail=f"role {current.role}")  # fmt: skip
            raise PortalError(Code.E_STAFF_FORBIDDEN, f"the role {current.role} may not do this")


__all__ = [
    "ADMINISTRATOR",
    "COUNTER_CLERK",
    "FINANCE",
    "ROLE_ACTIONS",
    "STAFF_SESSION_TTL_S_DEFAULT",
    "NewStaff",
    "NewStaffSession",
    "StaffLimits",
    "StaffService",
    "StaffSession",
    "StaffView",
    "may",
    "parse_role",
    "parse_username",
    "provisioning_uri",
    "totp_step",
]
