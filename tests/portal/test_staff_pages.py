"""The console's pages and the citizen's lost-card pages: the same services, forms with CSRF, no JavaScript."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pyotp
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from clearing.keystore import KeyStore
from clearing.models import DenylistEntryRow
from tests.portal.conftest import ALICE
from tests.portal.test_lost_cards import CLERK_PASSWORD, OWN, WAIT_S, Rig, citizen, make_rig


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


def token(page: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]*)"', page)
    assert found, page[:500]
    return found.group(1)


def staff_login(rig: Rig, username: str, role: str) -> tuple[TestClient, str]:
    new = rig.staff.add(username, role, CLERK_PASSWORD, actor="cli")
    otp = pyotp.parse_uri(new.provisioning_uri)
    assert isinstance(otp, pyotp.TOTP)
    client = rig.client()
    form = client.get("/staff/login")
    assert form.status_code == 200 and 'for="totp"' in form.text
    answer = client.post(
        "/staff/login",
        data={
            "csrf_token": token(form.text),
            "username": username,
            "password": CLERK_PASSWORD,
            "totp": otp.at(rig.clock.now),
        },
        follow_redirects=False,
    )
    assert answer.status_code == 303 and answer.headers["location"] == "/staff", answer.text
    home = client.get("/staff")
    assert home.status_code == 200 and username in home.text
    return client, token(home.text)


def test_a_clerk_replaces_a_reported_card_through_the_pages(rig: Rig) -> None:
    _, asn = rig.issue(3_000)
    alice = citizen(rig, ALICE, asn)
    confirm = alice.get(f"/cards/{OWN}/{asn}/lost")
    assert confirm.status_code == 200 and 'id="lost-submit"' in confirm.text
    assert "content-security-policy" in confirm.headers
    done = alice.post(f"/cards/{OWN}/{asn}/lost", data={"csrf_token": token(confirm.text)}, follow_redirects=False)
    assert done.status_code == 303 and done.headers["location"] == "/lost-cards"
    listed = alice.get("/lost-cards")
    assert listed.status_code == 200 and asn in listed.text
    with Session(rig.engine) as session:
        assert session.scalar(select(func.count(DenylistEntryRow.id))) == 1

    rig.clock.advance(WAIT_S)
    clerk, csrf = staff_login(rig, "clerk1", "counter_clerk")
    found = clerk.get("/staff/cards", params={"q": asn})
    assert found.status_code == 200 and f"/staff/cards/{OWN}/{asn}" in found.text
    page = clerk.get(f"/staff/cards/{OWN}/{asn}")
    assert page.status_code == 200 and 'id="replace-submit"' in page.text and "欧阳**" in page.text
    assert ALICE["mobile"] not in page.text
    replaced = clerk.post(f"/staff/cards/{OWN}/{asn}/replace", data={"csrf_token": token(page.text)})
    assert replaced.status_code == 201, replaced.text
    assert 'id="moved"' in replaced.text and "30.00" in replaced.text
    again = clerk.post(f"/staff/cards/{OWN}/{asn}/replace", data={"csrf_token": csrf})
    assert again.status_code == 200 and 'id="replayed"' in again.text


def test_console_forms_need_their_token_and_the_role(rig: Rig) -> None:
    _, asn = rig.issue()
    alice = citizen(rig, ALICE, asn)
    alice.post("/api/lost-cards", json={"issuer_id": OWN, "card_asn": asn})
    clerk, _ = staff_login(rig, "clerk1", "counter_clerk")
    refused = clerk.post(f"/staff/cards/{OWN}/{asn}/unblock", data={"csrf_token": "forged"})
    assert refused.status_code == 403 and 'id="error-text"' in refused.text
    forbidden = clerk.post("/staff/refunds", data={"csrf_token": "x", "topup_id": "tu_" + "0" * 32})
    assert forbidden.status_code == 403 and "E_STAFF_FORBIDDEN" in forbidden.text
    assert clerk.get("/staff/accounts").status_code == 403
    anonymous = rig.client()
    assert anonymous.get("/staff/cards", follow_redirects=False).headers["location"] == "/staff/login"
    # a bad login is the form again with one sentence, not a 500
    form = anonymous.get("/staff/login")
    bad = anonymous.post("/staff/login", data={"csrf_token": token(form.text), "username": "clerk1",
                                               "password": "wrong password", "totp": "123456"})  # fmt: skip
    assert bad.status_code == 401 and 'id="error-summary"' in bad.text
    assert anonymous.post("/staff/login", data={"username": "clerk1"}).status_code == 403


def test_finance_and_administrator_pages(rig: Rig) -> None:
    finance, csrf = staff_login(rig, "money1", "finance")
    assert finance.get("/staff/notices").status_code == 200
    missing = finance.post("/staff/refunds", data={"csrf_token": csrf, "topup_id": "tu_" + "ab" * 16})
    assert missing.status_code == 404 and "E_TOPUP_NOT_FOUND" in missing.text
    admin, csrf = staff_login(rig, "admin1", "administrator")
    made = admin.post("/staff/accounts", data={"csrf_token": csrf, "username": "clerk7", "role": "counter_clerk",
                                               "password": CLERK_PASSWORD})  # fmt: skip
    assert made.status_code == 201 and "otpauth://totp/" in made.text
    taken = admin.post("/staff/accounts", data={"csrf_token": csrf, "username": "clerk7", "role": "finance",
                                                "password": CLERK_PASSWORD})  # fmt: skip
    assert taken.status_code == 409 and 'id="error-summary"' in taken.text
    audit = admin.get("/staff/audit")
    assert audit.status_code == 200 and "staff_add" in audit.text


def test_every_console_input_has_a_label(rig: Rig) -> None:
    clerk, _ = staff_login(rig, "clerk1", "counter_clerk")
    admin, _ = staff_login(rig, "admin1", "administrator")
    finance, _ = staff_login(rig, "money1", "finance")
    pages = [rig.client().get("/staff/login").text, clerk.get("/staff").text, clerk.get("/staff/cards").text,
             admin.get("/staff/accounts").text, finance.get("/staff").text]  # fmt: skip
    for page in pages:
        for field in re.finditer(r"<(input|select)\b([^>]*)>", page):
            attrs = field.group(2)
            if 'type="hidden"' in attrs:
                continue
            ident = re.search(r'id="([^"]+)"', attrs)
            assert ident and f'for="{ident.group(1)}"' in page, attrs
