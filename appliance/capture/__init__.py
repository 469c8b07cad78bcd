"""Transparent capture: netfilter redirection that fails closed, eBPF attribution, identity.

Where it sits in the data path (DESIGN.md)::

    job connect(10.1.2.3:5432) ─► nat REDIRECT ─► appliance listener (accept)
        original_dst(sock) -> ("10.1.2.3", 5432) -> target_for(config, ...) -> Target | None
        Attribution.lookup(*peer) -> FlowOwner | None -> resolve_identity(owner) -> dict
        upstream_socket(family, config.capture.mark) -> connect to the target

The pieces, each in its own module:

- rules (:mod:`._rules`, pure; :mod:`._netfilter`, I/O): :func:`render_rules`,
  :func:`install`, :func:`status`, :func:`remove`, :class:`Reconciler`. Our own chains
  (``APPLIANCE-*``) in nat and filter, for IPv4 and IPv6, each jumped to from the first rule
  of its parent, applied with ``iptables-restore --noflush``; filter rules refuse unmarked
  traffic to protected targets, so a stopped appliance or a flushed nat table means
  "connection refused", never a bypass. Plus the egress guard (:mod:`._egress`), an
  nftables netdev table that drops unmarked packets to targets sent from packet sockets,
  which skip iptables. Only :func:`remove` removes rules.
- original destination (:mod:`._origdst`): :func:`original_dst`, :func:`target_for`,
  :func:`upstream_socket`, :func:`mark_socket`.
- attribution (:mod:`._attribution`, ``bpf/attribution.c``): :class:`Attribution`,
  :class:`FlowOwner`; raises :class:`AttributionUnavailable` with the reason when BPF cannot
  run (the daemon records ``capture.bpf_failed`` and goes on unattributed).
- job privileges (:mod:`._privileges`): :func:`check_jobs` finds job processes that are
  root, hold a dangerous capability or can reach the appliance's secrets (``capture
  status`` warns; the daemon records ``capture.job_privileged``).
- identity (:mod:`._identity`, :mod:`._ci`): :func:`resolve_identity`,
  :class:`IdentityCache`; :func:`job_environ` reads the CI token variables for
  :mod:`appliance.identity` (secrets: read per call, never recorded).

The daemon's use, in order: ``require_own_cgroup(config.capture.appliance_cgroup)`` (the
rules let marked traffic out from that cgroup only); ``install(config)`` (idempotent); a
``Reconciler(config)`` whose ``check_and_repair()`` runs every
``config.capture.reconcile_interval`` seconds in a worker thread (each returned
:class:`RuleChange` goes to the ledger); ``Attribution.from_config(config)`` (or
:meth:`Attribution.start`), whose :meth:`Attribution.bypass_attempts` it reads often and
records; then per connection the calls above. Listen on
``[::]:config.capture.listen_port`` with IPV6_V6ONLY off (IPv4 flows are redirected to
127.0.0.1 or, from a container bridge, to the bridge's address; IPv6 flows to ::1).
"""

from appliance.capture._attribution import (
    DEFAULT_PROGRAM_DIR,
    Attribution,
    FlowOwner,
    StaleProgram,
)
from appliance.capture._cgroup import require_own_cgroup
from appliance.capture._errors import (
    AttributionUnavailable,
    CaptureError,
    OriginalDstUnavailable,
    RulesNotInPlace,
)
from appliance.capture._identity import (
    IdentityCache,
    job_environ,
    resolve_identity,
    unattributed,
)
from appliance.capture._netfilter import (
    InstallReport,
    Reconciler,
    RemoveReport,
    RuleChange,
    StatusReport,
    install,
    namespace_interfaces,
    remove,
    status,
)
from appliance.capture._origdst import (
    mark_socket,
    normalise_ip,
    original_dst,
    target_for,
    upstream_socket,
)
from appliance.capture._privileges import (
    Finding,
    JobsReport,
    appliance_secrets,
    check_jobs,
    jobs_cgroup,
)
from appliance.capture._resolve import HostResolver, system_lookup
from appliance.capture._rules import FamilyRules, RuleSet, RuleState, render_rules

__all__ = [
    "DEFAULT_PROGRAM_DIR",
    "Attribution",
    "AttributionUnavailable",
    "CaptureError",
    "FamilyRules",
    "Finding",
    "FlowOwner",
    "HostResolver",
    "IdentityCache",
    "InstallReport",
    "JobsReport",
    "OriginalDstUnavailable",
    "Reconciler",
    "RemoveReport",
    "RuleChange",
    "RuleSet",
    "RuleState",
    "RulesNotInPlace",
    "StaleProgram",
    "StatusReport",
    "appliance_secrets",
    "check_jobs",
    "install",
    "job_environ",
    "jobs_cgroup",
    "mark_socket",
    "namespace_interfaces",
    "normalise_ip",
    "original_dst",
    "remove",
    "render_rules",
    "require_own_cgroup",
    "resolve_identity",
    "status",
    "system_lookup",
    "target_for",
    "unattributed",
    "upstream_socket",
]
