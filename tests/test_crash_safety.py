"""SIGKILL at random moments during a fast replay never breaks the ledger.

Each kill must leave a store that verifies; the restarted agent continues the
chain with no fork; what a killed run recorded is exactly a prefix of what a
complete run records (only the unsealed tail is lost).
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from carledger.cli import main
from carledger.ledger import Sample, decode_record, decode_records
from conftest import shared_path, wait_until

KILLS = 20
pytestmark = pytest.mark.slow


def stream_records(store: Path, stream: str, after_id: int = 0) -> tuple[list[tuple], int]:
    """Decoded samples of a stream in blocks with id > after_id, and the last block id.

    Events are left out: a stream declares its start once, not on every restart.
    """
    db = sqlite3.connect(f"file:{store / 'ledger.sqlite'}?mode=ro", uri=True)
    try:
        rows = db.execute(
            "SELECT id, records FROM blocks WHERE stream = ? AND id > ? ORDER BY id", (stream, after_id)
        ).fetchall()
    finally:
        db.close()
    records = [tuple(rec) for _, blob in rows for rec in map(decode_record, decode_records(blob)) if isinstance(rec, Sample)]
    return records, (rows[-1][0] if rows else after_id)


def block_count(store: Path) -> int:
    try:
        db = sqlite3.connect(f"file:{store / 'ledger.sqlite'}?mode=ro", uri=True)
        try:
            return db.execute("SELECT count(*) FROM blocks WHERE stream = 'wheels'").fetchone()[0]
        finally:
            db.close()
    except sqlite3.Error:
        return 0


@pytest.fixture(scope="module")
def long_log(tmp_path_factory) -> tuple[Path, Path]:
    folder = shared_path("logs", "comma2k19_rav4_2017")
    lines = (folder / "comma2k19_rav4_2017_seg40_bus0.log").read_text().splitlines()
    out = tmp_path_factory.mktemp("crash") / "long.log"
    with out.open("w") as f:
        for r in range(6):
            for line in lines:
                stamp, rest = line.split(" ", 1)
                f.write(f"({float(stamp[1:-1]) + r * 61:.6f}) {rest}\n")
    return out, folder / "toyota_rav4_2017_pt_generated.dbc"


def agent(log: Path, dbc: Path, store: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "carledger", "run", "--replay", str(log), "--dbc", str(dbc),
         "--store", str(store), "--stream", "wheels=WHEEL_SPEEDS.*", "--fast"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def verify(store: Path, capsys) -> dict:
    capsys.readouterr()
    code = main(["verify", str(store), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0, report["problems"]
    return report


def test_sigkill_during_fast_replay(long_log, tmp_path, capsys):
    log, dbc = long_log
    reference_store = tmp_path / "reference"
    started = time.monotonic()
    assert agent(log, dbc, reference_store).wait(timeout=120) == 0
    # Each killed run goes on where the last one stopped: kills spread over this long, on this machine, keep
    # hitting a running agent until the last one (a fixed window missed most of them on a faster machine).
    window = min(0.8, (time.monotonic() - started) / KILLS)
    reference, _ = stream_records(reference_store, "wheels")
    assert len(reference) > 10000

    store = tmp_path / "killed"
    rng = random.Random(1234)
    last_id = 0
    killed_mid_run = 0
    last_seq = -1
    for attempt in range(KILLS):
        before = block_count(store)
        proc = agent(log, dbc, store)
        wait_until(lambda: block_count(store) > before or proc.poll() is not None)
        time.sleep(rng.uniform(0.0, window))  # the random moment is the point of this test
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        # The agent may have finished between poll() and kill(): a zombie ignores the signal.
        assert proc.wait() in (0, -signal.SIGKILL)
        killed_mid_run += proc.returncode == -signal.SIGKILL

        report = verify(store, capsys)
        wheels = report["streams"]["wheels"]
        assert wheels["first_seq"] == 0 and wheels["blocks"] == wheels["last_seq"] + 1  # no gap, no fork
        assert wheels["last_seq"] > last_seq, f"run {attempt} sealed nothing"
        last_seq = wheels["last_seq"]

        recorded, last_id = stream_records(store, "wheels", last_id)
        assert recorded == reference[: len(recorded)], f"run {attempt}: recorded records are not a prefix"
    assert killed_mid_run >= KILLS // 2, f"only {killed_mid_run} of {KILLS} kills hit a running agent"
