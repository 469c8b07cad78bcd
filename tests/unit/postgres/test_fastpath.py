"""Fast-path function calls are shown and classified by the function they name."""

from __future__ import annotations

from appliance.protocols.postgres.fastpath import FASTPATH_FUNCTIONS, function_name, statement_text


def test_large_object_functions_are_named() -> None:
    assert function_name(952) == "lo_open" and function_name(964) == "lo_unlink"
    assert function_name(16390) is None
    assert set(FASTPATH_FUNCTIONS.values()) >= {"lo_creat", "loread", "lowrite", "lo_close"}


def test_statement_text_names_the_function_and_its_oid() -> None:
    assert statement_text(955) == "-- fast-path function call: lowrite (oid 955)"
    assert statement_text(16390) == "-- fast-path function call: unknown function (oid 16390)"
