"""Driving scenarios: target-speed profiles the drive model follows.

A scenario is a (lazily generated, endless) sequence of `Phase`s: hold a
target speed for some seconds, reaching it with at most `accel` / `decel`
m/s^2 and `jerk` m/s^3. The driver also slows down for bends on the route
(see `model.py`), so the target is an upper bound, not a schedule.

Every scenario starts standing at home (`route.HOME`) with the engine off; the
first phase (3 s) is the start-up: ignition, engine start, seat belt, P -> D.

A scenario may also carry `Impact`s: collisions that, for a fraction of a
second, take the car's speed out of the driver's hands (see `model.py`).

The scenarios:

- `city`: stop-and-go in town, 15-50 km/h, stops at lights, 90-degree turns.
- `highway`: town streets, an on-ramp, then 110-130 km/h with slow-downs.
- `errand`: from home through town and back, then parked at home.
- `harsh_brake`: ~80 km/h on a rural road, an ABS emergency stop (-8 m/s^2)
  at `EMERGENCY_BRAKE_AT`, then standing.
- `crash`: ~50-60 km/h on a rural road, a frontal impact at `CRASH_AT`: the
  speed falls to 0 within `IMPACT_S`, the airbags deploy; then standing.
- `near_miss`: ~70 km/h, at `NEAR_MISS_AT` the hardest braking the car can do
  (ABS, -9 m/s^2) down to ~15 km/h, then on again. It stays below the Part 563
  trigger (8 km/h within 150 ms): no impact, no airbag.
- `bump`: a short drive in town, a stop at a light (brake held, D) and at
  `BUMP_AT` a rear impact pushes the standing car to ~10 km/h within
  `BUMP_S`; the held brakes stop it again. No deployment (a Part 563
  "non-deployment event").
- `side_impact`: the car starts up and stays parked (brake held, D); at
  `SIDE_IMPACT_AT` another car hits it from the side: the airbags deploy, but
  the longitudinal speed does not change at all (0 -> 0 km/h). Only the
  airbag control unit can tell a crash happened.
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
#: When the crash scenario's frontal impact begins (seconds since start).
CRASH_AT = 40.0
#: How long the crash pulse lasts: the speed falls linearly to 0 within it.
IMPACT_S = 0.1
#: When the near_miss scenario's full braking begins (seconds since start).
NEAR_MISS_AT = 35.0
#: When the bump scenario's rear impact begins (seconds since start).
BUMP_AT = 35.0
#: How long the bump's pulse lasts (0 -> 10 km/h, about +23 m/s^2).
BUMP_S = 0.12
#: When the side_impact scenario's side collision with the parked car begins (seconds since start).
SIDE_IMPACT_AT = 25.0


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
class Impact:
    """A collision: from `at` for `duration` seconds the car's speed goes linearly
    from what it was to `to_kmh`, whatever the driver does (a frontal impact
    into something standing: 0; a rear impact on a standing car: above 0).

    `deploys`: the airbag control unit judges it a crash: it sets its crash
    signal and fires the airbags. Otherwise it is a non-deployment event.
    """

    at: float  # seconds since ignition on
    to_kmh: float
    duration: float = IMPACT_S
    deploys: bool = False

    def __post_init__(self):
        if not (self.at >= 0.0 and self.duration > 0.0 and self.to_kmh >= 0.0):
            raise ValueError(f"an impact needs at >= 0, duration > 0 and to_kmh >= 0: {self}")


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
    impacts: tuple[Impact, ...] = ()  # in time order, not overlapping

    def __post_init__(self):
        for a, b in zip(self.impacts, self.impacts[1:]):
            if b.at < a.at + a.duration:
                raise ValueError(f"scenario {self.name}: impacts must be in time order and not overlap: {a}, {b}")

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


def _crash(rng: random.Random) -> Iterator[Phase]:
    yield _startup()
    # cruise until the impact is over; after it the driver stays put
    yield Phase(
        CRASH_AT + IMPACT_S - STARTUP_S,
        rng.uniform(52.0, 58.0),
        accel=2.0,
        jerk=3.0,
        variation_kmh=1.0,
        period_s=rng.uniform(10.0, 15.0),
    )
    yield Phase(math.inf, 0.0)


def _near_miss(rng: random.Random) -> Iterator[Phase]:
    yield _startup()
    yield Phase(
        NEAR_MISS_AT - STARTUP_S,
        rng.uniform(68.0, 72.0),
        accel=2.2,
        jerk=3.0,
        variation_kmh=1.0,
        period_s=rng.uniform(10.0, 15.0),
    )
    # full ABS braking for 1.6 s (~70 -> ~20 km/h), releasing the brake quickly
    # takes off ~5 km/h more, then the driver goes on
    yield Phase(1.6, 0.0, decel=9.0, jerk=40.0)
    yield Phase(4.0, 40.0, accel=2.5, jerk=20.0)
    yield Phase(math.inf, 70.0, accel=2.0, jerk=3.0, variation_kmh=1.0, period_s=rng.uniform(10.0, 15.0))


def _bump(rng: random.Random) -> Iterator[Phase]:
    yield _startup()
    drive = rng.uniform(14.0, 18.0)
    yield Phase(drive, rng.uniform(30.0, 40.0), accel=2.0, decel=2.5, jerk=3.0)
    # stop at the light and wait until the bump is over; then stamp on the brake
    yield Phase(BUMP_AT + BUMP_S - STARTUP_S - drive, 0.0, decel=2.5, jerk=3.0)
    yield Phase(math.inf, 0.0, decel=6.0, jerk=20.0)


def _parked(rng: random.Random) -> Iterator[Phase]:
    yield _startup()
    yield Phase(math.inf, 0.0)


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
        Scenario(
            "crash",
            f"~55 km/h on a rural road, frontal impact at t={CRASH_AT:g} s (to 0 within {IMPACT_S * 1000:g} ms),"
            " airbags deploy, engine stops, stand still",
            55.0,
            "rural",
            65.0,
            3.0,
            _crash,
            impacts=(Impact(CRASH_AT, 0.0, IMPACT_S, deploys=True),),
        ),
        Scenario(
            "near_miss",
            f"~70 km/h on a rural road, full ABS braking at t={NEAR_MISS_AT:g} s (-9 m/s^2) to ~15 km/h,"
            " drive on: below the crash trigger",
            55.0,
            "rural",
            80.0,
            3.0,
            _near_miss,
        ),
        Scenario(
            "bump",
            f"short drive in town, stop at a light, hit from behind at t={BUMP_AT:g} s (0 -> 10 km/h),"
            " no airbag: a non-deployment event",
            50.0,
            "city",
            45.0,
            2.5,
            _bump,
            impacts=(Impact(BUMP_AT, 10.0, BUMP_S),),
        ),
        Scenario(
            "side_impact",
            f"parked after start-up, hit from the side at t={SIDE_IMPACT_AT:g} s: airbags deploy,"
            " no longitudinal speed change",
            35.0,
            "city",
            45.0,
            2.5,
            _parked,
            impacts=(Impact(SIDE_IMPACT_AT, 0.0, IMPACT_S, deploys=True),),
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
