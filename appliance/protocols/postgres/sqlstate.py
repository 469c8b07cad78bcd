"""The SQLSTATEs the appliance sends to a job, named once (PostgreSQL's ``errcodes.txt``).

Imported by the codec's errors, the session core, the relay and the policy hooks; it imports
nothing, so every module of the package can use it.
"""

from __future__ import annotations

SUCCESSFUL_COMPLETION = "00000"
REJECTED_ESTABLISHMENT = "08004"  # the appliance could not open the upstream session
CONNECTION_FAILURE = "08006"
PROTOCOL_VIOLATION = "08P01"
FEATURE_NOT_SUPPORTED = "0A000"
INVALID_AUTHORIZATION = "28000"
INSUFFICIENT_PRIVILEGE = "42501"  # denied by policy, or refused by the appliance
SYNTAX_ERROR = "42601"
ADMIN_SHUTDOWN = "57P01"
INTERNAL_ERROR = "XX000"
