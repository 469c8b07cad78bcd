"""SSH operations as policy statements (:mod:`appliance.policy._ssh`): what an exec command
line runs (programs, arguments, what sudo runs, wrappers and ``sh -c`` seen through, file
transfers), the ``ssh`` matcher, and the classes only an explicit rule decides."""

from __future__ import annotations

from typing import Any

import pytest

from appliance.errors import ConfigError
from appliance.policy import (
    CLASSES,
    NO_RULE,
    Classification,
    HttpRequestContext,
    Policy,
    RequestContext,
    SshOperation,
    classify_exec,
    file_operation,
    forward_request,
    shell_request,
    subsystem_request,
)
from appliance.policy._vocabulary import SSH_CLASSES

from .helpers import ATTRIBUTED, rules


def ops(command: str) -> list[dict[str, Any]]:
    return [s.to_record() for s in classify_exec(command).statements]


def brief(command: str) -> list[tuple[Any, ...]]:
    out = []
    for s in classify_exec(command).statements:
        assert isinstance(s, SshOperation)
        out.append((s.program, s.sudo, s.arguments, tuple(sorted(s.classes))))
    return out


EXEC = ("ssh_exec",)


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("ls -la", [("ls", None, ("-la",), EXEC)]),
        ("/usr/bin/rm -f x", [("/usr/bin/rm", None, ("-f", "x"), EXEC)]),
        ("nohup timeout 5 env A=1 rm x", [("rm", None, ("x",), EXEC)]),
        ("nice -n 5 ionice -c 3 tar cf x .", [("tar", None, ("cf", "x", "."), EXEC)]),
        (
            "sudo -u app -E systemctl restart app",
            [("sudo", "systemctl", ("restart", "app"), ("ssh_exec", "ssh_sudo"))],
        ),
        ("sudo -uroot id", [("sudo", "id", (), ("ssh_exec", "ssh_sudo"))]),
        ("sudo -- nohup reboot", [("sudo", "reboot", (), ("ssh_exec", "ssh_sudo"))]),
        ("sudo -i", [("sudo", "(shell)", (), ("ssh_exec", "ssh_sudo"))]),
        (
            "sudo -e /etc/hosts",
            [("sudo", "sudoedit", ("/etc/hosts",), ("file_write", "ssh_exec", "ssh_sudo"))],
        ),
        (
            "bash -c 'cd /srv && ./deploy.sh'",
            [
                ("bash", None, ("-c", "cd /srv && ./deploy.sh"), EXEC),
                ("cd", None, ("/srv",), EXEC),
                ("./deploy.sh", None, (), EXEC),
            ],
        ),
        (
            "sudo sh -c 'rm -rf /var/x'",
            [
                ("sudo", "sh", ("-c", "rm -rf /var/x"), ("ssh_exec", "ssh_sudo")),
                ("sudo", "rm", ("-rf", "/var/x"), ("ssh_exec", "ssh_sudo")),
            ],
        ),
        ("scp -t -- /srv/in", [("scp", None, ("-t", "--", "/srv/in"), ("file_write", "ssh_exec"))]),
        ("scp -f /etc/passwd", [("scp", None, ("-f", "/etc/passwd"), ("file_read", "ssh_exec"))]),
        (
            "rsync --server --sender -logDtpre.iLsfxCIvu . /srv/",
            [
                (
                    "rsync",
                    None,
                    ("--server", "--sender", "-logDtpre.iLsfxCIvu", ".", "/srv/"),
                    ("file_read", "ssh_exec"),
                )
            ],
        ),
        (
            "git-receive-pack '/srv/app.git'",
            [("git-receive-pack", None, ("/srv/app.git",), ("file_write", "ssh_exec"))],
        ),
        ("echo hi > /etc/motd", [("echo", None, ("hi",), ("file_write", "ssh_exec"))]),
        ("cmd 2>/dev/null >&2", [("cmd", None, (), EXEC)]),
    ],
)
def test_exec_command_lines(command: str, expected: list[tuple[Any, ...]]) -> None:
    assert brief(command) == expected


