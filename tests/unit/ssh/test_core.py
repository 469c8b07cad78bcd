"""Transcript tests of the sans-IO SSH session (:mod:`appliance.proxy.ssh.core`): the events
the asyncssh glue would hand it, the commands it answers, the ledger entries it leaves.
No sockets, no event loop, no asyncssh."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from appliance.approvals.broker import Outcome, Resolution
from appliance.approvals.request import ApprovalRequest
from appliance.errors import ApplianceError
from appliance.ledger.errors import LedgerUnavailable
from appliance.protocols.ssh import sftp as fx
from appliance.proxy.ssh.core import DENIED_STATUS, FAILED_STATUS, SshSession, State
from appliance.proxy.ssh.events import (
    Abort,
    AcceptAuth,
    ApprovalAnswered,
    AskApproval,
    AuthBegan,
    AwaitDurable,
    ChannelClosed,
    ChannelEof,
    ChannelOpened,
    ChannelStarted,
    ChannelStartFailed,
    ConnectionLost,
    ConnectUpstream,
    Data,
    Drain,
    Durable,
    End,
    EnvRequested,
    Exited,
    FinishChannel,
    Forward,
    ForwardEof,
    ForwardingRequested,
    ForwardRequest,
    PauseChannel,
    PtyRequested,
    RefuseAuth,
    RefuseChannel,
    SessionRequested,
    SignalSent,
    StartChannel,
    UpstreamConnected,
    UpstreamFailed,
    WindowChanged,
    WithdrawApproval,
)
from tests.unit.policy.helpers import rules

from .helpers import INFO, SECRET, FakeLedger, packet, s, services, target, u32

POLICY = """
- name: no-rm-rf
  match: {ssh: {programs: [rm], arguments: ["-rf *"]}}
  action: deny
  message: no recursive deletes
- name: releases
  match: {ssh: {programs: [release.sh]}}
  action: review
  approvers: [alice]
- name: metrics
  match: {classes: [ssh_port_forward], ssh: {destinations: ["127.0.0.1:9100"]}}
  action: allow
- name: rest
  action: allow
