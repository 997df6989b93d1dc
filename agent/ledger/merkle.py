"""RFC 6962 / RFC 9162 Merkle trees over SHA-256.

leaf hash = SHA-256(0x00 || data), node hash = SHA-256(0x01 || left || right),
the root of the empty tree is SHA-256(""). `root` is iterative (one pass per
level, an odd last node moves up unchanged), which gives exactly RFC 6962's
recursive MTH. Proof verification follows RFC 9162 §2.1.3.2 and §2.1.4.2 and
returns False (never raises) for anything that does not verify, including
hashes of the wrong length.

Subtree proofs follow the Merkle Tree Certificates draft
(draft-ietf-plants-merkle-tree-certs, "subtree inclusion" and "subtree
consistency" proofs), as transparency-dev/merkle's proof package checks them:
a subtree [start, end) is valid when start < end and start is a multiple of
the smallest power of two >= end - start.
"""

from __future__ import annotations

import hashlib
from typing import Sequence

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "leaf_hash",
    "node_hash",
    "leaf_hashes",
    "root",
    "root_from_hashes",
    "frontier_push",
    "frontier_root",
    "inclusion_proof",
    "verify_inclusion",
    "consistency_proof",
    "verify_consistency",
    "valid_subtree",
    "verify_subtree_inclusion",
    "verify_subtree_consistency",
]

HASH_SIZE = 32
_sha256 = hashlib.sha256
EMPTY_ROOT = _sha256(b"").digest()


# Hash states after the domain byte, copied for each hash: cheaper than a new hash object, for which
# OpenSSL 3 looks the algorithm up each time, and no concatenation (1 % of a fast replay's instructions).
_LEAF = _sha256(b"\x00")
_NODE = _sha256(b"\x01")


def leaf_hash(data: bytes) -> bytes:
    h = _LEAF.copy()
    h.update(data)
    return h.digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    h = _NODE.copy()
    h.update(left)
    h.update(right)
    return h.digest()


def leaf_hashes(leaves: Sequence[bytes]) -> list[bytes]:
    start = _LEAF.copy
    out = []
    put = out.append
    for d in leaves:
        h = start()
        h.update(d)
        put(h.digest())
    return out


def root_from_hashes(hashes: Sequence[bytes]) -> bytes:
    """Tree head over already hashed leaves."""
    n = len(hashes)
    if n == 0:
        return EMPTY_ROOT
    start = _NODE.copy
    level = hashes
    while n > 1:
        nxt = []
        put = nxt.append
        for i in range(0, n - 1, 2):
            h = start()
            h.update(level[i])
            h.update(level[i + 1])
            put(h.digest())
        if n & 1:
            nxt.append(level[n - 1])
        level = nxt
        n = len(level)
    return level[0]


def frontier_push(frontier: bytes, size: int, leaf: bytes) -> bytes:
    """The frontier of the tree of `size` + 1 leaves, from the frontier of `size` and the new leaf's hash.

    A frontier is the roots of the perfect subtrees that tile [0, size), one
    per set bit of `size` from the highest, concatenated (32 bytes each): at
    most 64 hashes, and all a store needs to extend its tree and name its root
    without reading the earlier leaves (the collector's PostgreSQL store keeps
    it in the chain head). O(log n) per leaf.
    """
    hashes = [frontier[i:i + HASH_SIZE] for i in range(0, len(frontier), HASH_SIZE)]
    if len(hashes) != bin(size).count("1"):
        raise ValueError(f"a frontier of {len(hashes)} hashes for a tree of {size} leaves")
    node, n = leaf, size
    while n & 1:  # each trailing one of size: a subtree of the new leaf's height to merge with
        node = node_hash(hashes.pop(), node)
        n >>= 1
    return b"".join(hashes) + node


def frontier_root(frontier: bytes) -> bytes:
    """The tree's root from its frontier: RFC 6962's MTH folds the subtrees from the right."""
    if not frontier:
        return EMPTY_ROOT
    hashes = [frontier[i:i + HASH_SIZE] for i in range(0, len(frontier), HASH_SIZE)]
    node = hashes.pop()
    while hashes:
        node = node_hash(hashes.pop(), node)
    return node


def root(leaves: Sequence[bytes]) -> bytes:
    """RFC 6962 Merkle tree head (MTH) over the leaves' bytes."""
    return root_from_hashes(leaf_hashes(leaves))


