"""Loading a tariff: the example loads; every kind of bad file is refused with file, line and column."""

from __future__ import annotations

from pathlib import Path

import pytest

from fares import EXAMPLE_TARIFF_DIR, TariffError, load_example_tariff, load_tariff, loader, parse_tariff


def example_files() -> dict[str, str]:
    return {path.name: path.read_text("utf-8") for path in sorted(EXAMPLE_TARIFF_DIR.glob("*.csv"))}


def test_example_tariff_loads_with_its_parts() -> None:
    tariff = load_example_tariff()
    assert tariff.default_rider_category_id == "adult"
    assert tariff.card_fare_media_id == "yikatong"
    assert tariff.route_codes["K26"] == 1026
    assert tariff.routes_by_code[9001] == "ic1"
    assert tariff.daily_caps == {"adult": 1000, "student": 500, "senior": 500}
    assert tariff.leg_rules_prioritised
    assert tariff.acquirer_city == bytes.fromhex("7120")
    # Cash rows are another media: not what a card tap pays.
    assert tariff.price_fen("urban_1y", "student") == 50
    assert tariff.price_fen("senior_off_peak_free", "adult") is None


def test_example_directory_says_its_values_are_examples() -> None:
    readme = (EXAMPLE_TARIFF_DIR / "README.md").read_text("utf-8")
    assert "example values" in readme.lower()


def test_amounts_are_exact_fen_never_floats() -> None:
    files = example_files()
    files["fare_products.csv"] += "odd,Odd,,,0.10,CNY\nodd2,Odd,,,0.2,CNY\nbig,Big,,,1234.56,CNY\n"
    tariff = parse_tariff(files)
    assert [tariff.price_fen(product, None) for product in ("odd", "odd2", "big")] == [10, 20, 123456]
    assert all(type(amount) is int for amount in tariff.card_prices.values())


def test_a_negative_transfer_product_is_a_discount_and_loads() -> None:
    files = example_files()
    files["fare_products.csv"] += "transfer_discount,Transfer discount,,,-0.50,CNY\n"
    files["fare_transfer_rules.csv"] += "intercity,urban,,,,1,transfer_discount\n"
    assert parse_tariff(files).price_fen("transfer_discount", "adult") == -50


def _append(file: str, text: str) -> tuple[str, str | None, str]:
    return (file, None, text)


def _replace(file: str, old: str, new: str) -> tuple[str, str | None, str]:
    return (file, old, new)


