"""Utility bills (公用事业缴费, issue 13): billers are merchants; a bill is paid from the purse or online.

``docs/utility-bills.md``. ``bills`` holds the rules and the tables' shell (billers, import,
look-up, payment marks, the biller's daily file), ``purse`` the tap session the portal runs as
the biller's terminal, ``online`` the PaymentIntent and its webhook, ``api`` the JSON routes,
``pages`` the citizen's and staff pages, ``demo`` the demo city's billers and bills.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastapi import FastAPI

    from clearing.api import ApiDeps
    from portal.api_staff import StaffConsole
    from portal.topup_service import TopupService
    from portal.web import PageConfig


def mount(
    app: FastAPI, clearing: ApiDeps, topups: TopupService, pages: PageConfig, staff_console: StaffConsole | None
) -> None:
    """The bills' JSON routes, webhook and pages; with a staff console, the daily-file download (audited)."""
    from clearing.db import session_factory
    from portal.audit import AuditLog
    from portal.modules.utility_bills.api import mount_bills_api
    from portal.modules.utility_bills.online import OnlineBills
    from portal.modules.utility_bills.pages import BillsDeps, mount_bills_pages
    from portal.modules.utility_bills.purse import PurseRuns

    sessions = session_factory(clearing.engine)
    assert clearing.ingestor is not None
    runs = PurseRuns(sessions, clearing.keystore, clearing.ingestor, clock=clearing.clock)
    online = OnlineBills(sessions, topups.payments, topups.webhook_secrets, clock=clearing.clock)
    mount_bills_api(app, sessions, runs, online)
    audit = staff_console.audit if staff_console is not None else AuditLog(sessions)
    deps = BillsDeps(sessions, online, topups.payments, audit, pages.reader_agent_url)
    mount_bills_pages(app, deps, staff=staff_console is not None)


__all__ = ["mount"]