@pytest.mark.parametrize(
    ("command", "why"),
    [
        ("$SHELL -c x", "computed by the shell"),
        ("*.sh", "computed by the shell"),
        ("{rm,-rf,/}", "computed by the shell"),
        ("eval rm -rf /", "eval"),
        ("PATH=/tmp:$PATH ls", "PATH"),
        ("LD_PRELOAD=/tmp/x.so id", "LD_PRELOAD"),
        ("env PATH=/tmp ls", "PATH"),
        ("env -S 'rm -rf /'", "env -S"),
        ("echo 'unbalanced", "refuse"),
        ("sudo $(which rm) -rf /", "computed"),
    ],
)
def test_what_the_shell_computes_is_unknown(command: str, why: str) -> None:
    classification = classify_exec(command)
    assert "unknown" in classification.classes
    assert classification.parse_error is not None and why in classification.parse_error


def test_records_name_the_parts() -> None:
    record = ops("sudo -u app systemctl restart app > /tmp/log")[0]
    assert record == {
        "index": 0,
        "command": "exec",
        "classes": ["file_write", "ssh_exec", "ssh_sudo"],
        "program": "sudo",
        "sudo": "systemctl",
        "arguments": ["restart", "app"],
        "paths": ["/tmp/log"],
    }


def decide(
    policy: Policy, classification: Classification, *, target: str = "orders-db"
) -> tuple[str, str]:
    d = policy.decide(RequestContext(ATTRIBUTED, target, None, "ci-writer", classification))
    return d.action, d.rule


POLICY = """
- name: no-rm-rf
  match: {ssh: {programs: [rm], arguments: ["-rf *", "-fr *"]}}
  action: deny
- name: sudo-systemctl-restart
  match: {ssh: {sudo: [systemctl], arguments: ["restart app*"]}}
  action: allow
- name: no-other-sudo
  match: {classes: [ssh_sudo]}
  action: deny
- name: etc-read-only
  match: {classes: [file_changes], ssh: {paths: ["/etc/*"]}}
  action: deny
- name: only-sftp
  match: {classes: [ssh_subsystem], ssh: {subsystems: [sftp]}}
  action: allow
- name: no-other-subsystems
  match: {classes: [ssh_subsystem]}
  action: deny
- name: shells-need-review
  match: {classes: [ssh_shell]}
  action: review
  approvers: [alice]
- name: metrics-tunnel
  match: {classes: [ssh_port_forward], ssh: {destinations: ["127.0.0.1:9100"]}}
  action: allow
- name: rest
  action: allow
"""


def test_the_ssh_matcher() -> None:
    p = rules(POLICY)
    assert decide(p, classify_exec("rm -rf /srv/app")) == ("deny", "no-rm-rf")
    assert decide(p, classify_exec("ls; rm -fr x")) == ("deny", "no-rm-rf")
    assert decide(p, classify_exec("rm -f x")) == ("allow", "rest")
    assert decide(p, classify_exec("sudo systemctl restart app-web")) == (
        "allow",
        "sudo-systemctl-restart",
    )
    assert decide(p, classify_exec("sudo /bin/systemctl restart app")) == (
        "allow",
        "sudo-systemctl-restart",
    )
    assert decide(p, classify_exec("sudo systemctl stop app")) == ("deny", "no-other-sudo")
    assert decide(p, classify_exec("systemctl restart app")) == ("allow", "rest")  # no sudo
    assert decide(p, file_operation("open", "file_write", ("/etc/hosts",))) == (
        "deny",
        "etc-read-only",
    )
    assert decide(p, file_operation("open", "file_read", ("/etc/hosts",))) == ("allow", "rest")
    assert decide(p, classify_exec("echo x >> /etc/crontab")) == ("deny", "etc-read-only")
    assert decide(p, subsystem_request("sftp")) == ("allow", "only-sftp")
    assert decide(p, subsystem_request("netconf")) == ("deny", "no-other-subsystems")
    assert decide(p, shell_request(pty=True)) == ("review", "shells-need-review")
    assert decide(p, forward_request("local", "127.0.0.1", 9100)) == ("allow", "metrics-tunnel")


def test_forwards_and_unknown_need_a_rule_that_names_them() -> None:
    p = rules(POLICY)
    # The catch-all allow does not open a tunnel, nor run what nobody could read.
    assert decide(p, forward_request("local", "10.0.0.9", 5432)) == ("deny", NO_RULE)
    assert decide(p, forward_request("remote", "0.0.0.0", 8080)) == ("deny", NO_RULE)
    assert decide(p, forward_request("agent")) == ("deny", NO_RULE)
    assert decide(p, classify_exec("$X")) == ("deny", NO_RULE)
    message = p.decide(
        RequestContext(ATTRIBUTED, "orders-db", None, "ci-writer", forward_request("local", "h", 1))
    ).message
    assert message is not None and "ssh_port_forward" in message


