"""Writing the evidence package: sources in, a directory of pages, facts and proofs out.

Where it sits: ``appliance report`` (:mod:`appliance.cli.report`) calls :func:`build_report`.
For each log of the sources it reads the entries into the facts
(:class:`~appliance.report._facts.Collector`), verifies the whole log with
:func:`appliance.ledger.verify_ledger` if it has entries in the period, then writes::

    OUT/index.html ... verify.html   the pages (static HTML, see _pages)
    OUT/sessions/LOG/SESSION.html    one transcript per session (ledger.render, as `replay`)
    OUT/report.json                  the same facts
    OUT/logs/LOG/checkpoint, vkey    the signed checkpoint the verification rests on, its key
    OUT/logs/LOG/entries.jsonl       the log's entries, exactly the hashed bytes
    OUT/logs/LOG/verification.json   the whole log's verification
    OUT/logs/LOG/proofs/SEQ.proof    tlog-proofs of the entries behind denials and decisions
    OUT/check_evidence.py            the standalone checker
    OUT/SHA256SUMS                   every file's SHA-256

Same logs in, same bytes out: nothing depends on the time of the run or the local paths
(logs are named by their path relative to the source). The package is written to
``OUT.part`` and renamed when complete.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from appliance import __version__
from appliance.ledger.checkpoint import Checkpoint
from appliance.ledger.entries import Entry
from appliance.ledger.errors import LedgerError
from appliance.ledger.proof import load_tree, make_proof
from appliance.ledger.recordings import asciicast, recordings
from appliance.ledger.render import transcript
from appliance.ledger.store import BlobReader, iter_entries, read_history, unverified_checkpoint
from appliance.ledger.verify import verify_ledger
from appliance.report import _soc2
from appliance.report._facts import (
    Collector,
    Facts,
    LogCheck,
    LogFacts,
    Period,
    SessionFacts,
    slug,
    to_json,
)
from appliance.report._pages import Cast, Pages
from appliance.report.sources import LogDir, Remote, resolve
from appliance.signing.keys import InvalidSignature, VerifierKey
from appliance.signing.note import NoteError, open_note

Progress = Callable[[str, int, int], None]
FORMAT = "appliance-evidence/v1"


@dataclass(frozen=True)
class ReportRequest:
    """What to report on. ``progress(stage, done, total)`` is called along the way."""

    sources: Sequence[str]
    out: Path
    verifiers: Sequence[VerifierKey]
    period: Period = field(default_factory=Period)
    rows: int = 20
    progress: Progress | None = None
    remote: Remote | None = None  # pulls a bucket URL's logs into a cache (see sources)


@dataclass(frozen=True)
class ReportResult:
    out: Path
    facts: Facts
    files: int
    sums_sha256: str  # SHA-256 of SHA256SUMS: one hash for the whole package


def build_report(req: ReportRequest) -> ReportResult:
    """Write the package (see the module docstring) and return what it found.

    Tampering is a finding written into the package, not an exception; raises LedgerError
    only when no package can be made (no logs, OUT not empty, unreadable sources).
    """
    if not req.verifiers:
        raise LedgerError("the report needs at least one verifier key (--vkey)")
    out = req.out
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise LedgerError(f"{out} exists and is not an empty directory; refusing to overwrite")
    logs = resolve(req.sources, remote=req.remote)
    progress = req.progress or (lambda stage, done, total: None)
    collector = Collector(req.period)
    where: dict[str, LogDir] = {}
    for i, log in enumerate(logs):
        progress("reading logs", i, len(logs))
        origin = _origin(log.path)
        lf = LogFacts(log.name, slug(origin or log.name, unique=log.name), origin, LogCheck("-"))
        collector.feed(lf, _reading(log.path, lf))
        if lf.in_period or lf.read_error:
            where[lf.slug] = log
            stage = f"verifying {log.name}"
            lf.check = _check(log.path, req.verifiers, functools.partial(progress, stage))
    progress("reading logs", len(logs), len(logs))
    facts = collector.facts()

    tmp = out.with_name(out.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    files = _Files(tmp)
    write = files.write

    proofs: dict[tuple[str, int], str] = {}
    for lf in facts.logs:
        _write_log(lf, where[lf.slug], facts, write, proofs)
    pages = Pages(facts, scope=_scope(req, facts), proofs=proofs, rows=req.rows)
    for n, lf in enumerate(facts.logs):
        progress("session pages", n, len(facts.logs))
        _session_pages(lf, where[lf.slug], facts, pages, req.rows, files)
    for path, text in pages.all():
        write(path, text)
    report = to_json(
        facts,
        {
            "format": FORMAT,
            "status": facts.status,
            "soc2": [{**c.__dict__, "sections": _soc2.sections_for(c.id)} for c in _soc2.CRITERIA],
            "proofs": {f"{log}/{seq}": path for (log, seq), path in sorted(proofs.items())},
        },
    )
    write("report.json", json.dumps(report, indent=1, sort_keys=True, ensure_ascii=False) + "\n")
    checker = resources.files("appliance.report").joinpath("check_evidence.py").read_bytes()
    write("check_evidence.py", checker)
    sums = "".join(f"{sha}  {p}\n" for p, sha in sorted(files.hashes.items()))
    (tmp / "SHA256SUMS").write_text(sums)
    if out.exists():
        out.rmdir()
    tmp.rename(out)
    progress("done", 1, 1)
    return ReportResult(
        out, facts, len(files.hashes) + 1, hashlib.sha256(sums.encode()).hexdigest()
    )


class _Files:
    """The package being written: each file's SHA-256 is taken as it is written."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.hashes: dict[str, str] = {}

    def write(self, path: str, data: bytes | str) -> None:
        raw = data.encode() if isinstance(data, str) else data
        target = self.root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(raw)
        self.hashes[path] = hashlib.sha256(raw).hexdigest()

    def write_lines(self, path: str, lines: Iterator[bytes]) -> None:
        """Stream ``lines`` (each followed by a newline) into ``path``."""
        h = hashlib.sha256()
        target = self.root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("wb") as f:
            for line in lines:
                chunk = line + b"\n"
                f.write(chunk)
                h.update(chunk)
        self.hashes[path] = h.hexdigest()


