"""The asyncssh glue of one SSH connection: it carries out what the session core decides.

Where this sits: the proxy server accepts a connection to an SSH target, resolves its flow
and runs :meth:`SshRunner.run` (the registry's ``runner``; same listeners, flows,
services, approvals and records as every protocol). asyncssh owns both SSH connections:

- the job's: an SSH server on the accepted socket (:func:`asyncssh.run_server`), presenting
  the appliance's host key with a certificate from this run's CA naming the target;
- the target's: an SSH client on a socket with the appliance's mark
  (:func:`appliance.proxy.shell.connect_marked`), checking the real host key against the
  target's ``known_hosts`` and logging in with the service account's key.

Every asyncssh callback becomes an event for :class:`~.core.SshSession`; the commands it
returns are carried out here (:meth:`SshRunner._carry`), waiting ones (the upstream login,
opening a channel, an approval) as tasks of the connection's task group. Backpressure: a
channel whose peer stops reading (asyncssh's ``pause_writing``) stops the reading of its
twin, and the core's own pauses (a held request) add their reasons; so does the ledger
channel, as in the shell (:meth:`~appliance.proxy.shell.Connection.on_data`): a channel's
data whose recording queued bulk (a transfer's, an output's) while the channel to the ledger
writer is congested stops the reading of that channel's side until the channel has drained,
so a download waits for the writer and memory stays bounded. Nothing here decides,
records or masks.

asyncssh answers the agent and X11 forwarding requests of a session channel itself; they
are routed to the core through the channel's request handlers
(``_process_<request>_request``, asyncssh's dispatch by name), the one place this glue
reaches inside the library.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable
from typing import Any

from appliance.config import Target
from appliance.errors import ApplianceError
from appliance.ledger.errors import LedgerUnavailable
from appliance.proxy.commands import ConnectionInfo, Side
from appliance.proxy.services import SessionServices
from appliance.proxy.shell import ShellServices
from appliance.proxy.ssh import events as e
from appliance.proxy.ssh._asyncssh import asyncssh
from appliance.proxy.ssh.core import SshSession
from appliance.proxy.ssh.keys import SshShared, account_key
from appliance.proxy.waits import (
    LedgerBacklog,
    Unreachable,
    ask_approval,
    await_durable,
    connect_marked,
    why,
)

log = logging.getLogger("appliance.proxy")
_LEVELS = {"info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
_HIGH_WATER = 1 << 20
_DISC_BY_APPLICATION = 11


class _Pair:
    """A channel's two asyncssh channels and why each is not read."""

    def __init__(self) -> None:
        self.job: Any = None
        self.upstream: Any = None
        self.paused: dict[Side, set[str]] = {"job": set(), "upstream": set()}
        self.pending_request: tuple[str, str] | None = None  # set by *_requested, run at start

    def side(self, side: Side) -> Any:
        return self.job if side == "job" else self.upstream


