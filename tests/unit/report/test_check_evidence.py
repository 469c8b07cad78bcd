"""The standalone checker against the ledger's own code: signatures (with openssl), Merkle
roots and inclusion proofs for every index of trees of 1 to 33 leaves, and keys whose
base64 holds a '+'."""

from __future__ import annotations

import itertools

import pytest

from appliance.ledger.checkpoint import Checkpoint, sign_checkpoint
from appliance.ledger.merkle import MerkleTree, leaf_hash
from appliance.ledger.proof import make_proof
from appliance.report import check_evidence as ce
from appliance.signing.keys import SigningKey


def key_with_plus() -> SigningKey:
    for i in itertools.count():
        key = SigningKey.generate("ci.example/runner-7/boot-1", seed=i.to_bytes(32, "big"))
        if "+" in key.verifier().to_vkey().split("+", 2)[2]:
            return key
    raise AssertionError("not reached")


def test_checkpoint_signatures() -> None:
    key = key_with_plus()
    cp = Checkpoint(key.name, 5, b"\x07" * 32)
    note = sign_checkpoint(cp, key)
    vkey = key.verifier().to_vkey()
    assert ce.open_checkpoint(note, vkey) == (key.name, 5, cp.text().split("\n")[2])
    other = SigningKey.generate(key.name, seed=b"\x01" * 32).verifier().to_vkey()
    with pytest.raises(ValueError, match="not signed by"):
        ce.open_checkpoint(note, other)
    forged = note.replace("\n5\n", "\n6\n")
    with pytest.raises(ValueError, match="not signed by"):
        ce.open_checkpoint(forged, vkey)


def test_roots_and_proofs_agree_with_the_ledger() -> None:
    key = SigningKey.generate("o", seed=b"\x05" * 32)
    for size in range(1, 34):
        entries = [f'{{"n":{i}}}'.encode() for i in range(size)]
        tree = MerkleTree(leaf_hash(e) for e in entries)
        assert ce.merkle_root([leaf_hash(e) for e in entries]) == tree.root()
        cp = Checkpoint("o", size, tree.root())
        cp = Checkpoint("o", size, cp.root, (), sign_checkpoint(cp, key))
        for i in range(size):
            proof = make_proof(tree, i, cp, entry=entries[i]).text()
            assert ce.proof_root(proof, size) == (i, tree.root()), (size, i)
            wrong = proof.replace(f"index {i}\n", f"index {(i + 1) % size}\n")
            assert size == 1 or ce.proof_root(wrong, size)[1] != tree.root()
    assert ce.merkle_root([]) == MerkleTree().root()
