"""The daemon's shipping loop: stall and resume are recorded, the backlog refuses sessions
when the config says so, the status file says where things are, the final ship retries."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from appliance.bucket import Bucket, BucketSettings, parse_bucket_url
from appliance.config import ShipConfig
from appliance.ledger.errors import LedgerUnavailable
from appliance.ledger.fleet import Shipper
from appliance.ledger.fleet.runner import BacklogGuard, ShipRunner, read_status
from tests.unit.fleet.conftest import URL, grow, make_ledger


class Down:
    """A boto3 client that can be taken down (connection refused) and brought back."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.down = False

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.real, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            if self.down:
                from botocore.exceptions import EndpointConnectionError

                raise EndpointConnectionError(endpoint_url="http://198.19.0.1:7480")
            return attr(*args, **kwargs)

        return call


class Recorder:
    def __init__(self) -> None:
        self.records: list[tuple[str, dict[str, Any]]] = []
        self.sessions = 0

    def __call__(self, type: str, data: dict[str, Any]) -> None:
        self.records.append((type, data))

    def types(self) -> list[str]:
        return [t for t, _ in self.records]


class FakeLedger:
    def __init__(self) -> None:
        self.appended: list[str] = []

    def append(self, type: str, **kwargs: Any) -> None:
        self.appended.append(type)

    def open_blob(self, transform: Any = None) -> Any:
        raise NotImplementedError

    def flush(self, timeout: float | None = None) -> None:
        pass

    def close(self) -> None:
        pass

    @property
    def failed(self) -> BaseException | None:
        return None


def runner(
    d: Path, s3: Any, *, limit: int = 100_000, on: str = "serve"
) -> tuple[ShipRunner, Down, Recorder]:
    client = Down(s3)
    settings = BucketSettings(parse_bucket_url(URL))
    config = ShipConfig(bucket=settings, backlog_limit=limit, on_backlog=on)
    rec = Recorder()
    now = {"t": 1000.0}

    def clock() -> float:
        now["t"] += 1
        return now["t"]

    r = ShipRunner(Shipper(d, Bucket(settings, client=client)), config, record=rec, clock=clock)
    return r, client, rec


def test_the_status_says_starting_before_the_first_round(tmp_path: Path, s3: Any) -> None:
    d = make_ledger(tmp_path / "l", sessions=1)
    first, _, _ = runner(d, s3)
    assert first.round() == first.interval
    assert (s := read_status(d)) is not None and s.state == "ok"  # an earlier run's
    again, _, _ = runner(d, s3)
    again.starting()
    status = read_status(d)
    assert status is not None and status.state == "starting" and status.shipped_size == 0
    assert again.round() == again.interval
    assert (s := read_status(d)) is not None and s.state == "ok"


def test_storage_down_is_recorded_once_then_resumed(tmp_path: Path, s3: Any) -> None:
    d = make_ledger(tmp_path / "l", sessions=1)
    r, client, rec = runner(d, s3)
    assert r.round() == r.interval
    r.flush_records()
    assert rec.types() == [] and r.status.state == "ok" and r.status.backlog == 0
    client.down = True
    grow(d, "s2")
    delays = [r.round() for _ in range(4)]
    assert delays == [1.0, 2.0, 4.0, 8.0]  # backoff doubles
    r.flush_records()
    assert rec.types() == ["ledger.ship_stalled"]
    assert rec.records[0][1]["backlog"] == 8
    status = read_status(d)
    assert status is not None and status.state == "retrying" and status.backlog == 8
    assert "Could not connect" in (status.last_error or "")
    client.down = False
    assert r.round() == r.interval
    r.flush_records()
    assert rec.types() == ["ledger.ship_stalled", "ledger.ship_resumed"]
    assert rec.records[1][1]["stalled_ms"] == 4000
    status = read_status(d)
    assert status is not None and (status.state, status.backlog, status.last_error) == (
        "ok",
        0,
        None,
    )


def test_a_backlog_over_the_limit_refuses_new_sessions_until_it_drains(
    tmp_path: Path, s3: Any
) -> None:
    d = make_ledger(tmp_path / "l", sessions=1)
    r, client, rec = runner(d, s3, limit=5, on="refuse")
    r.round()
    guard = BacklogGuard(FakeLedger(), r)
    guard.append("session.start", data={})
    client.down = True
    grow(d, "s2")
    r.round()
    assert r.refusing
    with pytest.raises(
        LedgerUnavailable, match="backlog of 8 entries not yet in s3://evidence/fleet"
    ):
        guard.append("session.start", data={})
    guard.append("statement", data={})  # sessions already running are recorded
    client.down = False
    r.round()
    assert not r.refusing
    guard.append("session.start", data={})
    r.flush_records()
    backlog = [d for t, d in rec.records if t == "ledger.ship_backlog"]
    assert [b["state"] for b in backlog] == ["refusing", "serving"]


def test_serve_mode_never_refuses(tmp_path: Path, s3: Any) -> None:
    d = make_ledger(tmp_path / "l", sessions=1)
    r, client, _ = runner(d, s3, limit=1, on="serve")
    client.down = True
    r.round()
    assert r.status.backlog > 1 and not r.refusing


def test_the_final_ship_retries_until_its_deadline(tmp_path: Path, s3: Any) -> None:
    d = make_ledger(tmp_path / "l", sessions=1)
    r, client, _ = runner(d, s3)
    client.down = True
    assert r.final(0.5) is False
    status = read_status(d)
    assert status is not None and status.backlog == 9
    client.down = False
    assert r.final(5) is True
    status = read_status(d)
    assert status is not None and (status.state, status.backlog) == ("stopped", 0)
