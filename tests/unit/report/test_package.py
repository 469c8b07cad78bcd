"""`appliance report` on synthetic fleets written by the real ledger writer: the counts match
what was written, the package is the same bytes for the same logs, tampering is on the first
page and in the exit code, and the package checks out with the standalone script, openssl
and jq alone. The lab suite does the same against a real appliance and PostgreSQL."""

from __future__ import annotations

import html
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.chromium import dump_dom, texts_by_id
from tests.ledgers import Expected, ledger_key, read_json, tamper_denial, write_fleet
from tests.unit.ledger.cli_helper import run_cli

BOOTS = 2


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Expected, list[Path]]:
    root = tmp_path_factory.mktemp("fleet")
    expected = write_fleet(root / "logs", boots=BOOTS, sessions=6, statements=2)
    keys = []
    for b in range(BOOTS):
        key = root / f"runner-{b}.vkey"
        key.write_text(ledger_key(f"ci.example/runner-{b}/boot-1").verifier().to_vkey() + "\n")
        keys.append(key)
    return root / "logs", expected, keys


def report(
    capsys: pytest.CaptureFixture[str], source: Path, out: Path, keys: list[Path], *extra: str
) -> tuple[int, str]:
    args = ["report", "--source", str(source), "--out", str(out), "--no-progress"]
    for k in keys:
        args += ["--vkey", str(k)]
    return run_cli(capsys, *args, *extra)


