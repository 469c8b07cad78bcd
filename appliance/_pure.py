"""Which build of the hot path runs: compiled (mypyc) or pure Python.

``scripts/compile.py`` compiles the hot modules in place, an extension beside each ``.py``;
Python imports the extension first. With ``APPLIANCE_PURE=1`` in the environment (``make
test-pure``, the benchmark's pure-Python setup) :func:`install` puts a finder first on
``sys.meta_path`` that imports this package's modules from their ``.py`` sources only, so the
same tree runs as the pure-Python build. Child processes (the ledger writer) inherit the
variable, and so the build.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery as machinery
import os
import sys
from collections.abc import Sequence
from types import ModuleType

ENV = "APPLIANCE_PURE"


class _SourcesOnly(importlib.abc.MetaPathFinder):
    """Finds ``appliance.*`` modules among ``.py`` (and cached bytecode) files only."""

    def __init__(self) -> None:
        self._finders: dict[str, machinery.FileFinder] = {}

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> machinery.ModuleSpec | None:
        if not fullname.startswith("appliance.") or path is None:
            return None
        for entry in path:
            finder = self._finders.get(entry)
            if finder is None:
                finder = self._finders[entry] = machinery.FileFinder(
                    entry,
                    (machinery.SourceFileLoader, machinery.SOURCE_SUFFIXES),
                    (machinery.SourcelessFileLoader, machinery.BYTECODE_SUFFIXES),
                )
            spec = finder.find_spec(fullname)
            if spec is not None:
                return spec
        return None


def install() -> None:
    """Import the pure-Python build from here on if ``APPLIANCE_PURE`` is set (not "0")."""
    if os.environ.get(ENV, "0") not in ("", "0") and not any(
        isinstance(f, _SourcesOnly) for f in sys.meta_path
    ):
        sys.meta_path.insert(0, _SourcesOnly())


def build(module: ModuleType) -> str:
    """ "compiled" if ``module`` is an extension (mypyc), else "pure"."""
    path = getattr(module, "__file__", None) or ""
    return "pure" if path.endswith((".py", ".pyc")) else "compiled"
