"""The legacy SCP protocol (``scp -O``; rcp's): the stream of files a source sends.

Where this sits: ``scp -t PATH`` (the job uploads) and ``scp -f PATH`` (the job downloads)
run over an exec channel; the side that sends files writes, for each file, an optional
``T<mtime> 0 <atime> 0`` line, a ``C<mode> <size> <name>`` line, ``size`` bytes of content
and a NUL; ``D<mode> 0 <name>`` and ``E`` enter and leave directories; ``\\x01``/``\\x02``
lines are warnings and errors. :class:`ScpSource` reads that stream (one direction of the
channel; the other carries one-byte acknowledgements) into :class:`ScpEvent` objects for
the transfer records (:mod:`appliance.proxy.ssh.transfers`). It never changes a byte: the
stream is forwarded as it came.

A header line longer than :data:`MAX_LINE` or a line that is none of the above raises
:class:`ScpProtocolError`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["MAX_LINE", "ScpEvent", "ScpProtocolError", "ScpSource"]

MAX_LINE = 4096
_FILE = re.compile(rb"C([0-7]{4}) ([0-9]{1,20}) (.+)")
_DIR = re.compile(rb"D([0-7]{4}) ([0-9]{1,20}) (.+)")
_TIMES = re.compile(rb"T[0-9]+ [0-9]+ [0-9]+ [0-9]+")


class ScpProtocolError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class ScpEvent:
    """``kind``: ``file`` (a file starts: ``name``, ``dirs`` it is in, ``size``), ``data``
    (content), ``end`` (the file is complete), ``dir``/``leave``, ``message`` (a warning
    or error line)."""

    kind: str
    name: str = ""
    dirs: tuple[str, ...] = ()
    size: int = 0
    data: bytes = b""


class ScpSource:
    """The source side of one scp stream; see the module docstring."""

    def __init__(self) -> None:
        self._line = bytearray()
        self._remaining = 0  # content bytes of the current file still to come
        self._in_file = False
        self._dirs: list[str] = []
        self._trailer = False  # the NUL after a file's content

    def feed(self, data: bytes) -> list[ScpEvent]:
        out: list[ScpEvent] = []
        pos, n = 0, len(data)
        while pos < n:
            if self._remaining:
                take = min(self._remaining, n - pos)
                out.append(ScpEvent("data", data=data[pos : pos + take]))
                self._remaining -= take
                pos += take
                if not self._remaining:
                    self._trailer = True
                continue
            if self._trailer:
                self._trailer = False
                self._in_file = False
                out.append(ScpEvent("end"))
                pos += 1  # NUL, or an error byte whose line follows
                if data[pos - 1] != 0:
                    self._line += data[pos - 1 : pos]
                continue
            end = data.find(b"\n", pos)
            if end == -1:
                self._line += data[pos:]
                if len(self._line) > MAX_LINE:
                    raise ScpProtocolError(f"scp header line longer than {MAX_LINE} bytes")
                break
            self._line += data[pos:end]
            pos = end + 1
            line = bytes(self._line)
            self._line.clear()
            if len(line) > MAX_LINE:
                raise ScpProtocolError(f"scp header line longer than {MAX_LINE} bytes")
            out.extend(self._header(line))
        return out

    def _header(self, line: bytes) -> list[ScpEvent]:
        # Acknowledgements (NUL) may precede a line when both directions share a reader.
        line = line.lstrip(b"\0")
        if not line:
            return []
        kind = line[:1]
        if kind in (b"\x01", b"\x02"):
            return [ScpEvent("message", name=line[1:].decode("utf-8", "replace"))]
        if kind == b"T":
            if not _TIMES.fullmatch(line):
                raise ScpProtocolError("malformed scp times line")
            return []
        if kind == b"E" and line == b"E":
            if self._dirs:
                self._dirs.pop()
            return [ScpEvent("leave")]
        m = _FILE.fullmatch(line) or _DIR.fullmatch(line)
        if m is None:
            raise ScpProtocolError(f"not an scp header line: {line[:40]!r}")
        name = m.group(3).decode("utf-8", "replace")
        if "/" in name or name in (".", ".."):
            raise ScpProtocolError(f"scp file name {name!r} is not a plain name")
        if kind == b"D":
            self._dirs.append(name)
            return [ScpEvent("dir", name=name, dirs=tuple(self._dirs[:-1]))]
        size = int(m.group(2))
        self._remaining = size
        self._in_file = True
        events = [ScpEvent("file", name=name, dirs=tuple(self._dirs), size=size)]
        if size == 0:
            self._trailer = True
        return events
