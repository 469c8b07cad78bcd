"""Upstream credentials: where secrets come from and the clients that prove them.

Where this sits: the job never holds a secret. When the proxy opens the upstream session
for a job, it reads the service account's secret (:mod:`.secrets`: a file or a systemd
credential) and the upstream protocol state machine proves it to the target with the
method the target asks for:

- :mod:`.scram`: SCRAM-SHA-256 / -PLUS (RFC 5802, 7677; channel binding per RFC 5929),
  with PostgreSQL's SASLprep (:mod:`.saslprep`);
- :mod:`.md5`: PostgreSQL's legacy md5 response;
- cleartext needs no helper (the secret is sent as is, so only where configuration allows).

Everything here is pure: randomness (nonces) is passed in, nothing is logged.
"""

from appliance.credentials.secrets import SecretError, read_secret

__all__ = ["SecretError", "read_secret"]