BAD = [
    # (name, edit, code, file, line, column, words in the message)
    (
        "too many decimals",
        _replace(
            "fare_products.csv",
            "urban_1y,Urban bus 1 CNY route,adult,yikatong,1.00",
            "urban_1y,Urban bus 1 CNY route,adult,yikatong,1.005",
        ),
        loader.E_BAD_AMOUNT,
        "fare_products.csv",
        2,
        "amount",
        "3 decimal places",
    ),
    (
        "not a number",
        _replace("fare_products.csv", "adult,yikatong,1.00", "adult,yikatong,one"),
        loader.E_BAD_AMOUNT,
        "fare_products.csv",
        2,
        "amount",
        "'one'",
    ),
    (
        "exponent",
        _replace("fare_products.csv", "adult,yikatong,1.00", "adult,yikatong,1e2"),
        loader.E_BAD_AMOUNT,
        "fare_products.csv",
        2,
        "amount",
        "'1e2'",
    ),
    (
        "negative leg fare",
        _replace("fare_products.csv", "adult,yikatong,1.00", "adult,yikatong,-1.00"),
        loader.E_NEGATIVE_AMOUNT,
        "fare_products.csv",
        2,
        "amount",
        "only a product used solely as a transfer",
    ),
    (
        "other currency",
        _replace("fare_products.csv", "adult,yikatong,1.00,CNY", "adult,yikatong,1.00,USD"),
        loader.E_BAD_CURRENCY,
        "fare_products.csv",
        2,
        "currency",
        "'USD'",
    ),
    (
        "more than a purse holds",
        _append("fare_products.csv", "huge,Huge,,,10000.01,CNY\n"),
        loader.E_OUT_OF_RANGE,
        "fare_products.csv",
        20,
        "amount",
        "more than a purse",
    ),
    (
        "duplicate product row",
        _append("fare_products.csv", "urban_1y,Again,adult,yikatong,2.00,CNY\n"),
        loader.E_DUPLICATE_KEY,
        "fare_products.csv",
        20,
        None,
        "first defined on line 2",
    ),
    (
        "unknown category in a product",
        _append("fare_products.csv", "x,X,child,,1.00,CNY\n"),
        loader.E_UNKNOWN_REFERENCE,
        "fare_products.csv",
        20,
        "rider_category_id",
        "'child' (not in rider_categories.csv)",
    ),
    (
        "unknown product in a leg rule",
        _append("fare_leg_rules.csv", "urban,urban_1y,,,,,urban_3y,0\n"),
        loader.E_UNKNOWN_REFERENCE,
        "fare_leg_rules.csv",
        15,
        "fare_product_id",
        "'urban_3y' (not in fare_products.csv)",
    ),
    (
        "unknown network in a leg rule",
        _append("fare_leg_rules.csv", "urban,metro,,,,,urban_1y,0\n"),
        loader.E_UNKNOWN_REFERENCE,
        "fare_leg_rules.csv",
        15,
        "network_id",
        "'metro'",
    ),
    (
        "unknown area in a leg rule",
        _append("fare_leg_rules.csv", "intercity,intercity,zone9,zone1,,,ic_1zone,0\n"),
        loader.E_UNKNOWN_REFERENCE,
        "fare_leg_rules.csv",
        15,
        "from_area_id",
        "'zone9'",
    ),
    (
        "unknown timeframe in a leg rule",
        _append("fare_leg_rules.csv", "urban,urban_1y,,,night,,urban_1y,0\n"),
        loader.E_UNKNOWN_REFERENCE,
        "fare_leg_rules.csv",
        15,
        "from_timeframe_group_id",
        "'night'",
    ),
    (
        "negative rule priority",
        _append("fare_leg_rules.csv", "urban,urban_1y,,,,,urban_2y,-1\n"),
        loader.E_OUT_OF_RANGE,
        "fare_leg_rules.csv",
        15,
        "rule_priority",
        "-1",
    ),
    (
        "duplicate leg rule",
        _append("fare_leg_rules.csv", "other,urban_1y,,,,,urban_1y,3\n"),
        loader.E_DUPLICATE_KEY,
        "fare_leg_rules.csv",
        15,
        None,
        "first defined on line 4",
    ),
    (
        "missing required column",
        _replace("fare_leg_rules.csv", ",fare_product_id,", ",product,"),
        loader.E_MISSING_COLUMN,
        "fare_leg_rules.csv",
        1,
        "fare_product_id",
        "required column",
    ),
    (
        "unknown column",
        _replace("fare_leg_rules.csv", ",rule_priority", ",rule_prority"),
        loader.E_UNKNOWN_COLUMN,
        "fare_leg_rules.csv",
        1,
        "rule_prority",
        "unknown column",
    ),
    (
        "row with too few fields",
        _append("fare_leg_rules.csv", "urban,urban_1y\n"),
        loader.E_BAD_ROW,
        "fare_leg_rules.csv",
        15,
        None,
        "has 2 fields, the header has 8",
    ),
    (
        "value with spaces",
        _replace("route_networks.csv", "urban_2y,K26", "urban_2y, K26"),
        loader.E_BAD_VALUE,
        "route_networks.csv",
        5,
        "route_id",
        "spaces",
    ),
    (
        "route without a card code",
        _append("route_networks.csv", "urban_1y,33\n"),
        loader.E_UNKNOWN_REFERENCE,
        "route_networks.csv",
        7,
        "route_id",
        "'33' (not in yikatong_codes.csv)",
    ),
    (
        "route in two networks",
        _append("route_networks.csv", "urban_2y,1\n"),
        loader.E_DUPLICATE_KEY,
        "route_networks.csv",
        7,
        None,
        "route_id=1",
    ),
    (
        "stop without a card code",
        _append("stop_areas.csv", "zone1,nowhere\n"),
        loader.E_UNKNOWN_REFERENCE,
        "stop_areas.csv",
        7,
        "stop_id",
        "'nowhere'",
    ),
    (
        "card code too big",
        _append("yikatong_codes.csv", "route,2,70000\n"),
        loader.E_OUT_OF_RANGE,
        "yikatong_codes.csv",
        17,
        "code",
        "1..65534",
    ),
    (
        "card code zero",
        _append("yikatong_codes.csv", "route,2,0\n"),
        loader.E_OUT_OF_RANGE,
        "yikatong_codes.csv",
        17,
        "code",
        "0 is outside",
    ),
    (
        "card code not an integer",
        _append("yikatong_codes.csv", "route,2,two\n"),
        loader.E_BAD_INTEGER,
        "yikatong_codes.csv",
        17,
        "code",
        "'two'",
    ),
    (
        "card code used twice",
        _append("yikatong_codes.csv", "route,2,1026\n"),
        loader.E_DUPLICATE_KEY,
        "yikatong_codes.csv",
        17,
        "code",
        "route code 1026 is already 'K26' on line 5",
    ),
    (
        "gtfs id coded twice",
        _append("yikatong_codes.csv", "route,K26,2026\n"),
        loader.E_DUPLICATE_KEY,
        "yikatong_codes.csv",
        17,
        None,
        "gtfs_id=K26",
    ),
    (
        "unknown code kind",
        _append("yikatong_codes.csv", "vehicle,bus7,7\n"),
        loader.E_BAD_ENUM,
        "yikatong_codes.csv",
        17,
        "kind",
        "route or stop",
    ),
    (
        "transfer count missing for the same group",
        _replace("fare_transfer_rules.csv", "urban,urban,1,", "urban,urban,,"),
        loader.E_MISSING_VALUE,
        "fare_transfer_rules.csv",
        2,
        "transfer_count",
        "required when",
    ),
    (
        "transfer count forbidden across groups",
        _append("fare_transfer_rules.csv", "urban,intercity,1,,,0,\n"),
        loader.E_CONFLICT,
        "fare_transfer_rules.csv",
        3,
        "transfer_count",
        "forbidden",
    ),
    (
        "transfer count zero",
        _replace("fare_transfer_rules.csv", "urban,urban,1,", "urban,urban,0,"),
        loader.E_OUT_OF_RANGE,
        "fare_transfer_rules.csv",
        2,
        "transfer_count",
        "-1 (no limit)",
    ),
    (
        "duration limit without a type",
        _replace("fare_transfer_rules.csv", ",3600,1,", ",3600,,"),
        loader.E_MISSING_VALUE,
        "fare_transfer_rules.csv",
        2,
        "duration_limit_type",
        "required when duration_limit",
    ),
    (
        "duration limit type out of range",
        _replace("fare_transfer_rules.csv", ",3600,1,", ",3600,4,"),
        loader.E_BAD_ENUM,
        "fare_transfer_rules.csv",
        2,
        "duration_limit_type",
        "'4'",
    ),
    (
        "fare transfer type out of range",
        _replace("fare_transfer_rules.csv", ",3600,1,0,", ",3600,1,3,"),
        loader.E_BAD_ENUM,
        "fare_transfer_rules.csv",
        2,
        "fare_transfer_type",
        "2 (ab)",
    ),
    (
        "unknown leg group in a transfer",
        _append("fare_transfer_rules.csv", "urban,metro,,,,0,\n"),
        loader.E_UNKNOWN_REFERENCE,
        "fare_transfer_rules.csv",
        3,
        "to_leg_group_id",
        "'metro'",
    ),
    (
        "bad duration",
        _replace("fare_transfer_rules.csv", ",3600,1,", ",1h,1,"),
        loader.E_BAD_INTEGER,
        "fare_transfer_rules.csv",
        2,
        "duration_limit",
        "'1h'",
    ),
    (
        "time after 24:00",
        _replace("timeframes.csv", "17:00:00", "25:00:00"),
        loader.E_BAD_TIME,
        "timeframes.csv",
        2,
        "end_time",
        "after 24:00:00",
    ),
    (
        "start time alone",
        _replace("timeframes.csv", "09:00:00,17:00:00", "09:00:00,"),
        loader.E_MISSING_VALUE,
        "timeframes.csv",
        2,
        "end_time",
        "go together",
    ),
    (
        "overlapping timeframes",
        _append("timeframes.csv", "senior_off_peak,16:00:00,18:00:00,weekdays\n"),
        loader.E_CONFLICT,
        "timeframes.csv",
        3,
        "start_time",
        "overlaps the interval on line 2",
    ),
    (
        "unknown service",
        _append("timeframes.csv", "senior_off_peak,18:00:00,19:00:00,holidays\n"),
        loader.E_UNKNOWN_REFERENCE,
        "timeframes.csv",
        3,
        "service_id",
        "'holidays'",
    ),
    (
        "bad calendar date",
        _replace("calendar.csv", "20351231", "20351331"),
        loader.E_BAD_DATE,
        "calendar.csv",
        2,
        "end_date",
        "YYYYMMDD",
    ),
    (
        "two default categories",
        _replace("rider_categories.csv", "student,Student,0", "student,Student,1"),
        loader.E_CONFLICT,
        "rider_categories.csv",
        3,
        "is_default_fare_category",
        "second default",
    ),
    (
        "no default category",
        _replace("rider_categories.csv", "adult,Adult,1", "adult,Adult,0"),
        loader.E_CONFLICT,
        "rider_categories.csv",
        None,
        "is_default_fare_category",
        "exactly one",
    ),
    (
        "two transit cards",
        _append("fare_media.csv", "changantong,Chang'an Tong,2\n"),
        loader.E_CONFLICT,
        "fare_media.csv",
        4,
        "fare_media_type",
        "exactly one card",
    ),
    (
        "cap of an unknown category",
        _append("yikatong_caps.csv", "child,3.00,CNY\n"),
        loader.E_UNKNOWN_REFERENCE,
        "yikatong_caps.csv",
        5,
        "rider_category_id",
        "'child'",
    ),
    (
        "negative cap",
        _replace("yikatong_caps.csv", "adult,10.00", "adult,-10.00"),
        loader.E_NEGATIVE_AMOUNT,
        "yikatong_caps.csv",
        2,
        "amount",
        "cannot be negative",
    ),
    (
        "unknown card type",
        _append("yikatong_card_types.csv", "disabled,senior\n"),
        loader.E_BAD_ENUM,
        "yikatong_card_types.csv",
        6,
        "card_type",
        "'disabled'",
    ),
    (
        "unknown setting",
        _append("yikatong_settings.csv", "transfer_minutes,60\n"),
        loader.E_BAD_ENUM,
        "yikatong_settings.csv",
        5,
        "key",
        "'transfer_minutes'",
    ),
    (
        "bad acquirer city",
        _replace("yikatong_settings.csv", "acquirer_city,7120", "acquirer_city,Xianyang"),
        loader.E_BAD_VALUE,
        "yikatong_settings.csv",
        3,
        "value",
        "2-byte city code",
    ),
    (
        "unclosed quote",
        _append("networks.csv", 'metro,"Metro\n'),
        loader.E_BAD_CSV,
        "networks.csv",
        None,
        None,
        "not valid CSV",
    ),
]


