"""The auditor's evidence package: ``appliance report`` (issue 21).

Where it sits: after the ledger. It reads the fleet's logs (one per runner boot) from the
sources, verifies each whole log, and writes a self-contained package for a period: static
HTML pages (summary with charts, identities, targets, denials and approvals with the signed
decisions, privileged sessions with their replay, gaps, SOC 2 criteria, how to check it
without us), the same facts as JSON, the signed checkpoints and the entries they cover, and
tlog-proofs of the entries behind each denial and decision.

- :mod:`~appliance.report.sources`: ``--source`` values to local ledger directories;
- :mod:`~appliance.report._adapter`: ledger entries to report events (the only reader of
  entry types and fields);
- :mod:`~appliance.report._facts`: the facts of a period, gathered in one pass per log;
- :mod:`~appliance.report._pages`, ``_charts``, ``_soc2``: HTML (Jinja2), SVG charts
  (matplotlib), the criteria mapping;
- :mod:`~appliance.report._package`: writing the package; ``check_evidence.py``: the
  standalone checker copied into it.
"""

from appliance.report._facts import Period
from appliance.report._package import ReportRequest, ReportResult, build_report

__all__ = ["Period", "ReportRequest", "ReportResult", "build_report"]
