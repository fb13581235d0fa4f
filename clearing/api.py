"""The terminal API (``spec/terminal-api.md``): batch upload, denylist, online load host.

``create_app(settings_or_deps)`` builds a FastAPI app with two routers, ``/v1/terminals``
and ``/v1/loads``. Bodies are decoded with the msgspec contract structs
(``clearing.contract``: unknown fields refused); errors are always
``{code, message, errors: [{path, code, message}]}``. OpenAPI is generated from the same
structs (``msgspec.json.schema_components``), so the published schema is the one enforced.

Uploads: without Redis the request clears its batch synchronously (one transaction). With
Redis the body is stored as ``queued``, referenced on the ingest stream, and the request
waits up to ``queue_wait_s`` for a worker; if none answers in time it gets ``503`` with
``Retry-After`` (a retry the terminal uploader already makes) and the next attempt finds
the answer. Either way the answer is the stored one, byte for byte.

Authentication: ``Authorization: Bearer <terminal_id>.<secret>``; the secret is checked
against the scrypt hash of the terminal the token names (``clearing.registry``). A token
naming another terminal that verifies for that terminal is ``403``; anything else that
does not verify is ``401``.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Annotated, Any, Final

import msgspec
from fastapi import APIRouter, Depends, FastAPI, Header, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response
from fastapi.routing import APIRoute
from sqlalchemy import Engine, select
from sqlalchemy.exc import DisconnectionError, OperationalError
from sqlalchemy.orm import Session
from starlette.exceptions import HTTPException as StarletteHTTPException

from clearing import denylist, loads, registry
from clearing.business_day import DEFAULT_CLOCK, BusinessDayClock, clock_from_settings
from clearing.contract import Batch as BatchMessage
from clearing.contract import (
    BatchAnswer,
    CardLoads,
    DenylistDelta,
    ErrorBody,
    ErrorItem,
    LoadAuthorizeRequest,
    LoadAuthorizeResponse,
    LoadCompleteRequest,
    LoadCompleteResponse,
    LoadResolveRequest,
    LoadResolveResponse,
    decode_request,
    encode,
)
from clearing.contract.codes import Code
from clearing.errors import ClearingError
from clearing.ingest import (
    Ingestor,
    TacKeys,
    clear_or_answer,
    content_hash,
    decode_upload,
    enqueue,
    keystore_dtk,
    make_ingestor,
    stored_answer,
)
from clearing.keystore import KeyStore
from clearing.models import PendingLoad
from clearing.redis_bus import RedisBus
from clearing.refunds import default_refunds, tariff_refunds
from clearing.validation import Limits, RefundPricer

TERMINAL_ID_PATTERN: Final = "^[0-9a-fA-F]{12}$"
LOAD_ID_PATTERN: Final = "^[A-Za-z0-9_.:-]{1,40}$"
QUEUE_WAIT_S_DEFAULT: Final = 10.0
RETRY_AFTER_S: Final = 2
DENYLIST_MIRROR_CHECK_S: Final = 30.0
log = logging.getLogger(__name__)
BODY_BYTES_MAX: Final = 16 * 1024 * 1024  # 10,000 records of ~1 KB each, with room
SMALL_BODY_BYTES_MAX: Final = 64 * 1024  # a load request is a few hundred bytes


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass
class ApiDeps:
    """Everything the API needs, built once (``from_settings``) or by a test."""

    engine: Engine
    keystore: KeyStore
    limits: Limits = field(default_factory=Limits)
    bus: RedisBus | None = None
    clock: Callable[[], dt.datetime] = _utcnow
    queue_wait_s: float = QUEUE_WAIT_S_DEFAULT
    ingestor: Ingestor | None = None
    denylist_mirror_check_s: float = DENYLIST_MIRROR_CHECK_S
    # Prices tap-off refunds from the verified entry leg; default: the demo city's example tariff.
    refund_pricer: RefundPricer | None = field(default_factory=default_refunds)
    days: BusinessDayClock = DEFAULT_CLOCK
    _local: threading.local = field(default_factory=threading.local)
    _mirror_checked_at: float = 0.0

    def __post_init__(self) -> None:
        if self.ingestor is None:
            self.ingestor = make_ingestor(
                self.engine, limits=self.limits, clock=self.clock, refund_pricer=self.refund_pricer, days=self.days
            )

    @classmethod
    def from_settings(cls, settings: Any) -> ApiDeps:
        from clearing import db

        engine = db.ensure_migrated(settings.database_url)
        bus = RedisBus.from_url(settings.redis_url, prefix=settings.redis_prefix) if settings.redis_url else None
        pricer = tariff_refunds(getattr(settings, "tariffs", None))
        days = clock_from_settings(settings)
        return cls(engine=engine, keystore=KeyStore.from_settings(settings), bus=bus, refund_pricer=pricer, days=days)

    def denylist_mirror_stale(self) -> bool:
        """True at most every ``denylist_mirror_check_s``: time to compare the Redis mirror with the DB.

        Writers publish after each change (``denylist.publish``); this bounds how long a lost
        publish can hide a change from terminals.
        """
        now = time.monotonic()
        if now - self._mirror_checked_at < self.denylist_mirror_check_s:
            return False
        self._mirror_checked_at = now
        return True

    def tac_keys(self) -> TacKeys:
        """One TAC key cache per thread: MAC contexts are not thread-safe."""
        keys = getattr(self._local, "keys", None)
        if keys is None:
            keys = self._local.keys = TacKeys(keystore_dtk(self.keystore), self.keystore.issuers())
        assert isinstance(keys, TacKeys)
        return keys


# --- errors: the contract's shape, scoped to this API's routes --------------------------------


def error_response(status: int, code: str, message: str, errors: list[ErrorItem] | None = None) -> Response:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return Response(
        encode(ErrorBody(code, message, errors or [])), status_code=status, media_type="application/json",
        headers=headers,
    )  # fmt: skip


def _validation_items(exc: RequestValidationError) -> list[ErrorItem]:
    return [
        ErrorItem("$." + ".".join(str(p) for p in e.get("loc", ())), "E_SCHEMA", str(e.get("msg", "")))
        for e in exc.errors()
    ]


def contract_error(exc: Exception) -> Response:
    """Any exception of a terminal-API route as the contract's error body; never an unshaped 500.

    Known refusals keep their code and status. A store that cannot be reached is ``503``
    (the terminal's uploader retries it; nothing was committed). Anything else is a bug:
    logged with its traceback and answered ``500 E_INTERNAL`` in the same shape.
    """
    if isinstance(exc, ClearingError):
        return error_response(exc.status, exc.code.value, exc.message, exc.errors)
    if isinstance(exc, RequestValidationError):
        return error_response(
            422, Code.E_MALFORMED.value, "request does not match the contract", _validation_items(exc)
        )
    if isinstance(exc, StarletteHTTPException):
        code = {404: Code.E_NOT_FOUND, 405: Code.E_METHOD_NOT_ALLOWED}.get(exc.status_code, Code.E_MALFORMED)
        return error_response(exc.status_code, code.value, str(exc.detail))
    if isinstance(exc, OperationalError | DisconnectionError):
        log.warning("store unavailable: %s", str(exc).splitlines()[0])
        return error_response(503, Code.E_UNAVAILABLE.value, "a store is unreachable; nothing was committed, retry")
    log.exception("unexpected fault in the terminal API")
    return error_response(500, Code.E_INTERNAL.value, f"unexpected {type(exc).__name__}; nothing was committed")


class AnsweringRoute(APIRoute):
    """A route that answers every failure of its handler with ``answer`` (never a 500).

    The handling is scoped to the route (FastAPI's custom ``APIRoute``), not installed on the
    whole application, so each API mounted beside another keeps its own error shape: the
    contract's here, the portal's JSON, the portal's and the console's pages (``yikatong.app``).
    """

    def answer(self, request: Request, exc: Exception) -> Response:
        raise NotImplementedError

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as exc:  # noqa: BLE001 - every failure gets the route's own shape
                return self.answer(request, exc)

        return handle


class ContractRoute(AnsweringRoute):
    """Routes of this API answer every failure in the contract's error shape."""

    def answer(self, request: Request, exc: Exception) -> Response:
        return contract_error(exc)


# --- authentication ---------------------------------------------------------------------------


def _bearer(authorization: str | None) -> str:
    if not authorization:
        raise ClearingError(Code.E_UNAUTHORIZED, "missing Authorization: Bearer <terminal token>")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ClearingError(Code.E_UNAUTHORIZED, "Authorization must be: Bearer <terminal token>")
    return token.strip()


def authenticate(engine: Engine, terminal_id: str, authorization: str | None) -> None:
    """Raise 401/403 unless the bearer token is ``terminal_id``'s (runs the scrypt check).

    Tokens are ``<terminal_id>.<secret>`` (``clearing.registry``): one that names another
    terminal and verifies for it is ``403 E_FORBIDDEN``; every other failure is ``401``.
    """
    token = _bearer(authorization)
    with Session(engine) as session:
        verdict, _ = registry.check_terminal_token(session, terminal_id, token)
    if verdict is registry.TokenCheck.OK:
        return
    if verdict is registry.TokenCheck.OTHER_TERMINAL:
        owner = token.partition(registry.TOKEN_SEPARATOR)[0]
        raise ClearingError(Code.E_FORBIDDEN, f"the token is terminal {owner}'s, not terminal {terminal_id}'s")
    raise ClearingError(Code.E_UNAUTHORIZED, f"the token does not verify for terminal {terminal_id}")


# --- OpenAPI from the msgspec contract ----------------------------------------------------------

_REF: Final = "#/components/schemas/{name}"
_SCHEMA_TYPES: Final = (
    BatchMessage,
    CardLoads,
    LoadResolveRequest,
    LoadResolveResponse,
    BatchAnswer,
    ErrorBody,
    DenylistDelta,
    LoadAuthorizeRequest,
    LoadAuthorizeResponse,
    LoadCompleteRequest,
    LoadCompleteResponse,
)


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": _REF.format(name=name)}


def _json(name: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(name)}}}


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    texts = {
        401: "missing or wrong token (E_UNAUTHORIZED)",
        403: "another terminal's token (E_FORBIDDEN)",
        404: "unknown load or card (E_UNKNOWN_LOAD, E_UNKNOWN_CARD)",
        409: "conflict (E_BATCH_CONFLICT, or a load for another card, amount or state)",
        413: "body larger than the contract allows (E_TOO_LARGE); nothing read",
        422: "malformed or truncated body (E_MALFORMED); nothing stored",
        503: "queued for a clearing worker (I_QUEUED), or a store unreachable (E_UNAVAILABLE); retry",
    }
    return {s: _json("ErrorBody", texts[s]) for s in statuses}


