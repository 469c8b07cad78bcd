"""SSH operations as policy statements, and the ``ssh`` matcher of a rule.

Where this sits: the SSH session (:mod:`appliance.proxy.ssh`) turns each thing a job asks of
a protected host into a :class:`~appliance.policy.Classification` of :class:`SshOperation`
statements and asks :meth:`~appliance.policy.Policy.decide`, exactly as the PostgreSQL
session does with SQL:

- :func:`classify_exec` -- an exec command line: one statement per command written in it
  (:mod:`appliance.policy._shell`), each with its program, its arguments and, through
  ``sudo``, the program sudo runs; wrappers (``env``, ``nohup``, ``timeout`` ...) are seen
  through, ``sh -c '...'`` is read as the commands it runs; ``scp -t/-f``, ``rsync
  --server`` and git's pack commands are file reads or writes of their paths;
- :func:`shell_request`, :func:`subsystem_request`, :func:`file_operation`,
  :func:`forward_request` -- one statement each.

Rules match them with the classes of :mod:`appliance.policy._vocabulary` (``ssh_exec``,
``file_write`` ...) and the ``ssh`` matcher (:class:`SshMatch`): ``programs``, ``arguments``,
``sudo``, ``subsystems``, ``paths``, ``destinations``. A statement that is no SSH operation
(SQL) never matches a rule that has an ``ssh`` matcher.
"""

from __future__ import annotations

import dataclasses
import posixpath
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from appliance.config import Node
from appliance.policy._classify import Classification, StatementClass
from appliance.policy._shell import SimpleCommand, Word, split_commands

__all__ = [
    "SSH_MATCH_KEYS",
    "SshMatch",
    "SshOperation",
    "classify_exec",
    "file_operation",
    "forward_request",
    "parse_ssh_match",
    "shell_request",
    "subsystem_request",
]

SSH_MATCH_KEYS = ("programs", "arguments", "sudo", "subsystems", "paths", "destinations")
SHELLS = frozenset({"sh", "bash", "dash", "zsh", "ksh", "mksh", "ash", "busybox"})
# Assignments before a program (or through env) that change which program runs or what a
# shell runs first: the program cannot be known from the text.
_DANGEROUS_NAMES = frozenset(
    {
        "PATH",
        "IFS",
        "ENV",
        "BASH_ENV",
        "SHELLOPTS",
        "BASHOPTS",
        "PS4",
        "PROMPT_COMMAND",
        "CDPATH",
        "GLOBIGNORE",
    }
)
# Wrappers that run the rest of their words as the command: name -> options that take a
# value. The command is their first word that is not an option (or an option's value).
_WRAPPERS: dict[str, frozenset[str]] = {
    "env": frozenset({"-u", "--unset", "-C", "--chdir"}),
    "nohup": frozenset(),
    "nice": frozenset({"-n", "--adjustment"}),
    "ionice": frozenset({"-c", "-n", "-t"}),
    "time": frozenset({"-f", "--format", "-o", "--output"}),
    "timeout": frozenset({"-s", "--signal", "-k", "--kill-after"}),
    "exec": frozenset({"-a"}),
    "command": frozenset(),
    "stdbuf": frozenset({"-i", "-o", "-e"}),
    "setsid": frozenset(),
    "chrt": frozenset(),
}
_SUDO_VALUE_OPTIONS = frozenset(
    {
        "-C",
        "-D",
        "-g",
        "-h",
        "-p",
        "-R",
        "-r",
        "-t",
        "-T",
        "-U",
        "-u",
        "--close-from",
        "--chdir",
        "--group",
        "--host",
        "--prompt",
        "--chroot",
        "--role",
        "--type",
        "--command-timeout",
        "--other-user",
        "--user",
    }
)
_NOT_FILES = frozenset({"/dev/null", "/dev/stdout", "/dev/stderr", "/dev/stdin", "/dev/tty"})
_WRITE_REDIRECTS = frozenset({">", ">>", ">|", "&>", "&>>", "<>"})
_READ_REDIRECTS = frozenset({"<", "<>"})
_MAX_SHELL_DEPTH = 4


@dataclass(frozen=True)
class SshOperation(StatementClass):
    """One SSH operation, decided like a SQL statement.

    ``program``: the program a command runs, as written (a wrapper's command, not the
    wrapper; ``sudo`` itself for a sudo command); ``sudo``: the program sudo runs (or
    ``(shell)`` for ``sudo -i``/``-s``); ``arguments``: the arguments of the program that
    runs (sudo's program for a sudo command); ``subsystem``: a subsystem's name; ``paths``:
    the files an operation reads or writes; ``destination``: ``host:port`` of a forward.
    """

    program: str | None = None
    arguments: tuple[str, ...] = ()
    sudo: str | None = None
    subsystem: str | None = None
    paths: tuple[str, ...] = ()
    destination: str | None = None
    wrappers: tuple[str, ...] = ()
    why_unknown: str | None = None

    def to_record(self) -> dict[str, Any]:
        record: dict[str, Any] = {
            "index": self.index,
            "command": self.command,
            "classes": sorted(self.classes),
        }
        for key in ("program", "sudo", "subsystem", "destination", "why_unknown"):
            value = getattr(self, key)
            if value is not None:
                record[key] = value
        for key in ("arguments", "paths", "wrappers"):
            value = getattr(self, key)
            if value:
                record[key] = list(value)
        return record


