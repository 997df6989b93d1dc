"""The store and the Ledger facade: chains across restarts, one transaction per seal, readers."""

from __future__ import annotations

import hashlib
import sqlite3
import subprocess
import sys

import pytest

from carledger.ledger import (
    Event,
    Ledger,
    Sample,
    Store,
    StoreError,
    ZERO_DIGEST,
    decode_record,
    load_or_create_signing_key,
    merkle,
    open_block,
)
from carledger.verify import verify_store

T0 = 1_700_000_000.0


def _fill(w, n, start=0.0, step=0.01):
    for i in range(n):
        w.add_sample(T0 + start + i * step, "Vehicle.Speed", 30.0 + i % 50, "ESP_1.VehSpeed")


def test_chain_continues_across_reopen(tmp_path):
    path = tmp_path / "store"
    with Ledger.open(path, "VIN1") as ledger:
        for k in range(3):
            _fill(ledger.writer("vault"), 20, start=k)
            ledger.seal()
    with Ledger.open(path) as ledger:
        assert ledger.vehicle_id == "VIN1"
        w = ledger.writer("vault")
        assert w.head[0] == 2
        for k in range(3, 5):
            _fill(w, 20, start=k)
            ledger.seal()
    store = Store.open_readonly(path)
    rows = list(store.iter_blocks(batch=2))
    assert [r.seq for r in rows] == [0, 1, 2, 3, 4]
    prev = ZERO_DIGEST
    for r in rows:
        blk = open_block(store.message(r), store.verify_key or _pub(store))
        assert blk.header.prev == prev and blk.digest == r.digest and blk.header.vid == "VIN1"
        prev = blk.digest
    assert store.stream_head("vault") == (4, prev)
    assert store.streams() == ["vault"]
    store.close()
    assert verify_store(path).ok


def _pub(store):
    from carledger.ledger import VerifyKey

    return VerifyKey(store.public_key)


def test_records_and_times(tmp_path):
    with Ledger.open(tmp_path / "s", "VIN") as ledger:
        w = ledger.writer("a")
        w.add_sample(1.0000004, "Vehicle.Speed", 12)
        w.add_sample(0.5, "X.Y", "P", "X.Y")
        w.add_event(2.25, "pause", {"by": "owner"})
        w.add_sample(3.0, "Gear", True)  # bool -> int
        w.add_sample(3.5, "Bad", object())  # declared, not dropped silently
        (blk,) = ledger.seal()
    recs = [decode_record(r) for r in blk.records]
    assert recs[:4] == [
        Sample(1_000_000, "Vehicle.Speed", 12, None),
        Sample(500_000, "X.Y", "P", None),
        Event(2_250_000, "pause", {"by": "owner"}),
        Sample(3_000_000, "Gear", 1, None),
    ]
    assert recs[4].kind == "bad-record" and recs[4].detail["name"] == "Bad"
    assert (blk.header.t0, blk.header.t1) == (500_000, 3_500_000)
    assert blk.header.root == merkle.root(blk.records) and blk.header.count == 5


def test_seal_is_one_transaction_and_heads_move_only_after_commit(tmp_path, monkeypatch):
    ledger = Ledger.open(tmp_path / "s", "VIN")
    ledger.policy_digest = hashlib.sha256(b"policy v1").digest()
    for name in ("vault", "insurer", "crash"):
        _fill(ledger.writer(name), 5)
    calls = []
    real_append = ledger.store.append

    def failing(blocks, checkpoint=None, *, hold=0.0):  # Store.append's signature
        calls.append(len(blocks))
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(ledger.store, "append", failing)
    with pytest.raises(sqlite3.OperationalError):
        ledger.seal()
    assert calls == [3]
    assert all(w.pending == 5 and w.head is None for w in ledger.writers)

    monkeypatch.setattr(ledger.store, "append", lambda blocks, checkpoint=None, *, hold=0.0: calls.append(len(blocks)) or real_append(blocks, checkpoint, hold=hold))
    blocks = ledger.seal()
    assert calls == [3, 3]
    assert sorted(b.stream for b in blocks) == ["crash", "insurer", "vault"]
    assert all(b.seq == 0 and b.header.policy == ledger.policy_digest for b in blocks)
    assert all(w.pending == 0 and w.head == (0, b.digest) for w, b in zip(ledger.writers, blocks))
    assert ledger.seal() == []
    ledger.close()
    assert verify_store(tmp_path / "s").ok


def test_records_added_while_sealing_stay_pending(tmp_path):
    ledger = Ledger.open(tmp_path / "s", "VIN")
    w = ledger.writer("a")
    _fill(w, 3)
    blk = w.build()
    w.add_sample(T0 + 10, "Late", 1)
    ledger.store.append([blk])
    w.committed(blk)
    assert w.pending == 1 and blk.header.count == 3
    ledger.close()


