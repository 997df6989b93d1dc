"""The store's unsigned caches never make the agent sign a fork, and a damaged store never crashes a tool.

Each test edits one cached value of a store written by a real run, then runs
the agent again (a real `carledger run --replay` subprocess): it must refuse
with one clear line (exit 2) and sign nothing, and `carledger verify` must
report the edit (exit 1). Issue 11, holes 2 and 3.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from carledger.dbc import path as dbc_path
from harness.drives import write_drive_log

STREAMS = ("--stream", "s=Vehicle.Speed", "--stream", "t=Vehicle.Powertrain.*")


@pytest.fixture(scope="module")
def drive(tmp_path_factory) -> Path:
    return write_drive_log(tmp_path_factory.mktemp("drive") / "drive.log")


def run_agent(drive: Path, store: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "carledger", "run", "--replay", str(drive), "--dbc", dbc_path("carledger_demo.dbc"),
         "--store", str(store), "--fast", *STREAMS],
        capture_output=True, text=True, timeout=300,
    )


def run_verify(store: Path) -> tuple[int, dict, str]:
    done = subprocess.run(
        [sys.executable, "-m", "carledger", "verify", str(store), "--json"], capture_output=True, text=True, timeout=300
    )
    try:
        report = json.loads(done.stdout)
    except ValueError:
        report = {}
    return done.returncode, report, done.stderr


@pytest.fixture(scope="module")
def pristine(drive, tmp_path_factory) -> Path:
    store = tmp_path_factory.mktemp("pristine") / "store"
    done = run_agent(drive, store)
    assert done.returncode == 0, done.stderr
    return store


@pytest.fixture
def store(pristine, tmp_path) -> Path:
    dst = tmp_path / "store"
    shutil.copytree(pristine, dst)
    return dst


def db(store: Path) -> sqlite3.Connection:
    return sqlite3.connect(store / "ledger.sqlite", isolation_level=None)


def signed_blocks(store: Path) -> list[tuple]:
    with db(store) as conn:
        return conn.execute("SELECT id, sign1 FROM blocks ORDER BY id").fetchall()


def assert_refused(drive: Path, store: Path, *words: str) -> str:
    """The agent refuses to start: exit 2, one line naming the cache, and not one block signed."""
    before = signed_blocks(store)
    done = run_agent(drive, store)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert len(lines) == 1, done.stderr
    for word in words:
        assert word in lines[0], lines[0]
    assert signed_blocks(store) == before
    return lines[0]


def kinds(report: dict) -> set[tuple]:
    return {(p["stream"], p["kind"]) for p in report["problems"]}


def test_an_unedited_store_continues_and_verifies(drive, store):
    """The baseline the refusals below are measured against: a second run continues every chain."""
    before = len(signed_blocks(store))
    done = run_agent(drive, store)
    assert done.returncode == 0, done.stderr
    assert len(signed_blocks(store)) > before
    rc, report, _ = run_verify(store)
    assert rc == 0 and report["ok"], report


def test_head_digest_byte_24_flipped_is_refused_and_reported(drive, store):
    with db(store) as conn:
        digest = bytearray(conn.execute("SELECT head_digest FROM streams WHERE name = 's'").fetchone()[0])
        digest[24] ^= 0x01
        conn.execute("UPDATE streams SET head_digest = ? WHERE name = 's'", (bytes(digest),))
    line = assert_refused(drive, store, "stream 's'", "head_digest", "carledger verify")
    assert bytes(digest).hex()[:16] in line
    rc, report, _ = run_verify(store)
    assert rc == 1 and ("s", "fork") in kinds(report), report


def test_negative_head_seq_is_refused_and_reported(drive, store):
    with db(store) as conn:
        conn.execute("UPDATE streams SET head_seq = -1 WHERE name = 't'")
    assert_refused(drive, store, "stream 't'", "head_seq -1")
    rc, report, _ = run_verify(store)
    assert rc == 1 and ("t", "row-mismatch") in kinds(report), report


def test_meta_vehicle_edited_is_refused_and_reported(drive, store):
    with db(store) as conn:
        conn.execute("UPDATE meta SET value = 'evil-car' WHERE key = 'vehicle'")
    assert_refused(drive, store, "'evil-car'", "meta")
    rc, report, _ = run_verify(store)
    assert rc == 1 and (None, "row-mismatch") in kinds(report), report
    assert any("evil-car" in p["detail"] for p in report["problems"])


def test_head_row_deleted_is_refused(drive, store):
    """Without its streams row the writer would start the stream again at seq 0: a fork."""
    with db(store) as conn:
        conn.execute("DELETE FROM streams WHERE name = 's'")
    assert_refused(drive, store, "stream 's'")
    rc, report, _ = run_verify(store)
    assert rc == 1 and ("s", "row-mismatch") in kinds(report), report


def test_last_block_signature_damaged_is_refused(drive, store):
    """The head the writer continues must be a block the vehicle key signed."""
    with db(store) as conn:
        row_id, sign1 = conn.execute("SELECT id, sign1 FROM blocks WHERE stream = 't' ORDER BY seq DESC LIMIT 1").fetchone()
        damaged = bytearray(sign1)
        damaged[-1] ^= 0x80
        conn.execute("UPDATE blocks SET sign1 = ? WHERE id = ?", (bytes(damaged), row_id))
    assert_refused(drive, store, "stream 't'")
    rc, report, _ = run_verify(store)
    assert rc == 1 and ("t", "bad-signature") in kinds(report), report


# -- hole 3: text that is not UTF-8 ---------------------------------------------------------


BAD_TEXT = b"\xff\xfe-not-utf8"


@pytest.mark.parametrize(
    "table, column, where",
    [("meta", "value", "key = 'vehicle'"), ("meta", "key", "key = 'format'"), ("streams", "name", "name = 's'"),
     ("streams", "head_digest", "name = 't'")],
)
def test_invalid_utf8_text_is_reported_not_a_crash(drive, store, table, column, where):
    with db(store) as conn:
        conn.execute(f"UPDATE {table} SET {column} = CAST(? AS TEXT) WHERE {where}", (BAD_TEXT,))
        assert conn.execute(f"SELECT typeof({column}) FROM {table} WHERE CAST({column} AS BLOB) = ?",
                            (BAD_TEXT,)).fetchone() == ("text",)
    rc, report, err = run_verify(store)
    assert "Traceback" not in err
    if table == "meta" and column == "key":  # the store no longer says its format: not a store this tool reads
        assert rc == 2 and len(err.strip().splitlines()) == 1 and "format" in err and "not UTF-8" in err, err
    else:
        assert rc == 1 and report["problems"], (err, report)
    assert_refused(drive, store)


# -- a stream's vehicle id never changes ----------------------------------------------------


PSEUDONYM_A = "a" * 32  # a recipient's pseudonym of the car: 32 lowercase hex characters


def test_the_writer_never_signs_a_chain_under_another_vehicle_id(tmp_path):
    """Pseudonymous streams carry an id derived from meta.vehicle: a changed one must not reach a signature.

    Here every chain is pseudonymous, so the check at open lets the store through; the writer's
    own rule (a stream's vehicle id never changes) is what refuses.
    """
    from carledger.ledger import Ledger, LedgerError

    with Ledger.open(tmp_path / "store", "car-1") as ledger:
        w = ledger.writer("insurer")
        w.vid = PSEUDONYM_A
        w.add_sample(1.0, "Vehicle.Speed", 1.0)
        ledger.seal()
    with Ledger.open(tmp_path / "store") as ledger:
        w = ledger.writer("insurer")
        w.vid = "b" * 32  # the pseudonym an edited vehicle id gives
        w.add_sample(2.0, "Vehicle.Speed", 2.0)
        with pytest.raises(LedgerError, match=f"signed as vehicle '{PSEUDONYM_A}'"):
            ledger.seal()
        assert ledger.store.block_count("insurer") == 1
        w.vid = PSEUDONYM_A
        assert [b.header.seq for b in ledger.seal()] == [1]
