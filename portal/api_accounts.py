"""The citizen account routes under ``/api``: register, log in and out, ``/api/me``, card binding.

``docs/portal.md``, "Accounts and sessions". Errors are the portal's ``{"code", "message"}``
(``portal.api.PortalRoute``). Answers show masked personal data only. Routes are sync
functions (argon2 is deliberately slow; FastAPI runs them in its thread pool).
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from portal.accounts import AccountService, BindingView, CitizenView
from portal.api import ErrorOut, PortalRoute
from portal.api_auth import SESSION_COOKIE, STATE_KEY, CsrfCitizen, CurrentCitizen, accounts_of, client_ip

_ERRORS: dict[int | str, dict[str, Any]] = {s: {"model": ErrorOut} for s in (401, 403, 409, 422, 429, 503)}
TEXT_CHARS_MAX = 256  # request fields are bounded before any check reads them


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class RegisterIn(_In):
    mobile: Annotated[str, Field(max_length=TEXT_CHARS_MAX)]
    password: Annotated[str, Field(max_length=TEXT_CHARS_MAX)]
    real_name: Annotated[str, Field(max_length=TEXT_CHARS_MAX)]
    id_number: Annotated[str, Field(max_length=TEXT_CHARS_MAX)]


class LoginIn(_In):
    mobile: Annotated[str, Field(max_length=TEXT_CHARS_MAX)]
    password: Annotated[str, Field(max_length=TEXT_CHARS_MAX)]


class BindIn(_In):
    """The transit-card proof: card number, and the amount and date of one of its last three transactions."""

    card_asn: Annotated[str, Field(pattern=r"^[0-9A-Fa-f]{20}$")]
    issuer_id: Annotated[str | None, Field(pattern=r"^[0-9A-Fa-f]{16}$")] = None
    amount_fen: Annotated[int, Field(ge=1, le=10_000_000)]
    date: Annotated[dt.date, Field(strict=False)]  # ISO 8601 "2026-12-02", the card-local date


class CitizenOut(BaseModel):
    mobile_masked: str
    real_name_masked: str
    id_number_masked: str | None

    @classmethod
    def of(cls, v: CitizenView) -> CitizenOut:
        return cls(
            mobile_masked=v.mobile_masked, real_name_masked=v.real_name_masked, id_number_masked=v.id_number_masked
        )


class SessionOut(BaseModel):
    citizen: CitizenOut
    csrf_token: str
    assurance: str
    expires_at: dt.datetime


class CardOut(BaseModel):
    issuer_id: str
    card_asn: str
    bound_at: dt.datetime
    how: str

    @classmethod
    def of(cls, v: BindingView) -> CardOut:
        return cls(issuer_id=v.issuer_id, card_asn=v.card_asn, bound_at=v.bound_at, how=v.how)


class CardsOut(BaseModel):
    cards: list[CardOut]


def accounts_router(*, secure_cookies: bool) -> APIRouter:
    router = APIRouter(prefix="/api", route_class=PortalRoute, tags=["portal accounts"])

    @router.post("/citizens", status_code=201, response_model=CitizenOut, responses=_ERRORS)
    def register(body: RegisterIn, request: Request) -> CitizenOut:
        service = accounts_of(request)
        view = service.register(
            body.mobile, body.password, body.real_name, body.id_number, client_ip=client_ip(request)
        )
        return CitizenOut.of(view)

    @router.post("/sessions", status_code=201, response_model=SessionOut, responses=_ERRORS)
    def login(body: LoginIn, request: Request, response: Response) -> SessionOut:
        service = accounts_of(request)
        new = service.login(
            body.mobile,
            body.password,
            client_ip=client_ip(request),
            previous_token=request.cookies.get(SESSION_COOKIE),
        )
        response.set_cookie(
            SESSION_COOKIE,
            new.token,
            max_age=service.session_ttl_s,
            path="/",
            httponly=True,
            samesite="lax",
            secure=secure_cookies,
        )
        s = new.session
        return SessionOut(citizen=CitizenOut.of(new.citizen), csrf_token=s.csrf_token, assurance=s.assurance,
                          expires_at=s.expires_at)  # fmt: skip

    @router.delete("/sessions/current", status_code=204, responses=_ERRORS)
    def logout(current: CsrfCitizen, request: Request, response: Response) -> Response:
        accounts_of(request).logout(current)
        response.status_code = 204
        response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="lax", secure=secure_cookies)
        return response

    @router.get("/me", response_model=SessionOut, responses=_ERRORS)
    def me(current: CurrentCitizen, request: Request) -> SessionOut:
        view = accounts_of(request).me(current)
        return SessionOut(citizen=CitizenOut.of(view), csrf_token=current.csrf_token, assurance=current.assurance,
                          expires_at=current.expires_at)  # fmt: skip

    @router.post("/me/cards", status_code=201, response_model=CardOut, responses=_ERRORS)
    def bind_card(body: BindIn, current: CsrfCitizen, request: Request) -> CardOut:
        binding = accounts_of(request).bind_card(
            current,
            body.card_asn.lower(),
            issuer_id=body.issuer_id.lower() if body.issuer_id else None,
            amount_fen=body.amount_fen,
            on=body.date,
            client_ip=client_ip(request),
        )
        return CardOut.of(binding)

    @router.get("/me/cards", response_model=CardsOut, responses=_ERRORS)
    def my_cards(current: CurrentCitizen, request: Request) -> CardsOut:
        return CardsOut(cards=[CardOut.of(b) for b in accounts_of(request).cards(current)])

    return router


def mount_accounts(app: FastAPI, service: AccountService, *, secure_cookies: bool) -> None:
    """The account routes, and the service the session dependencies find (``portal.api_auth``)."""
    setattr(app.state, STATE_KEY, service)
    app.include_router(accounts_router(secure_cookies=secure_cookies))


__all__ = ["accounts_router", "mount_accounts"]