"""


class Drive:
    def __init__(self, *, policy: str | None = POLICY, secret: Any = None, **options: Any) -> None:
        self.ledger = FakeLedger()
        p = rules(policy) if policy is not None else None
        self.core = SshSession(
            services(self.ledger, policy=p, secret=secret), target(**options), INFO
        )
        assert self.core.start() == []

    def __call__(self, *events: Any) -> list[Any]:
        out: list[Any] = []
        for event in events:
            out.extend(self.core.handle(event))
        return out

    def login(self, user: str = "deploy") -> None:
        (connect,) = self(AuthBegan(user, "SSH-2.0-OpenSSH_9.2"))
        assert isinstance(connect, ConnectUpstream)
        assert self(
            UpstreamConnected("ssh-ed25519 SHA256:abc", "SSH-2.0-OpenSSH_9.2", "publickey")
        ) == [AcceptAuth()]

    def run(self, chan: int, command: str, *, pty: bool = False) -> list[Any]:
        assert self(ChannelOpened(chan, "session")) == []
        if pty:
            self(PtyRequested(chan, "xterm", 80, 24))
        return self(SessionRequested(chan, "exec", command=command))


def test_the_login_connects_upstream_as_the_account_and_lets_the_job_in() -> None:
    d = Drive()
    (connect,) = d(AuthBegan("ops", "SSH-2.0-OpenSSH_9.2"))
    assert connect == ConnectUpstream(
        ("10.0.0.7", 22), "web1.example", "root", SECRET, connect.known_hosts, 5.0
    )
    assert str(connect.known_hosts) == "/etc/appliance/web.known_hosts"
    assert SECRET not in repr(connect)  # the key never shows in a log line
    assert d(UpstreamConnected("ssh-ed25519 SHA256:abc", "SSH-2.0-OpenSSH_9.2", "publickey")) == [
        AcceptAuth()
    ]
    assert d.core.state is State.OPEN
    start, ready = d.ledger.of("session.start")[0], d.ledger.of("session.ready")[0]
    assert start["protocol"] == "ssh" and start["server"] == "10.0.0.7:22"
    assert ready == {
        "user": "ops",
        "upstream_user": "root",
        "host_key": "ssh-ed25519 SHA256:abc",
        "server_version": "SSH-2.0-OpenSSH_9.2",
        "client_version": "SSH-2.0-OpenSSH_9.2",
        "auth_method": "publickey",
    }
    assert d.ledger.entries[1][0] == "session.ready"


def test_an_unknown_user_gets_the_first_account() -> None:
    d = Drive()
    (connect,) = d(AuthBegan("whoever"))
    assert connect.username == "deploy"


def test_an_unreadable_secret_refuses_the_login() -> None:
    def fail(ref: Any) -> str:
        raise ApplianceError("no such credential")

    d = Drive(secret=fail)
    out = d(AuthBegan("deploy"))
    assert isinstance(out[0], RefuseAuth) and "no usable key" in out[0].banner
    assert isinstance(out[-1], End)
    assert d.ledger.types()[-2:] == ["ssh.upstream_refused", "session.end"]


@pytest.mark.parametrize(
    ("stage", "words"),
    [
        ("host_key", "host key its known_hosts does not hold"),
        ("auth", "refused the service account"),
        ("connect", "cannot reach"),
    ],
)
def test_an_upstream_failure_refuses_the_login_and_says_why(stage: str, words: str) -> None:
    d = Drive()
    d(AuthBegan("deploy"))
    out = d(UpstreamFailed(stage, "details"))
    assert isinstance(out[0], RefuseAuth) and words in out[0].banner
    assert d.ledger.of("ssh.upstream_refused")[0]["stage"] == stage
    assert d.ledger.of("session.end")[0]["reason"].startswith(f"upstream {stage} failed")


def test_an_allowed_exec_runs_and_is_recorded_with_its_masked_output() -> None:
    d = Drive()
    d.login()
    d(
        ChannelOpened(1, "session"),
        EnvRequested(1, "LANG", "C.UTF-8"),
        EnvRequested(1, "LD_PRELOAD", "/x.so"),
    )
    out = d(SessionRequested(1, "exec", command="cat cards.txt"))
    assert out == [
        PauseChannel(1, "job", "starting", True),
        StartChannel(1, "exec", command="cat cards.txt", env={"LANG": "C.UTF-8"}),
    ]
    statement = d.ledger.of("statement")[0]
    assert statement["request"] == "exec" and statement["env"] == ["LANG"]
    assert statement["env_dropped"] == ["LD_PRELOAD"]
    assert statement["decision"]["decision"] == "allow"
    # The job's early bytes wait for the start, then go through in order.
    assert d(Data(1, "job", b"early"), ChannelEof(1, "job")) == []
    assert d(ChannelStarted(1)) == [
        Forward(1, "upstream", b"early"),
        ForwardEof(1, "upstream"),
        PauseChannel(1, "job", "starting", False),
    ]
    assert d(Data(1, "upstream", b"card 4111 1111 1111 1111\n")) == [
        Forward(1, "job", b"card 4111 1111 1111 1111\n")
    ]
    assert d(Data(1, "upstream", b"oops\n", stderr=True)) == [Forward(1, "job", b"oops\n", True)]
    assert d(Exited(1, status=3)) == []
    assert d(ChannelClosed(1, "upstream")) == [FinishChannel(1, status=3)]
    assert d(ChannelClosed(1, "job")) == []
    response = d.ledger.of("response")[0]
    assert (
        response["exit_status"] == 3 and response["bytes_in"] == 5 and response["bytes_out"] == 30
    )
    blob = d.ledger.blobs("response")[0]["output"].decode()
    assert "[REDACTED:CARD]" in blob and "4111" not in blob
    events = [json.loads(line) for line in blob.splitlines()[1:]]
    # Each stream is written by whole lines: the input had no line end until the channel ended.
    assert [e[1] for e in events] == ["o", "e", "i"]


def test_a_denied_exec_is_told_the_rule_and_exits_126() -> None:
    d = Drive()
    d.login()
    out = d.run(1, "rm -rf /srv")
    (finish,) = out
    assert isinstance(finish, FinishChannel) and finish.status == DENIED_STATUS
    assert "denied by policy rule 'no-rm-rf': no recursive deletes" in finish.message
    decision = d.ledger.of("policy.decision")[0]
    assert decision["decision_id"] in finish.message
    assert d.ledger.of("response")[0] == {
        "n": 1,
        "protocol": "ssh",
        "channel": 1,
        "refused": True,
        "exit_status": 126,
        "decision": "deny",
    }
    # Data the job still sends is dropped; closing records nothing more.
    assert d(Data(1, "job", b"x"), ChannelClosed(1, "job")) == []
    assert len(d.ledger.of("response")) == 1


def _outcome(verdict: Resolution) -> Outcome:
    now = datetime(2024, 1, 1, tzinfo=UTC)
    request = ApprovalRequest(
        "r1",
        "s1",
        "x",
        "web",
        "deploy",
        "releases",
        ("alice",),
        "./release.sh",
        "00",
        now,
        now + timedelta(minutes=5),
    )
    return Outcome(verdict, request, approver="alice", reason="ticket 7")


def test_a_held_exec_waits_for_a_signed_approval() -> None:
    d = Drive()
    d.login()
    out = d.run(1, "./release.sh v2")
    assert out[0] == PauseChannel(1, "job", "hold", True)
    ask = out[1]
    assert isinstance(ask, AskApproval)
    assert ask.fields["rule"] == "releases" and ask.fields["statement"] == "./release.sh v2"
    import hashlib

    assert ask.fields["statement_sha256"] == hashlib.sha256(b"./release.sh v2").hexdigest()
    out = d(ApprovalAnswered(ask.key, _outcome(Resolution.GRANTED), "r1"))
    assert out[0] == PauseChannel(1, "job", "hold", False)
    assert isinstance(out[-1], StartChannel) and out[-1].command == "./release.sh v2"
    # Denied instead:
    d2 = Drive()
    d2.login()
    ask2 = d2.run(1, "./release.sh v3")[1]
    out = d2(ApprovalAnswered(ask2.key, _outcome(Resolution.DENIED), "r1"))
    finish = out[-1]
    assert isinstance(finish, FinishChannel) and finish.status == DENIED_STATUS
    assert "denied by alice: ticket 7" in finish.message
    assert d2.ledger.of("response")[0]["approval"]["outcome"] == "denied"


def test_a_held_channel_closed_by_the_job_withdraws_its_request() -> None:
    d = Drive()
    d.login()
    ask = d.run(1, "./release.sh")[1]
    assert d(ChannelClosed(1, "job")) == [WithdrawApproval(ask.key)]
    assert d(ApprovalAnswered(ask.key, _outcome(Resolution.GRANTED), "r1")) == []


def test_a_start_that_fails_tells_the_job() -> None:
    d = Drive()
    d.login()
    d.run(1, "ls", pty=True)
    (finish,) = d(ChannelStartFailed(1, "session request failed"))
    assert finish.status == FAILED_STATUS and finish.message.endswith("\r\n")
    assert d.ledger.of("response")[0]["error"] == "session request failed"


def test_window_changes_and_signals_go_on_and_are_recorded() -> None:
    d = Drive()
    d.login()
    d(
        ChannelOpened(1, "session"),
        PtyRequested(1, "xterm", 80, 24),
        SessionRequested(1, "shell"),
        ChannelStarted(1),
    )
    assert d(WindowChanged(1, 100, 30)) == [ForwardRequest(1, "window-change", (100, 30, 0, 0))]
    assert d(SignalSent(1, "INT")) == [ForwardRequest(1, "signal", ("INT",))]
    assert d.ledger.of("ssh.signal")[0]["signal"] == "INT"
    d(
        Exited(1, signal="KILL", core=False, message="killed"),
        ChannelClosed(1, "upstream"),
        ChannelClosed(1, "job"),
    )
    blob = d.ledger.blobs("response")[0]["output"].decode()
    assert '"r","100x30"' in blob.replace(" ", "")
    assert d.ledger.of("response")[0]["exit_signal"] == "KILL"


def test_agent_and_x11_forwarding_are_refused_and_recorded() -> None:
    d = Drive()
    d.login()
    d(ChannelOpened(1, "session"))
    assert d(ForwardingRequested(1, "agent"), ForwardingRequested(1, "x11")) == []
    assert [e["what"] for e in d.ledger.of("ssh.refused")] == ["agent_forward", "x11_forward"]
    statements = d.ledger.of("statement")
    assert [s["decision"]["decision"] for s in statements] == ["deny", "deny"]


def test_local_forwards_only_where_a_rule_names_them() -> None:
    d = Drive()
    d.login()
    (refused,) = d(ChannelOpened(1, "direct-tcpip", "10.0.0.9", 5432, "127.0.0.1"))
    assert isinstance(refused, RefuseChannel) and "ssh_port_forward" in refused.reason
    out = d(ChannelOpened(2, "direct-tcpip", "127.0.0.1", 9100, "127.0.0.1"))
    assert out[-1] == StartChannel(
        2, "direct-tcpip", host="127.0.0.1", port=9100, origin=("127.0.0.1", 0)
    )
    # A refused forward takes no channel slot.
    assert [c.state for c in d.core.channels.values()] == ["finished", "starting"]


def test_channel_limits_and_a_flood() -> None:
    d = Drive(max_channels=2, max_refused_channels=3)
    d.login()
    assert d(ChannelOpened(1, "session"), ChannelOpened(2, "session")) == []
    for chan in (3, 4, 5):
        (refused,) = d(ChannelOpened(chan, "session"))
        assert isinstance(refused, RefuseChannel)
    out = d(ChannelOpened(6, "session"))
    assert isinstance(out[0], RefuseChannel) and isinstance(out[-1], End)
    assert d.ledger.of("session.end")[0]["reason"] == "channel-open flood"
    assert len(d.ledger.of("ssh.refused")) == 1  # the first refusal, not one per open
    assert "flood" in d.ledger.of("protocol.error")[0]["message"]


def test_a_connection_that_ends_before_its_login_is_a_refusal() -> None:
    d = Drive()
    out = d(ConnectionLost("job", "Login timeout expired", error=True))
    assert isinstance(out[-1], End)
    (refused,) = d.ledger.of("connection.refused")
    assert refused["reason"] == "login timed out" and refused["detail"] == "Login timeout expired"
    assert refused["protocol"] == "ssh" and refused["source"] == "10.9.0.2"
    assert d.ledger.types() == ["connection.refused"]  # no session: nothing else
    d = Drive()
    d(ConnectionLost("job", "Invalid SSH version", error=True))
    assert d.ledger.of("connection.refused")[0]["reason"] == "protocol error before login"
    d = Drive()
    d(ConnectionLost("job", "closed", error=False))
    assert d.ledger.of("connection.refused")[0]["reason"] == "disconnected before login"


def test_a_login_that_fails_later_is_a_session() -> None:
    d = Drive()
    d(AuthBegan("deploy"))
    out = d(ConnectionLost("job", "Connection lost", error=True))
    assert isinstance(out[-1], End)
    assert d.ledger.types() == ["session.start", "protocol.error", "session.end"]
    assert (
        d.ledger.of("session.end")[0]["reason"] == "job disconnected during login: Connection lost"
    )


def test_the_target_going_away_tells_each_running_channel() -> None:
    d = Drive()
    d.login()
    d.run(1, "sleep 100")
    d(ChannelStarted(1))
    out = d(ConnectionLost("upstream", "closed"))
    finish = out[0]
    assert isinstance(finish, FinishChannel) and finish.status == FAILED_STATUS
    assert "closed the connection" in finish.message
    assert d.ledger.types()[-2:] == ["response", "session.end"]


def test_drain_waits_for_running_channels_and_abort_ends_them() -> None:
    d = Drive()
    d.login()
    assert d(Drain()) != [] and d.core.state is State.ENDED  # nothing running: ends now
    d = Drive()
    d.login()
    d.run(1, "sleep 1")
    d(ChannelStarted(1))
    assert d(Drain()) == []
    (refused,) = d(ChannelOpened(2, "session"))
    assert isinstance(refused, RefuseChannel)
    out = d(Exited(1, status=0), ChannelClosed(1, "upstream"), ChannelClosed(1, "job"))
    assert isinstance(out[-1], End)
    d = Drive()
    d.login()
    d.run(1, "sleep 100")
    d(ChannelStarted(1))
    out = d(Abort("grace period over"))
    assert isinstance(out[0], FinishChannel) and "shutting down" in out[0].message
    assert isinstance(out[-1], End)


def test_a_legacy_scp_upload_is_recorded_as_a_transfer() -> None:
    d = Drive()
    d.login()
    d.run(1, "scp -t -- incoming.txt")
    d(ChannelStarted(1))
    stream = b"C0644 25 notes.txt\nmy card 4111111111111111\n\x00"
    for i in range(0, len(stream), 5):
        d(Data(1, "job", stream[i : i + 5]))
    (transfer,) = d.ledger.of("ssh.transfer")
    assert transfer["protocol"] == "scp" and transfer["direction"] == "upload"
    assert transfer["path"] == "incoming.txt" and transfer["size"] == 25 and transfer["complete"]
    content = d.ledger.blobs("ssh.transfer")[0]["content"].decode()
    assert content == "my card [REDACTED:CARD]\n"


def open_sftp(d: Drive) -> None:
    """Channel 1 runs sftp: init, version, the home directory the relay asks for."""
    d(ChannelOpened(1, "session"), SessionRequested(1, "subsystem", subsystem="sftp"))
    d(ChannelStarted(1), Data(1, "job", packet(fx.INIT, u32(3))))
    d(Data(1, "upstream", packet(fx.VERSION, u32(3))))
    home = packet(fx.NAME, u32(0xFFFFFFFF) + u32(1) + s("/home/deploy") + s("x") + u32(0))
    d(Data(1, "upstream", home))


def test_an_sftp_channel_decides_each_operation() -> None:
    d = Drive(
        policy="- {name: no-etc, match: {classes: [file_changes], ssh: {paths: ['/etc/*']}}, action: deny}\n- {name: rest, action: allow}"
    )
    d.login()
    open_sftp(d)
    out = d(Data(1, "job", packet(fx.REMOVE, u32(5) + s("/etc/passwd"))))
    (reply,) = out
    assert isinstance(reply, Forward) and reply.side == "job"
    assert fx.parse_reply(reply.data).status == fx.PERMISSION_DENIED
    assert [st["request"] for st in d.ledger.of("statement")] == ["subsystem", "sftp.remove"]


def test_a_malformed_sftp_stream_ends_the_channel_with_a_record() -> None:
    d = Drive()
    d.login()
    d(
        ChannelOpened(1, "session"),
        SessionRequested(1, "subsystem", subsystem="sftp"),
        ChannelStarted(1),
    )
    (finish,) = d(Data(1, "job", u32(0xFFFFFF) + b"\x01"))
    assert isinstance(finish, FinishChannel) and "broke the protocol" in finish.message
    assert d.ledger.of("protocol.error")[0]["channel"] == 1


def test_a_ledger_that_cannot_record_ends_the_session() -> None:
    d = Drive()
    d.login()
    out = d.core.crashed(LedgerUnavailable("writer gone"))
    assert isinstance(out[-1], End) and "ledger unavailable" in out[-1].reason


def test_without_a_policy_everything_is_allowed_and_recorded() -> None:
    d = Drive(policy=None)
    d.login()
    out = d.run(1, "rm -rf /")
    assert isinstance(out[-1], StartChannel)
    assert d.ledger.of("statement")[0]["decision"]["rule"] == "(no policy)"


def test_write_ahead_starts_a_channel_only_once_its_statement_is_on_disk() -> None:
    d = Drive()
    d.core.services.write_ahead = True
    d.login()
    out = d.run(1, "touch /srv/x")
    assert out[0] == PauseChannel(1, "job", "starting", True)
    sync = out[1]
    assert isinstance(sync, AwaitDurable)
    assert d(Data(1, "job", b"early")) == []  # waits with the start
    out = d(Durable(sync.key, True))
    assert isinstance(out[-1], StartChannel)
    # A sync that fails: the command never reaches the target.
    d2 = Drive()
    d2.core.services.write_ahead = True
    d2.login()
    sync = d2.run(1, "touch /srv/y")[1]
    (finish,) = d2(Durable(sync.key, False, "fsync failed"))
    assert isinstance(finish, FinishChannel) and finish.status == FAILED_STATUS
    assert "cannot record this; it was not run: fsync failed" in finish.message
    assert d2.ledger.of("response")[0]["durable"] is False


def test_write_ahead_holds_an_sftp_change_but_not_a_read() -> None:
    d = Drive()
    d.core.services.write_ahead = True
    d.login()
    open_sftp(d)
    (read,) = d(Data(1, "job", packet(fx.STAT, u32(5) + s("a"))))
    assert isinstance(read, Forward) and read.side == "upstream"
    out = d(Data(1, "job", packet(fx.REMOVE, u32(6) + s("a"))))
    assert PauseChannel(1, "job", "hold", True) in out
    sync = next(c for c in out if isinstance(c, AwaitDurable))
    out = d(Durable(sync.key, True))
    assert Forward(1, "upstream", packet(fx.REMOVE, u32(6) + s("a"))) in out
    assert PauseChannel(1, "job", "hold", False) in out
