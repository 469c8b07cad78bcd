#!/usr/bin/env python3
"""Check an evidence package without the appliance: python3 (standard library) and openssl.

Usage: python3 check_evidence.py PACKAGE_DIR [VKEY_FILE]

For every logs/*/ of the package: verify the signed checkpoint (C2SP signed note, Ed25519)
with the verifier key (VKEY_FILE, obtained out of band, is better than the package's own
logs/*/vkey), rebuild the RFC 6962 Merkle root from entries.jsonl (the stored entries, one
per line) and compare it with the checkpoint's, and check every C2SP tlog-proof in
logs/*/proofs/ against it. Prints one line per check; exit 0 if all hold, else 1.
This file is copied verbatim into each package (see its verify.html).
"""

import base64
import hashlib
import subprocess
import sys
import tempfile
from pathlib import Path

ED25519_SPKI = bytes.fromhex("302a300506032b6570032100")  # DER prefix of a raw public key


def sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def merkle_root(leaves: list[bytes]) -> bytes:
    """RFC 6962 section 2.1 over leaf hashes."""
    if len(leaves) <= 1:
        return leaves[0] if leaves else sha(b"")
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    return sha(b"\x01" + merkle_root(leaves[:k]) + merkle_root(leaves[k:]))


def open_checkpoint(note: str, vkey: str) -> tuple[str, int, str]:
    """(origin, size, base64 root) of a checkpoint note signed by ``vkey``; else ValueError."""
    name, key_id, b64 = vkey.strip().split("+", 2)  # base64 may hold a +
    key = base64.b64decode(b64)  # 0x01 (Ed25519) || 32-byte public key
    if key[0] != 1 or sha(name.encode() + b"\n" + key)[:4].hex() != key_id:
        raise ValueError("malformed verifier key")
    text = note[: note.rindex("\n\n") + 1]
    pem = base64.b64encode(ED25519_SPKI + key[1:]).decode()
    for line in note[len(text) + 1 :].splitlines():
        signer, sig_b64 = line.removeprefix("\u2014 ").split(" ")
        sig = base64.b64decode(sig_b64)
        if signer != name or sig[:4].hex() != key_id:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            d = Path(tmp)
            (d / "key.pem").write_text(
                f"-----BEGIN PUBLIC KEY-----\n{pem}\n-----END PUBLIC KEY-----\n"
            )
            (d / "msg").write_bytes(text.encode())
            (d / "sig").write_bytes(sig[4:])
            cmd = ["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", str(d / "key.pem")]
            cmd += ["-rawin", "-in", str(d / "msg"), "-sigfile", str(d / "sig")]
            if subprocess.run(cmd, capture_output=True).returncode == 0:
                origin, size, root = text.splitlines()[:3]
                return origin, int(size), root
    raise ValueError(f"not signed by {name}+{key_id}")


def proof_root(proof: str, size: int) -> tuple[int, bytes]:
    """(index, root) that a tlog-proof (entry bytes in its extra line) leads to: RFC 9162
    section 2.1.3.2."""
    lines = proof.split("\n\n", 1)[0].split("\n")
    entry, index = base64.b64decode(lines[1].removeprefix("extra ")), int(lines[2][6:])
    node, fn, sn = sha(b"\x00" + entry), index, size - 1
    for sibling in map(base64.b64decode, lines[3:]):
        if fn % 2 or fn == sn:
            node = sha(b"\x01" + sibling + node)
            while fn % 2 == 0 and fn:
                fn, sn = fn >> 1, sn >> 1
        else:
            node = sha(b"\x01" + node + sibling)
        fn, sn = fn >> 1, sn >> 1
    return index, node if sn == 0 else b""


def main(package: str, vkey_file: str | None = None) -> int:
    failed = 0
    for log in sorted((Path(package) / "logs").iterdir()):
        note = (log / "checkpoint").read_text(encoding="utf-8")
        vkey = Path(vkey_file) if vkey_file else log / "vkey"
        try:
            origin, size, root = open_checkpoint(note, vkey.read_text(encoding="utf-8"))
        except ValueError as exc:
            print(f"FAIL {log.name}: checkpoint: {exc}")
            failed += 1
            continue
        lines = (log / "entries.jsonl").read_bytes().splitlines()
        leaves = [sha(b"\x00" + line) for line in lines[:size]]
        ok = len(leaves) == size and base64.b64encode(merkle_root(leaves)).decode() == root
        print(f"{'OK  ' if ok else 'FAIL'} {log.name}: {origin}: {size} entries hash to {root}")
        failed += not ok
        for path in sorted((log / "proofs").glob("*.proof")):
            proof = path.read_text(encoding="utf-8")
            index, got = proof_root(proof, size)
            ok = proof.endswith("\n\n" + note) and base64.b64encode(got).decode() == root
            print(f"{'OK  ' if ok else 'FAIL'}   {path.name}: entry {index} is in the log")
            failed += not ok
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
