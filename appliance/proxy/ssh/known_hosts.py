"""The runner's trust in the appliance's SSH CA: one marked block of the system-wide
``ssh_known_hosts``.

Where this sits: at start, the daemon (through the registry's ``prepare`` hook,
:func:`prepare`) makes this run's CA and writes an ``@cert-authority`` line for the SSH targets' host patterns,
signed by this run's CA (:mod:`.keys`), so that unmodified OpenSSH clients accept the host
certificate the appliance presents when it intercepts them; ``appliance capture remove``
takes the block out (:func:`remove`). The rest of the file is left exactly as it was. The
file is replaced atomically (a temporary file in the same directory, fsynced, renamed).

Patterns: each target address as OpenSSH names it (``10.1.2.10``, ``web1.example``, and
``[10.1.2.10]:2222`` for another port); a network target is written as the widest
octet-aligned wildcard that covers it (``10.1.2.*`` for ``10.1.2.0/24`` and for
``10.1.2.128/25``; any IPv6 literal, ``*:*``, for an IPv6 network). A pattern wider than
the target is harmless: the line only makes clients trust certificates signed by this
run's CA, which only the appliance holds, and only intercepted connections get one. An
explicit listener's address is added too.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from appliance.config import Address, CaptureConfig, Config, Target

if TYPE_CHECKING:
    from appliance.proxy.ssh.keys import SshShared

__all__ = [
    "BEGIN",
    "END",
    "block",
    "install",
    "patterns",
    "prepare",
    "remove",
    "trust",
    "untrust",
    "without_block",
]

BEGIN = (
    "# BEGIN appliance SSH CA (written by 'appliance run'; removed by 'appliance capture remove')"
)
END = "# END appliance SSH CA"


def _name(host: str, port: int) -> str:
    return host if port == 22 else f"[{host}]:{port}"


def _address_pattern(address: Address) -> str:
    if address.kind != "cidr":
        return _name(address.value, address.port)
    net = ipaddress.ip_network(address.value, strict=False)
    if net.version == 6:
        return _name("*:*", address.port)
    octets = str(net.network_address).split(".")
    whole = net.prefixlen // 8
    if whole == 4:
        return _name(str(net.network_address), address.port)
    return _name(".".join([*octets[:whole], "*"]), address.port)


def patterns(targets: Iterable[Target]) -> list[str]:
    """The host patterns of ``targets``, in order, without repeats."""
    out: list[str] = []
    for target in targets:
        names = [_address_pattern(a) for a in target.addresses]
        if target.listen is not None:
            names.append(_name(*target.listen))
        for name in names:
            if name not in out:
                out.append(name)
    return out


def block(ca_line: str, targets: Iterable[Target]) -> str:
    """The marked block: the ``@cert-authority`` line between the markers."""
    return f"{BEGIN}\n@cert-authority {','.join(patterns(targets))} {ca_line}\n{END}\n"


def without_block(text: str) -> tuple[str, bool]:
    """``text`` without the appliance's block (and whether there was one)."""
    lines = text.splitlines(keepends=True)
    out: list[str] = []
    inside = found = False
    for line in lines:
        if line.rstrip("\n") == BEGIN:
            inside = found = True
            continue
        if inside:
            if line.rstrip("\n") == END:
                inside = False
            continue
        out.append(line)
    return "".join(out), found


def _replace(path: Path, text: str) -> None:
    mode = path.stat().st_mode & 0o7777 if path.exists() else 0o644
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def install(path: Path, ca_line: str, targets: Iterable[Target]) -> str:
    """Write (or replace) the block in ``path``; return the line written. Raises OSError."""
    current = path.read_text() if path.exists() else ""
    rest, _ = without_block(current)
    if rest and not rest.endswith("\n"):
        rest += "\n"
    text = block(ca_line, targets)
    _replace(path, rest + text)
    return text.splitlines()[1]


def remove(path: Path) -> bool:
    """Take the block out of ``path``; True if there was one. Raises OSError."""
    if not path.exists():
        return False
    rest, found = without_block(path.read_text())
    if found:
        _replace(path, rest)
    return found


def trust(config: Config, targets: Iterable[Target], shared: SshShared) -> dict[str, Any]:
    """The block for ``shared``'s CA written to ``capture.ssh_known_hosts``: what the
    ``capture.trust_installed`` entry records. Raises OSError when it cannot be written."""
    path = config.capture.ssh_known_hosts
    line = install(path, shared.ca_public_line(), targets)
    return {"file": str(path), "line": line, "ca_fingerprint": shared.fingerprint()}


def prepare(config: Config, record: Callable[[str, dict[str, Any]], None]) -> SshShared:
    """The registry's ``prepare`` hook: this run's CA and host key, and the runner's trust
    in them, recorded as ``capture.trust_installed``.

    A trust that cannot be written (no /etc/ssh on the image, a read-only file) is recorded
    as ``capture.trust_failed`` and the appliance serves on: the line is what lets
    unmodified clients accept the appliance, not what keeps them from going around it
    (netfilter does), so without it SSH clients fail closed (they refuse the appliance's
    host key) while every other protocol goes on."""
    from appliance.proxy.ssh.keys import shared as make_shared  # asyncssh: only for SSH

    shared = make_shared(secrets.token_bytes)
    targets = [t for t in config.targets.values() if t.protocol == "ssh"]
    try:
        done = trust(config, targets, shared)
    except OSError as exc:
        record("capture.trust_failed", {"protocol": "ssh", "error": str(exc)})
    else:
        record("capture.trust_installed", {"protocol": "ssh", **done})
    return shared


def untrust(config: Config | None) -> list[str]:
    """The registry's ``untrust`` hook (``capture remove``): the block taken out of the
    configured file (the default one without a config)."""
    path = config.capture.ssh_known_hosts if config is not None else CaptureConfig().ssh_known_hosts
    return [f"the SSH CA line in {path}"] if remove(path) else []
