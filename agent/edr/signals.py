"""Which of the car's signals a crash capture records, by the role they play.

Part 563 and UN R160 name the data elements; each role here lists the VSS
names (and, for cars whose DBC has no VSS mapping, DBC ``Message.Signal``
globs) that carry it. A capture records whichever of them the car provides.
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase

SPEED = "speed"
ACCELERATOR = "accelerator"
BRAKE = "brake"
ENGINE_SPEED = "engine_speed"
STEERING = "steering"
ACCEL_LONG = "accel_long"
ACCEL_LAT = "accel_lat"
BELT = "belt"
AIRBAG = "airbag"
CRASH = "crash"

#: role -> patterns matched against a signal's VSS name and its DBC Message.Signal.
ROLES: dict[str, tuple[str, ...]] = {
    SPEED: ("Vehicle.Speed", "Vehicle.OBD.Speed"),
    ACCELERATOR: ("Vehicle.Chassis.Accelerator.PedalPosition", "Vehicle.OBD.RelativeAcceleratorPosition"),
    BRAKE: ("Vehicle.Chassis.Brake.PedalPosition", "Vehicle.Chassis.Brake.IsDriverBraking"),
    ENGINE_SPEED: ("Vehicle.Powertrain.CombustionEngine.Speed", "Vehicle.OBD.EngineSpeed"),
    STEERING: ("Vehicle.Chassis.SteeringWheel.Angle",),
    ACCEL_LONG: ("Vehicle.Acceleration.Longitudinal",),
    ACCEL_LAT: ("Vehicle.Acceleration.Lateral",),
    BELT: ("Vehicle.Cabin.Seat.Row*.IsBelted",),
    AIRBAG: ("Vehicle.Cabin.Seat.Row*.Airbag.IsDeployed", "*.*AirbagDeployed"),
    CRASH: ("*.CrashDetected", "*.Crash", "*.CrashStatus"),
}


@dataclass(frozen=True)
class EdrSignal:
    """A signal a capture records: its role, and the names its samples carry."""

    role: str
    name: str
    source: str | None


def role_of(name: str, source: str | None = None) -> str | None:
    """The capture role of a signal, or None when a crash capture does not record it."""
    for role, patterns in ROLES.items():
        for pattern in patterns:
            if fnmatchcase(name, pattern) or (source is not None and fnmatchcase(source, pattern)):
                return role
    return None
