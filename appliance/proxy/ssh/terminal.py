"""A channel's recorded streams, masked line by line, with what was typed at a password
prompt hidden: the blob transform of SSH recordings.

Where this sits: the SSH session (:mod:`.recording`) writes each channel's streams to a
ledger blob as raw frames (:func:`frame`): output ``o``, error output ``e``, input ``i``,
a terminal resize ``r``, the end ``z``, each with its time in microseconds since the channel
started, after a header ``h``. The ledger writer (its own process by default) runs
:class:`StreamTransform` over them before anything reaches disk; what it writes is JSON
Lines, one event per line::

    {"cols": 80, "pty": true, "rows": 24, "term": "xterm"}     (the header, first)
    [1234, "o", "masked output line\\r\\n"]
    [2345, "i", "masked input line\\r"]
    [3456, "r", "100x30"]

asciicast v2's event stream with integer microseconds (the format's home is
:mod:`appliance.ledger.recordings`, which also reads it and exports asciicast).

Masking sees whole lines: output is held until its line ends (or :data:`FLUSH_BYTES` are
held), so a card number echoed one key at a time is masked as one value. When output pauses
for :data:`FLUSH_GAP_US` mid-line (a prompt waiting for the user), what came before is
written, keeping back a trailing run of letters, digits, spaces and dashes (a value being
typed) until the line goes on; a value typed with a longer pause inside one of its words
could still be split. Input on a terminal is recorded a line at a time (up to Enter); a
line is *secret* when the terminal did not echo it (the output after it, up to its line
end, does not show what was typed) or when it answers a prompt asking for a password,
passphrase, PIN or one-time code; a secret line is recorded as ``[NO-ECHO: n characters]``
and counted as ``no_echo_input``. Piped input (an exec without a terminal) is data, masked
per line like output.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from appliance.ledger.recordings import event_line, header_line
from appliance.masking import MaskCounts, TargetMasker

__all__ = ["FLUSH_BYTES", "FLUSH_GAP_US", "StreamTransform", "StreamTransforms", "frame"]

FLUSH_BYTES = 4096
FLUSH_GAP_US = 1_000_000
_TRACK = 65536  # output kept to judge an echo, per pending input line
_FRAME = struct.Struct("!cQI")
_PROMPT = re.compile(
    r"(pass(word|phrase|code)|\bpin\b|verification code|one-time|\botp\b)[^\n]*[:>?]\s*$", re.I
)
_CSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[()][0-9A-Za-z]|\x1b[=>78]|\x1b\][^\x07]*\x07")
_TRAILING_VALUE = re.compile(rb"[0-9A-Za-z \-]{1,64}$")


def frame(kind: bytes, at_us: int, data: bytes) -> bytes:
    """One raw event (``kind``: h header, o, e, i, r resize ``COLSxROWS``, z end)."""
    return _FRAME.pack(kind, at_us, len(data)) + data


def header_frame(info: Mapping[str, Any]) -> bytes:
    return frame(b"h", 0, orjson.dumps(info, option=orjson.OPT_SORT_KEYS))


@dataclass
class _Typed:
    at: int
    text: str
    prompt: str
    echo: str


class _Held:
    """A stream's output not yet written (its line has not ended)."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.at = 0