def _names(program: str) -> tuple[str, str]:
    return program, posixpath.basename(program)


@dataclass(frozen=True)
class SshMatch:
    """The ``ssh`` matcher of a rule: every key given must match (a list of globs matches
    if any glob does). ``programs`` and ``sudo`` match a program as written or its base
    name (``/usr/bin/rm`` matches ``rm``); ``arguments`` the arguments joined by single
    spaces; ``paths`` any path of the operation; ``destinations`` ``host:port``."""

    programs: tuple[Any, ...] | None = None
    arguments: tuple[Any, ...] | None = None
    sudo: tuple[Any, ...] | None = None
    subsystems: tuple[Any, ...] | None = None
    paths: tuple[Any, ...] | None = None
    destinations: tuple[Any, ...] | None = None

    def matches(self, stmt: StatementClass) -> bool:
        if not isinstance(stmt, SshOperation):
            return False
        if self.programs is not None and not _any(self.programs, _names_of(stmt.program)):
            return False
        if self.sudo is not None and not _any(self.sudo, _names_of(stmt.sudo)):
            return False
        if self.arguments is not None and not _any(self.arguments, [" ".join(stmt.arguments)]):
            return False
        if self.subsystems is not None and not _any(self.subsystems, [stmt.subsystem]):
            return False
        if self.paths is not None and not _any(self.paths, stmt.paths):
            return False
        return self.destinations is None or _any(self.destinations, [stmt.destination])


def parse_ssh_match(node: Node, globs: Callable[[Node], tuple[Any, ...]]) -> SshMatch:
    """The ``ssh`` matcher of a rule (``globs`` reads a list of patterns, with errors on
    the node); ConfigError on an unknown key or an empty mapping."""
    m = node.keys(optional=SSH_MATCH_KEYS)
    if not m:
        node.fail(f"give at least one of: {', '.join(SSH_MATCH_KEYS)}")
    return SshMatch(**{key: globs(value) for key, value in m.items()})


def _names_of(program: str | None) -> list[str | None]:
    return list(_names(program)) if program is not None else []


def _any(globs: tuple[Any, ...], values: Iterable[str | None]) -> bool:
    return any(g.matches(v) for v in values if v is not None for g in globs)


# -- exec command lines --------------------------------------------------------------------


def classify_exec(command: str) -> Classification:
    """The statements of an exec command line (see the module docstring). Never raises:
    a line that cannot be read is one ``unknown`` statement with ``parse_error`` set."""
    commands, error = split_commands(command)
    if error is not None:
        return Classification.of([_unknown(0, command, error)], parse_error=error)
    out: list[SshOperation] = []
    for cmd in commands:
        out.extend(_statements(cmd, len(out), depth=0, sudo=False))
    out = [_reindex(s, i) for i, s in enumerate(out)]
    why = next((s.why_unknown for s in out if s.why_unknown is not None), None)
    return Classification.of(out, parse_error=why)


def _op(cmd: SimpleCommand, index: int, classes: Iterable[str], **fields: Any) -> SshOperation:
    """The statement of one command of an exec line."""
    return SshOperation(index, cmd.text, "exec", frozenset(classes), **fields)


def _unknown(index: int, text: str, why: str, *, sudo: bool = False) -> SshOperation:
    classes = {"ssh_exec", "unknown", *(("ssh_sudo",) if sudo else ())}
    return SshOperation(index, text, "exec", frozenset(classes), why_unknown=why)


def _reindex(stmt: SshOperation, index: int) -> SshOperation:
    return stmt if stmt.index == index else dataclasses.replace(stmt, index=index)


