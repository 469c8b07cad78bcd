"""A second process for the ledger writer's bulk masking, on a core that would sit idle.

Why: masking an export's rows for the ledger is Python work per value (a ``customers`` row
costs the writer ~14 µs of CPU; PostgreSQL sends it in ~1 µs), and one process runs Python
on one core at a time, under the GIL. So a protocol's blob transform
(:class:`~appliance.proxy.pg.rows.RowsTransform`) cuts a long run of rows into pieces
of about :data:`PIECE` bytes, where rows start, and calls :func:`share`: this thread masks
pieces from the front while a helper process masks pieces from the back, with a copy of
the same masker, and the results are joined in order -- the same bytes and counts as
masking the whole here (a piece is masked with no state but what the function is given,
such as the run's header).

The helper only takes time nobody else wants, and this thread never waits for it:

- it runs at the lowest priority (nice 19): on a machine whose cores are busy (the proxy
  masking rows for the job, other sessions) it gets almost nothing, and the writer and
  the proxy run as if it did not exist;
- it is given one piece at a time, and only while this thread has at least one more piece
  to do; when this thread reaches the piece the helper still has, it does that piece
  itself, and the helper's late answer is dropped when it comes (the helper gets no other
  piece until then).

It is started on first use, only where this process may run on more than one core (and
unless ``APPLIANCE_TRANSFORM_HELPER=0``), and is used once it has said it is ready. If it
fails (dies, or answers with an error), it is not used again in this process, and that is
said once on stderr: its piece is done here, nothing is lost or masked differently.

Wire, both ways: a 4-byte big-endian length, then a pickle (private pipes between this
process and the child it started, each 1 MiB so that neither side blocks on a piece). To
the helper: ``("masker", token, masker)`` once per masker, then ``("call", seq, token,
"module:function", args)``; from it: ``("ready",)`` once, then ``(seq, True, result)`` or
``(seq, False, "error")`` per call. It exits at the end of its input.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

__all__ = ["ENV", "PIECE", "SHARE_FROM", "Helper", "helper", "share", "stop"]

# A run at least this long is shared with the helper, in pieces of about PIECE bytes.
SHARE_FROM = 64 * 1024
PIECE = 32 * 1024
DEPTH = 2  # pieces the helper has at once (the next waits in its pipe: it never idles)
# Tests only: wait for the helper's pieces instead of doing them here (their use is then
# certain).
WAIT = False
ENV = "APPLIANCE_TRANSFORM_HELPER"
_LEN = struct.Struct("!I")
_PIPE = 1 << 20
_MAX_MASKERS = 256  # maskers kept by the helper (one per target; then it starts afresh)

P = TypeVar("P")
R = TypeVar("R")


class HelperFailed(Exception):
    """The helper cannot be used (its piece is done here)."""


class Helper:
    """One helper process and the pipes to it. One caller at a time (:attr:`lock`)."""

    def __init__(self) -> None:
        env = dict(os.environ)
        env[ENV] = "0"  # the helper never starts one of its own
        self._proc: subprocess.Popen[bytes] | None = subprocess.Popen(
            # -P: as the writer process (ledger.remote), no other checkout shadows this one
            [sys.executable, "-P", "-c", f"from {__name__} import main; main()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            bufsize=0,
        )
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._out = self._proc.stdin.fileno()
        self.answers_fd = self._proc.stdout.fileno()
        for fd in (self._out, self.answers_fd):
            with contextlib.suppress(OSError):  # a smaller pipe only means more wake-ups
                fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, _PIPE)
        os.set_blocking(self.answers_fd, False)
        self._buf = bytearray()  # the start of an answer not complete yet
        self.ready = False  # it said so
        self._tokens: dict[int, int] = {}  # id(masker) -> token
        self._kept: list[object] = []  # the maskers sent, alive while their ids are tokens
        self._seq = 0
        self.waiting = 0  # calls sent and not answered yet
        self.lock = threading.Lock()
        self.failed: str | None = None
        self.answered = 0  # answers used (for tests and benchmarks)

    def idle(self) -> bool:
        """Whether the helper has started and has no call (reads what came, without
        waiting)."""
        if self.failed is None:
            with contextlib.suppress(HelperFailed):
                self.answers()
        return self.failed is None and self.ready and not self.waiting

    def send(self, fn: Callable[..., Any], masker: object, args: tuple[Any, ...]) -> int:
        """Ask for ``fn(masker, *args)``; its answer comes from :meth:`answers` with the
        number returned."""
        try:
            token = self._tokens.get(id(masker))
            if token is None:
                if len(self._kept) >= _MAX_MASKERS:
                    self._tokens.clear()
                    self._kept.clear()
                    _write(self._out, ("clear",))
                token = len(self._kept)
                _write(self._out, ("masker", token, masker))
                self._tokens[id(masker)] = token
                self._kept.append(masker)
            self._seq += 1
            _write(self._out, ("call", self._seq, token, f"{fn.__module__}:{fn.__name__}", args))
        except OSError as exc:
            raise self.fail(f"{type(exc).__name__}: {exc}") from exc
        self.waiting += 1
        return self._seq

    def answers(self) -> list[tuple[Any, ...]]:
        """The answers that have come, ``(seq, ok, result)`` (without waiting)."""
        try:
            while True:
                got = os.read(self.answers_fd, _PIPE)
                if not got:
                    raise self.fail("it exited")
                self._buf += got
        except BlockingIOError:
            pass
        except OSError as exc:
            raise self.fail(f"{type(exc).__name__}: {exc}") from exc
        out = []
        buf = self._buf
        while len(buf) >= 4:
            (n,) = _LEN.unpack_from(buf)
            if len(buf) < 4 + n:
                break
            message = pickle.loads(buf[4 : 4 + n])
            del buf[: 4 + n]
            if message == ("ready",):
                self.ready = True
                continue
            self.waiting -= 1
            out.append(message)
        return out

    def fail(self, why: str) -> HelperFailed:
        """Stop the helper for good (said once on stderr); the exception to raise."""
        if self.failed is None:
            self.failed = why
            print(
                f"appliance: the ledger writer's transform helper failed ({why});"
                " masking goes on in one process",
                file=sys.stderr,
                flush=True,
            )
        self.close()
        return HelperFailed(why)

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                pipe.close()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if self.failed is None:
            self.failed = "stopped"


_helper: Helper | None = None
_lock = threading.Lock()


def helper() -> Helper | None:
    """This process's helper, started on first use; None where it is not to be used (one
    core, ``APPLIANCE_TRANSFORM_HELPER=0``) or has failed."""
    global _helper
    if _helper is None:
        if os.environ.get(ENV, "1") == "0" or len(os.sched_getaffinity(0)) < 2:
            return None
        with _lock:
            if _helper is None:
                _helper = Helper()
    return _helper if _helper.failed is None else None


def share(
    pieces: Sequence[P], here: Callable[[P], R], fn: Callable[..., R], masker: object, *args: Any
) -> list[R]:
    """``[here(p) for p in pieces]``, except that some pieces may be ``fn(masker, *args, p)``
    done by the helper (see the module's docstring): both must give the same result."""
    h = helper() if len(pieces) > 1 else None
    if h is None or not h.lock.acquire(blocking=False):
        return [here(p) for p in pieces]
    try:
        return _share(h, pieces, here, fn, masker, args)
    finally:
        h.lock.release()


def _share(
    h: Helper,
    pieces: Sequence[P],
    here: Callable[[P], R],
    fn: Callable[..., R],
    masker: object,
    args: tuple[Any, ...],
) -> list[R]:
    done: dict[int, R] = {}
    lo, top = 0, len(pieces)  # this thread does pieces[lo:top]; the helper has those after
    asked: dict[int, int] = {}  # call number -> piece, of the calls the helper has

    def collect() -> None:
        try:
            answers = h.answers()
        except HelperFailed:
            answers = []
        for seq, ok, result in answers:
            if ok is not True:
                h.fail(str(result))
                break
            i = asked.pop(seq, None)
            if i is not None:  # else a late answer to an earlier call: dropped
                done[i] = result
                h.answered += 1
        if h.failed is not None:
            asked.clear()  # its pieces are done below

    def give() -> None:
        # Only while the helper has no call of an earlier run, and this thread keeps a
        # piece to do meanwhile.
        nonlocal top
        while h.ready and h.waiting == len(asked) and len(asked) < DEPTH and top - lo >= 2:
            try:
                seq = h.send(fn, masker, (*args, pieces[top - 1]))
            except HelperFailed:
                return
            top -= 1
            asked[seq] = top

    collect()
    give()
    while lo < top:
        done[lo] = here(pieces[lo])
        lo += 1
        if h.waiting:
            collect()
        give()
    while WAIT and asked:  # tests: the helper's pieces are always its own
        select.select([h.answers_fd], [], [], 1.0)
        collect()
    # The helper's pieces it has not answered yet (or will not): done here, and their late
    # answers dropped when they come.
    return [done[i] if i in done else here(pieces[i]) for i in range(len(pieces))]


def stop() -> None:
    """Stop this process's helper, if it started one (the next use starts another)."""
    global _helper
    with _lock:
        h, _helper = _helper, None
    if h is not None:
        with h.lock:
            h.close()


def _forget() -> None:
    # A forked child shares its parent's pipes: it must never use them (nor close them).
    global _helper, _lock
    if _helper is not None:
        _orphans.append(_helper)
    _helper = None
    _lock = threading.Lock()


_orphans: list[Helper] = []
os.register_at_fork(after_in_child=_forget)


def _write(fd: int, message: object) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    view = memoryview(_LEN.pack(len(data)) + data)
    while view:
        view = view[os.write(fd, view) :]


def _read_exactly(fd: int, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        got = os.read(fd, n - len(buf))
        if not got:
            raise EOFError
        buf += got
    return bytes(buf)


def main() -> None:
    """The helper process: calls until the end of its input."""
    # Like the writer process: the daemon's signals are for the daemon; the helper ends
    # when its writer closes the pipe. And it takes only time nobody else wants.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.nice(19)
    # The answers go to the pipe on fd 1, and fd 1 becomes stderr: a stray print cannot
    # break the stream.
    answers = os.dup(1)
    os.dup2(2, 1)
    try:
        _serve(answers)
    except (EOFError, BrokenPipeError):  # the writer is gone (or stopped this helper)
        return


def _serve(answers: int) -> None:
    maskers: dict[int, object] = {}
    functions: dict[str, Callable[..., Any]] = {}
    _write(answers, ("ready",))
    while True:
        (n,) = _LEN.unpack(_read_exactly(0, 4))
        message = pickle.loads(_read_exactly(0, n))
        if message[0] == "masker":
            maskers[message[1]] = message[2]
            continue
        if message[0] == "clear":
            maskers.clear()
            continue
        _, seq, token, name, args = message
        try:
            fn = functions.get(name)
            if fn is None:
                module, _, attr = name.partition(":")
                fn = functions[name] = getattr(importlib.import_module(module), attr)
            reply: tuple[int, bool, Any] = (seq, True, fn(maskers[token], *args))
        except Exception as exc:  # said to the caller, who does the work itself
            reply = (seq, False, f"{type(exc).__name__}: {exc}")
        _write(answers, reply)
