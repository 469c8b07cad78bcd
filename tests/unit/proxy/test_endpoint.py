"""A socket's protocol object hands everything to its connection, and its backpressure
stops the reading of the *other* side."""

from __future__ import annotations

from typing import Any

from appliance.proxy._endpoint import HIGH_WATER, Endpoint


class Owner:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def on_data(self, side: str, data: bytes) -> None:
        self.calls.append(("data", side, data))

    def on_eof(self, side: str, lost: str | None) -> None:
        self.calls.append(("eof", side, lost))

    def pause(self, side: str, why: str, paused: bool) -> None:
        self.calls.append(("pause", side, why, paused))


class Transport:
    def set_write_buffer_limits(self, *, high: int) -> None:
        self.high = high


def test_events_are_passed_on_and_backpressure_pauses_the_other_side() -> None:
    owner = Owner()
    job = Endpoint(owner, "job")  # type: ignore[arg-type]
    transport = Transport()
    job.connection_made(transport)  # type: ignore[arg-type]
    assert transport.high == HIGH_WATER and owner.calls == []  # the core started before
    job.data_received(b"x")
    job.pause_writing()
    job.resume_writing()
    job.connection_lost(ConnectionResetError("reset"))
    up = Endpoint(owner, "upstream")  # type: ignore[arg-type]
    up.connection_made(transport)  # type: ignore[arg-type]  # no start for the upstream
    up.pause_writing()
    assert owner.calls == [
        ("data", "job", b"x"),
        ("pause", "upstream", "backpressure", True),
        ("pause", "upstream", "backpressure", False),
        ("eof", "job", "reset"),
        ("pause", "job", "backpressure", True),
    ]