def _body(name: str) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": _ref(name)}}}}


def openapi_components() -> dict[str, Any]:
    """The contract's schemas, generated from the msgspec structs that decode the bodies."""
    _, components = msgspec.json.schema_components(_SCHEMA_TYPES, ref_template=_REF)
    return components


def install_openapi(app: FastAPI) -> None:
    """Serve OpenAPI with every schema component the mounted APIs registered (``app.state.openapi_components``)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, routes=app.routes, description=app.description)
            extra = getattr(app.state, "openapi_components", {})
            schema.setdefault("components", {}).setdefault("schemas", {}).update(extra)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


# --- routers ------------------------------------------------------------------------------------

TerminalId = Annotated[str, Path(pattern=TERMINAL_ID_PATTERN, description="PSAM terminal number, 12 hex (either case)")]
LoadId = Annotated[str, Path(pattern=LOAD_ID_PATTERN)]
IssuerId = Annotated[str, Path(pattern="^[0-9a-fA-F]{16}$", description="issuer id, 16 hex")]
CardAsn = Annotated[str, Path(pattern="^[0-9a-fA-F]{20}$", description="card ASN, 20 hex")]
AuthHeader = Annotated[str | None, Header(alias="Authorization", include_in_schema=False)]


def _deps(request: Request) -> ApiDeps:
    deps = request.app.state.clearing
    assert isinstance(deps, ApiDeps)
    return deps


Deps = Annotated[ApiDeps, Depends(_deps)]


def _json_response(content: bytes) -> Response:
    return Response(content, media_type="application/json")


def _decode(body: bytes, kind: type[Any]) -> Any:
    try:
        return decode_request(body, kind)
    except (msgspec.ValidationError, msgspec.DecodeError, RecursionError) as exc:
        text, _, where = str(exc).partition(" - at `")
        raise ClearingError(
            Code.E_MALFORMED, f"body does not match the contract: {text}",
            errors=[ErrorItem(where.rstrip("`") or "$", "E_SCHEMA", text)],
        ) from exc  # fmt: skip


def _declared_length_ok(request: Request, limit: int) -> None:
    """Refuse a body that says it is too large before reading a byte of it."""
    declared = request.headers.get("content-length")
    if declared is None:
        return
    if not declared.isdigit():
        raise ClearingError(Code.E_MALFORMED, f"Content-Length {declared!r} is not a number of bytes")
    if int(declared) > limit:
        raise ClearingError(Code.E_TOO_LARGE, f"body of {declared} bytes is larger than {limit} bytes")


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused as soon as it grows past ``limit`` (a sender may lie about its length)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ClearingError(Code.E_TOO_LARGE, f"body larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _authenticated_body(request: Request, deps: ApiDeps, terminal_id: str, authorization: str | None) -> bytes:
    """Size and token are checked before the body is read: a stranger's upload costs no memory."""
    _declared_length_ok(request, BODY_BYTES_MAX)
    await run_in_threadpool(authenticate, deps.engine, terminal_id, authorization)
    return await _read_body(request, BODY_BYTES_MAX)


