"""What an SSH session leaves in the ledger, masked before anything is written.

Where this sits: the SSH session core (:mod:`.core`) calls :class:`SshRecorder` for each
thing that happens; the entries are those of every protocol where they fit, so that
queries, reports and replays read SSH like SQL:

- ``session.start`` (at accept: even a key exchange that fails is a session),
  ``session.ready`` (the job's login, the service account, the target's verified host key),
  ``session.end`` (once, whatever happens);
- ``statement`` for each operation the job asks (an exec command line, a shell, a subsystem,
  an SFTP operation, a forward), numbered ``n`` in the session, with its channel, its
  masked text and the policy's decision; ``policy.decision`` for every one not plainly
  allowed; ``response`` when it ends (exit status or signal, bytes each way, duration, the
  masked recording of its streams as a blob);
- ``ssh.transfer`` per file moved (SFTP or SCP): path, size, SHA-256, and the start of its
  content, masked, as a blob when it is text;
- ``ssh.refused`` for what the appliance refused outside policy (channel limits,
  environment variables, agent and X11 forwarding), ``ssh.signal``, ``protocol.error``.

A channel's streams go to a blob as raw frames (:mod:`.terminal`), buffered here and
handed to the ledger every :data:`_CHUNK` bytes; the ledger writer masks them. Text put in
entries (command lines, paths, messages) is masked here, on the event loop.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from appliance.ledger.api import Blob, Ledger, PendingBlob
from appliance.masking import MaskCounts, TargetMasker
from appliance.proxy.ssh.terminal import StreamTransforms, frame, header_frame
from appliance.proxy.ssh.transfers import MaskedText, Transfer

__all__ = ["SshRecorder", "StreamRecording"]

_CHUNK = 64 * 1024


class StreamRecording:
    """One channel's streams on their way to a blob, bounded by ``limit`` bytes."""

    def __init__(
        self, ledger: Ledger, transform: object, limit: int, info: Mapping[str, Any]
    ) -> None:
        self.ledger = ledger
        self.transform = transform
        self.limit = limit
        self.size = 0
        self.dropped = 0
        self.blob: Blob | None = None
        self._pending = bytearray(header_frame(info))
        self._closed = False

    def add(self, kind: bytes, at_us: int, data: bytes) -> None:
        if self._closed or not data:
            return
        if self.size + len(data) > self.limit:
            self.dropped += len(data)
            return
        self.size += len(data)
        self._pending += frame(kind, at_us, data)
        if len(self._pending) >= _CHUNK:
            if self.blob is None:
                self.blob = self.ledger.open_blob(self.transform)
            self.blob.write(bytes(self._pending))
            self._pending.clear()

    def finish(self, at_us: int) -> Blob | PendingBlob:
        """The blob to reference from the channel's ``response`` entry."""
        self._closed = True
        self._pending += frame(b"z", at_us, b"")
        data = bytes(self._pending)
        self._pending.clear()
        if self.blob is None:
            return PendingBlob(self.transform, data)
        self.blob.write(data)
        self.blob.close()
        return self.blob

    def abort(self) -> None:
        self._closed = True
        if self.blob is not None:
            self.blob.abort()


class SshRecorder:
    """The ledger entries of one SSH session; see the module docstring."""

    def __init__(
        self,
        ledger: Ledger,
        *,
        session: str,
        target: str,
        identity: Mapping[str, Any],
        masker: TargetMasker | None,
        recording_limit: int,
    ) -> None:
        self.ledger = ledger
        self.session = session
        self.target = target
        self.identity = identity
        self.masker = masker
        self.recording_limit = recording_limit
        self.account: str | None = None
        self._streams = StreamTransforms(masker)
        self._content = MaskedText(masker)

    def append(
        self, type: str, data: Mapping[str, Any], blobs: Mapping[str, Any] | None = None
    ) -> None:
        self.ledger.append(
            type,
            session=self.session,
            identity=self.identity,
            account=self.account,
            target=self.target,
            data=data,
            blobs=blobs,
        )

    def mask(self, text: str, counts: MaskCounts | None = None) -> str:
        if self.masker is None:
            return text
        return self.masker.mask_text(text, counts if counts is not None else MaskCounts())

    def statement(
        self,
        n: int,
        chan: int | None,
        request: str,
        text: str,
        decision: Mapping[str, Any],
        **extra: Any,
    ) -> None:
        """An operation and its decision (and ``policy.decision`` when it was not plainly
        allowed)."""
        counts = MaskCounts()
        data: dict[str, Any] = {
            "n": n,
            "protocol": "ssh",
            "request": request,
            "text": self.mask(text, counts),
            "decision": dict(decision),
            **({"channel": chan} if chan is not None else {}),
            **extra,
        }
        if counts:
            data["masking"] = counts.as_dict()
        self.append("statement", data)
        if decision.get("decision") != "allow" or decision.get("enforced") is False:
            self.append("policy.decision", {"n": n, **decision})

    def response(
        self, n: int, data: Mapping[str, Any], recording: StreamRecording | None, at_us: int
    ) -> None:
        out = {"n": n, "protocol": "ssh", **data}
        if recording is None:
            self.append("response", out)
            return
        if recording.dropped:
            out["output_truncated"] = recording.dropped
        self.append("response", out, blobs={"output": recording.finish(at_us)})

    def stream(self, info: Mapping[str, Any]) -> StreamRecording:
        return StreamRecording(self.ledger, self._streams, self.recording_limit, info)

    def transfer(self, transfer: Transfer, *, complete: bool, chan: int) -> None:
        data = transfer.record(complete=complete)
        data["channel"] = chan
        data["path"] = self.mask(transfer.path)
        content = transfer.content()
        if content is None:
            data["content"] = None
            data["binary"] = transfer.size > 0  # binary content is never stored
            self.append("ssh.transfer", data)
            return
        data["content_truncated"] = transfer.truncated
        self.append("ssh.transfer", data, blobs={"content": PendingBlob(self._content, content)})

    def refused(self, what: str, reason: str, **extra: Any) -> None:
        self.append("ssh.refused", {"what": what, "reason": self.mask(reason), **extra})