class SshRunner:
    """One job connection to an SSH target; see the module docstring. The proxy server
    drives it as it drives a :class:`~appliance.proxy.shell.Connection`."""

    def __init__(
        self,
        services: SessionServices,
        shared: SshShared,
        target: Target,
        info: ConnectionInfo,
        shell: ShellServices,
    ) -> None:
        self.services = services
        self.shared = shared
        self.target = target
        self.info = info
        self.shell = shell
        self.name = info.session_id
        self.core = SshSession(services, target, info)
        self.done: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.job: asyncssh.SSHServerConnection | None = None
        self.upstream: asyncssh.SSHClientConnection | None = None
        self.pairs: dict[int, _Pair] = {}
        self._next_chan = 0
        self._tg: asyncio.TaskGroup | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._approvals: dict[int, asyncio.Task[None]] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._auth: asyncio.Future[bool] | None = None
        self._refused: dict[int, e.RefuseChannel] = {}
        self._listeners: list[Any] = []

    # -- running -------------------------------------------------------------------------

    async def run(self, sock: Any) -> None:
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                self._call(self.core.start)
                self._spawn(self._serve_job(sock))
                await self.done
                for task in list(self._tasks):
                    task.cancel()
        finally:
            for timer in self._timers.values():
                timer.cancel()
            self._close_all(self.done.result() if self.done.done() else "appliance error")
            with contextlib.suppress(OSError):
                sock.close()

    def drain(self) -> None:
        self.event(e.Drain())

    def abort(self, reason: str) -> None:
        self.event(e.Abort(reason))

    async def _serve_job(self, sock: Any) -> None:
        now = self.services.clock()
        principals = _principals(self.target, self.info)
        cert = self.shared.host_certificate(principals, now=now, key_id=f"appliance {self.name}")
        try:
            await asyncssh.run_server(
                sock,
                config=[],
                server_factory=lambda: _JobServer(self),
                server_host_keys=[(self.shared.host_key, cert)],
                login_timeout=self.core.options.login_timeout,
                allow_pty=True,
                line_editor=False,
                agent_forwarding=False,
                x11_forwarding=False,
                encoding=None,
                keepalive_interval=0,
                server_version="appliance",
            )
        except (TimeoutError, asyncssh.Error, OSError) as exc:
            self.event(e.ConnectionLost("job", _describe(exc), error=_is_error(exc)))

    # -- events ---------------------------------------------------------------------------

    def event(self, event: e.SshEvent) -> None:
        if not self.done.done():
            self._call(self.core.handle, event)

    def data(self, event: e.Data) -> None:
        """Bytes read on a channel: :meth:`event`, then the ledger channel's backpressure
        on what their recording queued (see the module docstring)."""
        backlog = self.shell.backlog
        before = backlog.added if backlog is not None else 0
        self.event(event)
        if backlog is not None and not self.done.done() and backlog.holds_back(before):
            self._wait_for_ledger(event.chan, event.side, backlog)

    def _wait_for_ledger(self, chan: int, side: Side, backlog: LedgerBacklog) -> None:
        pair = self.pairs.get(chan)
        if pair is None or "ledger" in pair.paused[side]:
            return
        self._pause(chan, side, "ledger", True)
        self._spawn(self._ledger_drained(chan, side, backlog))

    async def _ledger_drained(self, chan: int, side: Side, backlog: LedgerBacklog) -> None:
        # (A writer that is gone settles it too: the next append raises, the core ends.)
        await backlog.drained()
        self._pause(chan, side, "ledger", False)

    def _call(self, fn: Callable[..., list[e.SshCommand]], *args: Any) -> list[e.SshCommand]:
        try:
            commands = fn(*args)
        except Exception as exc:  # a bug in the core, or a ledger that cannot record
            if not isinstance(exc, LedgerUnavailable):
                log.error("session %s failed: %s", self.name, exc, exc_info=exc)
            try:
                commands = self.core.crashed(exc)
            except Exception as again:
                log.error("session %s could not end cleanly: %s", self.name, again)
                self._finish("appliance error")
                return []
        self._carry(commands)
        return commands

    def _carry(self, commands: list[e.SshCommand]) -> None:
        for command in commands:
            if self.done.done():
                return
            self._one(command)

    def _one(self, c: e.SshCommand) -> None:
        if isinstance(c, e.Forward):
            pair = self.pairs.get(c.chan)
            chan = pair.side(c.side) if pair is not None else None
            if chan is not None:
                with contextlib.suppress(OSError):  # the channel closed meanwhile
                    if c.stderr and c.side == "job":
                        chan.write_stderr(c.data)
                    else:
                        chan.write(c.data)
        elif isinstance(c, e.PauseChannel):
            self._pause(c.chan, c.side, c.why, c.paused)
        elif isinstance(c, e.ForwardEof):
            chan = self._chan(c.chan, c.side)
            if chan is not None:
                with contextlib.suppress(OSError):
                    chan.write_eof()
        elif isinstance(c, e.ForwardRequest):
            self._forward_request(c)
        elif isinstance(c, e.FinishChannel):
            self._finish_channel(c)
        elif isinstance(c, e.CloseChannel):
            chan = self._chan(c.chan, c.side)
            if chan is not None:
                chan.close()
        elif isinstance(c, e.StartChannel):
            self._spawn(self._start_channel(c))
        elif isinstance(c, e.ConnectUpstream):
            self._spawn(self._connect(c))
        elif isinstance(c, e.AcceptAuth):
            if self._auth is not None and not self._auth.done():
                self._auth.set_result(True)
        elif isinstance(c, e.RefuseAuth):
            # Sent now: an e.End that follows closes the connection at once.
            if self.job is not None:
                with contextlib.suppress(Exception):
                    self.job.send_auth_banner(c.banner)
            if self._auth is not None and not self._auth.done():
                self._auth.set_result(False)
        elif isinstance(c, e.RefuseChannel):
            pair = self.pairs.get(c.chan)
            if pair is not None and pair.job is None:
                self._refused[c.chan] = c  # the opener raises it to asyncssh
            elif pair is not None:
                pair.job.close()
        elif isinstance(c, e.AnswerRemoteForward):
            pass  # answered by _JobServer.server_requested, which awaits it
        elif isinstance(c, e.AskApproval):
            self._approvals[c.key] = self._spawn(self._approval(c))
        elif isinstance(c, e.AwaitDurable):
            self._approvals[c.key] = self._spawn(self._durable(c))
        elif isinstance(c, e.WithdrawApproval):
            task = self._approvals.pop(c.key, None)
            if task is not None:
                task.cancel()
        elif isinstance(c, e.SetTimer):
            old = self._timers.pop(c.name, None)
            if old is not None:
                old.cancel()
            self._timers[c.name] = asyncio.get_running_loop().call_later(
                c.seconds, functools.partial(self.event, e.TimerFired(c.name))
            )
        elif isinstance(c, e.ClearTimer):
            timer = self._timers.pop(c.name, None)
            if timer is not None:
                timer.cancel()
        elif isinstance(c, e.Log):
            log.log(_LEVELS.get(c.level, logging.INFO), "session %s: %s", self.name, c.message)
        elif isinstance(c, e.End):
            self._finish(c.reason)
        else:  # pragma: no cover - the command union is closed
            raise TypeError(f"unknown command {c!r}")

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        assert self._tg is not None
        task = self._tg.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _chan(self, chan: int, side: Side) -> Any:
        pair = self.pairs.get(chan)
        return pair.side(side) if pair is not None else None

    def _pause(self, chan: int, side: Side, why_: str, paused: bool) -> None:
        pair = self.pairs.get(chan)
        if pair is None:
            return
        reasons = pair.paused[side]
        was = bool(reasons)
        if paused:
            reasons.add(why_)
        else:
            reasons.discard(why_)
        target = pair.side(side)
        if target is None or bool(reasons) == was:
            return
        if reasons:
            target.pause_reading()
        else:
            target.resume_reading()

    def _finish(self, reason: str) -> None:
        if self.done.done():
            return
        self._close_all(reason)
        self.done.set_result(reason)

    def _close_all(self, reason: str) -> None:
        if self._auth is not None and not self._auth.done():
            self._auth.set_result(False)
        for listener in self._listeners:
            listener.close()
        if self.upstream is not None:
            self.upstream.close()
        if self.job is not None:
            with contextlib.suppress(Exception):
                self.job.disconnect(_DISC_BY_APPLICATION, f"appliance: {reason}"[:200])

    # -- the target --------------------------------------------------------------------------

    async def _connect(self, c: e.ConnectUpstream) -> None:
        try:
            sock = await connect_marked(self.shell, c.address, c.timeout)
        except Unreachable as exc:
            self.event(e.UpstreamFailed("connect", exc.why))
            return
        try:
            key, cert = account_key(c.key)
        except ApplianceError as exc:
            sock.close()
            self.event(e.UpstreamFailed("auth", str(exc)))
            return
        try:
            conn = await asyncio.wait_for(
                asyncssh.run_client(
                    sock,
                    config=[],
                    host=c.host_name,
                    port=c.address[1],
                    username=c.username,
                    known_hosts=str(c.known_hosts),
                    client_keys=[(key, cert) if cert is not None else key],
                    agent_path=None,
                    agent_forwarding=False,
                    x11_forwarding=False,
                    preferred_auth="publickey",
                    password_auth=False,
                    kbdint_auth=False,
                    host_based_auth=False,
                    gss_auth=False,
                    gss_kex=False,
                    encoding=None,
                    keepalive_interval=0,
                    client_version="appliance",
                ),
                c.timeout,
            )
        except asyncssh.HostKeyNotVerifiable as exc:
            sock.close()
            self.event(e.UpstreamFailed("host_key", str(exc)))
            return
        except asyncssh.PermissionDenied as exc:
            sock.close()
            self.event(e.UpstreamFailed("auth", str(exc) or "permission denied"))
            return
        except (asyncssh.Error, OSError, TimeoutError) as exc:
            sock.close()
            self.event(
                e.UpstreamFailed(
                    "protocol" if isinstance(exc, asyncssh.Error) else "connect", _describe(exc)
                )
            )
            return
        if self.done.done():
            conn.close()
            return
        self.upstream = conn
        host_key = conn.get_server_host_key()
        described = (
            f"{host_key.get_algorithm()} {host_key.get_fingerprint('sha256')}"
            if host_key is not None
            else "unknown"
        )
        self._watch_upstream(conn)
        self.event(
            e.UpstreamConnected(
                described,
                str(conn.get_extra_info("server_version", "")),
                "publickey" + (" (certificate)" if cert is not None else ""),
            )
        )

    def _watch_upstream(self, conn: asyncssh.SSHClientConnection) -> None:
        async def watch() -> None:
            await conn.wait_closed()
            self.event(e.ConnectionLost("upstream", "closed", error=False))

        self._spawn(watch())

    # -- channels ----------------------------------------------------------------------------

    def new_chan(self) -> int:
        self._next_chan += 1
        self.pairs[self._next_chan] = _Pair()
        return self._next_chan

    def opening(self, event: e.ChannelOpened) -> None:
        """The job opens a channel: raise ChannelOpenError (asyncssh refuses it for us) if
        the core refuses it."""
        self.event(event)
        refused = self._refused.pop(event.chan, None)
        if refused is None and self.done.done():
            refused = e.RefuseChannel(event.chan, 2, "appliance: the session has ended")
        if refused is not None:
            self.pairs.pop(event.chan, None)
            raise asyncssh.ChannelOpenError(refused.code, refused.reason)

    def reapply_pauses(self, chan: int) -> None:
        """asyncssh resumes a session channel's reading once its request is answered; the
        core's reasons not to read it hold again."""
        pair = self.pairs.get(chan)
        if pair is not None and pair.paused["job"] and pair.job is not None:
            pair.job.pause_reading()

    async def _start_channel(self, c: e.StartChannel) -> None:
        pair = self.pairs.get(c.chan)
        up = self.upstream
        if pair is None:
            return
        try:
            if c.request == "forwarded-tcpip":
                assert self.job is not None
                job_chan, _ = await self.job.create_connection(
                    lambda: _Tunnel(self, c.chan, "job"), c.host, c.port, *c.origin
                )
                pair.job = job_chan
            elif up is None:
                raise asyncssh.ChannelOpenError(2, "not connected to the target")
            elif c.request == "direct-tcpip":
                tcp_chan, _ = await up.create_connection(
                    lambda: _Tunnel(self, c.chan, "upstream"), c.host, c.port, *c.origin
                )
                pair.upstream = tcp_chan
            else:
                kwargs: dict[str, Any] = {"env": c.env, "encoding": None}
                if c.term is not None:
                    kwargs.update(term_type=c.term, term_size=c.size, term_modes=c.modes)
                else:
                    kwargs["request_pty"] = False
                if c.request == "exec":
                    kwargs["command"] = c.command
                elif c.request == "subsystem":
                    kwargs["subsystem"] = c.subsystem
                session_chan, _ = await up.create_session(lambda: _Upstream(self, c.chan), **kwargs)
                pair.upstream = session_chan
        except (asyncssh.Error, OSError) as exc:
            self.event(e.ChannelStartFailed(c.chan, _describe(exc)))
            return
        sides: tuple[Side, ...] = ("job", "upstream")
        for side in sides:
            target = pair.side(side)
            if pair.paused[side] and target is not None:
                target.pause_reading()
        self.event(e.ChannelStarted(c.chan))

    def _forward_request(self, c: e.ForwardRequest) -> None:
        chan = self._chan(c.chan, "upstream")
        if chan is None:
            return
        with contextlib.suppress(OSError):
            if c.name == "window-change":
                cols, rows, width, height = (int(a) for a in c.args)
                chan.change_terminal_size(cols, rows, width, height)
            elif c.name == "signal":
                chan.send_signal(str(c.args[0]))
            elif c.name == "break":
                chan.send_break(int(c.args[0]))

    def _finish_channel(self, c: e.FinishChannel) -> None:
        pair = self.pairs.get(c.chan)
        if pair is None:
            return
        job = pair.job
        if job is not None:
            # The job's end may be half closed already (EOF sent): exit still goes.
            with contextlib.suppress(OSError):
                if c.message:
                    job.write_stderr(c.message.encode())
            with contextlib.suppress(OSError):
                if c.signal is not None:
                    job.exit_with_signal(c.signal, c.core, c.signal_message)
                elif c.status is not None:
                    job.exit(c.status)
                else:
                    job.close()
        up = pair.upstream
        if up is not None:
            up.close()

    async def _approval(self, c: e.AskApproval) -> None:
        answer = await ask_approval(self.shell.broker, c)
        self._approvals.pop(c.key, None)
        self.event(answer)

    async def _durable(self, c: e.AwaitDurable) -> None:
        answer = await await_durable(self.shell.durable, c)
        self._approvals.pop(c.key, None)
        self.event(answer)

    async def remote_forward(self, host: str, port: int) -> Any:
        """Carry out the core's answer to a remote forward request (``ssh -R``)."""
        commands = self._call(self.core.handle, e.RemoteForwardRequested(host, port))
        answer = next((c for c in commands if isinstance(c, e.AnswerRemoteForward)), None)
        up = self.upstream
        if answer is None or not answer.allowed or up is None:
            return False

        def inbound(orig_host: str, orig_port: int) -> _Tunnel:
            chan = self.new_chan()
            tunnel = _Tunnel(self, chan, "upstream")
            self.event(e.ForwardedConnection(chan, host, port, f"{orig_host}:{orig_port}"))
            return tunnel

        try:
            listener = await up.create_server(inbound, host, port)
        except (asyncssh.Error, OSError):
            return False
        self._listeners.append(listener)
        return listener


