"""Mapping an original destination to a target, and the upstream socket."""

from __future__ import annotations

import os
import socket

import pytest

from appliance.capture import (
    CaptureError,
    HostResolver,
    mark_socket,
    normalise_ip,
    target_for,
    upstream_socket,
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


def test_an_upstream_socket_without_capture_is_unmarked_non_blocking_and_without_nagle() -> None:
    for family in (socket.AF_INET, socket.AF_INET6):
        with upstream_socket(family, 0) as s:
            assert s.family == family and s.type == socket.SOCK_STREAM
            assert not s.getblocking()
            assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
            assert s.getsockopt(socket.SOL_SOCKET, 36) == 0


def test_an_upstream_socket_carries_the_mark_or_says_why_not() -> None:
    if os.geteuid() == 0:  # make test runs as root: the kernel lets us set it
        with upstream_socket(socket.AF_INET, 0x4150) as s:
            assert s.getsockopt(socket.SOL_SOCKET, 36) == 0x4150
    else:
        with pytest.raises(CaptureError, match="CAP_NET_ADMIN"):
            upstream_socket(socket.AF_INET, 0x4150)


class _Refusing:
    def setsockopt(self, level: int, option: int, value: int) -> None:
        raise PermissionError(1, "Operation not permitted")


def test_mark_socket_says_why_it_cannot() -> None:
    with pytest.raises(CaptureError, match="CAP_NET_ADMIN"):
        mark_socket(_Refusing(), 0x4150)  # type: ignore[arg-type]
