"""The per-boot CA (:mod:`appliance.proxy.http.ca`, :mod:`appliance.proxy.http.setup`) and
its installation (:mod:`appliance.proxy.http.trust`): name constraints that real OpenSSL
enforces, leaves per SNI, and update-ca-certificates run for real on a scratch tree."""

from __future__ import annotations

import datetime
import shutil
import ssl
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from appliance.config import parse_config
from appliance.proxy.http.ca import InterceptionCA, name_matches
from appliance.proxy.http.setup import make_shared
from appliance.proxy.http.trust import TrustConfig, install, job_environment

NOW = datetime.datetime.now(datetime.UTC)


def _handshake(server_ctx: ssl.SSLContext, ca_pem: bytes, name: str) -> str | None:
    """A memory-BIO handshake as ``name``; None if verified, else the error."""
    client_ctx = ssl.create_default_context(cadata=ca_pem.decode())
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=name)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):
        for side in (client, server):
            try:
                side.do_handshake()
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError as exc:
                return str(exc)
        s_in.write(c_out.read())
        c_in.write(s_out.read())
    return None


def test_leaves_per_name_and_unprotected_names_refused() -> None:
    ca = InterceptionCA(["api.test", "*.s3.test"], now=NOW)
    context = ca.job_context(["api.test", "*.s3.test"])
    assert _handshake(context, ca.cert_pem, "api.test") is None
    assert _handshake(context, ca.cert_pem, "bucket.s3.test") is None
    refused = (_handshake(context, ca.cert_pem, "evil.test") or "").upper()
    assert "UNRECOGNIZED_NAME" in refused or "CALLBACK_FAILED" in refused
    assert name_matches("*.s3.test", "b.s3.test") and not name_matches("*.s3.test", "a.b.s3.test")


def test_name_constraints_hold_even_for_a_leaf_signed_with_the_key(tmp_path: Path) -> None:
    """A leaf for an unprotected name, signed with the CA's own key, is refused by OpenSSL."""
    ca = InterceptionCA(["api.test"], now=NOW)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "evil.test")]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(NOW - datetime.timedelta(hours=1))
        .not_valid_after(NOW + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("evil.test")]), critical=False)
        .sign(ca._key, hashes.SHA256())
    )
    (tmp_path / "c.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM) + ca.cert_pem)
    (tmp_path / "k.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "c.pem", tmp_path / "k.pem")
    error = _handshake(context, ca.cert_pem, "evil.test") or ""
    assert "name constraint" in error.lower() or "permitted" in error.lower(), error


def test_make_shared_and_its_upstream_contexts() -> None:
    cfg = parse_config(
        "targets:\n  - {name: api, protocol: http, addresses: ['a.test:443', '10.0.0.5:443'], names: [a.test, 10.0.0.5]}\n"
    )
    shared = make_shared(list(cfg.targets.values()), now=NOW)
    assert shared.ca.names == ("10.0.0.5", "a.test")
    assert shared.upstream_context(cfg.targets["api"]).verify_mode == ssl.CERT_REQUIRED


@pytest.mark.skipif(shutil.which("update-ca-certificates") is None, reason="needs ca-certificates")
def test_install_runs_update_ca_certificates_on_a_scratch_tree(tmp_path: Path) -> None:
    ca = InterceptionCA(["api.test"], now=NOW)
    etc = tmp_path / "etc"
    for d in (etc, tmp_path / "local", tmp_path / "hooks"):
        d.mkdir()
    shutil.copy("/etc/ca-certificates.conf", tmp_path / "certs.conf")
    config = TrustConfig(
        ca_file=tmp_path / "run" / "ca.pem",
        bundle=tmp_path / "run" / "bundle.pem",
        env_file=tmp_path / "run" / "job.env",
        system=True,
        system_bundle=etc / "ca-certificates.crt",
        local_dir=tmp_path / "local",
        etc_dir=etc,
        certs_conf=tmp_path / "certs.conf",
        hooks_dir=tmp_path / "hooks",
    )
    done = install(ca.cert_pem, config)
    assert done["system_store"] == str(etc / "ca-certificates.crt")
    assert ca.cert_pem.decode().strip() in (etc / "ca-certificates.crt").read_text()
    assert ca.cert_pem in config.bundle.read_bytes()
    env = dict(line.split("=", 1) for line in config.env_file.read_text().splitlines())  # type: ignore[union-attr]
    assert env == job_environment(config) and env["NODE_EXTRA_CA_CERTS"] == str(config.ca_file)
    out = subprocess.run(
        ["openssl", "verify", "-CAfile", str(config.bundle), str(config.ca_file)],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
