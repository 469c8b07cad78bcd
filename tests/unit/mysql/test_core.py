"""The MySQL session core driven without sockets: a scripted server, a job's login with no
password, the settings probe, a query relayed, a denial, and damaged input from either
side ending only that session with an ERR (fuzzed, whole and byte by byte)."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.config import Account, Address, SecretRef, Target, UpstreamTLS
from appliance.protocols.mysql import Framer, auth, packet
from appliance.protocols.mysql.constants import Cap, Status, Type
from appliance.protocols.mysql.messages import (
    ColumnDef,
    Err,
    Handshake,
    HandshakeResponse,
    Ok,
    encode_text_row,
)
from appliance.proxy.commands import ConnectionInfo, End, OpenUpstream, UpstreamOpened
from appliance.proxy.mysql.core import MySQLSession, State, shared
from appliance.proxy.services import SessionServices
from tests.unit.policy.helpers import rules
from tests.unit.proxy.test_pg_core import FakeLedger

UPSTREAM = ("10.0.0.5", 3306)
SECRET = "s3cret"
SERVER_CAPS = int(
    Cap.LONG_PASSWORD | Cap.PROTOCOL_41 | Cap.SECURE_CONNECTION | Cap.PLUGIN_AUTH | Cap.PLUGIN_AUTH_LENENC_DATA
    | Cap.CONNECT_WITH_DB | Cap.CONNECT_ATTRS | Cap.MULTI_STATEMENTS | Cap.MULTI_RESULTS | Cap.PS_MULTI_RESULTS
    | Cap.TRANSACTIONS | Cap.DEPRECATE_EOF | Cap.SESSION_TRACK
)  # fmt: skip
SCRAMBLE = bytes(range(1, 21))


def _target() -> Target:
    return Target(
        "db",
        "mysql",
        (Address("ip", *UPSTREAM),),
        (Account("ci", "app", SecretRef(file=Path("/x"))),),
        tls=UpstreamTLS("disable"),
    )


def _policy() -> Any:
    return rules(
        "- {name: no-drop, action: deny, match: {classes: [drop]}}\n"
        "- {name: rest, action: allow, match: {classes: [select, set]}}\n"
    )


class Drive:
    def __init__(self) -> None:
        counter = itertools.count(1)
        clock = itertools.count()
        self.ledger = FakeLedger()
        services = SessionServices(
            ledger=self.ledger,  # type: ignore[arg-type]
            policy=_policy(),
            record_rows=False,
            clock=lambda: 1_700_000_000.0,
            monotonic=lambda: float(next(clock)),
            random_bytes=lambda n: next(counter).to_bytes(n, "big"),
            read_secret=lambda ref: SECRET,
        )
        info = ConnectionInfo("s1", ("127.0.0.1", 40000), ("127.0.0.1", 13306), UPSTREAM)
        self.core = MySQLSession(services, shared(lambda n: b"\x07" * n), _target(), info)
        self.to_job = b""
        self.to_up = b""
        self.commands: list[Any] = []

    def out(self, commands: Any) -> None:
        j, u = self.core.take_output()
        self.to_job += j
        self.to_up += u
        self.commands += list(commands)

    def login(self) -> None:
        self.out(self.core.start())
        assert any(isinstance(c, OpenUpstream) for c in self.commands)
        self.out(self.core.handle(UpstreamOpened(("10.0.0.9", 50000))))
        hs = Handshake(
            "10.11.19-MariaDB", 77, SCRAMBLE, SERVER_CAPS, 45, 2, "mysql_native_password"
        )
        self.out(self.core.receive("upstream", packet(0, hs.encode())))
        ((_seq, greeting),) = Framer("server").feed(self.to_job)
        job_hs = Handshake.decode(greeting)
        assert job_hs.connection_id != 77 and not job_hs.capabilities & Cap.COMPRESS
        self.to_job = b""
        hello = HandshakeResponse(
            job_hs.capabilities,
            1 << 24,
            45,
            "anyone",
            b"no-password",
            "app",
            "mysql_native_password",
        )
        self.out(self.core.receive("job", packet(1, hello.encode())))
        ((_, response),) = Framer("client").feed(self.to_up)
        up = HandshakeResponse.decode(response)
        assert up.user == "app" and up.auth_response == auth.native_password(SECRET, SCRAMBLE)
        self.to_up = b""
        self.out(
            self.core.receive(
                "upstream", packet(2, Ok(status=Status.AUTOCOMMIT).encode(SERVER_CAPS))
            )
        )
        assert self.to_up.endswith(b"SELECT @@SESSION.sql_mode, @@SESSION.character_set_client")
        self.to_up = b""
        self.out(
            self.core.receive(
                "upstream", self.result(["sql_mode", "cs"], [[b"STRICT_TRANS_TABLES", b"utf8mb4"]])
            )
        )
        assert self.core.state is State.RELAY
        ((_, ok),) = Framer("server").feed(self.to_job)
        assert ok[0] == 0
        self.to_job = b""

    @staticmethod
    def result(names: list[str], rows: list[list[bytes | None]]) -> bytes:
        seq = 1
        out = [packet(seq, bytes((len(names),)))]
        for name in names:
            seq += 1
            out.append(
                packet(
                    seq,
                    ColumnDef("app", "t", "t", name, name, 45, 100, Type.VAR_STRING, 0, 0).encode(),
                )
            )
        for row in rows:
            seq += 1
            out.append(packet(seq, encode_text_row(row)))
        seq += 1
        out.append(packet(seq, b"\xfe" + Ok(status=Status.AUTOCOMMIT).encode(SERVER_CAPS)[1:]))
        return b"".join(out)


def test_login_query_and_denial() -> None:
    d = Drive()
    d.login()
    d.out(d.core.receive("job", packet(0, b"\x03SELECT name FROM t")))
    assert d.to_up == packet(0, b"\x03SELECT name FROM t")
    answer = d.result(["name"], [[b"Ann"]])
    d.out(d.core.receive("upstream", answer))
    assert d.to_job == answer
    d.to_job = b""
    d.out(d.core.receive("job", packet(0, b"\x03DROP TABLE t")))
    ((seq, err),) = Framer("server").feed(d.to_job)
    assert seq == 1 and Err.decode(err).code == 1142
    assert "policy.decision" in d.ledger.types()


@settings(max_examples=150, deadline=None)
@given(st.binary(min_size=1, max_size=120), st.booleans(), st.booleans())
def test_damaged_input_ends_only_this_session_with_an_err(
    data: bytes, from_job: bool, bytewise: bool
) -> None:
    d = Drive()
    d.login()
    side = "job" if from_job else "upstream"
    if not from_job:
        d.out(d.core.receive("job", packet(0, b"\x03SELECT 1")))
    chunks = [data[i : i + 1] for i in range(len(data))] if bytewise else [data]
    for chunk in chunks:
        d.out(d.core.receive(side, chunk))  # type: ignore[arg-type]
        if d.core.state is State.ENDED:
            break
    if d.core.state is State.ENDED:
        assert any(isinstance(c, End) for c in d.commands)
        assert d.ledger.types()[-1] == "session.end"
        if "protocol.error" in d.ledger.types():
            packets = Framer("server").feed(d.to_job)
            assert packets and packets[-1][1][0] == 0xFF
