"""Running ``yikatong`` in-process for the CLI tests."""

from __future__ import annotations

from typer.testing import CliRunner, Result

from yikatong.cli import app


def run(*args: str, columns: int = 80) -> Result:
    """``yikatong ARGS`` in-process, ``columns`` wide (``result.stdout`` and ``result.stderr`` kept apart)."""
    return CliRunner().invoke(app, list(args), env={"COLUMNS": str(columns)})
