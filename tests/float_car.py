"""A car whose speed, longitudinal acceleration and airbag flag are IEEE float signals, as candump logs.

What an IEEE float signal can carry that a scaled integer cannot: NaN and infinity (an ECU's
"invalid" at start-up, a glitch, a forged frame). Each signal's frame is its value alone, so a
value that holds repeats the frame byte for byte (no counter, no checksum), as many cars send.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Callable

DBC = """VERSION ""

NS_ :

BS_:

BU_: ABS ACU

BO_ 256 ABS_SPEED: 4 ABS
 SG_ VehicleSpeed : 0|32@1- (1,0) [0|0] "km/h" ABS

BO_ 257 ABS_ACCEL: 4 ABS
 SG_ LongitudinalAccel : 0|32@1- (1,0) [0|0] "m/s^2" ABS

BO_ 258 ACU_STATUS: 4 ACU
 SG_ DriverAirbagDeployed : 0|32@1- (1,0) [0|0] "" ACU

SIG_VALTYPE_ 256 VehicleSpeed : 1;
SIG_VALTYPE_ 257 LongitudinalAccel : 1;
SIG_VALTYPE_ 258 DriverAirbagDeployed : 1;
"""

VSS = """[signals]
"ABS_SPEED.VehicleSpeed" = "Vehicle.Speed"
"ABS_ACCEL.LongitudinalAccel" = "Vehicle.Acceleration.Longitudinal"
"""

NAN, INF = float("nan"), float("inf")
RATE = 100  # frames per second of each message

Signal = Callable[[int], float]  # frame number -> value


def write_dbc(folder: Path) -> Path:
    """The DBC (float_car.dbc) and its VSS mapping beside it, in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "float_car.vss.toml").write_text(VSS)
    path = folder / "float_car.dbc"
    path.write_text(DBC)
    return path


def write_log(path: Path, start: float, seconds: float, *, speed: Signal = lambda k: 50.0,
              accel: Signal = lambda k: 0.0, airbag: Signal = lambda k: 0.0) -> Path:
    """`seconds` of the three messages at RATE Hz from `start`, each value given per frame number."""
    lines = []
    for k in range(round(seconds * RATE)):
        t = start + k / RATE
        for can_id, value in ((0x100, speed(k)), (0x101, accel(k)), (0x102, airbag(k))):
            lines.append(f"({t:.6f}) can0 {can_id:03X}#{struct.pack('<f', value).hex().upper()}")
    path.write_text("\n".join(lines) + "\n")
    return path
