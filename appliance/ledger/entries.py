"""Ledger entries: what one record says, and the canonical bytes that are stored and hashed.

Every entry is one canonical JSON object (UTF-8, keys sorted, no insignificant whitespace, no
floats), exactly ``json.dumps(obj, sort_keys=True, separators=(",", ":"),
ensure_ascii=False).encode()``; the stored bytes are the Merkle leaf, so nothing downstream
ever re-serialises an entry. Fields::

    {"v": 1, "origin": str, "seq": int, "ts": "2026-11-25T20:33:05.123456Z", "type": str,
     "session": str|null, "identity": object|null, "account": str|null, "target": str|null,
     "data": object}

``seq`` is 0-based and equals the entry's Merkle leaf index. ``ts`` is UTC with exactly six
fractional digits, so lexical order is time order. Integers must fit in 64 bits (I-JSON
interoperability); floats are refused because their text form is not canonical across
implementations. Large payloads are not inlined: they live in the blob store and ``data``
holds a reference ``{"sha256": hex, "size": int}`` (see :func:`blob_refs`).

Types are open: writers accept unknown types (forward compatibility); readers render the
known ones below.
"""

from __future__ import annotations

import functools
import hashlib
import re
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any, Final, NamedTuple

import orjson

from appliance.ledger.errors import CanonicalError, LedgerError

FORMAT_VERSION = 1

APPLIANCE_START = "appliance.start"
APPLIANCE_STOP = "appliance.stop"
KEY_PUBLISHED = "key.published"
SESSION_START = "session.start"
SESSION_END = "session.end"
STATEMENT = "statement"
RESPONSE = "response"
POLICY_DECISION = "policy.decision"
APPROVAL_REQUESTED = "approval.requested"
APPROVAL_GRANTED = "approval.granted"
APPROVAL_DENIED = "approval.denied"
APPROVAL_TIMEOUT = "approval.timeout"
APPROVAL_REJECTED = "approval.rejected"
MASKING_APPLIED = "masking.applied"
CAPTURE_RULES_INSTALLED = "capture.rules_installed"
CAPTURE_RULES_REMOVED = "capture.rules_removed"
CAPTURE_RULES_RESTORED = "capture.rules_restored"
CAPTURE_BPF_ATTACHED = "capture.bpf_attached"
CAPTURE_BPF_FAILED = "capture.bpf_failed"
CAPTURE_EVENTS_LOST = "capture.events_lost"
CAPTURE_REFUSED = "capture.refused"
CAPTURE_REFUSED_SUMMARY = "capture.refused.summary"
CONNECTION_REFUSED = "connection.refused"  # ended before its session started
CONNECTION_REFUSED_SUMMARY = "connection.refused.summary"  # more of them, counted
CAPTURE_JOB_PRIVILEGED = "capture.job_privileged"
IDENTITY_KEYS_LOADED = "identity.keys_loaded"
IDENTITY_KEYS_UNAVAILABLE = "identity.keys_unavailable"
IDENTITY_VERIFIED = "identity.verified"
IDENTITY_REJECTED = "identity.rejected"
IDENTITY_UNAVAILABLE = "identity.unavailable"
IDENTITY_MISMATCH = "identity.mismatch"
PROTOCOL_ERROR = "protocol.error"
# Shipping to the fleet's bucket (appliance.ledger.fleet.runner).
SHIP_STALLED = "ledger.ship_stalled"
SHIP_RESUMED = "ledger.ship_resumed"
SHIP_BACKLOG = "ledger.ship_backlog"
SHIP_CONFLICT = "ledger.ship_conflict"
SHIP_GAP = "ledger.ship_gap"

