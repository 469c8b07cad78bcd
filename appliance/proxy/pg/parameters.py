"""Which of the job's startup parameters reach the server (sans-IO).

A StartupMessage carries run-time settings besides ``user`` and ``database``: any server
setting by name, the ``options`` string (command-line switches such as ``-c name=value``),
and ``replication``. Passed through unchecked they let a job undo what the database's
owner set for the service account (``ALTER ROLE ci SET default_transaction_read_only =
on``, ``-c role=admin``), open a replication connection that streams the whole database
past the statement policy, or pick a client encoding such as GBK or SJIS in which the
server reads a statement differently from the text the policy classified.

So the appliance forwards only settings it knows to be harmless to its decisions
(:data:`SAFE`, plus any a target allows in its config), turns the ``-c name=value`` and
``--name=value`` switches of ``options`` into plain parameters checked the same way, and
refuses the session (:class:`ParameterRefused`) for anything else, naming the parameter.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from appliance.protocols.postgres.encodings import ascii_safe

# Settings drivers send at startup (libpq, JDBC, psycopg, asyncpg, node-postgres, Npgsql)
# and settings a job may choose for itself without changing what it is allowed to do.
SAFE = frozenset(
    {
        "application_name",
        "client_encoding",  # not the ASCII-unsafe ones, see below
        "datestyle",
        "intervalstyle",
        "timezone",
        "extra_float_digits",
        "bytea_output",
        "standard_conforming_strings",
        "client_min_messages",
        "search_path",
        "statement_timeout",
        "lock_timeout",
        "idle_in_transaction_session_timeout",
        "idle_session_timeout",
        "default_transaction_isolation",
        "array_nulls",
        "xmloption",
        "jit",
    }
)
# Never forwarded: the appliance speaks for itself here.
_OWN = frozenset({"user", "database"})


class ParameterRefused(Exception):
    """A startup parameter the appliance does not forward; the session is refused."""

    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        self.reason = reason
        super().__init__(f"startup parameter {name!r}: {reason}")


def split_options(options: str) -> list[str]:
    """The switches of an ``options`` string: separated by spaces, ``\\`` escapes the next
    character (as the server reads it)."""
    out: list[str] = []
    word: list[str] = []
    escaped = False
    for ch in options:
        if escaped:
            word.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch.isspace():
            if word:
                out.append("".join(word))
                word = []
        else:
            word.append(ch)
    if escaped:
        word.append("\\")
    if word:
        out.append("".join(word))
    return out


def options_settings(options: str) -> list[tuple[str, str]]:
    """``(name, value)`` of each ``-c name=value``, ``-cname=value`` or ``--name=value`` in
    ``options``; any other switch raises ParameterRefused."""
    words = split_options(options)
    settings: list[tuple[str, str]] = []
    i = 0
    while i < len(words):
        word = words[i]
        if word == "-c":
            if i + 1 >= len(words):
                raise ParameterRefused("options", "-c without a setting")
            setting = words[i + 1]
            i += 2
        elif word.startswith("-c") or word.startswith("--"):
            setting = word[2:]
            i += 1
        else:
            raise ParameterRefused(
                "options", f"switch {word!r} is not forwarded (only -c name=value)"
            )
        name, eq, value = setting.partition("=")
        if not eq or not name:
            raise ParameterRefused("options", f"{setting!r} is not name=value")
        settings.append((name.replace("-", "_"), value))
    return settings


def upstream_parameters(
    parameters: Mapping[str, str], *, allowed: Iterable[str] = ()
) -> dict[str, str]:
    """The parameters to send upstream for the job's ``parameters`` (``_pq_.*`` protocol
    options, ``user`` and ``database`` excluded: the appliance sets those itself). Raises
    ParameterRefused for a parameter it will not forward."""
    ok = SAFE | {a.lower() for a in allowed}
    out: dict[str, str] = {}
    pairs: list[tuple[str, str]] = []
    for name, value in parameters.items():
        if name in _OWN or name.startswith("_pq_."):
            continue
        if name == "options":
            pairs.extend(options_settings(value))
        else:
            pairs.append((name, value))
    for name, value in pairs:
        key = name.lower()
        if key == "replication":
            raise ParameterRefused(
                name, "replication connections bypass statement policy and are refused"
            )
        if key not in ok:
            raise ParameterRefused(
                name,
                "not a setting the appliance forwards (a target can allow it with "
                "startup_parameters)",
            )
        if key == "client_encoding" and not ascii_safe(value):
            raise ParameterRefused(
                name,
                f"client encoding {value!r} is refused: the server would read statements "
                "otherwise than the appliance",
            )
        out[name] = value
    return out


__all__ = [
    "SAFE",
    "ParameterRefused",
    "options_settings",
    "split_options",
    "upstream_parameters",
]
