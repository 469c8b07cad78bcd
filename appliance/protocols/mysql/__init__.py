"""MySQL and MariaDB client/server protocol, sans-IO: framing, packets, both connection sides.

The proxy's MySQL session core (:mod:`appliance.proxy.mysql`) uses, per session:

- :class:`JobConnection` (``job.py``): the job-facing side, where the appliance plays the
  server: its own handshake, TLS on request, the job let in without any secret;
- :class:`UpstreamConnection` (``upstream.py``): the upstream side, where the appliance
  authenticates as the service account (mysql_native_password, caching_sha2_password fast
  and full, sha256_password, MariaDB client_ed25519, clear text only over TLS);
- :mod:`.messages`: typed decoders and encoders (handshake, OK/ERR/EOF, column
  definitions, text and binary rows, prepared statements, query attributes);
- :class:`Framer` (``_wire.py``): packets joined and capped; :mod:`.constants`: capability
  flags, commands, types, the character sets the appliance reads;
- :mod:`.auth`: the authentication answers.

Errors: :class:`PeerProtocolError` (the job or the server broke the protocol: ``.side``,
``.code``), :class:`UpstreamAuthenticationError`, :class:`LocalProtocolError` (our bug).
"""

from appliance.protocols.mysql._errors import (
    LocalProtocolError,
    PeerProtocolError,
    Side,
    UpstreamAuthenticationError,
)
from appliance.protocols.mysql._wire import DEFAULT_MAX_PACKET, Framer, packet
from appliance.protocols.mysql.job import JobConnection, JobHello, SSLRequested
from appliance.protocols.mysql.upstream import (
    Authenticated,
    AuthenticationFailed,
    StartTLS,
    UpstreamConnection,
)

__all__ = [
    "DEFAULT_MAX_PACKET",
    "Authenticated",
    "AuthenticationFailed",
    "Framer",
    "JobConnection",
    "JobHello",
    "LocalProtocolError",
    "PeerProtocolError",
    "SSLRequested",
    "Side",
    "StartTLS",
    "UpstreamAuthenticationError",
    "UpstreamConnection",
    "packet",
]
