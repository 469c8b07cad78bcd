"""MySQL statement text as the server reads it: statements split at top-level semicolons,
comments dropped, executable comments (``/*! ... */``, MariaDB's ``/*M! ... */``) opened.

Where this sits: :func:`appliance.policy.classify_mysql` runs this first, so that what the
parser sees is what the server will run: the server executes the inside of ``/*!50100
... */`` as ordinary text (mariadb-dump writes many), so a parser that skipped it as a
comment would miss a statement. Backslashes escape in quoted strings unless the session's
sql_mode has NO_BACKSLASH_ESCAPES (``backslash_escapes=False``); the caller decides what a
text with a backslash means when it cannot be sure of the mode.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Split:
    """``statements``: each statement's text as the server runs it (comments dropped,
    executable comments opened, stripped, empty ones left out); ``error``: why the text
    cannot be split safely (an unterminated quote or comment), else None."""

    statements: tuple[str, ...]
    error: str | None = None


def split_statements(text: str, *, backslash_escapes: bool = True) -> Split:
    out: list[str] = []
    cur: list[str] = []
    i, n = 0, len(text)
    in_exec = False  # inside /*! ... */: its closing */ is dropped, the rest is text
    while i < n:
        c = text[i]
        if c in "'\"`":
            j = i + 1
            while True:
                if j >= n:
                    return Split(tuple(out), f"unterminated {c} quote")
                d = text[j]
                if d == "\\" and backslash_escapes and c != "`":
                    j += 2
                    continue
                if d == c:
                    if j + 1 < n and text[j + 1] == c:  # a doubled quote stands for itself
                        j += 2
                        continue
                    break
                j += 1
            cur.append(text[i : j + 1])
            i = j + 1
            continue
        if c == "#" or (
            c == "-" and text.startswith("--", i) and (i + 2 >= n or text[i + 2] in " \t\r\n\f\v")
        ):
            end = text.find("\n", i)
            i = n if end < 0 else end + 1
            cur.append(" ")
            continue
        if c == "/" and text.startswith("/*", i):
            if text.startswith("/*!", i) or text.startswith("/*M!", i):
                if in_exec:
                    return Split(tuple(out), "nested executable comment")
                j = i + (3 if text[i + 2] == "!" else 4)
                while j < n and text[j].isdigit():
                    j += 1
                in_exec = True
                cur.append(" ")
                i = j
                continue
            end = text.find("*/", i + 2)
            if end < 0:
                return Split(tuple(out), "unterminated comment")
            cur.append(" ")
            i = end + 2
            continue
        if c == "*" and in_exec and text.startswith("*/", i):
            in_exec = False
            cur.append(" ")
            i += 2
            continue
        if c == ";":
            stmt = "".join(cur).strip()
            if stmt:
                out.append(stmt)
            cur = []
            i += 1
            continue
        cur.append(c)
        i += 1
    if in_exec:
        return Split(tuple(out), "unterminated executable comment")
    stmt = "".join(cur).strip()
    if stmt:
        out.append(stmt)
    return Split(tuple(out))


def strip_strings(text: str) -> str:
    """``text`` with the inside of every quoted string and identifier blanked (for keyword
    searches that must not be fooled by a quoted ``INTO OUTFILE``)."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in "'\"`":
            j = i + 1
            while j < n and text[j] != c:
                j += 2 if text[j] == "\\" else 1
            out.append(c + " " * max(0, min(j, n) - i - 1) + c)
            i = j + 1
            continue
        out.append(c)
        i += 1
    return "".join(out)