def _origin(directory: Path) -> str | None:
    try:
        return next(iter_entries(directory)).obj["origin"]  # type: ignore[no-any-return]
    except (LedgerError, StopIteration):
        return None


def _reading(directory: Path, lf: LogFacts) -> Iterator[Entry]:
    """The log's entries; reading stops (and ``lf.read_error`` says why) at damage."""
    try:
        yield from iter_entries(directory)
    except LedgerError as exc:
        lf.read_error = f"reading stopped after {lf.entries} entries: {exc}"


def _check(
    directory: Path, verifiers: Sequence[VerifierKey], progress: Callable[[int, int], None]
) -> LogCheck:
    """Verify the whole log; find the latest checkpoint's note and which key signed it."""
    try:
        report = verify_ledger(directory, verifiers, progress=progress)
    except LedgerError as exc:
        return LogCheck("unverifiable", error=str(exc))
    check = LogCheck(
        "verified" if report.ok else "tampered",
        findings=list(report.findings),
        warnings=list(report.warnings),
        checkpoints=report.checkpoints,
    )
    latest = report.latest
    if latest is None:
        return check
    check.signed_size = latest.size
    check.root = base64.b64encode(latest.root).decode()
    notes, _ = read_history(directory)
    for note in reversed(notes):
        try:
            cp = unverified_checkpoint(note)
        except NoteError:
            continue
        if cp.size == latest.size and cp.root == latest.root:
            check.checkpoint_note = note
            break
    if check.checkpoint_note is not None:
        for v in verifiers:
            try:
                open_note(check.checkpoint_note, [v])
            except (NoteError, InvalidSignature):
                continue
            check.vkey = v.to_vkey()
            break
    return check


