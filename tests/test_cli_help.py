"""Every ``yikatong`` command, at every depth, answers ``--help`` with exit code 0 and its usage line.

The commands are discovered, not listed: ``typer.main.get_command(app)`` gives the click
group typer builds, and every group in it is walked recursively through click's own
``list_commands``/``get_command`` (what ``--help`` and dispatch use, so a lazily loaded
command is found too). A command or sub-app added later is covered without touching this
file. Typer may vendor its own click, so groups are recognised by shape, not by class.
"""

from __future__ import annotations

from typing import Any

import pytest
import typer
import typer.main
from typer.testing import CliRunner

from yikatong.cli import app

Path = tuple[str, ...]


def is_group(command: Any) -> bool:
    return callable(getattr(command, "list_commands", None)) and callable(getattr(command, "get_command", None))


def command_paths(command: Any, prefix: Path = ()) -> list[Path]:
    """``prefix`` and the path of every command below it, depth first, in click's order."""
    paths = [prefix]
    if is_group(command):
        ctx = command.context_class(command, info_name=prefix[-1] if prefix else command.name)
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            assert sub is not None, f"{' '.join((*prefix, name))!r} is listed but cannot be loaded"
            paths.extend(command_paths(sub, (*prefix, name)))
    return paths


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None  # typer leaves a DefaultPlaceholder when unset


def registered_paths(typer_app: typer.Typer, prefix: Path = ()) -> set[Path]:
    """The same tree from the other side: what was registered on the typer apps themselves."""
    out = {prefix}
    for info in typer_app.registered_commands:
        assert info.callback is not None
        out.add((*prefix, _text(info.name) or typer.main.get_command_name(info.callback.__name__)))
    for group in typer_app.registered_groups:
        sub = group.typer_instance
        assert sub is not None
        callback = sub.registered_callback.callback if sub.registered_callback else None
        name = (
            _text(group.name) or _text(sub.info.name) or (callback and typer.main.get_command_name(callback.__name__))
        )
        assert name, f"a sub-app under {prefix} has no name"
        out |= registered_paths(sub, (*prefix, name))
    return out


def help_of(cli: typer.Typer, path: Path) -> Any:
    return CliRunner().invoke(cli, [*path, "--help"])


def usage_tokens(output: str) -> list[str]:
    """The words of the first ``Usage:`` line (plain or rich-boxed help)."""
    for line in output.splitlines():
        words = line.strip(" │").split()
        if words and words[0] == "Usage:":
            return words
    return []


ROOT = typer.main.get_command(app)
PATHS = command_paths(ROOT)


def test_the_walk_finds_every_registered_command() -> None:
    assert len(PATHS) == len(set(PATHS))
    assert registered_paths(app) <= set(PATHS)


def test_the_cli_has_the_architecture_commands() -> None:
    assert {("init",), ("serve",), ("clear",), ("demo",), ("card",), ("keys",), ("terminal",)} <= set(PATHS)
    assert {
        ("card", "issue"),
        ("card", "emulate"),
        ("card", "show"),
        ("terminal", "register"),
        ("terminal", "psam"),
        ("terminal", "run"),
        ("denylist", "add"),
        ("denylist", "remove"),
        ("denylist", "list"),
        ("exceptions", "list"),
        ("keys", "init"),
        ("keys", "import"),
        ("keys", "rotate"),
        ("keys", "list"),
    } <= set(PATHS)


def test_the_walk_reaches_any_depth_and_hidden_commands() -> None:
    """The walker itself, on a tree deeper than the real one (so a walk that stopped at the
    first level, or skipped hidden commands, fails here and not silently on the CLI)."""
    leaf = typer.Typer()
    leaf.command("deep")(lambda: None)
    leaf.command("secret", hidden=True)(lambda: None)
    middle = typer.Typer()
    middle.command("one")(lambda: None)
    middle.add_typer(leaf, name="leaf")
    top = typer.Typer()
    top.command("alone")(lambda: None)
    top.add_typer(middle, name="middle")
    expected = {
        (),
        ("alone",),
        ("middle",),
        ("middle", "one"),
        ("middle", "leaf"),
        ("middle", "leaf", "deep"),
        ("middle", "leaf", "secret"),
    }
    found = command_paths(typer.main.get_command(top))
    assert set(found) == expected and len(found) == len(expected)
    assert registered_paths(top) == expected
    for path in found:
        result = help_of(top, path)
        assert result.exit_code == 0, result.output
        assert usage_tokens(result.output)[2 : 2 + len(path)] == list(path), result.output


@pytest.mark.parametrize("path", PATHS, ids=lambda p: " ".join(p) or "yikatong")
def test_every_command_has_help(path: Path) -> None:
    result = help_of(app, path)
    assert result.exit_code == 0, result.output
    # "Usage: yikatong <the command path> ...": this command's help, not a parent's or an error
    assert usage_tokens(result.output)[: 2 + len(path)] == ["Usage:", "yikatong", *path], result.output
