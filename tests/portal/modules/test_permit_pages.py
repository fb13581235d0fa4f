"""Permit applications through the real pages, service and database (SQLite and PostgreSQL).

The citizen's session is raised to assurance ``card`` in the database (card login itself is
pinned by ``tests/portal/test_card_login.py`` and by the browser journey); the clerk logs in
with password and TOTP. The permits service's day is pinned so the deadlines are known.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select, update
from sqlalchemy.orm import Session

from clearing.keystore import KeyStore
from clearing.working_days import CALENDAR_VERSION
from portal.models import PortalAuditEntry, PortalCitizen, PortalSession
from portal.modules.permits.models import PermitApplication, PermitDocument, PermitStep
from portal.modules.permits.pages import SERVICE_KEY
from portal.modules.permits.service import DOCUMENT_BYTES_MAX, PermitService, clean_filename, with_today
from tests.portal.conftest import ALICE, BOB
from tests.portal.test_lost_cards import Rig, login, make_rig
from tests.portal.test_staff_pages import staff_login

PDF = b"%PDF-1.4\n1 0 obj <<>> endobj\ntrailer <<>>\n%%EOF\n"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32


class Day:
    """The permits service's today, moved by the test."""

    def __init__(self, day: dt.date) -> None:
        self.day = day

    def __call__(self) -> dt.date:
        return self.day


@pytest.fixture(scope="module")
def keystore(tmp_path_factory: pytest.TempPathFactory) -> KeyStore:
    ks = KeyStore.open(tmp_path_factory.mktemp("ks") / "keystore.json", os.urandom(32))
    ks.init(["xianyang"])
    return ks


@pytest.fixture
def rig(engine: Engine, keystore: KeyStore, tmp_path: Path) -> Iterator[Rig]:
    made = make_rig(engine, keystore, tmp_path, pages=True)
    yield made
    made.terminal.journal.close()
    made.terminal.denylist.close()


@pytest.fixture
def day(rig: Rig) -> Day:
    pinned = Day(dt.date(2026, 9, 29))  # a Tuesday before National Day 2026
    service = getattr(rig.app.state, SERVICE_KEY)
    assert isinstance(service, PermitService)
    setattr(rig.app.state, SERVICE_KEY, with_today(service, pinned))
    return pinned


def token(page: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]*)"', page)
    assert found, page[:800]
    return found.group(1)


def hidden(page: str, name: str) -> str:
    found = re.search(rf'name="{name}" value="([^"]*)"', page)
    assert found, f"no {name} in {page[:800]}"
    return found.group(1)


def card_citizen(rig: Rig, who: dict[str, str]) -> TestClient:
    """A registered citizen whose session counts as a card login."""
    assert rig.client().post("/api/citizens", json=who).status_code == 201
    client = login(rig, who)
    with Session(rig.engine) as session, session.begin():
        citizen_id = session.scalar(select(PortalCitizen.id).where(PortalCitizen.mobile == who["mobile"]))
        session.execute(update(PortalSession).where(PortalSession.citizen_id == citizen_id).values(assurance="card"))
    return client


def submit(client: TestClient, files: list[tuple[str, tuple[str, bytes, str]]] | None = None) -> httpx.Response:
    form = client.get("/permits/new")
    assert form.status_code == 200, form.text
    data = {"csrf_token": token(form.text), "nonce": hidden(form.text, "nonce"), "kind": "outdoor_sign",
            "title": "A shop sign on Renmin Road", "delivery": "electronic"}  # fmt: skip
    answer: httpx.Response = client.post("/permits", data=data, files=files or [], follow_redirects=False)
    return answer


def staff_step(clerk: TestClient, app_id: str, step: str, reason: str = "") -> httpx.Response:
    page = clerk.get(f"/staff/permits/{app_id}")
    assert page.status_code == 200, page.text
    assert f'id="step-{step}"' in page.text, page.text[-2000:]
    data = {"csrf_token": token(page.text), "version": hidden(page.text, "version"), "reason": reason}
    answer: httpx.Response = clerk.post(f"/staff/permits/{app_id}/steps/{step}", data=data, follow_redirects=False)
    return answer


def count(engine: Engine, table: Any, *where: Any) -> int:
    with Session(engine) as session:
        return int(session.scalar(select(func.count()).select_from(table).where(*where)) or 0)


def application(engine: Engine, app_id: str) -> PermitApplication:
    with Session(engine) as session:
        row = session.get(PermitApplication, app_id)
        assert row is not None
        session.expunge(row)
        return row


