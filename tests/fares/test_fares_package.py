"""The package boundary: ``fares`` is pure and imports only ``cardos`` and the standard library,
so that ``terminals`` and ``clearing`` may both import it (``docs/fares.md``, "Who imports fares")."""

from __future__ import annotations

import ast
import importlib.util
import sys
import tomllib
from pathlib import Path

import fares
from fares import EXAMPLE_TARIFF_DIR

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = Path(fares.__file__).resolve().parent
ALLOWED = frozenset({"cardos", "fares", "__future__"}) | frozenset(sys.stdlib_module_names)


def _imported_modules(path: Path) -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text("utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path.name}:{node.lineno}: relative import; write fares.<module>"
            assert node.module is not None
            found.append((node.lineno, node.module))
    return found


def test_fares_imports_only_cardos_and_the_standard_library() -> None:
    modules = sorted(PACKAGE.rglob("*.py"))
    assert {path.name for path in modules} >= {"engine.py", "refund.py", "book.py", "cleared.py"}
    wrong = [
        f"{path.relative_to(ROOT)}:{line}: {name}"
        for path in modules
        for line, name in _imported_modules(path)
        if name.split(".")[0] not in ALLOWED
    ]
    assert wrong == []


def test_the_engine_lives_at_the_top_level_only() -> None:
    assert PACKAGE == ROOT / "fares"
    assert importlib.util.find_spec("terminals.fares") is None  # no compatibility shim
    assert EXAMPLE_TARIFF_DIR.is_relative_to(PACKAGE) and (EXAMPLE_TARIFF_DIR / "yikatong_codes.csv").is_file()


def test_the_package_and_its_tariff_files_ship() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))
    assert "fares*" in project["tool"]["setuptools"]["packages"]["find"]["include"]
    assert "*.csv" in project["tool"]["setuptools"]["package-data"]["*"]
    assert "fares" in project["tool"]["mypy"]["files"]
