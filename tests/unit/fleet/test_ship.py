"""The shipper: what a round puts in the bucket, resuming, lost answers, conflicts, gaps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from appliance.bucket import Bucket, BucketUnavailable
from appliance.ledger.fleet import ShipConflict, Shipper, layout
from appliance.ledger.store import read_history
from tests.unit.fleet.conftest import (
    BUCKET,
    LOG,
    VKEY,
    grow,
    make_ledger,
    open_writer,
    versions,
    write_session,
)
from tests.unit.ledger.conftest import OTHER_KEY


def keys(s3: Any) -> list[str]:
    return sorted(k[len(LOG) :] for k in versions(s3))


def test_a_round_ships_every_checkpoint_with_what_it_covers(
    tmp_path: Path, s3: Any, bucket: Bucket
) -> None:
    d = make_ledger(tmp_path / "l")
    notes, _ = read_history(d)
    shipper = Shipper(d, bucket)
    done = shipper.ship()
    assert (done.checkpoints, done.entries, done.blobs) == (len(notes), 17, 4)
    got = keys(s3)
    assert got[-1] == "vkey"
    assert [k for k in got if k.startswith("checkpoints/")] == [
        layout.checkpoint_key(n) for n in range(len(notes))
    ]
    assert [k for k in got if k.startswith("entries/")] == [layout.bundle_key(0, 17)]
    assert len([k for k in got if k.startswith("blobs/")]) == 4
    body = s3.get_object(Bucket=BUCKET, Key=LOG + "vkey")["Body"].read()
    assert body == (VKEY + "\n").encode()
    # every checkpoint object is the local note, byte for byte
    for n, note in enumerate(notes):
        obj = s3.get_object(Bucket=BUCKET, Key=LOG + layout.checkpoint_key(n))
        assert obj["Body"].read() == note.encode()
    assert shipper.backlog() == 0
    assert shipper.ship().empty


def test_later_rounds_and_a_new_shipper_resume_without_writing_anything_twice(
    tmp_path: Path, s3: Any, bucket: Bucket
) -> None:
    d = make_ledger(tmp_path / "l", sessions=1)
    Shipper(d, bucket).ship()
    grow(d, "s9")
    again = Shipper(d, bucket)  # e.g. the daemon restarted: it learns from a listing
    done = again.ship()
    assert done.entries > 0 and done.checkpoints > 0
    assert all(len(vs) == 1 for vs in versions(s3).values())
    bundles = [k for k in keys(s3) if k.startswith("entries/")]
    assert len(bundles) == 2 and bundles[0].endswith("-00000000000000000009.jsonl")


def test_only_signed_entries_are_shipped(tmp_path: Path, s3: Any, bucket: Bucket) -> None:
    d = tmp_path / "l"
    w = open_writer(d, checkpoint_entries=1000, checkpoint_interval=3600)
    try:
        write_session(w, "s1")
        w.flush()
        signed = w.signed_size
        write_session(w, "s2")  # written, not yet under a checkpoint
        shipper = Shipper(d, bucket)
        shipper.ship()
        assert shipper.progress is not None and shipper.progress.entries == signed
    finally:
        w.close()
    shipper.ship()
    notes, _ = read_history(d)
    assert shipper.progress.entries == shipper.local_size > signed
    assert shipper.progress.checkpoints == len(notes)


class FlakyClient:
    """A boto3 client whose next put raises after (or instead of) reaching the server."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.mode: str | None = None
        self.puts = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def put_object(self, **kwargs: Any) -> Any:
        from botocore.exceptions import EndpointConnectionError

        mode, self.mode = self.mode, None
        if mode == "before":
            raise EndpointConnectionError(endpoint_url="http://s3.lab")
        answer = self.real.put_object(**kwargs)
        self.puts += 1
        if mode == "after":  # the server wrote it, the answer was lost
            raise EndpointConnectionError(endpoint_url="http://s3.lab")
        return answer


@pytest.mark.parametrize("mode", ["before", "after"])
def test_a_put_whose_answer_is_lost_is_looked_up_not_repeated(
    tmp_path: Path, s3: Any, mode: str
) -> None:
    d = make_ledger(tmp_path / "l", sessions=1)
    client = FlakyClient(s3)
    b = Bucket(_settings(), client=client)
    shipper = Shipper(d, b)
    shipper.reconcile()
    client.mode = mode
    with pytest.raises(BucketUnavailable):
        shipper.ship()
    shipper.ship()
    assert shipper.backlog() == 0
    # nothing was written twice: on radosgw a second put of a key is a second version
    assert all(len(vs) == 1 for vs in versions(s3).values())


def _settings() -> Any:
    from appliance.bucket import BucketSettings, parse_bucket_url

    return BucketSettings(parse_bucket_url(f"s3://{BUCKET}/fleet"))


def test_another_log_under_the_same_origin_is_a_conflict(
    tmp_path: Path, s3: Any, bucket: Bucket
) -> None:
    Shipper(make_ledger(tmp_path / "a", sessions=1), bucket).ship()
    other = make_ledger(tmp_path / "b", sessions=2)  # same origin and key, other entries
    with pytest.raises(ShipConflict, match="differs from this ledger's"):
        Shipper(other, bucket).ship()
    # a ledger signed by another key under the same origin
    d = tmp_path / "c"
    with open_writer(d, key=OTHER_KEY, checkpoint_entries=4, checkpoint_interval=3600) as w:
        write_session(w, "s0")
    with pytest.raises(ShipConflict):
        Shipper(d, bucket).ship()
    before = {k: len(v) for k, v in versions(s3).items()}
    assert all(n == 1 for n in before.values())


def test_a_ledger_rolled_back_below_the_bucket_is_a_conflict(
    tmp_path: Path, s3: Any, bucket: Bucket
) -> None:
    d = make_ledger(tmp_path / "l", sessions=2)
    old = tmp_path / "old"
    make_ledger(old, sessions=1)
    Shipper(d, bucket).ship()
    with pytest.raises(ShipConflict, match="this ledger only"):
        Shipper(old, bucket).ship()


def test_gaps_in_the_bucket_are_reported_not_repaired(
    tmp_path: Path, s3: Any, bucket: Bucket
) -> None:
    d = make_ledger(tmp_path / "l", sessions=1)
    Shipper(d, bucket).ship()
    for v in versions(s3)[LOG + layout.checkpoint_key(0)]:
        s3.delete_object(
            Bucket=BUCKET, Key=LOG + layout.checkpoint_key(0), VersionId=v["VersionId"]
        )
    grow(d, "s5")
    shipper = Shipper(d, bucket)
    progress = shipper.reconcile()
    assert progress.gaps == ["checkpoints #0 are missing from the bucket"]
    shipper.ship()
    assert LOG + layout.checkpoint_key(0) not in versions(s3)
