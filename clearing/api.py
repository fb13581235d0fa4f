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
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, Final

import msgspec
from fastapi import APIRouter, Depends, FastAPI, Header, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from clearing import denylist, loads, registry
from clearing.contract import Batch as BatchMessage
from clearing.contract import (
    BatchAnswer,
    DenylistDelta,
    ErrorBody,
    ErrorItem,
    LoadAuthorizeRequest,
    LoadAuthorizeResponse,
    LoadCompleteRequest,
    LoadCompleteResponse,
    encode,
)
from clearing.contract.codes import Code
from clearing.ingest import (
    IngestError,
    Ingestor,
    TacKeys,
    content_hash,
    decode_upload,
    enqueue,
    keystore_dtk,
    make_ingestor,
    prepare,
    stored_answer,
)
from clearing.keystore import KeyStore
from clearing.models import PendingLoad
from clearing.redis_bus import RedisBus
from clearing.validation import Limits

TERMINAL_ID_PATTERN: Final = "^[0-9a-f]{12}$"
LOAD_ID_PATTERN: Final = "^[A-Za-z0-9_.:-]{1,40}$"
QUEUE_WAIT_S_DEFAULT: Final = 10.0
RETRY_AFTER_S: Final = 2
DENYLIST_MIRROR_CHECK_S: Final = 30.0
BODY_BYTES_MAX: Final = 16 * 1024 * 1024  # 10,000 records of ~1 KB each, with room


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, errors: list[ErrorItem] | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.errors = errors or []


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
    _local: threading.local = field(default_factory=threading.local)
    _mirror_checked_at: float = 0.0

    def __post_init__(self) -> None:
        if self.ingestor is None:
            self.ingestor = make_ingestor(self.engine, limits=self.limits, clock=self.clock)

    @classmethod
    def from_settings(cls, settings: Any) -> ApiDeps:
        from clearing import db

        engine = db.ensure_migrated(settings.database_url)
        bus = RedisBus.from_url(settings.redis_url, prefix=settings.redis_prefix) if settings.redis_url else None
        return cls(engine=engine, keystore=KeyStore.from_settings(settings), bus=bus)

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


# --- errors -----------------------------------------------------------------------------------


def _error_response(status: int, code: str, message: str, errors: list[ErrorItem] | None = None) -> Response:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return Response(
        encode(ErrorBody(code, message, errors or [])), status_code=status, media_type="application/json",
        headers=headers,
    )  # fmt: skip


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> Response:
        return _error_response(exc.status, exc.code, exc.message, exc.errors)

    @app.exception_handler(IngestError)
    async def _ingest_error(_: Request, exc: IngestError) -> Response:
        status = {Code.E_MALFORMED: 422, Code.E_BATCH_CONFLICT: 409, Code.E_UNKNOWN_TERMINAL: 403}.get(exc.code, 400)
        return _error_response(status, exc.code.value, exc.message, exc.errors)

    @app.exception_handler(loads.LoadError)
    async def _load_error(_: Request, exc: loads.LoadError) -> Response:
        return _error_response(exc.status, exc.code, exc.message)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> Response:
        items = [
            ErrorItem("$." + ".".join(str(p) for p in e.get("loc", ())), "E_SCHEMA", str(e.get("msg", "")))
            for e in exc.errors()
        ]
        return _error_response(422, Code.E_MALFORMED.value, "request does not match the contract", items)


# --- authentication ---------------------------------------------------------------------------


def _bearer(authorization: str | None) -> str:
    if not authorization:
        raise ApiError(401, Code.E_UNAUTHORIZED.value, "missing Authorization: Bearer <terminal token>")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, Code.E_UNAUTHORIZED.value, "Authorization must be: Bearer <terminal token>")
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
        raise ApiError(403, Code.E_FORBIDDEN.value, f"the token is terminal {owner}'s, not terminal {terminal_id}'s")
    raise ApiError(401, Code.E_UNAUTHORIZED.value, f"the token does not verify for terminal {terminal_id}")


# --- OpenAPI from the msgspec contract ----------------------------------------------------------

_REF: Final = "#/components/schemas/{name}"
_SCHEMA_TYPES: Final = (
    BatchMessage,
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
        401: "missing or wrong token",
        403: "another terminal's token",
        404: "unknown load",
        409: "conflict (E_BATCH_CONFLICT, or a load for another card, amount or state)",
        422: "malformed or truncated body; nothing stored",
        503: "queued for a clearing worker; retry after Retry-After seconds",
    }
    return {s: _json("ErrorBody", texts[s]) for s in statuses}


def _body(name: str) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": _ref(name)}}}}


def _install_openapi(app: FastAPI) -> None:
    _, components = msgspec.json.schema_components(_SCHEMA_TYPES, ref_template=_REF)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, routes=app.routes, description=app.description)
            schema.setdefault("components", {}).setdefault("schemas", {}).update(components)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


# --- routers ------------------------------------------------------------------------------------

TerminalId = Annotated[str, Path(pattern=TERMINAL_ID_PATTERN, description="PSAM terminal number, 12 hex")]
LoadId = Annotated[str, Path(pattern=LOAD_ID_PATTERN)]
AuthHeader = Annotated[str | None, Header(alias="Authorization", include_in_schema=False)]


def _deps(request: Request) -> ApiDeps:
    deps = request.app.state.deps
    assert isinstance(deps, ApiDeps)
    return deps


Deps = Annotated[ApiDeps, Depends(_deps)]


