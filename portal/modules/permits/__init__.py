"""Permits (政务服务, issue 13): online applications with statutory deadlines in working days.

``docs/permits.md``. ``rules`` is the pure state machine and its deadlines (on
``clearing.working_days``), ``service`` the shell over the tables of ``models`` (migration
0013), ``pages`` the citizen's and the clerks' pages, ``demo`` the demo city's applications.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastapi import FastAPI
    from sqlalchemy import Engine

    from portal.api_staff import StaffConsole


def mount(app: FastAPI, engine: Engine, staff_console: StaffConsole | None) -> None:
    """The citizen's permit pages; with a staff console, the clerks' pages (audited in its log) too."""
    from clearing.db import session_factory
    from portal.audit import AuditLog
    from portal.modules.permits.pages import mount_permits
    from portal.modules.permits.service import PermitService

    sessions = session_factory(engine)
    audit = staff_console.audit if staff_console is not None else AuditLog(sessions)
    mount_permits(app, PermitService(sessions, audit), staff=staff_console is not None)


__all__ = ["mount"]
