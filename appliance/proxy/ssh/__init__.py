"""SSH: the fourth protocol (issue 18), on the shared proxy with asyncssh on both sides.

- :mod:`.core` -- the sans-IO session: logins, channels, policy, records (every decision);
- :mod:`.events` -- its contract with the glue (events in, commands out);
- :mod:`.runner` -- the asyncssh glue (the registry's ``runner``): carries out commands;
- :mod:`.sftp` -- one SFTP channel, request by request; :mod:`.transfers` -- files moved;
- :mod:`.decisions` -- policy per operation, approvals; :mod:`.recording` -- ledger
  entries; :mod:`.terminal` -- recorded streams, masked, secrets typed hidden;
- :mod:`.keys` -- the per-run CA and host key, account keys; :mod:`.known_hosts` -- the
  runner's ``@cert-authority`` line; :mod:`.options` -- a target's SSH settings.

Importing this package imports neither asyncssh nor the glue (the config reads
:mod:`.options` through the registry).
"""
