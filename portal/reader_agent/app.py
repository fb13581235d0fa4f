"""The reader agent's HTTP surface: one portal origin, loopback only, the PIN on its own page.

``docs/portal.md``, "Reader agent", is the protocol; in short:

* **Who may talk to it.** The agent listens on 127.0.0.1 only, and refuses a request whose
  ``Host`` is not ``127.0.0.1:<port>`` or ``localhost:<port>`` (``421 E_AGENT_HOST``: a
  DNS-rebinding page would send its own host name). The JSON endpoints answer one origin, the
  configured portal's: a request with another ``Origin`` is ``403 E_AGENT_ORIGIN``, and so is
  one without ``Origin`` except the two read-only ``GET /status`` and ``GET /openapi.json``
  (a browser always sends ``Origin`` on a cross-origin fetch, so only a local tool omits it).
  Answers carry ``Access-Control-Allow-Origin: <portal origin>`` exactly (never ``*``) and
  ``Vary: Origin``; a preflight from the portal is answered ``204`` with the methods, the
  ``Content-Type`` header and ``Access-Control-Allow-Private-Network: true`` (Chrome's Private
  Network Access asks before a public site reaches a loopback address). Bodies are JSON only,
  which makes every POST a preflighted request.
* **The PIN page** (``GET /pin?request=<id>``, ``POST /pin``) belongs to the agent's own
  origin: the form's POST must carry ``Origin: http://<the agent's host>`` and the request's
  form token. Nothing on it runs script; it cannot be framed.
* **Card login**: ``POST /sign {"nonce"}`` → ``201 {"request_id", "pin_url"}``; the citizen
  opens ``pin_url``; ``GET /sign/<id>`` answers the state, the last error (a wrong PIN and
  the tries left) and, once, the ``web-eid:1.0`` token. ``DELETE /sign/<id>`` cancels.
* **Online load**: ``POST /load {"terminal_id", "card"?}`` → ``201 {"request_id"}``;
  ``GET /load/<id>`` answers the state and, in state ``host_call``, the call to relay to the
  portal (``portal.reader_agent.jobs``); ``POST /load/<id>/answer {"seq", "status", "body"}``
  hands back the portal's answer; the final state carries the report. ``DELETE`` stops it.

Every error is ``{"code", "message", "message_zh"}`` with the code's status; none is a 500.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any, Final
from urllib.parse import parse_qs

from fastapi import FastAPI, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from portal.card_login import check_origin
from portal.reader_agent import pin_page
from portal.reader_agent.apdu_relay import RelayJob
from portal.reader_agent.card_ops import ExpectedCard, ReaderLock, ReaderSource, run_loads, sign_challenge
from portal.reader_agent.errors import AgentError, Code
from portal.reader_agent.jobs import (
    FINAL,
    HOST_TIMEOUT_S_DEFAULT,
    OPEN_MAX_DEFAULT,
    TTL_S_DEFAULT,
    LoadJob,
    Registry,
    RelayHost,
    SignRequest,
    State,
    new_id,
)
from terminals.loading import LoadRefused, LoadReport

log = logging.getLogger(__name__)

AGENT_NAME: Final = "yikatong-reader-agent"
AGENT_VERSION: Final = "1.0.0"
PORT_DEFAULT: Final = 8465
FORM_BYTES_MAX: Final = 2048
WAIT_MS_MAX: Final = 10_000
WaitMs = Annotated[int, Query(ge=0, le=WAIT_MS_MAX, description="wait this long for a change past `seen`")]
Seen = Annotated[int, Query(ge=-1, description="the version the caller has seen")]
_NO_ORIGIN_OK: Final = frozenset({("GET", "/status"), ("GET", "/openapi.json")})
_PAGE_PATHS: Final = frozenset({"/pin", "/agent.css"})


@dataclass(frozen=True, slots=True)
class AgentConfig:
    origin: str  # the portal's origin, exactly as the browser sends it
    port: int = PORT_DEFAULT
    ttl_s: float = TTL_S_DEFAULT
    open_max: int = OPEN_MAX_DEFAULT
    host_timeout_s: float = HOST_TIMEOUT_S_DEFAULT

    def __post_init__(self) -> None:
        check_origin(self.origin)
        if not 0 < self.port <= 0xFFFF:
            raise ValueError(f"the agent's port must be 1..65535, got {self.port}")

    @property
    def app_version(self) -> str:
        return f"{AGENT_NAME}/{AGENT_VERSION}"

    @property
    def hosts(self) -> frozenset[str]:
        return frozenset({f"127.0.0.1:{self.port}", f"localhost:{self.port}"})


# --- bodies ------------------------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SignIn(_Strict):
    nonce: str = Field(
        min_length=16, max_length=128, pattern=r"^[A-Za-z0-9+/]+={0,2}$", description="the portal's challenge nonce"
    )


class SignCreated(BaseModel):
    request_id: str
    pin_url: str = Field(description="the agent's PIN page for this request: open it for the citizen")
    expires_in_s: int


class ErrorOut(BaseModel):
    code: str
    message: str
    message_zh: str


class TokenOut(BaseModel):
    unverifiedCertificate: str  # noqa: N815 - web-eid:1.0 names
    algorithm: str
    signature: str
    format: str
    appVersion: str  # noqa: N815


class SignState(BaseModel):
    state: State
    version: int
    error: ErrorOut | None = None
    token: TokenOut | None = None


class CardIn(_Strict):
    issuer_id: str = Field(pattern=r"^[0-9a-f]{16}$")
    card_asn: str = Field(pattern=r"^[0-9a-f]{20}$")


class LoadIn(_Strict):
    terminal_id: str = Field(pattern=r"^[0-9a-f]{12}$", description="the portal's load terminal (its reader page says)")
    card: CardIn | None = Field(None, description="load only this card; another on the reader is refused")


class Created(BaseModel):
    request_id: str


class HostCallOut(BaseModel):
    seq: int
    op: str
    method: str
    path: str
    body: dict[str, Any] | None


class LoadResultOut(BaseModel):
    load_id: str
    amount_fen: int
    outcome: str
    reason: str


class ReportOut(BaseModel):
    issuer_id: str
    card_asn: str
    balance_fen: int | None
    loaded_fen: int
    results: list[LoadResultOut]

    @classmethod
    def of(cls, report: LoadReport) -> ReportOut:
        return cls(
            issuer_id=report.issuer_id,
            card_asn=report.card_asn,
            balance_fen=report.balance_fen,
            loaded_fen=report.loaded_fen,
            results=[LoadResultOut(load_id=r.load_id, amount_fen=r.amount_fen, outcome=r.outcome.value,
                                   reason=r.reason) for r in report.results],
        )  # fmt: skip


class LoadState(BaseModel):
    state: State
    version: int
    call: HostCallOut | None = None
    report: ReportOut | None = None
    error: ErrorOut | None = None


class AnswerIn(_Strict):
    seq: int = Field(ge=1, le=1_000_000)
    status: int = Field(ge=100, le=599, description="the portal's HTTP status")
    body: dict[str, Any] | None = Field(None, description="the portal's JSON answer")


class ApduIn(_Strict):
    apdu: str = Field(min_length=10, max_length=522, pattern=r"^([0-9a-fA-F]{2})+$", description="a purse command, hex")


class ApduOut(BaseModel):
    data: str = Field(description="the card's answer without the status word, hex")
    sw: int


class StatusOut(BaseModel):
    agent: str
    version: str
    origin: str
    readers: list[str]


_ERRORS: Final[dict[int | str, dict[str, Any]]] = {
    s: {"model": ErrorOut} for s in (403, 404, 408, 409, 421, 422, 502, 503)
}


def _error_out(error: AgentError | None) -> ErrorOut | None:
    return None if error is None else ErrorOut(**error.body())


def _json_error(error: AgentError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status)


# --- the application ------------------------------------------------------------------------------


class Agent:
    """The state behind the routes: the reader (one operation at a time) and the open requests."""

    def __init__(self, config: AgentConfig, source: ReaderSource, registry: Registry | None = None) -> None:
        self.config = config
        self.source = source
        self.reader = ReaderLock(source)
        self.registry = registry or Registry(ttl_s=config.ttl_s, open_max=config.open_max)
        self.host_timeout_s = config.host_timeout_s

    # card login
    def start_sign(self, nonce: str, agent_base: str) -> SignCreated:
        for old in self.registry.open_of(SignRequest):  # one PIN request at a time: a new one replaces it
            self.registry.finish(old, State.CANCELLED, AgentError(Code.E_AGENT_CANCELLED))
        request = SignRequest(new_id(), self.registry.clock(), State.WAITING_PIN, nonce=nonce)
        self.registry.add(request)
        return SignCreated(
            request_id=request.id, pin_url=f"{agent_base}/pin?request={request.id}", expires_in_s=int(self.config.ttl_s)
        )

    def sign_with_pin(self, request: SignRequest, pin: str) -> None:
        """The PIN page's submit: run the card; a retryable failure leaves the request waiting for a PIN."""
        if request.state != State.WAITING_PIN:
            raise AgentError(Code.E_AGENT_REQUEST_STATE)
        self.registry.update(request, state=State.WORKING)
        try:
            with self.reader.session() as channel:
                token = sign_challenge(
                    channel,
                    origin=self.config.origin,
                    nonce=request.nonce,
                    pin=pin,
                    app_version=self.config.app_version,
                )
        except AgentError as exc:
            log.info("card login signature refused: %s", exc.code.value)
            if exc.retry and _working(request):
                self.registry.update(request, state=State.WAITING_PIN, error=exc)
            else:
                self.registry.finish(request, State.FAILED, exc)
            return
        if _working(request):  # not cancelled meanwhile
            self.registry.update(request, state=State.DONE, token=token.json(), error=None)

    # online load
    def start_load(self, body: LoadIn) -> LoadJob:
        expected = ExpectedCard(body.card.issuer_id, body.card.card_asn) if body.card is not None else None
        job = LoadJob(new_id(), self.registry.clock(), State.WORKING, terminal_id=body.terminal_id)
        self.registry.add(job)
        thread = threading.Thread(target=self._run_load, args=(job, expected), name=f"load-{job.id[:6]}", daemon=True)
        thread.start()
        return job

    def _run_load(self, job: LoadJob, expected: ExpectedCard | None) -> None:
        host = RelayHost(self.registry, job, timeout_s=self.host_timeout_s)
        try:
            with self.reader.session() as channel:
                try:
                    report = run_loads(channel, host, job.terminal_id, expected)
                except LoadRefused as exc:  # the portal refused to list the card's loads: nothing moved
                    raise AgentError(Code.E_AGENT_PORTAL_REFUSED, exc.message[:300]) from None
        except AgentError as exc:
            log.info("load job ended: %s", exc.code.value)
            self.registry.finish(job, State.FAILED, exc)
            return
        except Exception as exc:  # a bug must end the job, not hang the page's poll
            log.exception("load job failed unexpectedly")
            self.registry.finish(job, State.FAILED, AgentError(Code.E_AGENT_READER_FAILED, type(exc).__name__))
            return
        with self.registry.changed:
            job.report = report
        self.registry.finish(job, State.DONE)

    # the purse relay (utility bills): the portal runs the purchase, the card's commands pass here
    def start_relay(self) -> RelayJob:
        """Hold the reader with the card powered; one relay at a time (a new one ends the old)."""
        for old in self.registry.open_of(RelayJob):
            self.registry.finish(old, State.CANCELLED, AgentError(Code.E_AGENT_CANCELLED))
        job = RelayJob(new_id(), self.registry.clock(), State.WORKING)
        stack = contextlib.ExitStack()
        try:
            job.channel = stack.enter_context(self.reader.session())
        except BaseException:
            stack.close()
            raise
        job.stack, job.last_s = stack, time.monotonic()
        self.registry.add(job)
        return job

    def answer(self, job: LoadJob, body: AnswerIn) -> None:
        with self.registry.changed:
            if job.state != State.HOST_CALL or job.call is None or job.call.seq != body.seq:
                raise AgentError(Code.E_AGENT_REQUEST_STATE, "(no host call with that sequence number is waiting)")
            job.answer = (body.seq, body.status, body.body)
            job.version += 1
            self.registry.changed.notify_all()


