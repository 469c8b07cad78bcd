"""What every protocol's session recorder shares: appending a session's entries, masking
text, and the ``statement`` and ``response`` entries with what goes with them.

Where this sits: a protocol's recorder (:class:`~appliance.proxy.pg.recording.
SessionRecorder`, :class:`~appliance.proxy.mysql.recording.MySQLRecorder`) subclasses
:class:`SessionRecords` and builds the data of its entries from its own messages; the
rules of what accompanies them live here once: a ``policy.decision`` entry for every
statement not simply allowed (or not enforced), a ``masking.applied`` entry for every place
something was masked (the statement, the response's fields: error fields and column names,
which MySQL takes from the expression's text, ``SELECT '4111...'``; the rows sent to the
job), a
response's result blob from the statement's :class:`~appliance.ledger.result_sink.RowsSink`
(or ``"result": null``). Everything is masked before it is appended (invariant 3).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

from mypy_extensions import mypyc_attr

from appliance.ledger import transform_helper
from appliance.ledger.api import Blob, Ledger, PendingBlob
from appliance.ledger.entries import canonical_json
from appliance.ledger.result_sink import PartsTransform, RowsSink, transforms
from appliance.ledger.sender import LedgerSender, SessionEntries
from appliance.masking import MaskCounts, TargetMasker

__all__ = ["MaskingTransform", "SessionRecords", "masked_piece", "pieces"]

_MASK_CACHE = 64  # masked statement texts remembered per session (then forgotten at once)
_NOT_A_DECISION = frozenset({"allow", "syntax_error"})


@mypyc_attr(allow_interpreted_subclasses=True)  # compiled, and subclassed by protocols
class MaskingTransform(PartsTransform):
    """The base of a protocol's result-blob transform: it counts what it masked
    (``counts``), and the counts annotate the blob's reference in the response entry.

    A long run of rows may be masked in pieces (:meth:`shared`), some of them by the ledger
    writer's helper process on a core that would sit idle (:mod:`appliance.ledger.
    transform_helper`): a protocol whose rows are masked one by one after their header
    implements :meth:`resume` and :meth:`masked`, keeps the last header part's body in
    ``header``, and calls :meth:`shared` for a run it may cut."""

    def __init__(self, masker: TargetMasker | None) -> None:
        super().__init__(masker)
        self.counts = MaskCounts()
        self.header: bytes | None = None  # the body of the last header part

    def annotation(self) -> Mapping[str, Any]:
        return {"masking": self.counts.as_dict()} if self.counts else {}

    def resume(self, header: bytes) -> None:
        """Be as after the header part ``header``, without writing or counting it."""
        raise NotImplementedError

    def masked(self, kind: bytes, frames: list[bytes]) -> bytes:
        """A piece of a run of ``kind`` (the protocol's units, e.g. row payloads) as the
        blob's JSON lines, counted in ``counts``: what :meth:`part` writes for them."""
        raise NotImplementedError

    def shared(self, kind: bytes, pieces: list[list[bytes]]) -> bytes:
        """:meth:`masked` of each piece, joined: some of them maybe done by the helper."""
        header = self.header
        assert header is not None
        done = transform_helper.share(
            pieces,
            lambda p: (self.masked(kind, p), None),
            masked_piece,
            self.masker,
            type(self),
            header,
            kind,
        )
        out = []
        for data, counts in done:
            if counts is not None:
                self.counts.update(MaskCounts.of(counts))
            out.append(data)
        return b"".join(out)


def masked_piece(
    masker: TargetMasker,
    make: type[MaskingTransform],
    header: bytes,
    kind: bytes,
    frames: list[bytes],
) -> tuple[bytes, tuple[dict[str, int], dict[str, int]] | None]:
    """:meth:`MaskingTransform.shared`'s piece in the helper process: what a fresh
    transform resumed after ``header`` writes for it, and what it counted."""
    t = make(masker)
    t.resume(header)
    return t.masked(kind, frames), t.counts.raw()


def pieces(units: list[bytes]) -> list[list[bytes]]:
    """A run's units (row payloads) in pieces of about :data:`~appliance.ledger.
    transform_helper.PIECE` bytes."""
    out: list[list[bytes]] = []
    size, start = 0, 0
    for i, unit in enumerate(units):
        size += len(unit)
        if size >= transform_helper.PIECE:
            out.append(units[start : i + 1])
            size, start = 0, i + 1
    if start < len(units):
        out.append(units[start:])
    return out


@mypyc_attr(allow_interpreted_subclasses=True)  # compiled, and subclassed by protocols
class SessionRecords:
    """One session's ledger entries; see the module docstring. A subclass names its
    protocol's blob transform as ``transform`` (a :class:`~appliance.ledger.result_sink.
    PartsTransform` subclass, made per blob from the target's masker). ``session``,
    ``identity``, ``account`` and ``target`` are the session's for its whole life: what the
    entries share is encoded from them once."""

    transform: ClassVar[type[MaskingTransform]]

    def __init__(
        self,
        ledger: Ledger,
        *,
        session: str,
        target: str,
        account: str | None,
        identity: Mapping[str, Any],
        masker: TargetMasker | None,
        record_rows: bool,
        max_result_bytes: int,
        clock: Callable[[], float],
    ) -> None:
        self.ledger = ledger
        self.session = session
        self.target = target
        self.account = account
        self.identity = dict(identity)
        self.masker = masker
        self.record_rows = record_rows
        self.max_result_bytes = max_result_bytes
        self.clock = clock
        self._transforms = transforms(self.transform, masker)
        self._sinks: dict[int, RowsSink] = {}
        self._masked: dict[str, tuple[str, MaskCounts]] = {}
        # Checked once here, so that the per-statement appends can skip the type walk.
        canonical_json(self.identity)
        # Through a writer process (the default), each entry is one native call.
        self._entries: SessionEntries | None = None
        if isinstance(ledger, LedgerSender):
            self._entries = ledger.session_entries(session, self.identity, account, target)

    def append(
        self,
        type: str,
        data: dict[str, Any],
        blobs: Mapping[str, Blob | PendingBlob] | None = None,
    ) -> None:
        """Append an entry of this session; ``data`` is handed over. Everything the recorders
        build is str, int, bool, None, lists and dicts (see :meth:`mask` for text), so the
        append is ``trusted``."""
        entries = self._entries
        if entries is not None and blobs is None:
            entries.append(type, data)
            return
        self.ledger.append(
            type,
            session=self.session,
            identity=self.identity,
            account=self.account,
            target=self.target,
            data=data,
            blobs=blobs,
            trusted=True,
        )

    # -- masking of text -------------------------------------------------------------------

    def mask(self, text: str, counts: MaskCounts | None = None) -> str:
        """``text`` with sensitive values masked, as valid Unicode (bytes that were not UTF-8
        become U+FFFD, never lone surrogates)."""
        if not text.isascii():
            text = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        if self.masker is None:
            return text
        return self.masker.mask_text(text, counts if counts is not None else MaskCounts())

    def mask_statement(self, text: str, counts: MaskCounts) -> str:
        """:meth:`mask` for statement text, cached per session: the same prepared or ORM
        statement text comes back again and again (its counts are added each time)."""
        hit = self._masked.get(text)
        if hit is None:
            found = MaskCounts()
            hit = (self.mask(text, found), found)
            if len(self._masked) >= _MASK_CACHE:
                self._masked.clear()
            self._masked[text] = hit
        masked, found = hit
        if found:
            counts.update(found)
        return masked

    def mask_names(self, names: Sequence[str], counts: MaskCounts) -> list[str]:
        """Column names masked (cached like statement text: the same names come back)."""
        return [self.mask_statement(name, counts) for name in names]

    # -- entries ---------------------------------------------------------------------------

    def statement_entries(
        self, n: int, data: dict[str, Any], decision: Mapping[str, Any], counts: MaskCounts
    ) -> None:
        """The ``statement`` entry (``data``, already masked into ``counts``, gets the
        decision and the counts), then ``policy.decision`` unless the statement was simply
        allowed (or is an error of its own, such as a syntax error), and ``masking.applied``."""
        data["decision"] = decision
        if counts:
            data["masking"] = counts.as_dict()
        self.append("statement", data)
        if decision.get("decision") not in _NOT_A_DECISION or decision.get("enforced") is False:
            self.append("policy.decision", {"n": n, **decision})
        if counts:
            self.append("masking.applied", {"n": n, "where": "statement", **counts.as_dict()})

    def response_entries(
        self,
        n: int,
        data: dict[str, Any],
        counts: MaskCounts,
        masked_to_job: MaskCounts | None = None,
    ) -> None:
        """The ``response`` entry of statement ``n``: ``data`` (masked into ``counts``: the
        error fields and column names) with the statement's result blob, then
        ``masking.applied`` for those fields and for the rows sent to the job."""
        blob: Blob | PendingBlob | None = None
        sink = self._sinks.pop(n, None)
        if sink is not None:
            blob = sink.finish()
            if sink.truncated:
                data["result_truncated"] = True
        else:
            data["result"] = None
        if counts:
            data["masking"] = counts.as_dict()
        if masked_to_job:
            data["masked_to_job"] = masked_to_job.as_dict()
        entries = self._entries
        if blob is None:
            self.append("response", data)
        elif entries is not None and isinstance(blob, PendingBlob):
            entries.append("response", data, "result", blob)  # a small result, inline
        else:
            self.append("response", data, {"result": blob})
        if counts:
            self.append("masking.applied", {"n": n, "where": "response fields", **counts.as_dict()})
        if masked_to_job:
            self.append(
                "masking.applied",
                {"n": n, "where": "rows sent to the job", **masked_to_job.as_dict()},
            )

    # -- result blobs ------------------------------------------------------------------------

    def sink(self, n: int) -> RowsSink | None:
        """The result sink of statement ``n`` (one blob for all its result sets), or None
        when result rows are not recorded. The writer decodes and masks the rows, and adds
        the masking counts to the blob's reference in the entry."""
        if not self.record_rows:
            return None
        sink = self._sinks.get(n)
        if sink is None:
            sink = self._sinks[n] = RowsSink(self.ledger, self._transforms, self.max_result_bytes)
        return sink

    def discard(self) -> None:
        """Abort result blobs no entry will reference (a session that ended mid-statement)."""
        for sink in self._sinks.values():
            sink.abort()
        self._sinks.clear()
