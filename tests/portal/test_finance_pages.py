"""The finance console's pages and JSON without a browser: the role, the audit line, bad days as 4xx (never 500)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from cardos.records import SHANGHAI_TZ
from clearing.keystore import KeyStore
from portal.models import PortalAuditEntry
from tests.portal.test_lost_cards import Rig, make_rig, tap_time
from tests.portal.test_staff_pages import staff_login


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


def test_finance_reads_the_day_and_its_chart_data_and_each_view_is_audited(rig: Rig) -> None:
    card, _asn = rig.issue(3_000)
    rig.tap(card, 1)
    rig.uploader.upload_pending()
    day = tap_time(1).astimezone(SHANGHAI_TZ).date().isoformat()
    finance, _csrf = staff_login(rig, "fin1", "finance")
    picker = finance.get("/staff/finance")
    assert picker.status_code == 200 and 'id="days-table"' in picker.text
    assert "content-security-policy" in picker.headers
    jump = finance.get("/staff/finance", params={"day": day}, follow_redirects=False)
    assert jump.status_code == 303 and jump.headers["location"] == f"/staff/finance/days/{day}"
    page = finance.get(f"/staff/finance/days/{day}")
    assert page.status_code == 200, page.text
    for chart in ("hours", "operators", "routes", "merchants", "issues", "payouts"):
        assert f'id="chart-{chart}"' in page.text
    assert 'src="/static/finance.js"' in page.text and f'data-source="/staff/api/finance/days/{day}"' in page.text
    data = finance.get(f"/staff/api/finance/days/{day}")
    assert data.status_code == 200 and data.headers["cache-control"] == "no-store"
    body = data.json()
    assert sum(body["hours"]["accepted"]) == 1 and body["routes"][0]["route_id"] == "K26"
    assert finance.get(f"/staff/finance/days/{day}/map").status_code == 200
    with Session(rig.engine) as session:
        views = session.scalars(select(PortalAuditEntry.detail).where(PortalAuditEntry.action == "finance_view"))
        assert sorted(views) == ["chart data", "day page", "day picker", "stop map"]


@pytest.mark.parametrize("day", ["2026-13-01", "yesterday", "1999-12-31", "2026-12-03T00:00", "9" * 40, "%00"])
def test_a_day_that_is_not_a_date_is_a_422_page_and_a_422_answer(rig: Rig, day: str) -> None:
    finance, _csrf = staff_login(rig, "fin2", "finance")
    page = finance.get(f"/staff/finance/days/{day}")
    assert page.status_code == 422 and "E_PORTAL_MALFORMED" in page.text
    assert finance.get("/staff/finance", params={"day": day}).status_code == 422
    answer = finance.get(f"/staff/api/finance/days/{day}")
    assert answer.status_code == 422 and answer.json()["code"] == "E_PORTAL_MALFORMED"


def test_other_roles_and_no_session_are_refused(rig: Rig) -> None:
    clerk, _csrf = staff_login(rig, "clerk9", "counter_clerk")
    assert clerk.get("/staff/finance").status_code == 403
    assert clerk.get("/staff/finance/days/2026-12-03").status_code == 403
    assert clerk.get("/staff/api/finance/days/2026-12-03").json()["code"] == "E_STAFF_FORBIDDEN"
    anonymous = rig.client()
    gone = anonymous.get("/staff/finance/days/2026-12-03", follow_redirects=False)
    assert gone.status_code == 303 and gone.headers["location"] == "/staff/login"
    assert anonymous.get("/staff/api/finance/days/2026-12-03").status_code == 401
