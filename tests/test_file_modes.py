"""Everything the agent and the collector create is private (0600 files, 0700 directories) whatever the umask.

Outside systemd (whose unit sets UMask=0077) a umask of 022 made the store,
with its location history, and the collector's copies world-readable. Issue 11, hole 9.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from carledger.collect import Collector
from carledger.dbc import path as dbc_path
from carledger.ledger import Store
from carledger.sync import topics
from carledger.sync.wire import BlockPacker
from harness.drives import write_drive_log


def run_agent(drive: Path, store: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "carledger", "run", "--replay", str(drive), "--dbc", dbc_path("carledger_demo.dbc"),
         "--store", str(store), "--fast", "--stream", "s=Vehicle.Speed"],
        capture_output=True, text=True, timeout=300, preexec_fn=lambda: os.umask(0o022),
    )


def modes(root: Path) -> dict[str, str]:
    """Every file and directory under `root` (itself included) with its permission bits."""
    out = {".": oct(stat.S_IMODE(root.stat().st_mode))}
    for path in sorted(root.rglob("*")):
        out[str(path.relative_to(root))] = oct(stat.S_IMODE(path.lstat().st_mode))
    return out


def not_private(listing: dict[str, str], root: Path) -> dict[str, str]:
    return {
        name: mode for name, mode in listing.items()
        if int(mode, 8) != (0o700 if (root / name).is_dir() else 0o600)
    }


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_store_and_collector_are_private_under_umask_022(tmp_path, umask_022):
    drive = write_drive_log(tmp_path / "drive.log")
    store = tmp_path / "new" / "ledger"  # a missing parent too
    done = run_agent(drive, store)
    assert done.returncode == 0, done.stderr
    listing = modes(store)
    assert {"ledger.sqlite", "keys", "keys/vehicle.key", "owner"} <= set(listing), listing
    assert not_private(listing, store) == {}, listing
    assert oct(stat.S_IMODE((tmp_path / "new").stat().st_mode)) == "0o700"

    collected = tmp_path / "collected"
    collector = Collector(collected)
    try:
        collector.registry.enroll("car-1", store / "keys" / "vehicle.pub")
        packer = BlockPacker(9)
        with Store.open_readonly(store) as agent:
            for row in agent.iter_blocks("s"):
                collector.receive(topics.block("car-1", "s"), packer.pack(agent.message(row)))
        collector.flush()
    finally:
        collector.close()
    listing = modes(collected)
    assert any(name.endswith("ledger.sqlite") for name in listing), listing  # the replica exists
    assert not_private(listing, collected) == {}, listing


def test_a_keys_directory_others_can_write_is_made_private_saying_so(tmp_path, umask_022):
    drive = write_drive_log(tmp_path / "drive.log")
    store = tmp_path / "ledger"
    assert run_agent(drive, store).returncode == 0
    os.chmod(store / "keys", 0o777)
    done = run_agent(drive, store)
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE((store / "keys").stat().st_mode) == 0o700
    said = [line for line in done.stderr.splitlines() if "keys" in line and "0777" in line]
    assert len(said) == 1 and "0700" in said[0], done.stderr
