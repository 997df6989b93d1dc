"""UDS polling and J1939 BAM on a real vcan (inside user-mode-linux where the host has no CAN): issue 17 end to end.

The guest (tests/harness/uds_guest.py) runs the simulated EV's BMS, a DM1 BAM
and the agent with `[bus.uds] poll = true`; this side checks the ledger and
every frame candump saw.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from carledger.cli import main
from carledger.sources.candump import read_candump_file
from harness import find_vcan, run_guest

VCAN, WHY_NOT = find_vcan()
GUEST = Path(__file__).parent / "harness" / "uds_guest.py"

pytestmark = pytest.mark.skipif(VCAN is None, reason=f"no SocketCAN: {WHY_NOT}")


@pytest.fixture(scope="module")
def guest(tmp_path_factory):
    return run_guest(VCAN, GUEST, tmp_path_factory.mktemp("uds"), {"can": 16})


def test_the_agent_polls_the_evs_bms_over_socketcan_read_only(guest, capsys):
    result = guest.result("ev_polled_over_socketcan")
    soc = [v for n, v in result["values"] if n == "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current"]
    fmi = [v for n, v in result["values"] if n == "DM1.DTC1_FMI"]
    print(f"[{guest.vcan.mode}] state of charge {soc} (model {result['expected_soc']:.2f}), DM1 FMI {fmi}, "
          f"{result['candump_lines']} frames on the bus")
    assert soc and all(abs(v - result["expected_soc"]) <= 0.25 for v in soc)
    assert fmi and set(fmi) == {18}
    dump = list(read_candump_file(str(guest.files("ev_polled_over_socketcan") / "candump.log")))
    from_tester = [bytes(d) for _, key, d in dump if key == 0x7E4]
    assert from_tester
    for data in from_tester:  # the agent's frames: ReadDataByIdentifier of 0x0101, or flow control
        assert data[:4] == b"\x03\x22\x01\x01" or data[0] >> 4 == 3, data.hex()
    others = {key for _, key, _ in dump} - {0x7E4, 0x7EC, 0x9CECFFF3, 0x9CEBFFF3}
    assert not others, others  # nobody else spoke: the agent sent nothing but requests
    capsys.readouterr()
    assert main(["verify", str(guest.files("ev_polled_over_socketcan") / "ledger")]) == 0
    assert result["agent_exit"] == 0
