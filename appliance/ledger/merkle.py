"""The Merkle tree of RFC 6962 / RFC 9162 §2.1: hashes, incremental roots, proofs.

- leaf hash ``SHA-256(0x00 || entry bytes)``, interior node ``SHA-256(0x01 || left || right)``,
  empty tree ``SHA-256("")`` (RFC 9162 §2.1.1);
- :class:`CompactRange` keeps the roots of the perfect subtrees that make up a tree of size
  ``n`` (one per set bit of ``n``), so appending a leaf costs amortised one hash and the root
  costs O(log n): this is what the writer keeps to sign checkpoints cheaply;
- :class:`MerkleTree` keeps every complete subtree hash (level by level, 32 bytes each) so that
  inclusion (§2.1.3) and consistency (§2.1.4) proofs for any earlier tree size are O(log² n);
- :func:`verify_inclusion` and :func:`verify_consistency` are the verification algorithms of
  RFC 9162 §2.1.3.2 and §2.1.4.2: they return nothing and raise :class:`ProofError`.

Compiled with mypyc (``appliance._pure.HOT_MODULES``): the ledger writer process appends a
leaf per entry. (:class:`ProofError` lives in :mod:`appliance.ledger.errors`: an exception
class compiled by mypyc would not keep its ``exit_code``.)
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

from appliance.ledger.errors import ProofError

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _largest_power_of_two_below(n: int) -> int:
    """The largest power of two strictly less than ``n`` (n >= 2): RFC 9162's ``k``."""
    return 1 << ((n - 1).bit_length() - 1)


class CompactRange:
    """Roots of the perfect subtrees covering leaves ``[0, size)``, largest first."""

    __slots__ = ("_stack", "size")

    def __init__(self) -> None:
        self._stack: list[bytes] = []
        self.size = 0

    def append(self, leaf: bytes) -> None:
        """Append a *leaf hash* (not the entry bytes)."""
        h = leaf
        n = self.size
        stack = self._stack
        while n & 1:
            h = hashlib.sha256(b"\x01" + stack.pop() + h).digest()
            n >>= 1
        stack.append(h)
        self.size += 1

    def extend(self, leaves: Iterable[bytes]) -> None:
        for leaf in leaves:
            self.append(leaf)

    def root(self) -> bytes:
        """MTH of the leaves so far (RFC 9162 §2.1.1)."""
        if not self._stack:
            return EMPTY_ROOT
        h = self._stack[-1]
        for left in reversed(self._stack[:-1]):
            h = node_hash(left, h)
        return h


def root_of(leaves: Sequence[bytes]) -> bytes:
    """MTH of the given leaf hashes (reference implementation, used by tests)."""
    cr = CompactRange()
    cr.extend(leaves)
    return cr.root()


