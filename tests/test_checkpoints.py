"""Each stream is a log the car signs C2SP checkpoints of (agent/ledger/checkpoints.py), on real stores.

The car never signs two checkpoints of one log that no consistency proof
joins: not from an edited store, not from a rolled-back one; a copied store
(consistent with itself) refuses once it is shown a checkpoint the car
signed elsewhere.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path

import pytest

from carledger.ledger import Ledger, Store, merkle
from carledger.ledger.checkpoints import ForkedStore, log_verifier, origin_for
from carledger.ledger.errors import StoreError
from carledger.ledger.keys import kid
from carledger.ledger.store import DB_FILE
from carledger.transparency import CheckpointError, NoteError, open_checkpoint, sign_checkpoint
from carledger.transparency.checkpoint import Checkpoint
from carledger.transparency.note import Ed25519Signer

VID = "VIN-CHECKPOINTS"


def _drive(ledger: Ledger, stream: str, blocks: int, start: float = 0.0) -> None:
    """Seal `blocks` blocks of one record each into `stream`."""
    w = ledger.writer(stream)
    for i in range(blocks):
        w.add_sample(start + i, "Vehicle.Speed", float(i))
        ledger.seal([w])


def _leaves(store_dir: Path, stream: str) -> list[bytes]:
    with Store.open_readonly(store_dir) as s:
        return [bytes(r.sign1) for r in s.iter_blocks(stream)]


def _sql(store_dir: Path, *statements: str) -> None:
    conn = sqlite3.connect(store_dir / DB_FILE)
    with conn:
        for st in statements:
            conn.execute(st)
    conn.close()


def _count(store_dir: Path, table: str) -> int:
    conn = sqlite3.connect(store_dir / DB_FILE)
    try:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    finally:
        conn.close()


def _open(store_dir: Path, every: int = 4) -> Ledger:
    ledger = Ledger.open(store_dir, VID)
    ledger.checkpoint_every = every
    return ledger


def test_every_n_blocks_and_at_close_the_stream_key_signs_its_log(tmp_path):
    with _open(tmp_path) as ledger:
        _drive(ledger, "ubi", 10)
        assert ledger.store.checkpoint_size("ubi") == 8
        pub = bytes(ledger.verify_key)
    # at close the last two blocks got their checkpoint too
    with Store.open(tmp_path) as store:
        last = store.latest_checkpoint("ubi")
        assert last is not None
    cp, opened = open_checkpoint(last.note, [log_verifier(pub, "ubi")], origin_for(pub, "ubi"))
    assert (cp.size, cp.root_hash) == (10, merkle.root(_leaves(tmp_path, "ubi")))
    assert cp.origin == f"carledger.example/v/{kid(pub).hex()}/ubi"
    assert [s.name for s in opened.sigs] == [cp.origin]
    assert _count(tmp_path, "checkpoints") == 3  # sizes 4, 8 and 10


def test_consecutive_checkpoints_are_joined_by_consistency_proofs(tmp_path):
    with _open(tmp_path, every=3) as ledger:
        _drive(ledger, "ubi", 11)
    conn = sqlite3.connect(tmp_path / DB_FILE)
    notes = [bytes(n) for (n,) in conn.execute("SELECT note FROM checkpoints ORDER BY id")]
    conn.close()
    with Store.open_readonly(tmp_path) as store:
        pub = store.public_key
        cps = [open_checkpoint(n, [log_verifier(pub, "ubi")])[0] for n in notes]
        assert [c.size for c in cps] == [3, 6, 9, 11]
        with Store.open(tmp_path) as writer:
            for a, b in zip(cps, cps[1:]):
                proof = writer.consistency_proof("ubi", a.size, b.size)
                assert merkle.verify_consistency(a.size, b.size, a.root_hash, b.root_hash, proof)


def test_a_pseudonymous_stream_is_signed_with_its_recipients_key_and_names_nothing_else(tmp_path):
    secret = os.urandom(32)
    with _open(tmp_path, every=2) as ledger:
        signer = ledger.certify(secret, "insurer", "a" * 32)
        w = ledger.writer("insurer-ubi")
        w.vid = "a" * 32
        _drive(ledger, "insurer-ubi", 2)
        _drive(ledger, "private", 2)
        vehicle_pub = bytes(ledger.verify_key)
    with Store.open(tmp_path) as store:
        ins = store.latest_checkpoint("insurer-ubi")
        own = store.latest_checkpoint("private")
    pub = bytes(signer.public_key)
    assert ins.checkpoint.origin == origin_for(pub, "insurer-ubi")
    open_checkpoint(ins.note, [log_verifier(pub, "insurer-ubi")])
    with pytest.raises(NoteError):  # the vehicle key did not sign it
        open_checkpoint(ins.note, [log_verifier(vehicle_pub, "insurer-ubi")])
    text = ins.note.decode()
    for other in (VID, "private", kid(vehicle_pub).hex()):
        assert other not in text
    assert own.checkpoint.origin == origin_for(vehicle_pub, "private")


def test_edited_head_cache_signs_nothing(tmp_path):
    with _open(tmp_path) as ledger:
        _drive(ledger, "ubi", 6)
    before = _count(tmp_path, "checkpoints")
    _sql(tmp_path, "UPDATE streams SET head_seq = 3 WHERE name = 'ubi'")
    with pytest.raises(StoreError, match="streams says head_seq 3"):
        Ledger.open(tmp_path, VID)
    assert _count(tmp_path, "checkpoints") == before


def test_rolled_back_store_refuses_to_write(tmp_path):
    """Blocks deleted after a checkpoint, caches made to agree: the store itself shows the car signed more."""
    with _open(tmp_path) as ledger:
        _drive(ledger, "ubi", 8)
    digest = sqlite3.connect(tmp_path / DB_FILE).execute(
        "SELECT digest FROM blocks WHERE stream = 'ubi' AND seq = 4").fetchone()[0]
    _sql(tmp_path, "DELETE FROM blocks WHERE stream = 'ubi' AND seq > 4",
         f"UPDATE streams SET head_seq = 4, head_digest = X'{digest.hex()}' WHERE name = 'ubi'",
         "DELETE FROM tree_hashes")
    before = _count(tmp_path, "checkpoints")
    ledger = _open(tmp_path)
    with pytest.raises(ForkedStore, match=r"signed a checkpoint of 8 blocks, the store holds 5.*Recovery"):
        _drive(ledger, "ubi", 1, start=100)
    assert ledger.store.block_count("ubi") == 5  # nothing written
    ledger.close(seal=False)
    assert _count(tmp_path, "checkpoints") == before


def test_edited_tree_hashes_are_derived_again_from_the_blocks(tmp_path):
    with _open(tmp_path) as ledger:
        _drive(ledger, "ubi", 5)
    _sql(tmp_path, "UPDATE tree_hashes SET hash = zeroblob(32) WHERE idx < 6")
    with _open(tmp_path) as ledger:
        _drive(ledger, "ubi", 3, start=50)
    with Store.open(tmp_path) as store:
        cp = store.latest_checkpoint("ubi").checkpoint
    assert (cp.size, cp.root_hash) == (8, merkle.root(_leaves(tmp_path, "ubi")))


@pytest.mark.parametrize("edit", [
    "UPDATE tree_hashes SET hash = zeroblob(32) WHERE idx = {node}",  # a node the next blocks' hashes build on
    "UPDATE tree_hashes SET hash = zeroblob(32) WHERE idx = {leaf}",  # the last new block's own
    "DELETE FROM tree_hashes WHERE idx = {node}",
])
def test_edited_hashes_of_blocks_since_the_last_checkpoint_are_derived_again(tmp_path, edit):
    """While the agent runs: the hashes blocks added since the last checkpoint are checked against the blocks."""
    from carledger.transparency import tlog

    ledger = _open(tmp_path, every=8)
    _drive(ledger, "ubi", 6)  # blocks 0-5, no checkpoint yet; the next at 8
    node, leaf = tlog.stored_hash_index(1, 2), tlog.stored_hash_index(0, 5)  # blocks 4-5's node, block 5's leaf
    _sql(tmp_path, edit.format(node=node, leaf=leaf))
    _drive(ledger, "ubi", 2, start=50)  # block 7 builds on blocks 4-5's node; the checkpoint of 8 checks them all
    ledger.close(seal=False)
    with Store.open(tmp_path) as store:
        cp = store.latest_checkpoint("ubi").checkpoint
    assert (cp.size, cp.root_hash) == (8, merkle.root(_leaves(tmp_path, "ubi")))
    derived: list[bytes] = []  # every stored hash, as the blocks give them: the edited one was repaired
    for index, leaf in enumerate(_leaves(tmp_path, "ubi")):
        derived += tlog.stored_hashes_for_record_hash(index, merkle.leaf_hash(leaf), lambda at: [derived[i] for i in at])
    conn = sqlite3.connect(tmp_path / DB_FILE)
    assert [r[0] for r in conn.execute("SELECT hash FROM tree_hashes WHERE stream = 'ubi' ORDER BY idx")] == derived
    conn.close()


def test_edited_checkpoint_row_refuses(tmp_path):
    with _open(tmp_path) as ledger:
        _drive(ledger, "ubi", 4)
    _sql(tmp_path, "UPDATE checkpoints SET note = replace(note, X'0a340a', X'0a350a')")
    ledger = _open(tmp_path)
    with pytest.raises(StoreError, match="is not a checkpoint the stream's key signed"):
        _drive(ledger, "ubi", 1, start=9)
    ledger.close(seal=False)


@pytest.mark.parametrize("edit", [
    "UPDATE checkpoints SET note = replace(note, X'0a340a', X'0a350a')",  # the signed note itself
    "UPDATE checkpoints SET size = size + 1",  # the unsigned size column beside it
])
def test_verify_reports_an_edited_checkpoint_before_the_writer_refuses(tmp_path, edit):
    """What makes the writer refuse must make `carledger verify` fail too, or its advice to run verify misleads."""
    from carledger.verify import verify_store

    with _open(tmp_path) as ledger:
        _drive(ledger, "ubi", 4)
    assert verify_store(tmp_path).ok
    _sql(tmp_path, edit)
    report = verify_store(tmp_path)
    assert not report.ok and [(p.stream, p.kind) for p in report.problems] == [("ubi", "row-mismatch")]
    assert "checkpoint" in report.problems[0].detail


def test_verify_reports_blocks_rewritten_under_a_signed_checkpoint(tmp_path):
    """Blocks re-signed with the car's own key after a checkpoint (a chain rebuilt whole): the checkpoint shows it."""
    from carledger.verify import verify_store

    with _open(tmp_path) as ledger:
        _drive(ledger, "ubi", 4)
    rewritten = tmp_path.parent / f"{tmp_path.name}-rewritten"
    shutil.copytree(tmp_path / "keys", rewritten / "keys")  # the car's own key signs the rewritten chain
    with Ledger.open(rewritten, VID) as other:  # another chain of 4 blocks, with other values
        other.checkpoint_every = 1000
        _drive(other, "ubi", 4, start=100)
    _sql(tmp_path, "DELETE FROM blocks WHERE stream = 'ubi'")
    src = sqlite3.connect(rewritten / DB_FILE)
    cols = [r[1] for r in src.execute("PRAGMA table_info(blocks)")]
    rows = src.execute(f"SELECT {', '.join(cols)} FROM blocks WHERE stream = 'ubi'").fetchall()
    src.close()
    src = sqlite3.connect(rewritten / DB_FILE)
    head = src.execute("SELECT head_seq, head_digest FROM streams WHERE name = 'ubi'").fetchone()
    src.close()
    conn = sqlite3.connect(tmp_path / DB_FILE)
    with conn:  # the blocks, and the cached head to match them: only the signed checkpoint still disagrees
        conn.executemany(f"INSERT INTO blocks({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})", rows)
        conn.execute("UPDATE streams SET head_seq = ?, head_digest = ? WHERE name = 'ubi'", head)
    conn.close()
    report = verify_store(tmp_path)
    assert not report.ok and "checkpoint" in " ".join(p.detail for p in report.problems)


