"""``appliance approvals``: list held statements, approve or deny them with a signed decision.

Talks to the appliance over its local approvals socket (root only), or, with ``--hub
s3://BUCKET/PREFIX``, to every runner of the fleet through the bucket
(:mod:`appliance.approvals.hub`; ``--vkey`` names the fleet's ledger key, which signs the
requests: a request it did not sign is refused). ``approve``/``deny`` fetch the request to
learn the exact statement hash, show what is being decided, sign the decision with the
approver's key (``appliance keys generate --approver NAME``) and send it; through the hub
they wait for the runner's receipt. Exit codes: 0 accepted, 1 rejected (or the request is no
longer pending, or refused as forged), 2 cannot connect, no answer, or bad input.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import click

from appliance.approvals import (
    DEFAULT_SOCKET,
    ApprovalsClient,
    RequestNotPending,
    RequestState,
    RequestStatus,
    SignedDecision,
    sign_decision,
)
from appliance.approvals.decision import REQUEST_ID_RE
from appliance.approvals.errors import ApprovalsError, DecisionRejected
from appliance.approvals.hub import ForgedRequest, HubClient, HubRequest
from appliance.cli._source import BucketOptions, bucket_options
from appliance.signing.keys import VerifierKey, load_signing_key, load_verifier_key

_STATEMENT_WIDTH = 60

_socket_option = click.option(
    "--socket",
    "socket_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=DEFAULT_SOCKET,
    show_default=True,
    help="The appliance's approvals socket.",
)


_HUB_PARAMS = (
    bucket_options("--hub", "The fleet's bucket: approve on every runner through it."),
    click.option(
        "--vkey",
        "vkeys",
        multiple=True,
        help="With --hub: the fleet's ledger verifier key (file or text; repeatable).",
    ),
    click.option(
        "--days",
        type=click.IntRange(1, 31),
        default=2,
        show_default=True,
        help="With --hub: how many days of requests to look at.",
    ),
)


def _options(*params: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """One decorator for several click parameters, in the order given."""

    def apply(f: Any) -> Any:
        for param in reversed(params):
            f = param(f)
        return f

    return apply


_hub_options = _options(*_HUB_PARAMS)


def _hub(bucket: BucketOptions, vkeys: tuple[str, ...]) -> HubClient:
    verifiers: list[VerifierKey] = [load_verifier_key(v) for v in vkeys]
    return HubClient(bucket.open(), verifiers, clock=lambda: datetime.now(UTC))


@click.group("approvals")
def approvals() -> None:
    """Just-in-time approvals of held statements."""


@approvals.command("list")
@_socket_option
@_hub_options
@click.option(
    "--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True
)
def list_command(
    socket_path: Path, bucket: BucketOptions | None, vkeys: tuple[str, ...], days: int, fmt: str
) -> None:
    """List the statements waiting for an approval (with --hub: on every runner)."""
    origins: dict[str, str] = {}
    if bucket is not None:
        found = _hub(bucket, vkeys).requests(days=days)
        for f in found:
            if f.problem is not None:
                click.echo(f"REFUSED request {f.id} ({f.dir}): {f.problem}", err=True)
        pending = [
            f.status
            for f in found
            if f.problem is None and f.status and f.status.state is RequestState.PENDING
        ]
        origins = {f.id: f.origin or "?" for f in found}
    else:
        pending = ApprovalsClient(socket_path).list_requests()
    if fmt == "json":
        click.echo(
            json.dumps(
                [
                    {**s.to_dict(), **({"origin": origins[s.request.id]} if origins else {})}
                    for s in pending
                ],
                indent=2,
            )
        )
        return
    if not pending:
        click.echo("no approval requests are pending")
        return
    rows: list[tuple[str, ...]] = [
        (
            "ID",
            *(("RUNNER",) if origins else ()),
            "EXPIRES",
            "TARGET",
            "RULE",
            "IDENTITY",
            "STATEMENT",
        )
    ]
    for status in pending:
        r = status.request
        where = (origins[r.id],) if origins else ()
        rows.append(
            (
                r.id,
                *where,
                r.expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
                f"{r.target}/{r.account}",
                r.rule,
                r.identity,
                _one_line(r.statement, _STATEMENT_WIDTH),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [cell.ljust(w) for cell, w in zip(row, widths, strict=False)]
        click.echo("  ".join([*cells, row[-1]]).rstrip())


_DECIDE_PARAMS = (
    click.argument("request_id", metavar="ID"),
    click.option(
        "--key",
        "key_path",
        required=True,
        type=click.Path(dir_okay=False, path_type=Path),
        help="Your approver signing key (skey file).",
    ),
    click.option("--reason", default="", help="Why (shown to the job, stored in the ledger)."),
    click.option(
        "--approver",
        help="Approver name to sign as, if the policy names you differently from your key.",
    ),
    _socket_option,
    *_HUB_PARAMS,
    click.option(
        "--wait",
        type=click.FloatRange(min=0),
        default=15.0,
        show_default=True,
        help="With --hub: seconds to wait for the runner's receipt.",
    ),
)


_decide_options = _options(*_DECIDE_PARAMS)


@approvals.command("approve")
@_decide_options
def approve_command(request_id: str, key_path: Path, **kw: Any) -> None:
    """Approve the held statement of request ID (once, or for the window its rule allows)."""
    _decide("approve", request_id, key_path, **kw)


@approvals.command("deny")
@_decide_options
def deny_command(request_id: str, key_path: Path, **kw: Any) -> None:
    """Deny the held statement of request ID; the job gets an error with your reason."""
    _decide("deny", request_id, key_path, **kw)


def _decide(
    verb: Literal["approve", "deny"],
    request_id: str,
    key_path: Path,
    *,
    reason: str,
    approver: str | None,
    socket_path: Path,
    bucket: BucketOptions | None,
    vkeys: tuple[str, ...],
    days: int,
    wait: float,
) -> None:
    if not REQUEST_ID_RE.fullmatch(request_id):
        raise click.BadParameter(f"not a request id: {request_id!r}", param_hint="ID")
    key = load_signing_key(key_path)
    hub: HubClient | None = None
    found: HubRequest | None = None
    if bucket is not None:
        hub = _hub(bucket, vkeys)
        found = _found(hub, request_id, days)
        assert found.status is not None
        status = found.status
        click.echo(f"runner     {found.origin}")
    else:
        client = ApprovalsClient(socket_path)
        status = client.get(request_id)
    _show(status)
    if status.state is not RequestState.PENDING:
        by = f" by {status.approver}" if status.approver else ""
        raise RequestNotPending(f"request {request_id} is already {status.state.value}{by}")
    decision = SignedDecision(
        request_id=request_id,
        statement_sha256=status.request.statement_sha256,
        decision=verb,
        approver=approver or key.name,
        time=datetime.now(UTC).replace(microsecond=0),
        reason=reason,
    )
    click.echo(f"signing: {verb} as {decision.approver} (key {key.name}+{key.key_id.hex()})")
    note = sign_decision(decision, key)
    if hub is not None and found is not None:
        _decide_through_hub(hub, found, note, verb, wait)
        return
    accepted = client.decide(note)
    past = "approved" if accepted.decision == "approve" else "denied"
    click.echo(f"accepted: request {accepted.request_id} {past} by {accepted.approver}")


def _found(hub: HubClient, request_id: str, days: int) -> HubRequest:
    """The request from the bucket; raises ForgedRequest if it must be refused."""
    found = hub.find(request_id, days=max(days, 7))
    if found.problem is not None or found.status is None:
        raise ForgedRequest(f"request {request_id} ({found.dir}) is refused: {found.problem}")
    return found


def _decide_through_hub(
    hub: HubClient, found: HubRequest, note: str, verb: str, wait: float
) -> None:
    name = hub.post_decision(found, note)
    click.echo(f"posted: {hub.bucket.url}/{found.dir}{name}; waiting for the runner's receipt")
    deadline = time.monotonic() + wait
    while True:
        receipt = hub.receipt(found, name)
        if receipt is not None:
            break
        if time.monotonic() >= deadline:
            raise ApprovalsError(
                f"no receipt from runner {found.origin} within {wait:g}s: the decision stays in "
                "the bucket and counts if the runner reads it before the request expires"
            )
        time.sleep(0.3)
    if not receipt.accepted:
        raise DecisionRejected(str(receipt.reason), receipt.detail)
    past = "approved" if verb == "approve" else "denied"
    click.echo(f"accepted: request {found.id} {past} ({receipt.detail})")


@approvals.command("show")
@click.argument("request_id", metavar="ID")
@_socket_option
@_hub_options
def show_command(
    request_id: str,
    socket_path: Path,
    bucket: BucketOptions | None,
    vkeys: tuple[str, ...],
    days: int,
) -> None:
    """Show request ID: what is held, for whom, by which rule, until when."""
    if bucket is not None:
        found = _found(_hub(bucket, vkeys), request_id, days)
        assert found.status is not None
        click.echo(f"runner     {found.origin}")
        _show(found.status)
        for name, receipt in sorted(found.receipts.items()):
            verdict = "accepted" if receipt.accepted else f"rejected ({receipt.reason})"
            click.echo(f"decision   {name}: {verdict}: {receipt.detail}")
        return
    _show(ApprovalsClient(socket_path).get(request_id))


def _show(status: RequestStatus) -> None:
    r = status.request
    click.echo(f"request    {r.id} ({status.state.value})")
    click.echo(f"target     {r.target} as {r.account}")
    click.echo(f"identity   {r.identity} (session {r.session})")
    click.echo(f"rule       {r.rule}; approvers: {', '.join(r.approvers)}")
    click.echo(f"statement  {_one_line(r.statement, 400)}")
    click.echo(f"sha256     {r.statement_sha256}")
    click.echo(f"expires    {r.expires.strftime('%Y-%m-%dT%H:%M:%SZ')}")
    if r.window:
        until = (r.created + r.window).strftime("%Y-%m-%dT%H:%M:%SZ")
        click.echo(f"window     an approval also covers this statement from this job until {until}")


def _one_line(text: str, width: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 3] + "..."