def _upload_sync(deps: ApiDeps, terminal_id: str, body: bytes) -> Response:
    batch = decode_upload(body)
    received_at = deps.clock()
    if deps.bus is None:
        assert deps.ingestor is not None
        return _json_response(clear_or_answer(deps.ingestor, deps.engine, terminal_id, batch, body, deps.tac_keys()))
    found = enqueue(deps.engine, terminal_id, batch, content_hash(batch), body, received_at)
    if found.answer is not None:
        return _json_response(found.answer)
    deps.bus.enqueue(terminal_id, batch.batch_seq)
    deadline = time.monotonic() + deps.queue_wait_s
    while True:
        answer = stored_answer(deps.engine, terminal_id, batch.batch_seq)
        if answer is not None:
            return _json_response(answer)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        deps.bus.wait_done(terminal_id, batch.batch_seq, min(remaining, 0.5))
    response = error_response(
        503, Code.I_QUEUED.value, f"batch {batch.batch_seq} is queued for clearing; ask again to get its answer"
    )
    response.headers["Retry-After"] = str(RETRY_AFTER_S)
    return response


_COMMON_ERRORS: Final = (401, 403, 422, 503)


def terminals_router() -> APIRouter:
    router = APIRouter(prefix="/v1/terminals", tags=["terminals"], route_class=ContractRoute)

    @router.post(
        "/{terminal_id}/batches",
        summary="Upload a journal batch; one verdict per record",
        responses={
            200: _json("BatchAnswer", "one verdict per record, in order"),
            **_errors(401, 403, 409, 413, 422, 503),
        },
        openapi_extra=_body("Batch"),
    )
    async def upload_batch(
        terminal_id: TerminalId, request: Request, deps: Deps, authorization: AuthHeader = None
    ) -> Response:
        terminal_id = terminal_id.lower()
        body = await _authenticated_body(request, deps, terminal_id, authorization)
        return await run_in_threadpool(_upload_sync, deps, terminal_id, body)

    @router.get(
        "/{terminal_id}/denylist",
        summary="Denylist changes since a version (or the full list)",
        responses={200: _json("DenylistDelta", "delta or full list"), **_errors(*_COMMON_ERRORS)},
    )
    async def get_denylist(
        terminal_id: TerminalId,
        deps: Deps,
        since: Annotated[int, Query(ge=0, le=2**62, description="the terminal's current version")] = 0,
        authorization: AuthHeader = None,
    ) -> Response:
        terminal_id = terminal_id.lower()

        def work() -> Response:
            authenticate(deps.engine, terminal_id, authorization)
            mirrored = deps.bus.denylist_version() if deps.bus is not None else None
            if mirrored is not None and deps.denylist_mirror_stale():
                mirrored = None  # re-read the database (and re-publish below if the mirror was behind)
            if mirrored is not None and since == mirrored:
                return _json_response(encode(DenylistDelta(since, False, [], [])))
            with Session(deps.engine) as session:
                answer = denylist.delta(session, since)
                if deps.bus is not None and mirrored != answer.version:
                    denylist.publish(session, deps.bus)  # the mirror was behind: heal it
            return _json_response(encode(answer))

        return await run_in_threadpool(work)

    @router.get(
        "/{terminal_id}/cards/{issuer_id}/{card_asn}/loads",
        summary="The loads waiting for a card (a load-capable terminal asks at the card's presentation)",
        responses={200: _json("CardLoads", "pending and authorized loads, oldest first"), **_errors(*_COMMON_ERRORS)},
    )
    async def card_loads(
        terminal_id: TerminalId,
        issuer_id: IssuerId,
        card_asn: CardAsn,
        deps: Deps,
        authorization: AuthHeader = None,
    ) -> Response:
        terminal_id = terminal_id.lower()

        def work() -> Response:
            authenticate(deps.engine, terminal_id, authorization)
            with Session(deps.engine) as session:
                answer = loads.for_card(session, issuer_id.lower(), card_asn.lower())
            return _json_response(encode(answer))

        return await run_in_threadpool(work)

    return router


