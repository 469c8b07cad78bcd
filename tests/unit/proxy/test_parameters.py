"""Startup parameters: only safe settings reach the server; the rest refuse the session."""

from __future__ import annotations

import pytest

from appliance.protocols.postgres.encodings import ascii_safe
from appliance.proxy.pg.parameters import (
    ParameterRefused,
    options_settings,
    split_options,
    upstream_parameters,
)


def test_what_drivers_send_is_forwarded_and_the_appliance_s_own_are_dropped() -> None:
    jdbc = {
        "user": "ci",
        "database": "app",
        "client_encoding": "UTF8",
        "DateStyle": "ISO",
        "TimeZone": "UTC",
        "extra_float_digits": "3",
        "application_name": "PostgreSQL JDBC Driver",
        "_pq_.some_option": "x",
    }
    assert upstream_parameters(jdbc) == {
        "client_encoding": "UTF8",
        "DateStyle": "ISO",
        "TimeZone": "UTC",
        "extra_float_digits": "3",
        "application_name": "PostgreSQL JDBC Driver",
    }


def test_options_become_checked_parameters() -> None:
    got = upstream_parameters(
        {"options": r"-c statement_timeout=5s -csearch_path=app,public --lock-timeout=1s"}
    )
    assert got == {"statement_timeout": "5s", "search_path": "app,public", "lock_timeout": "1s"}
    assert options_settings(r"-c application_name=my\ job") == [("application_name", "my job")]
    assert split_options(r"a\\b  c\ d ") == [r"a\b", "c d"]


@pytest.mark.parametrize(
    ("parameters", "name", "why"),
    [
        ({"default_transaction_read_only": "off"}, "default_transaction_read_only", "forwards"),
        ({"options": "-c role=admin"}, "role", "forwards"),
        ({"options": "-c session_authorization=postgres"}, "session_authorization", "forwards"),
        ({"options": "-d 5"}, "options", "switch '-d'"),
        ({"options": "-F"}, "options", "switch '-F'"),
        ({"options": "-c"}, "options", "without a setting"),
        ({"options": "-c statement_timeout"}, "options", "not name=value"),
        ({"replication": "database"}, "replication", "replication connections"),
        ({"replication": "true"}, "replication", "replication connections"),
        ({"client_encoding": "SJIS"}, "client_encoding", "read statements otherwise"),
        ({"client_encoding": "'Shift_JIS'"}, "client_encoding", "read statements otherwise"),
        ({"options": "-c client_encoding=GBK"}, "client_encoding", "otherwise"),
    ],
)
def test_anything_else_refuses_the_session_naming_the_parameter(
    parameters: dict[str, str], name: str, why: str
) -> None:
    with pytest.raises(ParameterRefused) as refused:
        upstream_parameters(parameters)
    assert refused.value.name == name
    assert why in refused.value.reason
    assert repr(name) in str(refused.value)


def test_a_target_can_allow_more_settings_but_never_replication() -> None:
    allowed = ("work_mem", "Role")
    assert upstream_parameters({"options": "-c work_mem=64MB"}, allowed=allowed) == {
        "work_mem": "64MB"
    }
    assert upstream_parameters({"role": "reporting"}, allowed=allowed) == {"role": "reporting"}
    with pytest.raises(ParameterRefused, match="replication"):
        upstream_parameters({"replication": "database"}, allowed=("replication",))


def test_ascii_safe_encodings_pass_as_drivers_spell_them() -> None:
    ok = ("UTF8", "utf-8", "Unicode", "'utf-8'", "SQL_ASCII", "LATIN1", "WIN1252", "EUC_JP")
    for name in ok:
        assert upstream_parameters({"client_encoding": name}) == {"client_encoding": name}
    for name in ("SJIS", "Shift_JIS", "win932", "BIG5", "GBK", "cp936", "UHC", "GB18030"):
        assert not ascii_safe(name), name
    assert all(ascii_safe(n) for n in ok)
