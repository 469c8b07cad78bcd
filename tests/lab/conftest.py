"""Fixtures for lab tests (root): one lab per test session, with a real PostgreSQL (target
0) and a real MariaDB (target 1), and one real S3 server (Ceph's radosgw), each started
once, when a test first needs it.

Lab tests fail, not skip, when the machine cannot run them: the suite is run as root on a
machine set up by scripts/setup.sh.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.lab.ceph import CephS3
from tests.lab.lab import Lab, MariaServer, PgServer
from tests.lab.ssh import SshRunner
from tests.lab.sshd import SshServer


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/lab/" in str(item.fspath):
            item.add_marker(pytest.mark.lab)


@pytest.fixture(scope="session")
def lab() -> Iterator[Lab]:
    if os.geteuid() != 0:
        pytest.fail("lab tests need root: run them through `make test`")
    with Lab(n_targets=2) as built:
        yield built


@pytest.fixture(scope="session")
def pg(lab: Lab) -> PgServer:
    """PostgreSQL 15 on target 0 (198.18.0.2, fd00:a9e:0::2), TLS available, SCRAM auth."""
    return lab.start_postgres(0, tls=True)


@pytest.fixture(scope="session")
def maria(lab: Lab) -> MariaServer:
    """MariaDB (Debian's) on target 1 (198.18.1.2:3306), TLS available; accounts ``app``
    (native password), ``app_ed`` (ed25519), ``app_tls`` (REQUIRE SSL). Modules make their
    own tables."""
    return lab.start_mariadb(1)


@pytest.fixture(scope="session")
def ssh_runner(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshRunner]:
    """A lab of its own (capture installs rules in its runner namespace): Debian's sshd on
    target 1 port 22 and the appliance protecting it with transparent capture."""
    if os.geteuid() != 0:
        pytest.fail("lab tests need root: run them through `make test`")
    with Lab(n_targets=2) as ssh_lab:
        sshd = SshServer(ssh_lab, ssh_lab.targets[1])
        ssh_lab._servers.append(sshd)  # stopped with the lab
        sshd.start()
        runner = SshRunner(ssh_lab, sshd, tmp_path_factory.mktemp("ssh"))
        try:
            runner.start()
            yield runner
        finally:
            runner.stop()
            runner.remove_capture()


@pytest.fixture(scope="session")
def ceph() -> Iterator[CephS3]:
    """One Ceph cluster (monitor, memstore OSD, radosgw; HTTP, and HTTPS with a lab CA) for
    the whole session: it takes about 13 s to start; tests make their own buckets."""
    if os.geteuid() != 0:
        pytest.fail("lab tests need root: run them through `make test`")
    with CephS3(tls=True) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def s3_endpoint(lab: Lab, ceph: CephS3) -> str:
    """The gateway's URL as the lab's runner namespace reaches it (a link of its own)."""
    return ceph.link(lab.runner.name)
