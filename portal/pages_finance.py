"""The finance console: a business day's figures and charts, and the stop map (role ``finance``).

Issue 11, "Operator console and reports"; ``docs/finance-console.md``. Pages under
``/staff/finance`` on the staff console's machinery (``portal.pages_staff``: the staff session,
role checks, console error pages); the charts' data under ``/staff/api/finance`` as JSON, which
``portal/static/finance.js`` draws with ECharts (the CSP allows no inline script, so the page
carries no data island: the script fetches the JSON from the page's ``data-source``). Every
figure comes from ``settlement.reports``; the page shows each chart's numbers as a table too,
so the figures are there without JavaScript and for a screen reader.

Every view is an audit line (``finance_view``, target the day). A day that is not a date, or
outside the years a window can have, is ``422 E_PORTAL_MALFORMED`` — a console page for the
pages, the portal's JSON error for the API — never a 500.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from sqlalchemy.orm import Session

from clearing.business_day import DEFAULT_CLOCK, BusinessDayClock
from fares.loader import EXAMPLE_TARIFF_DIR
from portal.api import PortalRoute
from portal.api_staff import console_of, current_staff
from portal.errors import Code, PortalError
from portal.pages_staff import STATE_KEY as STAFF_PAGES_KEY
from portal.pages_staff import StaffPageRoute, StaffPages
from portal.staff import StaffSession
from portal.web import gettext, locale_of, redirect
from settlement import reports
from settlement.reports import DayReport, Stop

STATE_KEY: Final = "portal_finance_pages"
ACTION: Final = "finance_view"
DAY_MIN: Final = dt.date(2000, 1, 1)
DAY_MAX: Final = dt.date(2099, 12, 31)
_DAY_TEXT: Final = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")  # ASCII digits only (fromisoformat takes more)
STATUS_ORDER: Final = reports.PAYOUT_STATUSES
# The charts' words (legend, axes, statuses), translated here and handed to finance.js in the
# page's data-labels: the script itself carries no language.
CHART_WORDS: Final = {
    "none": "No figures for this day.",
    "hour": "Hour",
    "taps": "Taps",
    "accepted": "Accepted",
    "suspect": "Suspect",
    "rejected": "Rejected",
    "forwarded": "Forwarded",
    "late": "Late",
    "sales": "Sales",
    "fares": "Fares taken",
    "records": "Records",
    "payees": "Payees",
    "lon": "Longitude",
    "lat": "Latitude",
    "route": "Route",
    "stops": "Stops",
    "not_closed": "window not closed",
    "instructed": "instructed to the bank",
    "cleared": "cleared by the bank",
    "returned": "returned by the bank",
    "held": "held",
    "carried": "carried forward",
    "nothing_due": "nothing due",
}


@dataclasses.dataclass(frozen=True)
class FinanceConsole:
    """What the finance pages need: the database, the business-day clock, the feed's stops."""

    sessions: Callable[[], Session]
    days: BusinessDayClock = DEFAULT_CLOCK
    stops: tuple[Stop, ...] = ()
    now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)

    def today(self) -> dt.date:
        return self.days.day_of(self.now())

    def report(self, day: dt.date) -> DayReport:
        with self.sessions() as session:
            return reports.day_report(session, day, self.days)


def _finance(request: Request) -> FinanceConsole:
    finance = getattr(request.app.state, STATE_KEY, None)
    assert isinstance(finance, FinanceConsole), "mount_finance_pages first"
    return finance


def _staff_pages(request: Request) -> StaffPages:
    pages = getattr(request.app.state, STAFF_PAGES_KEY, None)
    assert isinstance(pages, StaffPages), "mount_staff_pages first"
    return pages


def parse_day(text: str | None) -> dt.date:
    """A business day as ``YYYY-MM-DD``; anything else is ``E_PORTAL_MALFORMED`` naming the field."""
    value = (text or "").strip()
    try:
        day = dt.date.fromisoformat(value) if _DAY_TEXT.fullmatch(value) else None
    except ValueError:
        day = None
    if day is None or not DAY_MIN <= day <= DAY_MAX:
        raise PortalError(Code.E_PORTAL_MALFORMED, "day: a date as YYYY-MM-DD, for example 2026-12-03")
    return day


# --- chart data (pure) -----------------------------------------------------------------------


def ordered_route_stops(report: DayReport, stops: Sequence[Stop]) -> dict[str, list[str]]:
    """Each route's stops in the order of the feed's stops file (where the feed can place them)."""
    position = {s.stop_id: i for i, s in enumerate(stops)}
    return {
        route: sorted((s for s in served if s in position), key=position.__getitem__)
        for route, served in report.route_stops.items()
    }


