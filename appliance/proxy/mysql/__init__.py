"""MySQL/MariaDB on the proxy shell: ``core.py`` (login, credential injection, end),
``relay.py`` (commands and responses, the hot path), ``hooks.py`` (policy per statement,
settings in flight, approvals), ``kill.py`` (issued connection ids, KILL), ``recording.py``
(ledger entries and masked rows), ``pcap.py`` (the export renderer)."""
