"""The slow tier's lists name tests that exist, so a rename cannot move a test to the fast tier unnoticed."""

from __future__ import annotations

import ast
from pathlib import Path

from tiers import SLOW_MODULES, SLOW_TESTS, SOLO

TESTS = Path(__file__).resolve().parent


def _test_functions(module: Path) -> set[str]:
    tree = ast.parse(module.read_text())
    return {n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}


def test_every_slow_module_exists() -> None:
    assert sorted(m for m in SLOW_MODULES if not (TESTS / m).is_file()) == []


def test_every_slow_test_exists() -> None:
    missing = []
    for entry in sorted(SLOW_TESTS):
        module, _, name = entry.partition("::")
        name = name.partition("[")[0]
        path = TESTS / module
        if not path.is_file() or name not in _test_functions(path):
            missing.append(entry)
    assert missing == [], "tests/tiers.py names tests that do not exist"


def test_every_solo_test_is_slow_and_exists() -> None:
    """A solo test runs only in the slow tier's last, serial step: it must be slow too."""
    for entry in SOLO:
        module = entry.partition("::")[0]
        assert module in SLOW_MODULES or entry in SLOW_TESTS, entry
        assert (TESTS / module).is_file(), entry
