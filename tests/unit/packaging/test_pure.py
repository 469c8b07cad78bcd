"""The two builds of the hot path (appliance/_pure.py, scripts/compile.py): APPLIANCE_PURE=1
imports every module from its ``.py`` source, also where a compiled extension sits beside it."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

import appliance.proxy.pg.relay as relay
from appliance import _pure

ROOT = Path(__file__).resolve().parents[3]
_SHOW = "import appliance.proxy.pg.relay as r, appliance._pure as p; print(p.build(r), r.__file__)"


def _build_in_child(pure: bool) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != _pure.ENV}
    if pure:
        env[_pure.ENV] = "1"
    out = subprocess.run(
        [sys.executable, "-c", _SHOW], env=env, capture_output=True, text=True, check=True, cwd=ROOT
    )
    return out.stdout.split()


def test_the_pure_build_imports_sources_even_beside_an_extension() -> None:
    build, path = _build_in_child(pure=True)
    assert build == "pure"
    assert path.endswith("appliance/proxy/pg/relay.py")


def test_without_the_variable_an_extension_is_imported_when_there_is_one() -> None:
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    compiled = ROOT / "appliance" / "proxy" / "pg" / f"relay{suffix}"
    build, path = _build_in_child(pure=False)
    assert build == ("compiled" if compiled.exists() else "pure")
    assert path.endswith(suffix if compiled.exists() else "relay.py")


def test_this_process_runs_the_build_its_environment_asks_for() -> None:
    if os.environ.get(_pure.ENV, "0") not in ("", "0"):
        assert _pure.build(relay) == "pure"
    assert _pure.build(relay) in ("pure", "compiled")


def test_a_stale_extension_is_never_imported(tmp_path: Path) -> None:
    """Sources edited since the last compile: the digest recorded beside the extensions no
    longer matches, and the sources run (an old extension would run old code)."""
    mp = pytest.MonkeyPatch()
    try:
        digest = tmp_path / "compiled.sources"
        mp.setattr(_pure, "SOURCES_DIGEST", digest)
        suffix = sysconfig.get_config_var("EXT_SUFFIX")
        compiled = (ROOT / "appliance" / "proxy" / "pg" / f"relay{suffix}").exists()
        digest.write_text(_pure.sources_digest() + "\n")
        assert _pure.stale() is False
        digest.write_text("0" * 64 + "\n")
        assert _pure.stale() is compiled  # without extensions nothing can be stale
    finally:
        mp.undo()


_RUNNING = "import appliance._pure as p; print(repr(p.running()))"


def _running_in_child(**env_add: str) -> tuple[str, str]:
    env = {k: v for k, v in os.environ.items() if k != _pure.ENV}
    env.update(env_add)
    out = subprocess.run(
        [sys.executable, "-c", _RUNNING], env=env, capture_output=True, text=True, check=True,
        cwd=ROOT,
    )  # fmt: skip
    build, why = ast.literal_eval(out.stdout)
    return build, why


def test_running_says_which_build_the_imports_take() -> None:
    """What the daemon records as ``hot_path``: the build the hot modules are imported as,
    in this process and in a child with and without APPLIANCE_PURE."""
    assert _running_in_child(APPLIANCE_PURE="1") == ("pure", "APPLIANCE_PURE is set")
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    compiled = (ROOT / "appliance" / "proxy" / "pg" / f"relay{suffix}").exists()
    if compiled and not _pure.stale():
        assert _running_in_child() == ("compiled", "")
    build, why = _pure.running()
    assert build == _pure.build(relay)
    assert (why == "") is (build == "compiled")


def test_a_partial_build_runs_as_pure_python_and_says_what_is_missing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The build is all or nothing (one mypyc group: compiled modules call each other's
    compiled code directly). Without APPLIANCE_PURE, the extensions' files decide: none is
    the pure build, all (of these sources) the compiled one, some the pure build too, said
    on stderr and by running(), naming what is missing."""
    monkeypatch.delenv(_pure.ENV, raising=False)
    monkeypatch.setattr(sys, "meta_path", [f for f in sys.meta_path if not _is_sources_only(f)])
    monkeypatch.setattr(_pure, "_build", _pure.running())  # restored afterwards
    monkeypatch.setattr(_pure, "stale", lambda: False)
    every = set(_pure.HOT_MODULES)
    present: set[str] = set()
    monkeypatch.setattr(_pure, "_extension", lambda m: _Exists(m in present))
    _pure.install()
    build, why = _pure.running()
    assert build == "pure" and "not compiled here" in why
    present = every
    _pure.install()
    assert _pure.running() == ("compiled", "")
    assert capsys.readouterr().err == ""
    present = every - {"appliance/proxy/pg/core.py"}
    _pure.install()
    build, why = _pure.running()
    assert build == "pure"
    assert why == f"1 of {len(every)} hot modules have no compiled extension: " + (
        "appliance/proxy/pg/core.py"
    )
    assert why in capsys.readouterr().err
    present = every
    assert _pure.running() == ("pure", why)  # decided once, at the first import


def _is_sources_only(finder: object) -> bool:
    return type(finder).__name__ == "_SourcesOnly"


class _Exists:
    def __init__(self, exists: bool) -> None:
        self._exists = exists

    def exists(self) -> bool:
        return self._exists
