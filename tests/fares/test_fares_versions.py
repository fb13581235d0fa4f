"""Tariff versions (``tariff_version`` or a content hash) and the ``TariffBook`` clearing looks them up in."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import msgspec
import pytest

from clearing.contract import FareInfo
from fares import (
    EXAMPLE_TARIFF_DIR,
    FareError,
    TariffBook,
    TariffError,
    UnknownTariffVersion,
    content_version,
    load_example_tariff,
    load_tariff,
    load_tariff_book,
    parse_tariff,
)
from fares.book import E_DUPLICATE_VERSION
from fares.errors import E_FARE_UNKNOWN_TARIFF_VERSION
from fares.loader import E_BAD_VALUE, E_MISSING_FILE, TARIFF_VERSION_LENGTH_MAX

CONTENT_VERSION = re.compile(r"sha256:[0-9a-f]{12}")


def example_files(*, version: str | None = "xianyang-2026.1") -> dict[str, str]:
    files = {path.name: path.read_text("utf-8") for path in sorted(EXAMPLE_TARIFF_DIR.iterdir()) if path.is_file()}
    settings = files["yikatong_settings.csv"].replace("tariff_version,xianyang-2026.1\n", "")
    files["yikatong_settings.csv"] = settings if version is None else settings + f"tariff_version,{version}\n"
    return files


def copy_example(target: Path, *, version: str | None, price: str = "2.00") -> Path:
    shutil.copytree(EXAMPLE_TARIFF_DIR, target)
    for name, text in example_files(version=version).items():
        if name == "fare_products.csv":
            text = text.replace(
                "Intercity within one zone,adult,yikatong,2.00", f"Intercity within one zone,adult,yikatong,{price}"
            )
        (target / name).write_text(text, "utf-8")
    return target


def test_the_example_tariff_names_its_version() -> None:
    assert load_example_tariff().version == "xianyang-2026.1"


def test_without_the_setting_the_version_is_a_stable_hash_of_the_tables() -> None:
    files = example_files(version=None)
    version = parse_tariff(files).version
    assert CONTENT_VERSION.fullmatch(version) and version == content_version(files)
    assert parse_tariff(dict(files), source="again").version == version  # same tables, same version
    assert parse_tariff({**files, "README.md": "other words"}).version == version  # not a table
    bom = {**files, "networks.csv": "\ufeff" + files["networks.csv"]}
    assert parse_tariff(bom).version == version  # the BOM is not content
    dearer = {**files, "fare_products.csv": files["fare_products.csv"].replace(",2.00,CNY", ",2.10,CNY", 1)}
    assert parse_tariff(dearer).version != version
    assert len(version) <= TARIFF_VERSION_LENGTH_MAX


def test_the_version_fits_the_wire_contract() -> None:
    for version in ("xianyang-2026.1", parse_tariff(example_files(version=None)).version, "v" * 64):
        fare = FareInfo("p", "adult", None, 100, 0, tap_kind="tap_off", tariff_version=version)
        assert msgspec.json.decode(msgspec.json.encode(fare), type=FareInfo) == fare


@pytest.mark.parametrize(
    "version",
    ["sha256:0123456789ab", "xianyang 2026", "-leading-dash", "v" * (TARIFF_VERSION_LENGTH_MAX + 1), " v1", "v1/2"],
)
def test_a_version_that_could_be_confused_or_not_travel_is_refused(version: str) -> None:
    with pytest.raises(TariffError) as caught:
        parse_tariff(example_files(version=version), source="edited")
    [problem] = caught.value.problems
    assert (problem.code, problem.file, problem.line, problem.column) == (
        E_BAD_VALUE,
        "yikatong_settings.csv",
        4,
        "value",
    )


def test_a_book_maps_versions_to_tariffs() -> None:
    current = load_example_tariff()
    older = parse_tariff(example_files(version="xianyang-2025.2"), source="older")
    book = TariffBook([current, older, current])  # the same tariff twice is kept once
    assert book.versions == ("xianyang-2025.2", "xianyang-2026.1") and len(book) == 2
    assert book["xianyang-2026.1"] is current and book["xianyang-2025.2"] is older
    assert "xianyang-2026.1" in book and "xianyang-2027.1" not in book
    assert book.get("xianyang-2027.1") is None and dict(book) == {v: book[v] for v in book.versions}
    assert "xianyang-2025.2" in repr(book)
    assert len(TariffBook()) == 0


def test_an_unknown_version_is_a_fare_error_with_a_stable_code() -> None:
    book = TariffBook([load_example_tariff()])
    with pytest.raises(FareError) as caught:
        book["xianyang-1999.1"]
    error = caught.value
    assert isinstance(error, UnknownTariffVersion) and isinstance(error, KeyError)
    assert error.code == E_FARE_UNKNOWN_TARIFF_VERSION and error.version == "xianyang-1999.1"
    assert str(error).startswith("E_FARE_UNKNOWN_TARIFF_VERSION: tariff version 'xianyang-1999.1'")
    assert "'xianyang-2026.1'" in str(error)


def test_two_tariffs_with_one_version_are_refused() -> None:
    other = parse_tariff(example_files(), source="a copy")
    with pytest.raises(TariffError) as caught:
        TariffBook([load_example_tariff(), other])
    [problem] = caught.value.problems
    assert problem.code == E_DUPLICATE_VERSION and problem.file == "a copy" and "xianyang-2026.1" in problem.message


def test_a_book_loads_one_tariff_per_subdirectory(tmp_path: Path) -> None:
    copy_example(tmp_path / "2026.1", version="xianyang-2026.1")
    copy_example(tmp_path / "2025.2", version="xianyang-2025.2", price="1.80")
    unnamed = copy_example(tmp_path / "draft", version=None, price="2.20")
    (tmp_path / "README.md").write_text("tariffs in force and past", "utf-8")
    (tmp_path / ".staging").mkdir()
    book = load_tariff_book(tmp_path)
    hashed = load_tariff(unnamed).version
    assert set(book.versions) == {"xianyang-2026.1", "xianyang-2025.2", hashed}
    assert book["xianyang-2025.2"].price_fen("ic_1zone", "adult") == 180
    assert book[hashed].source == str(unnamed)


def test_every_problem_of_every_tariff_in_a_book_is_reported(tmp_path: Path) -> None:
    good = copy_example(tmp_path / "good", version="v1")
    broken = copy_example(tmp_path / "broken", version="v2")
    (broken / "fare_leg_rules.csv").unlink()
    copy_example(tmp_path / "same", version="v1")
    with pytest.raises(TariffError) as caught:
        load_tariff_book(tmp_path)
    assert [(p.code, p.file) for p in caught.value.problems] == [(E_MISSING_FILE, "broken/fare_leg_rules.csv")]
    (broken / "fare_leg_rules.csv").write_text((good / "fare_leg_rules.csv").read_text("utf-8"), "utf-8")
    with pytest.raises(TariffError) as caught:
        load_tariff_book(tmp_path)
    [problem] = caught.value.problems
    assert problem.code == E_DUPLICATE_VERSION and problem.file.endswith("same")


def test_a_book_directory_must_hold_tariff_directories(tmp_path: Path) -> None:
    with pytest.raises(TariffError, match="not a directory"):
        load_tariff_book(tmp_path / "missing")
    with pytest.raises(TariffError, match="no tariff directories"):
        load_tariff_book(tmp_path)
    with pytest.raises(TariffError, match="this is one tariff directory"):
        load_tariff_book(EXAMPLE_TARIFF_DIR)
