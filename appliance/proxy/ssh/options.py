"""An SSH target's own settings (``targets[]`` keys beyond the common ones; the registry
entry lists them).

Where this sits: the config reads a target with ``protocol: ssh`` through the registry
(:mod:`appliance.proxy.registry`), which calls :func:`parse_options`; the result is the
target's ``options``, read by the SSH session (:mod:`.core`) and its glue (:mod:`.runner`)::

    - name: web
      protocol: ssh
      addresses: ["10.1.2.10:22", "web1.internal.example:22"]
      known_hosts: /etc/appliance/ssh/web.known_hosts   # the target's real host keys, or a
                                                        # "@cert-authority" line (host CA)
      login_timeout: 30s          # key exchange and the job's login (default 30s)
      max_channels: 32            # channels open at once per connection (default 32)
      max_recording: 16MiB        # recorded stream bytes per channel (default 16 MiB)
      max_transfer_content: 64KiB # masked content kept per file transferred (default 64 KiB)
      accounts:
        - name: deploy            # the job's "ssh deploy@web1" picks it (else the first one)
          user: deploy            # the account on the target
          secret: {credential: web-deploy}   # an OpenSSH private key; a certificate for it
                                             # may follow in the same secret
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from appliance.config import Node

__all__ = ["TARGET_KEYS", "SshOptions", "parse_options"]

TARGET_KEYS = (
    "known_hosts",
    "login_timeout",
    "max_channels",
    "max_recording",
    "max_transfer_content",
)


@dataclass(frozen=True)
class SshOptions:
    known_hosts: Path
    login_timeout: float = 30.0
    max_channels: int = 32
    max_recording: int = 16 * 1024 * 1024
    max_transfer_content: int = 64 * 1024
    # Channel opens refused (over max_channels) before the session is ended as a flood.
    max_refused_channels: int = 64


def parse_options(m: dict[str, Node]) -> SshOptions:
    """The options of one target (``m``: its checked keys); ConfigError with the line on
    a mistake. ``known_hosts`` is required: an upstream host key is never taken on trust."""
    if "known_hosts" not in m:
        name = m["name"]
        name.fail(
            "an ssh target needs 'known_hosts': a file with the target's real host keys "
            "(or an @cert-authority line for its host CA)"
        )
    d = SshOptions(Path("/"))
    login = m["login_timeout"].duration() if "login_timeout" in m else d.login_timeout
    if login <= 0:
        m["login_timeout"].fail("must be longer than 0")
    return SshOptions(
        known_hosts=Path(m["known_hosts"].string()),
        login_timeout=login,
        max_channels=m["max_channels"].integer(minimum=1, maximum=1024)
        if "max_channels" in m
        else d.max_channels,
        max_recording=m["max_recording"].size() if "max_recording" in m else d.max_recording,
        max_transfer_content=m["max_transfer_content"].size()
        if "max_transfer_content" in m
        else d.max_transfer_content,
    )
