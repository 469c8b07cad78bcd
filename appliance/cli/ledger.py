"""``appliance ledger``: verify, query, replay, prove and export the signed ledger.

Thin commands over :mod:`appliance.ledger`. Exit codes: 0 verified / done, 1 tampering or a
proof that does not verify (the message says which entry or checkpoint and why), 2 could not
do it (missing files, bad arguments, wrong key).
"""

from __future__ import annotations

import base64
import functools
import heapq
import itertools
import json
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import click

from appliance.cli._fleet import pull_cmd, session_directory, ship_cmd, verify_from_bucket
from appliance.cli._source import LEDGER_OPTION, LedgerSource, Progress, ledger_or_source
from appliance.errors import ApplianceError
from appliance.ledger.checkpoint import Checkpoint, open_checkpoint
from appliance.ledger.entries import Entry
from appliance.ledger.errors import LedgerError, ProofError, TamperError
from appliance.ledger.export import export_bundle, export_pcap, session_entries, verify_bundle
from appliance.ledger.index import Index, Query, parse_identity_filter, parse_time
from appliance.ledger.proof import (
    check_consistency,
    check_proof,
    load_tree,
    make_proof,
    parse_proof,
)
from appliance.ledger.recordings import export_asciicast
from appliance.ledger.recovery import recover
from appliance.ledger.render import Raw, summarize, table, transcript, who
from appliance.ledger.store import (
    BlobReader,
    latest_checkpoint,
    require_ledger,
    unverified_checkpoint,
)
from appliance.ledger.verify import verify_ledger
from appliance.signing.keys import VerifierKey, load_verifier_key

_LEDGER = LEDGER_OPTION


_FORMAT = click.option(
    "--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True
)


def _vkeys(values: Iterable[str]) -> list[VerifierKey]:
    return [load_verifier_key(v) for v in values]


def _vkey_option(required: bool) -> Callable[[Any], Any]:
    return click.option(
        "--vkey",
        "vkeys",
        multiple=True,
        required=required,
        help="Verifier key: a file or the vkey text itself (repeatable).",
    )