def _json_response(content: bytes) -> Response:
    return Response(content, media_type="application/json")


def _decode(body: bytes, kind: type[Any]) -> Any:
    try:
        return msgspec.json.decode(body, type=kind)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        text, _, where = str(exc).partition(" - at `")
        raise ApiError(
            422, Code.E_MALFORMED.value, f"body does not match the contract: {text}",
            [ErrorItem(where.rstrip("`") or "$", "E_SCHEMA", text)],
        ) from exc  # fmt: skip


def _upload_sync(deps: ApiDeps, terminal_id: str, body: bytes, authorization: str | None) -> Response:
    authenticate(deps.engine, terminal_id, authorization)
    batch = decode_upload(body)
    if deps.bus is None:
        assert deps.ingestor is not None
        result = deps.ingestor.ingest(prepare(terminal_id, batch, deps.tac_keys()))
        return _json_response(result.answer)
    found = enqueue(deps.engine, terminal_id, batch, content_hash(batch), body, deps.clock())
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
    response = _error_response(
        503, "I_QUEUED", f"batch {batch.batch_seq} is queued for clearing; ask again to get its answer"
    )
    response.headers["Retry-After"] = str(RETRY_AFTER_S)
    return response


def terminals_router() -> APIRouter:
    router = APIRouter(prefix="/v1/terminals", tags=["terminals"])

    @router.post(
        "/{terminal_id}/batches",
        summary="Upload a journal batch; one verdict per record",
        responses={200: _json("BatchAnswer", "one verdict per record, in order"), **_errors(401, 403, 409, 422, 503)},
        openapi_extra=_body("Batch"),
    )
    async def upload_batch(
        terminal_id: TerminalId, request: Request, deps: Deps, authorization: AuthHeader = None
    ) -> Response:
        body = await request.body()
        if len(body) > BODY_BYTES_MAX:
            raise ApiError(413, Code.E_MALFORMED.value, f"body larger than {BODY_BYTES_MAX} bytes")
        return await run_in_threadpool(_upload_sync, deps, terminal_id, body, authorization)

    @router.get(
        "/{terminal_id}/denylist",
        summary="Denylist changes since a version (or the full list)",
        responses={200: _json("DenylistDelta", "delta or full list"), **_errors(401, 403, 422)},
    )
    async def get_denylist(
        terminal_id: TerminalId,
        deps: Deps,
        since: Annotated[int, Query(ge=0, description="the terminal's current version")] = 0,
        authorization: AuthHeader = None,
    ) -> Response:
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

    return router


def loads_router() -> APIRouter:
    router = APIRouter(prefix="/v1/loads", tags=["loads"])

    @router.post(
        "/{load_id}/authorize",
        summary="INITIALIZE FOR LOAD answer: check MAC1, return MAC2",
        responses={
            200: _json("LoadAuthorizeResponse", "MAC2 and the host time it covers"),
            **_errors(401, 403, 404, 409, 422),
        },
        openapi_extra=_body("LoadAuthorizeRequest"),
    )
    async def authorize_load(
        load_id: LoadId, request: Request, deps: Deps, authorization: AuthHeader = None
    ) -> Response:
        req: LoadAuthorizeRequest = _decode(await request.body(), LoadAuthorizeRequest)

        def work() -> Response:
            authenticate(deps.engine, req.terminal_id, authorization)
            with Session(deps.engine) as session, session.begin():
                answer = loads.authorize(session, deps.keystore, load_id, req, deps.clock())
            return _json_response(encode(answer))

        return await run_in_threadpool(work)

    @router.post(
        "/{load_id}/complete",
        summary="CREDIT FOR LOAD's TAC: verify and post, once",
        responses={200: _json("LoadCompleteResponse", "posted"), **_errors(401, 403, 404, 409, 422)},
        openapi_extra=_body("LoadCompleteRequest"),
    )
    async def complete_load(
        load_id: LoadId, request: Request, deps: Deps, authorization: AuthHeader = None
    ) -> Response:
        req: LoadCompleteRequest = _decode(await request.body(), LoadCompleteRequest)

        def work() -> Response:
            with Session(deps.engine) as session:
                terminal = session.execute(select(PendingLoad.terminal_id).where(PendingLoad.id == load_id)).first()
            if terminal is None:
                raise loads.LoadError(404, "E_UNKNOWN_LOAD", f"no pending load {load_id}")
            if terminal[0] is None:
                raise loads.LoadError(409, "E_LOAD_STATE", f"load {load_id} was never authorized")
            authenticate(deps.engine, terminal[0], authorization)
            with Session(deps.engine) as session, session.begin():
                answer = loads.complete(session, deps.keystore, load_id, req)
            return _json_response(encode(answer))

        return await run_in_threadpool(work)

    return router


def create_app(settings_or_deps: Any) -> FastAPI:
    """The clearing API for the given ``Settings`` (or ready-made ``ApiDeps``)."""
    deps = settings_or_deps if isinstance(settings_or_deps, ApiDeps) else ApiDeps.from_settings(settings_or_deps)
    app = FastAPI(
        title="Yikatong clearing",
        version="1",
        description="Terminal ↔ clearing contract (spec/terminal-api.md): batches, denylist, online loads.",
    )
    app.state.deps = deps
    _install_error_handlers(app)
    app.include_router(terminals_router())
    app.include_router(loads_router())
    _install_openapi(app)
    return app


__all__ = ["ApiDeps", "ApiError", "authenticate", "create_app", "loads_router", "terminals_router"]
