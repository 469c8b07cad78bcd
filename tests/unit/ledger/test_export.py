"""Session exports: the offline bundle and the pcap."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import dpkt
import pytest

from appliance.ledger.pcap import MSS, parse_endpoint, write_pcap
from tests.unit.ledger.cli_helper import run_cli
from tests.unit.ledger.conftest import KEY, OTHER_KEY

VKEY = KEY.verifier().to_vkey()


def _export(
    capsys: pytest.CaptureFixture[str], ledger: Path, out: Path, fmt: str = "jsonl"
) -> None:
    code, text = run_cli(
        capsys,
        "ledger",
        "export",
        "--ledger",
        str(ledger),
        "--session",
        "s2",
        "--format",
        fmt,
        "--out",
        str(out),
    )
    assert code == 0, text


def test_bundle_round_trip(
    capsys: pytest.CaptureFixture[str], ledger: Path, tmp_path: Path
) -> None:
    bundle = tmp_path / "s2.jsonl"
    _export(capsys, ledger, bundle)
    records = [json.loads(line) for line in bundle.read_text().splitlines()]
    assert records[0]["kind"] == "header" and records[0]["vkeys"] == [VKEY]
    assert [r["kind"] for r in records[1:]].count("entry") == 11
    assert [r["kind"] for r in records[1:]].count("blob") == 3
    code, out = run_cli(capsys, "ledger", "verify-bundle", str(bundle), "--vkey", VKEY)
    assert code == 0 and "VERIFIED: session s2: 11 entries and 3 blobs" in out
    code, out = run_cli(
        capsys, "ledger", "verify-bundle", str(bundle), "--vkey", OTHER_KEY.verifier().to_vkey()
    )
    assert code == 2 and "not signed by the given key" in out
    assert (
        run_cli(
            capsys,
            "ledger",
            "export",
            "--ledger",
            str(ledger),
            "--session",
            "s2",
            "--out",
            str(bundle),
        )[0]
        == 2
    )  # never overwrites


def _tamper(bundle: Path, fn: object) -> None:
    records = [json.loads(line) for line in bundle.read_text().splitlines()]
    fn(records)  # type: ignore[operator]
    bundle.write_text("".join(json.dumps(r) + "\n" for r in records))


@pytest.mark.parametrize(
    ("name", "change", "message"),
    [
        ("blob", lambda r: r[-1].update(b64="AAAA"), "content was changed"),
        ("missing blob", lambda r: r.pop(), "is missing from the bundle"),
        (
            "entry",
            lambda r: r[1].update(tlog_proof=r[1]["tlog_proof"].replace("index ", "index 1", 1)),
            "entry 9: inclusion proof is longer than the tree is deep",
        ),
        ("other session", lambda r: r[0].update(session="s1"), "belongs to session 's2'"),
    ],
)
def test_bundle_tampering(
    capsys: pytest.CaptureFixture[str],
    ledger: Path,
    tmp_path: Path,
    name: str,
    change: object,
    message: str,
) -> None:
    bundle = tmp_path / "s2.jsonl"
    _export(capsys, ledger, bundle)
    _tamper(bundle, change)
    code, out = run_cli(capsys, "ledger", "verify-bundle", str(bundle), "--vkey", VKEY)
    assert code == 1 and message in out, out


def _streams(pcap: Path) -> tuple[dict[str, bytes], list[dpkt.tcp.TCP]]:
    """Reassemble both directions by sequence number, checking there are no gaps."""
    segs: list[dpkt.tcp.TCP] = []
    with pcap.open("rb") as f:
        for _, buf in dpkt.pcap.Reader(f):
            ip = dpkt.ethernet.Ethernet(buf).data
            segs.append(ip.data)
    syn = [s for s in segs if s.flags & dpkt.tcp.TH_SYN]
    client_port = syn[0].sport
    out: dict[str, bytes] = {}
    for direction, sport in (("c2s", client_port), ("s2c", syn[1].sport)):
        isn = next(s.seq for s in syn if s.sport == sport)
        data = b""
        for s in segs:
            if s.sport == sport and s.data:
                assert s.seq == (isn + 1 + len(data)) & 0xFFFFFFFF, "gap or overlap"
                assert len(s.data) <= MSS
                data += s.data
        out[direction] = data
    return out, segs


def _pg_messages(data: bytes, startup: bool) -> list[tuple[bytes, bytes]]:
    msgs = []
    if startup:
        n = int.from_bytes(data[:4], "big")
        msgs.append((b"startup", data[4:n]))
        data = data[n:]
    while data:
        kind, n = data[:1], int.from_bytes(data[1:5], "big")
        msgs.append((kind, data[5 : 1 + n]))
        data = data[1 + n :]
    return msgs


def test_pcap_of_a_postgres_session(
    capsys: pytest.CaptureFixture[str], ledger: Path, tmp_path: Path
) -> None:
    pcap = tmp_path / "s2.pcap"
    _export(capsys, ledger, pcap, "pcap")
    streams, segs = _streams(pcap)
    c2s = _pg_messages(streams["c2s"], startup=True)
    s2c = _pg_messages(streams["s2c"], startup=False)
    assert [k for k, _ in c2s] == [b"startup", b"Q", b"Q", b"Q", b"X"]
    assert c2s[0][1].startswith(b"\x00\x03\x00\x00user\x00app\x00database\x00shop\x00")
    assert c2s[1][1] == b"SELECT 1\x00"
    kinds = [k for k, _ in s2c]
    assert kinds[:2] == [b"R", b"Z"] and kinds.count(b"D") == 9 and kinds.count(b"Z") == 4
    assert any(b"4111********1111" in body for k, body in s2c if k == b"D")
    assert segs[0].flags == dpkt.tcp.TH_SYN and segs[-1].flags == dpkt.tcp.TH_ACK
    assert sum(1 for s in segs if s.flags & dpkt.tcp.TH_FIN) == 2


def test_large_messages_are_segmented_and_ipv6_works(tmp_path: Path) -> None:
    big = b"Q" + (4 + 5000).to_bytes(4, "big") + b"x" * 4999 + b"\x00"
    pcap = tmp_path / "v6.pcap"
    with pcap.open("wb") as f:
        n = write_pcap(
            f, ("fd00::1", 40000), ("fd00::2", 5432), [(1.0, "c2s", big), (2.0, "s2c", b"Z")]
        )
    streams, segs = _streams(pcap)
    assert streams["c2s"] == big and streams["s2c"] == b"Z"
    assert n == len(segs) == 3 + 4 + 1 + 1 + 1 + 3


def test_endpoints() -> None:
    assert parse_endpoint("10.0.0.1:5432") == ("10.0.0.1", 5432)
    assert parse_endpoint("[::1]:5432") == ("::1", 5432)
    for bad in ("10.0.0.1", "host:5432", "10.0.0.1:0", "[::1]:x"):
        with pytest.raises(Exception, match="endpoint"):
            parse_endpoint(bad)


@pytest.mark.skipif(shutil.which("tshark") is None, reason="Debian's tshark is not installed")
def test_wireshark_decodes_the_pcap(
    capsys: pytest.CaptureFixture[str], ledger: Path, tmp_path: Path
) -> None:
    pcap = tmp_path / "s2.pcap"
    _export(capsys, ledger, pcap, "pcap")
    fields = ["-T", "fields", "-e", "pgsql.type", "-e", "pgsql.query"]
    out = subprocess.run(
        ["tshark", "-r", str(pcap), "-d", "tcp.port==5432,pgsql", "-Y", "pgsql", *fields],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    lines = out.splitlines()
    assert lines[0] == "Startup message\t"
    assert "Simple query\tSELECT 2" in lines
    assert any(
        ln.startswith("Row description,Data row,Data row,Data row,Command completion")
        for ln in lines
    )
    expert = subprocess.run(
        ["tshark", "-r", str(pcap), "-q", "-z", "expert,warn"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "Warnings" not in expert and "Errors" not in expert
