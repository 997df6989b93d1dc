"""RFC 6962 log proofs over stored hashes, as Go's golang.org/x/mod/sumdb/tlog lays them out.

A log keeps every node hash it will ever need, appended in a fixed order:
after record n come its hash and the hashes of the complete subtrees that
record closes (`stored_hash_index` numbers them). A proof then reads
O(log n) stored hashes, never the records. Proofs are RFC 6962's: a record
proof is the audit path (§2.1.1), a tree proof the consistency proof
(§2.1.2), in the same order as agent/ledger/merkle.py builds them, and they
are checked by that module's verify_inclusion / verify_consistency.

One difference from Go: the hash of the empty tree is SHA-256("") (RFC 6962,
as checkpoints need), where Go's TreeHash(0) returns all zeros.
"""

from __future__ import annotations

from typing import Callable, Sequence

from carledger.ledger import merkle

__all__ = [
    "HashReader",
    "stored_hash_index",
    "split_stored_hash_index",
    "stored_hash_count",
    "stored_hashes_for_record_hash",
    "tree_hash",
    "prove_record",
    "prove_tree",
    "check_record",
    "check_tree",
    "MemoryLog",
]

HashReader = Callable[[Sequence[int]], Sequence[bytes]]
"""Reads the stored hashes at the given indexes, in order (Go's HashReader)."""


def _maxpow2(n: int) -> int:
    """The largest power of two k with k < n (1 for n <= 2)."""
    k = 1
    while 2 * k < n:
        k *= 2
    return k


def stored_hash_index(level: int, n: int) -> int:
    """Where the hash of the n-th subtree of 2**level records sits in the stored-hash sequence."""
    for _ in range(level):
        n = 2 * n + 1
    i = 0
    while n > 0:
        i += n
        n >>= 1
    return i + level


def split_stored_hash_index(index: int) -> tuple[int, int]:
    """The inverse of stored_hash_index: (level, n)."""
    n = index // 2
    index_n = stored_hash_index(0, n)
    while True:
        x = index_n + 1 + ((n + 1) & -(n + 1)).bit_length() - 1  # + trailing zeros of n+1
        if x > index:
            break
        n += 1
        index_n = x
    level = index - index_n
    return level, n >> level


def stored_hash_count(n: int) -> int:
    """How many hashes a log of n records stores."""
    if n == 0:
        return 0
    count = stored_hash_index(0, n - 1) + 1
    i = n - 1
    while i & 1:
        count += 1
        i >>= 1
    return count


def _read(read: HashReader, indexes: list[int]) -> list[bytes]:
    hashes = list(read(indexes)) if indexes else []
    if len(hashes) != len(indexes):
        raise ValueError(f"hash reader returned {len(hashes)} hashes for {len(indexes)} indexes")
    return hashes


def stored_hashes_for_record_hash(n: int, h: bytes, read: HashReader) -> list[bytes]:
    """The hashes to append when record n (its leaf hash h) joins the log: h, then each subtree it completes."""
    m = ((n + 1) & -(n + 1)).bit_length() - 1  # trailing zeros of n+1
    indexes = [stored_hash_index(m - 1 - i, (n >> (m - 1 - i)) - 1) for i in range(m)]
    old = _read(read, indexes)
    out = [h]
    for i in range(m):
        h = merkle.node_hash(old[m - 1 - i], h)
        out.append(h)
    return out


def _subtree_index(lo: int, hi: int, need: list[int]) -> list[int]:
    """Stored hashes covering [lo, hi): its maximal complete subtrees, left to right."""
    while lo < hi:
        k = _maxpow2(hi - lo + 1)
        level = k.bit_length() - 1
        assert lo & (k - 1) == 0, "bad math in _subtree_index"
        need.append(stored_hash_index(level, lo >> level))
        lo += k
    return need


def _subtree_hash(lo: int, hi: int, hashes: list[bytes]) -> tuple[bytes, list[bytes]]:
    """Hash of [lo, hi) from the front of `hashes` (as _subtree_index listed them), and the rest."""
    count = 0
    while lo < hi:
        lo += _maxpow2(hi - lo + 1)
        count += 1
    h = hashes[count - 1]
    for i in range(count - 2, -1, -1):
        h = merkle.node_hash(hashes[i], h)
    return h, hashes[count:]


def tree_hash(n: int, read: HashReader) -> bytes:
    """Root hash of the first n records."""
    if n == 0:
        return merkle.EMPTY_ROOT
    indexes = _subtree_index(0, n, [])
    h, rest = _subtree_hash(0, n, _read(read, indexes))
    assert not rest
    return h