def _emit(obj: object) -> None:
    click.echo(json.dumps(obj, ensure_ascii=False, sort_keys=True))


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _json_report(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """For a command whose ``--format json`` output is one report object: when it fails,
    print ``{"ok": false, "error", "findings"}`` on stdout before the error ends it, so that a
    script reads a report whatever happened (the exit code still says which: 1 or 2)."""

    @functools.wraps(fn)
    def run(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return fn(*args, **kwargs)
        except ApplianceError as exc:
            if kwargs.get("fmt") == "json":
                findings = exc.findings if isinstance(exc, TamperError) else []
                if exc.exit_code == 1 and not findings:
                    findings = [str(exc)]
                _emit({"ok": False, "error": str(exc), "findings": findings})
            raise

    return run


@click.group("ledger")
def ledger_group() -> None:
    """Verify, query, replay, prove and export the signed ledger."""


# -- verify / fsck ------------------------------------------------------------------------


@ledger_group.command("verify")
@ledger_or_source
@_vkey_option(required=True)
@_FORMAT
@click.option("--progress/--no-progress", default=None, help="Default: on for logs > 16 MB.")
@click.option("--no-blobs", is_flag=True, help="Skip hashing blobs.")
@click.option(
    "--checkpoint",
    "held",
    multiple=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="A checkpoint kept elsewhere (e.g. WORM storage) the ledger must still contain.",
)
@click.option(
    "--state",
    type=click.Path(file_okay=False, path_type=Path),
    help="With --source: remember the largest verified checkpoint per log here, and refuse "
    "a later rollback or fork.",
)
@click.pass_context
@_json_report
def verify_cmd(
    ctx: click.Context,
    source: LedgerSource,
    vkeys: tuple[str, ...],
    fmt: str,
    progress: bool | None,
    no_blobs: bool,
    held: tuple[Path, ...],
    state: Path | None,
) -> None:
    """Rebuild the Merkle tree from the entries and check every checkpoint's signature,
    origin, size and root, their consistency, seq and time order, and blob hashes.

    With --source, every log under the bucket URL, straight from the bucket: also every
    object version (delete markers, overwrites, missing checkpoints, bundles or blobs).

    Exit 0 verified, 1 tampering or inconsistency found, 2 cannot verify.
    """
    verifiers = _vkeys(vkeys)
    directory = source.directory
    if source.bucket is not None:
        if directory is not None or held or source.offline:
            raise LedgerError(
                "--source verifies the bucket: no --ledger, --checkpoint or --offline with it"
            )
        verify_from_bucket(
            ctx, source.bucket, source.cache, source.origin, state, verifiers, fmt, progress,
            not no_blobs,
        )  # fmt: skip
        return
    if directory is None:
        raise LedgerError("give --ledger DIR or --source s3://BUCKET[/PREFIX]")
    if state is not None:
        raise LedgerError("--state goes with --source")
    require_ledger(directory)
    size = (directory / "entries.log").stat().st_size
    show = progress if progress is not None else size > 16 * 1024 * 1024
    t0 = time.monotonic()
    trusted = []
    for path in held:
        try:
            trusted.append((f"checkpoint {path}", path.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError) as exc:
            raise LedgerError(f"cannot read {path}: {exc}") from None
    report = verify_ledger(
        directory,
        verifiers,
        progress=Progress(show),
        check_blobs=not no_blobs,
        trusted_checkpoints=trusted,
    )
    elapsed = time.monotonic() - t0
    latest = report.latest
    if fmt == "json":
        _emit(
            {
                "ok": report.ok,
                "origin": report.origin,
                "entries": report.entries,
                "checkpoints": report.checkpoints,
                "latest": {"size": latest.size, "root": latest.root.hex()} if latest else None,
                "blobs": report.blobs,
                "findings": report.findings,
                "warnings": report.warnings,
            }
        )
    else:
        click.echo(f"ledger {directory} (origin {report.origin})")
        click.echo(
            f"  {report.entries} entries, {report.checkpoints} checkpoints, {report.blobs} blobs "
            f"({report.blob_bytes} B) checked in {elapsed:.2f} s"
        )
        if latest:
            click.echo(f"  latest checkpoint: {latest.describe()}")
        for w in report.warnings:
            click.echo(f"  warning: {w}")
        for f in report.findings:
            click.echo(f"  TAMPERING: {f}")
        click.echo("VERIFIED" if report.ok else "NOT VERIFIED")
    if not report.ok:
        message = f"{len(report.findings)} finding(s); first: {report.findings[0]}"
        if fmt == "json":  # the report above is the JSON output; no second object
            click.echo(f"error: {message}", err=True)
            ctx.exit(1)
        raise TamperError(message)


@ledger_group.command("fsck")
@_LEDGER
@_vkey_option(required=False)
@_FORMAT
@click.option("--no-blobs", is_flag=True, help="Skip hashing blobs.")
@_json_report
def fsck_cmd(directory: Path, vkeys: tuple[str, ...], fmt: str, no_blobs: bool) -> None:
    """Run the writer's crash-recovery check without changing anything.

    Reports a torn tail that recovery would copy to recovered/ and truncate, a stale
    checkpoint file, and (exit 1) damage inside signed history or a blob that is missing or
    does not hash to its name. Signatures are checked with --vkey and with the keys the
    ledger published.
    """
    require_ledger(directory)
    try:
        report = recover(directory, trusted=_vkeys(vkeys), dry_run=True, check_blobs=not no_blobs)
    except TamperError as exc:
        if fmt == "text":
            for f in exc.findings:
                click.echo(f"TAMPERING: {f}")
        raise
    if fmt == "json":
        _emit(
            {
                "ok": True,
                "entries": report.entries,
                "checkpoints": report.checkpoints,
                "signed_size": report.signed_size,
                "blobs": report.blobs,
                "actions": report.actions,
            }
        )
        return
    for line in report.summary():
        click.echo(line)
    click.echo("clean" if not report.actions else "recovery needed (the writer does it on open)")


# -- query / show / replay ---------------------------------------------------------------------


def _print_entries(entries: Iterable[Entry], fmt: str, *, origins: bool = False) -> int:
    n = 0
    if fmt == "json":
        for e in entries:
            click.echo(e.raw.decode())
            n += 1
        return n
    counted: list[Entry] = []

    def counting() -> Iterable[Entry]:
        for e in entries:
            counted.append(e)
            yield e

    for line in table(counting(), origins=origins):
        click.echo(line)
    return len(counted)


@ledger_group.command("query")
@ledger_or_source
@click.option("--session")
@click.option("--identity", "identity", multiple=True, help="KEY=VALUE, e.g. ci.repository=acme/*")
@click.option("--target", help="Target name (glob).")
@click.option("--type", "types", multiple=True, help="Entry type (glob, repeatable).")
@click.option("--decision", type=click.Choice(["allow", "deny", "review"]))
@click.option("--since", help="ISO 8601 date/time, UTC unless an offset is given (inclusive).")
@click.option("--until", help="ISO 8601 date/time (exclusive).")
@click.option("--limit", type=click.IntRange(min=1))
@_FORMAT
def query_cmd(
    source: LedgerSource,
    session: str | None,
    identity: tuple[str, ...],
    target: str | None,
    types: tuple[str, ...],
    decision: str | None,
    since: str | None,
    until: str | None,
    limit: int | None,
    fmt: str,
) -> None:
    """Entries matching all the filters, as a table or (--format json) JSON lines of the
    stored entries. Backed by index.sqlite, updated from the log first. With --source,
    across every log under the bucket URL, in time order."""
    q = Query(
        session=session,
        identity=[parse_identity_filter(i) for i in identity],
        target=target,
        types=types,
        decision=decision,
        since=parse_time(since) if since else None,
        until=parse_time(until) if until else None,
        limit=limit,
    )
    dirs = source.directories()
    if len(dirs) == 1:
        with Index.open(dirs[0]) as index:
            try:
                _print_entries(index.query(q), fmt)
            finally:
                _say_notes(index)
        return
    indexes = [Index.open(d) for d in dirs]
    try:
        merged = heapq.merge(
            *(index.query(q) for index in indexes),
            key=lambda e: (e.obj["ts"], e.obj["origin"], e.seq),
        )
        _print_entries(itertools.islice(merged, q.limit), fmt, origins=True)
    finally:
        for index in indexes:
            _say_notes(index)
            index.close()


@ledger_group.command("reindex")
@_LEDGER
def reindex_cmd(directory: Path) -> None:
    """Rebuild index.sqlite from the entries."""
    with Index.open(directory, rebuild=True) as index:
        n = index.db.execute("SELECT COUNT(*) FROM entries").fetchone()[0]
        _say_notes(index)
    click.echo(f"indexed {n} entries")


def _say_notes(index: Index) -> None:
    for note in index.notes:
        click.echo(f"warning: {note}", err=True)


def _session_entries(directory: Path, session: str) -> list[Entry]:
    """SESSION (given whole, or by a beginning that names one session only), complete: every
    entry of it in the log, whatever the index says (see appliance.ledger.index)."""
    with Index.open(directory) as index:
        try:
            return index.session(index.resolve_session(session))
        finally:
            _say_notes(index)


@ledger_group.command("show")
@ledger_or_source
@click.argument("session")
@_FORMAT
def show_cmd(
    source: LedgerSource,
    session: str,
    fmt: str,
) -> None:
    """Everything recorded about SESSION: who, target, account, and every entry."""
    directory = session_directory(source.directories(), session)
    found = _session_entries(directory, session)
    if fmt == "json":
        _print_entries(found, fmt)
        return
    first = found[0].obj
    start = next((e.obj for e in found if e.obj["type"] == "session.start"), first)
    click.echo(f"session {first['session']}")
    click.echo(f"  target:   {start['target'] or '-'}")
    click.echo(f"  account:  {start['account'] or '-'}")
    click.echo(f"  who:      {who(start['identity'], None)}")
    if start["identity"]:
        for k, v in sorted(start["identity"].items()):
            click.echo(f"    {k}: {json.dumps(v, ensure_ascii=False)}")
    click.echo(f"  from {found[0].obj['ts']} to {found[-1].obj['ts']}, {len(found)} entries")
    click.echo("")
    for e in found:
        click.echo(f"{e.seq:>7}  {e.obj['ts']}  {e.obj['type']:<18}  {summarize(e.obj, 120)}")


@ledger_group.command("replay")
@ledger_or_source
@click.argument("session")
@click.option(
    "--speed",
    type=click.FloatRange(min=0),
    default=0,
    help="Replay with the recorded timing divided by SPEED (0: no waiting).",
)
@click.option("--rows", type=click.IntRange(min=0), default=20, show_default=True)
def replay_cmd(
    source: LedgerSource,
    session: str,
    speed: float,
    rows: int,
) -> None:
    """SESSION as a readable, time-ordered transcript: who, what, decisions, masked results."""
    directory = session_directory(source.directories(), session)
    found = _session_entries(directory, session)
    blobs = BlobReader(directory)

    def load(sha: str) -> bytes | None:
        return blobs.read(sha) if blobs.exists(sha) else None

    replay(transcript(found, load, max_rows=rows), speed, time.sleep)


def replay(
    steps: Iterable[tuple[int, list[str]]], speed: float, sleep: Callable[[float], None]
) -> None:
    """Print transcript steps, waiting the recorded gaps divided by ``speed`` (if > 0)."""
    prev: int | None = None
    for at, lines in steps:
        if speed > 0 and prev is not None and at > prev:
            sleep((at - prev) / 1e6 / speed)
        prev = at if prev is None else max(prev, at)
        for line in lines:
            # A terminal's output (an SSH recording) is written as the operator saw it.
            click.echo(line, nl=not isinstance(line, Raw))


# -- proofs ---------------------------------------------------------------------------------


@ledger_group.command("prove")
@_LEDGER
@click.option("--index", "index", type=click.IntRange(min=0), required=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Default: stdout.")
@click.option("--no-entry", is_flag=True, help="Do not carry the entry in the proof's extra.")
def prove_cmd(directory: Path, index: int, out: Path | None, no_entry: bool) -> None:
    """Write a C2SP tlog-proof that entry INDEX is in the latest checkpoint."""
    require_ledger(directory)
    cp = latest_checkpoint(directory)
    if cp is None:
        raise LedgerError(f"{directory} has no checkpoint yet")
    if index >= cp.size:
        raise LedgerError(f"entry {index} is not covered by the latest checkpoint ({cp.size})")
    tree, kept = load_tree(directory, cp.size, keep=[index])
    text = make_proof(tree, index, cp, entry=None if no_entry else kept[index]).text()
    if out is None:
        click.echo(text, nl=False)
    else:
        out.write_text(text, encoding="utf-8")
        click.echo(f"wrote {out}: entry {index} in checkpoint of size {cp.size}", err=True)


@ledger_group.command("check-proof")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@_vkey_option(required=True)
@click.option("--entry", type=click.Path(dir_okay=False, path_type=Path), help="Entry bytes.")
@click.option("--origin", help="Require this log origin.")
@_FORMAT
@_json_report
def check_proof_cmd(
    file: Path, vkeys: tuple[str, ...], entry: Path | None, origin: str | None, fmt: str
) -> None:
    """Verify a tlog-proof offline: checkpoint signature and the entry's inclusion."""
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise LedgerError(f"cannot read {file}: {exc}") from None
    entry_bytes = None
    if entry is not None:
        try:
            entry_bytes = entry.read_bytes()
        except OSError as exc:
            raise LedgerError(f"cannot read {entry}: {exc}") from None
    proof = parse_proof(text)
    cp, raw = check_proof(proof, _vkeys(vkeys), entry=entry_bytes, origin=origin)
    try:
        obj: dict[str, Any] = json.loads(raw)
    except ValueError:
        obj = {}
    if fmt == "json":
        _emit(
            {"ok": True, "index": proof.index, "origin": cp.origin, "size": cp.size, "entry": obj}
        )
        return
    click.echo(
        f"OK: entry {proof.index} ({obj.get('type', '?')}, {obj.get('ts', '?')}) is included in "
        f"{cp.origin} at {cp.describe()}"
    )


def _read_checkpoint(path: Path, verifiers: list[VerifierKey]) -> Checkpoint:
    try:
        note = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise LedgerError(f"cannot read {path}: {exc}") from None
    return open_checkpoint(note, verifiers) if verifiers else unverified_checkpoint(note)


@ledger_group.command("consistency")
@click.argument("old", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("new", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--ledger",
    "directory",
    envvar="APPLIANCE_LEDGER",
    type=click.Path(file_okay=False, path_type=Path),
    help="Ledger to build the proof from (or give --proof).",
)
@_vkey_option(required=False)
@click.option("--proof", "proof_file", type=click.Path(dir_okay=False, path_type=Path))
@_FORMAT
@_json_report
def consistency_cmd(
    old: Path,
    new: Path,
    directory: Path | None,
    vkeys: tuple[str, ...],
    proof_file: Path | None,
    fmt: str,
) -> None:
    """Prove (from --ledger) or check (--proof FILE, base64 lines) that checkpoint NEW
    extends checkpoint OLD. Signatures are checked when --vkey is given."""
    verifiers = _vkeys(vkeys)
    a, b = _read_checkpoint(old, verifiers), _read_checkpoint(new, verifiers)
    if proof_file is not None:
        try:
            lines = proof_file.read_text(encoding="ascii").split()
            proof = [base64.b64decode(x, validate=True) for x in lines]
        except (OSError, ValueError) as exc:
            raise LedgerError(f"cannot read consistency proof {proof_file}: {exc}") from None
    elif directory is not None:
        require_ledger(directory)
        if a.size > b.size:
            raise ProofError(f"OLD (size {a.size}) is larger than NEW (size {b.size})")
        tree, _ = load_tree(directory, b.size)
        for cp, name in ((a, "OLD"), (b, "NEW")):
            if tree.root(cp.size) != cp.root:
                raise ProofError(f"{name} ({cp.describe()}) does not match the ledger's entries")
        proof = tree.consistency_proof(a.size, b.size)
    else:
        raise LedgerError("give --ledger DIR to build the proof, or --proof FILE to check one")
    check_consistency(a, b, proof)
    b64 = [base64.b64encode(p).decode() for p in proof]
    if fmt == "json":
        _emit({"ok": True, "old": a.size, "new": b.size, "proof": b64})
        return
    click.echo(f"consistent: size {a.size} -> {b.size} ({a.origin})", err=True)
    for line in b64:
        click.echo(line)


# -- export ---------------------------------------------------------------------------------


@ledger_group.command("export")
@ledger_or_source
@click.option("--session", required=True)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["jsonl", "pcap", "har", "asciicast"]),
    default="jsonl",
    show_default=True,
)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option(
    "--request",
    "n",
    type=click.IntRange(min=1),
    help="asciicast: the request (statement number) whose recording to export "
    "(default: the session's first terminal).",
)
def export_cmd(
    source: LedgerSource,
    session: str,
    fmt: str,
    out: Path,
    n: int | None,
) -> None:
    """Export one session: a self-contained bundle an auditor verifies offline (entries,
    blobs, checkpoint, a tlog-proof per entry, published keys), or a pcap of the session's
    TCP stream rebuilt from the recorded (masked) messages, for Wireshark; for an HTTP
    session, HAR 1.2 (browser developer tools) or asciicast v2 (its Kubernetes exec and
    attach streams, for asciinema); for an SSH session, asciicast v2 of a terminal
    recording (masked; --request picks one)."""
    if out.exists():
        raise LedgerError(f"{out} exists; refusing to overwrite")
    directory = session_directory(source.directories(), session)
    with Index.open(directory) as index:
        session = index.resolve_session(session)
        _say_notes(index)
    tmp = out.with_name(out.name + ".part")
    try:
        with tmp.open("wb") as f:
            if fmt == "jsonl":
                s = export_bundle(directory, session, f)
                what = f"{s.entries} entries, {s.blobs} blobs, proofs against size {s.size}"
            elif fmt == "pcap":
                what = f"{export_pcap(directory, session, f)} packets"
            elif fmt == "asciicast" and not _is_http(session_entries(directory, session)):
                what = f"{export_asciicast(directory, session, f, n=n)} events"  # SSH's
            else:  # an HTTP session's HAR or asciicast
                from appliance.ledger.store import BlobReader
                from appliance.proxy.http import exports

                found = session_entries(directory, session)
                if fmt == "har":
                    doc = exports.har(found, BlobReader(directory))
                    f.write(json.dumps(doc, indent=1).encode())
                    what = f"{len(doc['log']['entries'])} HAR entries"
                else:
                    lines = exports.asciicast(found)
                    f.write(("\n".join(lines) + "\n").encode())
                    what = f"{len(lines) - 1} terminal events"
        tmp.rename(out)
    finally:
        tmp.unlink(missing_ok=True)
    click.echo(f"wrote {out}: session {session}, {what}")


def _is_http(entries: list[dict[str, Any]]) -> bool:
    """Whether the session's start entry says it was HTTP (its exports read other entries)."""
    start = next((e for e in entries if e.get("type") == "session.start"), None)
    return start is not None and (start.get("data") or {}).get("protocol") == "http"


@ledger_group.command("verify-bundle")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@_vkey_option(required=True)
@_FORMAT
@_json_report
def verify_bundle_cmd(file: Path, vkeys: tuple[str, ...], fmt: str) -> None:
    """Verify an exported bundle offline: checkpoint signature, each entry's inclusion proof,
    session and origin of each entry, and every referenced blob's SHA-256."""
    try:
        s = verify_bundle(file, _vkeys(vkeys))
    except TamperError as exc:
        if fmt == "text":
            for f in exc.findings:
                click.echo(f"TAMPERING: {f}")
        raise
    if fmt == "json":
        _emit(
            {
                "ok": True,
                "origin": s.origin,
                "session": s.session,
                "size": s.size,
                "entries": s.entries,
                "blobs": s.blobs,
            }
        )
        return
    click.echo(
        f"VERIFIED: session {s.session}: {s.entries} entries and {s.blobs} blobs included in "
        f"{s.origin} at size {s.size}"
    )


ledger_group.add_command(ship_cmd)
ledger_group.add_command(pull_cmd)
