"""Citizen accounts: register, log in and out, sessions, and binding a card by a transit-card proof.

Issue 10, "Account"; ``docs/portal.md``, "Accounts and sessions". The checks are the pure
functions of ``portal.identity`` and ``portal.passwords``; this module is the shell around
them (the database, the rate limiter and the clock are passed in).

- **Registration** stores the mobile number (the login), an argon2id hash of the password,
  the real name, and of the resident ID number only its keyed hash and masked form. The
  unique constraints on mobile and ID hash make a replayed form (or two racing) create one
  citizen: the second is ``E_MOBILE_TAKEN``.
- **Login** answers one code, ``E_LOGIN_FAILED``, for an unknown mobile number and a wrong
  password, and spends one argon2 verify on either (``Passwords.dummy_verify``). Every login
  makes a new session (256-bit token, rotation): the browser's previous session, if it sent
  one, is deleted in the same transaction. The database holds SHA-256 of the token, never
  the token.
- **Binding** a transit-only card proves possession by the card number plus the amount and
  date of one of its last three cleared transactions (``PROOF_TRANSACTIONS``). An unknown
  card is answered as a wrong proof (no probing which card numbers exist); only after a
  right proof is a card bound to someone else refused, as ``E_CARD_BOUND_ELSEWHERE``,
  without saying to whom.
- Nothing here logs a mobile number, an ID number or a name: log lines carry the citizen's
  row id and codes only.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import logging
import re
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Final
from zoneinfo import ZoneInfo

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from clearing import ledger, registry, transfer_ids
from clearing.models import Card, Tap, TransferState
from portal import identity
from portal.errors import Code, PortalError
from portal.models import PortalCardBinding, PortalCitizen, PortalSession
from portal.passwords import Passwords, check_policy
from portal.ratelimit import MemoryLimiter, RateLimiter, Rule

log = logging.getLogger(__name__)

SESSION_TOKEN_BYTES: Final = 32  # 256 bits
SESSION_TTL_S_DEFAULT: Final = 12 * 3600  # absolute: a session ends 12 h after login, used or not
TOKEN_CHARS_MAX: Final = 64
PROOF_TRANSACTIONS: Final = 3
PROOF_SCAN_MAX: Final = 30  # transfers read to find the last three posted ones (pending/void rows are skipped)
CARD_LOCAL_ZONE: Final = ZoneInfo("Asia/Shanghai")
_TOKEN_SHAPE: Final = re.compile(r"[A-Za-z0-9_-]{20,64}")
_RATE_KEY_LABEL: Final = b"yikatong/portal/ratelimit-mobile/v1\x00"
_CARD_RATE_KEY_LABEL: Final = b"yikatong/portal/ratelimit-card/v1\x00"


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _today_shanghai() -> dt.date:
    return dt.datetime.now(CARD_LOCAL_ZONE).date()


def session_id_of(token: str) -> str:
    """What the database keys a session by: SHA-256 of its token (a table leak opens no session)."""
    return hashlib.sha256(token.encode("ascii")).hexdigest()


_LOGIN_PER_MOBILE: Final = Rule(10, 15 * 60)
_LOGIN_PER_IP: Final = Rule(100, 15 * 60)  # carriers put many phones behind one address
_REGISTER_PER_IP: Final = Rule(20, 60 * 60)
_BIND_PER_CITIZEN: Final = Rule(5, 60 * 60)
_BIND_PER_IP: Final = Rule(30, 60 * 60)
_BIND_PER_CARD: Final = Rule(5, 24 * 60 * 60)  # throwaway accounts and addresses cost nothing; the card is fixed


@dataclass(frozen=True, slots=True)
class AccountLimits:
    """Rate limits (settings): attempts per window, per mobile number / citizen and per client IP."""

    login_per_mobile: Rule = _LOGIN_PER_MOBILE
    login_per_ip: Rule = _LOGIN_PER_IP
    register_per_ip: Rule = _REGISTER_PER_IP
    bind_per_citizen: Rule = _BIND_PER_CITIZEN
    bind_per_ip: Rule = _BIND_PER_IP
    bind_per_card: Rule = _BIND_PER_CARD


@dataclass(frozen=True, slots=True)
class CitizenView:
    """What the API may show of a citizen: masked forms only."""

    citizen_id: int
    mobile_masked: str
    real_name_masked: str
    id_number_masked: str | None


@dataclass(frozen=True, slots=True)
class CurrentSession:
    session_id: str  # the hash, not the token
    citizen_id: int
    csrf_token: str
    assurance: str
    expires_at: dt.datetime


@dataclass(frozen=True, slots=True)
class NewSession:
    token: str  # the cookie's value; shown once, stored only hashed
    session: CurrentSession
    citizen: CitizenView


@dataclass(frozen=True, slots=True)
class BindingView:
    issuer_id: str
    card_asn: str
    bound_at: dt.datetime
    how: str


def _view(row: PortalCitizen) -> CitizenView:
    return CitizenView(
        row.id, identity.Mobile(row.mobile).masked, identity.mask_real_name(row.real_name), row.id_number_masked
    )


def _binding(row: PortalCardBinding) -> BindingView:
    return BindingView(row.issuer_id, row.card_asn, row.bound_at, row.how)


@dataclass
class AccountService:
    """Built once by the composition root (``yikatong.app``) or by a test."""

    sessions: sessionmaker[Session]
    lookup_key: bytes  # the ID-number hash key (and the rate-limit key of mobile numbers)
    passwords: Passwords = field(default_factory=Passwords)
    limiter: RateLimiter = field(default_factory=MemoryLimiter)
    limits: AccountLimits = field(default_factory=AccountLimits)
    session_ttl_s: int = SESSION_TTL_S_DEFAULT
    clock: Callable[[], dt.datetime] = _utcnow
    today: Callable[[], dt.date] = _today_shanghai

    def __post_init__(self) -> None:
        if len(self.lookup_key) < identity.LOOKUP_KEY_BYTES_MIN:
            raise ValueError(f"the lookup key must be at least {identity.LOOKUP_KEY_BYTES_MIN} bytes")
        assert self.session_ttl_s > 0

    @contextmanager
    def _tx(self) -> Iterator[Session]:
        with self.sessions() as session, session.begin():
            yield session

    def _limit(self, key: str, rule: Rule) -> None:
        if not self.limiter.hit(key, rule):
            log.info("rate limit reached: %s", key.split(":", 2)[0] + ":" + key.split(":", 2)[1])
            raise PortalError(Code.E_RATE_LIMITED, f"too many attempts; try again in {int(rule.window_s)} s at most")

    def _mobile_key(self, text: str) -> str:
        digest = hmac.new(self.lookup_key, _RATE_KEY_LABEL + text.encode("utf-8", "replace"), hashlib.sha256)
        return digest.hexdigest()[:32]

    def _card_key(self, issuer_id: str | None, card_asn: str) -> str:
        """The per-card binding limit's key: HMAC of issuer and ASN (an ASN is a card number: not in Redis)."""
        text = f"{(issuer_id or '?').strip().lower()}:{card_asn.strip().lower()}"
        digest = hmac.new(self.lookup_key, _CARD_RATE_KEY_LABEL + text.encode("utf-8", "replace"), hashlib.sha256)
        return digest.hexdigest()[:32]

    # --- register -------------------------------------------------------------------------

    def register(self, mobile: str, password: str, real_name: str, id_number: str, *, client_ip: str) -> CitizenView:
        """A new citizen (``E_MOBILE_TAKEN`` / ``E_ID_NUMBER_TAKEN`` when one exists; nothing more said)."""
        self._limit(f"register:ip:{client_ip}", self.limits.register_per_ip)
        the_mobile = identity.parse_mobile(mobile)
        check_policy(password)
        name = identity.parse_real_name(real_name)
        rid = identity.parse_id_number(id_number, today=self.today())
        id_hash = identity.id_number_hash(rid, self.lookup_key)
        password_hash = self.passwords.hash(password)  # before the transaction: argon2 takes its time
        try:
            with self._tx() as session:
                self._refuse_taken(session, the_mobile.number, id_hash)
                row = PortalCitizen(
                    mobile=the_mobile.number,
                    password_hash=password_hash,
                    real_name=name.value,
                    id_number_hash=id_hash,
                    id_number_masked=rid.masked,
                    created_at=self.clock(),
                )
                session.add(row)
                session.flush()
                view = _view(row)
        except IntegrityError:  # a race with the same form: the other one won
            with self.sessions() as session:
                self._refuse_taken(session, the_mobile.number, id_hash)
            raise
        log.info("citizen %d registered", view.citizen_id)
        return view

    @staticmethod
    def _refuse_taken(session: Session, mobile: str, id_hash: str) -> None:
        """One statement, so one snapshot: the mobile number is named first when both are taken."""
        taken = (
            session.execute(
                select(PortalCitizen.mobile).where(
                    (PortalCitizen.mobile == mobile) | (PortalCitizen.id_number_hash == id_hash)
                )
            )
            .scalars()
            .all()
        )
        if mobile in taken:
            raise PortalError(Code.E_MOBILE_TAKEN, "an account with this mobile number exists; log in instead")
        if taken:
            raise PortalError(Code.E_ID_NUMBER_TAKEN, "an account with this ID number exists; log in instead")

    # --- sessions ---------------------------------------------------------------------------

    def login(self, mobile: str, password: str, *, client_ip: str, previous_token: str | None) -> NewSession:
        """A fresh session for the right mobile and password; the browser's previous session is deleted."""
        self._limit(f"login:ip:{client_ip}", self.limits.login_per_ip)
        failed = PortalError(Code.E_LOGIN_FAILED, "the mobile number or the password is wrong")
        try:
            number = identity.parse_mobile(mobile).number
        except PortalError:
            number = None
        self._limit(f"login:mobile:{self._mobile_key(number or mobile)}", self.limits.login_per_mobile)
        with self.sessions() as session:
            row = session.scalar(select(PortalCitizen).where(PortalCitizen.mobile == number)) if number else None
        if row is None:
            self.passwords.dummy_verify(password)
            log.info("login failed: no such account")
            raise failed
        ok, rehashed = self.passwords.verify(row.password_hash, password)
        if not ok:
            log.info("login failed for citizen %d: wrong password", row.id)
            raise failed
        token = secrets.token_urlsafe(SESSION_TOKEN_BYTES)
        now = self.clock()
        current = CurrentSession(
            session_id_of(token),
            row.id,
            secrets.token_urlsafe(SESSION_TOKEN_BYTES),
            "account",
            now + dt.timedelta(seconds=self.session_ttl_s),
        )
        with self._tx() as session:
            if previous_token is not None and _TOKEN_SHAPE.fullmatch(previous_token):
                session.execute(delete(PortalSession).where(PortalSession.id == session_id_of(previous_token)))
            session.execute(
                delete(PortalSession).where(PortalSession.citizen_id == row.id, PortalSession.expires_at <= now)
            )
            session.add(
                PortalSession(
                    id=current.session_id,
                    citizen_id=row.id,
                    csrf_token=current.csrf_token,
                    created_at=now,
                    expires_at=current.expires_at,
                    assurance=current.assurance,
                )
            )
            if rehashed is not None:
                stored = session.get(PortalCitizen, row.id)
                assert stored is not None
                stored.password_hash = rehashed
        log.info("citizen %d logged in", row.id)
        return NewSession(token, current, _view(row))

    def current(self, token: str | None) -> CurrentSession:
        """The live session of this cookie value (``E_SESSION_REQUIRED`` if none or ended)."""
        missing = PortalError(Code.E_SESSION_REQUIRED, "log in first")
        if token is None or _TOKEN_SHAPE.fullmatch(token) is None:
            raise missing
        with self.sessions() as session:
            row = session.get(PortalSession, session_id_of(token))
            if row is None:
                raise missing
            if row.expires_at <= self.clock():
                session.execute(delete(PortalSession).where(PortalSession.id == row.id))
                session.commit()
                raise PortalError(Code.E_SESSION_REQUIRED, "the session has ended; log in again")
            return CurrentSession(row.id, row.citizen_id, row.csrf_token, row.assurance, row.expires_at)

    def logout(self, current: CurrentSession) -> None:
        with self._tx() as session:
            session.execute(delete(PortalSession).where(PortalSession.id == current.session_id))
        log.info("citizen %d logged out", current.citizen_id)

    def me(self, current: CurrentSession) -> CitizenView:
        with self.sessions() as session:
            row = session.get(PortalCitizen, current.citizen_id)
            if row is None:
                raise PortalError(Code.E_SESSION_REQUIRED, "log in first")
            return _view(row)

    # --- cards ------------------------------------------------------------------------------

    def bind_card(
        self,
        current: CurrentSession,
        card_asn: str,
        *,
        issuer_id: str | None,
        amount_fen: int,
        on: dt.date,
        client_ip: str,
    ) -> BindingView:
        """Bind a card whose recent transaction the citizen knows (``docs/portal.md``, "Binding a card")."""
        self._limit(f"bind:citizen:{current.citizen_id}", self.limits.bind_per_citizen)
        self._limit(f"bind:ip:{client_ip}", self.limits.bind_per_ip)
        wrong = PortalError(
            Code.E_BIND_PROOF_WRONG, "the card number, amount and date match none of the card's last transactions"
        )
        with self._tx() as session:
            card = self._card(session, card_asn, issuer_id)
            # Per card, across all accounts and addresses: accounts are free (no SMS check) and so are
            # addresses, so only this stops many of them guessing one card's proof in parallel. Keyed by
            # the card resolved (an ASN given without its issuer counts against the same card), else as typed.
            who = (card.issuer_id, card.card_asn) if card is not None else (issuer_id, card_asn)
            self._limit(f"bind:card:{self._card_key(*who)}", self.limits.bind_per_card)
            if card is None or not self._proof_holds(session, card, amount_fen, on):
                log.info("card binding refused for citizen %d: proof wrong", current.citizen_id)
                raise wrong
            existing = session.scalar(
                select(PortalCardBinding).where(
                    PortalCardBinding.issuer_id == card.issuer_id, PortalCardBinding.card_asn == card.card_asn
                )
            )
            if existing is not None:
                if existing.citizen_id != current.citizen_id:
                    log.info("card binding refused for citizen %d: bound elsewhere", current.citizen_id)
                    raise PortalError(Code.E_CARD_BOUND_ELSEWHERE, "the card is bound to another account")
                return _binding(existing)
            row = PortalCardBinding(
                citizen_id=current.citizen_id,
                issuer_id=card.issuer_id,
                card_asn=card.card_asn,
                bound_at=self.clock(),
                how="transaction",
            )
            try:
                with session.begin_nested():  # a savepoint: a racing bind may insert the same card first
                    session.add(row)
            except IntegrityError:
                raced = session.scalar(
                    select(PortalCardBinding).where(
                        PortalCardBinding.issuer_id == card.issuer_id, PortalCardBinding.card_asn == card.card_asn
                    )
                )
                if raced is None or raced.citizen_id != current.citizen_id:
                    raise PortalError(Code.E_CARD_BOUND_ELSEWHERE, "the card is bound to another account") from None
                return _binding(raced)  # the citizen's other tab won
            view = _binding(row)
        log.info("citizen %d bound a card", current.citizen_id)
        return view

    @staticmethod
    def _card(session: Session, card_asn: str, issuer_id: str | None) -> Card | None:
        if issuer_id is not None:
            return registry.get_card(session, issuer_id, card_asn)
        found = registry.find_cards(session, card_asn)
        return found[0] if len(found) == 1 else None

    @staticmethod
    def _proof_holds(session: Session, card: Card, amount_fen: int, on: dt.date) -> bool:
        """One of the card's last three posted transfers has this amount and card-local date.

        A tap's date is its own (the card's clock, ``tx_time`` at its UTC offset: what the
        validator showed and a receipt prints), not the day it was uploaded; any other
        transfer's (a load, a sale at the counter) is the day it was posted, Asia/Shanghai.
        """
        posted = [
            t for t in ledger.transfers_of(session, card.account_id, limit=PROOF_SCAN_MAX)
            if t.state == TransferState.POSTED.value
        ][:PROOF_TRANSACTIONS]  # fmt: skip
        matched = False
        for transfer in posted:
            day = _tap_day(session, transfer.id) or transfer.created_at.astimezone(CARD_LOCAL_ZONE).date()
            matched |= transfer.amount_fen == amount_fen and day == on
        return matched

    def cards(self, current: CurrentSession) -> list[BindingView]:
        with self.sessions() as session:
            rows = session.scalars(
                select(PortalCardBinding)
                .where(PortalCardBinding.citizen_id == current.citizen_id)
                .order_by(PortalCardBinding.bound_at, PortalCardBinding.id)
            )
            return [_binding(r) for r in rows]

    def require_bound(self, current: CurrentSession, issuer_id: str, card_asn: str) -> None:
        """``E_CARD_NOT_BOUND`` unless the card is bound to this session's citizen."""
        with self.sessions() as session:
            bound = session.scalar(
                select(PortalCardBinding.citizen_id).where(
                    PortalCardBinding.issuer_id == issuer_id.lower(), PortalCardBinding.card_asn == card_asn.lower()
                )
            )
        if bound != current.citizen_id:
            raise PortalError(Code.E_CARD_NOT_BOUND, "bind the card to this account first")


def _tap_day(session: Session, transfer_id: str) -> dt.date | None:
    """The card-local date of the tap a transfer clears, or None if it is not a tap's."""
    prefix, _, rest = transfer_id.partition(":")
    terminal_id, _, seq = rest.rpartition(":")
    if prefix != "tap" or not seq.isdigit() or transfer_id != transfer_ids.tap(terminal_id, int(seq)):
        return None
    tap = session.scalar(select(Tap).where(Tap.terminal_id == terminal_id, Tap.terminal_seq == int(seq)))
    if tap is None:
        return None
    return (tap.tx_time + dt.timedelta(minutes=tap.tx_utc_offset_min)).date()


__all__ = [
    "AccountLimits",
    "AccountService",
    "BindingView",
    "CitizenView",
    "CurrentSession",
    "NewSession",
    "session_id_of",
]
