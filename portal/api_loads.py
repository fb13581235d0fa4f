"""The reader page's routes: ``/api/loads`` (the load host, relayed by the page) and ``GET /reader``.

``docs/portal.md``, "Online load on the reader page"; the rules are ``portal.online_load``'s.
The bodies and answers of the four host calls are the terminal contract's own structs
(``clearing.contract``, decoded strictly with msgspec, unknown fields refused), so the reader
agent runs ``terminals.loading.load_card`` against the portal exactly as a kiosk runs it against
clearing; their schemas are the components clearing already puts in the OpenAPI document.

| route | session | answer |
| --- | --- | --- |
| `GET /api/loads` | yes | `{"terminal_id", "cards": [{"issuer_id", "card_asn", "loads": [...]}]}` |
| `GET /api/loads/cards/{issuer_id}/{card_asn}` | yes | `CardLoads` |
| `POST /api/loads/{load_id}/authorize` | + `X-CSRF-Token` | `LoadAuthorizeResponse` |
| `POST /api/loads/{load_id}/complete` | + `X-CSRF-Token` | `LoadCompleteResponse` |
| `POST /api/loads/{load_id}/resolve` | + `X-CSRF-Token` | `LoadResolveResponse` |

``GET /reader`` is the one page with JavaScript (``portal/static/reader.js``): card login and
online load through the reader agent. It renders with the pages' ``portal.web.render``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Final, TypeVar

import msgspec
from fastapi import APIRouter, Cookie, FastAPI, Path, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse
from pydantic import BaseModel

from clearing.contract import LoadAuthorizeRequest, LoadCompleteRequest, LoadResolveRequest
from portal.accounts import AccountService
from portal.api import ErrorOut, PortalRoute
from portal.api_auth import CsrfCitizen, CurrentCitizen
from portal.errors import Code, PortalError
from portal.online_load import OnlineLoadService

if TYPE_CHECKING:  # the pages' machinery is imported when the page is mounted, not with the JSON routes
    from portal.web import PageConfig

T = TypeVar("T")

BODY_BYTES_MAX: Final = 16 * 1024  # a load step is a few hundred bytes
READER_TEMPLATE: Final = "reader.html"
_REF: Final = "#/components/schemas/{}"
_ERRORS: Final[dict[int | str, dict[str, Any]]] = {s: {"model": ErrorOut} for s in (401, 403, 404, 409, 422, 503)}

LoadId = Annotated[str, Path(pattern=r"^[A-Za-z0-9_.:-]{1,40}$")]
IssuerId = Annotated[str, Path(pattern=r"^[0-9a-fA-F]{16}$")]
CardAsn = Annotated[str, Path(pattern=r"^[0-9a-fA-F]{20}$")]


def _schema(name: str) -> dict[str, Any]:
    return {"$ref": _REF.format(name)}


def _answer_doc(name: str) -> dict[int | str, dict[str, Any]]:
    return {200: {"content": {"application/json": {"schema": _schema(name)}}}, **_ERRORS}


def _body_doc(name: str) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": _schema(name)}}}}


async def _decode(request: Request, kind: type[T]) -> T:
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media != "application/json":
        raise PortalError(Code.E_PORTAL_MALFORMED, "the body is sent as application/json")
    body = await request.body()
    if len(body) > BODY_BYTES_MAX:
        raise PortalError(Code.E_PORTAL_MALFORMED, f"the body is longer than {BODY_BYTES_MAX} bytes")
    try:
        return msgspec.json.decode(body, type=kind)
    except msgspec.MsgspecError as exc:
        raise PortalError(Code.E_PORTAL_MALFORMED, f"the body does not read: {str(exc)[:200]}") from None


def _json(answer: msgspec.Struct | dict[str, Any]) -> Response:
    return Response(msgspec.json.encode(answer), media_type="application/json", headers={"Cache-Control": "no-store"})


class CardLoadsOut(BaseModel):
    issuer_id: str
    card_asn: str
    loads: list[dict[str, Any]]


class LoadsOverviewOut(BaseModel):
    terminal_id: str
    cards: list[CardLoadsOut]


def loads_router(service: OnlineLoadService) -> APIRouter:
    router = APIRouter(prefix="/api/loads", route_class=PortalRoute, tags=["portal online load"])

    @router.get("", response_model=LoadsOverviewOut, responses=_ERRORS)
    def overview(current: CurrentCitizen) -> Response:
        cards = [
            {"issuer_id": v.issuer_id, "card_asn": v.card_asn, "loads": msgspec.to_builtins(v.loads.loads)}
            for v in service.all_cards(current)
        ]
        return _json({"terminal_id": service.terminal_id, "cards": cards})

    @router.get("/cards/{issuer_id}/{card_asn}", responses=_answer_doc("CardLoads"))
    def card_loads(issuer_id: IssuerId, card_asn: CardAsn, current: CurrentCitizen) -> Response:
        return _json(service.card_loads(current, issuer_id, card_asn))

    @router.post("/{load_id}/authorize", responses=_answer_doc("LoadAuthorizeResponse"),
                 openapi_extra=_body_doc("LoadAuthorizeRequest"))  # fmt: skip
    async def authorize(load_id: LoadId, request: Request, current: CsrfCitizen) -> Response:
        req = await _decode(request, LoadAuthorizeRequest)
        return _json(await run_in_threadpool(service.authorize, current, load_id, req))

    @router.post("/{load_id}/complete", responses=_answer_doc("LoadCompleteResponse"),
                 openapi_extra=_body_doc("LoadCompleteRequest"))  # fmt: skip
    async def complete(load_id: LoadId, request: Request, current: CsrfCitizen) -> Response:
        req = await _decode(request, LoadCompleteRequest)
        return _json(await run_in_threadpool(service.complete, current, load_id, req))

    @router.post("/{load_id}/resolve", responses=_answer_doc("LoadResolveResponse"),
                 openapi_extra=_body_doc("LoadResolveRequest"))  # fmt: skip
    async def resolve(load_id: LoadId, request: Request, current: CsrfCitizen) -> Response:
        req = await _decode(request, LoadResolveRequest)
        return _json(await run_in_threadpool(service.resolve, current, load_id, req))

    return router


def reader_page_router(
    service: OnlineLoadService, accounts: AccountService, page_config: PageConfig, *, card_login: bool
) -> APIRouter:
    """``GET /reader``: the page the JavaScript drives, rendered by the pages' ``portal.web.render``."""
    from portal.web import render

    router = APIRouter(include_in_schema=False)

    @router.get("/reader", response_class=HTMLResponse)
    def reader_page(request: Request, yk_session: Annotated[str | None, Cookie()] = None) -> HTMLResponse:
        try:
            current = accounts.current(yk_session)
        except PortalError:
            current = None
        context = {
            "agent_url": page_config.reader_agent_url,
            "terminal_id": service.terminal_id,
            "card_login": card_login,
        }
        return render(
            request,
            READER_TEMPLATE,
            context,
            config=page_config,
            session_csrf=current.csrf_token if current is not None else None,
            signed_in=current is not None,
        )

    return router


def mount_online_load(
    app: FastAPI,
    service: OnlineLoadService,
    *,
    accounts: AccountService | None = None,
    page_config: PageConfig | None = None,
    card_login: bool = False,
) -> None:
    """``/api/loads`` (with the portal's ``/api``), and ``GET /reader`` when the pages are mounted."""
    app.include_router(loads_router(service))
    if accounts is not None and page_config is not None:
        app.include_router(reader_page_router(service, accounts, page_config, card_login=card_login))


__all__ = ["loads_router", "mount_online_load", "reader_page_router"]