class _JobServer(asyncssh.SSHServer):
    """The job's SSH server: every callback goes to the runner."""

    def __init__(self, runner: SshRunner) -> None:
        self.runner = runner

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.runner.job = conn

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is None:
            self.runner.event(e.ConnectionLost("job", "closed", error=False))
        else:
            self.runner.event(e.ConnectionLost("job", _describe(exc), error=_is_error(exc)))

    async def begin_auth(self, username: str) -> bool:
        runner = self.runner
        runner._auth = asyncio.get_running_loop().create_future()
        job = runner.job
        version = str(job.get_extra_info("client_version", "")) if job is not None else ""
        runner.event(e.AuthBegan(username, version))
        accepted = await runner._auth
        # Accepted: logged in, the job needs no secret. Refused: no method will succeed
        # (the banner saying why was sent).
        return not accepted

    def password_auth_supported(self) -> bool:
        return False

    def public_key_auth_supported(self) -> bool:
        return False

    def session_requested(self) -> Any:
        runner = self.runner
        job = runner.job
        assert job is not None
        chan_id = runner.new_chan()
        runner.opening(e.ChannelOpened(chan_id, "session"))
        chan = job.create_server_channel(encoding=None)
        # asyncssh answers agent and X11 requests itself; they go to the core instead.
        for request, kind in _FORWARDING_REQUESTS.items():
            setattr(chan, f"_process_{request}_request", _forwarding(runner, chan_id, kind))
        runner.pairs[chan_id].job = chan
        return chan, _JobSession(runner, chan_id)

    def connection_requested(
        self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
    ) -> Any:
        runner = self.runner
        chan_id = runner.new_chan()
        runner.opening(e.ChannelOpened(chan_id, "direct-tcpip", dest_host, dest_port, orig_host))
        return _Tunnel(runner, chan_id, "job")

    def server_requested(self, listen_host: str, listen_port: int) -> Any:
        return self.runner.remote_forward(listen_host, listen_port)

    def unix_connection_requested(self, dest_path: str) -> Any:
        chan_id = self.runner.new_chan()
        self.runner.opening(e.ChannelOpened(chan_id, "direct-streamlocal", dest_path, 0))
        return False