def _leaf_proof_index(lo: int, hi: int, n: int, need: list[int]) -> list[int]:
    if lo + 1 == hi:
        return need
    k = _maxpow2(hi - lo)
    if n < lo + k:
        _leaf_proof_index(lo, lo + k, n, need)
        _subtree_index(lo + k, hi, need)
    else:
        _subtree_index(lo, lo + k, need)
        _leaf_proof_index(lo + k, hi, n, need)
    return need


def _leaf_proof(lo: int, hi: int, n: int, hashes: list[bytes]) -> tuple[list[bytes], list[bytes]]:
    if lo + 1 == hi:
        return [], hashes
    k = _maxpow2(hi - lo)
    if n < lo + k:
        p, hashes = _leaf_proof(lo, lo + k, n, hashes)
        th, hashes = _subtree_hash(lo + k, hi, hashes)
    else:
        th, hashes = _subtree_hash(lo, lo + k, hashes)
        p, hashes = _leaf_proof(lo + k, hi, n, hashes)
    return p + [th], hashes


def prove_record(t: int, n: int, read: HashReader) -> list[bytes]:
    """Inclusion proof of record n in the tree of the first t records (Go's ProveRecord)."""
    if not 0 <= n < t:
        raise ValueError(f"no record {n} in a tree of {t}")
    p, rest = _leaf_proof(0, t, n, _read(read, _leaf_proof_index(0, t, n, [])))
    assert not rest
    return p


def _tree_proof_index(lo: int, hi: int, n: int, need: list[int]) -> list[int]:
    if n == hi:
        return need if lo == 0 else _subtree_index(lo, hi, need)
    k = _maxpow2(hi - lo)
    if n <= lo + k:
        _tree_proof_index(lo, lo + k, n, need)
        _subtree_index(lo + k, hi, need)
    else:
        _subtree_index(lo, lo + k, need)
        _tree_proof_index(lo + k, hi, n, need)
    return need


def _tree_proof(lo: int, hi: int, n: int, hashes: list[bytes]) -> tuple[list[bytes], list[bytes]]:
    if n == hi:
        if lo == 0:
            return [], hashes
        th, hashes = _subtree_hash(lo, hi, hashes)
        return [th], hashes
    k = _maxpow2(hi - lo)
    if n <= lo + k:
        p, hashes = _tree_proof(lo, lo + k, n, hashes)
        th, hashes = _subtree_hash(lo + k, hi, hashes)
    else:
        th, hashes = _subtree_hash(lo, lo + k, hashes)
        p, hashes = _tree_proof(lo + k, hi, n, hashes)
    return p + [th], hashes


def prove_tree(t: int, n: int, read: HashReader) -> list[bytes]:
    """Consistency proof that the tree of t records extends the tree of its first n (Go's ProveTree)."""
    if not 1 <= n <= t:
        raise ValueError(f"no consistency proof from {n} to {t} records (needs 1 <= old <= new)")
    p, rest = _tree_proof(0, t, n, _read(read, _tree_proof_index(0, t, n, [])))
    assert not rest
    return p


def check_record(proof: Sequence[bytes], t: int, tree_root: bytes, n: int, record_hash: bytes) -> bool:
    """True when `proof` shows leaf hash `record_hash` at index n of the tree (t, tree_root) (Go's CheckRecord)."""
    return merkle.verify_inclusion(record_hash, n, t, proof, tree_root)


def check_tree(proof: Sequence[bytes], t: int, tree_root: bytes, n: int, old_root: bytes) -> bool:
    """True when `proof` shows the tree (n, old_root) is a prefix of (t, tree_root) (Go's CheckTree)."""
    return merkle.verify_consistency(n, t, old_root, tree_root, proof)


class MemoryLog:
    """A log whose stored hashes live in a list: for tests, tools and proofs built from a stream in memory."""

    def __init__(self) -> None:
        self.hashes: list[bytes] = []
        self.size = 0

    def read_hashes(self, indexes: Sequence[int]) -> list[bytes]:
        return [self.hashes[i] for i in indexes]

    def append(self, data: bytes) -> int:
        """Adds one record; returns its index."""
        return self.append_hash(merkle.leaf_hash(data))

    def append_hash(self, record_hash: bytes) -> int:
        n = self.size
        self.hashes.extend(stored_hashes_for_record_hash(n, record_hash, self.read_hashes))
        self.size += 1
        return n

    def root(self, size: int | None = None) -> bytes:
        return tree_hash(self.size if size is None else size, self.read_hashes)

    def prove_record(self, n: int, size: int | None = None) -> list[bytes]:
        return prove_record(self.size if size is None else size, n, self.read_hashes)

    def prove_tree(self, old: int, size: int | None = None) -> list[bytes]:
        return prove_tree(self.size if size is None else size, old, self.read_hashes)
