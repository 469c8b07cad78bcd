"""The two builds of the hot path (appliance/_pure.py, scripts/compile.py): APPLIANCE_PURE=1
imports every module from its ``.py`` source, also where a compiled extension sits beside it."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

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
    import pytest

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
