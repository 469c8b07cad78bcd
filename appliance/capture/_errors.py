"""Errors of the capture layer, all subclasses of :class:`appliance.errors.ApplianceError`.

Whose fault it is decides the class:

- :class:`CaptureError`: the host refused or could not do what capture needs (a netfilter
  tool is missing, ``iptables-restore`` or ``nft`` rejected a script, a cgroup does not
  exist). The message quotes the tool's own words and, for a rejected script, the line.
- :class:`RulesNotInPlace` (exit 1): ``capture status`` found a rule missing or out of place.
- :class:`OriginalDstUnavailable`: an accepted connection carries no original destination
  (it was not redirected, or its conntrack entry is gone); the session must be refused.
- :class:`AttributionUnavailable`: the BPF attribution programs cannot be loaded or
  attached. Capture and enforcement still work (netfilter enforces, eBPF observes); the
  daemon records ``capture.bpf_failed`` with :attr:`AttributionUnavailable.reason` and runs
  with every session ``unattributed``.
"""

from __future__ import annotations

from appliance.errors import ApplianceError


class CaptureError(ApplianceError):
    """Capture rules could not be installed, read or removed (exit 2)."""


class RulesNotInPlace(CaptureError):
    """``capture status`` found rules missing or out of place: a finding (exit 1)."""

    exit_code = 1


class OriginalDstUnavailable(CaptureError):
    """An accepted socket has no SO_ORIGINAL_DST: it was not redirected by netfilter."""


class AttributionUnavailable(ApplianceError):
    """BPF attribution cannot run; ``reason`` is a sentence for the ledger and the log."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"BPF attribution unavailable: {reason}")
