"""The least-privilege bucket policy of a fleet's bucket (issue 15), as a JSON document.

Who may do what under ``s3://BUCKET/PREFIX`` (the layout is :mod:`appliance.ledger.fleet.
layout` for logs and :mod:`appliance.approvals.hub` for approvals):

- **runners**: write and read the logs (``PREFIX/logs/*``) and their approval requests and
  outcomes (``PREFIX/approvals/DAY/ID/request``, ``.../outcome``, ``.../receipt.*``), read
  the approvals (decisions), list both prefixes and their versions;
- **approvers**: read and list the approvals, write decisions
  (``PREFIX/approvals/DAY/ID/decision.*``) and nothing else;
- **auditors**: read and list everything under the prefix, with versions;
- nobody of them may delete an object or a version, change or bypass retention or legal
  hold, or change the bucket's policy, versioning, lock or lifecycle (explicit denies, so
  that an identity policy granting more does not help).

Retention comes from the bucket's default (Object Lock ``DefaultRetention``): with it
runners need no ``s3:PutObjectRetention``. A runner configured with ``ledger.ship.
object_lock`` sends retention headers on every put, which S3 authorises as
``s3:PutObjectRetention``: pass ``runner_sets_retention=True`` then (harmless in
COMPLIANCE mode, where retention can only be extended).

Resource patterns spell out every path segment (``approvals/*/*/request``, not
``approvals/*/request``): radosgw matches ``*`` without backtracking, so a ``*`` followed
by ``/request`` stops at the first ``/`` (AWS would match either form).

``appliance bucket-policy`` prints it; tests apply it to radosgw and check each denial.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from appliance.bucket._url import parse_bucket_url

_NEVER = [
    "s3:DeleteObject",
    "s3:DeleteObjectVersion",
    "s3:PutObjectLegalHold",
    "s3:BypassGovernanceRetention",
    "s3:PutBucketPolicy",
    "s3:DeleteBucketPolicy",
    "s3:PutBucketObjectLockConfiguration",
    "s3:PutBucketVersioning",
    "s3:PutLifecycleConfiguration",
    "s3:DeleteBucket",
]
_LIST = ["s3:ListBucket", "s3:ListBucketVersions"]
_READ = ["s3:GetObject", "s3:GetObjectVersion"]


def fleet_policy(
    url: str,
    *,
    runners: Sequence[str],
    approvers: Sequence[str] = (),
    auditors: Sequence[str] = (),
    runner_sets_retention: bool = False,
) -> dict[str, Any]:
    """The policy for ``url`` (``s3://BUCKET/PREFIX``) and the given principals (ARNs).
    Raises BucketURLError for a bad URL."""
    u = parse_bucket_url(url)
    base = f"{u.prefix}/" if u.prefix else ""
    obj = f"arn:aws:s3:::{u.bucket}/{base}"
    bucket = f"arn:aws:s3:::{u.bucket}"

    def who(arns: Sequence[str]) -> dict[str, list[str]]:
        return {"AWS": list(arns)}

    def listing(prefixes: list[str]) -> dict[str, Any]:
        return {"StringLike": {"s3:prefix": [f"{base}{p}" for p in prefixes]}}

    statements: list[dict[str, Any]] = [
        {
            "Sid": "RunnersWriteLogsAndRequests",
            "Effect": "Allow",
            "Principal": who(runners),
            "Action": [
                "s3:PutObject",
                *(["s3:PutObjectRetention"] if runner_sets_retention else []),
            ],
            "Resource": [
                f"{obj}logs/*",
                f"{obj}approvals/*/*/request",
                f"{obj}approvals/*/*/outcome",
                f"{obj}approvals/*/*/receipt.*",
            ],
        },
        {
            "Sid": "RunnersRead",
            "Effect": "Allow",
            "Principal": who(runners),
            "Action": _READ,
            "Resource": [f"{obj}logs/*", f"{obj}approvals/*"],
        },
        {
            "Sid": "RunnersList",
            "Effect": "Allow",
            "Principal": who(runners),
            "Action": _LIST,
            "Resource": [bucket],
            "Condition": listing(["logs/*", "approvals/*"]),
        },
    ]
    if approvers:
        statements += [
            {
                "Sid": "ApproversDecide",
                "Effect": "Allow",
                "Principal": who(approvers),
                "Action": ["s3:PutObject"],
                "Resource": [f"{obj}approvals/*/*/decision.*"],
            },
            {
                "Sid": "ApproversRead",
                "Effect": "Allow",
                "Principal": who(approvers),
                "Action": _READ,
                "Resource": [f"{obj}approvals/*"],
            },
            {
                "Sid": "ApproversList",
                "Effect": "Allow",
                "Principal": who(approvers),
                "Action": _LIST,
                "Resource": [bucket],
                "Condition": listing(["approvals/*"]),
            },
        ]
    if auditors:
        statements += [
            {
                "Sid": "AuditorsRead",
                "Effect": "Allow",
                "Principal": who(auditors),
                "Action": _READ,
                "Resource": [f"{obj}*"],
            },
            {
                "Sid": "AuditorsList",
                "Effect": "Allow",
                "Principal": who(auditors),
                "Action": _LIST,
                "Resource": [bucket],
                "Condition": listing(["*"]),
            },
        ]
    never = list(_NEVER)
    if not runner_sets_retention:
        never.append("s3:PutObjectRetention")
    statements.append(
        {
            "Sid": "NobodyHereRewritesEvidence",
            "Effect": "Deny",
            "Principal": who([*runners, *approvers, *auditors]),
            "Action": never,
            "Resource": [bucket, f"{bucket}/*"],
        }
    )
    return {"Version": "2012-10-17", "Statement": statements}
