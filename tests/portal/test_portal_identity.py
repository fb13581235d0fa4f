"""Resident ID numbers, mobile numbers and real names: checked, hashed, masked, never leaked."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from portal.errors import Code, PortalError
from portal.identity import (
    check_char,
    id_number_hash,
    mask_real_name,
    parse_id_number,
    parse_mobile,
    parse_real_name,
)

TODAY = dt.date(2026, 6, 1)
KEY = bytes(range(32))

# The two worked examples of GB 11643-1999 (the second was born in 1880).
STANDARD_EXAMPLES = [("11010519491231002", "X"), ("44052418800101001", "4")]


def code_of(call: object) -> Code:
    assert callable(call)
    with pytest.raises(PortalError) as info:
        call()
    return info.value.code


@pytest.mark.parametrize(("first17", "check"), STANDARD_EXAMPLES)
def test_check_char_matches_the_standard_examples(first17: str, check: str) -> None:
    assert check_char(first17) == check


def test_a_valid_number_is_accepted_with_its_birth_date() -> None:
    rid = parse_id_number("  11010519491231002x ", today=TODAY)
    assert rid.number == "11010519491231002X"
    assert rid.birth_date == dt.date(1949, 12, 31)


def test_a_wrong_check_digit_is_refused() -> None:
    assert code_of(lambda: parse_id_number("110105194912310021", today=TODAY)) is Code.E_ID_NUMBER_CHECK_DIGIT


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("11010519491231002", Code.E_ID_NUMBER_LENGTH),
        ("11010519491231002X1", Code.E_ID_NUMBER_LENGTH),
        ("1" * 100, Code.E_ID_NUMBER_LENGTH),
        ("1101051949123100XX", Code.E_ID_NUMBER_FORMAT),
        ("11010519491231002Y", Code.E_ID_NUMBER_FORMAT),
        ("١١010519491231002X", Code.E_ID_NUMBER_FORMAT),  # Arabic-Indic digits pass str.isdigit
        ("１1010519491231002X", Code.E_ID_NUMBER_FORMAT),  # a full-width digit
        ("00010519491231002X", Code.E_ID_NUMBER_REGION),
        ("99", Code.E_ID_NUMBER_LENGTH),
    ],
)
def test_malformed_numbers_are_refused_with_their_own_code(text: str, code: Code) -> None:
    assert code_of(lambda: parse_id_number(text, today=TODAY)) is code


def with_check(first17: str) -> str:
    return first17 + check_char(first17)


@pytest.mark.parametrize(
    "birth",
    ["19490231", "19491301", "19490000", "18991231", "20260602", "99991231"],
)
def test_implausible_birth_dates_are_refused_even_with_a_correct_check_digit(birth: str) -> None:
    number = with_check("110105" + birth + "002")
    assert code_of(lambda: parse_id_number(number, today=TODAY)) is Code.E_ID_NUMBER_BIRTH_DATE


def test_born_today_and_in_1900_are_plausible() -> None:
    assert parse_id_number(with_check("610402" + "20260601" + "123"), today=TODAY).birth_date == TODAY
    assert parse_id_number(with_check("610402" + "19000101" + "123"), today=TODAY).birth_date == dt.date(1900, 1, 1)


def test_residence_permits_and_foreign_permanent_residents_use_the_same_check() -> None:
    parse_id_number(with_check("810000" + "19900101" + "001"), today=TODAY)
    parse_id_number(with_check("915661" + "19900101" + "001"), today=TODAY)


births = st.dates(min_value=dt.date(1900, 1, 1), max_value=TODAY)
first17s = st.builds(
    lambda region, born, seq: f"{region}{born:%Y%m%d}{seq:03d}",
    st.sampled_from(["110105", "610402", "610404", "440524", "650102", "820000"]),
    births,
    st.integers(0, 999),
)


@given(first17s)
def test_every_number_with_its_check_char_is_accepted(first17: str) -> None:
    number = with_check(first17)
    assert parse_id_number(number.lower(), today=TODAY).number == number


@given(first17s, st.integers(0, 17), st.sampled_from("0123456789X"))
def test_any_single_character_change_is_refused(first17: str, position: int, char: str) -> None:
    """MOD 11-2 detects every single substitution: no changed number is silently someone else's."""
    number = with_check(first17)
    changed = number[:position] + char + number[position + 1 :]
    if changed == number:
        return
    with pytest.raises(PortalError):
        parse_id_number(changed, today=TODAY)


@given(first17s)
def test_adjacent_transpositions_of_different_digits_are_refused(first17: str) -> None:
    number = with_check(first17)
    for i in range(16):
        a, b = number[i], number[i + 1]
        if a == b:
            continue
        swapped = number[:i] + b + a + number[i + 2 :]
        with pytest.raises(PortalError):
            parse_id_number(swapped, today=TODAY)


