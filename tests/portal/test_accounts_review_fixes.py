"""Fixes of the review of accounts and the /api input handling (findings 5 and 7), pinned here."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from sqlalchemy import Engine

from portal.accounts import AccountLimits
from portal.errors import PortalError
from portal.ratelimit import Rule
from tests.portal.conftest import ALICE, id_number
from tests.portal.test_accounts import (  # noqa: F401 - fixtures
    ASN,
    ISSUER,
    OTHER_ASN,
    Portal,
    bindings,
    card_with_taps,
    login,
    make_portal,
    portal,
    register,
)

# --- finding 5: a per-card binding limit, across accounts and addresses ---------------------------


def test_guesses_against_one_card_are_limited_per_card(portal: Portal) -> None:  # noqa: F811
    card_with_taps(portal.engine)
    service = portal.accounts
    refused = 0
    guesses = 0
    for i in range(6):  # six throwaway accounts: mobile numbers are not verified, ID numbers only checksummed
        who = f"1390000{i:04d}"
        service.register(who, "throwaway pass", "王五", id_number(f"61040219900101{i:03d}"), client_ip=f"10.0.{i}.1")
        current = service.login(who, "throwaway pass", client_ip=f"10.0.{i}.1", previous_token=None).session
        for amount in range(100, 105):  # five guesses each, each account's whole hourly allowance
            guesses += 1
            try:
                service.bind_card(current, ASN, issuer_id=None, amount_fen=amount, on=dt.date(2026, 11, 29),
                                  client_ip=f"10.0.{i}.1")  # fmt: skip
            except PortalError as exc:
                refused += exc.code.value == "E_RATE_LIMITED"
    assert refused == guesses - 5, f"{guesses} wrong proofs against one card, {refused} rate limited"


def test_the_per_card_limit_counts_the_card_however_it_is_named(engine: Engine, tmp_path: Path) -> None:
    rig = make_portal(engine, tmp_path, limits=AccountLimits(bind_per_card=Rule(2, 24 * 3600)))
    card_with_taps(rig.engine)
    card_with_taps(rig.engine, OTHER_ASN)
    service = rig.accounts
    service.register(ALICE["mobile"], ALICE["password"], ALICE["real_name"], ALICE["id_number"], client_ip="10.1.0.1")
    current = service.login(ALICE["mobile"], ALICE["password"], client_ip="10.1.0.1", previous_token=None).session

    def code_of(asn: str, issuer_id: str | None, amount: int) -> str:
        with pytest.raises(PortalError) as info:
            service.bind_card(current, asn, issuer_id=issuer_id, amount_fen=amount, on=dt.date(2026, 11, 29),
                              client_ip="10.1.0.1")  # fmt: skip
        return info.value.code.value

    assert code_of(ASN, None, 1) == "E_BIND_PROOF_WRONG"
    assert code_of(ASN.upper(), ISSUER.upper(), 2) == "E_BIND_PROOF_WRONG"  # the same card, spelt otherwise
    assert code_of(ASN, ISSUER, 250) == "E_RATE_LIMITED"  # even the right proof: the card's day is used up
    assert code_of(OTHER_ASN, ISSUER, 1) == "E_BIND_PROOF_WRONG"  # another card has its own count
    assert bindings(rig.engine) == []


# --- finding 7: a NUL in a path parameter is 404, never a 503 --------------------------------------


@pytest.mark.parametrize("topup_id", ["tu_%00", "tu_" + "0" * 32 + "%00", "x" * 300, "TU_" + "A" * 32])
def test_a_malformed_topup_id_is_404_not_503(portal: Portal, topup_id: str) -> None:  # noqa: F811
    client = portal.client()
    register(client, ALICE)
    login(client, ALICE)
    answer = client.get(f"/api/topups/{topup_id}")
    assert (answer.status_code, answer.json()["code"]) == (404, "E_TOPUP_NOT_FOUND"), answer.text
