"""The composition root of the HTTP server: one FastAPI app, each package's routers mounted on it.

This is the one place that decides what the server carries and builds what the routers need
from the settings (ARCHITECTURE.md, "Interfaces"): today the terminal and online-load API of
``clearing`` (``/v1``); the portal (``/``, ``/api``), interop (``/interop/v1``) and payment
webhooks join here as their issues land. Each API answers errors in its own shape: the
clearing routes carry their handler on the route class (``clearing.api.ContractRoute``), so
nothing mounted beside them inherits the terminal contract's error body. What no API owns
(an unknown path outside every prefix, a fault in the server itself) gets the plain
``{code, message}`` shape below, never an HTML or text 500.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from clearing import api as clearing_api
from clearing.contract.codes import Code
from yikatong.settings import Settings

log = logging.getLogger(__name__)


def _install_fallback_errors(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: Code.E_NOT_FOUND, 405: Code.E_METHOD_NOT_ALLOWED}.get(exc.status_code, Code.E_MALFORMED)
        return JSONResponse({"code": code.value, "message": str(exc.detail)}, status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _internal(_: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected fault outside every API", exc_info=exc)
        return JSONResponse({"code": Code.E_INTERNAL.value, "message": "unexpected fault"}, status_code=500)


def assemble(clearing: clearing_api.ApiDeps) -> FastAPI:
    """The application from ready-made parts (tests pass their own)."""
    app = FastAPI(
        title="Yikatong",
        version="1",
        description="Xianyang city card system: terminal contract (spec/terminal-api.md) and online loads.",
    )
    _install_fallback_errors(app)
    clearing_api.mount(app, clearing)
    clearing_api.install_openapi(app)
    return app


def create_app(settings: Settings) -> FastAPI:
    """The server's application for these settings (``yikatong serve``, ``yikatong demo --serve``)."""
    return assemble(clearing_api.ApiDeps.from_settings(settings))


__all__ = ["assemble", "create_app"]
