"""Put the interception CA into the runner's trust, so that unmodified jobs accept it.

Where this sits: the daemon calls :func:`install` once after the CA is made and before it
listens. Two things, both in the ``interception`` config section:

1. the system store (Debian): the certificate is written to ``local_dir``
   (``/usr/local/share/ca-certificates``) and ``update-ca-certificates`` rebuilds
   ``/etc/ssl/certs/ca-certificates.crt``; its hooks also feed Java's cacerts. OpenSSL,
   curl, git, Python's ``ssl`` and Go read that bundle;
2. the job environment file (``env_file``, read by the runner service with
   ``EnvironmentFile=``): the tools that keep their own trust are pointed at a bundle of
   the system store plus the CA (``bundle``): ``NODE_EXTRA_CA_CERTS`` (Node adds it to its
   built-in list), ``REQUESTS_CA_BUNDLE`` (Python requests, certifi's list otherwise),
   ``PIP_CERT``, ``GIT_SSL_CAINFO``, ``SSL_CERT_FILE`` (OpenSSL and Go), ``CURL_CA_BUNDLE``,
   ``AWS_CA_BUNDLE`` (the AWS CLI and SDKs, certifi's list otherwise).

kubectl does not read any of these when the kubeconfig embeds ``certificate-authority-data``:
the runner image writes the job's kubeconfig without it (``server:`` the real API address,
no secret), so that kubectl uses the system store.

Each file is written atomically (temp file, rename). A step that fails raises
:class:`TrustError`: the appliance does not start half-trusted.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from appliance.errors import ApplianceError

CA_NAME = "appliance-interception-ca"
ENV_VARIABLES = (
    "SSL_CERT_FILE",
    "CURL_CA_BUNDLE",
    "REQUESTS_CA_BUNDLE",
    "PIP_CERT",
    "GIT_SSL_CAINFO",
    "AWS_CA_BUNDLE",
    "NODE_EXTRA_CA_CERTS",
)


class TrustError(ApplianceError):
    """The CA could not be put into the runner's trust."""


@dataclass(frozen=True)
class TrustConfig:
    """Where the CA goes (the ``interception`` config section).

    ``system``: run ``update-ca-certificates`` (with ``local_dir``, ``etc_dir``,
    ``certs_conf``, ``hooks_dir`` as its own options, so that a test can point it at a
    scratch tree); ``system_bundle`` is the bundle it writes; ``ca_file`` and ``bundle``
    are written for the job; ``env_file`` (None: none) gets the variables.
    """

    ca_file: Path = Path("/run/appliance/interception-ca.pem")
    bundle: Path = Path("/run/appliance/ca-bundle.pem")
    env_file: Path | None = Path("/run/appliance/job-ca.env")
    system: bool = True
    system_bundle: Path = Path("/etc/ssl/certs/ca-certificates.crt")
    local_dir: Path = Path("/usr/local/share/ca-certificates")
    etc_dir: Path = Path("/etc/ssl/certs")
    certs_dir: Path = Path("/usr/share/ca-certificates")
    certs_conf: Path = Path("/etc/ca-certificates.conf")
    hooks_dir: Path = Path("/etc/ca-certificates/update.d")


def _write(path: Path, data: bytes, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def job_environment(config: TrustConfig) -> dict[str, str]:
    """The variables written to the job environment file."""
    return {
        name: str(config.ca_file if name == "NODE_EXTRA_CA_CERTS" else config.bundle)
        for name in ENV_VARIABLES
    }


def install(ca_pem: bytes, config: TrustConfig) -> Mapping[str, str]:
    """Install ``ca_pem`` as the module docstring says; return what was done (for the
    ledger's ``interception.ca`` entry). Raises TrustError."""
    done: dict[str, str] = {"ca_file": str(config.ca_file)}
    try:
        _write(config.ca_file, ca_pem)
        if config.system:
            _write(config.local_dir / f"{CA_NAME}.crt", ca_pem)
            command = [
                "update-ca-certificates",
                "--certsconf",
                str(config.certs_conf),
                "--certsdir",
                str(config.certs_dir),
                "--localcertsdir",
                str(config.local_dir),
                "--etccertsdir",
                str(config.etc_dir),
                "--hooksdir",
                str(config.hooks_dir),
            ]
            proc = subprocess.run(command, capture_output=True, text=True, timeout=120)
            if proc.returncode != 0:
                raise TrustError(f"update-ca-certificates failed: {proc.stderr.strip()}")
            done["system_store"] = str(config.system_bundle)
        try:
            system = config.system_bundle.read_bytes()
        except OSError as exc:
            raise TrustError(
                f"cannot read the system bundle {config.system_bundle}: {exc}"
            ) from None
        if ca_pem not in system:
            system = system.rstrip(b"\n") + b"\n" + ca_pem
        _write(config.bundle, system)
        done["bundle"] = str(config.bundle)
        if config.env_file is not None:
            lines = "".join(f"{k}={v}\n" for k, v in job_environment(config).items())
            _write(config.env_file, lines.encode())
            done["env_file"] = str(config.env_file)
    except OSError as exc:
        raise TrustError(f"cannot install the interception CA: {exc}") from None
    return done


def uninstall(config: TrustConfig) -> None:
    """Remove the CA from the system store (``appliance run`` leaves it for the next boot's
    CA to replace; tests and ``--fresh`` runs call this)."""
    try:
        (config.local_dir / f"{CA_NAME}.crt").unlink(missing_ok=True)
    except OSError as exc:
        raise TrustError(f"cannot remove the interception CA: {exc}") from None


__all__ = ["ENV_VARIABLES", "TrustConfig", "TrustError", "install", "job_environment", "uninstall"]