KNOWN_TYPES: tuple[str, ...] = (
    APPLIANCE_START,
    APPLIANCE_STOP,
    KEY_PUBLISHED,
    SESSION_START,
    SESSION_END,
    STATEMENT,
    RESPONSE,
    POLICY_DECISION,
    APPROVAL_REQUESTED,
    APPROVAL_GRANTED,
    APPROVAL_DENIED,
    APPROVAL_TIMEOUT,
    APPROVAL_REJECTED,
    MASKING_APPLIED,
    CAPTURE_RULES_INSTALLED,
    CAPTURE_RULES_REMOVED,
    CAPTURE_RULES_RESTORED,
    CAPTURE_BPF_ATTACHED,
    CAPTURE_BPF_FAILED,
    CAPTURE_EVENTS_LOST,
    CAPTURE_REFUSED,
    CAPTURE_REFUSED_SUMMARY,
    CONNECTION_REFUSED,
    CONNECTION_REFUSED_SUMMARY,
    CAPTURE_JOB_PRIVILEGED,
    IDENTITY_KEYS_LOADED,
    IDENTITY_KEYS_UNAVAILABLE,
    IDENTITY_VERIFIED,
    IDENTITY_REJECTED,
    IDENTITY_UNAVAILABLE,
    IDENTITY_MISMATCH,
    PROTOCOL_ERROR,
    SHIP_STALLED,
    SHIP_RESUMED,
    SHIP_BACKLOG,
    SHIP_CONFLICT,
    SHIP_GAP,
)

FIELDS = ("account", "data", "identity", "origin", "seq", "session", "target", "ts", "type", "v")
_FIELD_SET = frozenset(FIELDS)
_TS_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_INT_MIN, _INT_MAX = -(2**63), 2**63 - 1


