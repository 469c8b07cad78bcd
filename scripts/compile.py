"""Compile the hot path's typed modules with mypyc (in place, beside their sources).

Which modules: those every statement and every result passes through (framing, the session
core, the relay, its hooks and recorder, both ends' state machines, of PostgreSQL and of
MySQL, statement policy, mask counts, masking's pre-filter and row code, entry encoding), all
typed under ``mypy --strict``; a module left interpreted costs a Python
frame per call from compiled code (about 1k instructions), so small helpers called per
statement belong here.

A dataclass compiles to a native class, but the ``__init__`` that ``dataclasses`` generates
stays Python: 1.5-5k instructions per object (a frozen one pays ``object.__setattr__`` per
field). Objects made per statement are declared ``@dataclass(init=False)`` with a written
``__init__``, which compiles (the dataclass still gives ``__eq__`` and ``__repr__``). A
frozen dataclass cannot do this (the pure-Python build's ``__init__`` could not assign), so
messages made per statement are decoded without one where the relay can.

Each compiled module is an extension (``*.so``) beside its ``.py``; Python imports the
extension first. Their sources stay the pure-Python build: ``APPLIANCE_PURE=1`` makes the
interpreter import the ``.py`` files instead (:mod:`appliance._pure`), and ``make test-pure``
runs the unit and lab suites that way. Where no C compiler or Python headers are found,
nothing is compiled and the pure-Python build runs.

Run by ``scripts/setup.sh`` (``make setup``) when the sources, mypy or this file changed
since the last build (a stamp under ``build/``); by hand: ``.venv/bin/python scripts/compile.py``
(``--clean`` removes the extensions: the tree is then the pure-Python build).
"""

from __future__ import annotations

import hashlib
import os
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from appliance._pure import HOT_MODULES, SOURCES_DIGEST, sources_digest  # noqa: E402

GROUP = "appliance._hot"  # the shared library: appliance/_hot__mypyc.*.so
STAMP = ROOT / "build" / "compiled.stamp"


def _extensions() -> list[Path]:
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    found = [ROOT / m.removesuffix(".py") for m in HOT_MODULES]
    out = [p.with_name(p.name + suffix) for p in found]
    out.append(ROOT / (GROUP.replace(".", "/") + "__mypyc" + suffix))
    return out


def clean() -> None:
    """Remove every extension under appliance/ (also of modules no longer in the list)."""
    for path in (ROOT / "appliance").rglob("*" + sysconfig.get_config_var("EXT_SUFFIX")):
        path.unlink(missing_ok=True)
    STAMP.unlink(missing_ok=True)


def fingerprint() -> str:
    import mypy.version

    h = hashlib.sha256()
    h.update(sys.version.encode() + mypy.version.__version__.encode())
    h.update(Path(__file__).read_bytes())
    # The compiled modules only: what they call elsewhere is called as Python, and a value
    # of another type than declared raises TypeError at that boundary (never misread).
    for module in HOT_MODULES:
        h.update(module.encode() + (ROOT / module).read_bytes())
    return h.hexdigest()


def build() -> None:
    from mypyc.build import mypycify
    from setuptools import Distribution

    os.chdir(ROOT)
    # Not setup(): that would read pyproject.toml, whose [project] is the wheel's business.
    dist = Distribution(
        {
            "name": "appliance-hot",
            "ext_modules": mypycify(list(HOT_MODULES), opt_level="3", group_name=GROUP),
            "script_name": "scripts/compile.py",
            "script_args": ["build_ext", "--inplace", "--build-temp", "build/mypyc-temp"],
        }
    )
    dist.parse_command_line()
    dist.run_commands()


def main() -> int:
    if "--clean" in sys.argv:
        clean()
        return 0
    headers = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if not headers.exists():
        print(f"compile: no {headers}: the pure-Python build runs", file=sys.stderr)
        clean()
        return 0
    want = fingerprint()
    if STAMP.exists() and STAMP.read_text() == want and all(p.exists() for p in _extensions()):
        return 0
    clean()
    build()
    STAMP.parent.mkdir(exist_ok=True)
    STAMP.write_text(want)
    SOURCES_DIGEST.write_text(sources_digest() + "\n")  # what appliance._pure checks
    return 0


if __name__ == "__main__":
    sys.exit(main())
