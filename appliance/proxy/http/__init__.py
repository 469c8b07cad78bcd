"""HTTPS APIs and the Kubernetes API: the ``http`` protocol of the proxy.

- ``core.py``: the session core (TLS with the job, policy per request, credentials,
  forwarding, recording), :class:`~.core.HttpSession`;
- ``ca.py``: the per-boot interception CA and the contexts presenting its leaves;
  ``trust.py``: the CA put into the runner's trust;
- ``options.py``: the target's settings and the ``interception`` section;
- ``credentials.py``: what the job sent removed, the target's credential added (bearer,
  basic, header, AWS SigV4 re-signing);
- ``recording.py``, ``websocket.py``: the ledger entries, masked; ``har.py``,
  ``asciicast.py``, ``pcap.py``: exports;
- ``errors.py``: answers in the API's own shape.

``setup.py``: :func:`~.setup.prepare`, the registry's start hook: the daemon calls it once, before it listens.
"""
