"""POSIX shell command lines, split into the simple commands they may run (SSH exec policy).

Where this sits: an SSH exec request carries one string that the target's login shell runs
(``$SHELL -c STRING``). :func:`split_commands` reads it with the shell's quoting and
operator rules and returns one :class:`SimpleCommand` per command written in it, quotes
removed, so that :mod:`appliance.policy._ssh` can decide each program, its arguments and
what sudo runs. It over-approximates on purpose: every command written anywhere in the line
is returned as if it ran (both arms of ``a && b || c``, the body of a loop or function,
``$(inner)`` command substitutions, subshells, process substitutions), so that policy
decides each one.

What cannot be read from the text makes its command ``unknown`` (policy fails closed on it):

- a program word that an expansion produces (``$CMD``, ``*``, ``{rm,-rf,x}``; a leading
  ``~``, the user's home, is not counted), ``eval``, ``case`` (patterns select the arm);
- here-documents (``<<``: their body, on the following lines, may be a script for the
  command), arithmetic ``$((...))``, ``$'...'`` and ``$"..."`` quoting;
- an assignment that changes how programs are found or shells start (``PATH=``, ``LD_*``,
  ``IFS`` ...) is judged in :mod:`appliance.policy._ssh`;
- unbalanced quotes: the shell itself would refuse the line; the whole line is unreadable.

Expansions in *arguments* (``$HOME``, ``*.log``) are kept as written, with ``expanded`` set:
the argument a rule sees is the text the job sent.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["MAX_COMMAND_LINE", "SimpleCommand", "Word", "split_commands"]

# Longer command lines are refused unread (an exec request is one SSH packet: 256 KiB at
# most; real command lines are far shorter). Nesting deeper than this ($(...) in $(...)
# ...) is unknown.
MAX_COMMAND_LINE = 64 * 1024
MAX_DEPTH = 8

_OPERATORS = ("&&", "||", ";;", "|&", ";&", ";", "&", "|", "(", ")", "\n")
_REDIRECTS = ("<<<", "<<-", "&>>", "<<", ">>", "<&", ">&", "<>", ">|", "&>", "<", ">")
_CASE_ARMS = frozenset({";;", ";&"})
_BLANK = " \t"
_WORD_END = _BLANK + "\n;|&<>()"
# Reserved words that start a command and run none themselves: the command follows them.
_PREFIX_KEYWORDS = frozenset({"if", "then", "else", "elif", "while", "until", "do", "!", "{"})
# Reserved words that close a construct: nothing runs.
_CLOSING_KEYWORDS = frozenset({"fi", "done", "}", "esac"})
# Headers whose words are no command (the loop's list and body follow as commands).
_HEADER_KEYWORDS = frozenset({"for", "select", "function", "in"})


@dataclass(frozen=True)
class Word:
    """One word after quote removal; ``expanded``: it held an unquoted expansion or
    pattern the shell would replace (``$X``, ``*``, braces, ``$(...)``); ``literal``: the
    text as written."""

    value: str
    expanded: bool = False
    literal: str = ""


@dataclass(frozen=True)
class SimpleCommand:
    """One command of the line: its words (leading assignments apart), its redirections
    as (operator, target), and, when its effect cannot be read from the text, why in
    ``unknown``. ``text`` is the command's own source text; ``nested``: it was written
    inside a command substitution, subshell or process substitution."""

    text: str
    words: tuple[Word, ...] = ()
    assignments: tuple[str, ...] = ()
    redirects: tuple[tuple[str, Word], ...] = ()
    unknown: str | None = None
    nested: bool = False


@dataclass
class _Building:
    start: int
    words: list[Word] = field(default_factory=list)
    assignments: list[str] = field(default_factory=list)
    redirects: list[tuple[str, Word]] = field(default_factory=list)
    unknown: str | None = None
    pending_redirect: str | None = None

    def why(self, reason: str) -> None:
        if self.unknown is None:
            self.unknown = reason


class _Unreadable(Exception):
    pass


class _Scanner:
    """The lexer: words and operators as the shell reads them, one pass."""

    def __init__(self, text: str, depth: int) -> None:
        self.text = text
        self.depth = depth
        self.pos = 0
        self.commands: list[SimpleCommand] = []
        self.nested: list[SimpleCommand] = []
        self.current = _Building(0)

    def run(self) -> list[SimpleCommand]:
        text = self.text
        while self.pos < len(text):
            c = text[self.pos]
            if c in _BLANK:
                self.pos += 1
            elif text.startswith("\\\n", self.pos):
                self.pos += 2  # line continuation
            elif c == "#":
                end = text.find("\n", self.pos)
                self.pos = len(text) if end == -1 else end
            elif not self._operator():
                self._word()
        self._finish(len(text))
        return self.commands + self.nested

    # -- operators ---------------------------------------------------------------------------

    def _operator(self) -> bool:
        text, pos = self.text, self.pos
        if text.startswith(("<(", ">("), pos):
            end = self._closing(pos + 2, "(", ")")
            self._inner(text[pos + 2 : end])
            self._add(Word("/dev/fd/N", True, text[pos : end + 1]))
            self.pos = end + 1
            return True
        for op in _REDIRECTS:
            if text.startswith(op, pos):
                if op in ("<<", "<<-"):
                    self.current.why("a here-document (its body may be a script)")
                self.current.pending_redirect = op
                self.pos += len(op)
                return True
        for op in _OPERATORS:
            if text.startswith(op, pos):
                self.pos += len(op)
                if op in _CASE_ARMS:
                    self.current.why("a case statement")
                self._finish(pos)
                self.current = _Building(self.pos)
                return True
        return False

    def _finish(self, end: int) -> None:
        b = self.current
        if b.pending_redirect is not None:
            b.why(f"redirection {b.pending_redirect!r} without a target")
        text = self.text[b.start : end].strip()
        if b.words or b.assignments or b.redirects or b.unknown is not None:
            self.commands.append(
                SimpleCommand(
                    text,
                    tuple(b.words),
                    tuple(b.assignments),
                    tuple(b.redirects),
                    b.unknown,
                    self.depth > 0,
                )
            )

    def _inner(self, text: str) -> None:
        """Commands written inside ``$(...)``, backquotes or ``<(...)``: they run too."""
        if self.depth + 1 > MAX_DEPTH:
            self.current.why(f"command substitutions nested deeper than {MAX_DEPTH}")
            return
        self.nested += _Scanner(text, self.depth + 1).run()

    def _add(self, word: Word) -> None:
        b = self.current
        if b.pending_redirect is not None:
            b.redirects.append((b.pending_redirect, word))
            b.pending_redirect = None
        elif not b.words and _is_assignment(word.literal):
            b.assignments.append(word.value)
        else:
            b.words.append(word)

    # -- words -------------------------------------------------------------------------------

    def _word(self) -> None:
        text = self.text
        start = self.pos
        out: list[str] = []
        expanded = False
        while self.pos < len(text):
            c = text[self.pos]
            if c in _BLANK or c == "\n":
                break
            if c in ";|&<>()":
                break
            if c == "'":
                end = text.find("'", self.pos + 1)
                if end == -1:
                    raise _Unreadable("an unterminated single quote")
                out.append(text[self.pos + 1 : end])
                self.pos = end + 1
            elif c == '"':
                out.append(self._double_quoted())
            elif c == "\\":
                out.append(text[self.pos + 1 : self.pos + 2])
                self.pos += 2
            elif c == "`":
                out.append(self._backquoted())
                expanded = True
            elif c == "$":
                out.append(self._dollar())
                expanded = True
            else:
                if (
                    c in "*?"
                    or (c == "[" and "]" in _rest_of_word(text, self.pos))
                    or (c == "{" and _brace_expansion(text, self.pos))
                ):
                    expanded = True
                out.append(c)
                self.pos += 1
        literal = text[start : self.pos]
        if self.pos < len(text) and text[self.pos] in "<>" and literal.isdigit():
            return  # the IO number of the redirection that follows ("2>")
        self._add(Word("".join(out), expanded, literal))

    def _double_quoted(self) -> str:
        text = self.text
        self.pos += 1
        out: list[str] = []
        while True:
            if self.pos >= len(text):
                raise _Unreadable("an unterminated double quote")
            c = text[self.pos]
            if c == '"':
                self.pos += 1
                return "".join(out)
            if c == "\\" and text[self.pos + 1 : self.pos + 2] in ("$", "`", '"', "\\", "\n"):
                if text[self.pos + 1] != "\n":
                    out.append(text[self.pos + 1])
                self.pos += 2
            elif c == "`":
                out.append(self._backquoted())
            elif c == "$":
                out.append(self._dollar())
            else:
                out.append(c)
                self.pos += 1

    def _backquoted(self) -> str:
        text, start = self.text, self.pos
        pos = start + 1
        inner: list[str] = []
        while pos < len(text):
            c = text[pos]
            if c == "\\" and text[pos + 1 : pos + 2] in ("`", "\\", "$"):
                inner.append(text[pos + 1])
                pos += 2
                continue
            if c == "`":
                self._inner("".join(inner))
                self.pos = pos + 1
                return text[start : pos + 1]
            inner.append(c)
            pos += 1
        raise _Unreadable("an unterminated backquote")

    def _dollar(self) -> str:
        """An expansion starting at ``$``, kept as written (``$(...)``: its commands are
        read too)."""
        text, start = self.text, self.pos
        nxt = text[start + 1 : start + 2]
        if text.startswith("$((", start):
            self.current.why("arithmetic expansion")
            end = self._closing(start + 3, "(", ")")
            end = self._closing(end + 1, "(", ")") if text[end + 1 : end + 2] != ")" else end + 1
        elif nxt == "(":
            end = self._closing(start + 2, "(", ")")
            self._inner(text[start + 2 : end])
        elif nxt == "{":
            end = self._closing(start + 2, "{", "}")
            if "$(" in text[start:end] or "`" in text[start:end]:
                self.current.why("a command substitution inside ${...}")
        elif nxt in ("'", '"'):
            self.current.why(f"${nxt}...{nxt} quoting")
            end = text.find(nxt, start + 2)
            if end == -1:
                raise _Unreadable(f"an unterminated ${nxt} quote")
        else:
            end = start
            while end + 1 < len(text) and (text[end + 1].isalnum() or text[end + 1] == "_"):
                end += 1
            if end == start and text[end + 1 : end + 2] in tuple("@*#?-$!0123456789"):
                end += 1
        self.pos = end + 1
        return text[start : end + 1]

    def _closing(self, pos: int, open_: str, close: str) -> int:
        """The index of the ``close`` that balances an ``open_`` before ``pos``."""
        depth = 1
        text = self.text
        while pos < len(text):
            c = text[pos]
            if c == "\\":
                pos += 2
                continue
            if c in "'\"":
                end = text.find(c, pos + 1)
                if end == -1:
                    raise _Unreadable("an unterminated quote")
                pos = end + 1
                continue
            if c == open_:
                depth += 1
            elif c == close:
                depth -= 1
                if depth == 0:
                    return pos
            pos += 1
        raise _Unreadable(f"an unterminated {open_!r}")


def _is_assignment(literal: str) -> bool:
    name, eq, _ = literal.partition("=")
    return bool(eq) and name.isidentifier() and name.isascii()


def _rest_of_word(text: str, pos: int) -> str:
    end = pos
    while end < len(text) and text[end] not in _WORD_END:
        end += 1
    return text[pos:end]


def _brace_expansion(text: str, pos: int) -> bool:
    """An unquoted ``{a,b}`` or ``{1..3}`` (bash expands it into several words)."""
    inner = _rest_of_word(text, pos)
    close = inner.find("}")
    return close != -1 and ("," in inner[:close] or ".." in inner[:close])


def _without_keywords(cmd: SimpleCommand) -> SimpleCommand | None:
    """The command once the reserved words that run nothing are taken off its front
    (``if a`` is ``a``); None when nothing of it runs (``fi``, ``for x in a b``)."""
    if cmd.unknown is not None or not cmd.words:
        return cmd
    words = list(cmd.words)
    while words and _reserved(words[0]) in _PREFIX_KEYWORDS:
        words.pop(0)
    first = _reserved(words[0]) if words else None
    if first == "case":
        return SimpleCommand(
            cmd.text, cmd.words, cmd.assignments, cmd.redirects, "a case statement", cmd.nested
        )
    if first in _CLOSING_KEYWORDS or first in _HEADER_KEYWORDS:
        words = []
    if not words and not cmd.redirects and not cmd.assignments:
        return None
    return SimpleCommand(cmd.text, tuple(words), cmd.assignments, cmd.redirects, None, cmd.nested)


def _reserved(word: Word) -> str | None:
    """The reserved word ``word`` is, if it is one (unquoted, as written)."""
    return word.value if word.literal == word.value and not word.expanded else None


def split_commands(text: str) -> tuple[list[SimpleCommand], str | None]:
    """The commands written in ``text`` and None; or ([], why) when the line cannot be read
    at all (unbalanced quotes, too long, a NUL character). See the module docstring."""
    if len(text) > MAX_COMMAND_LINE:
        return [], f"the command line is longer than {MAX_COMMAND_LINE} characters"
    if "\0" in text:
        return [], "the command line holds a NUL character"
    try:
        commands = _Scanner(text, 0).run()
    except _Unreadable as exc:
        return [], f"the shell would refuse it: {exc}"
    out = []
    for cmd in commands:
        kept = _without_keywords(cmd)
        if kept is not None:
            out.append(kept)
    return out, None
