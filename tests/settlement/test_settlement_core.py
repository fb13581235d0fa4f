"""The core's boundary: pure modules with their own codes (docs/settlement.md, ARCHITECTURE.md flow 6)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import settlement
from clearing.contract.codes import Code
from settlement.errors import CODES, SettlementCode

PACKAGE = Path(settlement.__file__).resolve().parent
CORE = ("errors.py", "fees.py", "bank.py", "sharing.py", "payouts.py")
# No database, socket, HTTP or clock library in the core; xmlschema is imported lazily to validate,
# and ``clearing.errors`` (the shared error base, itself pure) is the one clearing module it uses.
ALLOWED = frozenset({"settlement", "__future__", "xmlschema", "clearing.errors"}) | frozenset(sys.stdlib_module_names)
FORBIDDEN_STDLIB = frozenset({"socket", "sqlite3", "time", "random", "secrets", "urllib", "http"})


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            top = node.module.split(".")[0]
            names.add(node.module if top == "clearing" else top)
    return names


def test_the_core_imports_no_database_clock_or_network() -> None:
    for name in CORE:
        imported = _imports(PACKAGE / name)
        assert imported <= ALLOWED, (name, imported - ALLOWED)
        assert not imported & FORBIDDEN_STDLIB, (name, imported & FORBIDDEN_STDLIB)


def test_no_settlement_code_repeats_a_clearing_code_and_every_code_has_a_meaning() -> None:
    assert not {c.value for c in SettlementCode} & {c.value for c in Code}
    assert set(CODES) == set(SettlementCode)


def test_the_core_never_reads_the_clock() -> None:
    for name in CORE:
        source = (PACKAGE / name).read_text("utf-8")
        assert ".now(" not in source and "utcnow" not in source and "today(" not in source, name