def test_an_account_login_alone_does_not_open_any_permit_page(rig: Rig, day: Day) -> None:
    assert rig.client().post("/api/citizens", json=ALICE).status_code == 201
    client = login(rig, ALICE)
    for url in ("/permits", "/permits/new", "/permits/pa_" + "0" * 24):
        answer = client.get(url, follow_redirects=False)
        assert answer.status_code == 403 and 'id="card-login-needed"' in answer.text, url
        assert 'href="/reader"' in answer.text
    assert client.post("/permits", data={"csrf_token": "x"}, follow_redirects=False).status_code == 403
    anonymous = rig.client().get("/permits", follow_redirects=False)
    assert anonymous.status_code == 303 and anonymous.headers["location"].startswith("/login")
    assert rig.client().get("/staff/permits", follow_redirects=False).headers["location"] == "/staff/login"


def test_an_application_goes_from_submission_to_certificate_through_the_pages(rig: Rig, day: Day) -> None:
    alice = card_citizen(rig, ALICE)
    done = submit(alice, [("documents", ("plan.pdf", PDF, "application/pdf"))])
    assert done.status_code == 303, done.text
    app_id = done.headers["location"].rsplit("/", 1)[-1]
    page = alice.get(f"/permits/{app_id}")
    assert page.status_code == 200 and 'data-state="submitted"' in page.text and "plan.pdf" in page.text
    row = application(rig.engine, app_id)
    assert (row.materials_due, row.materials_due_calendar) == (dt.date(2026, 10, 12), CALENDAR_VERSION)

    clerk, _ = staff_login(rig, "clerk.li", "counter_clerk")
    listed = clerk.get("/staff/permits")
    assert listed.status_code == 200 and f"/staff/permits/{app_id}" in listed.text
    assert ALICE["mobile"] not in clerk.get(f"/staff/permits/{app_id}").text
    assert staff_step(clerk, app_id, "request_materials", "the sign's drawing is missing").status_code == 303

    notices = alice.get("/permits")
    assert 'data-step="request_materials"' in notices.text and "the sign&#39;s drawing is missing" in notices.text
    page = alice.get(f"/permits/{app_id}")
    uploaded = alice.post(f"/permits/{app_id}/documents", data={"csrf_token": token(page.text)},
                          files=[("documents", ("drawing.png", PNG, "image/png"))], follow_redirects=False)  # fmt: skip
    assert uploaded.status_code == 303, uploaded.text
    page = alice.get(f"/permits/{app_id}")
    supplied = alice.post(f"/permits/{app_id}/supplement",
                          data={"csrf_token": token(page.text), "version": hidden(page.text, "version")},
                          follow_redirects=False)  # fmt: skip
    assert supplied.status_code == 303

    day.day = dt.date(2026, 9, 30)
    assert staff_step(clerk, app_id, "accept").status_code == 303
    row = application(rig.engine, app_id)
    # Oct 1-7 off, Oct 10 a make-up Saturday: Oct 8-10 1-3, Oct 12-30 4-18, Nov 2-3 19-20
    assert (row.decision_due, row.decision_due_calendar) == (dt.date(2026, 11, 3), CALENDAR_VERSION)
    assert staff_step(clerk, app_id, "start_review").status_code == 303
    assert staff_step(clerk, app_id, "extend", "a site visit is needed").status_code == 303
    assert application(rig.engine, app_id).decision_due == dt.date(2026, 11, 17)  # + 10: Nov 4-17
    day.day = dt.date(2026, 10, 30)
    assert staff_step(clerk, app_id, "grant").status_code == 303
    row = application(rig.engine, app_id)
    assert (row.certificate_due, row.certificate_due_calendar) == (dt.date(2026, 11, 13), CALENDAR_VERSION)
    assert staff_step(clerk, app_id, "issue_certificate").status_code == 303

    page = alice.get(f"/permits/{app_id}")
    assert 'data-state="certificate_issued"' in page.text and 'id="certificate"' in page.text
    row = application(rig.engine, app_id)
    assert row.certificate_no is not None and row.certificate_no in page.text
    assert count(rig.engine, PermitStep, PermitStep.application_id == app_id) == 8
    reviews = count(rig.engine, PortalAuditEntry, PortalAuditEntry.action == "permit_review",
                    PortalAuditEntry.outcome == "ok", PortalAuditEntry.actor == "staff:clerk.li")  # fmt: skip
    assert reviews == 6
    assert count(rig.engine, PortalAuditEntry, PortalAuditEntry.action == "permit_view") >= 6

    dashboard = clerk.get("/staff/permits/dashboard")
    assert dashboard.status_code == 200
    assert 'data-permille="1000"' in dashboard.text and "1 / 1" in dashboard.text


