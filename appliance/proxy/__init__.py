"""The proxy: one protocol-neutral asyncio shell, and a sans-IO session core per protocol.

- :mod:`.server` listens (an explicit listener per target, the transparent one netfilter
  redirects to), resolves each connection's flow (:mod:`.flows`: target, upstream address,
  identity) and runs one :class:`~.shell.Connection` per connection in its task group;
- :mod:`.shell` carries out what the connection's core decides: sockets, TLS, timers,
  backpressure, approvals through the broker, graceful drain; it decides nothing;
- :mod:`.commands` is the contract between them; :mod:`.registry` lists the protocols
  (config check and the daemon read it); :mod:`.services` is what every core shares;
- ``pg/`` is PostgreSQL's core: ``core.py`` (startup, refusals, cancel, session records),
  ``relay.py`` (the run-based hot path), ``hooks.py`` (policy and approvals per
  statement), ``recording.py`` (ledger entries, masked); ``mysql/`` is MySQL's, alike;
- what the SQL protocols share is written once: :mod:`.statement_policy` (decisions and
  their records, denials' words, built-in refusals, approval requests and answers, settings
  in flight, the core's holds) and :mod:`.records` (the statement and response entries).

The contract a protocol implements (a byte-stream protocol: PostgreSQL, MySQL, HTTP):

1. a codec under ``appliance/protocols/<name>/``: bytes in, typed events out, bytes out;
   every message size-capped; no asyncio, socket, time or logging;
2. a session core class ``Core(services, shared, target, info)`` (:class:`.commands.
   SessionCore`): ``start()``, ``receive(side, data)``, ``handle(event)`` return commands
   (open upstream, start TLS on either side, ask for approval, send once, pause reading,
   timers, log, end); ``take_output()`` hands over the bytes for each side; ``crashed(exc)``
   ends cleanly after a bug;
3. its records: the core appends to ``services.ledger`` (``session.start`` ...
   ``session.end``, once, whatever happens); text is masked with ``services.masker``
   before it is appended; the shell never records;
4. its policy calls (``services.policy``) and approvals (an ``AskApproval`` command whose
   answer is an ``ApprovalAnswered`` event), the same signed notes for every protocol;
5. a :class:`.registry.Protocol` entry: name, default port, the core, the shared state of
   all its sessions, the target config keys it reads, its pcap renderer.

A protocol whose well-kept library owns the connection (SSH with asyncssh) plugs into the
same listeners, flows, services, records and approvals with a registry entry whose core
drives the library from the shell's side, while its decisions stay in sans-IO code that
tests drive without sockets.
"""
