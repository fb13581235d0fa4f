"""The utility bills' JSON routes and webhook (``docs/utility-bills.md``, "Routes").

| route | session | answer |
| --- | --- | --- |
| `GET /api/bills?biller=&account=` | yes | the account's bills (masked) |
| `GET /api/bills/{bill_id}` | yes | the bill |
| `POST /api/bills/{bill_id}/purse` | + `X-CSRF-Token` | `201` a purse run: the first card command |
| `POST /api/bills/purse/{run_id}` (a card answer) | + CSRF | the next command, or the end |
| `POST /api/bills/{bill_id}/online` | + CSRF | `201` the payment (with the intent's client secret) |
| `POST /webhooks/utility-bills` | signature | `{"status": "applied" \\| "duplicate" \\| "ignored"}` |

Refusals are ``{"code", "message"}`` with the module's codes (``BillError``) or the portal's.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, FastAPI, Header, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session, sessionmaker

from clearing.api import AnsweringRoute
from portal.api import ErrorOut, portal_error
from portal.api_auth import CsrfCitizen, CurrentCitizen
from portal.modules.utility_bills import bills
from portal.modules.utility_bills.errors import BillError
from portal.modules.utility_bills.online import OnlineBills
from portal.modules.utility_bills.purse import PurseRuns

_ERRORS: dict[int | str, dict[str, Any]] = {s: {"model": ErrorOut} for s in (400, 401, 403, 404, 409, 413, 422, 503)}
BillId = Annotated[int, Path(ge=1, le=2**62)]
RunId = Annotated[str, Path(pattern=r"^pr_[0-9a-f]{32}$")]


def bill_error(exc: Exception) -> Response:
    if isinstance(exc, BillError):
        return JSONResponse({"code": exc.code.value, "message": exc.message}, status_code=exc.status)
    return portal_error(exc)


class BillRoute(AnsweringRoute):
    def answer(self, request: Request, exc: Exception) -> Response:
        return bill_error(exc)


class CardAnswer(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seq: int = Field(ge=1, le=10_000)
    sw: int | None = Field(None, ge=0, le=0xFFFF)
    data: str = Field("", max_length=512, pattern=r"^([0-9a-fA-F]{2})*$")
    error: Literal["card_removed", "reader_failed", "no_card", "agent"] | None = None


def bill_json(view: bills.BillView) -> dict[str, Any]:
    return {
        "bill_id": view.id, "biller": {"id": view.biller_id, "name": view.biller_name, "kind": view.biller_kind},
        "account": view.account_masked, "holder": view.holder_masked, "period": view.period,
        "amount_fen": view.amount_fen, "due_date": view.due_date.isoformat(), "state": view.state,
        "paid_via": view.paid_via, "paid_at": view.paid_at.isoformat() if view.paid_at else None,
        "receipt_no": view.receipt_no,
    }  # fmt: skip


def bills_router(sessions: sessionmaker[Session], runs: PurseRuns, online: OnlineBills | None) -> APIRouter:
    router = APIRouter(route_class=BillRoute, tags=["portal utility bills"])

    @router.get("/api/bills", responses=_ERRORS)
    def lookup(
        current: CurrentCitizen,
        biller: Annotated[str, Query(max_length=64)],
        account: Annotated[str, Query(max_length=64)],
    ) -> Response:
        with sessions() as session:
            views = bills.lookup(session, biller, account)
        return JSONResponse({"bills": [bill_json(v) for v in views]})

    @router.get("/api/bills/{bill_id}", responses=_ERRORS)
    def bill(bill_id: BillId, current: CurrentCitizen) -> Response:
        with sessions() as session:
            row, biller = bills.bill_of(session, bill_id)
            return JSONResponse(bill_json(bills.bill_view(row, biller)))

    @router.post("/api/bills/{bill_id}/purse", status_code=201, responses=_ERRORS)
    async def purse_start(bill_id: BillId, current: CsrfCitizen) -> Response:
        view = await run_in_threadpool(runs.start, current.citizen_id, bill_id)
        return JSONResponse(view, status_code=201)

    @router.post("/api/bills/purse/{run_id}", responses=_ERRORS)
    async def purse_answer(run_id: RunId, body: CardAnswer, current: CsrfCitizen) -> Response:
        data = bytes.fromhex(body.data)
        view = await run_in_threadpool(
            runs.reply, current.citizen_id, run_id, body.seq, sw=body.sw, data=data, error=body.error
        )
        return JSONResponse(view)

    if online is not None:
        service = online

        @router.post("/api/bills/{bill_id}/online", status_code=201, responses=_ERRORS)
        async def online_start(bill_id: BillId, current: CsrfCitizen) -> Response:
            started = await run_in_threadpool(service.start, current.citizen_id, bill_id)
            return JSONResponse(
                {"payment_id": started.payment_id, "bill_id": started.bill_id, "amount_fen": started.amount_fen,
                 "state": started.state, "payment_intent_id": started.intent_id,
                 "client_secret": started.client_secret},
                status_code=201,
            )  # fmt: skip

        @router.post("/webhooks/utility-bills", responses=_ERRORS)
        async def webhook(
            request: Request, stripe_signature: Annotated[str | None, Header(alias="Stripe-Signature")] = None
        ) -> Response:
            body = await request.body()
            status = await run_in_threadpool(service.apply_webhook, body, stripe_signature)
            return JSONResponse({"status": status})

    return router


def mount_bills_api(app: FastAPI, sessions: sessionmaker[Session], runs: PurseRuns, online: OnlineBills | None) -> None:
    app.include_router(bills_router(sessions, runs, online))


__all__ = ["BillRoute", "CardAnswer", "bill_error", "bill_json", "bills_router", "mount_bills_api"]
