"""Memory of the owner's console (issue 18: at most 40 MB RSS idle), and of its streamed My data download.

    python bench/bench_console.py [--blocks 2000]

Starts `carledger console` (its own process) on a store of --blocks sealed
blocks of 50 samples each, then reads the process's RSS from /proc:

1. idle, just started;
2. idle after pairing and a visit of Now and Who gets what, then after one
   visit of every page (the modules the pages import stay loaded; What left
   the car reads the audit, which loads the owner's actions and the sync);
3. the peak (VmHWM) after downloading My data, whose size grows with the
   store while the process's memory should not (it streams block by block).

For scale: `python -c "import carledger.cli"` alone is printed too (python-can
and the command line are most of the console's memory).

Not a test: nothing here passes or fails.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))


def rss(pid: int, field: str = "VmRSS") -> float:
    """MB of `field` (VmRSS now, VmHWM the peak) of process `pid`."""
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+) kB", text).group(1)) / 1024


def make_store(folder: Path, blocks: int) -> Path:
    """A store whose `fleet` stream has `blocks` blocks of 50 samples, sealed one by one as the agent seals them."""
    from carledger.ledger import Ledger
    from carledger.owner import OwnerActions, OwnerState
    from test_audit_story import APPLIED, POLICY

    path = folder / "s"
    with Ledger.open(path, "car-1") as ledger:
        OwnerActions(ledger, OwnerState.load(path)).apply_policy(POLICY, name="policy.toml", now=APPLIED)
        fleet = ledger.writer("fleet")
        for block in range(blocks):
            for i in range(50):
                fleet.add_sample(APPLIED + block + i / 50, "Vehicle.Speed", 50.0 + i, "ABS_SPEED.VehicleSpeed")
            ledger.seal()
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=2000, help="blocks in the store (default 2000)")
    args = parser.parse_args()
    from test_console import start_console, stop

    baseline = subprocess.run([sys.executable, "-c", "import re, carledger.cli; carledger.cli.build_parser(); "
                               "print(re.search(r'VmRSS:\\s+(\\d+)', open('/proc/self/status').read()).group(1))"],
                              capture_output=True, text=True, check=True).stdout
    with tempfile.TemporaryDirectory() as tmp:
        store = make_store(Path(tmp), args.blocks)
        console = start_console(store)
        try:
            time.sleep(2)
            started = rss(console.proc.pid)
            console.pair()
            for page in ("/", "/consents"):
                assert console.request(page).status == 200, page
            time.sleep(1)
            owner_pages = rss(console.proc.pid)
            for page in ("/left", "/trips", "/crashes"):
                assert console.request(page).status == 200, page
            time.sleep(1)
            used = rss(console.proc.pid)
            t0 = time.perf_counter()
            request = urllib.request.Request(console.url + "mydata.zip",
                                             headers={"Cookie": f"carledger_console={console.cookie}"})
            size = 0
            with urllib.request.urlopen(request, timeout=600) as reply:
                while chunk := reply.read(1 << 16):
                    size += len(chunk)
            took = time.perf_counter() - t0
            peak = rss(console.proc.pid, "VmHWM")
        finally:
            stop(console)
    print(f"import carledger.cli alone:          {int(baseline) / 1024:6.1f} MB RSS")
    print(f"console idle, just started:          {started:6.1f} MB RSS")
    print(f"console idle after Now, Who gets what: {owner_pages:4.1f} MB RSS")
    print(f"console idle after every page:       {used:6.1f} MB RSS")
    print(f"console peak after My data download: {peak:6.1f} MB (VmHWM); {size / 1e6:.1f} MB of ZIP "
          f"for {args.blocks} blocks in {took:.1f} s")


if __name__ == "__main__":
    main()
