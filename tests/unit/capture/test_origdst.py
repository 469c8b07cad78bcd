"""Mapping an original destination to a target, and the upstream socket mark."""

from __future__ import annotations

import socket

import pytest

from appliance.capture import (
    CaptureError,
    HostResolver,
    mark_socket,
    normalise_ip,
    target_for,
    upstream_socket_options,
)
from appliance.config import parse_config

CONFIG = parse_config("""\
targets:
  - name: main
    protocol: postgres
    addresses: [198.18.0.2:5432, "[fd00:a9e:0::2]:5432", 10.9.0.0/16:6432]
    accounts: [{name: ci, user: app, secret: {file: /x}}]
  - name: named
    protocol: postgres
    addresses: [db.lab.test:5432]
    accounts: [{name: ci, user: app, secret: {file: /x}}]
""")


@pytest.mark.parametrize(
    ("ip", "port", "expected"),
    [
        ("198.18.0.2", 5432, "main"),
        ("::ffff:198.18.0.2", 5432, "main"),  # a v6 socket to the IPv4-mapped address
        ("fd00:a9e::2", 5432, "main"),
        ("fd00:a9e:0:0::2", 5432, "main"),
        ("10.9.200.7", 6432, "main"),
        ("::ffff:10.9.200.7", 6432, "main"),
        ("198.18.0.2", 5433, None),  # protected address, other port
        ("198.18.0.3", 5432, None),
        ("10.9.200.7", 5432, None),
        ("not an ip", 5432, None),
    ],
)
def test_target_for(ip: str, port: int, expected: str | None) -> None:
    found = target_for(CONFIG, ip, port)
    assert (found.name if found else None) == expected


def test_host_names_match_only_through_the_resolver_given() -> None:
    assert target_for(CONFIG, "198.18.1.2", 5432) is None  # no blocking lookup by default
    resolver = HostResolver({"db.lab.test": ["198.18.1.2"]}.__getitem__)
    found = target_for(CONFIG, "::ffff:198.18.1.2", 5432, resolver=resolver)
    assert found is not None and found.name == "named"


def test_normalise_ip() -> None:
    assert normalise_ip("::ffff:198.18.0.2") == "198.18.0.2"
    assert normalise_ip("FD00:A9E:0::2") == "fd00:a9e::2"
    assert normalise_ip("fe80::1%eth0") == "fe80::1"
    with pytest.raises(ValueError):
        normalise_ip("db.lab.test")


def test_upstream_mark_option() -> None:
    assert upstream_socket_options(0x4150) == [(socket.SOL_SOCKET, 36, 0x4150)]


class _Refusing:
    def setsockopt(self, level: int, option: int, value: int) -> None:
        raise PermissionError(1, "Operation not permitted")


def test_mark_socket_says_why_it_cannot() -> None:
    with pytest.raises(CaptureError, match="CAP_NET_ADMIN"):
        mark_socket(_Refusing(), 0x4150)  # type: ignore[arg-type]
