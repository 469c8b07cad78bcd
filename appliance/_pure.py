"""Which build of the hot path runs: compiled (mypyc) or pure Python.

``scripts/compile.py`` compiles the hot modules in place, an extension beside each ``.py``;
Python imports the extension first. With ``APPLIANCE_PURE=1`` in the environment (``make
test-pure``, the benchmark's pure-Python setup) :func:`install` puts a finder first on
``sys.meta_path`` that imports this package's modules from their ``.py`` sources only, so the
same tree runs as the pure-Python build. Child processes (the ledger writer) inherit the
variable, and so the build.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery as machinery
import os
import sys
import sysconfig
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

ENV = "APPLIANCE_PURE"
ASKED = f"{ENV} is set"  # running()'s why when the environment asked for the pure build
# The modules scripts/compile.py compiles (the hot path), and the digest of their sources it
# records beside the extensions: an extension older than its source is never imported.
HOT_MODULES = (
    "appliance/protocols/postgres/_framing.py",
    "appliance/protocols/postgres/messages.py",
    "appliance/protocols/postgres/client.py",
    "appliance/protocols/postgres/server.py",
    "appliance/ledger/pending.py",
    "appliance/ledger/entries.py",
    "appliance/ledger/_framing.py",
    "appliance/ledger/merkle.py",
    "appliance/ledger/_entry_log.py",
    "appliance/ledger/sender.py",
    "appliance/ledger/result_sink.py",
    "appliance/ledger/writer.py",
    "appliance/masking/_counts.py",
    "appliance/masking/_prefilter.py",
    "appliance/masking/_scan.py",
    "appliance/masking/_detectors.py",
    "appliance/masking/_phone.py",
    "appliance/masking/_validate.py",
    "appliance/masking/_copy.py",
    "appliance/masking/postgres.py",
    "appliance/proxy/statement_policy.py",
    "appliance/proxy/records.py",
    "appliance/proxy/pg/relay.py",
    "appliance/proxy/pg/hooks.py",
    "appliance/proxy/pg/rows.py",
    "appliance/proxy/pg/recording.py",
    "appliance/proxy/pg/core.py",
    "appliance/protocols/mysql/_wire.py",
    "appliance/protocols/mysql/messages.py",
    "appliance/protocols/mysql/job.py",
    "appliance/protocols/mysql/upstream.py",
    "appliance/masking/mysql.py",
    "appliance/proxy/mysql/relay.py",
    "appliance/proxy/mysql/hooks.py",
    "appliance/proxy/mysql/recording.py",
    "appliance/proxy/mysql/core.py",
)
ROOT = Path(__file__).resolve().parent.parent
SOURCES_DIGEST = ROOT / "build" / "compiled.sources"


def sources_digest() -> str:
    """SHA-256 over the hot modules' names and sources, as they are now."""
    h = hashlib.sha256()
    for module in HOT_MODULES:
        h.update(module.encode() + (ROOT / module).read_bytes())
    return h.hexdigest()


def _extension(module: str) -> Path:
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    return (ROOT / module.removesuffix(".py")).with_suffix(suffix)


def stale() -> bool:
    """True if a compiled extension of the hot path exists but was built from other
    sources (edited since ``make setup``): importing it would run old code."""
    if not any(_extension(m).exists() for m in HOT_MODULES):
        return False
    try:
        return SOURCES_DIGEST.read_text().strip() != sources_digest()
    except OSError:
        return True


def _missing() -> list[str]:
    """The hot modules without a compiled extension beside them."""
    return [m for m in HOT_MODULES if not _extension(m).exists()]


NOT_COMPILED = "the hot path is not compiled here (scripts/compile.py has not run)"
# What install() decided: the build, and why when it is not the compiled one.
_build: tuple[str, str] = ("pure", NOT_COMPILED)


def running() -> tuple[str, str]:
    """The build of the hot path this interpreter imports, and why when it is not the
    compiled one: ``("compiled", "")`` or ``("pure", why)``, as :func:`install` decided it
    at ``import appliance``, so it holds for hot modules not imported yet. The daemon says
    it at start and records it in ``appliance.start``: the pure-Python build spends about
    twice the CPU per statement."""
    return _build


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
    """Import the pure-Python build from here on if ``APPLIANCE_PURE`` is set (not "0"), or
    if the compiled extensions are stale or some are missing (then say so once, on
    stderr).

    Some missing: the build is all or nothing. The extensions are one mypyc group, and with
    a module's extension missing what imports depends on the order of the imports (the
    relay's missing: imported first by the compiled session core it came from the group,
    compiled; imported first on its own, from its source): a mix no test has run."""
    global _build
    if any(isinstance(f, _SourcesOnly) for f in sys.meta_path):
        return
    if os.environ.get(ENV, "0") not in ("", "0"):
        _build = ("pure", ASKED)
        sys.meta_path.insert(0, _SourcesOnly())
        return
    missing = _missing()
    if len(missing) == len(HOT_MODULES):
        _build = ("pure", NOT_COMPILED)  # the sources are what imports anyway
        return
    if stale():
        why = "the compiled extensions are older than their sources"
    elif missing:
        why = (
            f"{len(missing)} of {len(HOT_MODULES)} hot modules have no compiled extension: "
            + ", ".join(missing)
        )
    else:
        _build = ("compiled", "")
        return
    print(
        f"appliance: {why}; running the pure-Python build (make setup compiles it again)",
        file=sys.stderr,
    )
    _build = ("pure", why)
    sys.meta_path.insert(0, _SourcesOnly())


def build(module: ModuleType) -> str:
    """ "compiled" if ``module`` is an extension (mypyc), else "pure"."""
    path = getattr(module, "__file__", None) or ""
    return "pure" if path.endswith((".py", ".pyc")) else "compiled"
