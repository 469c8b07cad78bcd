"""``appliance approvals``: list held statements, approve or deny them with a signed decision.

Talks to the appliance over its local approvals socket (root only). ``approve``/``deny``
fetch the request to learn the exact statement hash, show what is being decided, sign the
decision with the approver's key (``appliance keys generate --approver NAME``) and send it.
Exit codes: 0 accepted, 1 rejected (or the request is no longer pending), 2 cannot connect
or bad input.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

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
from appliance.signing.keys import load_signing_key

_STATEMENT_WIDTH = 60

_socket_option = click.option(
    "--socket",
    "socket_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=DEFAULT_SOCKET,
    show_default=True,
    help="The appliance's approvals socket.",
)


@click.group("approvals")
def approvals() -> None:
    """Just-in-time approvals of held statements."""


@approvals.command("list")
@_socket_option
@click.option(
    "--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True
)
def list_command(socket_path: Path, fmt: str) -> None:
    """List the statements waiting for an approval."""
    pending = ApprovalsClient(socket_path).list_requests()
    if fmt == "json":
        click.echo(json.dumps([s.to_dict() for s in pending], indent=2))
        return
    if not pending:
        click.echo("no approval requests are pending")
        return
    rows = [("ID", "EXPIRES", "TARGET", "RULE", "IDENTITY", "STATEMENT")]
    for status in pending:
        r = status.request
        rows.append(
            (
                r.id,
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
)


def _decide_options(f: click.decorators.FC) -> click.decorators.FC:
    for param in reversed(_DECIDE_PARAMS):
        f = param(f)
    return f


@approvals.command("approve")
@_decide_options
def approve_command(
    request_id: str, key_path: Path, reason: str, approver: str | None, socket_path: Path
) -> None:
    """Approve the held statement of request ID (once, or for the window its rule allows)."""
    _decide("approve", request_id, key_path, reason, approver, socket_path)


@approvals.command("deny")
@_decide_options
def deny_command(
    request_id: str, key_path: Path, reason: str, approver: str | None, socket_path: Path
) -> None:
    """Deny the held statement of request ID; the job gets an error with your reason."""
    _decide("deny", request_id, key_path, reason, approver, socket_path)


def _decide(
    verb: Literal["approve", "deny"],
    request_id: str,
    key_path: Path,
    reason: str,
    approver: str | None,
    socket_path: Path,
) -> None:
    if not REQUEST_ID_RE.fullmatch(request_id):
        raise click.BadParameter(f"not a request id: {request_id!r}", param_hint="ID")
    key = load_signing_key(key_path)
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
    accepted = client.decide(sign_decision(decision, key))
    past = "approved" if accepted.decision == "approve" else "denied"
    click.echo(f"accepted: request {accepted.request_id} {past} by {accepted.approver}")


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
