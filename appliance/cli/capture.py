"""``appliance capture``: install, inspect and remove transparent capture.

Thin commands over :mod:`appliance.capture`; they act on the network namespace they run in.
Exit codes: 0 done / everything in place, 1 ``status`` found a rule missing or out of place,
2 could not do it (bad config, a netfilter tool refused; the message quotes it). A job
process that is root, holds a dangerous capability or can read the appliance's secrets is a
``WARNING`` line in ``status`` (and a ``capture.job_privileged`` entry, recorded by the
daemon), not an exit code: the rules are still in place.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from appliance.capture import (
    JobsReport,
    RulesNotInPlace,
    RuleState,
    appliance_secrets,
    check_jobs,
    install,
    jobs_cgroup,
    remove,
    status,
)
from appliance.config import Config, load_config
from appliance.errors import ApplianceError
from appliance.proxy import registry

_CONFIG = click.Path(dir_okay=False, path_type=Path)
_FORMAT = click.Choice(["text", "json"])


@click.group("capture")
def capture_group() -> None:
    """Transparent capture: the netfilter rules that send protected traffic to the appliance."""


@capture_group.command("install")
@click.option("--config", "config_path", type=_CONFIG, required=True, help="The config file.")
@click.option("--format", "fmt", type=_FORMAT, default="text", show_default=True)
def install_command(config_path: Path, fmt: str) -> None:
    """Install the capture rules (atomically; nothing changes if they are already in place).

    Rules stay until `appliance capture remove`: stopping or killing the appliance leaves
    protected targets refusing connections, never reachable around it.
    """
    report = install(load_config(config_path))
    if fmt == "json":
        click.echo(json.dumps(report.to_dict(), indent=2))
        return
    verb = "installed" if report.changed else "already in place"
    click.echo(f"capture rules {verb}: {report.rules} iptables rules per family")
    for protected in report.protected:
        click.echo(f"  protected {protected}")
    click.echo(f"  egress guard on {len(report.devices)} interfaces: {', '.join(report.devices)}")
    for host in report.unresolved:
        click.echo(f"  warning: {host} resolves to no address; not protected yet", err=True)


@capture_group.command("remove")
@click.option("--config", "config_path", type=_CONFIG, help="Ignored: every rule of ours goes.")
def remove_command(config_path: Path | None) -> None:
    """Remove every capture rule and chain of the appliance (the only way they go), and
    what made the runner trust it (the SSH CA line of ssh_known_hosts)."""
    config = load_config(config_path) if config_path else None
    report = remove(config)
    if not report.removed:
        click.echo("no capture rules were installed")
    for item in report.removed:
        click.echo(f"removed {item}")
    for item in remove_trust(config):
        click.echo(f"removed {item}")


def remove_trust(config: Config | None) -> list[str]:
    """Every protocol's ``untrust`` hook (registry): what each removed."""
    removed: list[str] = []
    for protocol in registry.PROTOCOLS.values():
        if protocol.untrust is not None:
            try:
                removed += protocol.load(protocol.untrust)(config)
            except OSError as exc:
                raise ApplianceError(f"cannot remove the {protocol.name} trust: {exc}") from None
    return removed


@capture_group.command("status")
@click.option("--config", "config_path", type=_CONFIG, required=True, help="The config file.")
@click.option("--format", "fmt", type=_FORMAT, default="text", show_default=True)
def status_command(config_path: Path, fmt: str) -> None:
    """Show each capture rule, whether it is in place, and its counters (exit 1 if not all are);
    then the jobs' processes that could undo the appliance (root, dangerous capabilities,
    access to its secrets, sudo), as warnings."""
    config = load_config(config_path)
    report = status(config)
    jobs = check_jobs(
        jobs_cgroup(config),
        secrets=appliance_secrets(config),
        ledger=config.ledger.dir,
        exclude=(os.getpid(),),
    )
    if fmt == "json":
        click.echo(json.dumps({**report.to_dict(), "jobs": jobs.to_dict()}, indent=2))
    else:
        for state in report.states:
            click.echo(_line(state))
        _jobs_lines(jobs)
        if report.ok:
            click.echo(f"status: ok, {len(report.states)} rules in place")
    if not report.ok:
        raise RulesNotInPlace(
            f"{len(report.problems())} capture rule(s) missing or out of place"
            + ("" if report.installed else " (capture is not installed)")
        )


def _jobs_lines(jobs: JobsReport) -> None:
    if not jobs.checked or jobs.note:
        click.echo(f"jobs: not checked: {jobs.note}" if not jobs.checked else f"jobs: {jobs.note}")
        return
    where = ", ".join(jobs.cgroups)
    if not jobs.findings:
        click.echo(f"jobs: ok, {jobs.processes} processes in {where}: none privileged")
    for f in jobs.findings:
        click.echo(f"WARNING job process {f.pid} ({f.comm}, uid {f.uid}): {f.detail}")


def _line(state: RuleState) -> str:
    if state.kind == "unexpected":
        verdict = "UNEXPECTED"
    elif not state.present:
        verdict = "MISSING"
    elif not state.in_place:
        verdict = "MOVED"
    else:
        verdict = "ok"
    where = f"{state.family} {state.table} {state.chain}"
    counters = f"  [{state.packets} pkts, {state.bytes} bytes]" if state.packets is not None else ""
    what = f"device {state.rule}" if state.kind == "device" else state.rule
    return f"{verdict:<10} {where:<36} {what}{counters}"
