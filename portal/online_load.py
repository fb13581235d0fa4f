"""Online load (圈存) on the portal's reader page: the portal as a virtual load terminal's host.

``docs/portal.md``, "Online load on the reader page". The card is worked by the reader agent
(``portal.reader_agent``), which runs ``terminals.loading.load_card`` unchanged; its host calls
arrive here through the browser (the citizen's session cookie and CSRF token), in the terminal
contract's own shapes (``clearing.contract``: ``CardLoads``, ``LoadAuthorizeRequest`` …), and
go to ``clearing.loads`` in-process, in one transaction each, exactly as ``clearing.api``'s
``/v1/loads`` routes call them.

**How the portal identifies itself.** As one virtual load terminal, ``terminal_id`` (setting
``YIKATONG_PORTAL_LOAD_TERMINAL_ID``, 12 hex, default ``0000fe000001``). That number is what
the card's INITIALIZE FOR LOAD is given, so MAC1, MAC2 and the TAC are bound to it and the
card's load log names it, and it is what ``pending_loads.terminal_id`` records. It is not a
row of ``terminals`` and has no bearer token: the portal does not reach clearing over the
terminal API, and the reader page is authenticated as a citizen, not as a device. So instead
of clearing's terminal check, the portal checks what a citizen may do:

* every load it touches belongs to a card **bound to the session's citizen** (another's, or
  one that does not exist, is ``404 E_LOAD_NOT_FOUND``: the answer does not tell which);
* ``authorize`` and ``resolve`` name the portal's own terminal id (``409 E_LOAD_TERMINAL``),
  and ``complete`` finishes only a load the portal authorized, as clearing's route checks the
  terminal of the authorization;
* clearing's refusals (MAC1, state, in doubt, denylisted card …) come back as
  ``409 E_LOAD_REFUSED`` with clearing's code and sentence in the message
  (``E_LOAD_IN_DOUBT: …``), since the portal's registry shares no code with the contract's.

Nothing here decides anything about money: the host's rules (reserve at authorize, post at
complete, settle a load in doubt from the card's proof, never a second MAC2) are
``clearing.loads``'s. A load torn at any APDU is therefore resolved exactly as at a kiosk.
``on_change`` (optional) is told the load id after a load posts or is pending again, so the
top-up machine can learn it.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session

from clearing import loads
from clearing.contract import (
    CardLoads,
    LoadAuthorizeRequest,
    LoadAuthorizeResponse,
    LoadCompleteRequest,
    LoadCompleteResponse,
    LoadResolveRequest,
    LoadResolveResponse,
)
from clearing.errors import ClearingError
from clearing.keystore import KeyStore
from clearing.models import LoadState, PendingLoad
from portal.accounts import CurrentSession
from portal.errors import Code, PortalError
from portal.models import PortalCardBinding

log = logging.getLogger(__name__)

T = TypeVar("T")

TERMINAL_ID_DEFAULT: Final = "0000fe000001"
_TERMINAL_RE: Final = re.compile(r"[0-9a-f]{12}")
_LOAD_ID_RE: Final = re.compile(r"[A-Za-z0-9_.:-]{1,40}")
_ISSUER_RE: Final = re.compile(r"[0-9a-f]{16}")
_ASN_RE: Final = re.compile(r"[0-9a-f]{20}")


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def check_terminal_id(terminal_id: str) -> str:
    if _TERMINAL_RE.fullmatch(terminal_id) is None:
        raise ValueError(f"the portal's load terminal id is 12 lower-case hex digits, got {terminal_id!r}")
    return terminal_id


def _not_found() -> PortalError:
    return PortalError(Code.E_LOAD_NOT_FOUND, "no such load for a card of this account")


def _refused(exc: ClearingError) -> PortalError:
    return PortalError(Code.E_LOAD_REFUSED, f"{exc.code.value}: {exc.message}")


@dataclass(frozen=True, slots=True)
class CardLoadsView:
    """A bound card and the loads waiting for it (the reader page's list)."""

    issuer_id: str
    card_asn: str
    loads: CardLoads


@dataclass
class OnlineLoadService:
    """The shell; built by the composition root (``yikatong.app``) or a test."""

    sessions: Callable[[], Session]
    keystore: KeyStore
    terminal_id: str = TERMINAL_ID_DEFAULT
    clock: Callable[[], dt.datetime] = _utcnow
    on_change: Callable[[str], None] | None = field(default=None)

    def __post_init__(self) -> None:
        check_terminal_id(self.terminal_id)

    # --- guards ---

    @staticmethod
    def _bound(session: Session, current: CurrentSession, issuer_id: str, card_asn: str) -> bool:
        owner = session.scalar(
            select(PortalCardBinding.citizen_id).where(
                PortalCardBinding.issuer_id == issuer_id, PortalCardBinding.card_asn == card_asn
            )
        )
        return owner == current.citizen_id

    def _citizens_load(self, session: Session, current: CurrentSession, load_id: str) -> PendingLoad:
        if _LOAD_ID_RE.fullmatch(load_id) is None:
            raise _not_found()
        load = session.get(PendingLoad, load_id)
        if load is None or not self._bound(session, current, load.issuer_id, load.card_asn):
            raise _not_found()
        return load

    def _own_terminal(self, terminal_id: str) -> None:
        if terminal_id != self.terminal_id:
            raise PortalError(
                Code.E_LOAD_TERMINAL, f"the portal loads as terminal {self.terminal_id}, not {terminal_id}"
            )

    def _changed(self, load_id: str) -> None:
        if self.on_change is not None:
            try:
                self.on_change(load_id)
            except Exception:  # the load is posted either way; the listener catches up on its own
                log.exception("load %s: the change listener failed", load_id)

    # --- the host, as the reader agent's relay calls it ---

    def card_loads(self, current: CurrentSession, issuer_id: str, card_asn: str) -> CardLoads:
        """The loads waiting for a bound card (pending and authorized), oldest first."""
        issuer_id, card_asn = issuer_id.lower(), card_asn.lower()
        if _ISSUER_RE.fullmatch(issuer_id) is None or _ASN_RE.fullmatch(card_asn) is None:
            raise PortalError(Code.E_CARD_NOT_BOUND, "bind the card to this account first")
        with self.sessions() as session:
            if not self._bound(session, current, issuer_id, card_asn):
                raise PortalError(Code.E_CARD_NOT_BOUND, "bind the card to this account first")
            return loads.for_card(session, issuer_id, card_asn)

    def all_cards(self, current: CurrentSession) -> list[CardLoadsView]:
        """Every card bound to the citizen, with what waits for it (the reader page lists them)."""
        with self.sessions() as session:
            cards = session.execute(
                select(PortalCardBinding.issuer_id, PortalCardBinding.card_asn)
                .where(PortalCardBinding.citizen_id == current.citizen_id)
                .order_by(PortalCardBinding.bound_at, PortalCardBinding.id)
            ).all()
            return [CardLoadsView(i, a, loads.for_card(session, i, a)) for i, a in cards]

    def authorize(self, current: CurrentSession, load_id: str, req: LoadAuthorizeRequest) -> LoadAuthorizeResponse:
        self._own_terminal(req.terminal_id)
        return self._in_transaction(
            current, load_id, lambda s: loads.authorize(s, self.keystore, load_id, req, self.clock())
        )

    def complete(self, current: CurrentSession, load_id: str, req: LoadCompleteRequest) -> LoadCompleteResponse:
        def work(session: Session) -> LoadCompleteResponse:
            load = session.get(PendingLoad, load_id)
            assert load is not None
            if load.terminal_id is None:
                raise PortalError(Code.E_LOAD_REFUSED, f"E_LOAD_STATE: load {load_id} was never authorized")
            self._own_terminal(load.terminal_id)
            return loads.complete(session, self.keystore, load_id, req)

        answer = self._in_transaction(current, load_id, work)
        log.info("load %s posted through the reader page", load_id)
        self._changed(load_id)
        return answer

    def resolve(self, current: CurrentSession, load_id: str, req: LoadResolveRequest) -> LoadResolveResponse:
        self._own_terminal(req.terminal_id)

        def work(session: Session) -> LoadResolveResponse:
            if req.prove_tac is None and req.prove_mac2 is None and req.online_counter is not None:
                load = session.get(PendingLoad, load_id)
                assert load is not None
                if load.state == LoadState.AUTHORIZED.value and req.online_counter == load.online_counter:
                    # "The card's counter never moved" is the browser's word here, not a card's: the
                    # page relays it and can forge it after withholding the TAC of a load the card
                    # took. Clearing would make the load pending again and the next MAC2 would credit
                    # the card twice. Answer "pending" and leave it authorized: the caller's next step
                    # is ``authorize`` with a fresh INITIALIZE, whose MAC1 proves the counter (clearing
                    # re-authorizes an authorized load at the same counter, refuses another).
                    return LoadResolveResponse("pending")
            return loads.resolve(session, self.keystore, load_id, req, self.clock())

        answer = self._in_transaction(current, load_id, work)
        log.info("load %s resolved from the card: %s", load_id, answer.status)
        self._changed(load_id)
        return answer

    def _in_transaction(self, current: CurrentSession, load_id: str, work: Callable[[Session], T]) -> T:
        with self.sessions() as session, session.begin():
            self._citizens_load(session, current, load_id)
            try:
                return work(session)
            except ClearingError as exc:
                log.info("load %s refused by clearing: %s", load_id, exc.code.value)
                raise _refused(exc) from None


__all__ = ["TERMINAL_ID_DEFAULT", "CardLoadsView", "OnlineLoadService", "check_terminal_id"]