def _working(request: SignRequest) -> bool:
    """Still ours to finish (another thread may have cancelled it while the card worked)."""
    return request.state == State.WORKING


def _check_host(config: AgentConfig, request: Request) -> AgentError | None:
    host = request.headers.get("host", "")
    return None if host in config.hosts else AgentError(Code.E_AGENT_HOST)


def _cors(config: AgentConfig, response: Response) -> Response:
    response.headers["Access-Control-Allow-Origin"] = config.origin
    response.headers["Vary"] = "Origin"
    return response


def _preflight(config: AgentConfig, request: Request) -> Response:
    if request.headers.get("origin") != config.origin or request.url.path in _PAGE_PATHS:
        return _json_error(AgentError(Code.E_AGENT_ORIGIN))
    response = Response(status_code=204)
    _cors(config, response)
    response.headers["Access-Control-Allow-Methods"] = "GET, POST, DELETE"
    response.headers["Access-Control-Allow-Headers"] = "Content-Type"
    response.headers["Access-Control-Max-Age"] = "600"
    response.headers["Access-Control-Allow-Private-Network"] = "true"
    return response


def _security_headers(response: Response, *, page: bool) -> Response:
    response.headers["X-Content-Type-Options"] = "nosniff"
    # The PIN page: same-origin, because under no-referrer Chromium sends its own form's POST
    # with ``Origin: null``, which the guard (rightly) refuses; nothing leaves for other sites.
    response.headers["Referrer-Policy"] = "same-origin" if page else "no-referrer"
    response.headers["Cache-Control"] = "no-store"
    if page:
        response.headers["Content-Security-Policy"] = pin_page.PAGE_CSP
        response.headers["X-Frame-Options"] = "DENY"
    return response