class MalformedEntry(LedgerError):
    """Stored bytes are not a well-formed entry; ``reason`` says what is wrong."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class Entry(NamedTuple):
    """One stored entry: its index, its exact stored bytes, and their parsed object."""

    seq: int
    raw: bytes
    obj: dict[str, Any]


# -- canonical JSON -------------------------------------------------------------------------


_SCALARS = frozenset({str, bool, type(None)})


def _is_canonical(value: Any) -> bool:
    """True if ``value`` consists only of dict (str keys), list/tuple, str, int, bool, None.

    Exact type tests, scalars checked inline: this runs on every append, so it is written
    for speed (a float, a subclass or any other type takes the slow path to an error).
    """
    t = type(value)
    if t in _SCALARS:
        return True
    if t is int:
        return _INT_MIN <= value <= _INT_MAX  # type: ignore[no-any-return]
    if t is dict:
        for k, v in value.items():
            if type(k) is not str:
                return False
            tv = type(v)
            if tv in _SCALARS or (tv is int and _INT_MIN <= v <= _INT_MAX):
                continue
            if not _is_canonical(v):
                return False
        return True
    if t is list or t is tuple:
        for v in value:
            tv = type(v)
            if tv in _SCALARS or (tv is int and _INT_MIN <= v <= _INT_MAX):
                continue
            if not _is_canonical(v):
                return False
        return True
    return False


def _problem(value: object, path: str) -> str | None:
    """Where and why ``value`` is not canonical (slow path, only used to word the error)."""
    if isinstance(value, bool) or value is None or type(value) is str:
        return None
    if type(value) is int:
        if not _INT_MIN <= value <= _INT_MAX:
            return f"{path}: integer {value} does not fit in 64 bits"
        return None
    if isinstance(value, float):
        return f"{path}: floats are not allowed in ledger entries (got {value!r})"
    if type(value) is dict:
        for k, v in value.items():
            if type(k) is not str:
                return f"{path}: object key {k!r} is not a string"
            found = _problem(v, f"{path}.{k}")
            if found:
                return found
        return None
    if type(value) in (list, tuple):
        for i, v in enumerate(value):  # type: ignore[arg-type]
            found = _problem(v, f"{path}[{i}]")
            if found:
                return found
        return None
    return f"{path}: {type(value).__name__} has no canonical JSON form"


def canonical_json(value: object) -> bytes:
    """The canonical JSON bytes of ``value``; raise :class:`CanonicalError` if it has none.

    The output equals ``json.dumps(value, sort_keys=True, separators=(",", ":"),
    ensure_ascii=False).encode()`` (a property test checks this); orjson produces it about
    ten times faster, which keeps appends off the proxy's critical path.
    """
    if not _is_canonical(value):
        raise CanonicalError(_problem(value, "$") or "value has no canonical JSON form")
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError as exc:  # e.g. a lone surrogate in a string
        raise CanonicalError(f"value has no canonical JSON form: {exc}") from None


def encode_trusted(value: object) -> bytes:
    """:func:`canonical_json` without the type walk, for values built only from canonical
    types by typed code (see ``LedgerWriter.append(trusted=True)``)."""
    try:
        return _dumps(value, None, _SORT_KEYS)
    except orjson.JSONEncodeError as exc:
        raise CanonicalError(f"value has no canonical JSON form: {exc}") from None


# Held here: compiled, a module's Final is a C variable, where ``orjson.dumps`` would be two
# attribute lookups per entry; the arguments go by position (a keyword costs its parsing).
_dumps: Final = orjson.dumps
_SORT_KEYS: Final = orjson.OPT_SORT_KEYS


# -- timestamps -----------------------------------------------------------------------------


def format_ts(t: float) -> str:
    """``t`` (seconds since the epoch) as ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` in UTC."""
    return format_ts_us(round(t * 1_000_000))


class TsFormat:
    """Microseconds since the epoch as entry timestamps, the last second's
    ``YYYY-MM-DDTHH:MM:SS.`` kept (every entry is stamped, and strftime is slow). One
    instance may serve several threads: the second and its text are replaced together."""

    def __init__(self) -> None:
        self._last: tuple[int, str] = (-1, "")

    def format(self, us: int) -> str:
        secs = us // 1_000_000
        last = self._last
        if last[0] != secs:
            last = (secs, time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(secs)))
            self._last = last
        # the six digits of the fraction, zeros in front: 1000000 + frac has seven, a 1 first
        return f"{last[1]}{str(1_000_000 + us - secs * 1_000_000)[1:]}Z"


_TS_FORMAT: Final = TsFormat()


def format_ts_us(us: int) -> str:
    """Microseconds since the epoch as an entry timestamp."""
    return _TS_FORMAT.format(us)


def ts_to_us(ts: str) -> int:
    """Microseconds since the epoch of an entry timestamp (raises ValueError if malformed)."""
    if not _TS_RE.fullmatch(ts):
        raise ValueError(f"not an entry timestamp: {ts!r}")
    return _second_us(ts[:19]) + int(ts[20:26])


@functools.lru_cache(maxsize=1024)
def _second_us(prefix: str) -> int:
    """``YYYY-MM-DDTHH:MM:SS`` in µs since the epoch; cached: strptime is slow, and a
    transcript's entries share their seconds."""
    dt = datetime.strptime(prefix, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
    return int(dt.timestamp()) * 1_000_000


# -- building and parsing entries -------------------------------------------------------------


def make_entry(
    *,
    origin: str,
    seq: int,
    ts: str,
    type: str,
    data: Mapping[str, Any],
    session: str | None = None,
    identity: Mapping[str, Any] | None = None,
    account: str | None = None,
    target: str | None = None,
) -> dict[str, Any]:
    """The entry object (not yet encoded); mappings are copied into plain dicts."""
    return {
        "v": FORMAT_VERSION,
        "origin": origin,
        "seq": seq,
        "ts": ts,
        "type": type,
        "session": session,
        "identity": dict(identity) if identity is not None else None,
        "account": account,
        "target": target,
        "data": dict(data),
    }


def _checked(value: object, path: str) -> bytes:
    """:func:`canonical_json` whose error names the entry field (``$.data.x: floats ...``)."""
    if not _is_canonical(value):
        raise CanonicalError(_problem(value, path) or f"{path} has no canonical JSON form")
    return canonical_json(value)


class EntryPrefix:
    """The canonical bytes of entries that share origin, session, identity, account and
    target, built by concatenation: the shared parts are encoded once (an identity is a
    dozen keys), and each entry costs the encoding of its ``data``. The result equals
    :func:`encode_entry` of :func:`make_entry` byte for byte (a property test checks it):
    canonical JSON is the keys in sorted order, ``account``, ``data``, ``identity``,
    ``origin``, ``seq``, ``session``, ``target``, ``ts``, ``type``, ``v``.

    Raises CanonicalError if a shared part has no canonical form.
    """

    __slots__ = ("_head", "_middle", "_tail")

    def __init__(
        self,
        *,
        origin: str,
        session: str | None,
        identity: Mapping[str, Any] | None,
        account: str | None,
        target: str | None,
    ) -> None:
        ident = _checked(dict(identity) if identity is not None else None, "$.identity")
        self._head = b'{"account":' + canonical_json(account) + b',"data":'
        self._middle = b',"identity":' + ident + b',"origin":' + canonical_json(origin) + b',"seq":'
        # everything between seq and the ts's digits
        self._tail = (
            b',"session":'
            + canonical_json(session)
            + b',"target":'
            + canonical_json(target)
            + b',"ts":"'
        )

    def encode(
        self, seq: int, ts: str, type: str, data: Mapping[str, Any], *, trusted: bool
    ) -> bytes:
        """The entry's canonical bytes; ``trusted`` as in ``LedgerWriter.append``."""
        body = encode_trusted(data) if trusted else _checked(dict(data), "$.data")
        return b"".join(
            (self._head, body, self._middle, str(seq).encode(), self._tail, ts.encode(), _end(type))
        )

    def encode_unnumbered(
        self, ts: str, type: str, data: Mapping[str, Any], *, trusted: bool
    ) -> tuple[bytes, int, int]:
        """The entry's canonical bytes without its ``seq`` digits, where those go, and where
        the 27 bytes of ``ts`` are: for a ledger whose writer numbers the entries of several
        proxy processes in one order (:mod:`appliance.ledger.remote`, ``proxy.workers``).
        :func:`number_entry` completes them."""
        body = encode_trusted(data) if trusted else _checked(dict(data), "$.data")
        seq_at = len(self._head) + len(body) + len(self._middle)
        raw = b"".join((self._head, body, self._middle, self._tail, ts.encode(), _end(type)))
        return raw, seq_at, seq_at + len(self._tail)


def _end(type: str) -> bytes:
    """What follows the ts's digits in an entry of ``type`` (the few types are kept)."""
    end = _ENDS.get(type)
    if end is None:
        end = b'","type":' + encode_trusted(type) + b',"v":' + _VERSION + b"}"
        if len(_ENDS) < 256:
            _ENDS[type] = end
    return end


def number_entry(raw: bytes, seq_at: int, ts_at: int, seq: int, ts: str | None) -> bytes:
    """Bytes from :meth:`EntryPrefix.encode_unnumbered` with ``seq`` put in, and their
    timestamp replaced by ``ts`` (same length) unless None. Everything before ``seq_at`` (the
    entry's data, where blob references go) keeps its offsets."""
    if not 0 < seq_at <= ts_at <= len(raw) - _TS_LEN:
        raise LedgerError("unnumbered entry: seq/ts offsets out of range")
    tail = raw[ts_at + _TS_LEN :] if ts is not None else raw[ts_at:]
    stamp = ts.encode() if ts is not None else b""
    return b"".join((raw[:seq_at], str(seq).encode(), raw[seq_at:ts_at], stamp, tail))


_TS_LEN = 27
_VERSION = str(FORMAT_VERSION).encode()
_ENDS: dict[str, bytes] = {}
_PREFIX_CACHE = 4096


class PrefixCache:
    """:class:`EntryPrefix` per (origin, session, identity object, account, target): the
    proxy passes the same identity mapping with every entry of a session."""

    def __init__(self, origin: str) -> None:
        self.origin = origin
        self._cache: dict[tuple[Any, ...], tuple[object, EntryPrefix]] = {}

    def get(
        self,
        session: str | None,
        identity: Mapping[str, Any] | None,
        account: str | None,
        target: str | None,
    ) -> EntryPrefix:
        key = (session, id(identity), account, target)
        hit = self._cache.get(key)
        if hit is not None and hit[0] is identity:
            return hit[1]
        prefix = EntryPrefix(
            origin=self.origin, session=session, identity=identity, account=account, target=target
        )
        if len(self._cache) >= _PREFIX_CACHE:
            self._cache.clear()
        self._cache[key] = (identity, prefix)  # the object kept alive: its id() stays its own
        return prefix


def encode_entry(obj: Mapping[str, Any]) -> bytes:
    """Canonical bytes of an entry object made by :func:`make_entry`."""
    return canonical_json(obj if type(obj) is dict else dict(obj))


_OPT_STR = frozenset({str, type(None)})
_OPT_DICT = frozenset({dict, type(None)})


def parse_entry(raw: bytes) -> dict[str, Any]:
    """Parse and check stored entry bytes; raise :class:`MalformedEntry` saying what is wrong.

    Checks the shape (all fields present with the right types, ``v`` known, ``ts`` format);
    does not check ``seq`` or ``origin`` against their context, which the caller knows.
    The verifier runs this on every entry: one combined test first, the detailed ones only
    to word an error.
    """
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise MalformedEntry(f"not valid JSON: {exc}") from None
    if type(obj) is dict and obj.keys() == _FIELD_SET:
        seq, ts, typ = obj["seq"], obj["ts"], obj["type"]
        if (
            obj["v"] == FORMAT_VERSION
            and type(obj["v"]) is int
            and type(seq) is int
            and seq >= 0
            and type(ts) is str
            and len(ts) == 27
            and type(typ) is str
            and typ
            and type(obj["origin"]) is str
            and type(obj["data"]) is dict
            and type(obj["session"]) in _OPT_STR
            and type(obj["account"]) in _OPT_STR
            and type(obj["target"]) in _OPT_STR
            and type(obj["identity"]) in _OPT_DICT
            and _TS_RE.fullmatch(ts)
        ):
            return obj
    _explain(obj)
    raise MalformedEntry("malformed entry")  # not reached: _explain raises


def _explain(obj: Any) -> None:
    """Raise MalformedEntry naming the first thing wrong with a parsed entry."""
    if type(obj) is not dict:
        raise MalformedEntry("not a JSON object")
    if obj.keys() != _FIELD_SET:
        missing = sorted(set(FIELDS) - set(obj))
        extra = sorted(set(obj) - set(FIELDS))
        raise MalformedEntry(f"wrong fields (missing {missing}, unexpected {extra})")
    if obj["v"] != FORMAT_VERSION or type(obj["v"]) is not int:
        raise MalformedEntry(f"unknown format version {obj['v']!r}")
    if type(obj["seq"]) is not int or obj["seq"] < 0:
        raise MalformedEntry("seq is not a non-negative integer")
    ts = obj["ts"]
    if type(ts) is not str or not _TS_RE.fullmatch(ts):
        raise MalformedEntry(f"malformed timestamp {obj['ts']!r}")
    if type(obj["type"]) is not str or not obj["type"]:
        raise MalformedEntry("type is not a non-empty string")
    if type(obj["origin"]) is not str:
        raise MalformedEntry("origin is not a string")
    if type(obj["data"]) is not dict:
        raise MalformedEntry("data is not an object")
    for key in ("session", "account", "target"):
        if obj[key] is not None and type(obj[key]) is not str:
            raise MalformedEntry(f"{key} is neither a string nor null")
    raise MalformedEntry("identity is neither an object nor null")


# -- blob references --------------------------------------------------------------------------


class BlobRef(NamedTuple):
    """A reference from an entry's data to a stored blob; ``path`` is a JSON path for messages.

    ``inline``: a small blob's content carried in the entry itself (UTF-8 text), instead of a
    file in the blob store; its SHA-256 and size are checked all the same.
    """

    path: str
    sha256: str
    size: int
    inline: str | None = None

    def inline_ok(self) -> bool:
        """True if the inline content matches the reference's hash and size."""
        if self.inline is None:
            return False
        raw = self.inline.encode("utf-8")
        return len(raw) == self.size and hashlib.sha256(raw).hexdigest() == self.sha256


def is_blob_ref(value: object) -> bool:
    """True for ``{"sha256": <64 lowercase hex>, "size": <int >= 0>, ...}``.

    Other keys may annotate the reference (e.g. masking counts, see ``BlobSink.annotate``);
    an object with these two keys anywhere in ``data`` is a blob reference by convention.
    """
    return (
        type(value) is dict
        and type(value.get("sha256")) is str
        and type(value.get("size")) is int
        and value["size"] >= 0
        and _SHA256_RE.fullmatch(value["sha256"]) is not None
    )


def blob_refs(data: object, path: str = "data") -> Iterator[BlobRef]:
    """Every blob reference inside an entry's ``data``, depth first."""
    if type(data) is dict:
        if is_blob_ref(data):
            inline = data.get("inline")
            yield BlobRef(
                path, data["sha256"], data["size"], inline if type(inline) is str else None
            )
            return
        for k, v in data.items():
            yield from blob_refs(v, f"{path}.{k}")
    elif type(data) is list:
        for i, v in enumerate(data):
            yield from blob_refs(v, f"{path}[{i}]")


def may_have_blob_refs(raw: bytes) -> bool:
    """Cheap pre-check on stored bytes before walking the parsed data for references."""
    return b'"sha256":"' in raw
