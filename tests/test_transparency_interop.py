"""carledger's notes, checkpoints, cosignatures and log proofs against Go's sumdb/note and sumdb/tlog.

tests/go/interop is built offline from Debian's golang-go and
golang-golang-x-mod-dev (scripts/setup installs both); each test sends it one
JSON request. Go opens the notes carledger signs, checks its proofs, builds
its own log of the same records, and signs notes carledger must verify.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from carledger.ledger import merkle
from carledger.transparency import checkpoint, cosignature, note, tlog
from carledger.transparency.checkpoint import Checkpoint

GO_PKG = Path(__file__).parent / "go" / "interop"
SIZES = [1, 2, 3, 4, 5, 7, 8, 9, 16, 17, 31, 33, 64, 100, 257]


@pytest.fixture(scope="session")
def go_interop(tmp_path_factory) -> Path:
    go = shutil.which("go")
    if go is None:
        pytest.skip("`go` is not installed (Debian: golang-go golang-golang-x-mod-dev; scripts/setup installs them)")
    out = tmp_path_factory.mktemp("go")
    env = {
        **os.environ,
        "GO111MODULE": "off",
        "GOPATH": "/usr/share/gocode",
        "GOCACHE": str(out / "cache"),
        "GOFLAGS": "",
        "CGO_ENABLED": "0",
    }
    build = subprocess.run(
        [go, "build", "-o", str(out / "interop"), "."], cwd=GO_PKG, env=env, capture_output=True, text=True
    )
    assert build.returncode == 0, f"go build failed:\n{build.stderr}"
    return out / "interop"


def _go(binary: Path, request: dict) -> dict:
    done = subprocess.run([str(binary)], input=json.dumps(request), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _log(n: int) -> tuple[tlog.MemoryLog, list[bytes]]:
    records = [b"block %d of the stream" % i for i in range(n)]
    log = tlog.MemoryLog()
    for r in records:
        log.append(r)
    return log, records


LOG = note.Ed25519Signer("carledger.example/vehicle/1/insurer", b"\x21" * 32)
WITNESS = cosignature.CosignatureSigner("witness.example/w1", b"\x42" * 32, clock=lambda: 1765000000)


def test_go_opens_carledger_checkpoints(go_interop):
    log, _ = _log(max(SIZES))
    notes, texts = [], []
    for size in SIZES:
        cp = Checkpoint(LOG.name, size, log.root(size))
        texts.append(cp.text())
        notes.append(checkpoint.sign_checkpoint(cp, [LOG, WITNESS]).decode())
    ext = Checkpoint(LOG.name, 3, log.root(3), ("extension line",))
    notes.append(checkpoint.sign_checkpoint(ext, [LOG]).decode())
    tampered = notes[0].replace("\n1\n", "\n2\n", 1)
    other = note.Ed25519Signer(LOG.name, b"\x22" * 32)  # same name, unknown key
    unknown_only = checkpoint.sign_checkpoint(Checkpoint(LOG.name, 1, log.root(1)), [other]).decode()
    answer = _go(
        go_interop,
        {
            "vkeys": [LOG.verifier().vkey()],
            "cosig_vkeys": [WITNESS.verifier().vkey()],
            "notes": notes + [tampered, unknown_only],
        },
    )["notes"]
    want_sigs = [f"{LOG.name}+{LOG.key_id:08x}", f"{WITNESS.name}+{WITNESS.key_id:08x}"]
    for got, text in zip(answer, texts):
        assert got.get("err") is None and got["text"] == text and got["sigs"] == want_sigs
    assert answer[len(SIZES)]["text"] == ext.text() and answer[len(SIZES)]["sigs"] == want_sigs[:1]
    assert answer[-2]["err"] == f"invalid signature for key {LOG.name}+{LOG.key_id:08x}"
    assert answer[-1]["err"] == "note has no verifiable signatures"


def test_go_checks_carledger_proofs(go_interop):
    log, _ = _log(max(SIZES))
    records, trees, want_records, want_trees = [], [], [], []
    for size in SIZES:
        root = log.root(size)
        for index in sorted({0, size // 3, size // 2, size - 1}):
            proof = log.prove_record(index, size=size)
            leaf = log.hashes[tlog.stored_hash_index(0, index)]
            check = {"size": size, "root": _b64(root), "index": index, "leaf_hash": _b64(leaf)}
            records.append({**check, "proof": [_b64(p) for p in proof]})
            want_records.append(True)
            bad = [_b64(merkle.leaf_hash(b"forged"))] + [_b64(p) for p in proof[1:]] if proof else []
            records.append({**check, "proof": bad, "leaf_hash": _b64(merkle.leaf_hash(b"other"))})
            want_records.append(False)
        for old in sorted({1, size // 2 or 1, size - 1 or 1, size}):
            proof = log.prove_tree(old, size=size)
            check = {"size": size, "root": _b64(root), "old_size": old, "old_root": _b64(log.root(old))}
            trees.append({**check, "proof": [_b64(p) for p in proof]})
            want_trees.append(True)
            if old < size:
                trees.append({**check, "proof": [_b64(p) for p in proof[:-1]]})
                want_trees.append(False)
    answer = _go(go_interop, {"records": records, "trees": trees})
    assert [e == "" for e in answer["records"]] == want_records
    assert [e == "" for e in answer["trees"]] == want_trees
    # and what Go refuses, carledger refuses too
    for check, ok in zip(records, want_records):
        args = [base64.b64decode(p) for p in check["proof"]], check["size"], base64.b64decode(check["root"])
        assert tlog.check_record(*args, check["index"], base64.b64decode(check["leaf_hash"])) is ok


def test_go_builds_the_same_log(go_interop):
    """Go's StoredHashes/TreeHash/ProveRecord/ProveTree over the same records give carledger's roots and proofs."""
    n = 40
    log, records = _log(n)
    sizes = list(range(1, n + 1))
    answer = _go(go_interop, {"leaves": [_b64(r) for r in records], "sizes": sizes})["proofs"]
    assert [p["size"] for p in answer] == sizes
    for got in answer:
        size = got["size"]
        assert got["root"] == _b64(log.root(size)) == _b64(merkle.root(records[:size]))
        assert got["records"] == [[_b64(h) for h in log.prove_record(i, size=size)] for i in range(size)]
        assert got["trees"] == [[_b64(h) for h in log.prove_tree(m, size=size)] for m in range(1, size + 1)]


def test_carledger_verifies_what_go_signs(go_interop):
    skey, vkey = note.generate_key("go.example/log")
    log, _ = _log(9)
    cp = Checkpoint("go.example/log", 9, log.root(9))
    seed = b"\x43" * 32
    signed = _go(
        go_interop,
        {"sign": {"skey": skey, "cosig_seed": _b64(seed), "cosig_name": "go.example/w", "cosig_time": 1765000123, "text": cp.text()}},
    )["signed"].encode()
    go_witness = cosignature.CosignatureSigner("go.example/w", seed).verifier()
    got, opened = checkpoint.open_checkpoint(signed, [note.parse_verifier_key(vkey), go_witness], origin=cp.origin)
    assert got == cp and len(opened.sigs) == 2
    assert cosignature.cosignature_times(opened, [go_witness]) == {"go.example/w": 1765000123}
    with pytest.raises(note.InvalidSignatureError):
        note.open_note(signed.replace(b"\n9\n", b"\n8\n"), [note.parse_verifier_key(vkey)])


def test_go_signs_the_published_vector(go_interop):
    from test_transparency_note import PETER_SIG, PETER_SKEY, TEXT

    assert _go(go_interop, {"sign": {"skey": PETER_SKEY, "text": TEXT}})["signed"] == TEXT + "\n" + PETER_SIG