@pytest.fixture(scope="module")
def package(
    fleet: tuple[Path, Expected, list[Path]], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    source, _, keys = fleet
    out = tmp_path_factory.mktemp("pkg") / "out"
    args = [sys.executable, "-m", "appliance.cli.main", "report", "--source", str(source)]
    args += ["--out", str(out), *(a for k in keys for a in ("--vkey", str(k)))]
    before = tree(source)
    r = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "VERIFIED" in r.stdout
    assert tree(source) == before  # the logs are only read
    return out


def tree(root: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_counts_match_what_was_written(
    package: Path, fleet: tuple[Path, Expected, list[Path]]
) -> None:
    _, expected, _ = fleet
    r = read_json(package / "report.json")
    t = r["totals"]
    assert r["status"] == "verified"
    assert t["logs"] == t["logs_verified"] == BOOTS
    assert t["sessions"] == expected.sessions == len(r["sessions"])
    assert t["statements"] == expected.statements
    assert t["denials"] == expected.denials == len(r["denials"])
    assert t["holds"] == expected.holds
    assert t["holds_by_outcome"] == expected.outcomes
    assert r["masked_by_kind"] == expected.masked
    assert r["masked_to_job_by_kind"] == expected.masked_to_job
    assert t["unattributed_sessions"] == expected.unattributed
    assert t["privileged_sessions"] == expected.privileged
    lines = sum(len((d / "entries.jsonl").read_bytes().splitlines()) for d in logs(package))
    assert t["entries"] == lines
    kinds = [g["kind"] for g in r["gaps"]]
    assert kinds.count("unattributed flow") == expected.unattributed
    assert kinds.count("session without end") == expected.unended == 1
    assert kinds.count("unclean end") == 1  # the last boot has no appliance.stop
    granted = [h for h in r["holds"] if h["outcome"] == "granted"]
    assert granted and all(
        h["note"].startswith("appliance/approval-decision/v1\n") for h in granted
    )
    assert all(h["approver"] == "alice" and h["reason"] == "ticket OPS-42" for h in granted)
    assert all(h["proof"] and (package / h["proof"]).is_file() for h in granted)
    for h in r["holds"]:  # the session page links to its holds
        assert f"decisions.html#hold-{h['id']}" in (package / h["page"]).read_text()
    for s in r["sessions"]:
        assert (package / s["page"]).is_file()


def logs(package: Path) -> list[Path]:
    return sorted((package / "logs").iterdir())


def test_the_same_logs_give_the_same_bytes(
    capsys: pytest.CaptureFixture[str],
    package: Path,
    fleet: tuple[Path, Expected, list[Path]],
    tmp_path: Path,
) -> None:
    """Built again in this process from a copy elsewhere: every file is byte for byte the
    same as the package built by another process (charts included)."""
    source, _, keys = fleet
    copy = tmp_path / "elsewhere" / "copy"
    shutil.copytree(source, copy, ignore=shutil.ignore_patterns("index.sqlite", "lock"))
    code, out = report(capsys, copy, tmp_path / "again", keys)
    assert code == 0, out
    first = {p.relative_to(package): p.read_bytes() for p in package.rglob("*") if p.is_file()}
    again = tmp_path / "again"
    second = {p.relative_to(again): p.read_bytes() for p in again.rglob("*") if p.is_file()}
    assert first.keys() == second.keys()
    assert [p for p in first if first[p] != second[p]] == []
    assert "<svg" in (again / "index.html").read_text()


def test_the_package_checks_out_without_the_appliance(package: Path, tmp_path: Path) -> None:
    """sha256sum, the standalone script (system python3, no appliance), the openssl and jq
    commands that verify.html gives, run as given."""
    r = subprocess.run(
        ["sha256sum", "--quiet", "-c", "SHA256SUMS"], cwd=package, capture_output=True
    )
    assert r.returncode == 0, r.stdout
    r = subprocess.run(
        ["/usr/bin/python3", "-I", "check_evidence.py", "."],
        cwd=package, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("entries hash to") == BOOTS and "FAIL" not in r.stdout
    report = read_json(package / "report.json")
    decisions = [h for h in report["holds"] if h["note"]]
    assert r.stdout.count("is in the log") == len(report["denials"]) + len(decisions)
    pres = [
        html.unescape(p)
        for p in re.findall(r"<pre>(.*?)</pre>", (package / "verify.html").read_text(), re.S)
    ]
    openssl = next(p for p in pres if "openssl pkeyutl" in p)
    work = tmp_path / "work"
    shutil.copytree(package, work)
    r = subprocess.run(["bash", "-ec", openssl], cwd=work, capture_output=True, text=True)
    assert r.returncode == 0 and "Signature Verified Successfully" in r.stdout, r.stderr
    jq = next(p for p in pres if "jq " in p).splitlines()
    counts = [
        int(subprocess.run(["bash", "-ec", line], cwd=work, capture_output=True, text=True).stdout)
        for line in jq
        if not line.startswith("#")
    ]
    t = report["totals"]
    assert counts == [t["sessions"], t["statements"], t["denials"], t["holds"]]
    # an entry changed in the copy: the script says which log and fails
    log = logs(work)[0]
    lines = (log / "entries.jsonl").read_bytes().splitlines()
    i = next(i for i, line in enumerate(lines) if b"DROP TABLE" in line)
    lines[i] = lines[i].replace(b"DROP TABLE", b"DROP INDEX")
    (log / "entries.jsonl").write_bytes(b"".join(line + b"\n" for line in lines))
    r = subprocess.run(
        ["/usr/bin/python3", "-I", "check_evidence.py", "."],
        cwd=work,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 1 and f"FAIL {log.name}" in r.stdout, r.stdout


def test_every_link_stays_in_the_package(package: Path) -> None:
    pages = list(package.rglob("*.html"))
    assert pages and not [p for p in pages if "<script" in p.read_text()]  # no script at all
    broken = []
    for page in pages:
        for href in re.findall(r'href="([^"#]+)[^"]*"', page.read_text()):
            assert "://" not in href, (page, href)  # nothing from the network
            if not (page.parent / html.unescape(href)).is_file():
                broken.append((page.relative_to(package), href))
    assert broken == []


def test_every_section_renders_in_chromium(package: Path) -> None:
    index = texts_by_id(dump_dom(package / "index.html"))
    for section in ("status", "summary", "verification", "logs", "totals", "charts", "soc2"):
        assert index.get(section), section
    assert index["status"].startswith("VERIFIED")
    assert "Sessions and statements per day" in index["charts"]  # SVG text, in the DOM
    assert "Values masked before recording, by kind" in index["charts"]
    for criterion in ("CC6.1", "CC6.2", "CC6.3", "CC6.6", "CC7.2", "CC8.1"):
        assert criterion in index["soc2"]
    expect = {
        "identities.html": ("identities", "github acme/shop · deploy / migrate"),
        "targets.html": ("targets", "orders-db"),
        "decisions.html": ("decisions", "DROP TABLE customers"),
        "privileged.html": ("privileged", "ddl"),
        "sessions.html": ("sessions", "unattributed"),
        "gaps.html": ("gaps", "unclean end"),
        "verify.html": ("verify", "openssl pkeyutl -verify"),
    }
    for page, (section, text) in expect.items():
        found = texts_by_id(dump_dom(package / page))
        assert text in found.get(section, ""), (page, found.get(section, "")[:500])
    decisions = texts_by_id(dump_dom(package / "decisions.html"))
    assert "appliance/approval-decision/v1" in decisions["holds"]  # the signed decision
    assert "ticket OPS-42" in decisions["holds"] and "timed out" in decisions["holds"]
    r = read_json(package / "report.json")
    query = next(s for s in r["sessions"] if "select" in s["classes"])
    session = texts_by_id(dump_dom(package / query["page"]))
    assert "SELECT name, card, ssn FROM customers" in session["transcript"]
    assert "[REDACTED:CARD]" in session["transcript"]  # the masked rows, as replay shows them


def test_a_period_takes_only_its_logs(
    capsys: pytest.CaptureFixture[str], fleet: tuple[Path, Expected, list[Path]], tmp_path: Path
) -> None:
    source, expected, keys = fleet
    code, out = report(capsys, source, tmp_path / "out", keys, "--since", "2026-12-02")
    assert code == 0, out
    r = read_json(tmp_path / "out" / "report.json")
    assert [lf["origin"] for lf in r["logs"]] == ["ci.example/runner-1/boot-1"]
    assert r["totals"]["sessions"] == expected.sessions // BOOTS
    assert r["period"]["since"] == "2026-12-02T00:00:00.000000Z"


@pytest.mark.parametrize("how", ["rewritten entry", "flipped bit"])
def test_tampering_is_on_the_first_page_and_in_the_exit_code(
    capsys: pytest.CaptureFixture[str],
    fleet: tuple[Path, Expected, list[Path]],
    tmp_path: Path,
    how: str,
) -> None:
    source, _, keys = fleet
    copy = tmp_path / "copy"
    shutil.copytree(source, copy)
    log = copy / "runner-0" / "boot-1"
    if how == "rewritten entry":
        tamper_denial(log)
    else:
        raw = bytearray((log / "entries.log").read_bytes())
        raw[len(raw) // 2] ^= 0x01
        (log / "entries.log").write_bytes(bytes(raw))
    code, out = report(capsys, copy, tmp_path / "out", keys)
    assert code == 1, out
    assert "TAMPERING DETECTED in ci.example/runner-0/boot-1" in out
    index = (tmp_path / "out" / "index.html").read_text()
    first = re.search(r'<p class="banner (\w+)" id="status">([^<]*)</p>', index)
    assert first is not None and first.group(1) == "bad", index[:2000]
    assert first.group(2).startswith("TAMPERING DETECTED: 1 of 2 log(s)")
    assert index.index('id="status"') < index.index("<h1")  # before anything else is said
    r = read_json(tmp_path / "out" / "report.json")
    assert r["status"] == "tampered" and r["totals"]["logs_tampered"] == 1
    bad = next(lf for lf in r["logs"] if lf["origin"] == "ci.example/runner-0/boot-1")
    assert bad["check"]["status"] == "tampered" and bad["check"]["findings"]
    assert not (tmp_path / "out" / "logs" / bad["slug"] / "proofs").exists()


def test_a_log_without_its_key_is_not_verified(
    capsys: pytest.CaptureFixture[str], fleet: tuple[Path, Expected, list[Path]], tmp_path: Path
) -> None:
    source, _, keys = fleet
    code, out = report(capsys, source, tmp_path / "out", keys[:1])
    assert code == 2, out
    assert "NOT VERIFIED: ci.example/runner-1/boot-1" in out
    status = texts_by_id((tmp_path / "out" / "index.html").read_text())["status"]
    assert status.startswith("NOT VERIFIED: 1 of 2 log(s)")


def test_refuses_a_directory_that_is_not_empty(
    capsys: pytest.CaptureFixture[str], fleet: tuple[Path, Expected, list[Path]], tmp_path: Path
) -> None:
    source, _, keys = fleet
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("mine")
    code, out = report(capsys, source, tmp_path / "out", keys)
    assert code == 2 and "not an empty directory" in out
    code, out = report(capsys, tmp_path / "nothing-here", tmp_path / "o2", keys)
    assert code == 2 and "not a directory" in out
    code, out = report(
        capsys, source, tmp_path / "o3", keys, "--since", "2026-12-02", "--until", "2026-12-01"
    )
    assert code == 2 and "is not before --until" in out