@pytest.mark.parametrize(
    ("edit", "code", "file", "line", "column", "words"),
    [case[1:] for case in BAD],
    ids=[case[0] for case in BAD],
)
def test_bad_file_is_refused_with_file_line_and_column(
    edit: tuple[str, str | None, str], code: str, file: str, line: int | None, column: str | None, words: str
) -> None:
    files = example_files()
    name, old, new = edit
    if old is None:
        files[name] += new
    else:
        assert old in files[name], f"the edit does not apply to {name}"
        files[name] = files[name].replace(old, new, 1)
    with pytest.raises(TariffError) as caught:
        parse_tariff(files, source="edited")
    problems = [problem for problem in caught.value.problems if problem.code == code]
    assert problems, f"expected {code}, got {[str(problem) for problem in caught.value.problems]}"
    problem = problems[0]
    if code != loader.E_BAD_CSV:
        assert (problem.file, problem.line, problem.column) == (file, line, column)
    else:
        assert problem.file == file and problem.line is not None
    assert words in problem.message
    assert f"{code}: {file}" in str(caught.value)


def test_message_names_file_line_and_column_in_one_sentence() -> None:
    files = example_files()
    files["fare_leg_rules.csv"] += "urban,urban_1y,,,,,urban_3y,0\n"
    with pytest.raises(TariffError) as caught:
        parse_tariff(files, source="xianyang")
    assert str(caught.value.problems[0]) == (
        "E_TARIFF_UNKNOWN_REFERENCE: fare_leg_rules.csv line 15, column fare_product_id: "
        "unknown fare_product_id 'urban_3y' (not in fare_products.csv)"
    )
    assert str(caught.value).startswith("tariff xianyang does not load (1 problem(s)):")


