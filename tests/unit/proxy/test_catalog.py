"""The table-name lookup for column rules: its query and the reading of its answer."""

from __future__ import annotations

import fnmatch
import re

import pytest

from appliance.protocols.postgres import (
    BACKEND_TYPES,
    Framer,
    Limits,
    Messages,
    PeerProtocolError,
)
from appliance.protocols.postgres.messages import (
    CommandComplete,
    DataRow,
    FieldDescription,
    ReadyForQuery,
    RowDescription,
    error_response,
    notice_response,
)
from appliance.proxy.pg.catalog import CatalogReader, catalog_query, glob_to_regex

NAMES = ["name", "Name", "full_name", "names", "ssn", "card_number", "c", "a.b", "x[1]", "q?"]


@pytest.mark.parametrize(
    "glob", ["name", "*name", "card_*", "?", "n[a-z]me", "n[!x]me", "a.b", "x[1]", "[", "q?"]
)
def test_globs_become_regexes_that_match_what_fnmatch_matches(glob: str) -> None:
    # PostgreSQL's ~* is case-insensitive like the config's globs; Python's re reads these
    # simple regexes the same way.
    regex = re.compile(glob_to_regex(glob), re.IGNORECASE)
    for name in NAMES:
        expected = re.fullmatch(fnmatch.translate(glob), name, re.IGNORECASE) is not None
        assert (regex.search(name) is not None) == expected, (glob, name)


def test_no_table_scoped_rule_no_query() -> None:
    assert catalog_query([]) is None
    query = catalog_query(["name", "o'clock", "a.b"])
    assert query is not None
    assert b"E'^name$'" in query and b"E'^o''clock$'" in query and b"E'^a\\\\.b$'" in query


def messages(*frames: bytes) -> Messages:
    framer = Framer(Limits().caps(BACKEND_TYPES, frontend=False), side="server")
    chunk, found = framer.feed(b"".join(frames))
    return Messages(chunk, found)


def row(oid: str, schema: str, name: str) -> bytes:
    return DataRow((oid.encode(), schema.encode(), name.encode())).encode()


def test_the_answer_becomes_the_map() -> None:
    reader = CatalogReader()
    desc = RowDescription(tuple(FieldDescription(n) for n in ("oid", "nspname", "relname")))
    assert reader.feed(messages(desc.encode(), row("16384", "public", "people"))) == b""
    assert not reader.done
    reader.feed(messages(row("16390", "shop", "orders"), CommandComplete("SELECT 2").encode(),
                         ReadyForQuery("I").encode()))  # fmt: skip
    assert reader.done and reader.error is None
    assert reader.tables == {16384: "public.people", 16390: "shop.orders"}


def test_a_refusal_leaves_an_empty_map_and_says_why() -> None:
    reader = CatalogReader()
    reader.feed(
        messages(
            notice_response("WARNING", "01000", "a notice first"),
            error_response("ERROR", "42501", "permission denied for table pg_class"),
            ReadyForQuery("I").encode(),
        )
    )
    assert reader.done and reader.tables == {}
    assert reader.error == "42501: permission denied for table pg_class"


def test_anything_else_is_the_server_s_fault() -> None:
    reader = CatalogReader()
    with pytest.raises(PeerProtocolError):
        reader.feed(messages(DataRow((b"1", b"x")).encode()))
    reader = CatalogReader()
    with pytest.raises(PeerProtocolError):
        reader.feed(messages(DataRow((b"not-an-oid", b"s", b"t")).encode()))
    reader = CatalogReader()
    leftover = reader.feed(messages(ReadyForQuery("I").encode(), ReadyForQuery("I").encode()))
    assert reader.done and leftover == ReadyForQuery("I").encode()