def _statements(cmd: SimpleCommand, index: int, *, depth: int, sudo: bool) -> list[SshOperation]:
    """The statements of one simple command (several for ``sh -c '...'``)."""
    if cmd.unknown is not None:
        return [_unknown(index, cmd.text, cmd.unknown, sudo=sudo)]
    classes = {"ssh_exec", *(("ssh_sudo",) if sudo else ())}
    paths: list[str] = []
    for op, target in cmd.redirects:
        if target.value in _NOT_FILES or (op in (">&", "<&")):
            continue
        if op in _WRITE_REDIRECTS:
            classes.add("file_write")
        if op in _READ_REDIRECTS:
            classes.add("file_read")
        paths.append(target.value)
    dangerous = _dangerous(cmd.assignments)
    if dangerous:
        return [_unknown(index, cmd.text, dangerous, sudo=sudo)]
    words = list(cmd.words)
    wrappers: list[str] = []
    while words:
        first = words[0]
        if first.expanded:
            why = f"the program is computed by the shell ({first.literal})"
            return [_unknown(index, cmd.text, why, sudo=sudo)]
        base = posixpath.basename(first.value)
        if base == "eval":
            return [_unknown(index, cmd.text, "eval runs text as a command line", sudo=sudo)]
        if base in _WRAPPERS:
            rest, unwrap_error = _unwrap(base, words[1:])
            if unwrap_error is not None:
                return [_unknown(index, cmd.text, unwrap_error, sudo=sudo)]
            wrappers.append(first.value)
            words = rest
            continue
        break
    if not words:
        return [
            _op(
                cmd,
                index,
                classes,
                paths=tuple(paths),
                wrappers=tuple(wrappers),
            )
        ]
    program = words[0].value
    args = [w.value for w in words[1:]]
    name = posixpath.basename(program)
    if name in ("sudo", "doas") and not sudo:
        return _sudo(cmd, index, program, words[1:], classes, paths, wrappers, depth)
    if name in SHELLS:
        script = _shell_script(args)
        if script is not None:
            if depth >= _MAX_SHELL_DEPTH:
                return [_unknown(index, cmd.text, "shells nested too deep", sudo=sudo)]
            shell = _op(
                cmd,
                index,
                classes,
                program=program,
                arguments=tuple(args),
                paths=tuple(paths),
                wrappers=tuple(wrappers),
            )
            return [shell, *_script(cmd, index + 1, script, depth, sudo)]
    more_classes, more_paths = _transfer(name, args)
    classes |= more_classes
    return [
        _op(
            cmd,
            index,
            classes,
            program=program,
            arguments=tuple(args),
            paths=tuple(paths + more_paths),
            wrappers=tuple(wrappers),
        )
    ]


def _dangerous(assignments: Iterable[str]) -> str | None:
    for assignment in assignments:
        name = assignment.partition("=")[0]
        if name in _DANGEROUS_NAMES or name.startswith("LD_"):
            return f"the assignment to {name} changes which program runs"
    return None


def _unwrap(name: str, words: list[Word]) -> tuple[list[Word], str | None]:
    """The words after wrapper ``name``'s options (and, for env, its assignments)."""
    takes_value = _WRAPPERS[name]
    i = 0
    positional_skip = 1 if name == "timeout" else 0  # timeout DURATION COMMAND
    while i < len(words):
        w = words[i].value
        if w == "--":
            i += 1
            break
        if name == "env" and ("=" in w and not w.startswith("-")):
            why = _dangerous([w])
            if why is not None:
                return [], why
            i += 1
            continue
        if (name == "env" and w in ("-S", "--split-string")) or w.startswith("--split-string="):
            return [], "env -S splits a string into a command line"
        if w.startswith("-") and w != "-":
            i += 2 if w in takes_value else 1
            continue
        if name == "nice" and w.lstrip("-").isdigit():
            i += 1
            continue
        break
    return words[i + positional_skip :], None


def _sudo(
    cmd: SimpleCommand,
    index: int,
    program: str,
    words: list[Word],
    classes: set[str],
    paths: list[str],
    wrappers: list[str],
    depth: int,
) -> list[SshOperation]:
    """``sudo [options] [command]``: the statements of the command sudo runs, each marked
    ``ssh_sudo`` with ``sudo`` naming its program."""
    i, shell, edit = 0, False, False
    while i < len(words):
        w = words[i].value
        if words[i].expanded:
            return [
                _unknown(
                    index,
                    cmd.text,
                    f"a sudo option computed by the shell ({words[i].literal})",
                    sudo=True,
                )
            ]
        if w == "--":
            i += 1
            break
        if not w.startswith("-") or w == "-":
            break
        if w in _SUDO_VALUE_OPTIONS:
            i += 2
            continue
        if w.startswith("--"):
            i += 1
            shell = shell or w in ("--login", "--shell")
            edit = edit or w == "--edit"
            continue
        letters = w[1:]
        value_at = next(
            (k for k, ch in enumerate(letters) if f"-{ch}" in _SUDO_VALUE_OPTIONS), None
        )
        flags = letters if value_at is None else letters[:value_at]
        shell = shell or "i" in flags or "s" in flags
        edit = edit or "e" in flags
        if value_at is not None and value_at == len(letters) - 1:
            i += 2  # "-u root": the value is the next word
        else:
            i += 1
    rest = words[i:]
    classes = classes | {"ssh_sudo"}
    if edit:
        files = [w.value for w in rest]
        return [
            _op(
                cmd,
                index,
                classes | {"file_write"},
                program=program,
                sudo="sudoedit",
                arguments=tuple(files),
                paths=tuple(paths + files),
                wrappers=tuple(wrappers),
            )
        ]
    if not rest:
        who = "(shell)" if shell else None
        return [
            _op(
                cmd,
                index,
                classes,
                program=program,
                sudo=who,
                paths=tuple(paths),
                wrappers=tuple(wrappers),
            )
        ]
    inner = SimpleCommand(cmd.text, tuple(rest), (), cmd.redirects, None, cmd.nested)
    stmts = _statements(inner, index, depth=depth, sudo=True)
    return [
        dataclasses.replace(
            s,
            classes=s.classes | {"ssh_sudo"},
            program=program,
            sudo=s.program if s.program is not None else s.sudo,
            wrappers=tuple(wrappers) + s.wrappers,
        )
        for s in stmts
    ]


