"""``yikatong terminal run`` refusals that need no readers: a mistyped journal path."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from yikatong.cli import app

BASE = ["terminal", "run", "--card-reader", "No Such Reader", "--sam-reader", "Nor This"]
BASE += ["--route", "K26", "--stop", "u_city_hall"]


def test_a_journal_in_a_directory_that_does_not_exist_is_refused_and_nothing_is_made(tmp_path: Path) -> None:
    typo = tmp_path / "vra" / "terminal-journal.db"
    result = CliRunner().invoke(app, [*BASE, "--journal", str(typo)])
    assert result.exit_code == 1
    assert "E_JOURNAL_PATH" in result.output and str(typo.parent) in result.output
    assert not typo.parent.exists()


def test_a_directory_given_as_the_journal_is_refused(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, [*BASE, "--journal", str(tmp_path)])
    assert result.exit_code == 1 and "E_JOURNAL_PATH" in result.output


def test_a_new_journal_file_in_an_existing_directory_passes_the_path_check(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, [*BASE, "--journal", str(tmp_path / "new.db")])
    assert "E_JOURNAL_PATH" not in result.output  # it goes on to the readers (absent here)
    assert result.exit_code == 1 and "E_READER_NOT_FOUND" in result.output


def test_the_default_journal_directory_is_not_made_before_the_readers_are_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, BASE)
    assert result.exit_code == 1 and "E_READER_NOT_FOUND" in result.output
    assert not (tmp_path / "var").exists()


@pytest.mark.parametrize(
    ("place", "named", "listed"),
    [
        (["--route", "K99", "--stop", "u_city_hall"], "'K99'", "K26"),
        (["--route", "K26", "--stop", "nowhere"], "'nowhere'", "u_city_hall"),
    ],
)
def test_an_unknown_route_or_stop_is_refused_with_the_valid_ones(
    tmp_path: Path, place: list[str], named: str, listed: str
) -> None:
    args = ["terminal", "run", "--card-reader", "No Such Reader", "--sam-reader", "Nor This", *place]
    result = CliRunner().invoke(app, [*args, "--journal", str(tmp_path / "j.db")])
    assert result.exit_code == 1 and "E_FARE_UNKNOWN_PLACE" in result.output
    assert named in result.output and listed in result.output