def test_due(tmp_path):
    ledger = Ledger.open(tmp_path / "s", "VIN")
    a, b, c = ledger.writer("a"), ledger.writer("b"), ledger.writer("c")
    a.add_sample(100.0, "x", 1)
    for i in range(10):
        b.add_sample(100.5 + i / 100, "x", i)
    assert a.first_time == 100.0 and b.last_time == pytest.approx(100.59)
    assert ledger.due(now=100.9, max_age_s=1.0, max_records=10) == [b]
    assert ledger.due(now=101.0, max_age_s=1.0, max_records=100) == [a]
    assert c not in ledger.due(now=1e9, max_age_s=1.0, max_records=1)
    ledger.close()


def test_due_brings_streams_half_as_old_along_into_the_same_commit(tmp_path):
    """On a live bus each seal is an fsync: a stream half due is sealed with one that is due, and they stay together."""
    ledger = Ledger.open(tmp_path / "s", "VIN")
    a, b, c = ledger.writer("a"), ledger.writer("b"), ledger.writer("c")
    a.add_sample(100.0, "x", 1)
    b.add_sample(100.5, "x", 1)
    c.add_sample(100.6, "x", 1)
    assert ledger.due(now=100.9, max_age_s=1.0, max_records=10, along_s=0.5) == []  # none due: none along
    assert ledger.due(now=101.0, max_age_s=1.0, max_records=10, along_s=0.5) == [a, b]  # c is 0.4 s old
    assert ledger.due(now=101.0, max_age_s=1.0, max_records=10) == [a]
    assert ledger.due(now=101.1, max_age_s=1.0, max_records=10, along_s=0.5) == [a, b, c]
    ledger.seal(ledger.due(now=101.0, max_age_s=1.0, max_records=10, along_s=0.5))
    assert (a.pending, b.pending, c.pending) == (0, 0, 1)
    for w in (a, b, c):
        w.add_sample(101.2, "x", 2)
    assert ledger.due(now=102.0, max_age_s=1.0, max_records=10, along_s=0.5) == [c, a, b]  # c due, a and b along
    ledger.close()


def test_append_refuses_a_block_that_does_not_continue_the_head(tmp_path):
    ledger = Ledger.open(tmp_path / "s", "VIN")
    w = ledger.writer("a")
    _fill(w, 2)
    blk = w.build()
    ledger.store.append([blk])
    with pytest.raises(StoreError, match="does not continue"):
        ledger.store.append([blk])
    assert ledger.store.block_count() == 1
    ledger.close(seal=False)


def test_invalid_stream_name_and_policy(tmp_path):
    ledger = Ledger.open(tmp_path / "s", "VIN")
    for bad in ("", "a/b", "a+", "#", " x", "x" * 65):
        with pytest.raises(ValueError):
            ledger.writer(bad)
    with pytest.raises(ValueError):
        ledger.policy_digest = b"short"
    ledger.close()


def test_open_checks(tmp_path):
    path = tmp_path / "s"
    Ledger.open(path, "VIN-A").close()
    with pytest.raises(StoreError, match="belongs to vehicle 'VIN-A'"):
        Store.open(path, "VIN-B")
    # a replaced signing key cannot continue the chain
    (path / "keys" / "vehicle.key").unlink()
    (path / "keys" / "vehicle.pub").unlink()
    load_or_create_signing_key(path)
    with pytest.raises(StoreError, match="does not match the public key"):
        Store.open(path)
    with pytest.raises(StoreError):
        Store.open(tmp_path / "missing", create=False)


def test_open_readonly_errors(tmp_path):
    with pytest.raises(StoreError, match="no such directory"):
        Store.open_readonly(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(StoreError, match="not a carledger store"):
        Store.open_readonly(tmp_path / "empty")
    other = tmp_path / "other"
    other.mkdir()
    conn = sqlite3.connect(other / "ledger.sqlite")
    conn.execute("CREATE TABLE t(x)")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="not a carledger store"):
        Store.open_readonly(other)
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "ledger.sqlite").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError):
        Store.open_readonly(garbage)
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match="not a directory"):
        Store.open_readonly(tmp_path / "file")


