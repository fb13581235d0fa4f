"""The portal's JSON API (``/api``) and the payment webhook route (``/webhooks/payments``).

Every failure of these routes is answered in the portal's own shape, ``{"code", "message"}``
with a code from ``portal.errors`` (the route class below, as ``clearing.api.ContractRoute``
does for the terminal contract, so neither API inherits the other's). Nothing here answers
500: a fault is logged and answered ``503 E_PORTAL_UNAVAILABLE``, which a browser may retry
and a payment provider will.

**Top-ups need a citizen.** ``POST /api/topups`` needs a session (``CsrfCitizen``: the
cookie and its CSRF token) and a card bound to the session's citizen (``E_CARD_NOT_BOUND``);
``GET /api/topups/{id}`` and ``POST /api/topups/{id}/refund`` answer only the citizen the
top-up's card is bound to (anyone else: ``E_TOPUP_NOT_FOUND``). Creation is rate limited per
citizen and per client IP (``429 E_RATE_LIMITED``). The ``/api`` routes are still mounted only when
``YIKATONG_PORTAL_ENABLED`` is set (default off; ``docs/portal.md``). The webhook route is
always mounted: it is authenticated by the provider's signature.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, BackgroundTasks, FastAPI, Header, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from clearing.api import AnsweringRoute
from portal.accounts import AccountService, CurrentSession
from portal.api_auth import CsrfCitizen, CurrentCitizen, accounts_of, client_ip
from portal.errors import Code, PortalError
from portal.topup_service import TopupService, TopupView
from portal.topups import RefundReason, State

log = logging.getLogger(__name__)


def portal_error(exc: Exception) -> JSONResponse:
    """Any exception of a portal route in the portal's shape; never a 500."""
    if isinstance(exc, PortalError):
        return JSONResponse({"code": exc.code.value, "message": exc.message}, status_code=exc.status)
    if isinstance(exc, RequestValidationError):
        where = ", ".join(".".join(str(p) for p in e.get("loc", ())) for e in exc.errors()[:5])
        code = Code.E_PORTAL_MALFORMED
        return JSONResponse({"code": code.value, "message": f"the request does not read: {where}"}, status_code=422)
    if isinstance(exc, StarletteHTTPException) and 400 <= exc.status_code < 500:
        # FastAPI's own refusals, e.g. a body that is not UTF-8 ("There was an error parsing the body")
        code = Code.E_PORTAL_MALFORMED
        return JSONResponse({"code": code.value, "message": "the request body does not read"}, status_code=422)
    log.exception("unexpected fault in the portal API", exc_info=exc)
    code = Code.E_PORTAL_UNAVAILABLE
    return JSONResponse({"code": code.value, "message": "the portal could not finish; retry"}, status_code=503)


class PortalRoute(AnsweringRoute):
    def answer(self, request: Request, exc: Exception) -> Response:
        return portal_error(exc)


class CardRef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    issuer_id: str = Field(pattern=r"^[0-9A-Fa-f]{16}$")
    card_asn: str = Field(pattern=r"^[0-9A-Fa-f]{20}$")


class TopupRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    card: CardRef
    # Any JSON value: ``portal.limits.check_topup`` refuses a float, bool or string with its code.
    amount_fen: Any


class TopupOut(BaseModel):
    topup_id: str
    card: CardRef
    amount_fen: int
    state: str
    payment_intent_id: str | None
    paid_fen: int
    loaded_fen: int
    refunded_fen: int
    client_secret: str | None = None  # only in the answer that created the intent (for Stripe.js)

    @classmethod
    def of(cls, v: TopupView) -> TopupOut:
        return cls(
            topup_id=v.topup_id,
            card=CardRef(issuer_id=v.issuer_id, card_asn=v.card_asn),
            amount_fen=v.amount_fen,
            state=v.state,
            payment_intent_id=v.payment_intent_id,
            paid_fen=v.paid_fen,
            loaded_fen=v.loaded_fen,
            refunded_fen=v.refunded_fen,
            client_secret=v.client_secret,
        )


class WebhookOut(BaseModel):
    status: str  # applied | duplicate | ignored


class ErrorOut(BaseModel):
    code: str
    message: str


