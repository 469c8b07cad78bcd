"""The built-in functions a fast-path FunctionCall ('F') names by OID, and how to show one.

A FunctionCall carries a function OID, not a name. Clients use it for the large-object API
(libpq's ``lo_*``: psql's ``\\lo_import``, ``\\lo_export``, ``\\lo_unlink``): libpq looks these
OIDs up in ``pg_catalog.pg_proc`` once per connection and calls them by OID. Built-in OIDs
are fixed in PostgreSQL's ``pg_proc.dat`` and the same in every version that has the
function (a lab test checks this table against a real server's catalog). Any other OID is a
function created in the database (OID >= 16384): its name is not known here.
"""

from __future__ import annotations

__all__ = ["FASTPATH_FUNCTIONS", "function_name", "statement_text"]

# pg_proc.dat: the large-object functions libpq's fe-lobj.c calls through the fast path.
FASTPATH_FUNCTIONS: dict[int, str] = {
    715: "lo_create",
    952: "lo_open",
    953: "lo_close",
    954: "loread",
    955: "lowrite",
    956: "lo_lseek",
    957: "lo_creat",
    958: "lo_tell",
    964: "lo_unlink",
    1004: "lo_truncate",
    3170: "lo_lseek64",
    3171: "lo_tell64",
    3172: "lo_truncate64",
}


def function_name(oid: int) -> str | None:
    """The name of the built-in function ``oid`` (``pg_catalog.`` implied), or None."""
    return FASTPATH_FUNCTIONS.get(oid)


def statement_text(oid: int) -> str:
    """What the ledger shows for a fast-path call: a comment naming the function (there is
    no SQL text), e.g. ``-- fast-path function call: lo_open (oid 952)``."""
    name = function_name(oid)
    return f"-- fast-path function call: {name or 'unknown function'} (oid {oid})"
