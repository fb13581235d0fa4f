"""The denylist refuses malformed entries: one bad row would stop every terminal's updates."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy.orm import Session

from clearing import denylist
from clearing.contract import DenylistDelta, decode_request
from clearing.contract import encode as encode_message
from clearing.errors import ClearingError

ISSUER = "01007120ffffffff"
ASN = "31040000000000000001"


@pytest.mark.parametrize(
    ("issuer", "asn", "reason", "code"),
    [
        ("01007120fffffff", ASN, "lost", "E_BAD_CARD_ID"),  # 15 hex
        (ISSUER, "3104000000000000000x", "lost", "E_BAD_CARD_ID"),
        (ISSUER, ASN + "00", "lost", "E_BAD_CARD_ID"),
        (ISSUER, ASN, "", "E_BAD_REASON"),
        (ISSUER, ASN, "   ", "E_BAD_REASON"),
        (ISSUER, ASN, "x" * 65, "E_BAD_REASON"),
        (ISSUER, ASN, "lost\nstolen", "E_BAD_REASON"),
    ],
)
def test_a_malformed_entry_is_refused_and_nothing_is_listed(
    db_session: Session, issuer: str, asn: str, reason: str, code: str
) -> None:
    before = denylist.current_version(db_session)
    with pytest.raises(ClearingError) as refused:
        denylist.add(db_session, issuer, asn, reason)
    assert refused.value.code == code
    assert denylist.current_version(db_session) == before and denylist.live_entries(db_session) == []


def test_an_effective_time_must_be_aware_and_plausible(db_session: Session) -> None:
    for when in (dt.datetime(2026, 11, 24, 8, 0), dt.datetime(1970, 1, 1, tzinfo=dt.UTC)):
        with pytest.raises(ClearingError) as refused:
            denylist.add(db_session, ISSUER, ASN, "lost", when)
        assert refused.value.code == "E_BAD_TIME"


def test_upper_case_ids_are_listed_in_the_contracts_form_and_terminals_can_decode_the_list(
    db_session: Session,
) -> None:
    denylist.add(db_session, ISSUER.upper(), ASN, "lost")
    delta = denylist.delta(db_session, 0)
    assert [(e.issuer_id, e.card_asn) for e in delta.added] == [(ISSUER, ASN)]
    assert decode_request(encode_message(delta), DenylistDelta) == delta  # the terminal's decoder takes it
    assert denylist.remove(db_session, ISSUER.upper(), ASN.upper()) > 0
