"""Every ``yikatong`` command, at every depth, answers --help with exit code 0."""

from __future__ import annotations

import pytest
import typer.main
from typer.testing import CliRunner

from yikatong.cli import app


def command_paths(group: object, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = [prefix]
    # typer may vendor its own click, so walk groups by shape rather than by class
    subcommands: dict[str, object] = getattr(group, "commands", {})
    for name, sub in subcommands.items():
        paths.extend(command_paths(sub, (*prefix, name)))
    return paths


ROOT = typer.main.get_command(app)
PATHS = command_paths(ROOT)


def test_the_cli_has_the_architecture_commands() -> None:
    names = {p[0] for p in PATHS if p}
    assert {"init", "card", "keys", "terminal", "demo"} <= names


@pytest.mark.parametrize("path", PATHS, ids=lambda p: " ".join(p) or "yikatong")
def test_every_command_has_help(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output