def test_a_store_older_than_checkpoints_gets_its_log_from_its_blocks(tmp_path):
    with _open(tmp_path, every=1000) as ledger:
        _drive(ledger, "ubi", 7)
    _sql(tmp_path, "DELETE FROM tree_hashes", "DELETE FROM checkpoints")
    with _open(tmp_path) as ledger:
        _drive(ledger, "ubi", 1, start=20)
    with Store.open(tmp_path) as store:
        cp = store.latest_checkpoint("ubi").checkpoint
    assert (cp.size, cp.root_hash) == (8, merkle.root(_leaves(tmp_path, "ubi")))


def test_a_copied_store_refuses_once_shown_the_cars_own_checkpoint(tmp_path):
    orig, copy = tmp_path / "orig", tmp_path / "copy"
    with _open(orig) as ledger:
        _drive(ledger, "ubi", 6)
    shutil.copytree(orig, copy)
    with _open(orig) as ledger:  # the car goes on and signs more
        _drive(ledger, "ubi", 6, start=100)
    with Store.open(orig) as store:
        theirs = store.latest_checkpoint("ubi").note
        older = store.latest_checkpoint("ubi")
    assert older.checkpoint.size == 12

    ledger = _open(copy)  # the copy starts, consistent with itself, and even signs its own branch
    _drive(ledger, "ubi", 3, start=200)
    assert [s.checkpoint.size for s in ledger.checkpoint()] == [9]
    mine = ledger.store.latest_checkpoint("ubi")
    assert ledger.store.check_signed_checkpoint("ubi", mine.note, "itself").size == 9  # its own: fine
    with pytest.raises(ForkedStore, match=r"signed a checkpoint of 12 blocks, the store holds 9.*witness.example"):
        ledger.store.check_signed_checkpoint("ubi", theirs, "witness.example/w1")
    with pytest.raises(ForkedStore):
        _drive(ledger, "ubi", 1, start=300)
    assert ledger.store.block_count("ubi") == 9
    with pytest.raises(ForkedStore):  # the pending record is not sealed either; the store closes all the same
        ledger.close()
    ledger = _open(copy)
    assert "forks row 1" in ledger.store.refusal
    with pytest.raises(ForkedStore):
        _drive(ledger, "ubi", 1, start=400)
    ledger.close(seal=False)
    conn = sqlite3.connect(copy / DB_FILE)
    (kept,) = conn.execute("SELECT note FROM forks").fetchone()
    conn.close()
    assert bytes(kept) == theirs  # the signed evidence, as received