def _split(n: int) -> int:
    """Largest power of two strictly less than n (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def _path(index: int, hashes: Sequence[bytes]) -> list[bytes]:
    n = len(hashes)
    if n <= 1:
        return []
    k = _split(n)
    if index < k:
        return _path(index, hashes[:k]) + [root_from_hashes(hashes[k:])]
    return _path(index - k, hashes[k:]) + [root_from_hashes(hashes[:k])]


def inclusion_proof(leaves: Sequence[bytes], index: int) -> list[bytes]:
    """Audit path (RFC 6962 §2.1.1) of leaf `index` in the tree of `leaves` (raw bytes)."""
    if not 0 <= index < len(leaves):
        raise IndexError(f"leaf index {index} outside a tree of {len(leaves)} leaves")
    return _path(index, leaf_hashes(leaves))


def _subproof(m: int, hashes: Sequence[bytes], complete: bool) -> list[bytes]:
    n = len(hashes)
    if m == n:
        return [] if complete else [root_from_hashes(hashes)]
    k = _split(n)
    if m <= k:
        return _subproof(m, hashes[:k], complete) + [root_from_hashes(hashes[k:])]
    return _subproof(m - k, hashes[k:], False) + [root_from_hashes(hashes[:k])]


def consistency_proof(leaves: Sequence[bytes], m: int) -> list[bytes]:
    """Consistency proof (RFC 6962 §2.1.2) between the first `m` leaves and all of them."""
    n = len(leaves)
    if not 0 < m <= n:
        raise ValueError(f"consistency proof needs 0 < m <= {n}, got m={m}")
    if m == n:
        return []
    return _subproof(m, leaf_hashes(leaves), True)


def _all_hashes(items: Sequence[bytes]) -> bool:
    return all(isinstance(h, (bytes, bytearray)) and len(h) == HASH_SIZE for h in items)


def verify_inclusion(
    leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes] | None, root: bytes
) -> bool:
    """True when `proof` shows the leaf with hash `leaf_hash` at `index` in the tree of `size` with `root`.

    Takes the leaf *hash*; for raw leaf bytes pass `merkle.leaf_hash(data)`.
    """
    proof = list(proof or [])
    if not (isinstance(index, int) and isinstance(size, int)) or not 0 <= index < size:
        return False
    if not _all_hashes([leaf_hash, root]) or not _all_hashes(proof):
        return False
    fn, sn = index, size - 1
    r = bytes(leaf_hash)
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def verify_consistency(
    size1: int, size2: int, root1: bytes, root2: bytes, proof: Sequence[bytes] | None
) -> bool:
    """True when `proof` shows the tree (size1, root1) is a prefix of the tree (size2, root2).

    A proof from the empty tree is meaningless and is rejected; equal sizes
    need an empty proof and equal roots.
    """
    proof = list(proof or [])
    if not (isinstance(size1, int) and isinstance(size2, int)):
        return False
    if size1 < 0 or size2 < size1 or size1 == 0:
        return False
    if size1 == size2:
        return not proof and root1 == root2
    if not proof or not _all_hashes(proof) or not _all_hashes([root1, root2]):
        return False
    if size1 & (size1 - 1) == 0:  # a power of two: the proof starts implicitly with root1
        proof = [bytes(root1)] + proof
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = proof[0]
    for c in proof[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == root1 and sr == root2


def valid_subtree(start: int, end: int) -> bool:
    """True when [start, end) is a subtree the MTC draft allows: non-empty and aligned on its own width."""
    if not (isinstance(start, int) and isinstance(end, int)) or not 0 <= start < end:
        return False
    width = 1 << (end - start - 1).bit_length()  # smallest power of two >= end - start
    return start % width == 0


def verify_subtree_inclusion(
    leaf_hash: bytes, index: int, start: int, end: int, proof: Sequence[bytes] | None, subtree_root: bytes
) -> bool:
    """True when `proof` shows the leaf `leaf_hash` at `index` inside the subtree [start, end) with hash `subtree_root`.

    A valid subtree's hash is the root of a tree of its own leaves, so this is
    an ordinary inclusion proof of index - start in a tree of end - start.
    """
    if not valid_subtree(start, end) or not isinstance(index, int) or not start <= index < end:
        return False
    return verify_inclusion(leaf_hash, index - start, end - start, proof, subtree_root)


def verify_subtree_consistency(
    start: int, end: int, size: int, subtree_root: bytes, root: bytes, proof: Sequence[bytes] | None
) -> bool:
    """True when `proof` shows the subtree [start, end) with hash `subtree_root` sits in the tree (size, root).

    The draft's procedure: fn, sn, tn are the subtree's first and last leaf
    and the tree's last leaf; fr rebuilds the subtree hash and sr the root
    from one shared seed. A subtree that is the whole tree needs an empty
    proof and equal hashes; an empty range [s, s) needs an empty proof and
    the empty tree's hash.
    """
    proof = list(proof or [])
    if not isinstance(size, int):
        return False
    if isinstance(start, int) and start == end and 0 <= end <= size:
        # An empty range says nothing about the tree, so only its own hash is checked (the reference accepts
        # any tree root here); nothing is proved, so the proof must be empty.
        return not proof and subtree_root == EMPTY_ROOT
    if not valid_subtree(start, end) or end > size:
        return False
    if start == 0 and end == size:  # the whole tree: nothing to prove, as for equal sizes in verify_consistency
        return not proof and subtree_root == root
    if not _all_hashes([subtree_root, root]) or not _all_hashes(proof):
        return False
    fn, sn, tn = start, end - 1, size - 1
    if sn == tn:  # flush with the tree's right edge: climb to the subtree's own node
        while fn != sn:
            fn, sn, tn = fn >> 1, sn >> 1, tn >> 1
    else:  # climb while the last leaf's ancestor is a right child
        while fn != sn and sn & 1:
            fn, sn, tn = fn >> 1, sn >> 1, tn >> 1
    if fn == sn:
        fr = sr = bytes(subtree_root)
    elif proof:
        fr = sr = proof.pop(0)
    else:
        return False
    for c in proof:
        if tn == 0:
            return False
        if sn & 1 or sn == tn:
            if fn < sn:
                fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while sn and not sn & 1:
                fn, sn, tn = fn >> 1, sn >> 1, tn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn, tn = fn >> 1, sn >> 1, tn >> 1
    return tn == 0 and fr == subtree_root and sr == root
