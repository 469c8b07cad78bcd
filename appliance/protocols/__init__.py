"""Sans-IO protocol decoders, one package per protocol (``postgres`` first).

Where this sits in the data path: the proxy shell (:mod:`appliance.proxy`) reads bytes from
the job's socket and from the upstream socket and feeds them to a connection object of the
protocol package; the connection hands back typed events and queues the bytes the appliance
must send. Nothing here imports asyncio or sockets or reads a clock: every decision is
visible in a test transcript.

- ``bytes in``: ``receive_data(data)`` on a connection returns events.
- ``bytes out``: methods that send something queue bytes; ``data_to_send()`` drains them.
- ``blame``: malformed input raises the protocol's ``PeerProtocolError`` naming the side at
  fault; asking a connection for something invalid in its state raises ``LocalProtocolError``
  (a bug in the appliance).
"""
