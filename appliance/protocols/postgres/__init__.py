"""PostgreSQL wire protocol (3.0 and 3.2), sans-IO: framing, messages, both connection sides.

The proxy shell uses, per session:

- :class:`ClientConnection` (``client.py``): the job-facing side, where the appliance plays
  the server. Startup, SSLRequest/GSSENCRequest negotiation, protocol version negotiation,
  the job's (secret-less) authentication, then :class:`Messages` to relay.
- :class:`ServerConnection` (``server.py``): the upstream side, where the appliance plays
  the client and authenticates with the service account's secret (SCRAM-SHA-256[-PLUS],
  md5, cleartext), then :class:`Messages` to relay.
- :class:`CancelKeys` (``cancel.py``): cancel keys issued to jobs, mapped to real ones.
- :mod:`.messages`: typed decoders and encoders, :func:`error_response`, and the DataRow
  hot-path helpers :func:`datarow_values` / :func:`encode_datarow`.
- :class:`Framer` and :class:`Limits` (``_framing.py``): size-capped splitting, no object
  per message (about 0.3 µs per relayed message).

Both connections follow one pattern: ``receive_data(bytes) -> list[event]``, action methods
that queue bytes, ``data_to_send() -> bytes``, ``receive_eof()``. Errors:
:class:`PeerProtocolError` (the job or the server broke the protocol; ``.side``,
``.sqlstate``), :class:`UpstreamAuthenticationError` (cannot authenticate upstream as
configured), :class:`LocalProtocolError` (an appliance bug: not an ApplianceError).

A session, in the shell's terms::

    job = ClientConnection()
    ev = job.receive_data(data)            # StartupReceived (maybe after SSLRequested...)
    up = ServerConnection(user=account.user, database=..., password=secret,
                          parameters=ev.forwardable_parameters(), random_bytes=token_bytes)
    up.initiate(); send(up.data_to_send())
    ... up.receive_data(...) -> StartTLS / Authenticated / ServerReady(parameters, key, ...)
    issued = cancel_keys.issue(ready.backend_key, route, key_length=4 if job.minor == 0 else 32)
    job.complete_startup(ready.parameters, issued, notices=ready.notices)
    send_to_job(job.data_to_send())
    # then: Messages from either side, inspected with decode_frontend/decode_backend
"""

from appliance.protocols.postgres._errors import (
    LocalProtocolError,
    PeerProtocolError,
    Side,
    UpstreamAuthenticationError,
)
from appliance.protocols.postgres._framing import (
    BACKEND_STARTUP_TYPES,
    BACKEND_TYPES,
    FRONTEND_AUTH_TYPES,
    FRONTEND_TYPES,
    Framer,
    Limits,
    Messages,
)
from appliance.protocols.postgres.cancel import CancelKeys
from appliance.protocols.postgres.client import (
    CancelRequested,
    ClientClosed,
    ClientConnection,
    ClientEvent,
    ClientState,
    GSSEncRequested,
    PasswordReceived,
    SSLRequested,
    StartupReceived,
    Terminated,
)
from appliance.protocols.postgres.messages import (
    BackendMessage,
    FrontendMessage,
    datarow_values,
    decode_backend,
    decode_frontend,
    decode_startup,
    encode_datarow,
    error_response,
    notice_response,
)
from appliance.protocols.postgres.server import (
    Authenticated,
    ServerClosed,
    ServerConnection,
    ServerEvent,
    ServerReady,
    ServerState,
    StartTLS,
    StartupFailed,
)

__all__ = [
    "BACKEND_STARTUP_TYPES",
    "BACKEND_TYPES",
    "FRONTEND_AUTH_TYPES",
    "FRONTEND_TYPES",
    "Authenticated",
    "BackendMessage",
    "CancelKeys",
    "CancelRequested",
    "ClientClosed",
    "ClientConnection",
    "ClientEvent",
    "ClientState",
    "Framer",
    "FrontendMessage",
    "GSSEncRequested",
    "Limits",
    "LocalProtocolError",
    "Messages",
    "PasswordReceived",
    "PeerProtocolError",
    "SSLRequested",
    "ServerClosed",
    "ServerConnection",
    "ServerEvent",
    "ServerReady",
    "ServerState",
    "Side",
    "StartTLS",
    "StartupFailed",
    "StartupReceived",
    "Terminated",
    "UpstreamAuthenticationError",
    "datarow_values",
    "decode_backend",
    "decode_frontend",
    "decode_startup",
    "encode_datarow",
    "error_response",
    "notice_response",
]
