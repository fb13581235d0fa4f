"""The card-login routes: ``GET /api/card-login/challenge`` and ``POST /api/card-login``.

``docs/portal.md``, "Card login"; the protocol and its checks are ``portal.card_login``'s.
The challenge lives under its own cookie ``yk_card_challenge`` (HttpOnly, SameSite=Strict,
Path ``/api/card-login``, 5 minutes, Secure outside development); a successful login sets
``yk_session`` as the password login does (a new session: rotation) and drops the challenge
cookie. The POST reads the raw body itself, so that the challenge is spent even when the
token does not parse; its schema is still in the OpenAPI document.
"""

from __future__ import annotations

from typing import Any, Final

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from portal.api import CardRef, ErrorOut, PortalRoute
from portal.api_accounts import CitizenOut, SessionOut
from portal.api_auth import SESSION_COOKIE, client_ip
from portal.card_login import CardLoginService

CHALLENGE_COOKIE: Final = "yk_card_challenge"
CHALLENGE_COOKIE_PATH: Final = "/api/card-login"
_ERRORS: dict[int | str, dict[str, Any]] = {s: {"model": ErrorOut} for s in (401, 403, 409, 422, 429, 503)}


class ChallengeOut(BaseModel):
    nonce: str


class WebEidTokenIn(BaseModel):
    """A ``web-eid:1.0`` authentication token (for the OpenAPI document; ``parse_token`` reads the body)."""

    unverifiedCertificate: str = Field(description="the card's certificate, DER, standard base64")  # noqa: N815
    algorithm: str = Field(description="ES256")
    signature: str = Field(description="base64 of r || s (64 bytes) over SHA-256(origin) || SHA-256(nonce)")
    format: str = Field(description="web-eid:1.0")
    appVersion: str = Field(description="the reader agent's name and version (a URL in Web eID)")  # noqa: N815


class CardLoginOut(SessionOut):
    card: CardRef
    newly_bound: bool


def card_login_router(service: CardLoginService, *, secure_cookies: bool) -> APIRouter:
    router = APIRouter(prefix="/api", route_class=PortalRoute, tags=["portal card login"])

    @router.get("/card-login/challenge", response_model=ChallengeOut, responses=_ERRORS)
    def challenge(request: Request, response: Response) -> ChallengeOut:
        issued = service.challenge(previous_cookie=request.cookies.get(CHALLENGE_COOKIE), client_ip=client_ip(request))
        response.set_cookie(
            CHALLENGE_COOKIE,
            issued.cookie,
            max_age=service.challenge_ttl_s,
            path=CHALLENGE_COOKIE_PATH,
            httponly=True,
            samesite="strict",
            secure=secure_cookies,
        )
        response.headers["Cache-Control"] = "no-store"
        return ChallengeOut(nonce=issued.nonce)

    @router.post(
        "/card-login",
        status_code=201,
        response_model=CardLoginOut,
        responses=_ERRORS,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": WebEidTokenIn.model_json_schema()}},
            }
        },
    )
    async def card_login(request: Request, response: Response) -> CardLoginOut:
        body = await request.body()
        result = await run_in_threadpool(
            lambda: service.login(
                body,
                content_type=request.headers.get("content-type"),
                challenge_cookie=request.cookies.get(CHALLENGE_COOKIE),
                session_cookie=request.cookies.get(SESSION_COOKIE),
                client_ip=client_ip(request),
            )
        )
        new = result.new
        response.set_cookie(
            SESSION_COOKIE,
            new.token,
            max_age=service.accounts.session_ttl_s,
            path="/",
            httponly=True,
            samesite="lax",
            secure=secure_cookies,
        )
        response.delete_cookie(
            CHALLENGE_COOKIE, path=CHALLENGE_COOKIE_PATH, httponly=True, samesite="strict", secure=secure_cookies
        )
        s = new.session
        return CardLoginOut(
            citizen=CitizenOut.of(new.citizen),
            csrf_token=s.csrf_token,
            assurance=s.assurance,
            expires_at=s.expires_at,
            card=CardRef(issuer_id=result.card.issuer_id, card_asn=result.card.card_asn),
            newly_bound=result.newly_bound,
        )

    return router


def mount_card_login(app: FastAPI, service: CardLoginService, *, secure_cookies: bool) -> None:
    app.include_router(card_login_router(service, secure_cookies=secure_cookies))


__all__ = ["CHALLENGE_COOKIE", "card_login_router", "mount_card_login"]