def test_reader_process_while_the_agent_writes(tmp_path):
    path = tmp_path / "s"
    ledger = Ledger.open(path, "VIN")
    for k in range(3):
        _fill(ledger.writer("a"), 10, start=k)
        ledger.seal()
    code = (
        "import sys; from carledger.ledger import Store; from carledger.verify import verify_store\n"
        "s = Store.open_readonly(sys.argv[1]); n = s.block_count(); s.close()\n"
        "r = verify_store(sys.argv[1]); print(n, r.ok, r.streams['a'].last_seq)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["3", "True", "2"]
    _fill(ledger.writer("a"), 10, start=5)
    ledger.seal()  # the writer still works after a reader came and went
    assert ledger.store.block_count() == 3 + 1
    ledger.close()


def test_retention_drop_records_still_verifies(tmp_path):
    path = tmp_path / "s"
    with Ledger.open(path, "VIN") as ledger:
        for k in range(3):
            _fill(ledger.writer("a"), 10, start=k)
            ledger.seal()
        ids = [r.id for r in ledger.store.iter_blocks("a")]
        ledger.writer("audit").add_event(100.0, "retention", {"stream": "a", "seqs": [[0, 1]]})  # declared first
        ledger.seal()
        ledger.store.drop_records(ids[:2])
        ledger.store.mark_synced(ids)
        assert ledger.store.mark_acked("a", 1) == 2
        assert [r.seq for r in ledger.store.iter_blocks("a", unacked=True)] == [2]
        row = ledger.store.get_block(ids[0])
        assert row.records is None and ledger.store.records(row) == []
    report = verify_store(path)
    assert report.ok and report.streams["a"].dropped == 2 and report.streams["a"].records == 30
    with Ledger.open(path, "VIN") as ledger:
        ledger.store.drop_records([ids[2]])  # not declared: verify says so
    assert [(p.stream, p.seq, p.kind) for p in verify_store(path).problems] == [("a", 2, "undeclared-drop")]


def test_one_writer_per_store_and_the_lock_dies_with_its_holder(tmp_path):
    import subprocess
    import sys

    from carledger.ledger import Store, StoreError

    first = Store.open(tmp_path / "s", "car")
    with pytest.raises(StoreError, match="being written by pid"):
        Store.open(tmp_path / "s", "car")
    reader = Store.open_readonly(tmp_path / "s")  # readers need no lock
    reader.close()
    first.close()
    Store.open(tmp_path / "s", "car").close()  # released on close
    # a process that dies holding the lock (SIGKILL) leaves no stale lock behind
    code = f"from carledger.ledger import Store; s = Store.open({str(tmp_path / 's')!r}, 'car'); import os; os.kill(os.getpid(), 9)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == -9
    Store.open(tmp_path / "s", "car").close()


def test_held_seals_reach_other_readers_only_when_a_later_write_or_close_commits_them(tmp_path):
    """`hold` (a fast replay's seals): held blocks are invisible to other connections until committed,
    and any other write, an append without hold, or close commits them first; nothing is lost."""
    path = tmp_path / "store"

    def durable() -> int:
        reader = Store.open_readonly(path)
        try:
            return len(list(reader.iter_blocks()))
        finally:
            reader.close()

    ledger = Ledger.open(path, "VIN1")
    w = ledger.writer("vault")
    for k in range(3):
        _fill(w, 10, start=k)
        ledger.seal(hold=3600.0)
    assert w.head[0] == 2 and durable() == 0
    ledger.store.mark_synced([])  # another write: commits what is held before its own transaction
    assert durable() == 3
    _fill(w, 10, start=3)
    ledger.seal(hold=3600.0)
    _fill(w, 10, start=4)
    ledger.seal()  # no hold: commits the held append with its own
    assert durable() == 5
    _fill(w, 10, start=5)
    ledger.seal(hold=3600.0)
    ledger.close()
    assert durable() == 6
    assert verify_store(path).ok


class _SealBetween:
    """The sync thread's connection, with the pipeline sealing right after its first statement has read."""

    def __init__(self, conn: sqlite3.Connection, seal):
        self.conn, self.seal, self.statements = conn, seal, 0

    def execute(self, *args):
        rows = self.conn.execute(*args).fetchall()  # read to the end: this statement's snapshot is taken
        self.statements += 1
        if self.statements == 1:
            self.seal()
        return _Rows(rows)

    def __getattr__(self, name):
        return getattr(self.conn, name)


class _Rows:
    def __init__(self, rows):
        self.rows = rows

    def fetchone(self):
        return self.rows[0] if self.rows else None


def test_acked_seq_reads_one_snapshot_so_a_block_sealed_meanwhile_never_looks_acked(tmp_path):
    """The syncer asks where a stream's acks stand as the pipeline seals the stream's first block.

    Read in two statements, the block committed between them looked acked (seq 0), so the syncer
    started sending at seq 1 and the collector held the stream behind a gap for ever.
    """
    ledger = Ledger.open(tmp_path / "car", "VIN-RACE")
    writer = ledger.writer("speed")

    def seal() -> None:
        writer.add_sample(1.0, "Vehicle.Speed", 10.0)
        ledger.seal([writer])

    marks = Store.open_marks(tmp_path / "car")
    try:
        marks._conn = _SealBetween(marks._conn, seal)
        assert marks.acked_seq("speed") is None  # nothing acked: seq 0 is still to send
        assert marks._conn.statements >= 1
        marks._conn = marks._conn.conn
        assert marks.acked_seq("speed") is None and marks.backlog()["speed"][0] == 1  # sealed, unacked
        marks.mark_acked("speed", 0)
        assert marks.acked_seq("speed") == 0
    finally:
        marks.close()
        ledger.close()