# asyncssh's handler names (map_handler_name of the request) -> what is forwarded
_FORWARDING_REQUESTS = {"auth_agent_req_at_openssh_dot_com": "agent", "x11_req": "x11"}


def _forwarding(runner: SshRunner, chan: int, kind: str) -> Callable[[Any], bool]:
    def handler(packet: Any) -> bool:
        runner.event(e.ForwardingRequested(chan, kind))
        return False  # never relayed

    return handler


class _JobSession(asyncssh.SSHServerSession):  # type: ignore[type-arg]
    """The job's side of a session channel."""

    def __init__(self, runner: SshRunner, chan: int) -> None:
        self.runner = runner
        self.chan = chan
        self.channel: Any = None

    def connection_made(self, chan: Any) -> None:
        self.channel = chan
        chan.set_write_buffer_limits(high=_HIGH_WATER)

    def pty_requested(self, term_type: str, term_size: Any, term_modes: Any) -> bool:
        cols, rows = term_size[0], term_size[1]
        self.runner.event(e.PtyRequested(self.chan, term_type, cols, rows, dict(term_modes)))
        return True

    def _request(self, request: str, value: str) -> bool:
        pair = self.runner.pairs.get(self.chan)
        if pair is not None:
            pair.pending_request = (request, value)
        return True  # decided once asyncssh has answered the request (session_started)

    def shell_requested(self) -> bool:
        return self._request("shell", "")

    def exec_requested(self, command: str) -> bool:
        return self._request("exec", command)

    def subsystem_requested(self, subsystem: str) -> bool:
        return self._request("subsystem", subsystem)

    def session_started(self) -> None:
        runner = self.runner
        pair = runner.pairs.get(self.chan)
        if pair is None or pair.pending_request is None:
            return
        request, value = pair.pending_request
        pair.pending_request = None
        # asyncssh resumes reading right after this returns: the core's pauses are
        # applied again on the next turn of the loop (data delivered meanwhile waits in
        # the core).
        asyncio.get_running_loop().call_soon(runner.reapply_pauses, self.chan)
        for name, env_value in self.channel.get_environment().items():
            runner.event(e.EnvRequested(self.chan, str(name), str(env_value)))
        if request == "exec":
            runner.event(e.SessionRequested(self.chan, "exec", command=value))
        elif request == "subsystem":
            runner.event(e.SessionRequested(self.chan, "subsystem", subsystem=value))
        else:
            runner.event(e.SessionRequested(self.chan, "shell"))

    def data_received(self, data: bytes, datatype: Any) -> None:
        self.runner.data(e.Data(self.chan, "job", data))

    def eof_received(self) -> bool:
        self.runner.event(e.ChannelEof(self.chan, "job"))
        return True

    def terminal_size_changed(self, width: int, height: int, pixwidth: int, pixheight: int) -> None:
        self.runner.event(e.WindowChanged(self.chan, width, height, pixwidth, pixheight))

    def signal_received(self, signal: str) -> None:
        self.runner.event(e.SignalSent(self.chan, signal))

    def break_received(self, msec: int) -> bool:
        self.runner.event(e.BreakSent(self.chan, msec))
        return True

    def pause_writing(self) -> None:
        self.runner._pause(self.chan, "upstream", "backpressure", True)

    def resume_writing(self) -> None:
        self.runner._pause(self.chan, "upstream", "backpressure", False)

    def connection_lost(self, exc: Exception | None) -> None:
        self.runner.event(e.ChannelClosed(self.chan, "job"))