def test_a_checkpoint_of_same_size_with_another_root_is_evidence(tmp_path):
    orig, copy = tmp_path / "orig", tmp_path / "copy"
    with _open(orig) as ledger:
        _drive(ledger, "ubi", 4)
    shutil.copytree(orig, copy)
    for path, start in ((orig, 10), (copy, 20)):
        with _open(path) as ledger:
            _drive(ledger, "ubi", 4, start=start)
    with Store.open(orig) as store:
        theirs = store.latest_checkpoint("ubi").note
    with Store.open(copy) as store:
        with pytest.raises(ForkedStore, match="first 8 blocks do not give the root"):
            store.check_signed_checkpoint("ubi", theirs, "collector insurer")


def test_checkpoints_not_signed_by_the_car_are_not_evidence(tmp_path):
    with _open(tmp_path) as ledger:
        _drive(ledger, "ubi", 4)
        origin = ledger.store.latest_checkpoint("ubi").checkpoint.origin
    forged = sign_checkpoint(Checkpoint(origin, 99, b"\x01" * 32), [Ed25519Signer(origin, os.urandom(32))])
    with Store.open(tmp_path) as store:
        with pytest.raises((NoteError, CheckpointError)):
            store.check_signed_checkpoint("ubi", forged, "somebody")
        assert store.refusal is None
    assert _count(tmp_path, "forks") == 0


