"""Simulated drives as candump logs, written by the agent's own candump writer (format_candump)."""

from __future__ import annotations

from pathlib import Path

from carledger.sources.candump import format_candump
from carledger.sources.frame import frame_key
from carledger_sim.car import SimulatedCar


def write_drive_log(path: Path, scenario: str = "city", seed: int = 3, duration: float = 10.0) -> Path:
    """`duration` seconds of a simulated drive as a candump log on channel can0, as canplayer reads it."""
    car = SimulatedCar(scenario, seed=seed, duration=duration, start_time=1_700_049_600.0)
    with open(path, "w") as f:
        for msg in car.frames():
            key = frame_key(msg.arbitration_id, msg.is_extended_id)
            f.write(format_candump(msg.timestamp, "can0", key, bytes(msg.data), fd=msg.is_fd) + "\n")
    return path
