"""The signed, append-only ledger: entries, Merkle tree, C2SP checkpoints and proofs."""