def test_ssh_rules_never_match_sql_and_sql_rules_never_match_ssh() -> None:
    p = rules(
        """
- name: sql-reads
  match: {only_classes: [read]}
  action: allow
- name: any-ssh-program
  match: {ssh: {programs: ["*"]}}
  action: deny
"""
    )
    from .helpers import ctx

    assert p.decide(ctx("SELECT 1")).rule == "sql-reads"
    assert decide(p, classify_exec("ls")) == ("deny", "any-ssh-program")
    assert decide(p, shell_request(pty=False)) == ("deny", NO_RULE)


def test_ssh_and_http_rules_never_decide_each_other() -> None:
    p = rules(
        """
- name: no-rm
  match: {ssh: {programs: [rm]}}
  action: deny
- name: no-posts
  match: {http: {methods: [POST]}}
  action: deny
- name: rest
  action: allow
"""
    )
    get = HttpRequestContext(ATTRIBUTED, "api", "ci", "GET", "api.example", "/", {}, {})
    post = HttpRequestContext(ATTRIBUTED, "api", "ci", "POST", "api.example", "/", {}, {})
    assert p.decide_http(get).rule == "rest"  # the ssh rule does not deny every request
    assert p.decide_http(post).rule == "no-posts"
    assert decide(p, classify_exec("rm x")) == ("deny", "no-rm")
    assert decide(p, classify_exec("ls")) == ("allow", "rest")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- {name: r, match: {ssh: {}}, action: allow}", "give at least one of"),
        ("- {name: r, match: {ssh: {program: [x]}}, action: allow}", "program"),
        ("- {name: r, match: {ssh: {paths: []}}, action: allow}", "empty list"),
        ("- {name: r, match: {classes: [ssh_teleport]}, action: allow}", "unknown statement class"),
        (
            "- {name: all, action: allow}\n- {name: fwd, match: {classes: [file_read]}, action: allow}",
            "can never match",
        ),
    ],
)
def test_config_mistakes(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        rules(text)


def test_a_rule_naming_forwards_is_reachable_after_a_catch_all() -> None:
    p = rules(
        "- {name: all, action: allow}\n"
        "- {name: fwd, match: {classes: [ssh_forwarding]}, action: allow}"
    )
    assert decide(p, forward_request("local", "h", 1)) == ("allow", "fwd")


def test_every_ssh_class_is_handed_out() -> None:
    made: set[str] = set(classify_exec("sudo scp -t x; cat y > z").classes)
    made |= shell_request(pty=False).classes | subsystem_request("sftp").classes
    for cls in ("file_read", "file_write", "file_remove", "file_rename", "file_list"):
        made |= file_operation("op", cls, ("p",)).classes
    for kind in ("local", "remote", "agent", "x11"):
        made |= forward_request(kind).classes
    assert made == SSH_CLASSES | {"ssh_exec"}
    assert set(CLASSES) >= SSH_CLASSES


def test_the_example_file_decides_ssh_as_it_says() -> None:
    from appliance.config import load_config
    from appliance.policy import parse_policy

    from .helpers import EXAMPLE, VERIFIED

    config = load_config(EXAMPLE)
    p = parse_policy(config.policy, targets=config.targets, verifiable=True)

    def on_web(c: Classification) -> tuple[str, str]:
        d = p.decide(RequestContext(VERIFIED, "web", None, "deploy", c))
        return d.action, d.rule

    assert on_web(classify_exec("rm -rf /srv/app")) == ("deny", "ssh-no-recursive-deletes")
    assert on_web(classify_exec("sudo systemctl restart app")) == ("allow", "ssh-sudo-restart-only")
    assert on_web(classify_exec("sudo cat /etc/shadow")) == ("deny", "ssh-no-other-sudo")
    assert on_web(shell_request(pty=True)) == ("review", "ssh-shells-need-review")
    assert on_web(forward_request("local", "127.0.0.1", 9100)) == ("allow", "ssh-metrics-tunnel")
    assert on_web(classify_exec("./deploy.sh v2")) == ("allow", "ssh-deploys")
    assert on_web(file_operation("remove", "file_remove", ("/etc/hosts",))) == (
        "deny",
        "ssh-etc-read-only",
    )