def test_a_replayed_form_changes_nothing(rig: Rig, day: Day) -> None:
    alice = card_citizen(rig, ALICE)
    form = alice.get("/permits/new")
    data = {"csrf_token": token(form.text), "nonce": hidden(form.text, "nonce"), "kind": "food_business",
            "title": "A noodle shop", "delivery": "counter"}  # fmt: skip
    first = alice.post("/permits", data=data, follow_redirects=False)
    second = alice.post("/permits", data=data, follow_redirects=False)
    assert first.status_code == second.status_code == 303
    assert first.headers["location"] == second.headers["location"]
    assert count(rig.engine, PermitApplication) == 1
    app_id = first.headers["location"].rsplit("/", 1)[-1]

    clerk, _ = staff_login(rig, "clerk.li", "counter_clerk")
    page = clerk.get(f"/staff/permits/{app_id}")
    accept = {"csrf_token": token(page.text), "version": hidden(page.text, "version"), "reason": ""}
    assert clerk.post(f"/staff/permits/{app_id}/steps/accept", data=accept, follow_redirects=False).status_code == 303
    steps = count(rig.engine, PermitStep)
    audits = count(rig.engine, PortalAuditEntry, PortalAuditEntry.action == "permit_review")
    before = application(rig.engine, app_id)
    again = clerk.post(f"/staff/permits/{app_id}/steps/accept", data=accept, follow_redirects=False)
    assert again.status_code == 303 and again.headers["location"] == f"/staff/permits/{app_id}"
    after = application(rig.engine, app_id)
    assert (after.version, after.state, after.decision_due) == (before.version, before.state, before.decision_due)
    assert count(rig.engine, PermitStep) == steps
    assert count(rig.engine, PortalAuditEntry, PortalAuditEntry.action == "permit_review") == audits
    # the old page's version with another step: the application moved on, refused, nothing changed
    stale = clerk.post(f"/staff/permits/{app_id}/steps/refuse", data={**accept, "reason": "no"},
                       follow_redirects=False)  # fmt: skip
    assert stale.status_code == 409 and "E_PERMIT_STALE" in stale.text
    assert application(rig.engine, app_id).state == "accepted"


def test_documents_are_checked_by_their_bytes_bounded_and_stored_once(rig: Rig, day: Day) -> None:
    alice = card_citizen(rig, ALICE)
    refused = submit(alice, [("documents", ("plan.pdf", b"MZ\x90\x00 not a pdf", "application/pdf"))])
    assert refused.status_code == 422 and "E_PERMIT_DOCUMENT_TYPE" in refused.text
    too_big = submit(alice, [("documents", ("big.pdf", b"%PDF-" + b"0" * DOCUMENT_BYTES_MAX, "application/pdf"))])
    assert too_big.status_code == 413 and "E_PERMIT_DOCUMENT_SIZE" in too_big.text
    assert count(rig.engine, PermitApplication) == 0
    done = submit(alice, [("documents", ("../../etc/passwd\x07.pdf", PDF, "text/html"))])
    app_id = done.headers["location"].rsplit("/", 1)[-1]
    page = alice.get(f"/permits/{app_id}")
    again = alice.post(f"/permits/{app_id}/documents", data={"csrf_token": token(page.text)},
                       files=[("documents", ("same.pdf", PDF, "application/pdf"))], follow_redirects=False)  # fmt: skip
    assert again.status_code == 303
    assert count(rig.engine, PermitDocument) == 1
    with Session(rig.engine) as session:
        doc = session.scalars(select(PermitDocument)).one()
        assert doc.content_type == "application/pdf"  # sniffed; the browser said text/html
        assert doc.filename.startswith("passwd") and "/" not in doc.filename and ".." not in doc.filename
    assert clean_filename("../../etc/passwd\x07.pdf") == "passwd.pdf"
    assert clean_filename("C:\\Users\\x\\\u202eevil.pdf") == "evil.pdf"
    assert clean_filename("...") == "document"
    got = alice.get(f"/permits/{app_id}/documents/{doc.id}")
    assert got.status_code == 200 and got.content == PDF
    assert got.headers["content-type"] == "application/pdf"
    assert got.headers["content-disposition"].startswith("attachment;")
    assert got.headers["x-content-type-options"] == "nosniff"


