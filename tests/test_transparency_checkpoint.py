"""C2SP checkpoints (exact parse/format, signed and opened) and RFC 6962 log proofs from stored hashes.

The proofs are checked against transparency-dev/merkle's vectors and the RFC
6962 reference roots in ../shared/data/vectors/merkle, and against
agent/ledger/merkle.py's own proofs for every size up to 64.
"""

from __future__ import annotations

import base64
import json

import pytest

from carledger.ledger import merkle
from carledger.transparency import checkpoint, note, tlog
from carledger.transparency.checkpoint import Checkpoint, CheckpointError
from conftest import shared_path

ROOT = base64.b64decode("CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=")
SPEC_TEXT = "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"


def test_spec_example_round_trips():
    cp = Checkpoint.parse(SPEC_TEXT)
    assert cp == Checkpoint("example.com/behind-the-sofa", 20852163, ROOT)
    assert cp.text() == SPEC_TEXT


def test_extension_lines():
    text = SPEC_TEXT + "ext one\n— not a signature here\n"
    cp = Checkpoint.parse(text)
    assert cp.extensions == ("ext one", "— not a signature here") and cp.text() == text


def test_empty_tree():
    cp = Checkpoint("o", 0, merkle.EMPTY_ROOT)
    assert Checkpoint.parse(cp.text()) == cp and cp.text().split("\n")[1] == "0"


@pytest.mark.parametrize(
    "text, why",
    [
        (SPEC_TEXT[:-1], "newline"),
        ("example.com/x\n5\n", "lines"),
        ("\n5\n" + SPEC_TEXT.split("\n")[2] + "\n", "origin"),
        (SPEC_TEXT.replace("20852163", "020852163"), "leading"),
        (SPEC_TEXT.replace("20852163", "-1"), "leading"),
        (SPEC_TEXT.replace("20852163", "+5"), "leading"),
        (SPEC_TEXT.replace("20852163", "٣"), "leading"),  # a non-ASCII digit
        (SPEC_TEXT.replace("20852163", str(2**63)), "2\\^63"),
        (SPEC_TEXT.replace("20852163", ""), "leading"),
        (SPEC_TEXT.replace("q2I=", "q2J="), "canonical"),  # non-canonical final bits
        (SPEC_TEXT.replace("q2I=", "q2I"), "base64"),
        (SPEC_TEXT.replace("CsUYapGGPo4d", "CsUY"), "bytes"),
        (SPEC_TEXT + "\n", "extension"),
        (SPEC_TEXT + "ext\n\nmore\n", "extension"),
    ],
)
def test_malformed_checkpoints(text, why):
    with pytest.raises(CheckpointError, match=why):
        Checkpoint.parse(text)


def test_constructor_refuses_what_it_cannot_write():
    for bad in (
        dict(origin="", size=1, root_hash=ROOT),
        dict(origin="a\nb", size=1, root_hash=ROOT),
        dict(origin="o", size=-1, root_hash=ROOT),
        dict(origin="o", size=1, root_hash=ROOT[:31]),
        dict(origin="o", size=1, root_hash=ROOT, extensions=("",)),
    ):
        with pytest.raises(CheckpointError):
            Checkpoint(**bad)


def test_sign_and_open():
    signer = note.Ed25519Signer("example.com/log", b"\x01" * 32)
    witness = note.Ed25519Signer("example.com/witness", b"\x02" * 32)
    cp = Checkpoint("example.com/log", 3, merkle.root([b"a", b"b", b"c"]))
    msg = checkpoint.sign_checkpoint(cp, [signer, witness])
    got, n = checkpoint.open_checkpoint(msg, [signer.verifier()], origin="example.com/log")
    assert got == cp and [s.name for s in n.sigs] == ["example.com/log"]
    assert [s.name for s in n.unverified_sigs] == ["example.com/witness"]
    with pytest.raises(CheckpointError, match="expected"):
        checkpoint.open_checkpoint(msg, [signer.verifier()], origin="example.com/other")
    with pytest.raises(note.UnverifiedNoteError):
        checkpoint.open_checkpoint(msg, [], origin="example.com/log")
    tampered = msg.replace(b"\n3\n", b"\n4\n")
    with pytest.raises(note.InvalidSignatureError):
        checkpoint.open_checkpoint(tampered, [signer.verifier()])


def _log(leaves):
    log = tlog.MemoryLog()
    for leaf in leaves:
        log.append(leaf)
    return log