def create_app(config: AgentConfig, source: ReaderSource, *, registry: Registry | None = None) -> FastAPI:
    """The agent's ASGI app (``yikatong reader-agent`` serves it with uvicorn on 127.0.0.1)."""
    agent = Agent(config, source, registry)
    app = FastAPI(
        title="Yikatong reader agent",
        version=AGENT_VERSION,
        description="The local card reader service of the Yikatong portal (docs/portal.md, 'Reader agent').",
        docs_url=None,
        redoc_url=None,
    )
    app.state.agent = agent

    @app.middleware("http")
    async def guard(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        path, method = request.url.path, request.method
        page = path in _PAGE_PATHS
        refused = _check_host(config, request)
        if refused is not None:
            return _security_headers(_json_error(refused), page=False)
        origin = request.headers.get("origin")
        if method == "OPTIONS" and "access-control-request-method" in request.headers:
            return _security_headers(_preflight(config, request), page=False)
        if page:
            own = f"http://{request.headers['host']}"
            if method == "POST" and origin != own:
                return _security_headers(_json_error(AgentError(Code.E_AGENT_ORIGIN)), page=False)
            return _security_headers(await call_next(request), page=True)
        if origin is None:
            if (method, path) not in _NO_ORIGIN_OK:
                return _security_headers(_json_error(AgentError(Code.E_AGENT_ORIGIN)), page=False)
            return _security_headers(await call_next(request), page=False)
        if origin != config.origin:
            return _security_headers(_json_error(AgentError(Code.E_AGENT_ORIGIN)), page=False)
        return _security_headers(_cors(config, await call_next(request)), page=False)

    @app.exception_handler(AgentError)
    async def _agent_error(_: Request, exc: AgentError) -> JSONResponse:
        return _json_error(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        where = ", ".join(".".join(str(p) for p in e.get("loc", ())) for e in exc.errors()[:5])
        return _json_error(AgentError(Code.E_AGENT_MALFORMED, f"({where})"))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = Code.E_AGENT_NOT_FOUND if exc.status_code == 404 else Code.E_AGENT_MALFORMED
        return _json_error(AgentError(code, status=exc.status_code))

    base_of: Callable[[Request], str] = lambda request: f"http://{request.headers['host']}"  # noqa: E731

    @app.get("/status", response_model=StatusOut, responses=_ERRORS)
    def status() -> StatusOut:
        return StatusOut(agent=AGENT_NAME, version=AGENT_VERSION, origin=config.origin, readers=source.names())

    # --- card login ---

    @app.post("/sign", status_code=201, response_model=SignCreated, responses=_ERRORS)
    def sign(body: SignIn, request: Request) -> SignCreated:
        return agent.start_sign(body.nonce, base_of(request))

    @app.get("/sign/{request_id}", response_model=SignState, responses=_ERRORS)
    def sign_state(request_id: str, wait_ms: WaitMs = 0, seen: Seen = -1) -> SignState:
        request = agent.registry.get(request_id, SignRequest)
        if wait_ms:
            agent.registry.wait(request, seen, wait_ms / 1000)
        answer = SignState(state=request.state, version=request.version, error=_error_out(request.error))
        if request.state == State.DONE and request.token is not None:
            answer.token = TokenOut(**request.token)
            agent.registry.drop(request.id)  # the token is handed out once
        elif request.state in FINAL:
            agent.registry.drop(request.id)
        return answer

    @app.delete("/sign/{request_id}", status_code=204, responses=_ERRORS)
    def sign_cancel(request_id: str) -> Response:
        request = agent.registry.get(request_id, SignRequest)
        agent.registry.finish(request, State.CANCELLED, AgentError(Code.E_AGENT_CANCELLED))
        return Response(status_code=204)

    @app.get("/agent.css", include_in_schema=False)
    def css() -> Response:
        return Response(pin_page.CSS, media_type="text/css")

    @app.get("/pin", response_class=HTMLResponse, include_in_schema=False)
    def pin_get(request: Annotated[str, Query(max_length=64)] = "") -> HTMLResponse:
        try:
            sign_request = agent.registry.get(request, SignRequest)
        except AgentError as exc:
            return HTMLResponse(pin_page.ended_page(exc), status_code=404)
        return _pin_view(sign_request)

    def _pin_view(sign_request: SignRequest) -> HTMLResponse:
        if sign_request.state == State.DONE:
            return HTMLResponse(pin_page.done_page())
        if sign_request.state in FINAL:
            return HTMLResponse(pin_page.ended_page(sign_request.error or AgentError(Code.E_AGENT_CANCELLED)))
        return HTMLResponse(
            pin_page.pin_form(
                request_id=sign_request.id,
                form_token=sign_request.form_token,
                origin=config.origin,
                error=sign_request.error,
            )
        )

    @app.post("/pin", response_class=HTMLResponse, include_in_schema=False)
    async def pin_post(request: Request) -> HTMLResponse:
        raw = await request.body()
        media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if len(raw) > FORM_BYTES_MAX or media != "application/x-www-form-urlencoded":
            return HTMLResponse(pin_page.ended_page(AgentError(Code.E_AGENT_MALFORMED)), status_code=422)
        try:
            form = parse_qs(raw.decode("utf-8"), max_num_fields=8)
        except (UnicodeDecodeError, ValueError):
            return HTMLResponse(pin_page.ended_page(AgentError(Code.E_AGENT_MALFORMED)), status_code=422)

        def field(name: str) -> str:
            values = form.get(name, [])
            return values[0] if len(values) == 1 else ""

        try:
            sign_request = agent.registry.get(field("request")[:64], SignRequest)
        except AgentError as exc:
            return HTMLResponse(pin_page.ended_page(exc), status_code=404)
        if not hmac.compare_digest(field("form_token").encode(), sign_request.form_token.encode()):
            return HTMLResponse(pin_page.ended_page(AgentError(Code.E_AGENT_ORIGIN)), status_code=403)
        if field("action") == "cancel":
            agent.registry.finish(sign_request, State.CANCELLED, AgentError(Code.E_AGENT_CANCELLED))
        elif sign_request.state == State.WAITING_PIN:
            await run_in_threadpool(agent.sign_with_pin, sign_request, field("pin"))
        return _pin_view(sign_request)

    # --- online load ---

    @app.post("/load", status_code=201, response_model=Created, responses=_ERRORS)
    def load(body: LoadIn) -> Created:
        return Created(request_id=agent.start_load(body).id)

    @app.get("/load/{request_id}", response_model=LoadState, responses=_ERRORS)
    def load_state(request_id: str, wait_ms: WaitMs = 0, seen: Seen = -1) -> LoadState:
        job = agent.registry.get(request_id, LoadJob)
        if wait_ms:
            agent.registry.wait(job, seen, wait_ms / 1000)
        with agent.registry.changed:
            call = job.call
            return LoadState(
                state=job.state,
                version=job.version,
                call=HostCallOut(seq=call.seq, op=call.op, method=call.method, path=call.path, body=call.body)
                if call is not None and job.state == State.HOST_CALL
                else None,
                report=ReportOut.of(job.report) if job.report is not None else None,
                error=_error_out(job.error),
            )

    @app.post("/load/{request_id}/answer", status_code=204, responses=_ERRORS)
    def load_answer(request_id: str, body: AnswerIn) -> Response:
        agent.answer(agent.registry.get(request_id, LoadJob), body)
        return Response(status_code=204)

    @app.delete("/load/{request_id}", status_code=204, responses=_ERRORS)
    def load_cancel(request_id: str) -> Response:
        job = agent.registry.get(request_id, LoadJob)
        agent.registry.finish(job, State.CANCELLED, AgentError(Code.E_AGENT_CANCELLED))
        return Response(status_code=204)

    # --- the purse relay ---

    @app.post("/apdu", status_code=201, response_model=Created, responses=_ERRORS)
    def relay_open() -> Created:
        return Created(request_id=agent.start_relay().id)

    @app.post("/apdu/{request_id}/transmit", response_model=ApduOut, responses=_ERRORS)
    def relay_transmit(request_id: str, body: ApduIn) -> ApduOut:
        job = agent.registry.get(request_id, RelayJob)
        try:
            reply = job.transmit(bytes.fromhex(body.apdu))
        except AgentError as exc:
            if not exc.retry and exc.code is not Code.E_AGENT_APDU_REFUSED:
                agent.registry.finish(job, State.FAILED, exc)
            raise
        return ApduOut(data=reply.data.hex(), sw=reply.sw)

    @app.delete("/apdu/{request_id}", status_code=204, responses=_ERRORS)
    def relay_close(request_id: str) -> Response:
        job = agent.registry.get(request_id, RelayJob)
        agent.registry.finish(job, State.DONE)
        agent.registry.drop(job.id)
        return Response(status_code=204)

    return app


__all__ = ["AGENT_NAME", "AGENT_VERSION", "PORT_DEFAULT", "Agent", "AgentConfig", "create_app"]
