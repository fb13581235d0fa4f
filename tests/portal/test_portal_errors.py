"""The portal's code registry: complete, distinct from the terminal contract's, and leak-free."""

from __future__ import annotations

import datetime as dt
import pickle

import pytest

from clearing import Code as ContractCode
from portal.errors import CODES, Code, PortalError
from portal.identity import parse_id_number, parse_mobile


def test_every_code_has_a_status_and_a_meaning() -> None:
    assert set(CODES) == set(Code)
    for code, info in CODES.items():
        assert code.value == code.name and code.value[:2] in ("E_", "N_")
        assert 200 <= info.status < 600 and info.meaning
        assert (info.status < 400) == code.value.startswith("N_")


def test_portal_codes_do_not_reuse_terminal_contract_codes() -> None:
    """Separate registries, so one API's error shape can change without moving the other's."""
    assert not {c.value for c in Code} & {c.value for c in ContractCode}


def test_an_error_reads_code_colon_sentence_and_survives_pickling() -> None:
    err = PortalError(Code.E_TOPUP_BELOW_MIN, "the smallest top-up is 100 fen")
    assert str(err) == "E_TOPUP_BELOW_MIN: the smallest top-up is 100 fen"
    assert err.status == 422
    back = pickle.loads(pickle.dumps(err))
    assert (back.code, back.message, back.status) == (err.code, err.message, err.status)


def test_codes_come_from_the_registry() -> None:
    with pytest.raises(AssertionError):
        PortalError("E_MADE_UP", "no")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "bad",
    ["110105194912310021", "11010519491331002X", "11010519491231002Y", "0001051949123100 2X"],
)
def test_refusals_of_id_numbers_do_not_repeat_the_number(bad: str) -> None:
    with pytest.raises(PortalError) as info:
        parse_id_number(bad, today=dt.date(2026, 1, 1))
    assert bad.strip() not in str(info.value) and "1949" not in str(info.value)


def test_refusals_of_mobile_numbers_do_not_repeat_the_number() -> None:
    with pytest.raises(PortalError) as info:
        parse_mobile("12812345678")
    assert "12812345678" not in str(info.value)
