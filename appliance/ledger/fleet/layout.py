"""Where a ledger lives in the fleet's bucket: the one home of its key names and bundle format.

Under ``s3://BUCKET/PREFIX`` (pure functions; the shipper writes these keys, the fleet
reader and the verifier parse them)::

    logs/<log>/vkey                          the log's verifier key (C2SP vkey), written first
    logs/<log>/checkpoints/<n, 20 digits>    the n-th signed checkpoint note (n = 0, 1, ...), as
                                             the n-th record of the local checkpoints.log
    logs/<log>/entries/<first>-<end>.jsonl   entries first..end-1 (20 digits each): one entry a
                                             line, exactly its stored (hashed) canonical JSON
    logs/<log>/blobs/<sha256>                a blob of the store (content addressed)

``<log>`` is the log's origin, percent-encoded (RFC 3986, nothing kept but letters, digits
and ``-._~``), so ``ci-runners.example/r7`` is ``ci-runners.example%2Fr7``: one prefix per
origin. Every object is written once; every checkpoint is its own object, so a fork or a
rollback leaves evidence; bundles tile ``0..size`` without gaps or overlaps; an object is
shipped only after everything it depends on (blobs, then entries, then the checkpoint).

Reading it without this code (an auditor with the AWS CLI and jq)::

    aws s3 ls s3://BUCKET/PREFIX/logs/                                 # the logs
    aws s3 cp s3://BUCKET/PREFIX/logs/LOG/checkpoints/00000000000000000041 -   # a signed note
    aws s3 cp s3://BUCKET/PREFIX/logs/LOG/entries/00000000000000000000-00000000000000000137.jsonl - | jq .
    aws s3api list-object-versions --bucket BUCKET --prefix PREFIX/logs/LOG/  # overwrites, deletes

and the leaf hash of each line is SHA-256(0x00 || line bytes): rebuilding the RFC 6962 tree of
the lines in order gives the root that checkpoint ``size`` lines long signs.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass

from appliance.ledger.errors import LedgerError

LOGS = "logs"
VKEY = "vkey"
CHECKPOINTS = "checkpoints"
ENTRIES = "entries"
BLOBS = "blobs"
_WIDTH = 20
# A bundle holds at most this many entries or bytes (a long backlog ships as several).
MAX_BUNDLE_ENTRIES = 8192
MAX_BUNDLE_BYTES = 16 * 1024 * 1024

_CHECKPOINT_RE = re.compile(r"checkpoints/(\d{20})")
_BUNDLE_RE = re.compile(r"entries/(\d{20})-(\d{20})\.jsonl")
_BLOB_RE = re.compile(r"blobs/([0-9a-f]{64})")


class LayoutError(LedgerError):
    """An object of the bucket does not follow the layout (a name or a bundle's content)."""


def log_name(origin: str) -> str:
    """The ``<log>`` path segment of an origin."""
    return urllib.parse.quote(origin, safe="")


def origin_of(name: str) -> str:
    """The origin a ``<log>`` segment encodes; raises LayoutError if it is not one that
    :func:`log_name` produces."""
    origin = urllib.parse.unquote(name, errors="strict") if "%" in name else name
    if not origin or log_name(origin) != name:
        raise LayoutError(f"{name!r} is not a percent-encoded log origin")
    return origin


def log_prefix(origin: str) -> str:
    """``logs/<log>/`` (relative to the bucket URL)."""
    return f"{LOGS}/{log_name(origin)}/"


def checkpoint_key(n: int) -> str:
    return f"{CHECKPOINTS}/{n:0{_WIDTH}d}"


def bundle_key(first: int, end: int) -> str:
    if not 0 <= first < end:
        raise ValueError(f"empty or reversed bundle {first}..{end}")
    return f"{ENTRIES}/{first:0{_WIDTH}d}-{end:0{_WIDTH}d}.jsonl"


def blob_key(sha256: str) -> str:
    return f"{BLOBS}/{sha256}"


@dataclass(frozen=True)
class Key:
    """A parsed key of one log (relative to ``logs/<log>/``): ``kind`` is ``vkey``,
    ``checkpoint`` (``n``), ``bundle`` (``first``, ``end``) or ``blob`` (``sha256``)."""

    kind: str
    n: int = 0
    first: int = 0
    end: int = 0
    sha256: str = ""


def parse_key(rel: str) -> Key | None:
    """The meaning of a key under a log's prefix, or None if the layout has no such key."""
    if rel == VKEY:
        return Key("vkey")
    if m := _CHECKPOINT_RE.fullmatch(rel):
        return Key("checkpoint", n=int(m.group(1)))
    if m := _BUNDLE_RE.fullmatch(rel):
        first, end = int(m.group(1)), int(m.group(2))
        return Key("bundle", first=first, end=end) if first < end else None
    if m := _BLOB_RE.fullmatch(rel):
        return Key("blob", sha256=m.group(1))
    return None


def encode_bundle(entries: Sequence[bytes]) -> bytes:
    """The bundle of stored entries: each followed by a newline. Canonical JSON has no raw
    newline; an entry with one cannot be shipped (raises LayoutError)."""
    for raw in entries:
        if b"\n" in raw:
            raise LayoutError("an entry holds a newline byte: it is not canonical JSON")
    return b"".join(raw + b"\n" for raw in entries)


def decode_bundle(data: bytes, first: int, end: int) -> list[bytes]:
    """The entries of a bundle named ``first``-``end``; raises LayoutError if it does not
    hold exactly ``end - first`` newline-terminated, non-empty lines."""
    if not data.endswith(b"\n"):
        raise LayoutError("the bundle does not end with a newline")
    lines = data[:-1].split(b"\n")
    if len(lines) != end - first:
        raise LayoutError(f"the bundle holds {len(lines)} entries, its name says {end - first}")
    if any(not line for line in lines):
        raise LayoutError("the bundle holds an empty line")
    return lines


def bundle_plan(start: int, stop: int, sizes: Sequence[int]) -> list[tuple[int, int]]:
    """Bundles covering entries ``start..stop-1``: at most :data:`MAX_BUNDLE_ENTRIES` each,
    given the byte ``sizes`` of those entries (``len(sizes) == stop - start``) at most
    :data:`MAX_BUNDLE_BYTES` each (a single larger entry gets a bundle of its own)."""
    out: list[tuple[int, int]] = []
    first, nbytes = start, 0
    for i, size in enumerate(sizes, start):
        if i > first and (i - first >= MAX_BUNDLE_ENTRIES or nbytes + size + 1 > MAX_BUNDLE_BYTES):
            out.append((first, i))
            first, nbytes = i, 0
        nbytes += size + 1
    if stop > first:
        out.append((first, stop))
    return out
