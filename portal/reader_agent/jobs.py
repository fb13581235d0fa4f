"""The agent's requests: card-login signatures waiting for a PIN, and loads relayed through the browser.

Both are held in the agent's memory only, keyed by a 128-bit random id that only the portal
page (which asked) and the agent's own PIN page (whose URL carries it) know; each lives at most
``ttl_s`` and there are at most ``open_max`` at once (the oldest is dropped first). Nothing is
written to disk: a restarted agent has no requests, and the portal page starts again.

**A sign request** (``SignRequest``): the portal page posts the nonce; the citizen enters the
PIN on the agent's page (``/pin?request=<id>``), which runs the card; the portal page polls for
the token. A wrong PIN keeps the request open (the page says how many tries are left), a
blocked PIN ends it. The token is handed out once.

**A load job** (``LoadJob``): ``terminals.loading.load_card`` runs on the agent's thread with
a ``RelayHost`` as its host. Each host call (``pending``, ``authorize``, ``complete``,
``resolve``) becomes a *call* the portal page fetches (``GET /load/<id>``), sends to the
portal's ``/api/loads`` with the citizen's session cookie and CSRF token, and answers back
(``POST /load/<id>/answer``). The agent never holds portal credentials, and the portal never
talks to the card: each does what only it can (the card's MACs are checked by the host's keys,
the host's MAC2 by the card). A call not answered within ``host_timeout_s`` fails like an
unreachable host: ``load_card`` then reports the load refused (before CREDIT: nothing moved)
or in doubt (after CREDIT: the next presentation settles it from the card).
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final, TypeVar

import msgspec

from clearing.contract import (
    CardLoads,
    LoadAuthorizeRequest,
    LoadAuthorizeResponse,
    LoadCompleteRequest,
    LoadCompleteResponse,
    LoadResolveRequest,
    LoadResolveResponse,
)
from portal.reader_agent.errors import AgentError, Code
from terminals.loading import LoadRefused, LoadReport

T = TypeVar("T")

REQUEST_ID_BYTES: Final = 16
TTL_S_DEFAULT: Final = 300.0  # a card-login challenge lives 5 minutes: a PIN request need not outlive it
OPEN_MAX_DEFAULT: Final = 16
HOST_TIMEOUT_S_DEFAULT: Final = 30.0
WAIT_S_MAX: Final = 10.0  # the longest a poll waits for news
LOAD_ID_CHARS_MAX: Final = 40


def new_id() -> str:
    return secrets.token_urlsafe(REQUEST_ID_BYTES)


class State(StrEnum):
    WAITING_PIN = "waiting_pin"  # sign: the PIN page has not been answered yet (or asked again)
    WORKING = "working"  # the card is being worked
    HOST_CALL = "host_call"  # load: a call waits for the portal page to relay it
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINAL: Final = frozenset({State.DONE, State.FAILED, State.CANCELLED})


@dataclass
class Request:
    """What a sign request and a load job share: id, state, the last error, a change counter."""

    id: str
    created_s: float
    state: State = State.WORKING
    error: AgentError | None = None  # failed: why; waiting_pin: why the last try did not work
    version: int = 0  # bumped at every change, so a poll can wait for the next one


@dataclass
class SignRequest(Request):
    nonce: str = ""
    form_token: str = field(default_factory=new_id)  # the PIN page's form carries it back
    token: dict[str, str] | None = None


@dataclass(frozen=True, slots=True)
class HostCall:
    seq: int
    op: str  # pending | authorize | complete | resolve
    method: str
    path: str  # the portal's route, under /api/loads
    body: dict[str, Any] | None


@dataclass
class LoadJob(Request):
    terminal_id: str = ""
    call: HostCall | None = None
    answer: tuple[int, int, Any] | None = None  # (seq, HTTP status, JSON body)
    report: LoadReport | None = None
    seq: int = 0


class Registry:
    """Requests by id, bounded and expiring; one condition variable wakes every waiting poll."""

    def __init__(
        self,
        *,
        ttl_s: float = TTL_S_DEFAULT,
        open_max: int = OPEN_MAX_DEFAULT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        assert ttl_s > 0 and open_max > 0
        self.ttl_s = ttl_s
        self.open_max = open_max
        self.clock = clock
        self._items: OrderedDict[str, Request] = OrderedDict()
        self.changed = threading.Condition()

    def add(self, request: Request) -> None:
        with self.changed:
            self._expire()
            self._items[request.id] = request
            while len(self._items) > self.open_max:
                _, dropped = self._items.popitem(last=False)
                self._finish(dropped, State.CANCELLED, AgentError(Code.E_AGENT_CANCELLED))

    def _expire(self) -> None:
        now = self.clock()
        for key in [k for k, r in self._items.items() if now - r.created_s > self.ttl_s]:
            request = self._items.pop(key)
            self._finish(request, State.FAILED, AgentError(Code.E_AGENT_TIMEOUT))

    def get(self, request_id: str, kind: type[T]) -> T:
        with self.changed:
            self._expire()
            request = self._items.get(request_id)
            if not isinstance(request, kind):
                raise AgentError(Code.E_AGENT_REQUEST_UNKNOWN)
            return request

    def drop(self, request_id: str) -> None:
        with self.changed:
            self._items.pop(request_id, None)

    def open_of(self, kind: type[Request]) -> list[Request]:
        with self.changed:
            self._expire()
            return [r for r in self._items.values() if isinstance(r, kind) and r.state not in FINAL]

    def update(self, request: Request, **changes: Any) -> None:
        with self.changed:
            for name, value in changes.items():
                setattr(request, name, value)
            request.version += 1
            self.changed.notify_all()

    def _finish(self, request: Request, state: State, error: AgentError | None) -> None:
        if request.state in FINAL:
            return
        request.state = state
        request.error = error
        if isinstance(request, LoadJob):
            request.call = None
        release = getattr(request, "release", None)  # a purse relay gives its reader back (apdu_relay)
        if callable(release):
            release()
        request.version += 1
        self.changed.notify_all()

    def finish(self, request: Request, state: State, error: AgentError | None = None) -> None:
        with self.changed:
            self._finish(request, state, error)

    def wait(self, request: Request, seen_version: int, wait_s: float) -> None:
        """Block until ``request`` changes past ``seen_version``, at most ``wait_s`` (capped)."""
        deadline = time.monotonic() + min(max(wait_s, 0.0), WAIT_S_MAX)
        with self.changed:
            while request.version <= seen_version and request.state not in FINAL:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self.changed.wait(left)


# --- the host of a load, relayed by the portal page ----------------------------------------------


class RelayHost:
    """``terminals.loading.LoadHost`` whose calls the portal page carries to ``/api/loads`` and back."""

    def __init__(self, registry: Registry, job: LoadJob, *, timeout_s: float = HOST_TIMEOUT_S_DEFAULT) -> None:
        self.registry = registry
        self.job = job
        self.timeout_s = timeout_s

    def _call(self, op: str, path: str, kind: type[T], body: msgspec.Struct | None = None) -> T:
        job, registry = self.job, self.registry
        with registry.changed:
            if job.state in FINAL:
                raise LoadRefused(Code.E_AGENT_CANCELLED.value, "the load was stopped")
            job.seq += 1
            seq = job.seq
            method = "GET" if body is None else "POST"
            payload = msgspec.to_builtins(body) if body is not None else None
            job.call = HostCall(seq, op, method, path, payload)
            job.answer = None
            job.state = State.HOST_CALL
            job.version += 1
            registry.changed.notify_all()
            deadline = time.monotonic() + self.timeout_s
            while (job.answer is None or job.answer[0] != seq) and job.state not in FINAL:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                registry.changed.wait(left)
            answer = job.answer if job.answer is not None and job.answer[0] == seq else None
            if job.state not in FINAL:
                job.call = None
                job.state = State.WORKING
                job.version += 1
                registry.changed.notify_all()
        if answer is None:
            raise LoadRefused(Code.E_AGENT_TIMEOUT.value, f"the portal page did not relay {op} in time")
        _, status, doc = answer
        if status != 200:
            code = doc.get("code") if isinstance(doc, dict) else None
            message = doc.get("message") if isinstance(doc, dict) else None
            if not isinstance(code, str) or not isinstance(message, str):
                code, message = Code.E_AGENT_PORTAL_ANSWER.value, f"HTTP {status} from the portal"
            raise LoadRefused(code[:64], message[:500], status)
        try:
            return msgspec.convert(doc, type=kind)
        except msgspec.ValidationError as exc:
            raise LoadRefused(
                Code.E_AGENT_PORTAL_ANSWER.value, f"the portal's answer to {op} does not read: {exc}"
            ) from None

    def pending(self, issuer_id: str, card_asn: str) -> CardLoads:
        return self._call("pending", f"/api/loads/cards/{issuer_id}/{card_asn}", CardLoads)

    def authorize(self, load_id: str, req: LoadAuthorizeRequest) -> LoadAuthorizeResponse:
        return self._call("authorize", f"/api/loads/{_load_path(load_id)}/authorize", LoadAuthorizeResponse, req)

    def complete(self, load_id: str, req: LoadCompleteRequest) -> LoadCompleteResponse:
        return self._call("complete", f"/api/loads/{_load_path(load_id)}/complete", LoadCompleteResponse, req)

    def resolve(self, load_id: str, req: LoadResolveRequest) -> LoadResolveResponse:
        return self._call("resolve", f"/api/loads/{_load_path(load_id)}/resolve", LoadResolveResponse, req)


def _load_path(load_id: str) -> str:
    """A load id from the portal's own answer, checked before it goes into a path the page will fetch."""
    shaped = all(c.isascii() and (c.isalnum() or c in "_.:-") for c in load_id)
    if not 0 < len(load_id) <= LOAD_ID_CHARS_MAX or not shaped:
        raise LoadRefused(Code.E_AGENT_PORTAL_ANSWER.value, "the portal named a load id of another shape")
    return load_id


__all__ = [
    "FINAL",
    "HostCall",
    "LoadJob",
    "Registry",
    "RelayHost",
    "Request",
    "SignRequest",
    "State",
    "new_id",
]
