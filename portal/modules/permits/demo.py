"""The demo city's permit applications: the demo citizen's, in every stage, for ``make run``.

Fixed dates in 2026 (the calendar's covered years), fixed ids, so a rerun on the same database
adds nothing. The clerk's steps go through ``PermitService.act`` as ``seed:demo`` and so leave
audit lines that say they were seeded.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Final

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from portal.audit import AuditLog
from portal.models import PortalCitizen
from portal.modules.permits.service import PermitService, Upload, with_today

D = dt.date
ACTOR: Final = "seed:demo"
_PDF: Final = b"%PDF-1.4\n% Yikatong demo: site plan (an example document)\n%%EOF\n"

# (label, kind, title, channel, delivery, [(day, step, reason)])
DEMO: Final = (
    ("issued", "food_business", "Noodle shop, Renmin Road 12", "online", "electronic",
     [(D(2026, 11, 2), "submit", ""), (D(2026, 11, 3), "accept", ""), (D(2026, 11, 4), "start_review", ""),
      (D(2026, 11, 16), "grant", ""), (D(2026, 11, 17), "issue_certificate", "")]),
    ("review", "outdoor_sign", "Shop sign, Renmin Road 12", "online", "electronic",
     [(D(2026, 11, 24), "submit", ""), (D(2026, 11, 25), "request_materials", "the sign's drawing with its size"),
      (D(2026, 11, 26), "supplement", ""), (D(2026, 11, 27), "accept", ""), (D(2026, 11, 30), "start_review", "")]),
    ("waiting", "road_occupation", "Delivery van parking, one morning", "online", "electronic",
     [(D(2026, 12, 1), "submit", "")]),
    ("counter", "tree_felling", "Moving a tree in the courtyard", "counter", "counter",
     [(D(2026, 10, 12), "submit", ""), (D(2026, 10, 12), "accept", ""), (D(2026, 10, 13), "start_review", ""),
      (D(2026, 10, 20), "grant", ""), (D(2026, 10, 22), "issue_certificate", "")]),
    ("refused", "food_business", "Street stall at the station", "online", "electronic",
     [(D(2026, 11, 9), "submit", ""), (D(2026, 11, 10), "refuse", "stalls at the station are not permitted")]),
)  # fmt: skip


def demo_id(label: str) -> str:
    return "pa_" + hashlib.sha256(f"yikatong/demo/permit/{label}".encode()).hexdigest()[:24]


def seed_demo_permits(factory: sessionmaker[Session], mobile: str) -> int:
    """The demo citizen's applications (the citizen registered first); how many were added."""
    with factory() as session:
        citizen_id = session.scalar(select(PortalCitizen.id).where(PortalCitizen.mobile == mobile))
    if citizen_id is None:
        raise ValueError("register the demo citizen before seeding their permit applications")
    base = PermitService(factory, AuditLog(factory))
    added = 0
    for label, kind, title, channel, delivery, steps in DEMO:
        app_id = demo_id(label)
        if base.exists(app_id):
            continue
        for day, step, reason in steps:
            service = with_today(base, lambda day=day: day)  # type: ignore[misc]
            if step == "submit":
                documents = [Upload("site-plan.pdf", _PDF)] if channel == "online" else []
                service.submit(citizen_id, app_id, kind=kind, title=title, delivery=delivery, documents=documents,
                               channel=channel, actor=ACTOR if channel == "counter" else "citizen")  # fmt: skip
            elif step == "supplement":
                service.supplement(citizen_id, app_id, service.application_of(citizen_id, app_id).version)
            else:
                version = service.application_of(citizen_id, app_id).version
                service.act(ACTOR, app_id, step, version, reason)
        added += 1
    return added


__all__ = ["DEMO", "demo_id", "seed_demo_permits"]
