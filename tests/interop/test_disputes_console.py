"""The staff console's dispute pages: finance moves our side of a dispute; every refusal is a page, audited."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from issuerworld import *  # noqa: F403 - the fixtures
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from clearing.keystore import KeyStore
from interop_xian import disputes
from interop_xian.disputes import Side
from tests.portal.test_lost_cards import Rig, make_rig
from tests.portal.test_staff_pages import staff_login, token


@pytest.fixture(scope="module")
def keystore(tmp_path_factory: pytest.TempPathFactory) -> KeyStore:
    ks = KeyStore.open(tmp_path_factory.mktemp("ks") / "keystore.json", os.urandom(32))
    ks.init(["xianyang"])
    return ks


@pytest.fixture
def rig(issuer_sqlite: Engine, keystore: KeyStore, tmp_path: Path) -> Iterator[Rig]:
    made = make_rig(issuer_sqlite, keystore, tmp_path, pages=True)
    yield made
    made.terminal.journal.close()
    made.terminal.denylist.close()


def _dispute(engine: Engine) -> int:
    with Session(engine) as s, s.begin():
        return disputes.open_dispute(
            s, peer_city="xian", role=Side.ISSUER, item_id="xian:00000a000001:7:0011223344556677", amount_fen=1250,
            reason_code="E_NET_DEBIT_CAP", actor="xian", now=dt.datetime.now(dt.UTC),
        ).dispute_id  # fmt: skip


def test_finance_lists_a_dispute_and_moves_our_side_of_it_through_the_pages(rig: Rig) -> None:
    dispute_id = _dispute(rig.engine)
    finance, _ = staff_login(rig, "fin1", "finance")
    listed = finance.get("/staff/disputes")
    assert listed.status_code == 200 and f'id="dispute-{dispute_id}"' in listed.text and "12.50" in listed.text
    page = finance.get(f"/staff/disputes/{dispute_id}")
    assert page.status_code == 200
    assert 'value="evidence_requested"' in page.text and 'value="accepted"' in page.text
    assert 'value="evidence_given"' not in page.text  # the acquirer's move, not ours
    moved = finance.post(
        f"/staff/disputes/{dispute_id}/move",
        data={"csrf_token": token(page.text), "to": "evidence_requested", "note": "send the journal"},
        follow_redirects=False,
    )
    assert moved.status_code == 303 and moved.headers["location"] == f"/staff/disputes/{dispute_id}"
    after = finance.get(f"/staff/disputes/{dispute_id}")
    assert '<dd id="dispute-state">evidence_requested</dd>' in after.text and "send the journal" in after.text
    # the acquirer's move from here is refused with its code, and audited
    refused = finance.post(f"/staff/disputes/{dispute_id}/move",
                           data={"csrf_token": token(after.text), "to": "evidence_given", "evidence": "x"})  # fmt: skip
    assert refused.status_code == 409 and "E_DISPUTE_TRANSITION" in refused.text
    no_csrf = finance.post(f"/staff/disputes/{dispute_id}/move", data={"to": "rejected"})
    assert no_csrf.status_code == 403
    unknown = finance.get("/staff/disputes/99999")
    assert unknown.status_code == 404 and "E_UNKNOWN_DISPUTE" in unknown.text
    lines = [(line.outcome, line.detail) for line in rig.staff.audit.lines(action="dispute_move")]
    assert lines == [("E_DISPUTE_TRANSITION", "to evidence_given"), ("ok", "opened -> evidence_requested")]
    with Session(rig.engine) as s:
        assert disputes.get(s, dispute_id).state == "evidence_requested"


def test_a_counter_clerk_may_not_see_disputes(rig: Rig) -> None:
    _dispute(rig.engine)
    clerk, _ = staff_login(rig, "clerk1", "counter_clerk")
    assert clerk.get("/staff/disputes").status_code == 403
