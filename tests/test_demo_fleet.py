"""scripts/demo-fleet end to end: its Python body (scripts/demo_fleet.py) as the script runs it, minus scripts/setup.

A real PostgreSQL, two mosquitto brokers, three worker processes and the
simulated fleet; the output must say that every block arrived once, verified
and acked, and a Ctrl-C must leave no process of the run behind.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import pytest

from broker import require_mosquitto
from conftest import REPO, wait_until
from pg import require_postgresql

pytestmark = [pytest.mark.slow, pytest.mark.integration]

DEMO = REPO / "scripts" / "demo_fleet.py"


def leftovers(out) -> list[str]:
    """Command lines of live processes that belong to the run in `out` (its brokers and workers)."""
    found = []
    for pid in os.listdir("/proc"):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                cmd = fh.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(out) in cmd and int(pid) != os.getpid():
            found.append(cmd)
    return found


def test_the_fleet_demo_shows_every_block_arrived_once_verified_and_acked(tmp_path):
    require_postgresql()
    require_mosquitto()
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, str(DEMO), "--out", str(out)], capture_output=True, text=True, timeout=600,
                         cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert run.returncode == 0, run.stdout + run.stderr
    text = run.stdout
    assert re.search(r"^PostgreSQL \d+: a cluster in \S+ \(socket there, no TCP\)", text, re.M)
    assert len(re.findall(r"^broker \d: mosquitto on 127\.0\.0\.1:\d+$", text, re.M)) == 2
    assert len(re.findall(r"^worker w\d: carledger collect run worker --dsn .* --group fleet --broker .* --broker ",
                          text, re.M)) == 3
    assert "== 2. 20 vehicles, each with its own key, enrolled in the database" in text
    # collect status: 20 vehicles, two streams each, 10 blocks of 20 records.
    status = re.findall(r"^  (gps|speed) +(\d+) blocks +(\d+) records  head seq (\d+) ", text, re.M)
    assert len(status) == 40 and all((b, r, h) == ("10", "200", "9") for _, b, r, h in status)
    verified = re.findall(r"^car-\d+ (?:gps|speed): 10 blocks, 200 records: intact$", text, re.M)
    assert len(verified) == 40
    assert len(re.findall(r"^car-\d+ +20 blocks sealed, +20 acked$", text, re.M)) == 20
    # A car sends a block again when its ack is late (a loaded machine): a duplicate, stored once, acked again.
    shares = [int(n) for n in re.findall(r"^worker w\d: received \d+, accepted (\d+), duplicates \d+, rejected 0$",
                                         text, re.M)]
    assert len(shares) == 3 and sum(shares) == 400, text
    assert text.rstrip().splitlines()[-1] == (
        f"demo-fleet: done; 20 vehicles, 400 blocks (8000 records) stored once and verified, 400 acked; logs in {out}")
    assert run.stderr == ""
    assert leftovers(out) == []


def test_ctrl_c_stops_everything_the_demo_started(tmp_path):
    require_postgresql()
    require_mosquitto()
    out = tmp_path / "out"
    log = tmp_path / "demo.log"
    with open(log, "w") as fh:
        # Its own process group, as in a terminal: Ctrl-C sends SIGINT to the whole group, children included.
        demo = subprocess.Popen([sys.executable, str(DEMO), "--out", str(out), "--ticks", "1000"], stdout=fh,
                                stderr=subprocess.STDOUT, cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                                start_new_session=True)
    try:
        wait_until(lambda: "== 3. the fleet drives" in log.read_text() or demo.poll() is not None, timeout=120)
        assert demo.poll() is None, log.read_text()
        cluster = re.search(r"a cluster in (\S+) ", log.read_text()).group(1)
        assert leftovers(out)  # the brokers and the workers run
        os.killpg(demo.pid, signal.SIGINT)
        assert demo.wait(60) == 130
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    assert "demo-fleet: stopped (SIGINT); everything it started is stopped" in log.read_text()
    assert "Traceback" not in log.read_text()
    assert leftovers(out) == [] and leftovers(cluster) == []
    assert not os.path.exists(cluster)  # PostgreSQL stopped, its directory gone