def test_another_citizens_application_is_as_if_it_did_not_exist(rig: Rig, day: Day) -> None:
    alice = card_citizen(rig, ALICE)
    done = submit(alice, [("documents", ("plan.pdf", PDF, "application/pdf"))])
    app_id = done.headers["location"].rsplit("/", 1)[-1]
    with Session(rig.engine) as session:
        doc_id = session.scalars(select(PermitDocument.id)).one()
    bob = card_citizen(rig, BOB)
    assert bob.get(f"/permits/{app_id}").status_code == 404
    assert bob.get(f"/permits/{app_id}/documents/{doc_id}").status_code == 404
    page = bob.get("/permits")
    assert app_id not in page.text
    files = [("documents", ("x.pdf", PDF + b"x", "application/pdf"))]
    upload = bob.post(f"/permits/{app_id}/documents", data={"csrf_token": token(page.text)}, files=files,
                      follow_redirects=False)  # fmt: skip
    assert upload.status_code == 404
    assert count(rig.engine, PermitDocument) == 1


def test_bad_staff_input_is_a_4xx_with_a_code_and_refusals_are_audited(rig: Rig, day: Day) -> None:
    alice = card_citizen(rig, ALICE)
    app_id = submit(alice).headers["location"].rsplit("/", 1)[-1]
    clerk, _ = staff_login(rig, "clerk.li", "counter_clerk")
    page = clerk.get(f"/staff/permits/{app_id}")
    csrf, version = token(page.text), hidden(page.text, "version")
    cases = [
        (f"/staff/permits/{app_id}/steps/explode", {"version": version}, 422, "E_PERMIT_FORM"),
        (f"/staff/permits/{app_id}/steps/supplement", {"version": version}, 422, "E_PERMIT_FORM"),
        (f"/staff/permits/{app_id}/steps/accept", {"version": "x1"}, 422, "E_PERMIT_FORM"),
        (f"/staff/permits/{app_id}/steps/refuse", {"version": version, "reason": " "}, 422, "E_PERMIT_REASON_REQUIRED"),
        (f"/staff/permits/{app_id}/steps/grant", {"version": version}, 409, "E_PERMIT_STATE"),
        ("/staff/permits/pa_" + "1" * 24 + "/steps/accept", {"version": "0"}, 404, "E_PERMIT_NOT_FOUND"),
        ("/staff/permits/nonsense/steps/accept", {"version": "0"}, 404, "E_PERMIT_NOT_FOUND"),
    ]
    for url, data, status, code in cases:
        answer = clerk.post(url, data={"csrf_token": csrf, **data}, follow_redirects=False)
        assert answer.status_code == status and code in answer.text, (url, answer.status_code, answer.text[-500:])
    assert clerk.post(f"/staff/permits/{app_id}/steps/accept", data={"version": version}).status_code == 403
    assert application(rig.engine, app_id).version == 0
    refusals = count(rig.engine, PortalAuditEntry, PortalAuditEntry.action == "permit_review",
                     PortalAuditEntry.outcome != "ok")  # fmt: skip
    assert refusals >= 3
    finance, _ = staff_login(rig, "fin.zhao", "finance")
    assert finance.get("/staff/permits").status_code == 403


def test_a_deadline_past_the_official_calendar_is_provisional_and_says_so(rig: Rig, day: Day) -> None:
    day.day = dt.date(2026, 12, 8)
    alice = card_citizen(rig, ALICE)
    app_id = submit(alice).headers["location"].rsplit("/", 1)[-1]
    clerk, _ = staff_login(rig, "clerk.li", "counter_clerk")
    accepted = staff_step(clerk, app_id, "accept")
    assert accepted.status_code in (200, 303), accepted.text
    assert application(rig.engine, app_id).state == "accepted"
    page = clerk.get(f"/staff/permits/{app_id}")
    assert "+provisional" in page.text


def test_the_demo_seed_is_idempotent_and_meets_the_online_target(rig: Rig, day: Day) -> None:
    from clearing import db
    from portal.modules.permits.demo import DEMO, seed_demo_permits

    assert rig.client().post("/api/citizens", json=ALICE).status_code == 201
    factory = db.session_factory(rig.engine)
    assert seed_demo_permits(factory, ALICE["mobile"]) == len(DEMO)
    steps = count(rig.engine, PermitStep)
    assert seed_demo_permits(factory, ALICE["mobile"]) == 0
    assert count(rig.engine, PermitStep) == steps
    service = getattr(rig.app.state, SERVICE_KEY)
    d = service.dashboard()
    assert (d.total, d.fully_online, d.online_permille, d.online_target_met) == (5, 4, 800, True)
    assert (d.decisions, d.decisions_kept, d.certificates, d.certificates_kept) == (2, 2, 2, 2)
    with pytest.raises(ValueError, match="register the demo citizen"):
        seed_demo_permits(factory, "13000000000")