def test_every_problem_is_reported_not_just_the_first() -> None:
    files = example_files()
    files["fare_products.csv"] += "a,A,,,1.001,CNY\nb,B,,,x,CNY\n"
    files["yikatong_codes.csv"] += "stop,s,99999\n"
    with pytest.raises(TariffError) as caught:
        parse_tariff(files)
    assert len(caught.value.problems) == 3
    assert caught.value.codes == {loader.E_BAD_AMOUNT, loader.E_OUT_OF_RANGE}


def test_a_broken_table_does_not_cascade_into_unknown_references() -> None:
    files = example_files()
    files["fare_products.csv"] = files["fare_products.csv"].replace("currency", "money", 1)
    with pytest.raises(TariffError) as caught:
        parse_tariff(files)
    assert caught.value.codes == {loader.E_MISSING_COLUMN, loader.E_UNKNOWN_COLUMN}


@pytest.mark.parametrize("table", ["fare_products", "fare_leg_rules", "yikatong_codes"])
def test_required_file_missing(table: str) -> None:
    files = example_files()
    del files[f"{table}.csv"]
    with pytest.raises(TariffError) as caught:
        parse_tariff(files)
    assert [(p.code, p.file) for p in caught.value.problems] == [(loader.E_MISSING_FILE, f"{table}.csv")]


