"""The doctor's guest program: `carledger doctor` on a vcan carrying a simulated drive, and on a vcan set down.

Run by tests/test_doctor.py through `harness.run_guest`. Interfaces: "can"
(canplayer loops the drive log given in CARLEDGER_DRIVE_LOG onto it) and
"down" (set down before the doctor looks). The configuration names a DBC
that knows only part of the drive's messages (CARLEDGER_PARTIAL_DBC).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.guest import VCAN, files, run_scenarios, scenario, sh  # noqa: E402

CAN, DOWN = VCAN["can"], VCAN["down"]


@scenario
def doctor_on_vcan() -> dict:
    out = files("doctor_on_vcan")
    dbc = os.environ["CARLEDGER_PARTIAL_DBC"]
    config = out / "agent.toml"
    config.write_text(f"""
[agent]
store = "{out / 'ledger'}"

[[bus]]
name = "car"
interface = "socketcan"
channel = "{CAN}"
dbc = ["{dbc}"]

[[bus]]
name = "spare"
interface = "socketcan"
channel = "{DOWN}"
dbc = ["{dbc}"]
""")
    sh("ip", "link", "set", DOWN, "down")
    player = subprocess.Popen(["canplayer", "-l", "i", "-I", os.environ["CARLEDGER_DRIVE_LOG"], f"{CAN}=can0"])
    try:
        done = subprocess.run(
            [sys.executable, "-m", "carledger", "doctor", "-c", str(config), "--listen", "3", "--json"],
            capture_output=True, text=True, timeout=300,
        )
    finally:
        player.kill()
        player.wait()
    (out / "doctor.err").write_text(done.stderr)
    return {"exit": done.returncode, "report": json.loads(done.stdout)}


if __name__ == "__main__":
    sys.exit(run_scenarios())