def test_the_masked_form_hides_the_birth_date_and_keeps_what_a_person_recognises() -> None:
    rid = parse_id_number(with_check("610402" + "19851120" + "123"), today=TODAY)
    assert rid.masked == "6104**********123" + rid.number[-1]
    assert "19851120" not in rid.masked


def test_reprs_show_only_masked_forms() -> None:
    rid = parse_id_number("11010519491231002X", today=TODAY)
    mobile = parse_mobile("13812345678")
    name = parse_real_name("欧阳娜娜")
    text = repr(rid) + repr(mobile) + repr(name) + str([rid, mobile, name])
    assert "11010519491231002X" not in text and "19491231" not in text
    assert "13812345678" not in text and "1234" not in text
    assert "娜娜" not in text


def test_the_lookup_hash_is_keyed_stable_and_case_blind() -> None:
    a = id_number_hash(parse_id_number("11010519491231002X", today=TODAY), KEY)
    b = id_number_hash(parse_id_number("11010519491231002x", today=TODAY), KEY)
    other_key = id_number_hash(parse_id_number("11010519491231002X", today=TODAY), bytes(32))
    assert a == b and len(a) == 64
    assert a != other_key
    assert "11010519491231002X" not in a


def test_a_short_lookup_key_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 32 bytes"):
        id_number_hash(parse_id_number("11010519491231002X", today=TODAY), b"short")


@given(first17s, first17s)
def test_different_numbers_hash_differently(a: str, b: str) -> None:
    if a == b:
        return
    ra, rb = (parse_id_number(with_check(x), today=TODAY) for x in (a, b))
    assert id_number_hash(ra, KEY) != id_number_hash(rb, KEY)


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("13812345678", "13812345678"),
        (" 138 1234 5678 ", "13812345678"),
        ("138-1234-5678", "13812345678"),
        ("+8613812345678", "13812345678"),
        ("8619912345678", "19912345678"),
        ("008615012345678", "15012345678"),
    ],
)
def test_mobile_numbers_as_people_type_them(text: str, number: str) -> None:
    assert parse_mobile(text).number == number


@pytest.mark.parametrize(
    "text",
    ["12812345678", "1381234567", "138123456789", "23812345678", "1381234567a", "", "١٣٨١٢٣٤٥٦٧٨", "+1 415 555 0100"],
)
def test_malformed_mobile_numbers_are_refused(text: str) -> None:
    assert code_of(lambda: parse_mobile(text)) is Code.E_MOBILE_FORMAT


def test_a_mobile_number_is_masked_to_carrier_prefix_and_last_four() -> None:
    assert parse_mobile("13812345678").masked == "138****5678"


@pytest.mark.parametrize(
    ("name", "masked"),
    [
        ("张三", "张*"),
        ("张三丰", "张**"),
        ("欧阳娜娜", "欧阳**"),
        ("欧阳修", "欧阳*"),
        ("司马光", "司马*"),
        ("欧阳", "欧*"),  # a two-character name is a surname and a given name
        ("阿依古丽·买买提", "阿***·***"),
        ("李", "*"),
        ("Li Lei", "L* ***"),
    ],
)
def test_real_names_are_masked_keeping_the_surname(name: str, masked: str) -> None:
    assert mask_real_name(name) == masked
    assert parse_real_name(name).masked == masked


def test_real_names_are_kept_as_given() -> None:
    assert parse_real_name(" 欧阳娜娜 ").value == "欧阳娜娜"
    assert parse_real_name("Zoë d'Arc").value == "Zoë d'Arc"


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("", Code.E_REAL_NAME_EMPTY),
        ("   ", Code.E_REAL_NAME_EMPTY),
        ("张" * 65, Code.E_REAL_NAME_TOO_LONG),
        ("张\u200b三", Code.E_REAL_NAME_CHARACTERS),  # zero-width space
        ("张\u202e三", Code.E_REAL_NAME_CHARACTERS),  # right-to-left override
        ("张\x00三", Code.E_REAL_NAME_CHARACTERS),
        ("张\n三", Code.E_REAL_NAME_CHARACTERS),
    ],
)
def test_bad_real_names_are_refused(text: str, code: Code) -> None:
    assert code_of(lambda: parse_real_name(text)) is code


@given(st.text(min_size=1, max_size=20))
def test_masking_never_reveals_more_than_two_leading_characters(name: str) -> None:
    masked = mask_real_name(name)
    assert len(masked) == len(name)
    assert all(m in (c, "*") for m, c in zip(masked, name, strict=True))
    revealed = [i for i, (m, c) in enumerate(zip(masked, name, strict=True)) if m == c and c not in "·• -*"]
    assert all(i < 2 for i in revealed)
