"""HTTP/1.1 and HTTP/2, sans-IO, for the appliance's HTTPS targets (and the Kubernetes API).

The session core (:mod:`appliance.proxy.http`) uses, per connection:

- :class:`H1Server` (job side, HTTP/1.1): each request head checked raw against smuggling
  (:func:`check_request_head`), parsed by h11, pipelined requests in order;
- :class:`H2Server` (job side, HTTP/2 over ALPN ``h2``): the h2 library with bounded
  streams, header blocks and resets;
- :class:`H1Client` (upstream side): one request at a time, framed by the appliance;
- :func:`parse_kube`: a Kubernetes API request's verb, group, resource, namespace, name and
  subresource.

All of them speak the events of :mod:`._events` and raise :class:`PeerError` (with the
status the job is answered with and whose fault it was). No asyncio, socket, clock or
logging here.
"""

from appliance.protocols.http._errors import LocalProtocolError, PeerError
from appliance.protocols.http._events import (
    Body,
    Closed,
    End,
    Event,
    Headers,
    RequestHead,
    Reset,
    ResponseHead,
    Switched,
    header,
)
from appliance.protocols.http._head import HOP_BY_HOP, check_request_head
from appliance.protocols.http.h1 import MAX_HEAD, H1Client, H1Server, end_to_end
from appliance.protocols.http.h2conn import ALPN_H2, H2Server
from appliance.protocols.http.kube import KubeRequest, parse_kube

__all__ = [
    "ALPN_H2",
    "HOP_BY_HOP",
    "MAX_HEAD",
    "Body",
    "Closed",
    "End",
    "Event",
    "H1Client",
    "H1Server",
    "H2Server",
    "Headers",
    "KubeRequest",
    "LocalProtocolError",
    "PeerError",
    "RequestHead",
    "Reset",
    "ResponseHead",
    "Switched",
    "check_request_head",
    "end_to_end",
    "header",
    "parse_kube",
]