def _write_log(
    lf: LogFacts,
    log: LogDir,
    facts: Facts,
    write: Callable[[str, bytes | str], None],
    proofs: dict[tuple[str, int], str],
) -> None:
    base = f"logs/{lf.slug}"
    check = lf.check
    verification = {
        "name": lf.name,
        "origin": lf.origin,
        "status": check.status,
        "findings": check.findings,
        "warnings": check.warnings,
        "error": check.error,
        "checkpoints": check.checkpoints,
        "signed_size": check.signed_size,
        "root": check.root,
        "entries": lf.entries,
        "read_error": lf.read_error,
    }
    write(f"{base}/verification.json", json.dumps(verification, indent=1, sort_keys=True) + "\n")
    if check.checkpoint_note is not None:
        write(f"{base}/checkpoint", check.checkpoint_note)
    if check.vkey is not None:
        write(f"{base}/vkey", check.vkey + "\n")
    if check.status != "verified" or check.checkpoint_note is None or check.signed_size is None:
        return  # a proof against a log that contradicts itself would prove nothing
    seqs = {d.seq for d in facts.denials if d.log == lf.slug}
    seqs |= {
        h.outcome_seq
        for h in facts.holds
        if h.log == lf.slug and h.note and h.outcome_seq is not None
    }
    seqs = {s for s in seqs if s is not None and s < check.signed_size}
    if not seqs:
        return
    cp = unverified_checkpoint(check.checkpoint_note)
    cp = Checkpoint(cp.origin, cp.size, cp.root, cp.extensions, check.checkpoint_note)
    tree, kept = load_tree(log.path, check.signed_size, keep=seqs)
    for seq in sorted(seqs):
        path = f"{base}/proofs/{seq}.proof"
        write(path, make_proof(tree, seq, cp, entry=kept[seq]).text())
        proofs[(lf.slug, seq)] = path
    for h in facts.holds:
        if h.log == lf.slug and h.outcome_seq is not None:
            h.proof = proofs.get((lf.slug, h.outcome_seq))


def _session_pages(
    lf: LogFacts, log: LogDir, facts: Facts, pages: Pages, rows: int, files: _Files
) -> None:
    """Second pass over one log: its entries streamed to ``entries.jsonl``, and each session
    of the period written as soon as its last entry is read (memory: open sessions only)."""
    wanted = {s.id: s for s in facts.sessions if s.log == lf.slug and s.in_period}
    buffers: dict[str, list[Entry]] = {}
    blobs = BlobReader(log.path)

    def load(sha: str) -> bytes | None:
        return blobs.read(sha) if blobs.exists(sha) else None

    def raw() -> Iterator[bytes]:
        for e in _reading(log.path, LogFacts(lf.name, lf.slug, lf.origin, lf.check)):
            yield e.raw
            sid = e.obj["session"]
            s = wanted.get(sid) if sid is not None else None
            if s is not None:
                buffers.setdefault(s.id, []).append(e)
                if e.seq == s.last_seq:
                    session(s, buffers.pop(s.id))

    def session(s: SessionFacts, entries: list[Entry]) -> None:
        casts = _casts(s, entries, blobs, files)
        files.write(*pages.session(s, lf, _transcript(entries, load, rows), casts))

    files.write_lines(f"logs/{lf.slug}/entries.jsonl", raw())
    for sid, entries in sorted(buffers.items()):  # reading stopped before their last entry
        session(wanted[sid], entries)


def _transcript(entries: list[Entry], load: Callable[[str], bytes | None], rows: int) -> str:
    return "\n".join(line for _, step in transcript(entries, load, max_rows=rows) for line in step)


def _casts(s: SessionFacts, entries: list[Entry], blobs: BlobReader, files: _Files) -> list[Cast]:
    """The session's terminal recordings (SSH channels with a PTY) written beside its page
    as asciicast v2 files (``asciinema play FILE``), as ``ledger export --format asciicast``
    writes them."""
    out: list[Cast] = []
    stem = s.page.removesuffix(".html")
    target = next((e.obj.get("target") for e in entries if e.obj.get("target")), None) or "ssh"
    for rec in recordings([e.obj for e in entries], blobs):
        if not rec.header.get("pty"):
            continue
        path = f"{stem}.{rec.n}.cast"
        lines = asciicast(rec, f"{target} session {s.id} request {rec.n}")
        files.write(path, b"".join(lines))
        out.append(Cast(path.rsplit("/", 1)[-1], rec.n, len(lines) - 1))
    return out


def _scope(req: ReportRequest, facts: Facts) -> dict[str, Any]:
    p = req.period
    period = f"{p.since or 'the beginning'} to {p.until or 'the end'} (UTC)"
    return {"period": period, "logs": len(facts.logs), "version": __version__}
