"""The appliance's per-boot interception CA, and the TLS contexts that present its leaves.

Where this sits: the daemon makes one :class:`InterceptionCA` when it starts (through the
``http`` registry entry's ``prepare``), installs its certificate into the runner's trust
(:mod:`.trust`), and every HTTPS session's core asks :meth:`InterceptionCA.job_context` for
the server context of its target; the shell runs the handshake with it.

- The CA key is made at start, lives in this process's memory only, and dies with it: no
  key in the image, none on disk (a leaf's PEM is written to a root-only directory for the
  instant ``load_cert_chain`` reads it, then removed: the ssl module loads keys only from
  files).
- X.509 name constraints (RFC 5280 §4.2.1.10) limit the CA to the protected names: a
  client that checks them (OpenSSL, Go, NSS, Java) refuses a leaf for any other name even
  if the key leaked. ``*.s3.example`` permits the subtree ``s3.example``; IP names permit
  that one address.
- Leaves per name the job asks for (SNI), ECDSA P-256, cached; the handshake for a name the
  target does not protect fails (``unrecognized_name``): a shared address serves only the
  protected names through the appliance.
- ALPN: ``h2`` and ``http/1.1``.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from appliance.errors import ApplianceError

ALPN = ["h2", "http/1.1"]
LEAF_LIFETIME = datetime.timedelta(days=7)
_BACKDATE = datetime.timedelta(minutes=5)


def is_ip(name: str) -> bool:
    """``name`` is an IP address (a target protected by address, no SNI)."""
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def name_matches(pattern: str, name: str) -> bool:
    """``name`` (lower case, no port) is ``pattern`` or, for ``*.suffix``, one label under
    it (RFC 6125 §6.4.3: the wildcard covers exactly one label)."""
    if pattern.startswith("*."):
        head, dot, rest = name.partition(".")
        return bool(head) and bool(dot) and rest == pattern[2:]
    return name == pattern


class InterceptionCA:
    """See the module docstring. ``names``: every protected name (DNS names, ``*.`` wildcards,
    IP addresses) of every HTTP target; ``now`` the start time (passed in)."""

    def __init__(
        self,
        names: Sequence[str],
        *,
        now: datetime.datetime,
        lifetime: datetime.timedelta = datetime.timedelta(days=30),
        label: str = "appliance interception CA",
        workdir: Path | None = None,
    ) -> None:
        if not names:
            raise ApplianceError("the interception CA needs at least one protected name")
        self.names = tuple(sorted({n.lower() for n in names}))
        self.now = now
        self._key = ec.generate_private_key(ec.SECP256R1())
        subtrees: list[x509.GeneralName] = []
        for n in self.names:
            if is_ip(n):
                subtrees.append(x509.IPAddress(ipaddress.ip_network(n)))
            else:
                subtrees.append(x509.DNSName(n[2:] if n.startswith("*.") else n))
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, label)])
        public = self._key.public_key()
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + lifetime)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.NameConstraints(permitted_subtrees=subtrees, excluded_subtrees=None),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        self.cert_pem = self.cert.public_bytes(serialization.Encoding.PEM)
        self.fingerprint = self.cert.fingerprint(hashes.SHA256()).hex()
        self._dir = workdir
        self._leaves: dict[str, ssl.SSLContext] = {}
        self._contexts: dict[tuple[str, ...], ssl.SSLContext] = {}

    def covers(self, name: str) -> bool:
        return any(name_matches(p, name) for p in self.names)

    def leaf_pem(self, name: str) -> tuple[bytes, bytes]:
        """A new leaf certificate for ``name`` and its key (PEM), signed by this CA."""
        if not self.covers(name):
            raise ApplianceError(f"{name!r} is not a protected name")
        key = ec.generate_private_key(ec.SECP256R1())
        san: x509.GeneralName = (
            x509.IPAddress(ipaddress.ip_address(name)) if is_ip(name) else x509.DNSName(name)
        )
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name[:64])]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(self.now - _BACKDATE)
            .not_valid_after(self.now + LEAF_LIFETIME)
            .add_extension(x509.SubjectAlternativeName([san]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
            .sign(self._key, hashes.SHA256())
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return cert.public_bytes(serialization.Encoding.PEM) + self.cert_pem, key_pem

    def leaf_context(self, name: str) -> ssl.SSLContext:
        """The (cached) server context presenting the leaf for ``name``."""
        context = self._leaves.get(name)
        if context is None:
            chain, key = self.leaf_pem(name)
            context = _server_context()
            _load_chain(context, chain, key, self._dir)
            self._leaves[name] = context
        return context

    def job_context(self, allowed: Sequence[str], *, default: str | None = None) -> ssl.SSLContext:
        """The context that terminates the job's TLS for a target protecting ``allowed``
        (patterns): the SNI picks the leaf; a name outside ``allowed`` fails the handshake;
        no SNI gets ``default``'s leaf (an IP target), or fails when there is none."""
        key = (*allowed, "\0", default or "")
        context = self._contexts.get(key)
        if context is not None:
            return context
        patterns = tuple(p.lower() for p in allowed)
        context = _server_context()
        # The outer context needs a certificate of its own until the callback swaps it.
        first = default or next((p for p in patterns if not p.startswith("*.")), None)
        if first is None:
            raise ApplianceError("a target protected only by wildcard names needs no-SNI default")
        chain, pkey = self.leaf_pem(first)
        _load_chain(context, chain, pkey, self._dir)

        def pick(
            sock: ssl.SSLObject | ssl.SSLSocket, name: str | None, _: ssl.SSLContext
        ) -> int | None:
            wanted = (name or default or "").lower().rstrip(".")
            if not wanted or not any(name_matches(p, wanted) for p in patterns):
                return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
            sock.context = self.leaf_context(wanted)
            return None

        context.sni_callback = pick
        self._contexts[key] = context
        return context


def _server_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(ALPN)
    return context


def _load_chain(context: ssl.SSLContext, chain: bytes, key: bytes, workdir: Path | None) -> None:
    """Load a chain and key held in memory (the ssl module reads them from files only):
    written to a fresh root-only directory, read, removed."""
    directory = tempfile.mkdtemp(prefix="leaf-", dir=workdir)
    os.chmod(directory, 0o700)
    cert_path, key_path = os.path.join(directory, "c.pem"), os.path.join(directory, "k.pem")
    try:
        for path, data in ((cert_path, chain), (key_path, key)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        context.load_cert_chain(cert_path, key_path)
    finally:
        for path in (key_path, cert_path):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        os.rmdir(directory)


def upstream_context(
    cafile: str | None = None, *, load: Callable[[ssl.SSLContext], None] | None = None
) -> ssl.SSLContext:
    """The context that verifies HTTPS targets: the system trust store as it is now (made
    before the appliance's own CA is installed into it), or ``cafile`` instead; host names
    checked; ALPN http/1.1 (upstream is always HTTP/1.1)."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
    if load is not None:
        load(context)
    context.set_alpn_protocols(["http/1.1"])
    return context


__all__ = ["ALPN", "InterceptionCA", "is_ip", "name_matches", "upstream_context"]
