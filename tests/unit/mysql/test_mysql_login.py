"""Both sides of a MySQL login, as state machines: the job logs in to the appliance with any
password (``JobConnection``), and the appliance logs in upstream as the service account
(``UpstreamConnection``), the secret going only into the scramble; a broken peer raises the
protocol layer's own errors (``_errors``)."""

from __future__ import annotations

import pytest

from appliance.protocols.mysql import auth
from appliance.protocols.mysql._errors import LocalProtocolError, PeerProtocolError
from appliance.protocols.mysql._wire import Framer, packet
from appliance.protocols.mysql.constants import Cap
from appliance.protocols.mysql.job import JobConnection, JobHello, JobState, SSLRequested
from appliance.protocols.mysql.messages import Err, Handshake, HandshakeResponse, Ok, SSLRequest
from appliance.protocols.mysql.upstream import (
    Authenticated,
    AuthenticationFailed,
    UpstreamConnection,
)

CAPS = int(
    Cap.LONG_PASSWORD | Cap.PROTOCOL_41 | Cap.SECURE_CONNECTION | Cap.PLUGIN_AUTH
    | Cap.TRANSACTIONS | Cap.MULTI_STATEMENTS | Cap.MULTI_RESULTS
)  # fmt: skip
SCRAMBLE = bytes(range(1, 21))
HANDSHAKE = Handshake("10.11.0-appliance", 7, SCRAMBLE, CAPS, 45, 2, auth.NATIVE)


def _payloads(data: bytes, side: str) -> list[tuple[int, bytes]]:
    return list(Framer(side, 1 << 24).feed(data))  # type: ignore[arg-type]


def test_the_job_logs_in_with_any_password() -> None:
    job = JobConnection()
    job.greet(HANDSHAKE)
    ((seq, greeting),) = _payloads(job.data_to_send(), "server")
    assert seq == 0 and Handshake.decode(greeting) == HANDSHAKE
    hello = HandshakeResponse(CAPS, 1 << 24, 45, "anyone", b"not checked", "app", auth.NATIVE, {})
    (event,) = job.receive_data(packet(1, hello.encode()))
    assert isinstance(event, JobHello) and event.response.user == "anyone"
    job.accept(Ok(0, 0, 2, 0))
    ((seq, ok),) = _payloads(job.data_to_send(), "server")
    assert seq == 2 and ok[:1] == b"\x00" and job.state is JobState.OPEN


def test_the_job_asking_for_tls_not_offered_is_its_fault() -> None:
    job = JobConnection()
    job.greet(HANDSHAKE)
    with pytest.raises(PeerProtocolError) as caught:
        job.receive_data(packet(1, SSLRequest(CAPS | int(Cap.SSL), 1 << 24, 45).encode()))
    assert caught.value.side == "client"


def test_tls_offered_is_an_event_then_the_login_follows() -> None:
    job = JobConnection()
    job.greet(Handshake("10.11.0", 7, SCRAMBLE, CAPS | int(Cap.SSL), 45, 2, auth.NATIVE))
    (event,) = job.receive_data(packet(1, SSLRequest(CAPS | int(Cap.SSL), 1 << 24, 45).encode()))
    assert isinstance(event, SSLRequested)
    job.tls_established()
    with pytest.raises(LocalProtocolError):
        job.tls_established()


@pytest.mark.parametrize(
    "after",
    [
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a ClientHello's first bytes
        packet(2, b"\x03looks like a packet"),  # whatever it looks like, it is TLS
    ],
)
def test_what_follows_the_ssl_request_in_the_same_read_is_handed_to_tls(after: bytes) -> None:
    """A client does not wait for an answer to its SSL request: its ClientHello may be read
    with it, and must reach TLS (the shell's StartTLS ``early``), not the login framer."""
    job = JobConnection()
    job.greet(Handshake("10.11.0", 7, SCRAMBLE, CAPS | int(Cap.SSL), 45, 2, auth.NATIVE))
    request = packet(1, SSLRequest(CAPS | int(Cap.SSL), 1 << 24, 45).encode())
    (event,) = job.receive_data(request + after)
    assert event == SSLRequested(after)
    job.tls_established()
    hello = HandshakeResponse(CAPS, 1 << 24, 45, "anyone", b"", "app", auth.NATIVE, {})
    (hello_event,) = job.receive_data(packet(2, hello.encode()))
    assert isinstance(hello_event, JobHello)


def test_the_appliance_logs_in_upstream_with_the_secret_in_the_scramble_only() -> None:
    up = UpstreamConnection(
        user="app", password="s3cret", database="app", capabilities=CAPS, charset=45, tls="disable"
    )
    assert up.receive_data(packet(0, HANDSHAKE.encode())) == []
    ((seq, response),) = _payloads(up.data_to_send(), "client")
    sent = HandshakeResponse.decode(response)
    assert seq == 1 and sent.user == "app"
    assert sent.auth_response == auth.native_password("s3cret", SCRAMBLE)
    assert b"s3cret" not in response
    (event,) = up.receive_data(packet(2, Ok(0, 0, 2, 0).encode(up.capabilities)))
    assert isinstance(event, Authenticated)


def test_a_refused_login_is_an_event_and_tls_required_is_enforced() -> None:
    up = UpstreamConnection(
        user="app", password="x", database=None, capabilities=CAPS, charset=45, tls="disable"
    )
    up.receive_data(packet(0, HANDSHAKE.encode()))
    up.data_to_send()
    (event,) = up.receive_data(packet(2, Err(1045, "28000", "Access denied").encode()))
    assert isinstance(event, AuthenticationFailed) and event.error.code == 1045
    strict = UpstreamConnection(
        user="app", password="x", database=None, capabilities=CAPS, charset=45, tls="require"
    )
    with pytest.raises(Exception, match="TLS is required"):
        strict.receive_data(packet(0, HANDSHAKE.encode()))
