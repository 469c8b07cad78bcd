"""The appliance's SSH identities: a per-run SSH certificate authority, the host key it
certifies, and the service accounts' keys.

Where this sits: the registry makes one :class:`SshShared` per appliance run
(:func:`shared`): an Ed25519 CA key made from the randomness the daemon passes in, kept in
memory only, and a host key. For each job connection the glue (:mod:`.runner`) asks
:meth:`SshShared.host_certificate` for a host certificate naming the target's addresses
(the job's OpenSSH client checks it against the ``@cert-authority`` line of the runner's
``ssh_known_hosts``, :mod:`.known_hosts`). Upstream, :func:`account_key` reads a service
account's secret: an OpenSSH private key, optionally followed by its certificate.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance.errors import ApplianceError
from appliance.proxy.ssh._asyncssh import asyncssh

__all__ = ["CERT_LIFETIME", "SshShared", "account_key", "shared"]

CERT_LIFETIME = 24 * 3600  # a host certificate is made per connection; this covers rekeys
_CLOCK_SKEW = 300
_PRIVATE_KEY = re.compile(
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.S
)
_CERT_LINE = re.compile(r"^\S+-cert-v01@openssh\.com \S+.*$", re.M)


def _ed25519(random_bytes: Callable[[int], bytes], comment: str) -> asyncssh.SSHKey:
    pem = Ed25519PrivateKey.from_private_bytes(random_bytes(32)).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    key = asyncssh.import_private_key(pem)
    key.set_comment(comment)
    return key


@dataclass
class SshShared:
    """What all SSH sessions of one appliance run share (see the module docstring)."""

    ca: asyncssh.SSHKey
    host_key: asyncssh.SSHKey

    def ca_public_line(self) -> str:
        """The CA's public key as OpenSSH writes it (``ssh-ed25519 AAAA... comment``)."""
        return self.ca.export_public_key("openssh").decode().strip()

    def fingerprint(self) -> str:
        return str(self.ca.get_fingerprint("sha256"))

    def host_certificate(
        self, principals: Iterable[str], *, now: float, key_id: str
    ) -> asyncssh.SSHCertificate:
        """A host certificate for the appliance's host key, valid for ``principals`` (the
        names and addresses the job may have used) from a little before ``now`` for
        :data:`CERT_LIFETIME`."""
        return self.ca.generate_host_certificate(
            self.host_key,
            key_id,
            principals=sorted(set(principals)),
            valid_after=int(now) - _CLOCK_SKEW,
            valid_before=int(now) + CERT_LIFETIME,
        )


def shared(random_bytes: Callable[[int], bytes]) -> SshShared:
    """The registry's factory: a fresh CA and host key for this run."""
    return SshShared(
        ca=_ed25519(random_bytes, "appliance-ssh-ca"),
        host_key=_ed25519(random_bytes, "appliance-ssh-host"),
    )


def account_key(secret: str) -> tuple[asyncssh.SSHKey, asyncssh.SSHCertificate | None]:
    """A service account's key (and its certificate when the secret holds one after the
    key); raises ApplianceError (never quoting the secret) when it cannot be read."""
    block = _PRIVATE_KEY.search(secret)
    if block is None:
        raise ApplianceError("the account's secret holds no OpenSSH or PEM private key")
    try:
        key = asyncssh.import_private_key(block.group(0))
    except (asyncssh.KeyImportError, ValueError) as exc:
        raise ApplianceError(f"the account's private key cannot be read: {exc}") from None
    cert = None
    line = _CERT_LINE.search(secret)
    if line is not None:
        try:
            cert = asyncssh.import_certificate(line.group(0))
        except (asyncssh.KeyImportError, ValueError) as exc:
            raise ApplianceError(f"the account's certificate cannot be read: {exc}") from None
    return key, cert
