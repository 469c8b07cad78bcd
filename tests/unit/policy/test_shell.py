"""The shell command-line reader (:mod:`appliance.policy._shell`): quoting, operators,
what runs inside substitutions, what makes a command unknown; never raises."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.policy._shell import MAX_COMMAND_LINE, SimpleCommand, split_commands


def words(text: str) -> list[list[str]]:
    commands, error = split_commands(text)
    assert error is None, error
    return [[w.value for w in c.words] for c in commands]


def only(text: str) -> SimpleCommand:
    commands, error = split_commands(text)
    assert error is None and len(commands) == 1, (error, commands)
    return commands[0]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ls -la /tmp", [["ls", "-la", "/tmp"]]),
        ("echo 'a b' \"c d\" e\\ f", [["echo", "a b", "c d", "e f"]]),
        ('echo "it\'s" \'say "hi"\'', [["echo", "it's", 'say "hi"']]),
        ('echo "a\\"b\\\\c\\$d"', [["echo", 'a"b\\c$d']]),
        ("a; b && c || d | e & f", [["a"], ["b"], ["c"], ["d"], ["e"], ["f"]]),
        ("a\nb", [["a"], ["b"]]),
        ("a \\\n b", [["a", "b"]]),
        ("echo hi # a comment; rm -rf /", [["echo", "hi"]]),
        ("echo a#b", [["echo", "a#b"]]),
        ("(cd /srv && make) | tee log", [["cd", "/srv"], ["make"], ["tee", "log"]]),
        ("if test -f x; then rm x; fi", [["test", "-f", "x"], ["rm", "x"]]),
        ("for f in a b; do rm $f; done", [["rm", "$f"]]),
        ("while true; do sleep 1; done", [["true"], ["sleep", "1"]]),
        ("{ a; b; }", [["a"], ["b"]]),
        ("! grep -q x f", [["grep", "-q", "x", "f"]]),
        ("f() { rm -rf /; }; f", [["f"], ["rm", "-rf", "/"], ["f"]]),
    ],
)
def test_words_and_operators(text: str, expected: list[list[str]]) -> None:
    assert words(text) == expected


def test_command_substitutions_run_too() -> None:
    assert words("rm -rf $(cat list) `ls /x`") == [
        ["rm", "-rf", "$(cat list)", "`ls /x`"],
        ["cat", "list"],
        ["ls", "/x"],
    ]
    assert words('echo "$(id -u)"') == [["echo", "$(id -u)"], ["id", "-u"]]
    assert words("diff <(sort a) <(sort b)") == [
        ["diff", "/dev/fd/N", "/dev/fd/N"],
        ["sort", "a"],
        ["sort", "b"],
    ]


def test_assignments_and_redirections() -> None:
    cmd = only("FOO=1 BAR='x y' env > out.txt 2>&1 < in.txt")
    assert cmd.assignments == ("FOO=1", "BAR=x y")
    assert [w.value for w in cmd.words] == ["env"]
    assert [(op, w.value) for op, w in cmd.redirects] == [
        (">", "out.txt"),
        (">&", "1"),
        ("<", "in.txt"),
    ]
    assert [w.value for w in only("echo 2 > x").words] == ["echo", "2"]  # not an IO number


def test_expansions_are_marked() -> None:
    cmd = only("ls $HOME *.log ~/x {a,b} [ab] plain")
    marks = [(w.value, w.expanded) for w in cmd.words]
    assert marks == [
        ("ls", False),
        ("$HOME", True),
        ("*.log", True),
        ("~/x", False),
        ("{a,b}", True),
        ("[ab]", True),
        ("plain", False),
    ]
    assert not only("[ -f x ]").words[0].expanded  # the test command, not a pattern


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("cat <<EOF\nhello\nEOF", "here-document"),
        ("echo $((1 + 2))", "arithmetic"),
        ("echo $'\\x41'", "quoting"),
        ("case $x in a) rm x;; esac", "case"),
        ("echo ${X:-$(rm -rf /)}", "${...}"),
    ],
)
def test_what_cannot_be_read_is_unknown(text: str, why: str) -> None:
    commands, error = split_commands(text)
    assert error is None
    reasons = [c.unknown for c in commands if c.unknown]
    assert reasons and why in reasons[0], commands


@pytest.mark.parametrize(
    "text",
    [
        "echo 'open",
        'echo "open',
        "echo `open",
        "echo $(open",
        "x\0y",
        "a" * (MAX_COMMAND_LINE + 1),
    ],
)
def test_unreadable_lines(text: str) -> None:
    commands, error = split_commands(text)
    assert commands == [] and error


def test_quoted_keywords_are_programs() -> None:
    assert only("'if' x").unknown is None
    assert [w.value for w in only("'if' x").words] == ["if", "x"]


def test_nesting_is_bounded() -> None:
    text = "echo " + "$(" * 20 + "x" + ")" * 20
    commands, error = split_commands(text)
    assert error is None
    assert any(c.unknown and "deeper" in c.unknown for c in commands)


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab $()`'\"\\;|&<>{}#\n*?[]=!~-")), max_size=60))
def test_never_raises(text: str) -> None:
    commands, error = split_commands(text)
    assert (error is None) or commands == []
