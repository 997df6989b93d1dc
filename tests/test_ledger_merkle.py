"""RFC 6962 Merkle trees against transparency-dev/merkle's vectors and a recursive reference."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest

from carledger.ledger import merkle
from conftest import shared_path


def _b64(s):
    return base64.b64decode(s) if s is not None else None


def _vectors(kind: str):
    base = shared_path("vectors", "merkle", "testdata", kind)
    files = sorted(base.rglob("*.json"))
    assert files, f"no vectors under {base}"
    return [(str(f.relative_to(base)), json.loads(f.read_text())) for f in files]


def _mth(leaves):
    """RFC 6962 §2.1 MTH, literally recursive."""
    n = len(leaves)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = 1
    while k * 2 < n:
        k *= 2
    return hashlib.sha256(b"\x01" + _mth(leaves[:k]) + _mth(leaves[k:])).digest()


def test_reference_roots():
    ref = json.loads(shared_path("vectors", "merkle", "rfc6962_reference_vectors.json").read_text())
    leaves = [bytes.fromhex(h) for h in ref["leaf_inputs_hex"]]
    assert merkle.root([]).hex() == ref["empty_tree_root_hex"] == merkle.EMPTY_ROOT.hex()
    for size, want in ref["root_by_size_hex"].items():
        assert merkle.root(leaves[: int(size)]).hex() == want, size


def test_inclusion_vectors():
    cases = _vectors("inclusion")
    good = bad = 0
    for name, v in cases:
        ok = merkle.verify_inclusion(
            _b64(v["leafHash"]), v["leafIdx"], v["treeSize"], [_b64(p) for p in v["proof"] or []], _b64(v["root"])
        )
        assert ok is (not v["wantErr"]), f"{name}: {v['desc']}"
        good += ok
        bad += not ok
    assert good >= 5 and bad >= 50


def test_consistency_vectors():
    cases = _vectors("consistency")
    good = bad = 0
    for name, v in cases:
        ok = merkle.verify_consistency(
            v["size1"], v["size2"], _b64(v["root1"]), _b64(v["root2"]), [_b64(p) for p in v["proof"] or []]
        )
        assert ok is (not v["wantErr"]), f"{name}: {v['desc']}"
        good += ok
        bad += not ok
    assert good >= 5 and bad >= 50


def test_roots_match_recursive_reference():
    leaves = [bytes([i % 256]) * (i % 7) for i in range(70)]
    for n in range(0, 70):
        assert merkle.root(leaves[:n]) == _mth(leaves[:n]), n


def test_generated_proofs_verify_and_corruptions_fail():
    leaves = [b"record %d" % i for i in range(21)]
    for n in range(1, 22):
        tree = leaves[:n]
        r = merkle.root(tree)
        for i in range(n):
            proof = merkle.inclusion_proof(tree, i)
            lh = merkle.leaf_hash(tree[i])
            assert merkle.verify_inclusion(lh, i, n, proof, r)
            assert not merkle.verify_inclusion(lh, i, 2 * n + 1, proof, r)
            assert not merkle.verify_inclusion(merkle.leaf_hash(b"x"), i, n, proof, r)
            if proof:
                assert not merkle.verify_inclusion(lh, i, n, proof[:-1], r)
                assert not merkle.verify_inclusion(lh, i, n, proof + [proof[0]], r)
        for m in range(1, n + 1):
            proof = merkle.consistency_proof(tree, m)
            r1 = merkle.root(tree[:m])
            assert merkle.verify_consistency(m, n, r1, r, proof), (m, n)
            if m < n:
                assert not merkle.verify_consistency(m, n, r, r1, proof)
                assert not merkle.verify_consistency(m, n, r1, r, proof[:-1])
                other = merkle.root(tree[: m - 1] + [b"forged"])
                assert not merkle.verify_consistency(m, n, other, r, proof)


def test_proof_generation_errors():
    with pytest.raises(IndexError):
        merkle.inclusion_proof([b"a"], 1)
    with pytest.raises(ValueError):
        merkle.consistency_proof([b"a", b"b"], 0)


def test_a_frontier_grown_leaf_by_leaf_gives_every_prefix_root():
    hashes = merkle.leaf_hashes([bytes([i]) * (i + 1) for i in range(70)])
    frontier = b""
    assert merkle.frontier_root(frontier) == merkle.EMPTY_ROOT
    for n, h in enumerate(hashes):
        frontier = merkle.frontier_push(frontier, n, h)
        assert len(frontier) == 32 * bin(n + 1).count("1")
        assert merkle.frontier_root(frontier) == merkle.root_from_hashes(hashes[:n + 1])


def test_a_frontier_of_the_wrong_size_is_refused():
    with pytest.raises(ValueError, match="frontier of 0 hashes for a tree of 3"):
        merkle.frontier_push(b"", 3, bytes(32))