class MerkleTree:
    """All complete subtree hashes of a tree, for proofs against any size up to ``size``.

    ``_levels[k]`` holds, back to back, the hashes of the perfect subtrees of 2**k leaves that
    are complete so far: 64 MB for a million leaves.
    """

    def __init__(self, leaves: Iterable[bytes] = ()) -> None:
        self._levels: list[bytearray] = [bytearray()]
        self.size = 0
        for leaf in leaves:
            self.append(leaf)

    def append(self, leaf: bytes) -> None:
        """Append a leaf hash."""
        if len(leaf) != HASH_SIZE:
            raise ValueError("a leaf hash is 32 bytes")
        levels = self._levels
        levels[0] += leaf
        self.size += 1
        n, level, h = self.size, 0, leaf
        while n & 1 == 0:  # the new leaf completed a subtree at the next level
            left = bytes(levels[level][-2 * HASH_SIZE : -HASH_SIZE])
            h = node_hash(left, h)
            level += 1
            n >>= 1
            if len(levels) == level:
                levels.append(bytearray())
            levels[level] += h

    def leaf(self, index: int) -> bytes:
        return bytes(self._levels[0][index * HASH_SIZE : (index + 1) * HASH_SIZE])

    def _hash(self, lo: int, hi: int) -> bytes:
        """MTH(D[lo:hi]) for ``lo < hi <= size`` with ``lo`` aligned as RFC recursion keeps it."""
        n = hi - lo
        if n & (n - 1) == 0 and lo % n == 0:
            level = n.bit_length() - 1
            i = lo >> level
            return bytes(self._levels[level][i * HASH_SIZE : (i + 1) * HASH_SIZE])
        k = _largest_power_of_two_below(n)
        return node_hash(self._hash(lo, lo + k), self._hash(lo + k, hi))

    def root(self, size: int | None = None) -> bytes:
        size = self.size if size is None else size
        self._check_size(size)
        return EMPTY_ROOT if size == 0 else self._hash(0, size)

    def _check_size(self, size: int) -> None:
        if not 0 <= size <= self.size:
            raise ProofError(f"tree size {size} is outside the tree (0..{self.size})")

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        """PATH(index, D[0:size]) of RFC 9162 §2.1.3.1, leaf's sibling first."""
        self._check_size(size)
        if not 0 <= index < size:
            raise ProofError(f"index {index} is not in a tree of size {size}")
        proof: list[bytes] = []
        lo, hi, m = 0, size, index
        while hi - lo > 1:
            k = _largest_power_of_two_below(hi - lo)
            if m < k:
                proof.append(self._hash(lo + k, hi))
                hi = lo + k
            else:
                proof.append(self._hash(lo, lo + k))
                lo, m = lo + k, m - k
        proof.reverse()
        return proof

    def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        """PROOF(old_size, D[0:new_size]) of RFC 9162 §2.1.4.1."""
        self._check_size(new_size)
        if not 0 <= old_size <= new_size:
            raise ProofError(f"no consistency proof from size {old_size} to {new_size}")
        if old_size == 0 or old_size == new_size:
            return []
        proof: list[bytes] = []
        lo, hi, m, whole = 0, new_size, old_size, True
        while m != hi - lo:
            k = _largest_power_of_two_below(hi - lo)
            if m <= k:
                proof.append(self._hash(lo + k, hi))
                hi = lo + k
            else:
                proof.append(self._hash(lo, lo + k))
                lo, m, whole = lo + k, m - k, False
        if not whole:
            proof.append(self._hash(lo, hi))
        proof.reverse()
        return proof


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that ``leaf`` (a leaf hash) is at ``index`` in the tree of ``size`` with ``root``.

    RFC 9162 §2.1.3.2. Raises :class:`ProofError` naming what failed.
    """
    if not 0 <= index < size:
        raise ProofError(f"index {index} is not in a tree of size {size}")
    if any(len(p) != HASH_SIZE for p in proof):
        raise ProofError("a proof element is not 32 bytes")
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            raise ProofError("inclusion proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn & 1 == 0 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("inclusion proof is shorter than the tree is deep")
    if r != root:
        raise ProofError(f"inclusion proof for index {index} does not lead to the tree root")


def verify_consistency(
    old_size: int, new_size: int, proof: Sequence[bytes], old_root: bytes, new_root: bytes
) -> None:
    """Check that the tree (new_size, new_root) extends (old_size, old_root).

    RFC 9162 §2.1.4.2. Raises :class:`ProofError` naming what failed.
    """
    if not 0 <= old_size <= new_size:
        raise ProofError(f"tree size went backwards: {old_size} -> {new_size}")
    if any(len(p) != HASH_SIZE for p in proof):
        raise ProofError("a proof element is not 32 bytes")
    if old_size == new_size:
        if proof:
            raise ProofError("a proof between equal sizes must be empty")
        if old_root != new_root:
            raise ProofError(f"two different roots for the same tree size {old_size} (fork)")
        return
    if old_size == 0:
        if proof:
            raise ProofError("a proof from the empty tree must be empty")
        return
    if not proof:
        raise ProofError("consistency proof is empty")
    path = list(proof)
    if old_size & (old_size - 1) == 0:  # old_size is a power of two: old root is a node
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError("consistency proof is longer than expected")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn & 1 == 0 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("consistency proof is shorter than expected")
    if fr != old_root:
        raise ProofError(f"consistency proof does not reproduce the root of size {old_size}")
    if sr != new_root:
        raise ProofError(f"consistency proof does not reproduce the root of size {new_size}")
