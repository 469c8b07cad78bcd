"""Identity resolution against a /proc tree built in a temporary directory (exact, no root)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from appliance.capture import FlowOwner, IdentityCache, resolve_identity, unattributed
from appliance.capture._cgroup import CgroupPaths
from appliance.capture._ci import KEYS

TICK_NS = 1_000_000_000 // os.sysconf("SC_CLK_TCK")


class World:
    """A fake /proc and cgroup v2 root."""

    def __init__(self, tmp: Path) -> None:
        self.proc = tmp / "proc"
        self.cgroot = tmp / "cgroup"
        (self.cgroot / "runner" / "job").mkdir(parents=True)
        (self.cgroot / "other").mkdir()
        self.cache = IdentityCache(cgroups=CgroupPaths(self.cgroot))

    def cgroup_id(self, rel: str) -> int:
        return os.stat(self.cgroot / rel.lstrip("/")).st_ino

    def process(
        self,
        pid: int,
        ppid: int,
        comm: str,
        *,
        start: int = 100,
        env: dict[str, str] | None = None,
        cgroup: str = "/runner/job",
        exe: str | None = None,
        argv: tuple[str, ...] = (),
    ) -> None:
        d = self.proc / str(pid)
        d.mkdir(parents=True, exist_ok=True)
        fields = ["S", str(ppid), *["0"] * 17, str(start), *["0"] * 5]
        (d / "stat").write_text(f"{pid} ({comm}) {' '.join(fields)}\n")
        (d / "cmdline").write_bytes(b"".join(a.encode() + b"\0" for a in (argv or (comm,))))
        (d / "cgroup").write_text(f"0::{cgroup}\n")
        (d / "environ").write_bytes(b"".join(f"{k}={v}\0".encode() for k, v in (env or {}).items()))
        link = d / "exe"
        if link.is_symlink():
            link.unlink()
        link.symlink_to(exe or f"/usr/bin/{comm}")
        if cgroup:
            procs = self.cgroot / cgroup.lstrip("/") / "cgroup.procs"
            old = procs.read_text().split() if procs.exists() else []
            procs.write_text("\n".join([*old, str(pid)]) + "\n")

    def owner(
        self, tgid: int, comm: str, *, boot_ns: int = 10**12, cgroup: str = "/runner/job"
    ) -> FlowOwner:
        return FlowOwner(
            tgid=tgid, pid=tgid, uid=65534, gid=65534, comm=comm,
            cgroup_id=self.cgroup_id(cgroup), netns_cookie=4096, boot_ns=boot_ns,
            family=2, dst=("198.18.0.2", 5432), cookie=1,
        )  # fmt: skip

    def resolve(self, owner: FlowOwner | None, **kw: object) -> dict[str, object]:
        return resolve_identity(owner, proc=self.proc, cache=self.cache, **kw)  # type: ignore[arg-type]


GH = {"GITHUB_REPOSITORY": "acme/shop", "GITHUB_RUN_ID": "42", "GITHUB_TOKEN": "ghs_x"}


@pytest.fixture
def world(tmp_path: Path) -> World:
    w = World(tmp_path)
    w.process(1, 0, "init", cgroup="/")
    w.process(500, 1, "Runner.Worker", env={"RUNNER_TEMP": "/tmp"})
    w.process(600, 500, "bash", env=GH, argv=("bash", "-e", "step.sh"))
    w.process(
        700,
        600,
        "psql",
        env={},
        argv=("psql", "-h", "198.18.0.2"),
        exe="/usr/lib/postgresql/15/bin/psql",
    )
    return w


def test_live_process_with_ci_variables_in_an_ancestor(world: World) -> None:
    identity = world.resolve(world.owner(700, "psql"))
    assert identity == {
        "source": "ebpf",
        "how": "ebpf+procfs",
        "pid": 700,
        "tgid": 700,
        "tid": 700,
        "uid": 65534,
        "gid": 65534,
        "comm": "psql",
        "exe": "/usr/lib/postgresql/15/bin/psql",
        "cmdline": ["psql", "-h", "198.18.0.2"],
        "cgroup": "/runner/job",
        "cgroup_id": world.cgroup_id("/runner/job"),
        "netns_cookie": 4096,
        "dst": "198.18.0.2:5432",
        "ci": {
            "provider": "github",
            **dict.fromkeys(KEYS),
            "repository": "acme/shop",
            "run_id": "42",
            "vars": {"GITHUB_RUN_ID": "42", "GITHUB_REPOSITORY": "acme/shop"},
        },
        "ci_source_pid": 600,
        "ci_source": "ancestor",
        "errors": [],
    }
    assert "ghs_x" not in repr(identity)


def test_variables_of_the_process_itself_win(world: World) -> None:
    world.process(701, 600, "psql", env={"GITHUB_REPOSITORY": "acme/other"})
    identity = world.resolve(world.owner(701, "psql"))
    assert identity["ci_source"] == "process" and identity["ci_source_pid"] == 701
    assert identity["ci"]["repository"] == "acme/other"  # type: ignore[index]


def test_exited_process_keeps_what_bpf_captured_and_finds_ci_in_its_cgroup(world: World) -> None:
    identity = world.resolve(world.owner(999, "psql"))  # no /proc/999
    assert identity["how"] == "ebpf (process exited)"
    assert (identity["pid"], identity["comm"], identity["uid"]) == (999, "psql", 65534)
    assert identity["exe"] is None and identity["cmdline"] is None
    assert identity["cgroup"] == "/runner/job"  # from the cgroup id
    assert identity["ci_source"] == "cgroup" and identity["ci_source_pid"] == 600


def test_a_reused_pid_is_not_the_process_that_connected(world: World) -> None:
    connected_at = 100 * TICK_NS + 5
    world.process(800, 1, "cron", start=200, env=GH, cgroup="/other")  # started later
    identity = world.resolve(world.owner(800, "psql", boot_ns=connected_at))
    assert identity["how"] == "ebpf (process exited)"
    assert identity["exe"] is None and identity["comm"] == "psql"
    assert identity["cgroup"] == "/runner/job"  # what BPF saw, not the new process's


def test_facts_are_cached_per_process_and_an_exec_is_not_served_stale(world: World) -> None:
    world.resolve(world.owner(700, "psql"))
    misses = world.cache.misses
    world.resolve(world.owner(700, "psql"))
    assert world.cache.misses == misses  # leaf and ancestors from the cache
    world.process(700, 600, "python3", env={"GITHUB_REPOSITORY": "acme/exec"})  # exec: new comm
    identity = world.resolve(world.owner(700, "python3"))
    assert identity["exe"] == "/usr/bin/python3"
    assert identity["ci"]["repository"] == "acme/exec"  # type: ignore[index]


def test_an_unreadable_environ_is_reported(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    (world.proc / "700" / "environ").unlink()
    (world.proc / "700" / "environ").mkdir()  # reading it fails like EACCES would
    identity = world.resolve(world.owner(700, "psql"))
    assert identity["ci_source"] == "ancestor"
    assert identity["errors"] and "environ" in identity["errors"][0]  # type: ignore[index]


def test_no_ci_anywhere(world: World) -> None:
    world.process(900, 1, "curl", env={"HOME": "/root"}, cgroup="/other")
    identity = world.resolve(world.owner(900, "curl", cgroup="/other"))
    assert (identity["ci"], identity["ci_source"], identity["cgroup"]) == (None, None, "/other")


def test_unattributed_carries_the_reason() -> None:
    identity = resolve_identity(None, reason="BPF program failed to load: EPERM")
    assert identity == unattributed("BPF program failed to load: EPERM")
    assert identity["source"] == "unattributed"
    assert identity["how"] == "unattributed: BPF program failed to load: EPERM"
    assert identity["pid"] is None and identity["ci"] is None


def test_cgroup_paths_by_id(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    paths = CgroupPaths(tmp_path)
    assert paths.path_of(os.stat(tmp_path).st_ino) == "/"
    assert paths.path_of(os.stat(tmp_path / "a" / "b").st_ino) == "/a/b"
    assert paths.path_of(1) is None
    assert paths.remember("/a", os.stat(tmp_path / "a").st_ino)
    assert not paths.remember("/a", 1)
    assert CgroupPaths(None).path_of(5) is None


def test_secrets_on_a_command_line_are_masked_before_they_are_kept() -> None:
    from appliance.capture._identity import mask_cmdline
    from appliance.masking import MaskCounts, Masker, MaskingConfig

    tm = Masker(MaskingConfig(), hmac_key=b"k" * 32).for_target("")
    args = [
        "curl", "-H", "Authorization: Bearer abcdef0123456789abcdef", "--password", "hunter2",
        "psql", "postgresql://ci:s3cr3tpw@db/app", "--token=ghp_012345678901234567890123456789abcd",
    ]  # fmt: skip
    masked = mask_cmdline(args, lambda text: tm.mask_text(text, MaskCounts()))
    joined = " ".join(masked)
    for secret in ("abcdef0123456789abcdef", "hunter2", "s3cr3tpw", "ghp_0123456789"):
        assert secret not in joined, (secret, masked)
    assert masked[0] == "curl" and masked[3] == "--password" and masked[4] == "[REDACTED:SECRET]"
    assert mask_cmdline(["ls", "-l"], None) == ("ls", "-l")
