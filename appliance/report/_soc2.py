"""Which SOC 2 common criteria (2017 Trust Services Criteria) each section of the report
serves, said plainly. The one home of this mapping: the summary page, every section page and
``report.json`` read it from here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Criterion:
    id: str
    asks: str  # what the criterion asks, in plain words
    shows: str  # what this report gives as evidence for it


CRITERIA: tuple[Criterion, ...] = (
    Criterion(
        "CC6.1",
        "Access to protected information assets is restricted by logical access controls.",
        "Every connection from CI jobs to a protected target passed through the appliance, "
        "which held the target's credentials (jobs never saw them) and recorded who connected, "
        "to which target, as which service account.",
    ),
    Criterion(
        "CC6.2",
        "Users are identified and authorised before they are given access.",
        "Each session names the CI job (repository, workflow, job, run), whether a verified CI "
        "token stated it or the job only claimed it, and the process that opened it; flows "
        "nobody could be attributed to and rejected or mismatched tokens are listed as gaps.",
    ),
    Criterion(
        "CC6.3",
        "Access is granted, changed and removed according to roles and least privilege.",
        "The policy decided every statement: denials with the rule and the statement, and "
        "risky statements held until a named approver signed a decision.",
    ),
    Criterion(
        "CC6.6",
        "Access from outside the system boundary is controlled.",
        "Transparent capture redirected all egress to protected targets; capture events "
        "(rules restored, attribution lost) are listed as gaps.",
    ),
    Criterion(
        "CC7.2",
        "System components are monitored for anomalies and security events.",
        "Denials, refused approval decisions, unattributed flows, logs that end without a "
        "clean stop, unsigned tails, and the verification of every log against its signed "
        "checkpoints.",
    ),
    Criterion(
        "CC8.1",
        "Changes to infrastructure and data are authorised, approved and recorded.",
        "Sessions that changed schema, privileges or deleted data, with their full replay; "
        "every hold with the approver, the reason and the signed decision.",
    ),
)

# Report section -> the criteria it serves.
SECTIONS: dict[str, tuple[str, ...]] = {
    "summary": ("CC6.1", "CC7.2"),
    "logs": ("CC7.2",),
    "identities": ("CC6.1", "CC6.2"),
    "targets": ("CC6.1",),
    "decisions": ("CC6.3", "CC8.1", "CC7.2"),
    "privileged": ("CC8.1", "CC6.3"),
    "gaps": ("CC6.6", "CC7.2", "CC6.2"),
    "sessions": ("CC6.1", "CC8.1"),
    "verify": ("CC7.2",),
}


def sections_for(criterion: str) -> list[str]:
    return [name for name, ids in SECTIONS.items() if criterion in ids]