def test_log_proofs_equal_the_ledger_merkle_proofs():
    leaves = [b"record %d" % i for i in range(64)]
    log = tlog.MemoryLog()
    for n in range(1, 65):
        log.append(leaves[n - 1])
        tree = leaves[:n]
        assert len(log.hashes) == tlog.stored_hash_count(n)
        root = log.root()
        assert root == merkle.root(tree)
        for i in range(n):
            proof = log.prove_record(i)
            assert proof == merkle.inclusion_proof(tree, i), (n, i)
            assert tlog.check_record(proof, n, root, i, merkle.leaf_hash(tree[i]))
            assert not tlog.check_record(proof, n, root, i, merkle.leaf_hash(b"forged"))
        for m in range(1, n + 1):
            proof = log.prove_tree(m)
            assert proof == merkle.consistency_proof(tree, m), (n, m)
            assert tlog.check_tree(proof, n, root, m, log.root(m))
            if m < n:
                assert not tlog.check_tree(proof, n, root, m, merkle.root(tree[: m - 1] + [b"forged"]))
    # proofs for older tree sizes come from the same stored hashes
    assert log.prove_record(3, size=10) == merkle.inclusion_proof(leaves[:10], 3)
    assert log.prove_tree(5, size=20) == merkle.consistency_proof(leaves[:20], 5)


def test_stored_hash_index_round_trips():
    for i in range(2000):
        level, n = tlog.split_stored_hash_index(i)
        assert tlog.stored_hash_index(level, n) == i
    # Go's tlog_test: the first stored hashes are leaf 0, leaf 1, node (1,0), leaf 2, leaf 3, node(1,1), node(2,0)
    assert [tlog.stored_hash_index(lv, n) for lv, n in [(0, 0), (0, 1), (1, 0), (0, 2), (0, 3), (1, 1), (2, 0)]] == list(
        range(7)
    )


def test_bad_proof_requests():
    log = _log([b"a", b"b"])
    with pytest.raises(ValueError):
        log.prove_record(2)
    with pytest.raises(ValueError):
        log.prove_tree(0)
    with pytest.raises(ValueError):
        log.prove_tree(3)


def test_rfc6962_reference_roots():
    ref = json.loads(shared_path("vectors", "merkle", "rfc6962_reference_vectors.json").read_text())
    leaves = [bytes.fromhex(h) for h in ref["leaf_inputs_hex"]]
    log = _log(leaves)
    assert log.root(0).hex() == ref["empty_tree_root_hex"]
    for size, want in ref["root_by_size_hex"].items():
        assert log.root(int(size)).hex() == want, size


def _b64(s):
    return base64.b64decode(s) if s is not None else None


def _vectors(kind):
    base = shared_path("vectors", "merkle", "testdata", kind)
    return [(str(f.relative_to(base)), json.loads(f.read_text())) for f in sorted(base.rglob("*.json"))]


def test_transparency_dev_vectors_generated_and_checked():
    """Every valid vector over the reference leaves is a proof this log generates; every invalid one fails."""
    ref = json.loads(shared_path("vectors", "merkle", "rfc6962_reference_vectors.json").read_text())
    log = _log([bytes.fromhex(h) for h in ref["leaf_inputs_hex"]])
    generated = checked = 0
    for name, v in _vectors("inclusion"):
        proof = [_b64(p) for p in v["proof"] or []]
        ok = tlog.check_record(proof, v["treeSize"], _b64(v["root"]), v["leafIdx"], _b64(v["leafHash"]))
        assert ok is (not v["wantErr"]), name
        checked += 1
        if ok and 0 < v["treeSize"] <= log.size and log.root(v["treeSize"]) == _b64(v["root"]):
            assert log.prove_record(v["leafIdx"], size=v["treeSize"]) == proof, name
            generated += 1
    for name, v in _vectors("consistency"):
        proof = [_b64(p) for p in v["proof"] or []]
        ok = tlog.check_tree(proof, v["size2"], _b64(v["root2"]), v["size1"], _b64(v["root1"]))
        assert ok is (not v["wantErr"]), name
        checked += 1
        if ok and v["size2"] <= log.size and log.root(v["size2"]) == _b64(v["root2"]):
            assert log.prove_tree(v["size1"], size=v["size2"]) == proof, name
            generated += 1
    assert generated >= 8 and checked >= 100
