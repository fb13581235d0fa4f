"""A citizen's cards as the pages and ``/api/cards`` show them: details, balance, pending loads, history.

``docs/portal.md``, "Pages". ``CardViews`` is the read side both the pages (``portal.pages``)
and the JSON routes below use, so the two always agree. Every read starts from the card
**binding of the session's citizen**: a card bound to someone else, or to nobody, is not found
(404 ``E_CARD_NOT_FOUND``), exactly as a card that does not exist, so nobody learns which cards
exist or are bound elsewhere.

What is shown, and why it is honest:

- **Balance** is the card's shadow balance: the purse balance after its last *cleared* record,
  with when that record was cleared (its newest posted transfer). Taps not uploaded yet are
  not in it, which the page says.
- **Pending loads** are clearing's open loads of the card (paid, waiting for the card to meet
  a load-capable reader), each with its amount and since when; never added into the balance.
- **History** is ``portal.history`` (keyset pages, filters, CSV).

Each answer is a fixed number of indexed queries (the binding joined to the card and its
issuer in one; the pending loads on ``ix_pending_loads_card_state``; history on the ledger's
account indexes): no query per row. Routes are sync (FastAPI runs them in its thread pool).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Annotated, Any, Final

from fastapi import APIRouter, FastAPI, Query, Request
from pydantic import BaseModel
from sqlalchemy import and_, select
from sqlalchemy.orm import Session, sessionmaker

from clearing.models import Card, Issuer, LoadState, PendingLoad
from portal import history
from portal.accounts import CurrentSession
from portal.api import ErrorOut, PortalRoute
from portal.api_auth import CurrentCitizen
from portal.errors import Code, PortalError
from portal.limits import headroom_fen
from portal.models import PortalCardBinding
from portal.topup_service import TopupService

ISSUER_SHAPE: Final = re.compile(r"[0-9A-Fa-f]{16}")
ASN_SHAPE: Final = re.compile(r"[0-9A-Fa-f]{20}")
PENDING_LOADS_MAX: Final = 50
OPEN_LOAD_STATES: Final = (LoadState.PENDING.value, LoadState.AUTHORIZED.value)


def not_found() -> PortalError:
    return PortalError(Code.E_CARD_NOT_FOUND, "no card of yours with this issuer and card number")


def card_ref(issuer_id: str, card_asn: str) -> tuple[str, str]:
    """The (issuer, ASN) of a URL, lower-case, or ``E_CARD_NOT_FOUND`` saying what a card number looks like."""
    if ISSUER_SHAPE.fullmatch(issuer_id) is None or ASN_SHAPE.fullmatch(card_asn) is None:
        raise PortalError(
            Code.E_CARD_NOT_FOUND,
            "no such card: an issuer id is 16 hexadecimal digits and a card number 20",
        )
    return issuer_id.lower(), card_asn.lower()


@dataclass(frozen=True, slots=True)
class CardSummary:
    issuer_id: str
    card_asn: str
    issuer_name: str
    card_type: str
    status: str
    start_date: dt.date
    expiry_date: dt.date
    balance_fen: int
    registered: bool
    bound_at: dt.datetime
    bound_how: str
    account_id: int


@dataclass(frozen=True, slots=True)
class PendingLoadView:
    load_id: str
    amount_fen: int
    state: str
    since: dt.datetime


@dataclass(frozen=True, slots=True)
class CardDetail:
    card: CardSummary
    balance_cleared_at: dt.datetime | None
    pending_loads: list[PendingLoadView]

    @property
    def pending_fen(self) -> int:
        return sum(p.amount_fen for p in self.pending_loads)


def _summary(card: Card, issuer_name: str, binding: PortalCardBinding) -> CardSummary:
    return CardSummary(
        issuer_id=card.issuer_id,
        card_asn=card.card_asn,
        issuer_name=issuer_name,
        card_type=card.card_type,
        status=card.status,
        start_date=card.start_date,
        expiry_date=card.expiry_date,
        balance_fen=card.shadow_balance_fen,
        registered=card.holder_name is not None,
        bound_at=binding.bound_at,
        bound_how=binding.how,
        account_id=card.account_id,
    )


def _bound_cards(citizen_id: int) -> Any:
    return (
        select(Card, Issuer.name, PortalCardBinding)
        .join(
            Card,
            and_(Card.issuer_id == PortalCardBinding.issuer_id, Card.card_asn == PortalCardBinding.card_asn),
        )
        .join(Issuer, Issuer.issuer_id == Card.issuer_id)
        .where(PortalCardBinding.citizen_id == citizen_id)
    )


@dataclass
class CardViews:
    """Reads for the session's citizen only (``docs/portal.md``, "Pages")."""

    sessions: sessionmaker[Session]
    topups: TopupService

    def cards(self, current: CurrentSession) -> list[CardSummary]:
        with self.sessions() as session:
            rows = session.execute(
                _bound_cards(current.citizen_id).order_by(PortalCardBinding.bound_at, PortalCardBinding.id)
            ).all()
            return [_summary(card, name, binding) for card, name, binding in rows]

    def _card(self, session: Session, current: CurrentSession, issuer_id: str, card_asn: str) -> CardSummary:
        issuer_id, card_asn = card_ref(issuer_id, card_asn)
        row = session.execute(
            _bound_cards(current.citizen_id).where(
                PortalCardBinding.issuer_id == issuer_id, PortalCardBinding.card_asn == card_asn
            )
        ).one_or_none()
        if row is None:
            raise not_found()
        card, name, binding = row
        return _summary(card, name, binding)

    def card(self, current: CurrentSession, issuer_id: str, card_asn: str) -> CardDetail:
        with self.sessions() as session:
            summary = self._card(session, current, issuer_id, card_asn)
            loads = session.execute(
                select(PendingLoad.id, PendingLoad.amount_fen, PendingLoad.state, PendingLoad.created_at)
                .where(
                    PendingLoad.issuer_id == summary.issuer_id,
                    PendingLoad.card_asn == summary.card_asn,
                    PendingLoad.state.in_(OPEN_LOAD_STATES),
                )
                .order_by(PendingLoad.created_at, PendingLoad.id)
                .limit(PENDING_LOADS_MAX)
            ).all()
            cleared_at = history.last_cleared_at(session, summary.account_id)
        return CardDetail(summary, cleared_at, [PendingLoadView(i, int(a), s, c) for i, a, s, c in loads])

    def history(
        self,
        current: CurrentSession,
        issuer_id: str,
        card_asn: str,
        f: history.HistoryFilter,
        *,
        limit: int = history.LIMIT_DEFAULT,
        cursor: history.Cursor | None = None,
    ) -> history.HistoryPage:
        with self.sessions() as session:
            summary = self._card(session, current, issuer_id, card_asn)
            return history.history_page(session, summary.account_id, f, limit=limit, cursor=cursor)

    def headroom(self, current: CurrentSession, issuer_id: str, card_asn: str) -> tuple[CardSummary, int]:
        """The card and the largest top-up it may take now (``portal.limits.headroom_fen``)."""
        with self.sessions() as session:
            summary = self._card(session, current, issuer_id, card_asn)
            # The same sum create_topup checks against (one rule, one place: the top-up service).
            pending = self.topups._pending_fen(session, summary.issuer_id, summary.card_asn)
        room = headroom_fen(
            self.topups.limits,
            registered=summary.registered,
            shadow_balance_fen=summary.balance_fen,
            pending_fen=pending,
        )
        return summary, room


