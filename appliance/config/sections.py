"""The config sections other packages own, parsed in one place for the daemon and
``config check`` alike.

Where this sits: :func:`appliance.config.load_config` checks the file's own sections
(targets, ledger, capture) and keeps ``policy`` and ``masking`` as nodes, because those
packages depend on the targets, and ``identity``; :func:`parse_sections` turns them into
objects. Import it
from here (not from :mod:`appliance.config`): the packages it calls import the config.
"""

from __future__ import annotations

from dataclasses import dataclass

from appliance.approvals import ApprovalsTransportConfig, parse_approvals_transport
from appliance.config import Config
from appliance.identity import IdentityConfig, parse_identity
from appliance.masking import MaskingConfig, parse_masking
from appliance.policy import Policy, parse_policy
from appliance.proxy.http.options import Interception, parse_interception

__all__ = ["Sections", "parse_sections"]


@dataclass(frozen=True)
class Sections:
    """``policy`` (None: no policy section), ``masking``, and ``approvals``: the
    transport approvers use (the ``policy.approvals`` keys; None when absent); ``identity``:
    the trusted CI token issuers (None: no section, every CI field is claimed);
    ``interception``: where the HTTPS targets' CA goes (None: no http target)."""

    policy: Policy | None
    masking: MaskingConfig
    approvals: ApprovalsTransportConfig | None
    identity: IdentityConfig | None = None
    interception: Interception | None = None


def parse_sections(cfg: Config) -> Sections:
    """Parse the sections; raise ConfigError naming the key and line of the first problem."""
    identity = parse_identity(cfg.identity)
    policy = (
        parse_policy(cfg.policy, targets=cfg.targets, verifiable=identity is not None)
        if cfg.policy is not None
        else None
    )
    masking = parse_masking(cfg.masking, targets=cfg.targets)
    transport = None
    if cfg.policy is not None and cfg.policy.is_mapping:
        node = cfg.policy.mapping().get("approvals")
        if node is not None:
            transport = parse_approvals_transport(node)
    interception = None
    if cfg.interception is not None or any(t.protocol == "http" for t in cfg.targets.values()):
        interception = parse_interception(cfg.interception)
    return Sections(policy, masking, transport, identity, interception)
