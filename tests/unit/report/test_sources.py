"""Sources: a ledger directory, or a tree of them (one per runner boot), named by layout."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.ledger.errors import LedgerError
from appliance.report.sources import LogDir, resolve


def ledger(path: Path) -> Path:
    (path / "blobs" / "ab").mkdir(parents=True)
    (path / "entries.log").write_bytes(b"")
    (path / "blobs" / "ab" / "entries.log").write_bytes(b"")  # inside a ledger: not a log
    return path


def test_a_tree_of_logs_in_name_order(tmp_path: Path) -> None:
    ledger(tmp_path / "fleet" / "runner-b" / "boot-1")
    ledger(tmp_path / "fleet" / "runner-a" / "boot-2")
    ledger(tmp_path / "fleet" / "runner-a" / "boot-1")
    found = resolve([str(tmp_path / "fleet")])
    assert [log.name for log in found] == ["runner-a/boot-1", "runner-a/boot-2", "runner-b/boot-1"]


def test_one_ledger_twice_and_two_sources_with_one_layout(tmp_path: Path) -> None:
    one = ledger(tmp_path / "a" / "boot")
    ledger(tmp_path / "b" / "boot")
    found = resolve([str(tmp_path / "a"), str(one), str(tmp_path / "b")])
    assert [log.name for log in found] == ["boot", "2:boot"]


def test_what_cannot_be_a_source(tmp_path: Path) -> None:
    with pytest.raises(LedgerError, match="not a directory"):
        resolve([str(tmp_path / "missing")])
    with pytest.raises(LedgerError, match="no ledger"):
        resolve([str(tmp_path)])
    with pytest.raises(LedgerError, match="s3:// sources are not supported yet"):
        resolve(["s3://evidence/fleet"])


def test_a_remote_source_is_pulled_by_the_function_given(tmp_path: Path) -> None:
    cache = ledger(tmp_path / "cache" / "ci.example%2Frunner-1")
    pulled: list[str] = []

    def remote(url: str) -> list[LogDir]:
        pulled.append(url)
        return [LogDir(cache, "ci.example%2Frunner-1")]

    local = ledger(tmp_path / "local")
    found = resolve(["s3://evidence/fleet", str(local)], remote=remote)
    assert pulled == ["s3://evidence/fleet"]
    assert [(log.path, log.name) for log in found] == [
        (cache, "ci.example%2Frunner-1"),
        (local, "local"),
    ]