def loads_router() -> APIRouter:
    router = APIRouter(prefix="/v1/loads", tags=["loads"], route_class=ContractRoute)

    @router.post(
        "/{load_id}/authorize",
        summary="INITIALIZE FOR LOAD answer: check MAC1, return MAC2",
        responses={
            200: _json("LoadAuthorizeResponse", "MAC2 and the host time it covers"),
            **_errors(401, 403, 404, 409, 422, 503),
        },
        openapi_extra=_body("LoadAuthorizeRequest"),
    )
    async def authorize_load(
        load_id: LoadId, request: Request, deps: Deps, authorization: AuthHeader = None
    ) -> Response:
        _declared_length_ok(request, SMALL_BODY_BYTES_MAX)
        req: LoadAuthorizeRequest = _decode(await _read_body(request, SMALL_BODY_BYTES_MAX), LoadAuthorizeRequest)

        def work() -> Response:
            authenticate(deps.engine, req.terminal_id, authorization)
            with Session(deps.engine) as session, session.begin():
                answer = loads.authorize(session, deps.keystore, load_id, req, deps.clock())
            return _json_response(encode(answer))

        return await run_in_threadpool(work)

    @router.post(
        "/{load_id}/complete",
        summary="CREDIT FOR LOAD's TAC: verify and post, once",
        responses={200: _json("LoadCompleteResponse", "posted"), **_errors(401, 403, 404, 409, 422, 503)},
        openapi_extra=_body("LoadCompleteRequest"),
    )
    async def complete_load(
        load_id: LoadId, request: Request, deps: Deps, authorization: AuthHeader = None
    ) -> Response:
        _declared_length_ok(request, SMALL_BODY_BYTES_MAX)
        req: LoadCompleteRequest = _decode(await _read_body(request, SMALL_BODY_BYTES_MAX), LoadCompleteRequest)

        def work() -> Response:
            with Session(deps.engine) as session:
                terminal = session.execute(select(PendingLoad.terminal_id).where(PendingLoad.id == load_id)).first()
            if terminal is None:
                raise ClearingError(Code.E_UNKNOWN_LOAD, f"no pending load {load_id}")
            if terminal[0] is None:
                raise ClearingError(Code.E_LOAD_STATE, f"load {load_id} was never authorized")
            authenticate(deps.engine, terminal[0], authorization)
            with Session(deps.engine) as session, session.begin():
                answer = loads.complete(session, deps.keystore, load_id, req)
            return _json_response(encode(answer))

        return await run_in_threadpool(work)

    @router.post(
        "/{load_id}/resolve",
        summary="Settle a load in doubt from the card: its proof (GET TRANSACTION PROVE, P2 02) or its counter",
        responses={
            200: _json("LoadResolveResponse", "posted or pending again"),
            **_errors(401, 403, 404, 409, 422, 503),
        },
        openapi_extra=_body("LoadResolveRequest"),
    )
    async def resolve_load(load_id: LoadId, request: Request, deps: Deps, authorization: AuthHeader = None) -> Response:
        _declared_length_ok(request, SMALL_BODY_BYTES_MAX)
        req: LoadResolveRequest = _decode(await _read_body(request, SMALL_BODY_BYTES_MAX), LoadResolveRequest)

        def work() -> Response:
            authenticate(deps.engine, req.terminal_id, authorization)
            with Session(deps.engine) as session, session.begin():
                answer = loads.resolve(session, deps.keystore, load_id, req, deps.clock())
            return _json_response(encode(answer))

        return await run_in_threadpool(work)

    return router


