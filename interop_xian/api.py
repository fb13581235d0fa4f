"""``POST /interop/v1/batches``: the receiving end of the channel, mounted by the composition root.

The route reads the raw body (at most ``body_bytes_max``; a larger one is refused unread) and
hands it with the key id and signature headers to ``interop_xian.inbox.Receiver``, which
answers every case with a status and a body of its own: a signed acknowledgement (200), or
``{code, message}`` (``expected_sequence`` too on a gap) with a 4xx, or a 503 when the judge
could not run. Failures of the route itself get the same ``{code, message}`` shape
(``InteropRoute``), so nothing here answers in another API's shape, and no input gets a 500.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, FastAPI, Request, Response
from starlette.concurrency import run_in_threadpool

from clearing.api import AnsweringRoute
from interop_xian import batch as wire
from interop_xian.errors import InteropCode, InteropError
from interop_xian.exchange import InteropNode
from interop_xian.inbox import Answer, error_body

log = logging.getLogger("interop_xian.api")
MEDIA_TYPE = "application/json"


class InteropRoute(AnsweringRoute):
    """Routes of the interop API answer every failure as ``{code, message}``."""

    def answer(self, request: Request, exc: Exception) -> Response:
        if isinstance(exc, InteropError):
            return Response(error_body(exc.code, exc.message), status_code=exc.status, media_type=MEDIA_TYPE)
        log.error("interop: unexpected fault", exc_info=exc)
        code = InteropCode.E_INTEROP_JUDGE_FAILED
        return Response(error_body(code, "unexpected fault; nothing was stored, resend"), 503, media_type=MEDIA_TYPE)


router = APIRouter(prefix="/interop/v1", route_class=InteropRoute, tags=["interop"])

_BATCH_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "a batch in the canonical encoding (docs/interop.md, 'Batch format')",
        "content": {MEDIA_TYPE: {"schema": {"type": "object"}}},
    },
    "parameters": [
        {"name": wire.KEY_ID_HEADER, "in": "header", "required": True, "schema": {"type": "string"}},
        {"name": wire.SIGNATURE_HEADER, "in": "header", "required": True, "schema": {"type": "string"}},
    ],
}


def _node(request: Request) -> InteropNode:
    node = request.app.state.interop
    assert isinstance(node, InteropNode)
    return node


async def _read_bounded(request: Request, limit: int) -> tuple[bytes, Response | None]:
    """The body, or the refusal of one larger than ``limit`` (not read past the limit)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        oversize, body = True, b""
    else:
        chunks = bytearray()
        oversize = False
        async for chunk in request.stream():
            chunks += chunk
            if len(chunks) > limit:
                oversize = True
                break
        body = bytes(chunks)
    if not oversize:
        return body, None
    exc = InteropError(InteropCode.E_INTEROP_TOO_LARGE, f"a body is at most {limit} bytes; nothing was read")
    log.warning("interop: delivery refused: %s", exc)
    return b"", Response(error_body(exc.code, exc.message), status_code=exc.status, media_type=MEDIA_TYPE)


async def _answer(
    request: Request, node: InteropNode, receive: Callable[[bytes, str | None, str | None], Answer]
) -> Response:
    """Read the bounded body and hand it with the signature headers to ``receive`` (in a worker thread)."""
    body, refused = await _read_bounded(request, node.config.body_bytes_max)
    if refused is not None:
        return refused
    answer = await run_in_threadpool(
        receive, body, request.headers.get(wire.KEY_ID_HEADER), request.headers.get(wire.SIGNATURE_HEADER)
    )
    return Response(answer.body, status_code=answer.status, headers=dict(answer.headers), media_type=MEDIA_TYPE)


@router.post(
    "/batches",
    openapi_extra=_BATCH_DOC,
    responses={
        200: {"description": "the signed acknowledgement: one verdict per item"},
        401: {"description": "unsigned, unknown or retired key, or a signature that does not verify"},
        403: {"description": "a batch from another city than its key's, or not addressed to this city"},
        409: {"description": "a sequence gap (expected_sequence) or a conflicting replay"},
        413: {"description": "too large"},
        422: {"description": "not a batch in the canonical encoding"},
        503: {"description": "the batch could not be judged now (nothing stored): resend it"},
    },
)
async def post_batch(request: Request) -> Response:
    """Receive one of the peer's batches (``interop_xian.inbox``)."""
    node = _node(request)
    return await _answer(request, node, node.receiver.receive)


_MESSAGE_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "a message in the canonical encoding (docs/interop.md, 'Messages')",
        "content": {MEDIA_TYPE: {"schema": {"type": "object"}}},
    },
    "parameters": _BATCH_DOC["parameters"],
}


@router.post(
    "/messages",
    openapi_extra=_MESSAGE_DOC,
    responses={
        200: {"description": "the signed reply: the peer's instruction for the window, or its dispute's state"},
        401: {"description": "unsigned, unknown or retired key, or a signature that does not verify"},
        403: {"description": "a message from another city than its key's, or not addressed to this city"},
        404: {"description": "a move of a dispute this side does not have"},
        409: {"description": "refused by the window or dispute rules, or a replayed id with other content"},
        413: {"description": "too large"},
        422: {"description": "not a message in the canonical encoding"},
        503: {"description": "could not be handled now (nothing stored): resend it"},
    },
)
async def post_message(request: Request) -> Response:
    """Receive one of the peer's messages: a window digest or a dispute move (``interop_xian.messages``)."""
    node = _node(request)
    return await _answer(request, node, node.receiver.receive_message)


def mount(app: FastAPI, node: InteropNode) -> None:
    """Mount ``/interop/v1`` on the application, serving ``node``."""
    app.state.interop = node
    app.include_router(router)


__all__ = ["InteropRoute", "mount", "post_batch", "post_message", "router"]
