"""Demo data for ``make run``: the demo social security card enrolled in the scheme, and one claim.

The demo citizen (``yikatong.live_demo``) is enrolled in region ``qindu`` from 2025, so the
clinic terminal (``yikatong terminal run --clinic``) can settle a visit with that card, and
``/medical`` shows a claim for a stay in a Xi'an hospital waiting for review. **Example data**,
like the rule tables. Running it again changes nothing (the claim's form nonce is fixed).
"""

from __future__ import annotations

import datetime as dt
from typing import Final

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from cardos.records import SHANGHAI_TZ
from portal.accounts import CurrentSession
from portal.audit import AuditLog
from portal.models import PortalCitizen
from portal.modules.medical.claims import Document
from portal.modules.medical.claims_service import ClaimForm, ClaimService
from portal.modules.medical.rules import VisitKind, load_example_rules
from portal.modules.medical.visits import enrol

DEMO_REGION: Final = "qindu"
DEMO_SUBMIT_REF: Final = "demo-claim-xijing-0001"
DEMO_INVOICE: Final = b"%PDF-1.4\n% demo invoice: Xijing Hospital, inpatient stay (example)\n%%EOF\n"


def seed_demo_medical(factory: sessionmaker[Session], issuer_id: str, card_asn: str, citizen_mobile: str) -> None:
    with factory() as session, session.begin():
        enrol(session, issuer_id, card_asn, region=DEMO_REGION, year_from=2025)
        citizen_id = session.scalar(select(PortalCitizen.id).where(PortalCitizen.mobile == citizen_mobile))
    if citizen_id is None:
        return
    now = dt.datetime.now(dt.UTC)
    current = CurrentSession("demo", citizen_id, "demo", "card", now + dt.timedelta(minutes=1))
    claims = ClaimService(factory, load_example_rules(), AuditLog(factory))
    day = now.astimezone(SHANGHAI_TZ).date() - dt.timedelta(days=10)
    form = ClaimForm("Xijing Hospital, Xi'an (demo)", "city", VisitKind.INPATIENT, day, 480_000)
    claims.submit(current, form, [Document("invoice", "application/pdf", DEMO_INVOICE)], submit_ref=DEMO_SUBMIT_REF)


__all__ = ["seed_demo_medical"]
