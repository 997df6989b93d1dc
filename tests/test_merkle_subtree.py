"""Every subtree-inclusion and subtree-consistency vector of transparency-dev/merkle, wantErr ones included."""

from __future__ import annotations

import base64
import json

from carledger.ledger import merkle
from conftest import shared_path


def _b64(s):
    return base64.b64decode(s) if s is not None else None


def _vectors(kind: str):
    base = shared_path("vectors", "merkle", "testdata", kind)
    files = sorted(base.rglob("*.json"))
    assert files, f"no vectors under {base}"
    return [(str(f.relative_to(base)), json.loads(f.read_text())) for f in files]


def test_subtree_inclusion_vectors():
    cases = _vectors("subtreeinclusion")
    outcomes = []
    for name, v in cases:
        ok = merkle.verify_subtree_inclusion(
            _b64(v["leafHash"]), v["leafIdx"], v["start"], v["end"], [_b64(p) for p in v["proof"] or []], _b64(v["root"])
        )
        assert ok is (not v["wantErr"]), f"{name}: {v['desc']}"
        outcomes.append(ok)
    assert len(outcomes) == 204 and outcomes.count(True) == 12


def test_subtree_consistency_vectors():
    cases = _vectors("subtreeconsistency")
    outcomes = []
    for name, v in cases:
        ok = merkle.verify_subtree_consistency(
            v["start"], v["end"], v["size"], _b64(v["root1"]), _b64(v["root2"]), [_b64(p) for p in v["proof"] or []]
        )
        assert ok is (not v["wantErr"]), f"{name}: {v['desc']}"
        outcomes.append(ok)
    assert len(outcomes) == 118 and outcomes.count(True) == 12


def test_valid_subtree_rule():
    """Aligned on the smallest power of two >= its width, and never empty."""
    assert merkle.valid_subtree(0, 1) and merkle.valid_subtree(4, 8) and merkle.valid_subtree(8, 13)
    assert merkle.valid_subtree(0, 7)
    assert not merkle.valid_subtree(1, 15)  # width 14 needs alignment on 16
    assert not merkle.valid_subtree(2, 5)  # width 3 needs alignment on 4
    assert not merkle.valid_subtree(3, 3) and not merkle.valid_subtree(-1, 0)


def _subtree_hash(leaves, start, end):
    return merkle.root(leaves[start:end])


def test_subtree_proofs_from_our_own_tree():
    """Proofs built from our trees (a subtree's inclusion proof is the inner tree's; the whole tree's consistency
    proof from a prefix subtree is RFC 6962's) verify, and a wrong subtree hash fails."""
    leaves = [b"record %d" % i for i in range(13)]
    sub = _subtree_hash(leaves, 8, 12)
    for i in range(8, 12):
        proof = merkle.inclusion_proof(leaves[8:12], i - 8)
        assert merkle.verify_subtree_inclusion(merkle.leaf_hash(leaves[i]), i, 8, 12, proof, sub)
        assert not merkle.verify_subtree_inclusion(merkle.leaf_hash(leaves[i]), i, 8, 12, proof, merkle.EMPTY_ROOT)
    for m in (1, 2, 3, 4, 5, 8, 11):
        proof = merkle.consistency_proof(leaves, m)
        prefix = merkle.root(leaves[:m])
        assert merkle.verify_subtree_consistency(0, m, 13, prefix, merkle.root(leaves), proof), m
        assert not merkle.verify_subtree_consistency(0, m, 13, merkle.EMPTY_ROOT, merkle.root(leaves), proof), m