# --- JSON -------------------------------------------------------------------------------------


class CardOut(BaseModel):
    issuer_id: str
    card_asn: str
    issuer_name: str
    card_type: str
    status: str
    expiry_date: dt.date
    balance_fen: int
    registered: bool
    bound_at: dt.datetime

    @classmethod
    def of(cls, c: CardSummary) -> CardOut:
        return cls(
            issuer_id=c.issuer_id,
            card_asn=c.card_asn,
            issuer_name=c.issuer_name,
            card_type=c.card_type,
            status=c.status,
            expiry_date=c.expiry_date,
            balance_fen=c.balance_fen,
            registered=c.registered,
            bound_at=c.bound_at,
        )


class CardsOut(BaseModel):
    cards: list[CardOut]


class PendingLoadOut(BaseModel):
    load_id: str
    amount_fen: int
    state: str
    since: dt.datetime


class CardDetailOut(BaseModel):
    card: CardOut
    start_date: dt.date
    balance_fen: int  # the last cleared balance
    balance_cleared_at: dt.datetime | None
    pending_loads: list[PendingLoadOut]
    pending_fen: int


class HistoryEntryOut(BaseModel):
    transfer_id: str
    cleared_at: dt.datetime
    kind: str
    amount_fen: int
    terminal_id: str | None
    tap_time: dt.datetime | None
    merchant: str | None
    merchant_name: str | None
    route_id: str | None
    stop_id: str | None

    @classmethod
    def of(cls, e: history.HistoryEntry) -> HistoryEntryOut:
        return cls(
            transfer_id=e.transfer_id,
            cleared_at=e.cleared_at,
            kind=e.kind,
            amount_fen=e.amount_fen,
            terminal_id=e.terminal_id,
            tap_time=e.tap_time,
            merchant=e.counterparty,
            merchant_name=e.counterparty_name,
            route_id=e.route_id,
            stop_id=e.stop_id,
        )


