"""The UDS scenario of the SocketCAN tier: the simulated EV's BMS and a J1939 BAM on a real vcan, the agent polling.

Run by tests/test_uds_socketcan.py through `harness.run_guest` (inside
user-mode-linux where the host has no CAN). The BMS answers from the drive
held at one second, so the host side can compute what it must have said;
candump records every frame on the bus, so the host side can check what the
agent transmitted.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.guest import (  # noqa: E402
    VCAN, Agent, Candump, agent_config, files, ledger_records, run_scenarios, scenario, wait_for,
)

import can  # noqa: E402

from carledger.dbc import path as dbc_path  # noqa: E402
from carledger_sim.car import SimulatedCar  # noqa: E402
from carledger_sim.ev import BamBroadcaster, EvResponder, ev_battery  # noqa: E402
from carledger_sim.obd_responder import DriveClock  # noqa: E402

CAN = VCAN["can"]
HELD = 290.0


@scenario
def ev_polled_over_socketcan() -> dict:
    """The agent polls DID 0x0101 of the BMS (the stream takes the state of charge) and decodes the DM1 BAM."""
    out = files("ev_polled_over_socketcan")
    store = out / "ledger"
    car = SimulatedCar("city", seed=3, duration=300)
    car.history()
    clock = DriveClock(car)
    clock.hold(HELD)
    buses = f"""
    [[bus]]
    name = "ev"
    interface = "socketcan"
    channel = "{CAN}"
    dbc = ["{dbc_path('carledger_ev.dbc')}"]
    [bus.uds]
    poll = true
    interval = 0.5
    """
    streams = {"battery": ["Vehicle.Powertrain.TractionBattery.StateOfCharge.Current", "DM1.DTC1_FMI"]}
    config = agent_config(out / "agent.toml", store, buses, streams)
    ecu_bus = can.Bus(interface="socketcan", channel=CAN)
    bam_bus = can.Bus(interface="socketcan", channel=CAN)
    try:
        with Candump(CAN, out / "candump.log") as dump, EvResponder(ecu_bus, clock), \
                BamBroadcaster(bam_bus, period=0.5), Agent(config, [CAN], out / "agent.log") as agent:
            wait_for(lambda: set(streams["battery"]) <= {r.name for r in ledger_records(store, "battery")
                                                          if hasattr(r, "value")}, 180,
                     "the state of charge and the DM1 recorded")  # on change: the held drive gives one value each
            polled = len([line for line in dump.lines() if " 7E4#03220101" in line])
            wait_for(lambda: len([line for line in dump.lines() if " 7E4#03220101" in line]) >= polled + 3, 60,
                     "three more polls")
    finally:
        ecu_bus.shutdown()
        bam_bus.shutdown()
    values = [[r.name, r.value] for r in ledger_records(store, "battery") if hasattr(r, "value")]
    return {"values": values, "expected_soc": ev_battery(car.state_at(HELD)).soc,
            "candump_lines": len(dump.lines()), "agent_exit": agent.returncode}


if __name__ == "__main__":
    sys.exit(run_scenarios())