class StreamTransform:
    """Raw frames in, masked JSON lines out (see the module docstring). Stateful across
    chunks: a frame cut by a chunk boundary waits for the rest."""

    def __init__(self, masker: TargetMasker | None, counts: MaskCounts) -> None:
        self.masker = masker
        self.counts = counts
        self.pty = False
        self._partial = b""
        self._held: dict[bytes, _Held] = {b"o": _Held(), b"e": _Held(), b"i": _Held()}
        # Terminal input: the line being typed, the prompt it answers and the output since
        # its first key; lines whose echo is not yet known.
        self._keys = bytearray()
        self._keys_at = 0
        self._keys_prompt = ""
        self._keys_echo = ""
        self._pending: list[_Typed] = []
        self._tail = ""  # output since its last line end: what a key answers

    def __call__(self, chunk: bytes) -> bytes:
        data = self._partial + chunk if self._partial else chunk
        out: list[bytes] = []
        pos, n = 0, len(data)
        while pos + _FRAME.size <= n:
            kind, at, length = _FRAME.unpack_from(data, pos)
            end = pos + _FRAME.size + length
            if end > n:
                break
            self._event(kind, at, data[pos + _FRAME.size : end], out)
            pos = end
        self._partial = data[pos:]
        return b"".join(out)

    def _event(self, kind: bytes, at: int, data: bytes, out: list[bytes]) -> None:
        if kind == b"h":
            info = orjson.loads(data)
            self.pty = bool(info.get("pty"))
            out.append(header_line(info))
        elif kind == b"o" or kind == b"e" or (kind == b"i" and not self.pty):
            if kind == b"o" and self.pty:
                self._watch(data.decode("utf-8", "replace"))
            self._hold(kind, at, data, out)
            if self.pty:
                self._settle(out)
        elif kind == b"i":
            self._typed(at, data)
            self._settle(out)
        elif kind == b"r":
            self._flush(out)
            out.append(event_line(at, "r", data.decode("ascii", "replace")))
        elif kind == b"z":
            self._flush(out)
            if self._keys:
                self._line_typed(at)
            self._settle(out, final=True)

    # -- output ----------------------------------------------------------------------------

    def _hold(self, kind: bytes, at: int, data: bytes, out: list[bytes]) -> None:
        held = self._held[kind]
        if held.buf and at - held.at > FLUSH_GAP_US:
            keep = _TRAILING_VALUE.search(held.buf)
            cut = keep.start() if keep is not None else len(held.buf)
            if cut:
                self._write(kind, held.at, bytes(held.buf[:cut]), out)
                del held.buf[:cut]
        held.buf += data
        held.at = at
        end = held.buf.rfind(b"\n")
        if end != -1:
            self._write(kind, at, bytes(held.buf[: end + 1]), out)
            del held.buf[: end + 1]
        if len(held.buf) > FLUSH_BYTES:
            self._write(kind, at, bytes(held.buf), out)
            held.buf.clear()

    def _flush(self, out: list[bytes]) -> None:
        for kind, held in self._held.items():
            if held.buf:
                self._write(kind, held.at, bytes(held.buf), out)
                held.buf.clear()

    def _write(self, kind: bytes, at: int, data: bytes, out: list[bytes]) -> None:
        text = data.decode("utf-8", "replace")
        out.append(event_line(at, kind.decode(), self._mask(text)))

    # -- terminal input --------------------------------------------------------------------

    def _watch(self, text: str) -> None:
        """Output as it comes (before it is held): the echo of what is being typed."""
        if self._keys:
            self._keys_echo = (self._keys_echo + text)[-_TRACK:]
        for typed in self._pending:
            typed.echo = (typed.echo + text)[-_TRACK:]
        if "\n" in text:
            self._tail = text.rsplit("\n", 1)[1]
        else:
            self._tail = (self._tail + text)[-FLUSH_BYTES:]

    def _typed(self, at: int, data: bytes) -> None:
        for i in range(len(data)):
            byte = data[i : i + 1]
            if not self._keys:
                self._keys_at = at
                self._keys_prompt = self._tail
                self._keys_echo = ""
            self._keys += byte
            if byte in (b"\r", b"\n") or len(self._keys) > FLUSH_BYTES:
                self._line_typed(at)

    def _line_typed(self, at: int) -> None:
        text = bytes(self._keys).decode("utf-8", "replace")
        self._pending.append(_Typed(at, text, self._keys_prompt, self._keys_echo))
        self._keys.clear()

    def _settle(self, out: list[bytes], *, final: bool = False) -> None:
        """Write the typed lines whose echo (or its absence) is known: the output after
        them reached a line end, or the channel ended."""
        while self._pending and (final or "\n" in self._pending[0].echo):
            typed = self._pending.pop(0)
            edited = _edit(typed.text)
            secret = bool(edited) and (
                _PROMPT.search(_render(typed.prompt)) is not None
                or edited not in _render(typed.echo)
            )
            if secret:
                self.counts.add("no_echo_input")
                text = f"[NO-ECHO: {len(edited)} characters]" + typed.text[-1:]
            else:
                text = self._mask(typed.text)
            out.append(event_line(typed.at, "i", text))

    def _mask(self, text: str) -> str:
        return self.masker.mask_text(text, self.counts) if self.masker is not None else text


def _edit(typed: str) -> str:
    """What a line discipline makes of the keys typed: backspace and ^U applied, escape
    sequences (arrows) and control keys dropped."""
    out: list[str] = []
    for ch in _CSI.sub("", typed):
        if ch in "\x7f\x08":
            if out:
                out.pop()
        elif ch == "\x15":
            out.clear()
        elif ch >= " ":
            out.append(ch)
    return "".join(out).strip()


def _render(text: str) -> str:
    """The text a terminal shows for ``text``: escape sequences dropped, carriage return
    and backspace moving the cursor, later characters overwriting earlier ones."""
    lines: list[str] = []
    cur: list[str] = []
    col = 0
    for ch in _CSI.sub("", text):
        if ch == "\n":
            lines.append("".join(cur))
            cur, col = [], 0
        elif ch == "\r":
            col = 0
        elif ch == "\b":
            col = max(0, col - 1)
        elif ch >= " " and ch != "\x7f":
            if col < len(cur):
                cur[col] = ch
            else:
                cur.append(ch)
            col += 1
    lines.append("".join(cur))
    return "\n".join(lines)


class StreamTransforms:
    """The :class:`~appliance.ledger.writer.TransformFactory` of recording blobs for one
    target (picklable: a masker and nothing else)."""

    def __init__(self, masker: TargetMasker | None) -> None:
        self.masker = masker

    def new(self) -> tuple[Callable[[bytes], bytes], Callable[[], Mapping[str, Any]]]:
        counts = MaskCounts()
        return StreamTransform(
            self.masker, counts
        ), lambda: {"masking": counts.as_dict()} if counts else {}
