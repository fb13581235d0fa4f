"""Payout bank accounts: each field's format rule and its stable code (settlement/bank.py)."""

from __future__ import annotations

import pickle

import pytest
from hypothesis import given
from hypothesis import strategies as st

from settlement.bank import BankAccount, bank_account_problems, check_account_number, check_cnaps_code, cnaps_parts
from settlement.errors import SettlementCode, SettlementError

GOOD = {"name": "咸阳公交集团有限公司", "number": "2604020109024800001", "cnaps": "102795000011"}


def code_of(**fields: str) -> SettlementCode:
    with pytest.raises(SettlementError) as caught:
        BankAccount(**{**GOOD, **fields})
    return caught.value.code


def test_a_well_formed_account_is_accepted_and_read_by_position() -> None:
    account = BankAccount(**GOOD)
    assert account.cnaps == "102795000011"
    parts = cnaps_parts(account.cnaps)
    assert (parts.bank_class, parts.region, parts.branch, parts.check_digit) == ("102", "7950", "0001", "1")


@pytest.mark.parametrize(
    "name",
    ["", " 孙建国", "孙建国 ", "孙\n建国", "孙\u200b建国", "=HYPERLINK(1)", "+86", "-1", "@x", "孙" * 71, "a\u2028b"],
)
def test_account_names_a_bank_file_cannot_carry_are_refused(name: str) -> None:
    assert code_of(name=name) is SettlementCode.E_BAD_ACCOUNT_NAME


@pytest.mark.parametrize("name", ["孙建国", "阿卜杜·艾则孜", "Xianyang Bus Co., Ltd.", "孙" * 70, "(个体)老孙家"])
def test_real_looking_account_names_pass(name: str) -> None:
    assert BankAccount(**{**GOOD, "name": name}).name == name


@pytest.mark.parametrize(
    "number",
    [
        "",
        "1234567",
        "1" * 31,
        "6222 0212 3456 7890",
        "6222-0212",
        "６２２２０２１２３４５６７８９０",
        "62220212345x",
        "١٢٣٤٥٦٧٨٩",
    ],
)
def test_account_numbers_other_than_8_to_30_ascii_digits_are_refused(number: str) -> None:
    assert code_of(number=number) is SettlementCode.E_BAD_ACCOUNT_NUMBER


@given(st.text(alphabet="0123456789", min_size=8, max_size=30))
def test_every_8_to_30_digit_account_number_is_accepted(number: str) -> None:
    assert check_account_number(number) == number


@pytest.mark.parametrize(
    "cnaps", ["", "10279500001", "1027950000111", "C/N102795000011", "１０２７９５０００００１", "10279500001a"]
)
def test_cnaps_codes_other_than_12_ascii_digits_are_refused(cnaps: str) -> None:
    assert code_of(cnaps=cnaps) is SettlementCode.E_BAD_CNAPS_CODE


@given(st.text(alphabet="0123456789", min_size=12, max_size=12))
def test_any_12_digits_pass_because_the_check_digit_algorithm_is_not_public(cnaps: str) -> None:
    assert check_cnaps_code(cnaps) == cnaps


def test_full_width_digits_get_a_sentence_that_says_so() -> None:
    with pytest.raises(SettlementError, match="full-width"):
        check_account_number("６２２２０２１２３４５６７８９０")


def test_errors_and_reprs_never_show_the_whole_account_number() -> None:
    with pytest.raises(SettlementError) as caught:
        check_account_number("62220212345678901234567890123456")
    assert "62220212345678901234567890123456" not in str(caught.value)
    assert "3456" in caught.value.message
    assert "2604020109024800001" not in repr(BankAccount(**GOOD))


def test_a_form_gets_every_field_error_at_once() -> None:
    problems = bank_account_problems("", "12", "abc")
    assert [p.code for p in problems] == [
        SettlementCode.E_BAD_ACCOUNT_NAME,
        SettlementCode.E_BAD_ACCOUNT_NUMBER,
        SettlementCode.E_BAD_CNAPS_CODE,
    ]
    assert bank_account_problems(**GOOD) == ()


def test_settlement_errors_carry_code_status_and_survive_pickling() -> None:
    error = SettlementError(SettlementCode.E_BAD_CNAPS_CODE, "the bank code is not 12 digits")
    assert str(error) == "E_BAD_CNAPS_CODE: the bank code is not 12 digits"
    assert error.status == 422
    again = pickle.loads(pickle.dumps(error))
    assert (again.code, again.message, again.status) == (error.code, error.message, 422)
