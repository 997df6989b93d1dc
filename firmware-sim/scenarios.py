"""Driving scenarios: target-speed profiles the drive model follows.

A scenario is a (lazily generated, endless) sequence of `Phase`s: hold a
target speed for some seconds, reaching it with at most `accel` / `decel`
m/s^2 and `jerk` m/s^3. The driver also slows down for bends on the route
(see `model.py`), so the target is an upper bound, not a schedule.

Every scenario starts standing at home (`route.HOME`) with the engine off; the
first phase (3 s) is the start-up: ignition, engine start, seat belt, P -> D.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

#: Seconds of start-up (ignition, crank, belt, shift to D) before any scenario drives off.
STARTUP_S = 3.0
#: When the harsh_brake scenario's emergency stop begins (seconds since start).
EMERGENCY_BRAKE_AT = 30.0


@dataclass(frozen=True)
class Phase:
    duration: float  # seconds (math.inf for "until the end")
    target_kmh: float
    accel: float = 2.0  # largest acceleration the driver uses, m/s^2
    decel: float = 2.5  # largest braking deceleration, m/s^2 (positive)
    jerk: float = 4.0  # largest rate of change of acceleration, m/s^3
    variation_kmh: float = 0.0  # slow wander around the target while cruising
    period_s: float = 20.0  # period of that wander


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    default_duration: float  # seconds
    route_kind: str  # "city", "rural", "highway" (see Route.generate)
    max_speed_kmh: float  # for sizing the generated route
    lateral_limit: float  # m/s^2 the driver accepts in bends
    _phases: Callable[[random.Random], Iterator[Phase]]
    round_trip_m: float | None = None  # out and back to home along a road this long, then parked

    def phases(self, rng: random.Random) -> Iterator[Phase]:
        return self._phases(rng)


def _startup() -> Phase:
    return Phase(STARTUP_S, 0.0)


def _city(rng: random.Random) -> Iterator[Phase]:
    yield _startup()
    while True:
        if rng.random() < 0.25:
            v = rng.uniform(15.0, 28.0)  # slow traffic
        else:
            v = rng.uniform(30.0, 50.0)
        yield Phase(
            rng.uniform(15.0, 45.0),
            v,
            accel=rng.uniform(1.4, 2.4),
            decel=2.5,
            jerk=3.0,
            variation_kmh=min(3.0, v * 0.06),
            period_s=rng.uniform(8.0, 20.0),
        )
        decel = rng.uniform(1.8, 3.0)
        yield Phase(v / 3.6 / decel + 2.0 + rng.uniform(5.0, 20.0), 0.0, decel=decel, jerk=3.0)


def _highway(rng: random.Random) -> Iterator[Phase]:
    yield _startup()
    yield Phase(30.0, 50.0, accel=2.0, jerk=3.0)  # streets to the on-ramp
    while True:
        yield Phase(
            rng.uniform(30.0, 90.0),
            rng.uniform(110.0, 130.0),
            accel=2.5,
            decel=2.0,
            jerk=2.5,
            variation_kmh=3.0,
            period_s=rng.uniform(20.0, 45.0),
        )
        if rng.random() < 0.25:  # traffic ahead
            yield Phase(rng.uniform(15.0, 30.0), rng.uniform(80.0, 100.0), accel=1.5, decel=2.0, jerk=2.5, variation_kmh=2.0)


def _harsh_brake(rng: random.Random) -> Iterator[Phase]:
    yield _startup()
    yield Phase(
        EMERGENCY_BRAKE_AT - STARTUP_S,
        80.0,
        accel=2.2,
        jerk=3.0,
        variation_kmh=1.0,
        period_s=rng.uniform(10.0, 15.0),
    )
    # full ABS stop, then stand still
    yield Phase(math.inf, 0.0, decel=8.0, jerk=40.0)


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            "city",
            "stop-and-go in town: 15-50 km/h, traffic-light stops, 90-degree turns",
            300.0,
            "city",
            55.0,
            2.5,
            _city,
        ),
        Scenario(
            "highway",
            "town streets, on-ramp, then 110-130 km/h cruising with traffic slow-downs",
            300.0,
            "highway",
            135.0,
            2.5,
            _highway,
        ),
        Scenario(
            "errand",
            "from home through town and back (2-3 km), then parked at home: privacy zones around home",
            600.0,
            "city",
            55.0,
            2.5,
            _city,
            round_trip_m=2000.0,
        ),
        Scenario(
            "harsh_brake",
            f"cruise at ~80 km/h on a rural road, emergency stop (about -8 m/s^2) at t={EMERGENCY_BRAKE_AT:g} s, stand still",
            45.0,
            "rural",
            85.0,
            3.0,
            _harsh_brake,
        ),
    )
}


def get_scenario(name: "str | Scenario") -> Scenario:
    if isinstance(name, Scenario):
        return name
    try:
        return SCENARIOS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown scenario {name!r} (known: {', '.join(SCENARIOS)})") from None


class SpeedProfile:
    """Walks a scenario's phases; `at(t)` must be called with non-decreasing t."""

    def __init__(self, phases: Iterator[Phase]):
        self._phases = phases
        self.phase = next(phases)
        self.start = 0.0

    def at(self, t: float) -> tuple[Phase, float]:
        """The phase active at t and its target speed in km/h."""
        while t >= self.start + self.phase.duration:
            self.start += self.phase.duration
            self.phase = next(self._phases)
        p = self.phase
        target = p.target_kmh
        if p.variation_kmh and target > 0:
            target += p.variation_kmh * math.sin(2.0 * math.pi * (t - self.start) / p.period_s)
        return p, target
