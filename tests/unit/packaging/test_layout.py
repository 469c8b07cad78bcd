"""Mechanical gates on the layout (STYLE.md 14): every module under ``appliance/`` has a test
module: one named after it (``test_<name>.py``, or ``test_<x>_<name>.py`` ...) or one that
imports it by its full name. The allow-list holds the modules that had none when this gate
was added; it can only shrink (a listed module that gains a test must leave it)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
PACKAGE = ROOT / "appliance"
TESTS = ROOT / "tests"

# Modules without a test module of their own (tested only through others, or declarations).
ALLOWED_WITHOUT_TESTS = frozenset(
    {
        "appliance.approvals.errors",
        "appliance.capture._errors",
        "appliance.masking._counts",
        "appliance.masking._masker",  # through the package: test_values, test_copy ...
        "appliance.policy._builtins",
        "appliance.policy._functions",
        "appliance.proxy.flows",
    }
)


def _modules() -> set[str]:
    out = set()
    for path in PACKAGE.rglob("*.py"):
        if path.name == "__init__.py":
            continue
        out.add(".".join(path.relative_to(ROOT).with_suffix("").parts))
    return out


def _tested(modules: set[str]) -> set[str]:
    """The modules a test module is named after or imports by name."""
    stems = {p.stem for p in TESTS.rglob("test_*.py")}
    imported = _imported_by_tests()
    out = set()
    for module in modules:
        name = module.rsplit(".", 1)[-1].lstrip("_")
        named = any(
            stem == f"test_{name}" or stem.startswith(f"test_{name}_") or f"_{name}" in stem[4:]
            for stem in stems
        )
        if named or module in imported:
            out.add(module)
    return out


def _imported_by_tests() -> set[str]:
    names: set[str] = set()
    for path in TESTS.rglob("*.py"):
        if not (path.name.startswith("test_") or path.name.startswith("bench_")):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
                names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_every_module_has_a_test_module() -> None:
    modules = _modules()
    untested = modules - _tested(modules)
    new = sorted(untested - ALLOWED_WITHOUT_TESTS)
    assert not new, f"modules without a test module that imports them: {new}"


def test_the_allow_list_only_shrinks() -> None:
    modules = _modules()
    untested = modules - _tested(modules)
    stale = sorted(ALLOWED_WITHOUT_TESTS - untested)
    assert not stale, (
        f"these modules have tests now (or are gone): remove them from the list: {stale}"
    )