class _Upstream(asyncssh.SSHClientSession):  # type: ignore[type-arg]
    """The target's side of a session channel."""

    def __init__(self, runner: SshRunner, chan: int) -> None:
        self.runner = runner
        self.chan = chan

    def connection_made(self, chan: Any) -> None:
        chan.set_write_buffer_limits(high=_HIGH_WATER)

    def data_received(self, data: bytes, datatype: Any) -> None:
        stderr = datatype == asyncssh.EXTENDED_DATA_STDERR
        self.runner.data(e.Data(self.chan, "upstream", data, stderr))

    def eof_received(self) -> bool:
        self.runner.event(e.ChannelEof(self.chan, "upstream"))
        return True

    def exit_status_received(self, status: int) -> None:
        self.runner.event(e.Exited(self.chan, status=status))

    def exit_signal_received(self, signal: str, core_dumped: bool, msg: str, lang: str) -> None:
        self.runner.event(e.Exited(self.chan, signal=signal, core=core_dumped, message=msg))

    def pause_writing(self) -> None:
        self.runner._pause(self.chan, "job", "backpressure", True)

    def resume_writing(self) -> None:
        self.runner._pause(self.chan, "job", "backpressure", False)

    def connection_lost(self, exc: Exception | None) -> None:
        self.runner.event(e.ChannelClosed(self.chan, "upstream"))