def unknown_paths_router() -> APIRouter:
    """Any other path under ``/v1`` answers ``404 E_NOT_FOUND`` in the contract's shape."""
    router = APIRouter(prefix="/v1", route_class=ContractRoute, include_in_schema=False)

    @router.api_route("/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"])
    async def not_found(path: str) -> Response:
        raise ClearingError(Code.E_NOT_FOUND, f"no such path /v1/{path[:200]}")

    return router


def mount(app: FastAPI, deps: ApiDeps) -> None:
    """Add the terminal API (``/v1/terminals``, ``/v1/loads``) to an application (``yikatong.app``)."""
    app.state.clearing = deps
    app.include_router(terminals_router())
    app.include_router(loads_router())
    app.include_router(unknown_paths_router())
    components = getattr(app.state, "openapi_components", None)
    if components is None:
        components = app.state.openapi_components = {}
    components.update(openapi_components())


def create_app(settings_or_deps: Any) -> FastAPI:
    """An application carrying only the clearing API, for the given ``Settings`` (or ready ``ApiDeps``)."""
    deps = settings_or_deps if isinstance(settings_or_deps, ApiDeps) else ApiDeps.from_settings(settings_or_deps)
    app = FastAPI(
        title="Yikatong clearing",
        version="1",
        description="Terminal ↔ clearing contract (spec/terminal-api.md): batches, denylist, online loads.",
    )
    mount(app, deps)
    install_openapi(app)
    return app


__all__ = [
    "ApiDeps",
    "ContractRoute",
    "authenticate",
    "contract_error",
    "create_app",
    "error_response",
    "install_openapi",
    "loads_router",
    "mount",
    "openapi_components",
    "terminals_router",
]