def test_the_agent_does_not_start_on_a_store_that_refuses(tmp_path):
    """`carledger run` on a copy that met its car's newer checkpoint: exit 2, one line, nothing sealed."""
    import subprocess
    import sys

    from carledger.dbc import path as dbc_path
    from carledger_sim.cli import main as sim_main

    log = tmp_path / "drive.log"
    assert sim_main(["record", "--scenario", "city", "--seed", "2", "--duration", "10", "--start-time", "now",
                     "-o", str(log)]) == 0
    orig, copy = tmp_path / "orig", tmp_path / "copy"
    with _open(orig) as ledger:
        _drive(ledger, "ubi", 4)
    shutil.copytree(orig, copy)
    with _open(orig) as ledger:
        _drive(ledger, "ubi", 4, start=50)
        theirs = ledger.store.latest_checkpoint("ubi").note
    with Store.open(copy) as store, pytest.raises(ForkedStore):
        store.check_signed_checkpoint("ubi", theirs, "witness.example/w1")
    blocks = _count(copy, "blocks")
    done = subprocess.run([sys.executable, "-m", "carledger", "run", "--replay", str(log), "--dbc",
                           dbc_path("carledger_demo.dbc"), "--store", str(copy), "--stream", "s=Vehicle.Speed",
                           "--fast"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert "refuses to write" in line and "Recovery" in line
    assert _count(copy, "blocks") == blocks
