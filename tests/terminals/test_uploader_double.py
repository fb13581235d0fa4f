"""TEST DOUBLE of the clearing centre's terminal API (``spec/terminal-api.md``), no tests here.

``ClearingContractDouble`` is NOT the clearing service: it implements only the wire
contract from ``clearing.contract`` (idempotent batches, 409 on a conflicting replay,
401/403, 422, duplicate records rejected, the denylist delta), over real HTTP on a local
port, so the uploader can be tested across processes and over a deliberately flaky link.
It counts how many times each record was *posted*, which is what "exactly once" means.
``tests/e2e/test_terminal_upload.py`` runs the uploader against the real clearing app.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import msgspec

from clearing.contract import BatchAnswer, DenylistDelta, DenylistEntry, Verdict, decode_batch, encode

FLAKES = ("drop_before", "http_500", "http_503", "drop_after", "slow_after")


@dataclass
class Flakiness:
    """Per request: with ``rate``, one of ``modes`` (the ``*_after`` ones process the batch, then lose the answer)."""

    rate: float = 0.0
    modes: tuple[str, ...] = FLAKES
    seed: int = 0
    slow_s: float = 0.5
    rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def draw(self) -> str | None:
        if self.rng.random() < self.rate:
            return self.rng.choice(self.modes)
        return None


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # clients that vanish mid-request (killed validators, timeouts) are the point of the tests


class ClearingContractDouble:
    """A contract-only stand-in for the clearing centre (see the module docstring)."""

    def __init__(self, tokens: dict[str, str], flakiness: Flakiness | None = None) -> None:
        self.tokens = tokens  # token -> terminal id
        self.flakiness = flakiness or Flakiness()
        self.batches: dict[tuple[str, int], tuple[str, bytes]] = {}
        self.posted: Counter[tuple[str, int]] = Counter()
        self.records: dict[tuple[str, int], dict[str, object]] = {}
        self.requests = 0
        self.flaked: Counter[str] = Counter()
        self.denylist_versions: list[tuple[int, list[DenylistEntry], list[DenylistEntry]]] = []
        self._lock = threading.Lock()
        self._server = _QuietServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="clearing-double", daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> ClearingContractDouble:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def add_denylist_version(self, added: list[DenylistEntry], removed: list[DenylistEntry] | None = None) -> int:
        version = len(self.denylist_versions) + 1
        self.denylist_versions.append((version, added, removed or []))
        return version

    # --- the contract ------------------------------------------------------------------------
    def _post_batch(self, terminal_id: str, body: bytes) -> tuple[int, bytes]:
        try:
            batch = decode_batch(body)
        except msgspec.DecodeError as exc:
            return 422, json.dumps({"code": "E_MALFORMED", "message": str(exc), "errors": []}).encode()
        if any(r.terminal_id != terminal_id for r in batch.records):
            return 422, json.dumps({"code": "E_MALFORMED", "message": "record of another terminal"}).encode()
        digest = hashlib.sha256(body).hexdigest()
        with self._lock:
            known = self.batches.get((terminal_id, batch.batch_seq))
            if known is not None:
                if known[0] != digest:
                    return 409, json.dumps({"code": "E_BATCH_CONFLICT", "message": "other content"}).encode()
                return 200, known[1]
            verdicts = []
            for r in batch.records:
                key = (terminal_id, r.terminal_seq)
                if key in self.records:
                    verdicts.append(Verdict(r.terminal_seq, "rejected", "E_DUPLICATE_TERMINAL_SEQ", "seen"))
                    continue
                self.posted[key] += 1
                self.records[key] = msgspec.to_builtins(r)
                forwarded = r.issuer_id != "01007120ffffffff"
                verdicts.append(
                    Verdict(
                        r.terminal_seq,
                        "forwarded" if forwarded else "accepted",
                        "I_FORWARDED_INTEROP" if forwarded else "OK",
                        "",
                    )
                )
            received = dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
            answer = encode(BatchAnswer(batch.batch_seq, received, verdicts))
            self.batches[(terminal_id, batch.batch_seq)] = (digest, answer)
        return 200, answer

    def _get_denylist(self, since: int) -> bytes:
        with self._lock:
            versions = list(self.denylist_versions)
        if not versions:
            return encode(DenylistDelta(version=0, full=since > 0, added=[], removed=[]))
        latest = versions[-1][0]
        if since <= 0 or since > latest:
            current: dict[tuple[str, str], DenylistEntry] = {}
            for _, added, removed in versions:
                current.update({(e.issuer_id, e.card_asn): e for e in added})
                for e in removed:
                    current.pop((e.issuer_id, e.card_asn), None)
            return encode(DenylistDelta(version=latest, full=True, added=list(current.values()), removed=[]))
        added_all, removed_all = [], []
        for version, added, removed in versions:
            if version > since:
                added_all += added
                removed_all += removed
        return encode(DenylistDelta(version=latest, full=False, added=added_all, removed=removed_all))

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        double = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _auth(self, terminal_id: str) -> int | None:
                header = self.headers.get("Authorization", "")
                token = header.removeprefix("Bearer ") if header.startswith("Bearer ") else None
                if token is None or token not in double.tokens:
                    return 401
                if double.tokens[token] != terminal_id:
                    return 403
                return None

            def _send(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _route(self) -> tuple[str, str] | None:
                parts = urlparse(self.path).path.strip("/").split("/")
                if len(parts) == 4 and parts[:2] == ["v1", "terminals"]:
                    return parts[2], parts[3]
                return None

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with double._lock:
                    double.requests += 1
                    flake = double.flakiness.draw()
                if flake:
                    double.flaked[flake] += 1
                if flake == "drop_before":
                    self.close_connection = True
                    return
                if flake in ("http_500", "http_503"):
                    self._send(int(flake[-3:]), b'{"code": "E_INTERNAL", "message": "flaky"}')
                    return
                route = self._route()
                if route is None or route[1] != "batches":
                    self._send(404, b'{"code": "E_NOT_FOUND", "message": ""}')
                    return
                denied = self._auth(route[0])
                if denied:
                    code = "E_UNAUTHORIZED" if denied == 401 else "E_FORBIDDEN"
                    self._send(denied, json.dumps({"code": code, "message": "token"}).encode())
                    return
                status, answer = double._post_batch(route[0], body)
                if flake == "drop_after":
                    self.close_connection = True
                    return
                if flake == "slow_after":
                    time.sleep(double.flakiness.slow_s)
                try:
                    self._send(status, answer)
                except OSError:
                    self.close_connection = True

            def do_GET(self) -> None:
                route = self._route()
                if route is None or route[1] != "denylist":
                    self._send(404, b'{"code": "E_NOT_FOUND", "message": ""}')
                    return
                denied = self._auth(route[0])
                if denied:
                    self._send(denied, b'{"code": "E_UNAUTHORIZED", "message": "token"}')
                    return
                since = int(parse_qs(urlparse(self.path).query).get("since", ["0"])[0])
                self._send(200, double._get_denylist(since))

        return Handler