def chart_data(report: DayReport, stops: Sequence[Stop]) -> dict[str, Any]:
    """The JSON the charts draw: integer fen and counts, straight from the report."""
    by_stop = {f.stop_id: f for f in report.stops}
    placed = {s.stop_id: s for s in stops}
    statuses = {status: 0 for status in STATUS_ORDER}
    for p in report.payouts:
        statuses[p.status] += 1

    def payee(p: reports.PayeeFigures) -> dict[str, Any]:
        return {"payee_id": p.payee_id, "name": p.name, "count": p.count, "gross_fen": p.gross_fen,
                "refunds_fen": p.refunds_fen, "sales_fen": p.sales_fen, "late_count": p.late_count,
                "fee_fen": p.fee_fen, "net_fen": p.net_fen}  # fmt: skip

    return {
        "business_day": report.business_day.isoformat(),
        "state": report.state,
        "hours": {
            "labels": [f"{h.hour:02d}" for h in report.hours],
            "accepted": [h.accepted for h in report.hours],
            "suspect": [h.suspect for h in report.hours],
            "rejected": [h.rejected for h in report.hours],
            "forwarded": [h.forwarded for h in report.hours],
            "posted_fen": [h.posted_fen for h in report.hours],
        },
        "operators": [payee(p) for p in report.operators],
        "merchants": [payee(p) for p in report.merchants],
        "routes": [dataclasses.asdict(r) for r in report.routes],
        "issues": [dataclasses.asdict(i) for i in report.issues],
        "payouts": [
            {
                "payee_id": p.payee_id,
                "name": p.name,
                "status": p.status,
                "payout_fen": p.payout_fen,
                "net_fen": p.net_fen,
                "carry_out_fen": p.carry_out_fen,
            }
            for p in report.payouts
        ],
        "payout_statuses": [{"status": s, "payees": n} for s, n in statuses.items() if n],
        "map": {
            "stops": [
                {
                    "stop_id": s.stop_id,
                    "name": s.name,
                    "lon": float(s.lon),
                    "lat": float(s.lat),
                    "taps": by_stop[s.stop_id].taps if s.stop_id in by_stop else 0,
                    "posted_fen": by_stop[s.stop_id].posted_fen if s.stop_id in by_stop else 0,
                }
                for s in stops
            ],
            "routes": [
                {
                    "route_id": route,
                    "stops": served,
                    "path": [[float(placed[s].lon), float(placed[s].lat)] for s in served],
                }
                for route, served in ordered_route_stops(report, stops).items()
            ],
            "unplaced": sorted(f.stop_id for f in report.stops if f.stop_id not in placed),
        },
    }


# --- routes ----------------------------------------------------------------------------------


def chart_words(request: Request) -> dict[str, str]:
    locale = locale_of(request)
    return {key: gettext(locale, text) for key, text in CHART_WORDS.items()}


def _view(request: Request, current: StaffSession, what: str, day: dt.date | None) -> None:
    console_of(request).audit.record_now(
        actor=current.actor, action=ACTION, target=f"day:{day.isoformat()}" if day else "", detail=what
    )


def finance_pages_router() -> APIRouter:
    router = APIRouter(prefix="/staff/finance", route_class=StaffPageRoute, include_in_schema=False)

    def begin(request: Request) -> tuple[StaffPages, FinanceConsole, StaffSession]:
        pages = _staff_pages(request)
        return pages, _finance(request), pages.require(request, ACTION)

    @router.get("", response_class=HTMLResponse)
    def day_picker(request: Request, day: str | None = None) -> Response:
        pages, finance, current = begin(request)
        if day is not None:
            return redirect(f"/staff/finance/days/{parse_day(day).isoformat()}")
        with finance.sessions() as session:
            days = reports.recent_days(session, finance.today())
        _view(request, current, "day picker", None)
        return pages.page(request, "staff/finance_days.html", {"days": days, "today": finance.today()}, current)

    @router.get("/days/{day}", response_class=HTMLResponse)
    def day_page(day: str, request: Request) -> HTMLResponse:
        pages, finance, current = begin(request)
        business_day = parse_day(day)
        report = finance.report(business_day)
        _view(request, current, "day page", business_day)
        context = {"r": report, "source": f"/staff/api/finance/days/{business_day.isoformat()}",
                   "labels": chart_words(request)}  # fmt: skip
        return pages.page(request, "staff/finance_day.html", context, current)

    @router.get("/days/{day}/map", response_class=HTMLResponse)
    def stop_map(day: str, request: Request) -> HTMLResponse:
        pages, finance, current = begin(request)
        business_day = parse_day(day)
        report = finance.report(business_day)
        data = chart_data(report, finance.stops)["map"]
        _view(request, current, "stop map", business_day)
        context = {"r": report, "map": data, "source": f"/staff/api/finance/days/{business_day.isoformat()}",
                   "labels": chart_words(request)}  # fmt: skip
        return pages.page(request, "staff/finance_map.html", context, current)

    return router


def finance_api_router() -> APIRouter:
    router = APIRouter(prefix="/staff/api/finance", route_class=PortalRoute, include_in_schema=False)

    @router.get("/days/{day}")
    def day_data(day: str, request: Request) -> JSONResponse:
        console = console_of(request)
        current = current_staff(request, request.cookies.get("yk_staff"))
        console.staff.require(current, ACTION)
        finance = _finance(request)
        business_day = parse_day(day)
        data = chart_data(finance.report(business_day), finance.stops)
        _view(request, current, "chart data", business_day)
        return JSONResponse(data, headers={"Cache-Control": "no-store"})

    return router


def mount_finance_pages(
    app: FastAPI,
    sessions: Callable[[], Session],
    days: BusinessDayClock = DEFAULT_CLOCK,
    *,
    stops_dir: Path | None = None,
) -> None:
    """The finance pages and their JSON (after ``mount_staff_pages`` and ``mount_staff``).

    ``stops_dir``: the tariff feed whose GTFS stops the map draws (default the example feed).
    """
    stops = tuple(reports.load_stops(stops_dir or EXAMPLE_TARIFF_DIR))
    setattr(app.state, STATE_KEY, FinanceConsole(sessions=sessions, days=days, stops=stops))
    app.include_router(finance_pages_router())
    app.include_router(finance_api_router())


__all__ = [
    "FinanceConsole",
    "chart_data",
    "finance_api_router",
    "finance_pages_router",
    "mount_finance_pages",
    "ordered_route_stops",
    "parse_day",
]
