"""Upstream TLS contexts follow libpq's sslmode names, made once per target config."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from appliance.config import UpstreamTLS
from appliance.proxy.tls import upstream_context
from tests.certs import server_cert


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tls = server_cert("tls test CA", "db.test", ["db.test"])
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    path.write_bytes(tls.ca_pem)
    return path


def test_modes(ca: Path) -> None:
    for mode in ("prefer", "require"):
        context = upstream_context(UpstreamTLS(mode))
        assert (context.verify_mode, context.check_hostname) == (ssl.CERT_NONE, False)
    verify_ca = upstream_context(UpstreamTLS("verify-ca", ca))
    assert (verify_ca.verify_mode, verify_ca.check_hostname) == (ssl.CERT_REQUIRED, False)
    full = upstream_context(UpstreamTLS("verify-full", ca))
    assert (full.verify_mode, full.check_hostname) == (ssl.CERT_REQUIRED, True)


def test_one_context_per_config(ca: Path) -> None:
    assert upstream_context(UpstreamTLS("verify-full", ca)) is upstream_context(
        UpstreamTLS("verify-full", ca)
    )