_ERRORS: dict[int | str, dict[str, Any]] = {s: {"model": ErrorOut} for s in (401, 403, 404, 409, 422, 503)}
_CREATE_ERRORS: dict[int | str, dict[str, Any]] = {**_ERRORS, 429: {"model": ErrorOut}}


def topups_router(service: TopupService) -> APIRouter:
    """``/api/topups``: for a card bound to the session's citizen (module docstring)."""
    router = APIRouter(prefix="/api", route_class=PortalRoute, tags=["portal"])

    def own(topup_id: str, current: CurrentSession, request: Request) -> TopupView:
        view = service.view(topup_id)
        try:
            accounts_of(request).require_bound(current, view.issuer_id, view.card_asn)
        except PortalError:  # not this citizen's: as if it did not exist
            raise PortalError(Code.E_TOPUP_NOT_FOUND, "no top-up with this id") from None
        return view

    @router.post("/topups", status_code=201, response_model=TopupOut, responses=_CREATE_ERRORS)
    def create_topup(body: TopupRequest, current: CsrfCitizen, request: Request) -> TopupOut:
        service.limit_creation(current.citizen_id, client_ip(request))
        accounts_of(request).require_bound(current, body.card.issuer_id, body.card.card_asn)
        return TopupOut.of(service.create_topup(body.card.issuer_id, body.card.card_asn, body.amount_fen))

    @router.get("/topups/{topup_id}", response_model=TopupOut, responses=_ERRORS)
    def get_topup(topup_id: str, current: CurrentCitizen, request: Request) -> TopupOut:
        return TopupOut.of(own(topup_id, current, request))

    @router.post("/topups/{topup_id}/refund", response_model=TopupOut, responses=_ERRORS)
    def request_refund(topup_id: str, current: CsrfCitizen, request: Request) -> TopupOut:
        """The citizen asks for the payment back: the load is voided, then the payment refunded.

        ``200`` with the top-up as it is after the effects ran (``refunded``, or
        ``refund_requested`` while the provider or an in-doubt load holds it up). A repeat
        answers the same: asking again while a refund is under way, or once it is refunded, is
        not an error. ``409 E_TOPUP_NOT_REFUNDABLE`` when there is nothing to refund (not paid,
        canceled, loaded on the card).
        """
        view = own(topup_id, current, request)
        if view.state == State.REFUNDED.value:
            return TopupOut.of(view)  # a repeat
        try:
            return TopupOut.of(service.request_refund(topup_id, RefundReason.CITIZEN))
        except PortalError as exc:
            again = service.view(topup_id)
            if exc.code is Code.E_TOPUP_NOT_REFUNDABLE and again.state == State.REFUNDED.value:
                return TopupOut.of(again)  # a racing repeat finished first
            raise

    return router


def webhooks_router(service: TopupService) -> APIRouter:
    router = APIRouter(route_class=PortalRoute, tags=["payments"])

    @router.post(
        "/webhooks/payments", response_model=WebhookOut, responses={400: {"model": ErrorOut}, 413: {"model": ErrorOut}}
    )
    async def payment_webhook(
        request: Request,
        background: BackgroundTasks,
        stripe_signature: Annotated[str | None, Header()] = None,
    ) -> WebhookOut:
        """Verify the raw body's signature, record the event once, apply it; effects run after the answer."""
        body = await request.body()
        outcome = await run_in_threadpool(service.apply_webhook, body, stripe_signature)
        if outcome == "applied":
            background.add_task(service.run_outbox)
        return WebhookOut(status=outcome)

    return router


def mount(
    app: FastAPI,
    service: TopupService,
    *,
    topups_enabled: bool,
    accounts: AccountService | None = None,
    secure_cookies: bool = True,
) -> None:
    """The webhook route always; ``/api`` (accounts and top-ups) only when enabled."""
    from portal.api_accounts import mount_accounts  # it builds on this module's route class

    app.include_router(webhooks_router(service))
    if topups_enabled:
        if accounts is None:
            raise ValueError("the portal's /api needs an AccountService: top-ups are for logged-in citizens")
        mount_accounts(app, accounts, secure_cookies=secure_cookies)
        app.include_router(topups_router(service))


__all__ = ["PortalRoute", "mount", "portal_error", "topups_router", "webhooks_router"]