class HistoryOut(BaseModel):
    entries: list[HistoryEntryOut]
    next_cursor: str | None


_ERRORS: dict[int | str, dict[str, Any]] = {s: {"model": ErrorOut} for s in (401, 404, 422, 503)}
_Q = Annotated[str | None, Query(max_length=history.PARAM_CHARS_MAX)]


def cards_router(views: CardViews) -> APIRouter:
    router = APIRouter(prefix="/api", route_class=PortalRoute, tags=["portal cards"])

    @router.get("/cards", response_model=CardsOut, responses=_ERRORS)
    def my_cards(current: CurrentCitizen) -> CardsOut:
        return CardsOut(cards=[CardOut.of(c) for c in views.cards(current)])

    @router.get("/cards/{issuer_id}/{card_asn}", response_model=CardDetailOut, responses=_ERRORS)
    def card(issuer_id: str, card_asn: str, current: CurrentCitizen) -> CardDetailOut:
        d = views.card(current, issuer_id, card_asn)
        return CardDetailOut(
            card=CardOut.of(d.card),
            start_date=d.card.start_date,
            balance_fen=d.card.balance_fen,
            balance_cleared_at=d.balance_cleared_at,
            pending_loads=[
                PendingLoadOut(load_id=p.load_id, amount_fen=p.amount_fen, state=p.state, since=p.since)
                for p in d.pending_loads
            ],
            pending_fen=d.pending_fen,
        )

    @router.get("/cards/{issuer_id}/{card_asn}/history", response_model=HistoryOut, responses=_ERRORS)
    def card_history(
        issuer_id: str,
        card_asn: str,
        current: CurrentCitizen,
        request: Request,
        limit: _Q = None,
        cursor: Annotated[str | None, Query(max_length=256)] = None,
    ) -> HistoryOut:
        card_ref(issuer_id, card_asn)  # a malformed card number is not found before the filters are read
        f = history.parse_filter(dict(request.query_params))
        page = views.history(
            current, issuer_id, card_asn, f, limit=history.parse_limit(limit), cursor=history.decode_cursor(cursor)
        )
        return HistoryOut(entries=[HistoryEntryOut.of(e) for e in page.entries], next_cursor=page.next_cursor)

    return router


def mount_cards_api(app: FastAPI, views: CardViews) -> None:
    app.include_router(cards_router(views))


__all__ = [
    "CardDetail",
    "CardSummary",
    "CardViews",
    "PendingLoadView",
    "card_ref",
    "cards_router",
    "mount_cards_api",
    "not_found",
]
