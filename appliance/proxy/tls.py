"""TLS contexts toward targets, made from their config and kept for the process.

Where this sits: a session core asks for the context that verifies its target
(:attr:`~appliance.proxy.services.SessionServices.upstream_tls`) and hands it to the shell
in a ``StartTLS`` command. The modes follow libpq's ``sslmode`` names: ``prefer`` and
``require`` encrypt without checking the server; ``verify-ca`` checks the chain against
``ca``; ``verify-full`` also the host name (``server_name``, else the address dialled).
"""

from __future__ import annotations

import functools
import ssl

from appliance.config import UpstreamTLS

__all__ = ["upstream_context"]


@functools.lru_cache(maxsize=256)
def upstream_context(tls: UpstreamTLS) -> ssl.SSLContext:
    """The client context for ``tls`` (cached: the CA file is read once per config)."""
    context = ssl.create_default_context(
        ssl.Purpose.SERVER_AUTH, cafile=str(tls.ca) if tls.ca else None
    )
    if tls.mode in ("prefer", "require"):
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif tls.mode == "verify-ca":
        context.check_hostname = False
    return context
