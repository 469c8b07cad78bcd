"""MySQL/MariaDB on the proxy shell: ``core.py`` (login, credential injection, end),
``relay.py`` (commands and responses, the hot path), ``hooks.py`` (policy per statement on
:mod:`appliance.proxy.statement_policy`, settings in flight), ``kill.py`` (issued connection
ids, KILL), ``recording.py`` (ledger entries on :mod:`appliance.proxy.records`; rows masked
by :mod:`appliance.masking.mysql`, as toward the job), ``pcap.py`` (the export renderer)."""
