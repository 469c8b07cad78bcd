"""Self-contained, offline-verifiable exports of one session.

``export_bundle`` writes a JSON Lines file:

1. a header ``{"kind": "header", "format": "appliance-ledger-bundle/v1", "origin", "session",
   "checkpoint": <signed checkpoint note>, "vkeys": [<keys the log published>]}``;
2. per entry of the session, ``{"kind": "entry", "seq", "tlog_proof": <C2SP tlog-proof>,
   "entry": <the entry, for reading only>}``; the proof's ``extra`` carries the exact
   stored bytes of the entry, and its checkpoint is the header's;
3. per blob the entries reference, ``{"kind": "blob", "sha256", "size", "b64"}``.

The ``vkeys`` in the header are what the log *claims*; an auditor verifies with a key obtained
out of band. Checking a bundle with standard tools, without this code:

- checkpoint: the header's note is a C2SP signed note; with Go,
  ``note.Open(checkpoint, note.VerifierList(v))`` where ``v, _ := note.NewVerifier(vkey)``
  (golang.org/x/mod/sumdb/note), then parse origin / size / base64 root (tlog-checkpoint);
- each entry: base64-decode the tlog-proof's ``extra`` line to get the entry bytes, then with
  golang.org/x/mod/sumdb/tlog: ``tlog.CheckRecord(proof, size, root, index,
  tlog.RecordHash(entry))`` where ``proof`` is the base64-decoded hash lines; or in Python
  with only hashlib: leaf = sha256(b"\\x00" + entry), fold the proof per RFC 9162 §2.1.3.2;
- each blob: ``base64 -d`` the ``b64`` field into a file and compare ``sha256sum`` with the
  ``sha256`` that the (proven) entry references;
- ``appliance ledger verify-bundle FILE --vkey KEY`` does all of the above.

The pcap export is in :mod:`appliance.ledger.pcap`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from appliance.ledger.checkpoint import open_checkpoint
from appliance.ledger.entries import KEY_PUBLISHED, MalformedEntry, blob_refs, parse_entry
from appliance.ledger.errors import LedgerError, ProofError, TamperError
from appliance.ledger.index import Index, Query
from appliance.ledger.pcap import parse_endpoint, renderer_for, write_pcap
from appliance.ledger.proof import check_proof, load_tree, make_proof, parse_proof
from appliance.ledger.store import BlobReader, latest_checkpoint, require_ledger
from appliance.signing.keys import InvalidSignature, VerifierKey
from appliance.signing.note import MalformedNote

BUNDLE_FORMAT = "appliance-ledger-bundle/v1"


@dataclass
class BundleSummary:
    origin: str
    session: str
    size: int  # checkpoint size the proofs are against
    entries: int
    blobs: int
    findings: list[str] = field(default_factory=list)


def export_bundle(directory: Path, session: str, out: BinaryIO) -> BundleSummary:
    """Write the session's bundle to ``out``. Every entry must be covered by the latest
    checkpoint (else LedgerError: wait for the next checkpoint)."""
    require_ledger(directory)
    cp = latest_checkpoint(directory)
    if cp is None:
        raise LedgerError(f"{directory} has no checkpoint yet")
    with Index.open(directory) as index:
        found = index.session(session)
        published = [
            e.obj["data"].get("vkey")
            for e in index.query(Query(types=[KEY_PUBLISHED]))
            if isinstance(e.obj["data"].get("vkey"), str)
        ]
    if not found:
        raise LedgerError(f"no entries for session {session!r}")
    if found[-1].seq >= cp.size:
        raise LedgerError(
            f"entry {found[-1].seq} of the session is not yet covered by a checkpoint "
            f"(latest covers {cp.size}); try again after the next checkpoint"
        )
    tree, _ = load_tree(directory, cp.size)
    header = {
        "kind": "header",
        "format": BUNDLE_FORMAT,
        "origin": cp.origin,
        "session": session,
        "checkpoint": cp.note,
        "vkeys": published,
    }
    out.write(orjson.dumps(header) + b"\n")
    blobs: dict[str, int] = {}
    for e in found:
        proof = make_proof(tree, e.seq, cp, entry=e.raw)
        line = {"kind": "entry", "seq": e.seq, "tlog_proof": proof.text(), "entry": e.obj}
        out.write(orjson.dumps(line) + b"\n")
        for ref in blob_refs(e.obj["data"]):
            if ref.inline is None:  # inline blobs travel inside their entry
                blobs[ref.sha256] = ref.size
    reader = BlobReader(directory)
    for sha, size in blobs.items():
        data = reader.read(sha)
        line = {"kind": "blob", "sha256": sha, "size": size, "b64": base64.b64encode(data).decode()}
        out.write(orjson.dumps(line) + b"\n")
    return BundleSummary(cp.origin, session, cp.size, len(found), len(blobs))


def verify_bundle(path: Path, verifiers: Sequence[VerifierKey]) -> BundleSummary:
    """Check a bundle offline; raise TamperError listing every finding, LedgerError (exit 2)
    if it cannot be read or no given key signed its checkpoint."""
    try:
        lines = path.read_bytes().splitlines()
    except OSError as exc:
        raise LedgerError(f"cannot read {path}: {exc}") from None
    try:
        records = [orjson.loads(line) for line in lines if line.strip()]
    except orjson.JSONDecodeError as exc:
        raise LedgerError(f"{path} is not JSON Lines: {exc}") from None
    if (
        not records
        or records[0].get("kind") != "header"
        or records[0].get("format") != BUNDLE_FORMAT
    ):
        raise LedgerError(f"{path} is not an {BUNDLE_FORMAT} bundle")
    head = records[0]
    note = head.get("checkpoint")
    if not isinstance(note, str):
        raise LedgerError("bundle header has no checkpoint")
    try:
        cp = open_checkpoint(note, verifiers)
    except InvalidSignature as exc:
        raise LedgerError(
            f"the bundle's checkpoint is not signed by the given key: {exc}"
        ) from None
    except MalformedNote as exc:
        raise TamperError(f"the bundle's checkpoint is malformed: {exc}") from None
    summary = BundleSummary(cp.origin, str(head.get("session")), cp.size, 0, 0)
    f = summary.findings
    if head.get("origin") != cp.origin:
        f.append(f"header origin {head.get('origin')!r} differs from the checkpoint's")
    wanted: dict[str, tuple[int, int]] = {}
    have: dict[str, bytes] = {}
    prev = -1
    for rec in records[1:]:
        kind = rec.get("kind")
        if kind == "entry":
            seq = rec.get("seq")
            try:
                proof = parse_proof(str(rec.get("tlog_proof")))
                if proof.checkpoint != note:
                    raise ProofError("its proof is against another checkpoint than the header's")
                _, raw = check_proof(proof, verifiers)
                obj = parse_entry(raw)
            except (
                ProofError,
                MalformedNote,
                MalformedEntry,
                InvalidSignature,
                LedgerError,
            ) as exc:
                f.append(f"entry {seq}: {exc}")
                continue
            if proof.index != seq or obj["seq"] != seq:
                f.append(f"entry {seq}: proof index {proof.index} / entry seq {obj['seq']} differ")
            if obj["session"] != summary.session:
                f.append(f"entry {seq}: belongs to session {obj['session']!r}")
            if obj["origin"] != cp.origin:
                f.append(f"entry {seq}: origin {obj['origin']!r} is not the checkpoint's")
            if proof.index <= prev:
                f.append(f"entry {seq}: out of order")
            prev = proof.index
            summary.entries += 1
            for ref in blob_refs(obj["data"]):
                if ref.inline is not None:
                    if not ref.inline_ok():
                        f.append(f"entry {seq}: inline blob {ref.path} does not match its sha256")
                    continue
                wanted[ref.sha256] = (proof.index, ref.size)
        elif kind == "blob":
            try:
                data = base64.b64decode(str(rec.get("b64")), validate=True)
            except (binascii.Error, ValueError):
                f.append(f"blob {rec.get('sha256')}: not base64")
                continue
            have[str(rec.get("sha256"))] = data
        else:
            f.append(f"unknown record kind {kind!r}")
    for sha, (seq, size) in wanted.items():
        blob = have.get(sha)
        if blob is None:
            f.append(f"blob {sha} referenced by entry {seq} is missing from the bundle")
        elif hashlib.sha256(blob).hexdigest() != sha or len(blob) != size:
            f.append(f"blob {sha} referenced by entry {seq}: content was changed")
    summary.blobs = len(have)
    if f:
        raise TamperError(f[0], f)
    return summary


def session_entries(directory: Path, session: str) -> list[dict[str, Any]]:
    """Every entry of ``session`` (objects), in order; raises LedgerError if none."""
    require_ledger(directory)
    with Index.open(directory) as index:
        found = [e.obj for e in index.session(session)]
    if not found:
        raise LedgerError(f"no entries for session {session!r}")
    return found


def export_pcap(directory: Path, session: str, out: BinaryIO) -> int:
    """Write the session as a pcap (see :mod:`appliance.ledger.pcap`); return packet count."""
    found = session_entries(directory, session)
    start: dict[str, Any] | None = next((o for o in found if o["type"] == "session.start"), None)
    if start is None:
        raise LedgerError(f"session {session!r} has no session.start entry (addresses unknown)")
    d = start["data"]
    client = parse_endpoint(str(d.get("client", "")))
    server = parse_endpoint(str(d.get("server", "")))
    segments = renderer_for(str(d.get("protocol", "")))(found, BlobReader(directory))
    return write_pcap(out, client, server, segments)