class _Tunnel(asyncssh.SSHTCPSession):  # type: ignore[type-arg]
    """One side of a forwarded TCP connection (``side``: where its channel is)."""

    def __init__(self, runner: SshRunner, chan: int, side: Side) -> None:
        self.runner = runner
        self.chan = chan
        self.side: Side = side

    def connection_made(self, chan: Any) -> None:
        pair = self.runner.pairs.get(self.chan)
        if pair is not None:
            if self.side == "job":
                pair.job = chan
            else:
                pair.upstream = chan
            if pair.paused[self.side]:
                chan.pause_reading()
        chan.set_write_buffer_limits(high=_HIGH_WATER)

    def data_received(self, data: bytes, datatype: Any) -> None:
        self.runner.data(e.Data(self.chan, self.side, data))

    def eof_received(self) -> bool:
        self.runner.event(e.ChannelEof(self.chan, self.side))
        return True

    def pause_writing(self) -> None:
        other: Side = "upstream" if self.side == "job" else "job"
        self.runner._pause(self.chan, other, "backpressure", True)

    def resume_writing(self) -> None:
        other: Side = "upstream" if self.side == "job" else "job"
        self.runner._pause(self.chan, other, "backpressure", False)

    def connection_lost(self, exc: Exception | None) -> None:
        self.runner.event(e.ChannelClosed(self.chan, self.side))


def _principals(target: Target, info: ConnectionInfo) -> list[str]:
    """The names the job may have connected by: the address it connected to, the target's
    addresses and host names, and an explicit listener's address."""
    names = {info.upstream[0]}
    for address in target.addresses:
        if address.kind in ("ip", "host"):
            names.add(address.value)
    if target.listen is not None:
        names.add(target.listen[0])
    names.add(info.listener[0])
    return sorted(names)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncssh.DisconnectError):
        return exc.reason or type(exc).__name__
    if isinstance(exc, OSError) and exc.errno:
        return why(exc)
    return str(exc) or type(exc).__name__


def _is_error(exc: BaseException) -> bool:
    """The connection ended by a fault (a protocol violation, a timeout), not a goodbye."""
    if isinstance(exc, asyncssh.DisconnectError):
        return exc.code != _DISC_BY_APPLICATION and not (
            isinstance(exc, asyncssh.ConnectionLost) and "timeout" not in str(exc).lower()
        )
    return not isinstance(exc, ConnectionResetError | BrokenPipeError)
