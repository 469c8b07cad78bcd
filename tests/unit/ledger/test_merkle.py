"""The Merkle tree against the RFC 6962 golden vectors, and every proof for sizes 1..100."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from appliance.ledger.merkle import (
    EMPTY_ROOT,
    CompactRange,
    MerkleTree,
    ProofError,
    leaf_hash,
    node_hash,
    root_of,
    verify_consistency,
    verify_inclusion,
)

VECTORS = json.loads(
    (Path(__file__).parents[2] / "data" / "vectors" / "merkle-rfc6962.json").read_text()
)
LEAVES = [bytes.fromhex(x) for x in VECTORS["leaves_hex"]]


def h(x: str) -> bytes:
    return bytes.fromhex(x)


def test_hash_vectors() -> None:
    hv = VECTORS["hashes"]
    assert h(hv["empty_tree"]) == EMPTY_ROOT
    assert leaf_hash(b"") == h(hv["leaf_of_empty"])
    assert leaf_hash(b"L123456") == h(hv["leaf_L123456"])
    assert node_hash(b"N123", b"N456") == h(hv["node_N123_N456"])


@pytest.mark.parametrize("size", range(9))
def test_root_vectors(size: int) -> None:
    want = h(VECTORS["roots"][str(size)])
    leaves = [leaf_hash(x) for x in LEAVES[:size]]
    assert root_of(leaves) == want
    assert MerkleTree(leaves).root() == want
    assert MerkleTree([leaf_hash(x) for x in LEAVES]).root(size) == want


@pytest.mark.parametrize("case", VECTORS["inclusion"], ids=lambda c: f"{c['index']}-{c['size']}")
def test_inclusion_vectors(case: dict[str, object]) -> None:
    tree = MerkleTree([leaf_hash(x) for x in LEAVES])
    idx, size = int(case["index"]), int(case["size"])  # type: ignore[call-overload]
    proof = [h(p) for p in case["proof"]]  # type: ignore[attr-defined]
    assert tree.inclusion_proof(idx, size) == proof
    verify_inclusion(leaf_hash(h(str(case["leaf_hex"]))), idx, size, proof, h(str(case["root"])))


@pytest.mark.parametrize("case", VECTORS["consistency"], ids=lambda c: f"{c['size1']}-{c['size2']}")
def test_consistency_vectors(case: dict[str, object]) -> None:
    tree = MerkleTree([leaf_hash(x) for x in LEAVES])
    s1, s2 = int(case["size1"]), int(case["size2"])  # type: ignore[call-overload]
    proof = [h(p) for p in case["proof"]]  # type: ignore[attr-defined]
    assert tree.consistency_proof(s1, s2) == proof
    verify_consistency(s1, s2, proof, h(str(case["root1"])), h(str(case["root2"])))


def _flips(proof: list[bytes], salt: int) -> list[list[bytes]]:
    """Copies of ``proof`` with one bit flipped: several bits of every element."""
    out = []
    for j, elem in enumerate(proof):
        for k in range(4):
            bit = (salt * 31 + j * 67 + k * 71) % 256
            b = bytearray(elem)
            b[bit // 8] ^= 1 << (bit % 8)
            out.append([*proof[:j], bytes(b), *proof[j + 1 :]])
    return out


N = 100
TREE = MerkleTree(leaf_hash(hashlib.sha256(i.to_bytes(4, "big")).digest()) for i in range(N))
ROOTS = {n: TREE.root(n) for n in range(N + 1)}


def test_compact_range_matches_tree() -> None:
    cr = CompactRange()
    for n in range(N):
        assert cr.root() == ROOTS[n]
        cr.append(TREE.leaf(n))
    assert cr.root() == ROOTS[N]


def _fails(fn: object, *args: object) -> bool:
    try:
        fn(*args)  # type: ignore[operator]
    except ProofError:
        return True
    return False


@pytest.mark.parametrize("size", range(1, N + 1))
def test_every_inclusion_proof(size: int) -> None:
    root = ROOTS[size]
    for index in range(size):
        leaf = TREE.leaf(index)
        proof = TREE.inclusion_proof(index, size)
        verify_inclusion(leaf, index, size, proof, root)
        for bad in _flips(proof, index + size):
            assert _fails(verify_inclusion, leaf, index, size, bad, root)
        for other in {index - 1, index + 1, size} - {index}:
            assert _fails(verify_inclusion, leaf, other, size, proof, root), other
        for other_size in {size - 1, size + 1} - {0, N + 1}:
            other_root = ROOTS[other_size]
            assert _fails(verify_inclusion, leaf, index, other_size, proof, other_root)
        assert _fails(verify_inclusion, TREE.leaf((index + 1) % N), index, size, proof, root)
        assert _fails(verify_inclusion, leaf, index, size, [*proof, root], root)
        if proof:
            assert _fails(verify_inclusion, leaf, index, size, proof[:-1], root)


@pytest.mark.parametrize("new", range(1, N + 1))
def test_every_consistency_proof(new: int) -> None:
    for old in range(1, new + 1):
        proof = TREE.consistency_proof(old, new)
        verify_consistency(old, new, proof, ROOTS[old], ROOTS[new])
        for bad in _flips(proof, old + new):
            assert _fails(verify_consistency, old, new, bad, ROOTS[old], ROOTS[new])
        for o2 in {old - 1, old + 1} - {0, new + 1, old}:
            assert _fails(verify_consistency, o2, new, proof, ROOTS[o2], ROOTS[new])
        for n2 in {new - 1, new + 1} - {0, N + 1, new, old - 1}:
            if n2 >= old:
                assert _fails(verify_consistency, old, n2, proof, ROOTS[old], ROOTS[n2])
        if old < new:
            assert _fails(verify_consistency, old, new, proof, ROOTS[old], ROOTS[old])
            assert _fails(verify_consistency, old, new, proof[:-1], ROOTS[old], ROOTS[new])


def test_fork_of_equal_sizes_is_rejected() -> None:
    with pytest.raises(ProofError, match="fork"):
        verify_consistency(5, 5, [], ROOTS[5], ROOTS[6])


def test_impossible_parameters() -> None:
    with pytest.raises(ProofError):
        TREE.inclusion_proof(5, 5)
    with pytest.raises(ProofError):
        TREE.consistency_proof(6, 5)
    with pytest.raises(ProofError):
        TREE.root(N + 1)
    with pytest.raises(ProofError):
        verify_inclusion(TREE.leaf(0), 0, 0, [], EMPTY_ROOT)
