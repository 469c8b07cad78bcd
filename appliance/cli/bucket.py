"""``appliance bucket-policy``: print the least-privilege policy of a fleet's bucket."""

from __future__ import annotations

import json

import click

from appliance.bucket.policy import fleet_policy


@click.command("bucket-policy")
@click.argument("url", metavar="s3://BUCKET[/PREFIX]")
@click.option(
    "--runner", "runners", multiple=True, required=True, help="Runners' principal ARN (repeatable)."
)
@click.option(
    "--approver", "approvers", multiple=True, help="Approvers' principal ARN (repeatable)."
)
@click.option("--auditor", "auditors", multiple=True, help="Auditors' principal ARN (repeatable).")
@click.option(
    "--runner-sets-retention",
    is_flag=True,
    help="Runners send Object Lock retention on each put (ledger.ship.object_lock); default: "
    "the bucket's default retention applies and runners may not touch retention.",
)
def bucket_policy_command(
    url: str,
    runners: tuple[str, ...],
    approvers: tuple[str, ...],
    auditors: tuple[str, ...],
    runner_sets_retention: bool,
) -> None:
    """Print the bucket policy for the fleet under URL: runners put and read their logs and
    approval requests, approvers put decisions, auditors read; nobody deletes, or changes
    retention, legal hold, versioning, the lock or the policy. Apply it with
    `aws s3api put-bucket-policy --bucket BUCKET --policy file://policy.json`."""
    policy = fleet_policy(
        url,
        runners=runners,
        approvers=approvers,
        auditors=auditors,
        runner_sets_retention=runner_sets_retention,
    )
    click.echo(json.dumps(policy, indent=2))