def test_reference_into_an_absent_optional_file_says_so() -> None:
    files = example_files()
    del files["networks.csv"], files["route_networks.csv"]
    with pytest.raises(TariffError) as caught:
        parse_tariff(files)
    assert "there is no networks file" in caught.value.problems[0].message


def test_gtfs_txt_names_are_accepted_but_not_both_names() -> None:
    files = example_files()
    files["networks.txt"] = files.pop("networks.csv")
    assert parse_tariff(files).networks["intercity"].startswith("Intercity 1")
    files["networks.csv"] = files["networks.txt"]
    with pytest.raises(TariffError) as caught:
        parse_tariff(files)
    assert caught.value.codes == {loader.E_DUPLICATE_FILE}


def test_unknown_table_file_is_refused() -> None:
    files = example_files()
    files["fare_product.csv"] = "fare_product_id,amount,currency\n"
    with pytest.raises(TariffError) as caught:
        parse_tariff(files)
    assert [(p.code, p.file) for p in caught.value.problems] == [(loader.E_UNKNOWN_FILE, "fare_product.csv")]


def test_load_tariff_reads_a_directory_with_a_bom(tmp_path: Path) -> None:
    for name, text in example_files().items():
        (tmp_path / name).write_text(("\ufeff" if name == "networks.csv" else "") + text, "utf-8")
    (tmp_path / "NOTES.md").write_text("not a table", "utf-8")
    assert load_tariff(tmp_path).networks["urban_1y"].startswith("Xianyang urban bus")


def test_load_tariff_refuses_a_file_that_is_not_utf8(tmp_path: Path) -> None:
    for name, text in example_files().items():
        (tmp_path / name).write_text(text, "utf-8")
    (tmp_path / "areas.csv").write_bytes(b"area_id,area_name\nzone1,\xd6\xd0\n")
    with pytest.raises(TariffError) as caught:
        load_tariff(tmp_path)
    problem = caught.value.problems[0]
    assert (problem.code, problem.file, problem.line) == (loader.E_BAD_ENCODING, "areas.csv", 2)


def test_load_tariff_refuses_a_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(TariffError) as caught:
        load_tariff(tmp_path / "nope")
    assert caught.value.codes == {loader.E_MISSING_FILE}