def _shell_script(args: list[str]) -> str | None:
    """The script of ``sh [options] -c SCRIPT [name args...]``, or None (a script file, or
    commands read from standard input)."""
    for i, arg in enumerate(args):
        if arg == "--" or not arg.startswith(("-", "+")):
            return None
        if arg.startswith("-") and not arg.startswith("--") and "c" in arg[1:]:
            return args[i + 1] if i + 1 < len(args) else None
        if arg in ("-o", "+o", "-O", "+O"):
            continue
    return None


def _script(
    cmd: SimpleCommand, index: int, script: str, depth: int, sudo: bool
) -> list[SshOperation]:
    commands, error = split_commands(script)
    if error is not None:
        return [_unknown(index, cmd.text, f"sh -c: {error}", sudo=sudo)]
    out: list[SshOperation] = []
    for inner in commands:
        out.extend(_statements(inner, index + len(out), depth=depth + 1, sudo=sudo))
    return out


def _transfer(name: str, args: list[str]) -> tuple[set[str], list[str]]:
    """File reads and writes of the programs that move files over an exec channel."""
    if name == "scp":
        if "-t" in args:
            return {"file_write"}, _operands(args)
        if "-f" in args:
            return {"file_read"}, _operands(args)
    elif name == "rsync" and "--server" in args:
        operands = _operands(args)[1:]  # "." then the paths
        return ({"file_read"} if "--sender" in args else {"file_write"}), operands
    elif name in ("git-upload-pack", "git-upload-archive"):
        return {"file_read"}, args[-1:]
    elif name == "git-receive-pack":
        return {"file_write"}, args[-1:]
    return set(), []


def _operands(args: list[str]) -> list[str]:
    out, after = [], False
    for arg in args:
        if after or not arg.startswith("-"):
            out.append(arg)
        elif arg == "--":
            after = True
    return out


# -- other requests --------------------------------------------------------------------------


def shell_request(*, pty: bool) -> Classification:
    return Classification.of(
        [SshOperation(0, "shell" + (" (pty)" if pty else ""), "shell", frozenset({"ssh_shell"}))]
    )


def subsystem_request(name: str) -> Classification:
    return Classification.of(
        [
            SshOperation(
                0, f"subsystem {name}", "subsystem", frozenset({"ssh_subsystem"}), subsystem=name
            )
        ]
    )


FILE_CLASSES = frozenset({"file_read", "file_write", "file_remove", "file_rename", "file_list"})


def file_operation(
    op: str, cls: str, paths: tuple[str, ...], *, subsystem: str = "sftp"
) -> Classification:
    """One file operation of an SFTP session (``op``: the request's name, ``cls``: one of
    the file_* classes)."""
    if cls not in FILE_CLASSES:
        raise ValueError(f"{cls!r} is not a file class")
    text = f"{op} " + " ".join(paths)
    return Classification.of(
        [SshOperation(0, text, op, frozenset({cls}), subsystem=subsystem, paths=paths)]
    )


FORWARD_CLASSES = {
    "local": "ssh_port_forward",
    "remote": "ssh_remote_forward",
    "agent": "ssh_agent_forward",
    "x11": "ssh_x11_forward",
}


def forward_request(kind: str, host: str = "", port: int = 0) -> Classification:
    """A forwarding request (``kind``: local, remote, agent, x11)."""
    cls = FORWARD_CLASSES[kind]
    destination = f"{host}:{port}" if kind in ("local", "remote") else None
    text = f"{kind} forward" + (f" {destination}" if destination else "")
    return Classification.of(
        [SshOperation(0, text, "forward", frozenset({cls}), destination=destination)]
    )
