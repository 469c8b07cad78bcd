"""appliance: a CI runner host appliance for privileged egress.

Where things sit on the data path (see DESIGN.md):

- ``capture``: netfilter redirection and fail-closed filter rules, the original
  destination, eBPF attribution and job identity.
- ``protocols``: sans-IO decoders (PostgreSQL first): bytes in, events out.
- ``proxy``: the asyncio shell that carries out what the decoders and policy decide.
- ``policy`` / ``approvals``: rule matching, SQL classification, just-in-time approvals.
- ``masking``: detectors and column rules applied before anything is stored.
- ``credentials``: upstream secrets and authentication clients.
- ``ledger``: the signed, append-only record and its verification.
- ``cli``: the ``appliance`` command; thin wrappers over the packages above.
"""

__version__ = "0.1.0"

from appliance import _pure

_pure.install()  # APPLIANCE_PURE=1: the pure-Python build of the hot path (see _pure.py)
