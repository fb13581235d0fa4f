"""ASGI app assembly: the one place that decides which routers the server carries.

Today the terminal and online-load API of ``clearing``; the portal, interop and payment
webhooks join here as their issues land (ARCHITECTURE.md, "Interfaces").
"""

from __future__ import annotations

from fastapi import FastAPI

from clearing.api import create_app as create_clearing_app
from yikatong.settings import Settings


def create_app(settings: Settings) -> FastAPI:
    return create_clearing_app(settings)
