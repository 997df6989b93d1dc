"""Several drives of one car, each its own ignition cycle, with the car parked between them.

Each drive is an ordinary `SimulatedCar` drive (same frames as alone, moved
in time), so every scenario's frames stay what they are. Between drives the
ignition is off: the body control module keeps broadcasting
`BCM_STATUS.IgnitionState = OFF` (once a second, battery voltage resting)
for `awake_s` seconds, then the bus sleeps (no frame) until the next drive.

`awake_s` >= `parked_s` keeps the bus awake the whole time (an agent must read
the ignition from the signal); a short `awake_s` and a long `parked_s` let it
see the bus go silent.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import can

from .car import SimulatedCar

#: How often the BCM sends its status while the ignition is off (seconds).
OFF_PERIOD_S = 1.0
OFF_VOLTS = 12.3


def drive_starts(durations: Sequence[float], start: float, parked_s: float) -> list[float]:
    """The start time of each drive: each begins `parked_s` after the previous one ends."""
    out, t = [], float(start)
    for duration in durations:
        out.append(t)
        t += duration + parked_s
    return out


def ignition_cycles(
    scenario: str, durations: Sequence[float], *, seed: int = 0, start: float = 0.0,
    parked_s: float = 60.0, awake_s: float = 5.0, dbc=None, channel=None,
) -> Iterator[can.Message]:
    """The frames of len(durations) drives (seeds seed, seed+1, ...), parked `parked_s` between them."""
    if not parked_s > 0 or awake_s < 0:
        raise ValueError("parked_s must be positive and awake_s not negative")
    starts = drive_starts(durations, start, parked_s)
    for i, (duration, t0) in enumerate(zip(durations, starts)):
        car = SimulatedCar(scenario, seed=seed + i, dbc=dbc, duration=duration, start_time=t0, channel=channel)
        yield from car.frames()
        if i + 1 < len(durations):
            yield from _ignition_off(car, t0 + duration, min(awake_s, parked_s))


def _ignition_off(car: SimulatedCar, t_off: float, awake_s: float) -> Iterator[can.Message]:
    message = car.db.get_message_by_name("BCM_STATUS")
    data = message.encode({"IgnitionState": 0, "BatteryVoltage": OFF_VOLTS})
    n = 0
    while n * OFF_PERIOD_S < awake_s:
        yield can.Message(
            timestamp=round(t_off + n * OFF_PERIOD_S, 6), arbitration_id=message.frame_id,
            is_extended_id=message.is_extended_frame, data=data, channel=car.channel,
        )
        n += 1


__all__ = ["drive_starts", "ignition_cycles"]
